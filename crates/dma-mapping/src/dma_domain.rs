//! An IOMMU domain as the DMA layer uses it: the driver's domain, its IOVA
//! space and, in lazy mode, its flush queue. Devices attached to one
//! domain share all three.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::domain::IommuDomain;
use crate::env::DmaEnv;
use crate::error::DmaError;
use crate::flush_queue::FlushQueue;
use crate::iova::{IovaAllocator, IovaConfig};
use crate::types::DmaAddr;

/// When unmapped IOVAs are invalidated in the IOTLB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Every unmap invalidates and waits before returning.
    Strict,
    /// Unmaps queue their IOVAs on a per-CPU flush queue, flushed when a
    /// ring is full or `timeout_ticks` of the environment's clock passed;
    /// an IOVA is reused only after its invalidation completed. Until then
    /// the device may still reach the old memory through stale IOTLB
    /// entries (the trade Linux's non-strict mode makes). Unmaps of
    /// untrusted devices stay strict.
    Lazy {
        /// Flush at the latest this many ticks after the previous flush.
        timeout_ticks: u64,
    },
}

/// How a [`DmaDomain`] is set up.
#[derive(Clone, Copy, Debug)]
pub struct DomainConfig {
    /// Strict or lazy invalidation.
    pub invalidation: Invalidation,
    /// CPUs of the per-CPU IOVA caches and flush queues (0: no IOVA
    /// caches, every allocation goes to the tree).
    pub ncpus: usize,
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self {
            invalidation: Invalidation::Strict,
            ncpus: 1,
        }
    }
}

/// The driver's domain with the DMA layer's state.
pub struct DmaDomain<D: IommuDomain, E: DmaEnv> {
    domain: D,
    env: Arc<E>,
    iova: IovaAllocator,
    fq: Option<FlushQueue>,
    shift: u32,
    /// Names this domain for as long as the program runs (not its
    /// address, which a later domain may be given).
    serial: usize,
}

/// The serial of the next domain. Sixty-four bits of domains do not wrap;
/// on a 32-bit target it would take four billion domains.
static NEXT_SERIAL: AtomicUsize = AtomicUsize::new(1);

type Res<T, D> = Result<T, DmaError<<D as IommuDomain>::Error>>;

