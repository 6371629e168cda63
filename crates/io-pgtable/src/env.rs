//! Environment traits: the seam between table logic and the system it runs
//! in (kernel-like host, hypervisor, bare metal, simulated memory).
//!
//! They know nothing about page tables, so the SMMUv3 driver reuses
//! [`TableMemory`] and [`CacheMaintenance`] for its stream tables, context
//! descriptors and queues.
//!
//! * [`TableMemory`]: zeroed, naturally aligned memory the device walks,
//!   with its physical address.
//! * [`CacheMaintenance`]: clean CPU cache lines to the point of coherency
//!   so a non-coherent device sees CPU stores.
//! * [`TlbHooks`]: what io-pgtable asks of the TLB owner (the driver).
//!
//! Implementations: `HostEnv` (feature `std`), `SimEnv` (feature `sim`) and
//! the `Counting` wrapper (feature `std`).

use core::ptr::NonNull;

pub mod barrier;
#[cfg(feature = "std")]
mod host;
#[cfg(feature = "sim")]
mod sim;

#[cfg(feature = "std")]
pub use host::{CleanMode, Counting, EnvStats, HostEnv};
#[cfg(feature = "sim")]
pub use sim::SimEnv;

/// Smallest table block size: one cache line, as non-coherent walkers need.
pub const MIN_TABLE_SIZE: usize = 64;

/// A block of table memory: its CPU pointer and its physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableBlock {
    /// Where the CPU reads and writes the block.
    pub cpu: NonNull<u8>,
    /// The address the device uses for the block.
    pub phys: u64,
}

/// Table memory could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No memory left (or failure injected).
    #[error("out of table memory allocating {size:#x} bytes")]
    NoMemory {
        /// Requested size.
        size: usize,
    },
    /// The size is not a power of two of at least [`MIN_TABLE_SIZE`] bytes,
    /// or larger than the environment supports.
    #[error("unsupported table memory size {size:#x}")]
    BadSize {
        /// Requested size.
        size: usize,
    },
}

/// Cache maintenance failed (an environment-detected bug such as a range
/// outside the memory it manages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cache maintenance of {phys:#x}+{len:#x} failed")]
pub struct CacheError {
    /// First byte of the failed range.
    pub phys: u64,
    /// Length of the range.
    pub len: usize,
}

/// Memory for structures a device walks (page tables, stream tables, queues).
///
/// # Safety
///
/// Implementors guarantee that:
/// * a block returned by [`TableMemory::alloc_table`] is `size` bytes of
///   zeroed memory, aligned to `size` both at `cpu` and at `phys`, valid for
///   reads and writes, used by nobody else until it is passed to
///   [`TableMemory::free_table`], and only ever accessed atomically (64-bit
///   or smaller aligned accesses) by the environment itself;
/// * [`TableMemory::phys_to_cpu`] of any address inside a live block returns
///   the CPU pointer to that same byte.
///
/// Under `--cfg loom` (the model check in `tests/loom.rs`) an entry is a
/// loom atomic, larger than 8 bytes: physical addresses still count 8
/// bytes an entry, and `phys_to_cpu(table + 8 * i)` returns the `i`-th
/// loom atomic of the table.
pub unsafe trait TableMemory {
    /// Returns a zeroed, naturally aligned block of `size` bytes.
    ///
    /// `size` is a power of two, at least [`MIN_TABLE_SIZE`]; io-pgtable asks
    /// for up to 16 x 64 KiB (concatenated stage-2 start tables).
    ///
    /// # Errors
    ///
    /// [`AllocError`] when no memory is available or the size is unsupported.
    /// Never panics for lack of memory.
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError>;

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// `block` was returned by `alloc_table(size)` on this environment, was
    /// not freed since, and nobody (CPU or device) uses it any more.
    unsafe fn free_table(&self, block: TableBlock, size: usize);

    /// Returns the CPU pointer of a physical address inside a live block.
    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8>;
}

