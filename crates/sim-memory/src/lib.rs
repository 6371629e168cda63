//! Simulated physical memory shared by a CPU and a device, with an optional
//! non-coherent device view.
//!
//! Real SMMUs whose table walker is not cache coherent (IDR0.COHACC = 0) read
//! page tables from memory *behind* the CPU caches. A CPU store that was not
//! cleaned to the point of coherency is invisible to them. Neither Linux's
//! self-tests nor QEMU model this, so a missing clean goes unnoticed until it
//! corrupts DMA on silicon. [`SimMemory`] makes it observable:
//!
//! * the **CPU view** is what the CPU reads and writes (memory plus its
//!   write-back caches). Page-table code gets real host pointers into it
//!   ([`SimMemory::cpu_ptr`]) and stores through them with atomics, exactly as
//!   it would on hardware;
//! * the **device view** is what a non-coherent observer (a table walker, a
//!   DMA master) sees. It only changes when the CPU cleans lines
//!   ([`SimMemory::clean`]) or when the device itself writes.
//!
//! In [`Coherency::Coherent`] mode there is one view and cleans are counted
//! but change nothing.
//!
//! Fresh allocations are zeroed in the CPU view but **poisoned** in the device
//! view (all ones), so a table linked before it was cleaned looks like garbage
//! to a non-coherent walker instead of like an innocent empty table.
//!
//! The crate also provides a small buddy allocator over the memory (table and
//! buffer allocation with failure injection) and external-abort injection for
//! device accesses.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod counting;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of a cache line, in bytes (the architectural minimum CWG on the
/// cores IOMMU drivers care about; Linux assumes 64 too).
pub const LINE: u64 = 64;

/// Smallest block the allocator hands out (one cache line).
pub const MIN_ALLOC: u64 = LINE;

/// Value a device sees in freshly allocated but never cleaned memory.
pub const POISON: u64 = u64::MAX;

/// Whether device accesses snoop the CPU caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coherency {
    /// The device sees every CPU store at once; cleans are no-ops.
    Coherent,
    /// The device sees only what was cleaned to the point of coherency.
    NonCoherent,
}

/// Errors from device-side accesses and allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The access is not inside the simulated memory.
    #[error("physical range {pa:#x}+{len:#x} is outside simulated memory")]
    OutOfRange {
        /// First byte of the access.
        pa: u64,
        /// Length of the access.
        len: u64,
    },
    /// The access hit a range set up to return an external abort.
    #[error("external abort at physical address {pa:#x}")]
    ExternalAbort {
        /// First aborting byte.
        pa: u64,
    },
    /// The allocator has no block of the requested size (or failure was injected).
    #[error("out of simulated memory allocating {size:#x} bytes")]
    NoMemory {
        /// Requested size.
        size: u64,
    },
    /// Size is zero, not a power of two, or larger than the memory.
    #[error("unsupported allocation size {size:#x}")]
    BadSize {
        /// Requested size.
        size: u64,
    },
}

/// Counters of cache maintenance done on the memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Calls to [`SimMemory::clean`].
    pub clean_calls: u64,
    /// Cache lines cleaned (a line counted once per clean that covers it).
    pub lines_cleaned: u64,
    /// Lines cleaned whose CPU and device views were already equal
    /// (wasted work; always 0 in coherent mode because nothing is compared).
    pub redundant_lines: u64,
    /// Calls to [`SimMemory::invalidate`].
    pub invalidate_calls: u64,
}

#[derive(Default)]
struct Counters {
    clean_calls: AtomicU64,
    lines_cleaned: AtomicU64,
    redundant_lines: AtomicU64,
    invalidate_calls: AtomicU64,
}

/// Binary buddy allocator state over `[0, size)` offsets.
struct Buddy {
    /// Free blocks per order (order = log2 of block size).
    free: Vec<BTreeSet<u64>>,
    /// Allocated blocks: offset -> order (to validate frees).
    used: std::collections::BTreeMap<u64, u32>,
    min_order: u32,
    max_order: u32,
    /// Allocations left before injected failure (`None`: never fail).
    fail_after: Option<u64>,
    bytes_in_use: u64,
}