impl<D: IommuDomain, E: DmaEnv> DmaDomain<D, E> {
    /// Returns the DMA state over `domain`.
    ///
    /// # Errors
    ///
    /// [`DmaError::BadDomain`] when the domain reports no page size, a
    /// granule below 4 KiB, or no IOVA space beyond one granule.
    pub fn new(domain: D, env: Arc<E>, cfg: DomainConfig) -> Res<Self, D> {
        let bitmap = domain.pgsize_bitmap();
        let bits = domain.iova_bits();
        if bitmap == 0 {
            return Err(DmaError::BadDomain);
        }
        let shift = bitmap.trailing_zeros();
        // Granules below 4 KiB exist in no IOMMU format.
        if shift < 12 || bits <= shift || bits > 64 {
            return Err(DmaError::BadDomain);
        }
        let iova = IovaAllocator::new(IovaConfig::new(shift, bits, cfg.ncpus));
        let fq = match cfg.invalidation {
            Invalidation::Strict => None,
            Invalidation::Lazy { timeout_ticks } => {
                Some(FlushQueue::new(cfg.ncpus, timeout_ticks, env.now_ticks()))
            }
        };
        Ok(Self {
            domain,
            env,
            iova,
            fq,
            shift,
            // Relaxed: the serial only has to differ from every other
            // domain's, which the atomic increment alone guarantees.
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Returns the serial naming this domain, distinct from every other
    /// domain's of the program (link reservations carry it).
    pub(crate) fn serial(&self) -> usize {
        self.serial
    }

    /// Returns the driver's domain.
    pub fn domain(&self) -> &D {
        &self.domain
    }

    /// Returns the environment.
    pub fn env(&self) -> &Arc<E> {
        &self.env
    }

    /// Returns the IOVA allocator.
    pub fn iova(&self) -> &IovaAllocator {
        &self.iova
    }

    /// Returns the IOVA granule in bytes.
    pub fn granule(&self) -> u64 {
        1 << self.shift
    }

    /// Returns whether unmaps are lazy.
    pub fn is_lazy(&self) -> bool {
        self.fq.is_some()
    }

    /// Returns `len` rounded up to whole granules, or `None` on overflow.
    pub(crate) fn align_len(&self, len: u64) -> Option<u64> {
        let m = self.granule() - 1;
        len.checked_add(m).map(|l| l & !m)
    }

    /// Allocates `len` bytes (granule multiple) of IOVA whose last byte is
    /// at or below `mask`; below 4 GiB first when `low_first`.
    pub(crate) fn alloc_iova(&self, len: u64, mask: u64, low_first: bool) -> Res<u64, D> {
        let pages = len >> self.shift;
        let cpu = self.env.cpu_id();
        let limit = |m: u64| (m >> self.shift).saturating_add(1);
        const LOW: u64 = (1 << 32) - 1;
        let pfn = if low_first && mask > LOW {
            self.iova.alloc(pages, limit(LOW), cpu)
        } else {
            None
        };
        pfn.or_else(|| self.iova.alloc(pages, limit(mask), cpu))
            .or_else(|| {
                // Lazily freed IOVAs may be all that is left.
                self.flush_pending().ok()?;
                self.iova.alloc(pages, limit(mask), cpu)
            })
            .map(|p| p << self.shift)
            .ok_or(DmaError::IovaExhausted { size: len })
    }

    /// Gives an IOVA range back at once (nothing of it was ever mapped, or
    /// its invalidation completed).
    pub(crate) fn free_iova_now(&self, iova: u64, len: u64) {
        // A failure here would be our own bookkeeping bug: the range came
        // from `alloc_iova` with the same length.
        let _ = self
            .iova
            .free(iova >> self.shift, len >> self.shift, self.env.cpu_id());
    }

    /// Maps `[iova, iova + len)` to `phys` and makes it visible to the
    /// device. On failure whatever part got mapped is unmapped (and
    /// invalidated) and the IOVA range given back, so nothing changed
    /// ([`DmaDomain::undo_map`]).
    ///
    /// # Errors
    ///
    /// The domain's error from the map or the sync.
    pub(crate) fn map_synced(
        &self,
        iova: u64,
        phys: u64,
        len: u64,
        prot: crate::types::IommuProt,
    ) -> Result<(), D::Error> {
        let dom = self.domain();
        let r = dom
            .map(iova, phys, len, prot)
            .and_then(|()| dom.sync_map(iova, len));
        if r.is_err() {
            self.undo_map(iova, len, len);
        }
        r
    }

    /// Removes what a failed map left in `[iova, iova + mapped)` and gives
    /// the `len` bytes of IOVA back, unless that unmap failed too: then
    /// translations may be left, and the IOVA stays out of reuse.
    pub(crate) fn undo_map(&self, iova: u64, mapped: u64, len: u64) {
        if self.domain.unmap(iova, mapped).is_ok() {
            self.free_iova_now(iova, len);
        }
    }

    /// Removes the translations of `[iova, iova + len)`: invalidated before
    /// returning when strict (the domain's mode or `strict`), left for the
    /// flush queue when lazy.
    ///
    /// Returns the bytes unmapped.
    pub(crate) fn unmap_pages(&self, iova: u64, len: u64, strict: bool) -> Res<u64, D> {
        let strict = strict || self.fq.is_none();
        let r = if strict {
            self.domain.unmap(iova, len)
        } else {
            self.domain.unmap_deferred(iova, len)
        };
        if r.is_err() && !strict {
            // Part of the range may be cleared, and nothing is queued to
            // flush it: invalidate now, as a strict unmap's error does.
            let _ = self.domain.flush_all();
        }
        r.map_err(DmaError::Iommu)
    }

    /// Releases an IOVA range whose translations were removed by
    /// [`DmaDomain::unmap_pages`] with the same `strict`: at once when
    /// strict, through the flush queue when lazy.
    pub(crate) fn release_iova(&self, iova: u64, len: u64, strict: bool) -> Res<(), D> {
        let Some(fq) = self.fq.as_ref().filter(|_| !strict) else {
            self.free_iova_now(iova, len);
            return Ok(());
        };
        let cpu = self.env.cpu_id();
        fq.queue(
            cpu,
            iova >> self.shift,
            len >> self.shift,
            self.env.now_ticks(),
            &|| self.domain.flush_all(),
            &mut |pfn, pages| {
                let _ = self.iova.free(pfn, pages, cpu);
            },
        )
        .map_err(DmaError::Iommu)
    }

    /// Unmaps a whole mapping of `len` bytes at `iova` and releases its
    /// IOVA; `strict` invalidates before returning even in a lazy domain
    /// (untrusted devices: their bounce slots are reused at once, and a
    /// stale IOTLB entry would show the next user's data to the device).
    ///
    /// # Errors
    ///
    /// [`DmaError::NotMapped`] when nothing was mapped at `iova` (nothing
    /// changed); [`DmaError::SizeMismatch`] when another amount was
    /// unmapped (that part is invalidated, the IOVA is kept from reuse).
    pub(crate) fn unmap_range(
        &self,
        dma: DmaAddr,
        iova: u64,
        len: u64,
        strict: bool,
    ) -> Res<(), D> {
        let done = self.unmap_pages(iova, len, strict)?;
        if done == 0 {
            return Err(DmaError::NotMapped(dma));
        }
        if done != len {
            if self.fq.is_some() && !strict {
                self.domain.flush_all().map_err(DmaError::Iommu)?;
            }
            return Err(DmaError::SizeMismatch {
                addr: dma,
                expected: len,
                found: done,
            });
        }
        self.release_iova(iova, len, strict)
    }

    /// Invalidates the IOTLB now and frees every lazily queued IOVA.
    ///
    /// # Errors
    ///
    /// The IOMMU's error (the queue is kept).
    pub fn flush_pending(&self) -> Res<(), D> {
        let Some(fq) = &self.fq else {
            return Ok(());
        };
        let cpu = self.env.cpu_id();
        fq.flush_now(
            self.env.now_ticks(),
            &|| self.domain.flush_all(),
            &mut |pfn, pages| {
                let _ = self.iova.free(pfn, pages, cpu);
            },
        )
        .map_err(DmaError::Iommu)
    }

    /// The flush-queue timer: flushes if the timeout passed with IOVAs
    /// queued, and frees what became safe. Call it from the environment's
    /// periodic tick; a no-op in strict mode.
    ///
    /// # Errors
    ///
    /// The IOMMU's error.
    pub fn tick(&self) -> Res<(), D> {
        let Some(fq) = &self.fq else {
            return Ok(());
        };
        let cpu = self.env.cpu_id();
        fq.tick(
            self.env.now_ticks(),
            &|| self.domain.flush_all(),
            &mut |pfn, pages| {
                let _ = self.iova.free(pfn, pages, cpu);
            },
        )
        .map_err(DmaError::Iommu)
    }

    /// Returns how many unmapped ranges wait for an invalidation.
    pub fn pending(&self) -> usize {
        self.fq.as_ref().map_or(0, FlushQueue::pending)
    }
}

impl<D: IommuDomain, E: DmaEnv> Drop for DmaDomain<D, E> {
    fn drop(&mut self) {
        // Stale translations must not outlive the DMA layer's view.
        if self.pending() > 0 {
            let _ = self.domain.flush_all();
        }
    }
}
