//! The adapter from `smmuv3::Domain` to [`IommuDomain`]: the one file to
//! re-point when the driver's API changes.
//!
//! Driver API used: `Domain::map_deferred` (leaf cleans deferred) and
//! `Domain::sync_map` (one clean per dirty line, then the device barrier),
//! `Domain::unmap_shared` (strict unmap + range invalidation + CMD_SYNC),
//! the page table's `unmap_range` without invalidating the gather for lazy
//! unmaps (tables it removes are still flushed at once by the driver's
//! synchronous, fallible `flush_walk`, and any failure comes back in the
//! call's `Partial`), `Domain::flush_all`, `Domain::translate` and
//! `Domain::reclaim` (retired tables were flushed before they were retired;
//! they are freed under the write lock).

use io_pgtable::Prot;
use io_pgtable::env::Gather;
use smmuv3::Domain;
use smmuv3::env::{DmaMemory, SmmuEnv};
use spin::RwLock;

use crate::domain::IommuDomain;
use crate::types::IommuProt;

/// An `smmuv3` domain driven by the DMA layer.
pub struct SmmuDomain<E: SmmuEnv> {
    dom: RwLock<Domain<E>>,
    coherent: bool,
}

impl<E: SmmuEnv> SmmuDomain<E> {
    /// Wraps `dom`; `coherent` is the SMMU's IDR0.COHACC (the driver's
    /// `features().coherent`), inherited by devices without their own.
    pub fn new(dom: Domain<E>, coherent: bool) -> Self {
        Self {
            dom: RwLock::new(dom),
            coherent,
        }
    }

    /// Returns shared access to the driver's domain (e.g. to attach
    /// streams).
    pub fn domain(&self) -> spin::RwLockReadGuard<'_, Domain<E>> {
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

impl<E> IommuDomain for SmmuDomain<E>
where
    E: SmmuEnv,
    Domain<E>: Send + Sync,
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
        self.dom.read().map_deferred(iova, phys, len, prot(p))
    }

    fn sync_map(&self, iova: u64, len: u64) -> Result<(), Self::Error> {
        self.dom.read().sync_map(iova, len)
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

/// CPU identity and time, the part of [`crate::DmaEnv`] the driver's
/// memory does not provide.
pub trait CpuClock: Send + Sync {
    /// Returns the current CPU's index.
    fn cpu_id(&self) -> usize;
    /// Returns a monotonic tick count.
    fn now_ticks(&self) -> u64;
}

/// A [`crate::DmaEnv`] whose cache maintenance, CPU pointers and coherent
/// memory are the driver's own memory environment (`smmuv3::env::DmaMemory`:
/// io-pgtable's `CacheMaintenance` clean, the driver's `CacheInvalidate`,
/// `TableMemory`), so DMA buffers and page tables go through one seam.
pub struct StackEnv<M, K> {
    mem: M,
    clock: K,
}

impl<M: DmaMemory + Send + Sync, K: CpuClock> StackEnv<M, K> {
    /// Returns the environment over the driver's memory `mem`.
    ///
    /// # Safety
    ///
    /// `mem`'s `phys_to_cpu` must return a valid CPU pointer for every
    /// physical address devices will DMA to (not only table memory): the
    /// DMA layer copies bounce buffers through it.
    pub unsafe fn new(mem: M, clock: K) -> Self {
        Self { mem, clock }
    }

    /// Returns the driver's memory environment.
    pub fn mem(&self) -> &M {
        &self.mem
    }
}

fn cache_err(e: io_pgtable::env::CacheError) -> crate::CacheError {
    crate::CacheError {
        phys: e.phys,
        len: e.len as u64,
    }
}

// SAFETY: `phys_to_cpu` is valid for all DMA memory (the constructor's
// contract); coherent memory is `TableMemory` blocks, zeroed, naturally
// aligned and used by nobody else until freed (that trait's contract).
unsafe impl<M: DmaMemory + Send + Sync, K: CpuClock> crate::DmaEnv for StackEnv<M, K> {
    fn cpu_id(&self) -> usize {
        self.clock.cpu_id()
    }

    fn now_ticks(&self) -> u64 {
        self.clock.now_ticks()
    }

    fn clean(&self, phys: u64, len: u64) -> Result<(), crate::CacheError> {
        let cpu = self.mem.phys_to_cpu(phys);
        io_pgtable::env::CacheMaintenance::clean(&self.mem, cpu, phys, len as usize)
            .map_err(cache_err)
    }

    fn invalidate(&self, phys: u64, len: u64) -> Result<(), crate::CacheError> {
        let cpu = self.mem.phys_to_cpu(phys);
        smmuv3::env::CacheInvalidate::invalidate(&self.mem, cpu, phys, len as usize)
            .map_err(cache_err)
    }

    fn phys_to_cpu(&self, phys: u64, _len: u64) -> Option<core::ptr::NonNull<u8>> {
        Some(self.mem.phys_to_cpu(phys))
    }

    /// Table memory is cacheable: for a non-coherent device the zeroes are
    /// cleaned here, and later CPU writes need `sync_for_device`-style
    /// cleans by the caller (no uncached mapping is available).
    fn alloc_coherent(&self, size: u64) -> Option<(u64, core::ptr::NonNull<u8>)> {
        let b = self.mem.alloc_table(usize::try_from(size).ok()?).ok()?;
        if io_pgtable::env::CacheMaintenance::clean(&self.mem, b.cpu, b.phys, size as usize)
            .is_err()
        {
            // SAFETY: just allocated, never handed out.
            unsafe { self.mem.free_table(b, size as usize) };
            return None;
        }
        Some((b.phys, b.cpu))
    }

    unsafe fn free_coherent(&self, phys: u64, size: u64) {
        let block = io_pgtable::env::TableBlock {
            cpu: self.mem.phys_to_cpu(phys),
            phys,
        };
        // SAFETY: our caller passes a live allocation of `alloc_coherent`,
        // i.e. a table block of this size, unreachable now.
        unsafe { self.mem.free_table(block, size as usize) };
    }
}
