//! Host environments: heap-allocated tables with phys == virt, and a
//! counting wrapper around any environment.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{AllocError, CacheError, CacheMaintenance, Gather, MIN_TABLE_SIZE, TableBlock};
use super::{TableMemory, TlbError, TlbHooks};

/// What [`HostEnv::clean`] does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CleanMode {
    /// Nothing (a coherent system; the call itself is the cost).
    #[default]
    Nop,
    /// Flushes each line from the CPU caches (`clflush` on x86-64, nothing
    /// elsewhere): real per-line work, like `DC CVAC` on Arm.
    Flush,
}

/// Heap-backed environment: tables come from the global allocator, the
/// "physical" address is the virtual one, TLB hooks do nothing.
///
/// For benchmarks, tools and tests on the host. The device side is the CPU
/// itself, so it is coherent whatever [`CleanMode`] says.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostEnv {
    /// What a clean does.
    pub clean_mode: CleanMode,
}

impl HostEnv {
    /// Returns an environment whose cleans do `clean_mode`.
    pub const fn new(clean_mode: CleanMode) -> Self {
        Self { clean_mode }
    }
}

// SAFETY: blocks come from the global allocator with size == alignment and
// are zeroed (`alloc_zeroed`); each is exclusively ours until `free_table`.
// phys is the address itself, so `phys_to_cpu` is the identity on live
// blocks. HostEnv never touches the blocks itself except in `clean`, which
// only flushes caches.
unsafe impl TableMemory for HostEnv {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        if size < MIN_TABLE_SIZE || !size.is_power_of_two() {
            return Err(AllocError::BadSize { size });
        }
        let layout = std::alloc::Layout::from_size_align(size, size)
            .map_err(|_| AllocError::BadSize { size })?;
        // SAFETY: the layout has a non-zero size (>= 64).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let cpu = NonNull::new(ptr).ok_or(AllocError::NoMemory { size })?;
        Ok(TableBlock {
            cpu,
            phys: ptr as u64,
        })
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        let Ok(layout) = std::alloc::Layout::from_size_align(size, size) else {
            return;
        };
        // SAFETY: the caller guarantees `block` came from `alloc_table(size)`,
        // which used exactly this layout, and is no longer used.
        unsafe { std::alloc::dealloc(block.cpu.as_ptr(), layout) };
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        // Live blocks are never at address 0, so this is only dangling for
        // addresses the trait contract excludes.
        NonNull::new(phys as *mut u8).unwrap_or(NonNull::dangling())
    }
}

impl CacheMaintenance for HostEnv {
    #[inline]
    fn clean(&self, cpu: NonNull<u8>, _phys: u64, len: usize) -> Result<(), CacheError> {
        if self.clean_mode == CleanMode::Flush {
            flush_lines(cpu, len);
        }
        Ok(())
    }

    #[inline]
    fn device_write_barrier(&self) {
        super::barrier::device_write();
    }

    #[inline]
    fn full_barrier(&self) {
        super::barrier::full();
    }
}