impl Buddy {
    fn new(size: u64) -> Self {
        let min_order = MIN_ALLOC.trailing_zeros();
        let max_order = 63 - size.leading_zeros();
        let mut free = vec![BTreeSet::new(); max_order as usize + 1];
        // Carve the memory into the largest aligned power-of-two blocks.
        let mut off = 0u64;
        while off < size {
            let mut order = max_order;
            while order > min_order && (off % (1 << order) != 0 || off + (1 << order) > size) {
                order -= 1;
            }
            free[order as usize].insert(off);
            off += 1 << order;
        }
        Self {
            free,
            used: Default::default(),
            min_order,
            max_order,
            fail_after: None,
            bytes_in_use: 0,
        }
    }

    fn alloc(&mut self, size: u64) -> Result<u64, MemError> {
        if size == 0 || !size.is_power_of_two() {
            return Err(MemError::BadSize { size });
        }
        let want = size.trailing_zeros().max(self.min_order);
        if want > self.max_order {
            return Err(MemError::BadSize { size });
        }
        if let Some(left) = self.fail_after.as_mut() {
            if *left == 0 {
                return Err(MemError::NoMemory { size });
            }
            *left -= 1;
        }
        let mut order = want;
        let off = loop {
            if order > self.max_order {
                return Err(MemError::NoMemory { size });
            }
            if let Some(&off) = self.free[order as usize].iter().next() {
                self.free[order as usize].remove(&off);
                break off;
            }
            order += 1;
        };
        // Split down to the wanted order, returning upper halves.
        while order > want {
            order -= 1;
            self.free[order as usize].insert(off + (1 << order));
        }
        self.used.insert(off, want);
        self.bytes_in_use += 1 << want;
        Ok(off)
    }