/// Cache maintenance and ordering towards a device.
///
/// The barriers have no default implementation on purpose: a wrapper that
/// forgets to forward one does not compile, so no layer can silently drop
/// the ordering a device depends on. On a coherent walker `clean` may do
/// nothing, but the barriers never may.
pub trait CacheMaintenance {
    /// Cleans every cache line overlapping `[phys, phys + len)` (CPU pointer
    /// `cpu`) to the point of coherency, so a non-coherent device reads what
    /// the CPU wrote. Must include the barrier that orders the clean before
    /// later device-visible writes (e.g. `DSB` after `DC CVAC`).
    ///
    /// # Errors
    ///
    /// [`CacheError`] when the environment detects a range it does not
    /// manage (a bug in the caller); hardware implementations never fail.
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError>;

    /// Orders every earlier CPU store to memory a device reads before every
    /// later store, to memory or to a device register, as the device
    /// observes them: a table's contents before the descriptor that links
    /// it, leaf stores before the caller hands the IOVA to a device, queue
    /// entries before the doorbell that publishes them. `DMB OSHST` on Arm
    /// (Linux's `dma_wmb()`); a compiler-and-CPU release fence suffices only
    /// where the device is a CPU-side model.
    fn device_write_barrier(&self);

    /// Completes every earlier memory access before any later access
    /// (loads included): before reading what a device wrote after seeing
    /// its completion in a register, and before a doorbell whose device may
    /// read memory through a path outside the shareability domain. `DSB SY`
    /// on Arm (Linux's `mb()`).
    fn full_barrier(&self);
}

/// Why a TLB or walk-cache invalidation failed. The entries it was asked
/// to invalidate may still be cached: the caller must not reuse the memory
/// they pointed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlbError {
    /// The device did not complete the invalidation in time.
    #[error("TLB invalidation timed out")]
    Timeout,
    /// The device rejected an invalidation command (raw command words).
    #[error("TLB invalidation command {0:x?} rejected")]
    Rejected([u64; 2]),
    /// The invalidation could not be issued (queue disabled, bad operand).
    #[error("TLB invalidation not issued: {0}")]
    NotIssued(&'static str),
}

/// TLB maintenance that io-pgtable asks of the driver owning the TLB.
///
/// The contract (see the crate docs): io-pgtable adds only unmapped
/// **leaves** to a [`Gather`]; a table it disconnects is flushed right away
/// with [`TlbHooks::flush_walk`] and retired, never gathered. Every hook is
/// fallible and synchronous, and a failure surfaces in the operation's
/// [`crate::Partial`] with exactly what was done, so the caller always
/// knows what is still to invalidate. Nothing is remembered between calls.
pub trait TlbHooks {
    /// Invalidates every TLB and walk-cache entry for `[iova, iova + size)`
    /// and **waits** for completion.
    ///
    /// Called after a table was disconnected (before its memory can be
    /// reused) and in break-before-make sequences (block split, contiguous
    /// run rewrite). `granule` is the smallest page size of the table (a
    /// hint for range invalidation).
    ///
    /// # Errors
    ///
    /// [`TlbError`] when the invalidation did not complete.
    fn flush_walk(&self, iova: u64, size: u64, granule: u64) -> Result<(), TlbError>;

    /// Invalidates the leaf TLB entries of `gather` and waits, because
    /// [`TlbHooks::add_pages`] is about to start a new, incompatible range.
    ///
    /// # Errors
    ///
    /// [`TlbError`] when the invalidation did not complete.
    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError>;

    /// Adds `count` unmapped leaves of `pgsize` bytes at `iova` to `gather`.
    ///
    /// The default merges into the gather and calls
    /// [`TlbHooks::sync_gather`] first when the page size changes or the
    /// range is disjoint. When that sync fails nothing is lost: the gather
    /// is widened to cover both ranges (over-invalidation is safe).
    ///
    /// # Errors
    ///
    /// [`TlbError`] from the sync; `gather` then holds everything still to
    /// invalidate.
    #[inline]
    fn add_pages(
        &self,
        gather: &mut Gather,
        iova: u64,
        pgsize: u64,
        count: u64,
    ) -> Result<(), TlbError> {
        if gather.is_empty() {
            // The common case of a single run: no merge, no sync.
            *gather = Gather {
                start: iova,
                end: iova.saturating_add(pgsize.saturating_mul(count)),
                pgsize,
            };
            return Ok(());
        }
        if gather.needs_sync(iova, pgsize, count) {
            if let Err(e) = self.sync_gather(gather) {
                gather.widen(iova, pgsize, count);
                return Err(e);
            }
            gather.take();
        }
        gather.add(iova, pgsize, count);
        Ok(())
    }
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: TableMemory + ?Sized> TableMemory for &T {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        (**self).alloc_table(size)
    }
    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        // SAFETY: forwarded caller guarantee.
        unsafe { (**self).free_table(block, size) }
    }
    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        (**self).phys_to_cpu(phys)
    }
}