#[cfg(target_arch = "x86_64")]
fn flush_lines(cpu: NonNull<u8>, len: usize) {
    let start = cpu.as_ptr() as usize & !63;
    let end = cpu.as_ptr() as usize + len;
    let mut line = start;
    while line < end {
        // SAFETY: clflush takes any address in a mapped line; `line` is in the
        // block the caller is cleaning (rounded down to its first line, which
        // is in the same block because blocks are 64-byte aligned). SSE2 is
        // part of the x86-64 baseline.
        unsafe { core::arch::x86_64::_mm_clflush(line as *const u8) };
        line += 64;
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn flush_lines(_cpu: NonNull<u8>, _len: usize) {}

impl TlbHooks for HostEnv {
    #[inline]
    fn flush_walk(&self, _iova: u64, _size: u64, _granule: u64) -> Result<(), TlbError> {
        Ok(())
    }
    #[inline]
    fn sync_gather(&self, _gather: &Gather) -> Result<(), TlbError> {
        Ok(())
    }
}

/// Counters of an environment wrapped in [`Counting`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvStats {
    /// Successful table allocations.
    pub allocs: u64,
    /// Table frees.
    pub frees: u64,
    /// Bytes of table memory currently allocated.
    pub bytes_live: u64,
    /// Highest `bytes_live` seen.
    pub bytes_peak: u64,
    /// Calls to `clean`.
    pub clean_calls: u64,
    /// 64-byte lines covered by those cleans.
    pub lines_cleaned: u64,
    /// Calls to `flush_walk`.
    pub flush_walks: u64,
    /// Calls to `sync_gather`.
    pub gather_syncs: u64,
    /// Calls to `device_write_barrier` or `full_barrier`.
    pub barriers: u64,
}

#[derive(Debug, Default)]
struct Counters {
    allocs: AtomicU64,
    frees: AtomicU64,
    bytes_live: AtomicU64,
    bytes_peak: AtomicU64,
    clean_calls: AtomicU64,
    lines_cleaned: AtomicU64,
    flush_walks: AtomicU64,
    gather_syncs: AtomicU64,
    barriers: AtomicU64,
}

/// Wraps an environment and counts what is asked of it.
#[derive(Debug, Default)]
pub struct Counting<E> {
    inner: E,
    c: Counters,
}

impl<E> Counting<E> {
    /// Returns `inner` wrapped with zeroed counters.
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            c: Counters::default(),
        }
    }

    /// Returns the wrapped environment.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    /// Returns a snapshot of the counters.
    pub fn stats(&self) -> EnvStats {
        let c = &self.c;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EnvStats {
            allocs: l(&c.allocs),
            frees: l(&c.frees),
            bytes_live: l(&c.bytes_live),
            bytes_peak: l(&c.bytes_peak),
            clean_calls: l(&c.clean_calls),
            lines_cleaned: l(&c.lines_cleaned),
            flush_walks: l(&c.flush_walks),
            gather_syncs: l(&c.gather_syncs),
            barriers: l(&c.barriers),
        }
    }

    /// Resets the clean, flush and sync counters (allocation counters keep
    /// tracking live memory).
    pub fn reset_activity(&self) {
        self.c.clean_calls.store(0, Ordering::Relaxed);
        self.c.lines_cleaned.store(0, Ordering::Relaxed);
        self.c.flush_walks.store(0, Ordering::Relaxed);
        self.c.gather_syncs.store(0, Ordering::Relaxed);
        self.c.barriers.store(0, Ordering::Relaxed);
    }
}

// SAFETY: pure delegation to `inner`, which upholds the contract; the
// counters do not touch the memory.
unsafe impl<E: TableMemory> TableMemory for Counting<E> {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        let b = self.inner.alloc_table(size)?;
        self.c.allocs.fetch_add(1, Ordering::Relaxed);
        let live = self.c.bytes_live.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
        self.c.bytes_peak.fetch_max(live, Ordering::Relaxed);
        Ok(b)
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        self.c.frees.fetch_add(1, Ordering::Relaxed);
        self.c.bytes_live.fetch_sub(size as u64, Ordering::Relaxed);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.inner.free_table(block, size) }
    }

    #[inline]
    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.inner.phys_to_cpu(phys)
    }
}

impl<E: CacheMaintenance> CacheMaintenance for Counting<E> {
    #[inline]
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.c.clean_calls.fetch_add(1, Ordering::Relaxed);
        if len > 0 {
            let lines = (phys + len as u64 - 1) / 64 - phys / 64 + 1;
            self.c.lines_cleaned.fetch_add(lines, Ordering::Relaxed);
        }
        self.inner.clean(cpu, phys, len)
    }

    #[inline]
    fn device_write_barrier(&self) {
        self.c.barriers.fetch_add(1, Ordering::Relaxed);
        self.inner.device_write_barrier()
    }

    #[inline]
    fn full_barrier(&self) {
        self.c.barriers.fetch_add(1, Ordering::Relaxed);
        self.inner.full_barrier()
    }
}

impl<E: TlbHooks> TlbHooks for Counting<E> {
    fn flush_walk(&self, iova: u64, size: u64, granule: u64) -> Result<(), TlbError> {
        self.c.flush_walks.fetch_add(1, Ordering::Relaxed);
        self.inner.flush_walk(iova, size, granule)
    }

    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError> {
        self.c.gather_syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_gather(gather)
    }
}