    fn free(&mut self, off: u64) -> bool {
        let Some(mut order) = self.used.remove(&off) else {
            return false;
        };
        self.bytes_in_use -= 1 << order;
        let mut off = off;
        while order < self.max_order {
            let buddy = off ^ (1 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            off = off.min(buddy);
            order += 1;
        }
        self.free[order as usize].insert(off);
        true
    }
}

/// Simulated physical memory; see the crate documentation.
pub struct SimMemory {
    base: u64,
    size: u64,
    coherency: Coherency,
    /// CPU view, one atomic per 8 bytes so concurrent CPU and device
    /// accesses are data-race free.
    cpu: Box<[AtomicU64]>,
    /// Device view; empty in coherent mode.
    dev: Box<[AtomicU64]>,
    counters: Counters,
    buddy: Mutex<Buddy>,
    aborts: Mutex<Vec<(u64, u64)>>,
    /// Fast check so the common no-abort path takes no lock.
    has_aborts: std::sync::atomic::AtomicBool,
}

fn zeroed_words(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl SimMemory {
    /// Returns a new memory of `size` bytes starting at physical address `base`.
    ///
    /// # Errors
    ///
    /// [`MemError::BadSize`] unless `size` is a non-zero multiple of 64 KiB and
    /// `base` is 64 KiB aligned with `base + size` representable.
    pub fn new(base: u64, size: u64, coherency: Coherency) -> Result<Self, MemError> {
        const ALIGN: u64 = 64 * 1024;
        if size == 0 || size % ALIGN != 0 || base % ALIGN != 0 || base.checked_add(size).is_none() {
            return Err(MemError::BadSize { size });
        }
        let words = (size / 8) as usize;
        let dev = match coherency {
            Coherency::Coherent => zeroed_words(0),
            Coherency::NonCoherent => zeroed_words(words),
        };
        Ok(Self {
            base,
            size,
            coherency,
            cpu: zeroed_words(words),
            dev,
            counters: Counters::default(),
            buddy: Mutex::new(Buddy::new(size)),
            aborts: Mutex::new(Vec::new()),
            has_aborts: Default::default(),
        })
    }

    /// Returns the first physical address of the memory.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Returns the size of the memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns whether device accesses see CPU stores without cleaning.
    pub fn coherency(&self) -> Coherency {
        self.coherency
    }

    #[inline]
    fn offset(&self, pa: u64, len: u64) -> Result<u64, MemError> {
        let off = pa.wrapping_sub(self.base);
        if pa < self.base || off > self.size || len > self.size - off {
            return Err(MemError::OutOfRange { pa, len });
        }
        Ok(off)
    }

    /// Returns whether `[pa, pa + len)` lies inside the memory.
    pub fn contains(&self, pa: u64, len: u64) -> bool {
        self.offset(pa, len).is_ok()
    }

    /// Returns the CPU-view host pointer of physical address `pa`, or `None`
    /// when `pa` is outside the memory.
    ///
    /// The pointer stays valid for the life of `self` (freeing a block
    /// returns it to the allocator, never to the host), up to the end of
    /// the memory, which is a multiple of 64 KiB past a 64 KiB-aligned base.
    /// Accesses through it must be atomic (e.g. via [`AtomicU64::from_ptr`])
    /// because the device side may access it concurrently; every safe method
    /// of this type is atomic itself (64-bit words, with a compare-and-swap
    /// merge for partial words), so none races with such accesses.
    pub fn cpu_ptr(&self, pa: u64) -> Option<*mut u8> {
        let off = self.offset(pa, 1).ok()?;
        if off == self.size {
            return None;
        }
        // `as_ptr` of the slice is in bounds and `off < size` = slice bytes.
        Some(
            self.cpu
                .as_ptr()
                .cast::<u8>()
                .cast_mut()
                .wrapping_add(off as usize),
        )
    }

    /// Returns the physical address of a CPU-view host pointer, or `None` when
    /// the pointer is not inside this memory.
    pub fn phys_of(&self, ptr: *const u8) -> Option<u64> {
        let start = self.cpu.as_ptr() as usize;
        let p = ptr as usize;
        (p >= start && p < start + self.size as usize).then(|| self.base + (p - start) as u64)
    }

    /// Returns the CPU-view word holding 8-byte-aligned physical address `pa`.
    fn cpu_word(&self, off: u64) -> &AtomicU64 {
        &self.cpu[(off / 8) as usize]
    }

    #[inline]
    fn dev_words(&self) -> &[AtomicU64] {
        match self.coherency {
            Coherency::Coherent => &self.cpu,
            Coherency::NonCoherent => &self.dev,
        }
    }

    // ---- CPU side -------------------------------------------------------

    /// Reads a 64-bit little-endian word through the CPU view.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] when `pa` is outside the memory or unaligned.
    pub fn cpu_read_u64(&self, pa: u64) -> Result<u64, MemError> {
        let off = self.offset(pa, 8)?;
        if off % 8 != 0 {
            return Err(MemError::OutOfRange { pa, len: 8 });
        }
        Ok(self.cpu_word(off).load(Ordering::Acquire))
    }

    /// Writes a 64-bit word through the CPU view (it stays "in the cache" for
    /// a non-coherent device until [`SimMemory::clean`]).
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] when `pa` is outside the memory or unaligned.
    pub fn cpu_write_u64(&self, pa: u64, val: u64) -> Result<(), MemError> {
        let off = self.offset(pa, 8)?;
        if off % 8 != 0 {
            return Err(MemError::OutOfRange { pa, len: 8 });
        }
        self.cpu_word(off).store(val, Ordering::Release);
        Ok(())
    }

    /// Copies bytes from the CPU view into `buf`.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] when the range leaves the memory.
    pub fn cpu_read(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let off = self.offset(pa, buf.len() as u64)?;
        read_bytes(&self.cpu, off, buf);
        Ok(())
    }

    /// Copies `data` into the CPU view.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] when the range leaves the memory.
    pub fn cpu_write(&self, pa: u64, data: &[u8]) -> Result<(), MemError> {
        let off = self.offset(pa, data.len() as u64)?;
        write_bytes(&self.cpu, off, data);
        Ok(())
    }

    /// Cleans every cache line overlapping `[pa, pa + len)` to the point of
    /// coherency, making CPU stores visible to a non-coherent device.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] when the range leaves the memory.
    pub fn clean(&self, pa: u64, len: u64) -> Result<(), MemError> {
        let off = self.offset(pa, len)?;
        self.counters.clean_calls.fetch_add(1, Ordering::Relaxed);
        if len == 0 {
            return Ok(());
        }
        let first = off / LINE;
        let last = (off + len - 1) / LINE;
        self.counters
            .lines_cleaned
            .fetch_add(last - first + 1, Ordering::Relaxed);
        if self.coherency == Coherency::NonCoherent {
            let mut redundant = 0;
            for line in first..=last {
                let w = (line * LINE / 8) as usize;
                let mut same = true;
                for i in w..w + (LINE / 8) as usize {
                    let v = self.cpu[i].load(Ordering::Acquire);
                    if self.dev[i].swap(v, Ordering::AcqRel) != v {
                        same = false;
                    }
                }
                redundant += u64::from(same);
            }
            self.counters
                .redundant_lines
                .fetch_add(redundant, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Invalidates the CPU's cached copy of `[pa, pa + len)` (whole lines), so
    /// the CPU then reads what a non-coherent device wrote. Dirty CPU data in
    /// those lines is discarded, as on hardware.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] when the range leaves the memory.
    pub fn invalidate(&self, pa: u64, len: u64) -> Result<(), MemError> {
        let off = self.offset(pa, len)?;
        self.counters
            .invalidate_calls
            .fetch_add(1, Ordering::Relaxed);
        if len == 0 || self.coherency == Coherency::Coherent {
            return Ok(());
        }
        let first = off / LINE * LINE / 8;
        let end = (off + len).div_ceil(LINE) * LINE / 8;
        for i in first as usize..end as usize {
            self.cpu[i].store(self.dev[i].load(Ordering::Acquire), Ordering::Release);
        }
        Ok(())
    }

    /// Returns the number of cache lines in `[pa, pa + len)` whose CPU view
    /// differs from the device view (always 0 when coherent).
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] when the range leaves the memory.
    pub fn dirty_lines(&self, pa: u64, len: u64) -> Result<u64, MemError> {
        let off = self.offset(pa, len)?;
        if len == 0 || self.coherency == Coherency::Coherent {
            return Ok(0);
        }
        let first = off / LINE;
        let last = (off + len - 1) / LINE;
        let mut n = 0;
        for line in first..=last {
            let w = (line * LINE / 8) as usize;
            n += u64::from((w..w + (LINE / 8) as usize).any(|i| {
                self.cpu[i].load(Ordering::Acquire) != self.dev[i].load(Ordering::Acquire)
            }));
        }
        Ok(n)
    }

    /// Returns the number of dirty lines in the whole memory.
    pub fn all_dirty_lines(&self) -> u64 {
        self.dirty_lines(self.base, self.size).unwrap_or(0)
    }

    /// Returns the cache-maintenance counters.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            clean_calls: self.counters.clean_calls.load(Ordering::Relaxed),
            lines_cleaned: self.counters.lines_cleaned.load(Ordering::Relaxed),
            redundant_lines: self.counters.redundant_lines.load(Ordering::Relaxed),
            invalidate_calls: self.counters.invalidate_calls.load(Ordering::Relaxed),
        }
    }

    /// Resets the cache-maintenance counters to zero.
    pub fn reset_cache_stats(&self) {
        self.counters.clean_calls.store(0, Ordering::Relaxed);
        self.counters.lines_cleaned.store(0, Ordering::Relaxed);
        self.counters.redundant_lines.store(0, Ordering::Relaxed);
        self.counters.invalidate_calls.store(0, Ordering::Relaxed);
    }

    // ---- Device side ----------------------------------------------------

    /// Returns the device view as one array of words starting at
    /// [`SimMemory::base`], or `None` while any abort is injected (then
    /// every access must go through the checked accessors).
    ///
    /// A word of the array holds what [`SimMemory::dev_read_u64`] returns
    /// for its address: the same strictness, without a call per word. A
    /// table walker takes the view once per walk and reads its
    /// descriptors from it.
    #[inline]
    pub fn dev_word_view(&self) -> Option<&[AtomicU64]> {
        if self.has_aborts.load(Ordering::Acquire) {
            return None;
        }
        Some(self.dev_words())
    }

    #[inline]
    fn check_abort(&self, pa: u64, len: u64) -> Result<(), MemError> {
        if !self.has_aborts.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_abort_slow(pa, len)
    }

    #[cold]
    fn check_abort_slow(&self, pa: u64, len: u64) -> Result<(), MemError> {
        let aborts = self.aborts.lock().unwrap_or_else(|e| e.into_inner());
        for &(start, alen) in aborts.iter() {
            let end = start.saturating_add(alen);
            if pa < end && pa.saturating_add(len) > start {
                return Err(MemError::ExternalAbort { pa: pa.max(start) });
            }
        }
        Ok(())
    }

    /// Makes device accesses to `[pa, pa + len)` fail with
    /// [`MemError::ExternalAbort`] (fault injection).
    pub fn inject_abort(&self, pa: u64, len: u64) {
        let mut aborts = self.aborts.lock().unwrap_or_else(|e| e.into_inner());
        aborts.push((pa, len));
        self.has_aborts.store(true, Ordering::Release);
    }

    /// Removes every injected abort range.
    pub fn clear_aborts(&self) {
        let mut aborts = self.aborts.lock().unwrap_or_else(|e| e.into_inner());
        aborts.clear();
        self.has_aborts.store(false, Ordering::Release);
    }

    /// Reads a 64-bit word as the device sees it (e.g. a descriptor fetched
    /// by a table walker). Single-copy atomic, as architected for aligned
    /// 64-bit descriptor reads.
    ///
    /// # Errors
    ///
    /// [`MemError::OutOfRange`] outside memory or unaligned;
    /// [`MemError::ExternalAbort`] in an injected abort range.
    pub fn dev_read_u64(&self, pa: u64) -> Result<u64, MemError> {
        let off = self.offset(pa, 8)?;
        if off % 8 != 0 {
            return Err(MemError::OutOfRange { pa, len: 8 });
        }
        self.check_abort(pa, 8)?;
        Ok(self.dev_words()[(off / 8) as usize].load(Ordering::Acquire))
    }

    /// Writes a 64-bit word as the device (e.g. a hardware access-flag or
    /// dirty-state update, or a queue record).
    ///
    /// # Errors
    ///
    /// As [`SimMemory::dev_read_u64`].
    pub fn dev_write_u64(&self, pa: u64, val: u64) -> Result<(), MemError> {
        let off = self.offset(pa, 8)?;
        if off % 8 != 0 {
            return Err(MemError::OutOfRange { pa, len: 8 });
        }
        self.check_abort(pa, 8)?;
        self.dev_words()[(off / 8) as usize].store(val, Ordering::Release);
        Ok(())
    }

    /// Atomically compares and swaps a 64-bit word as the device (hardware
    /// updates of descriptors must not lose concurrent CPU updates).
    ///
    /// Returns `Ok(Ok(old))` on success, `Ok(Err(current))` when the word
    /// was not `old`.
    ///
    /// # Errors
    ///
    /// As [`SimMemory::dev_read_u64`].
    pub fn dev_cmpxchg_u64(
        &self,
        pa: u64,
        old: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        let off = self.offset(pa, 8)?;
        if off % 8 != 0 {
            return Err(MemError::OutOfRange { pa, len: 8 });
        }
        self.check_abort(pa, 8)?;
        Ok(self.dev_words()[(off / 8) as usize].compare_exchange(
            old,
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ))
    }

    /// Reads bytes as the device sees them.
    ///
    /// # Errors
    ///
    /// As [`SimMemory::dev_read_u64`].
    pub fn dev_read(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let off = self.offset(pa, buf.len() as u64)?;
        self.check_abort(pa, buf.len() as u64)?;
        read_bytes(self.dev_words(), off, buf);
        Ok(())
    }

    /// Writes bytes as the device. In non-coherent mode the CPU sees them only
    /// after [`SimMemory::invalidate`].
    ///
    /// # Errors
    ///
    /// As [`SimMemory::dev_read_u64`].
    pub fn dev_write(&self, pa: u64, data: &[u8]) -> Result<(), MemError> {
        let off = self.offset(pa, data.len() as u64)?;
        self.check_abort(pa, data.len() as u64)?;
        write_bytes(self.dev_words(), off, data);
        Ok(())
    }

    // ---- Allocation -----------------------------------------------------

    /// Allocates a naturally aligned block of `size` bytes (a power of two, at
    /// least [`MIN_ALLOC`] is used) and returns its physical address.
    ///
    /// The CPU view of the block is zeroed. In non-coherent mode the device
    /// view is filled with [`POISON`] until the CPU cleans it.
    ///
    /// # Errors
    ///
    /// [`MemError::BadSize`] for a size that is not a power of two or larger
    /// than the memory; [`MemError::NoMemory`] when exhausted or when failure
    /// was injected with [`SimMemory::fail_allocs_after`].
    pub fn alloc(&self, size: u64) -> Result<u64, MemError> {
        let off = self
            .buddy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alloc(size)?;
        let size = size.max(MIN_ALLOC);
        let words = (off / 8) as usize..((off + size) / 8) as usize;
        for w in &self.cpu[words.clone()] {
            w.store(0, Ordering::Relaxed);
        }
        if self.coherency == Coherency::NonCoherent {
            for w in &self.dev[words] {
                w.store(POISON, Ordering::Relaxed);
            }
        }
        std::sync::atomic::fence(Ordering::Release);
        Ok(self.base + off)
    }

    /// Frees a block returned by [`SimMemory::alloc`]. Returns `false` (and
    /// changes nothing) when `pa` is not the start of an allocated block.
    pub fn free(&self, pa: u64) -> bool {
        let Ok(off) = self.offset(pa, 0) else {
            return false;
        };
        self.buddy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free(off)
    }

    /// Makes allocations fail after `n` more successful ones (`None` never
    /// fails).
    pub fn fail_allocs_after(&self, n: Option<u64>) {
        self.buddy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fail_after = n;
    }

    /// Returns the bytes currently allocated.
    pub fn bytes_allocated(&self) -> u64 {
        self.buddy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes_in_use
    }

    /// Returns the number of blocks currently allocated.
    pub fn blocks_allocated(&self) -> usize {
        self.buddy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .len()
    }
}

impl core::fmt::Debug for SimMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimMemory")
            .field("base", &format_args!("{:#x}", self.base))
            .field("size", &format_args!("{:#x}", self.size))
            .field("coherency", &self.coherency)
            .finish_non_exhaustive()
    }
}