impl<T: CacheMaintenance + ?Sized> CacheMaintenance for &T {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        (**self).clean(cpu, phys, len)
    }
    fn device_write_barrier(&self) {
        (**self).device_write_barrier()
    }
    fn full_barrier(&self) {
        (**self).full_barrier()
    }
}

impl<T: TlbHooks + ?Sized> TlbHooks for &T {
    fn flush_walk(&self, iova: u64, size: u64, granule: u64) -> Result<(), TlbError> {
        (**self).flush_walk(iova, size, granule)
    }
    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError> {
        (**self).sync_gather(gather)
    }
    fn add_pages(
        &self,
        gather: &mut Gather,
        iova: u64,
        pgsize: u64,
        count: u64,
    ) -> Result<(), TlbError> {
        (**self).add_pages(gather, iova, pgsize, count)
    }
}

/// Everything a page table needs from its environment.
pub trait PtEnv: TableMemory + CacheMaintenance + TlbHooks {}

impl<T: TableMemory + CacheMaintenance + TlbHooks> PtEnv for T {}

/// A range of unmapped leaves whose TLB entries still need invalidating.
///
/// Holds one contiguous range and one page size. [`Gather::add`] reports
/// when a new page cannot be merged (disjoint range or other page size):
/// the caller must invalidate the returned old range first. Only
/// [`Gather::widen`] (after such an invalidation failed) makes a gather
/// hold leaves of several sizes; [`Gather::leaf_size`] then says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gather {
    start: u64,
    end: u64,
    /// The leaf size, with [`MIXED`] set when the gather holds leaves of
    /// more than one size (widened): no leaf-level hint holds then. A bit
    /// of the size, not a field, keeps the gather three words.
    pgsize: u64,
}

/// Bit 0 of `Gather::pgsize` (page sizes are at least 4 KiB): the gather
/// holds leaves of several sizes.
const MIXED: u64 = 1;

impl Gather {
    /// Returns an empty gather.
    pub const fn new() -> Self {
        Self {
            start: 0,
            end: 0,
            pgsize: 0,
        }
    }

    /// Returns whether nothing was gathered.
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Returns the first gathered address.
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// Returns the end (exclusive) of the gathered range.
    pub const fn end(&self) -> u64 {
        self.end
    }

    /// Returns the gathered length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Returns the leaf size of the gathered pages, the smallest one when
    /// [`Gather::widen`] merged several (0 when empty).
    pub const fn pgsize(&self) -> u64 {
        self.pgsize & !MIXED
    }

    /// Returns the size of every gathered leaf when they all have one (a
    /// valid leaf-level hint for the invalidation, such as a range TLBI's
    /// TTL), or `None` when the gather is empty or a failed sync widened it
    /// over leaves of several sizes: a hint of the smallest level would let
    /// the TLB keep the larger leaves, so the caller must invalidate
    /// without one.
    pub const fn leaf_size(&self) -> Option<u64> {
        if self.is_empty() || self.pgsize & MIXED != 0 {
            None
        } else {
            Some(self.pgsize)
        }
    }

    /// Returns whether adding `count` pages of `pgsize` at `iova` would need
    /// a sync first (page size changed, or the range is disjoint).
    #[inline]
    pub fn needs_sync(&self, iova: u64, pgsize: u64, count: u64) -> bool {
        let end = iova.saturating_add(pgsize.saturating_mul(count));
        !self.is_empty() && (pgsize != self.pgsize() || end < self.start || iova > self.end)
    }

