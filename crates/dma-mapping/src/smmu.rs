//! The adapter from `smmuv3::Domain` to [`IommuDomain`]: the one file to
//! re-point when the driver's API changes.
//!
//! Current driver API used: `Domain::map` (cleans leaves in `map`, so
//! [`IommuDomain::sync_map`] is a no-op until the driver defers them),
//! `Domain::unmap_shared` (strict unmap + range invalidation + CMD_SYNC),
//! the page table's `unmap_range` without the gather's invalidation for
//! lazy unmaps, `Domain::flush_all`, `Domain::translate` and
//! `Domain::reclaim` (retired tables are freed under the write lock after
//! an invalidation completed).
//!
//! One caveat of the current seam: the driver's TLB hooks cannot return
//! errors, so an invalidation failure inside a lazy unmap's table flush is
//! reported by the driver's next `map`/`unmap` call instead of this one.

use io_pgtable::Prot;
use io_pgtable::env::Gather;
use smmuv3::Domain;
use smmuv3::env::{Clock, DmaMemory, RegisterFrame};
use spin::RwLock;

use crate::domain::IommuDomain;
use crate::types::IommuProt;

/// An `smmuv3` domain driven by the DMA layer.
pub struct SmmuDomain<R: RegisterFrame, M: DmaMemory, C: Clock> {
    dom: RwLock<Domain<R, M, C>>,
    coherent: bool,
}

impl<R: RegisterFrame, M: DmaMemory, C: Clock> SmmuDomain<R, M, C> {
    /// Wraps `dom`; `coherent` is the SMMU's IDR0.COHACC (the driver's
    /// `features().coherent`), inherited by devices without their own.
    pub fn new(dom: Domain<R, M, C>, coherent: bool) -> Self {
        Self {
            dom: RwLock::new(dom),
            coherent,
        }
    }

    /// Returns shared access to the driver's domain (e.g. to attach
    /// streams).
    pub fn domain(&self) -> spin::RwLockReadGuard<'_, Domain<R, M, C>> {
        self.dom.read()
    }

    /// Frees retired page-table pages if no other call is inside the
    /// domain (their walks were flushed when they were retired).
    fn reclaim(&self) {
        if let Some(mut w) = self.dom.try_write() {
            w.reclaim();
        }
    }
}

fn prot(p: IommuProt) -> Prot {
    let mut out = Prot::NOEXEC;
    for (ours, theirs) in [
        (IommuProt::READ, Prot::READ),
        (IommuProt::WRITE, Prot::WRITE),
        (IommuProt::CACHE, Prot::CACHE),
        (IommuProt::MMIO, Prot::MMIO),
        (IommuProt::PRIV, Prot::PRIV),
    ] {
        if p.contains(ours) {
            out |= theirs;
        }
    }
    out
}

impl<R, M, C> IommuDomain for SmmuDomain<R, M, C>
where
    R: RegisterFrame,
    M: DmaMemory,
    C: Clock,
    Domain<R, M, C>: Send + Sync,
{
    type Error = smmuv3::Error;

    fn pgsize_bitmap(&self) -> u64 {
        self.dom.read().page_table().pgsize_bitmap()
    }

    fn iova_bits(&self) -> u32 {
        self.dom.read().page_table().config().ias
    }

    fn coherent(&self) -> bool {
        self.coherent
    }

    fn map(&self, iova: u64, phys: u64, len: u64, p: IommuProt) -> Result<(), Self::Error> {
        self.dom.read().map(iova, phys, len, prot(p))
    }

    fn sync_map(&self, _iova: u64, _len: u64) -> Result<(), Self::Error> {
        // The current driver publishes (cleans) leaves inside `map`.
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64, Self::Error> {
        let r = self.dom.read().unmap_shared(iova, len);
        self.reclaim();
        r
    }

    fn unmap_deferred(&self, iova: u64, len: u64) -> Result<u64, Self::Error> {
        let mut gather = Gather::new();
        let done = self
            .dom
            .read()
            .page_table()
            .unmap_range(iova, len, &mut gather)?;
        // The gathered leaves stay in the IOTLB until `flush_all`.
        Ok(done as u64)
    }

    fn flush_all(&self) -> Result<(), Self::Error> {
        self.dom.read().flush_all()?;
        self.reclaim();
        Ok(())
    }

    fn translate(&self, iova: u64) -> Option<u64> {
        self.dom.read().translate(iova)
    }
}