fn read_bytes(words: &[AtomicU64], off: u64, buf: &mut [u8]) {
    let mut pos = off;
    let mut out = 0usize;
    while out < buf.len() {
        let w = words[(pos / 8) as usize]
            .load(Ordering::Acquire)
            .to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - out);
        buf[out..out + n].copy_from_slice(&w[start..start + n]);
        out += n;
        pos += n as u64;
    }
}

fn write_bytes(words: &[AtomicU64], off: u64, data: &[u8]) {
    let mut pos = off;
    let mut inp = 0usize;
    while inp < data.len() {
        let start = (pos % 8) as usize;
        let n = (8 - start).min(data.len() - inp);
        let word = &words[(pos / 8) as usize];
        if n == 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[inp..inp + 8]);
            word.store(u64::from_le_bytes(b), Ordering::Release);
        } else {
            // Partial word: merge with a CAS loop so a concurrent store to
            // the other bytes is not lost.
            let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let mut b = old.to_le_bytes();
                b[start..start + n].copy_from_slice(&data[inp..inp + n]);
                Some(u64::from_le_bytes(b))
            });
        }
        inp += n;
        pos += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x8000_0000;

    #[test]
    fn uncleaned_store_is_invisible_to_noncoherent_device() {
        let m = SimMemory::new(BASE, 1 << 20, Coherency::NonCoherent).unwrap();
        let pa = m.alloc(4096).unwrap();
        assert_eq!(m.dev_read_u64(pa).unwrap(), POISON);
        m.cpu_write_u64(pa + 8, 0x1234).unwrap();
        assert_eq!(m.dirty_lines(pa, 4096).unwrap(), 64);
        m.clean(pa, 64).unwrap();
        assert_eq!(m.dev_read_u64(pa + 8).unwrap(), 0x1234);
        assert_eq!(m.dev_read_u64(pa + 64).unwrap(), POISON);
        assert_eq!(m.dirty_lines(pa, 4096).unwrap(), 63);
        let s = m.cache_stats();
        assert_eq!(
            (s.clean_calls, s.lines_cleaned, s.redundant_lines),
            (1, 1, 0)
        );
        m.clean(pa, 64).unwrap();
        assert_eq!(m.cache_stats().redundant_lines, 1);
    }

    #[test]
    fn coherent_device_sees_stores_at_once() {
        let m = SimMemory::new(BASE, 1 << 20, Coherency::Coherent).unwrap();
        let pa = m.alloc(64).unwrap();
        m.cpu_write(pa + 3, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 4];
        m.dev_read(pa + 2, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 3]);
        assert_eq!(m.all_dirty_lines(), 0);
    }

    #[test]
    fn device_write_needs_invalidate_when_noncoherent() {
        let m = SimMemory::new(BASE, 1 << 16, Coherency::NonCoherent).unwrap();
        m.dev_write(BASE + 100, &[7; 10]).unwrap();
        let mut b = [0u8; 10];
        m.cpu_read(BASE + 100, &mut b).unwrap();
        assert_eq!(b, [0; 10]);
        m.invalidate(BASE + 100, 10).unwrap();
        m.cpu_read(BASE + 100, &mut b).unwrap();
        assert_eq!(b, [7; 10]);
    }

    #[test]
    fn word_view_reads_as_the_checked_device_read() {
        for coherency in [Coherency::Coherent, Coherency::NonCoherent] {
            let m = SimMemory::new(BASE, 1 << 16, coherency).unwrap();
            m.cpu_write_u64(BASE + 8, 0xabcd).unwrap();
            m.cpu_write_u64(BASE + 16, 0x1234).unwrap();
            m.clean(BASE + 16, 8).unwrap();
            let view = m.dev_word_view().unwrap();
            assert_eq!(view.len() as u64, (1 << 16) / 8);
            for w in 0..4u64 {
                assert_eq!(
                    view[w as usize].load(Ordering::Relaxed),
                    m.dev_read_u64(BASE + w * 8).unwrap(),
                    "{coherency:?} word {w}"
                );
            }
            // An injected abort takes the view away: the checked path
            // must see every access while one is armed.
            m.inject_abort(BASE + 0x100, 8);
            assert!(m.dev_word_view().is_none());
            m.clear_aborts();
            assert!(m.dev_word_view().is_some());
        }
    }

    #[test]
    fn ranges_and_aborts_are_checked() {
        let m = SimMemory::new(BASE, 1 << 16, Coherency::Coherent).unwrap();
        assert!(matches!(
            m.dev_read_u64(BASE - 8),
            Err(MemError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.dev_read_u64(BASE + (1 << 16)),
            Err(MemError::OutOfRange { .. })
        ));
        assert!(matches!(
            m.dev_read_u64(BASE + 4),
            Err(MemError::OutOfRange { .. })
        ));
        assert!(m.cpu_write(u64::MAX - 2, &[0; 8]).is_err());
        m.inject_abort(BASE + 0x100, 0x10);
        assert_eq!(
            m.dev_read_u64(BASE + 0x108),
            Err(MemError::ExternalAbort { pa: BASE + 0x108 })
        );
        assert!(m.dev_read_u64(BASE + 0x110).is_ok());
        m.clear_aborts();
        assert!(m.dev_read_u64(BASE + 0x108).is_ok());
        assert!(SimMemory::new(BASE, 1000, Coherency::Coherent).is_err());
    }

    #[test]
    fn buddy_allocates_aligned_and_merges() {
        let m = SimMemory::new(BASE, 1 << 20, Coherency::Coherent).unwrap();
        let mut v = Vec::new();
        for sz in [64u64, 4096, 65536, 128, 16384] {
            let pa = m.alloc(sz).unwrap();
            assert_eq!(pa % sz, 0, "size {sz:#x} at {pa:#x}");
            v.push(pa);
        }
        assert!(matches!(m.alloc(100), Err(MemError::BadSize { .. })));
        assert!(matches!(m.alloc(1 << 21), Err(MemError::BadSize { .. })));
        for pa in v {
            assert!(m.free(pa));
        }
        assert!(!m.free(BASE + 8));
        assert_eq!(m.bytes_allocated(), 0);
        // Fully merged again: the whole memory is one block.
        assert_eq!(m.alloc(1 << 20).unwrap(), BASE);
        m.free(BASE);
        m.fail_allocs_after(Some(1));
        assert!(m.alloc(64).is_ok());
        assert!(matches!(m.alloc(64), Err(MemError::NoMemory { .. })));
    }

    #[test]
    fn cpu_ptr_round_trips() {
        let m = SimMemory::new(BASE, 1 << 16, Coherency::Coherent).unwrap();
        let p = m.cpu_ptr(BASE + 0x40).unwrap();
        assert_eq!(m.phys_of(p), Some(BASE + 0x40));
        assert!(m.cpu_ptr(BASE + (1 << 16)).is_none());
        // SAFETY: `p` points at an 8-aligned AtomicU64 inside `m`, alive here.
        let a = unsafe { AtomicU64::from_ptr(p.cast::<u64>()) };
        a.store(5, Ordering::Release);
        assert_eq!(m.dev_read_u64(BASE + 0x40).unwrap(), 5);
    }
}
