//! Guest RAM as the guest-side driver's DMA memory: page tables, queues
//! and buffers allocated from a VMM's `GuestMemoryMmap`, which the model
//! walks through vm-memory (coherent, so cleans are no-ops).

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use io_pgtable::env::{AllocError, CacheError, CacheMaintenance, TableBlock, TableMemory};
use smmuv3::env::CacheInvalidate;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Allocation granule of guest RAM (every block is whole pages).
pub const PAGE: u64 = 4096;

/// Largest natural alignment the allocator provides.
pub const MAX_ALIGN: u64 = 1 << 20;

/// A page allocator over one region of guest RAM (first fit, naturally
/// aligned blocks).
#[derive(Debug)]
struct Pages {
    used: Vec<bool>,
}

/// Guest RAM with an allocator: the DMA memory of the in-process guest.
#[derive(Clone, Debug)]
pub struct GuestDmaMemory {
    guest: GuestMemoryMmap,
    base: u64,
    size: u64,
    host: usize,
    pages: Arc<Mutex<Pages>>,
}

/// Why guest RAM could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RamError {
    /// The range is not one page-aligned region of the guest memory.
    #[error("guest RAM {base:#x}+{size:#x} is not one page-aligned region")]
    NotOneRegion {
        /// First address.
        base: u64,
        /// Size in bytes.
        size: u64,
    },
}

impl GuestDmaMemory {
    /// Returns an allocator over `[base, base + size)` of `guest`, which
    /// must be one region.
    ///
    /// # Errors
    ///
    /// [`RamError::NotOneRegion`].
    pub fn new(guest: GuestMemoryMmap, base: u64, size: u64) -> Result<Self, RamError> {
        let bad = RamError::NotOneRegion { base, size };
        if size == 0 || base % PAGE != 0 || size % PAGE != 0 {
            return Err(bad);
        }
        let host = guest
            .get_host_address(GuestAddress(base))
            .map_err(|_| bad)?;
        let last = guest
            .get_host_address(GuestAddress(base + size - 1))
            .map_err(|_| bad)?;
        if last as usize - host as usize != (size - 1) as usize {
            return Err(bad);
        }
        Ok(Self {
            guest,
            base,
            size,
            host: host as usize,
            pages: Arc::new(Mutex::new(Pages {
                used: vec![false; (size / PAGE) as usize],
            })),
        })
    }

    /// Returns freshly mapped guest RAM of `size` bytes placed at the
    /// first address at or above `base_hint` whose offset modulo
    /// [`MAX_ALIGN`] equals the host mapping's, so that blocks are aligned
    /// alike in guest-physical and host addresses (page tables and queues
    /// need natural alignment in both).
    ///
    /// # Errors
    ///
    /// [`RamError`] when the mapping fails or the range is unusable.
    pub fn create(base_hint: u64, size: u64) -> Result<Self, RamError> {
        let bad = RamError::NotOneRegion {
            base: base_hint,
            size,
        };
        let region = MmapRegion::<()>::new(size as usize).map_err(|_| bad)?;
        let host_off = region.as_ptr() as u64 % MAX_ALIGN;
        let base = base_hint.div_ceil(MAX_ALIGN) * MAX_ALIGN + host_off;
        let region = GuestRegionMmap::new(region, GuestAddress(base)).ok_or(bad)?;
        let guest = GuestMemoryMmap::from_regions(vec![region]).map_err(|_| bad)?;
        Self::new(guest, base, size)
    }

    /// Returns the first guest physical address of the RAM.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Returns the size of the RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns the guest memory.
    pub fn guest(&self) -> &GuestMemoryMmap {
        &self.guest
    }

