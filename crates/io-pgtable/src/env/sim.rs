//! `SimEnv`: the environment traits over [`sim_memory::SimMemory`].

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sim_memory::{MemError, SimMemory};

use super::{AllocError, CacheError, CacheMaintenance, Gather, MIN_TABLE_SIZE, TableBlock};
use super::{TableMemory, TlbError, TlbHooks};

/// Environment over simulated memory: tables are allocated from the
/// [`SimMemory`] buddy allocator, cleans go to [`SimMemory::clean`] (so a
/// non-coherent device view only sees cleaned lines), TLB hooks are counted.
#[derive(Debug)]
pub struct SimEnv {
    mem: Arc<SimMemory>,
    flush_walks: AtomicU64,
    gather_syncs: AtomicU64,
    /// Ranges invalidated by the hooks since the last `take_invalidated`.
    invalidated: std::sync::Mutex<std::vec::Vec<(u64, u64)>>,
}

impl SimEnv {
    /// Returns an environment allocating from `mem`.
    pub fn new(mem: Arc<SimMemory>) -> Self {
        Self {
            mem,
            flush_walks: AtomicU64::new(0),
            gather_syncs: AtomicU64::new(0),
            invalidated: Default::default(),
        }
    }

    /// Returns the memory.
    pub fn mem(&self) -> &Arc<SimMemory> {
        &self.mem
    }

    /// Returns how many times `flush_walk` was called.
    pub fn flush_walks(&self) -> u64 {
        self.flush_walks.load(Ordering::Relaxed)
    }

    /// Returns how many times `sync_gather` was called.
    pub fn gather_syncs(&self) -> u64 {
        self.gather_syncs.load(Ordering::Relaxed)
    }

    /// Returns the `(start, end)` ranges `flush_walk` and `sync_gather`
    /// invalidated since the last call, and forgets them.
    pub fn take_invalidated(&self) -> std::vec::Vec<(u64, u64)> {
        core::mem::take(&mut *self.invalidated.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn log(&self, start: u64, end: u64) {
        self.invalidated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((start, end));
    }
}

// SAFETY: SimMemory::alloc returns naturally aligned blocks (buddy
// allocator) whose CPU view is zeroed, exclusively ours until freed; the CPU
// view is an array of AtomicU64, so every access is atomic; `cpu_ptr` maps
// each physical address to its CPU-view byte for the life of the memory,
// which the Arc keeps alive at least as long as `self`.
unsafe impl TableMemory for SimEnv {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        if size < MIN_TABLE_SIZE || !size.is_power_of_two() {
            return Err(AllocError::BadSize { size });
        }
        let phys = self.mem.alloc(size as u64).map_err(|e| match e {
            MemError::BadSize { .. } => AllocError::BadSize { size },
            _ => AllocError::NoMemory { size },
        })?;
        let cpu = self
            .mem
            .cpu_ptr(phys)
            .and_then(NonNull::new)
            .ok_or(AllocError::NoMemory { size })?;
        Ok(TableBlock { cpu, phys })
    }

    unsafe fn free_table(&self, block: TableBlock, _size: usize) {
        self.mem.free(block.phys);
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.mem
            .cpu_ptr(phys)
            .and_then(NonNull::new)
            .unwrap_or(NonNull::dangling())
    }
}

impl CacheMaintenance for SimEnv {
    fn clean(&self, _cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.mem
            .clean(phys, len as u64)
            .map_err(|_| CacheError { phys, len })
    }

    fn device_write_barrier(&self) {
        super::barrier::device_write();
    }

    fn full_barrier(&self) {
        super::barrier::full();
    }
}

impl TlbHooks for SimEnv {
    fn flush_walk(&self, iova: u64, size: u64, _granule: u64) -> Result<(), TlbError> {
        self.flush_walks.fetch_add(1, Ordering::Relaxed);
        self.log(iova, iova.wrapping_add(size));
        Ok(())
    }

    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError> {
        self.gather_syncs.fetch_add(1, Ordering::Relaxed);
        self.log(gather.start(), gather.end());
        Ok(())
    }
}
