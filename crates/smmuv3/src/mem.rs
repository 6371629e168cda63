//! Device-visible memory owned by the driver (stream tables, CD tables,
//! queues), reached through io-pgtable's environment traits.
//!
//! Crate-private on purpose: a [`DevBlock`] does not borrow the environment
//! it came from, so it is only sound where its owner keeps that environment
//! alive for as long as the block. The driver does: every block lives in
//! the same `Inner` as the `Mem` it was allocated from, and `Inner`'s `Drop`
//! frees the blocks before its fields (the memory among them) are dropped.
//! Public, it would let safe code drop the environment (and with it, say,
//! simulated memory) and then read a freed block:
//!
//! ```compile_fail,E0603
//! // Outside the crate, a block cannot be made at all.
//! use smmuv3::mem::DevBlock;
//! ```

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
    /// The block may only be used while `mem` is alive (see the module
    /// documentation).
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
        // is live and its environment alive (the only owner, the driver,
        // keeps both together; see the module documentation), and accessed
        // only atomically; the index is in bounds (checked above; an empty
        // block left by `take` has size 0, so no index passes).
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

    /// Panics unless `[offset, offset + len)` lies in the block (a driver
    /// bug); an overflowing sum must not wrap past the check.
    fn check_range(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.size),
            "range {offset:#x}+{len:#x} outside a block of {} bytes",
            self.size
        );
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
        self.check_range(offset, len);
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
        self.check_range(offset, len);
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

#[cfg(test)]
mod tests {
    use core::cell::Cell;
    use core::ptr::NonNull;
    use core::sync::atomic::AtomicU64;

    use io_pgtable::env::{AllocError, CacheError, CacheMaintenance, TableBlock, TableMemory};

    use super::DevBlock;

    const PHYS: u64 = 0x8000;

    /// One 64-byte block of table memory at `PHYS`.
    #[repr(align(64))]
    struct OneBlock([AtomicU64; 8], Cell<Option<(u64, usize)>>);

    // SAFETY: hands out its own 64 zeroed, 64-aligned, atomically accessed
    // bytes for one size only; the tests allocate it once.
    unsafe impl TableMemory for OneBlock {
        fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
            if size != 64 {
                return Err(AllocError::BadSize { size });
            }
            let cpu = NonNull::from(&self.0).cast();
            Ok(TableBlock { cpu, phys: PHYS })
        }
        unsafe fn free_table(&self, _block: TableBlock, _size: usize) {}
        fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
            NonNull::from(&self.0[((phys - PHYS) / 8) as usize]).cast()
        }
    }

    impl CacheMaintenance for OneBlock {
        fn clean(&self, _cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
            self.1.set(Some((phys, len)));
            Ok(())
        }
        fn device_write_barrier(&self) {}
        fn full_barrier(&self) {}
    }

    fn one() -> OneBlock {
        OneBlock(Default::default(), Cell::new(None))
    }

    #[test]
    fn words_and_cleans_stay_inside_the_block() {
        let mem = one();
        let b = DevBlock::alloc(&mem, 8).unwrap();
        assert_eq!((b.phys(), b.size()), (PHYS, 64));
        b.write(7, 0xabcd);
        assert_eq!(b.read(7), 0xabcd);
        b.clean(&mem, 56, 8).unwrap();
        assert_eq!(mem.1.get(), Some((PHYS + 56, 8)));
    }

    #[test]
    #[should_panic(expected = "outside a block")]
    fn a_word_past_the_end_panics() {
        let mem = one();
        DevBlock::alloc(&mem, 64).unwrap().read(8);
    }

    #[test]
    #[should_panic(expected = "outside a block")]
    fn a_clean_whose_end_overflows_panics_instead_of_wrapping() {
        let mem = one();
        let b = DevBlock::alloc(&mem, 64).unwrap();
        let _ = b.clean(&mem, usize::MAX, 2);
    }
}
