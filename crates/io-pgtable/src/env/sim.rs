//! `SimEnv`: the environment traits over [`sim_memory::SimMemory`].

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::boxed::Box;
use std::sync::{Arc, OnceLock};

use sim_memory::{MemError, SimMemory};

use super::{AllocError, CacheError, CacheMaintenance, Gather, MIN_TABLE_SIZE, TableBlock};
use super::{TableMemory, TlbError, TlbHooks};

/// Bytes of the scratch area, and the alignment of the window an
/// out-of-range address gets: the largest table io-pgtable allocates (16
/// concatenated 64 KiB stage-2 start tables).
const SCRATCH_BYTES: usize = 16 * 64 * 1024;

/// Alignment of simulated memory's base and size ([`SimMemory::new`]
/// refuses anything else): the largest granule, so a table descriptor never
/// points at a table that starts in memory and ends outside it.
const WINDOW: u64 = 64 * 1024;

/// Environment over simulated memory: tables are allocated from the
/// [`SimMemory`] buddy allocator, cleans go to [`SimMemory::clean`] (so a
/// non-coherent device view only sees cleaned lines), TLB hooks are counted.
///
/// # Table memory contract
///
/// Safe code can write anything into simulated memory (for instance a table
/// descriptor pointing outside it, with [`SimMemory::cpu_write_u64`]), and
/// io-pgtable then follows it. So [`TableMemory::phys_to_cpu`] gives a
/// pointer that is valid for *any* physical address, not only for addresses
/// of live blocks:
///
/// * an address inside simulated memory gets its CPU-view byte. Memory base
///   and size are multiples of 64 KiB, so the pointer is valid up to the end
///   of the address's 64 KiB-aligned window: any table a descriptor can name
///   (one granule, at most 64 KiB, granule-aligned) lies wholly in memory.
///   Larger tables (concatenated stage-2 roots) are only ever reached from
///   [`TableMemory::alloc_table`], as live blocks;
/// * any other address gets a byte of a 1 MiB scratch area this environment
///   owns (allocated zeroed on first use), at the address's offset in its
///   1 MiB-aligned window, so the pointer is valid up to the end of that
///   window: a walk through a wild descriptor reads zeros (invalid
///   descriptors, a translation fault), and stores through it land in the
///   scratch area, never in simulated memory or anywhere else (all wild
///   addresses share the area, so after such a store a later wild walk may
///   read what was stored: garbage in, garbage out, but never undefined
///   behaviour).
///
/// Either way the pointer is congruent to the address modulo 8, stays valid
/// as long as `self`, and all memory behind it is `AtomicU64`s, so every
/// access — io-pgtable's, [`SimMemory`]'s safe accessors', a device model's
/// — is atomic and none is a data race.
#[derive(Debug)]
pub struct SimEnv {
    mem: Arc<SimMemory>,
    scratch: OnceLock<Box<[AtomicU64]>>,
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
            scratch: OnceLock::new(),
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

    /// Returns the scratch byte standing in for `phys`, which is outside
    /// simulated memory: its offset in its 1 MiB-aligned window.
    fn scratch_ptr(&self, phys: u64) -> NonNull<u8> {
        let words = self.scratch.get_or_init(|| {
            (0..SCRATCH_BYTES / 8)
                .map(|_| AtomicU64::new(0))
                .collect::<Box<[_]>>()
        });
        let off = (phys % SCRATCH_BYTES as u64) as usize;
        // `off < SCRATCH_BYTES`, the slice's length in bytes: in bounds.
        let p = words.as_ptr().cast::<u8>().cast_mut().wrapping_add(off);
        NonNull::new(p).unwrap_or(NonNull::from(&words[0]).cast())
    }
}

// SAFETY: SimMemory::alloc returns naturally aligned blocks (buddy
// allocator, offsets from a 64 KiB-aligned base) whose CPU view is zeroed,
// exclusively ours until freed; the CPU view is an array of AtomicU64 that
// SimMemory itself only accesses atomically, so every access is atomic;
// `cpu_ptr` maps each physical address to its CPU-view byte for the life of
// the memory, which the Arc keeps alive at least as long as `self`. Beyond
// the contract, `phys_to_cpu` is sound for every input (see the type's
// documentation): in-range addresses keep their 64 KiB window inside the
// memory, the rest go to the scratch area, which `self` owns.
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
        debug_assert!(self.mem.base() % WINDOW == 0 && self.mem.size() % WINDOW == 0);
        match self.mem.cpu_ptr(phys).and_then(NonNull::new) {
            Some(cpu) => cpu,
            None => self.scratch_ptr(phys),
        }
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