    fn lock(&self) -> MutexGuard<'_, Pages> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `bytes` (rounded up to whole pages), aligned to the
    /// smallest power of two at least that size (at most 1 MiB), zeroed;
    /// returns its guest physical address, or `None` when full.
    pub fn alloc(&self, bytes: u64) -> Option<u64> {
        let n = bytes.max(1).div_ceil(PAGE) as usize;
        let align = (n.next_power_of_two() as u64 * PAGE).min(MAX_ALIGN);
        // First page index whose guest address is aligned.
        let mut i = ((self.base.div_ceil(align) * align - self.base) / PAGE) as usize;
        let step = (align / PAGE) as usize;
        let mut p = self.lock();
        let total = p.used.len();
        while i + n <= total {
            if p.used[i..i + n].iter().all(|u| !u) {
                p.used[i..i + n].fill(true);
                drop(p);
                let gpa = self.base + i as u64 * PAGE;
                self.zero(gpa, n as u64 * PAGE);
                return Some(gpa);
            }
            i += step;
        }
        None
    }

    /// Frees `bytes` at `gpa` (as allocated).
    pub fn free(&self, gpa: u64, bytes: u64) {
        let Some(first) = gpa.checked_sub(self.base).map(|o| (o / PAGE) as usize) else {
            return;
        };
        let n = bytes.max(1).div_ceil(PAGE) as usize;
        let mut p = self.lock();
        if let Some(s) = p.used.get_mut(first..first + n) {
            s.fill(false);
        }
    }

    fn zero(&self, gpa: u64, len: u64) {
        use vm_memory::Bytes;
        let _ = self
            .guest
            .write_slice(&vec![0u8; len as usize], GuestAddress(gpa));
    }

    /// Returns the host pointer of guest physical address `gpa` in this
    /// RAM.
    pub fn host_ptr(&self, gpa: u64) -> Option<NonNull<u8>> {
        let off = gpa.checked_sub(self.base).filter(|o| *o < self.size)?;
        NonNull::new((self.host + off as usize) as *mut u8)
    }

    /// Returns the guest physical address of host range `[ptr, ptr + len)`
    /// when it lies inside this RAM.
    pub fn gpa_of(&self, ptr: *const u8, len: usize) -> Option<u64> {
        let p = ptr as usize;
        let end = p.checked_add(len)?;
        (p >= self.host && end <= self.host + self.size as usize)
            .then(|| self.base + (p - self.host) as u64)
    }

    /// Returns the number of pages in use.
    pub fn pages_in_use(&self) -> usize {
        self.lock().used.iter().filter(|u| **u).count()
    }
}

// SAFETY: blocks come from the page allocator, which hands each page out
// once until freed; they are zeroed and aligned to their size in guest
// physical addresses (the allocator's rule) and in host addresses
// (`alloc_table` checks it and refuses otherwise); the region is one
// contiguous host mapping (`new` checks it), so `phys_to_cpu` is the
// linear mapping of a live block.
unsafe impl TableMemory for GuestDmaMemory {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        let err = AllocError::NoMemory { size };
        let gpa = self.alloc(size as u64).ok_or(err)?;
        if gpa % (size as u64) != 0 {
            self.free(gpa, size as u64);
            return Err(err);
        }
        let Some(cpu) = self
            .host_ptr(gpa)
            .filter(|c| c.as_ptr() as usize % size == 0)
        else {
            // Only with RAM not made by `create` (host and guest alignment
            // differ): refuse rather than hand out a misaligned table.
            self.free(gpa, size as u64);
            return Err(err);
        };
        Ok(TableBlock { cpu, phys: gpa })
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        self.free(block.phys, size as u64);
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.host_ptr(phys).unwrap_or(NonNull::dangling())
    }
}

impl CacheMaintenance for GuestDmaMemory {
    fn clean(&self, _cpu: NonNull<u8>, _phys: u64, _len: usize) -> Result<(), CacheError> {
        // Guest RAM is coherent with the model's walker.
        Ok(())
    }

    fn device_write_barrier(&self) {
        // The device is a model in this process: ordering the CPU's stores
        // (release) is what its reads need.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    }

    fn full_barrier(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

impl CacheInvalidate for GuestDmaMemory {
    fn invalidate(&self, _cpu: NonNull<u8>, _phys: u64, _len: usize) -> Result<(), CacheError> {
        Ok(())
    }
}
