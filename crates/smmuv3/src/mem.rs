//! Device-visible memory owned by the driver (stream tables, CD tables,
//! queues), reached through io-pgtable's environment traits.

use core::sync::atomic::{AtomicU64, Ordering};

use io_pgtable::env::{CacheMaintenance, TableBlock, TableMemory};

use crate::Error;

/// A block of table memory with 64-bit atomic word access and cleaning.
///
/// Not freed on drop (it does not own the allocator); owners call
/// [`DevBlock::free`].
#[derive(Debug)]
pub struct DevBlock {
    block: TableBlock,
    size: usize,
}

// SAFETY: the block is plain memory reached only through atomic accesses
// (see `word`), so moving the handle between threads is sound.
unsafe impl Send for DevBlock {}
// SAFETY: as for `Send`: `&DevBlock` only allows atomic accesses.
unsafe impl Sync for DevBlock {}

impl DevBlock {
    /// Returns a zeroed block of `size` bytes (a power of two, at least 64),
    /// naturally aligned.
    ///
    /// # Errors
    ///
    /// [`Error::Alloc`] when the environment has no memory.
    pub fn alloc(mem: &impl TableMemory, size: usize) -> Result<Self, Error> {
        let size = size.max(io_pgtable::env::MIN_TABLE_SIZE);
        let block = mem.alloc_table(size)?;
        Ok(Self { block, size })
    }

    /// Returns the physical address.
    pub fn phys(&self) -> u64 {
        self.block.phys
    }

    /// Returns the size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(
            index < self.size / 8,
            "word {index} outside a block of {} bytes",
            self.size
        );
        let p = self
            .block
            .cpu
            .as_ptr()
            .wrapping_add(index * 8)
            .cast::<u64>();
        // SAFETY: `TableMemory`'s contract gives us `size` bytes, 8-byte
        // aligned (natural alignment of at least 64), valid while the block
        // is live, and accessed only atomically; the index is in bounds.
        unsafe { AtomicU64::from_ptr(p) }
    }

    /// Returns the block as 64-bit atomic words (for
    /// [`crate::cmdq::QueueMemory`]).
    pub fn words(&self) -> &[AtomicU64] {
        if self.size == 0 {
            return &[];
        }
        // SAFETY: `TableMemory`'s contract gives us `size` bytes, 8-byte
        // aligned, valid while the block is live (the borrow of `self`),
        // and accessed only atomically.
        unsafe {
            core::slice::from_raw_parts(self.block.cpu.as_ptr().cast::<AtomicU64>(), self.size / 8)
        }
    }

    /// Returns the 64-bit word at `index`.
    pub fn read(&self, index: usize) -> u64 {
        self.word(index).load(Ordering::Acquire)
    }

    /// Stores the 64-bit word at `index` (single-copy atomic, as the SMMU
    /// requires for entry updates).
    pub fn write(&self, index: usize, value: u64) {
        self.word(index).store(value, Ordering::Release);
    }

    /// Cleans `[offset, offset + len)` for a non-coherent device.
    ///
    /// # Errors
    ///
    /// [`Error::Cache`] from the environment.
    pub fn clean(
        &self,
        cache: &impl CacheMaintenance,
        offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        assert!(offset + len <= self.size);
        let cpu = self.block.cpu.as_ptr().wrapping_add(offset);
        let cpu = core::ptr::NonNull::new(cpu).unwrap_or(self.block.cpu);
        cache.clean(cpu, self.block.phys + offset as u64, len)?;
        Ok(())
    }

    /// Makes the CPU see what the device wrote to `[offset, offset + len)`.
    ///
    /// # Errors
    ///
    /// [`Error::Cache`] from the environment.
    pub fn invalidate(
        &self,
        cache: &impl crate::env::CacheInvalidate,
        offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        assert!(offset + len <= self.size);
        let cpu = self.block.cpu.as_ptr().wrapping_add(offset);
        let cpu = core::ptr::NonNull::new(cpu).unwrap_or(self.block.cpu);
        cache.invalidate(cpu, self.block.phys + offset as u64, len)?;
        Ok(())
    }

    /// Returns the block, leaving an empty one (size 0) in its place.
    pub fn take(&mut self) -> DevBlock {
        let empty = DevBlock {
            block: TableBlock {
                cpu: core::ptr::NonNull::dangling(),
                phys: 0,
            },
            size: 0,
        };
        core::mem::replace(self, empty)
    }

    /// Frees the block (nothing for an empty block left by [`DevBlock::take`]).
    ///
    /// # Safety
    ///
    /// The device no longer uses the block (its configuration pointing at
    /// it was replaced and synced, or the SMMU is disabled), and `mem` is
    /// the environment it was allocated from.
    pub unsafe fn free(self, mem: &impl TableMemory) {
        if self.size == 0 {
            return;
        }
        // SAFETY: forwarded from the caller; `block` came from
        // `alloc_table(size)` on `mem` and is freed once (self is consumed,
        // and `take` leaves an empty block behind).
        unsafe { mem.free_table(self.block, self.size) }
    }
}