    /// Adds `count` pages of `pgsize` at `iova`.
    ///
    /// Returns `None` when they merged, or `Some(old)` when the gather had to
    /// restart with only the new pages: `old` must be invalidated first.
    #[inline]
    pub fn add(&mut self, iova: u64, pgsize: u64, count: u64) -> Option<Gather> {
        let end = iova.saturating_add(pgsize.saturating_mul(count));
        if self.needs_sync(iova, pgsize, count) {
            let old = *self;
            *self = Self {
                start: iova,
                end,
                pgsize,
            };
            return Some(old);
        }
        if self.is_empty() {
            *self = Self {
                start: iova,
                end,
                pgsize,
            };
        } else {
            self.start = self.start.min(iova);
            self.end = self.end.max(end);
        }
        None
    }

    /// Grows the gather to cover `count` pages of `pgsize` at `iova` as well
    /// as what it held (and everything between), keeping the smaller page
    /// size: a superset to invalidate when a sync that should have split the
    /// two ranges failed. Pages of another size leave the gather without a
    /// [`Gather::leaf_size`].
    pub fn widen(&mut self, iova: u64, pgsize: u64, count: u64) {
        let end = iova.saturating_add(pgsize.saturating_mul(count));
        if self.is_empty() {
            *self = Self {
                start: iova,
                end,
                pgsize,
            };
            return;
        }
        self.start = self.start.min(iova);
        self.end = self.end.max(end);
        let mixed = self.pgsize & MIXED != 0 || pgsize != self.pgsize;
        self.pgsize = self.pgsize().min(pgsize) | if mixed { MIXED } else { 0 };
    }

    /// Empties the gather (after the driver invalidated it), returning what
    /// it held.
    pub fn take(&mut self) -> Gather {
        core::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_merges_adjacent_and_overlapping_ranges() {
        let mut g = Gather::new();
        assert!(g.is_empty());
        assert_eq!(g.add(0x1000, 0x1000, 2), None);
        assert_eq!(g.add(0x3000, 0x1000, 1), None);
        assert_eq!(g.add(0x0, 0x1000, 1), None);
        assert_eq!((g.start(), g.end(), g.pgsize()), (0, 0x4000, 0x1000));
        assert_eq!(g.len(), 0x4000);
    }

    #[test]
    fn gather_asks_for_sync_on_disjoint_range_or_new_page_size() {
        let mut g = Gather::new();
        g.add(0x1000, 0x1000, 1);
        assert!(g.needs_sync(0x3000, 0x1000, 1));
        let old = g.add(0x3000, 0x1000, 1).unwrap();
        assert_eq!((old.start(), old.end()), (0x1000, 0x2000));
        assert_eq!((g.start(), g.end()), (0x3000, 0x4000));
        let old = g.add(0x4000, 0x20_0000, 1).unwrap();
        assert_eq!(old.pgsize(), 0x1000);
        assert_eq!(g.pgsize(), 0x20_0000);
        assert_eq!(g.take().len(), 0x20_0000);
        assert!(g.is_empty());
    }

    #[test]
    fn a_gather_widened_over_two_page_sizes_has_no_leaf_size() {
        let mut g = Gather::new();
        assert_eq!(g.leaf_size(), None);
        g.add(0, 0x20_0000, 1);
        assert_eq!(g.leaf_size(), Some(0x20_0000));
        // The same size keeps its hint, another size loses it.
        g.widen(0x40_0000, 0x20_0000, 1);
        assert_eq!(g.leaf_size(), Some(0x20_0000));
        g.widen(0x60_0000, 0x1000, 1);
        assert_eq!((g.pgsize(), g.leaf_size()), (0x1000, None));
        assert_eq!((g.start(), g.end()), (0, 0x60_1000));
        // Merging more pages keeps it mixed; a restart or take clears it.
        assert_eq!(g.add(0x60_1000, 0x1000, 1), None);
        assert_eq!(g.leaf_size(), None);
        assert!(g.add(0x100_0000, 0x1000, 1).is_some());
        assert_eq!(g.leaf_size(), Some(0x1000));
        g.widen(0, 0x20_0000, 1);
        g.take();
        assert_eq!(g.leaf_size(), None);
        g.add(0, 0x1000, 1);
        assert_eq!(g.leaf_size(), Some(0x1000));
    }
}
