//! A minimal virtio-drivers `Hal` over our `smmuv3` driver: every DMA
//! allocation and every shared buffer is mapped into the device's stage-1
//! domain, and the device only ever sees I/O virtual addresses.
//!
//! `Hal` is a set of static functions, so the context (domain, guest RAM,
//! IOVA allocator) is process-global: [`SmmuHal::install`] sets it and
//! returns a guard that holds it exclusively until dropped (tests in one
//! binary take turns).

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use io_pgtable::Prot;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::ram::{GuestDmaMemory, PAGE};
use crate::vm::GuestDomain;

/// First IOVA the `Hal` hands out (0 stays unmapped: virtio-drivers treats
/// address 0 as an allocation failure).
pub const IOVA_BASE: u64 = 0x1000_0000;

/// One live mapping made by the `Hal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HalMapping {
    /// I/O virtual address of the first mapped page.
    pub iova: u64,
    /// Guest physical address of the first mapped page.
    pub gpa: u64,
    /// Mapped bytes (whole pages).
    pub len: u64,
    /// Bounce buffer (a copy of a buffer outside guest RAM), if any.
    pub bounce: bool,
    /// Revoked by the test (unmapped under a request).
    pub revoked: bool,
}

/// The `Hal`'s state.
pub struct HalContext {
    domain: GuestDomain,
    ram: GuestDmaMemory,
    next_iova: u64,
    maps: BTreeMap<u64, HalMapping>,
    /// Mappings that failed (the device then sees an unmapped IOVA).
    pub failures: u64,
    /// Mappings removed so far (for "can the device still reach it?").
    released: Vec<HalMapping>,
}

impl core::fmt::Debug for HalContext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HalContext")
            .field("maps", &self.maps)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

static CONTEXT: Mutex<Option<HalContext>> = Mutex::new(None);
static TURN: Mutex<()> = Mutex::new(());

fn ctx() -> MutexGuard<'static, Option<HalContext>> {
    CONTEXT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds the installed context; dropping it uninstalls it.
#[derive(Debug)]
pub struct HalGuard {
    _turn: MutexGuard<'static, ()>,
}

impl Drop for HalGuard {
    fn drop(&mut self) {
        *ctx() = None;
    }
}

fn prot(dir: BufferDirection) -> Prot {
    match dir {
        BufferDirection::DriverToDevice => Prot::READ,
        // virtio-queue also reads back what it wrote in device areas.
        BufferDirection::DeviceToDriver | BufferDirection::Both => Prot::READ | Prot::WRITE,
    }
}

impl HalContext {
    fn map(&mut self, gpa: u64, len: u64, dir: BufferDirection, bounce: bool) -> Option<u64> {
        let first = gpa & !(PAGE - 1);
        let len = (gpa + len).div_ceil(PAGE) * PAGE - first;
        let iova = self.next_iova;
        if self.domain.map(iova, first, len, prot(dir)).is_err() {
            self.failures += 1;
            return None;
        }
        // A guard page between mappings catches overruns.
        self.next_iova += len + PAGE;
        self.maps.insert(
            iova,
            HalMapping {
                iova,
                gpa: first,
                len,
                bounce,
                revoked: false,
            },
        );
        Some(iova + (gpa - first))
    }

    fn unmap(&mut self, iova: u64) -> Option<HalMapping> {
        let m = self.maps.remove(&(iova & !(PAGE - 1)))?;
        if !m.revoked {
            let _ = self.domain.unmap(m.iova, m.len);
        }
        self.released.push(m);
        Some(m)
    }

    /// Returns the live mappings.
    pub fn mappings(&self) -> Vec<HalMapping> {
        self.maps.values().copied().collect()
    }

    /// Unmaps (through the driver, with its TLB invalidation) the mapping
    /// holding guest physical address `gpa` while the `Hal` still
    /// considers it shared: the device loses access under a request.
    /// Returns the mapping, or `None` when no mapping holds `gpa`.
    pub fn revoke_gpa(&mut self, gpa: u64) -> Option<HalMapping> {
        let m = self
            .maps
            .values_mut()
            .find(|m| gpa >= m.gpa && gpa < m.gpa + m.len && !m.revoked)?;
        m.revoked = true;
        let m = *m;
        self.domain.unmap(m.iova, m.len).ok()?;
        Some(m)
    }

    /// Returns the mappings removed so far.
    pub fn released(&self) -> &[HalMapping] {
        &self.released
    }

    /// Returns the domain.
    pub fn domain(&self) -> &GuestDomain {
        &self.domain
    }
}

/// The `Hal` over the installed [`HalContext`].
#[derive(Debug)]
pub struct SmmuHal;

impl SmmuHal {
    /// Installs the context for `domain` (attached to the device's
    /// stream) allocating from `ram`; waits for a previous guard to drop.
    pub fn install(domain: GuestDomain, ram: GuestDmaMemory) -> HalGuard {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        *ctx() = Some(HalContext {
            domain,
            ram,
            next_iova: IOVA_BASE,
            maps: BTreeMap::new(),
            failures: 0,
            released: Vec::new(),
        });
        HalGuard { _turn: turn }
    }

    /// Runs `f` on the installed context (`None` when none is).
    pub fn with<R>(f: impl FnOnce(&mut HalContext) -> R) -> Option<R> {
        ctx().as_mut().map(f)
    }
}

// SAFETY: `dma_alloc` returns whole zeroed pages of guest RAM from the
// allocator, used by nobody else until `dma_dealloc` frees them, through a
// host pointer that is page-aligned (guest RAM is one page-aligned host
// mapping and blocks are page multiples). `mmio_phys_to_virt` is never
// needed by the in-process transport (no BARs) and only translates guest
// RAM addresses. `share` returns an address for the same bytes (mapped in
// place inside guest RAM, or a bounce copy), and `unshare` copies a bounce
// back before freeing it.
unsafe impl Hal for SmmuHal {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let mut g = ctx();
        let Some(c) = g.as_mut() else {
            return (0, NonNull::dangling());
        };
        let len = pages as u64 * PAGE;
        let Some(gpa) = c.ram.alloc(len) else {
            return (0, NonNull::dangling());
        };
        let (Some(iova), Some(ptr)) = (c.map(gpa, len, direction, false), c.ram.host_ptr(gpa))
        else {
            c.ram.free(gpa, len);
            return (0, NonNull::dangling());
        };
        (iova, ptr)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let mut g = ctx();
        let Some(c) = g.as_mut() else {
            return -1;
        };
        match c.unmap(paddr) {
            Some(m) => {
                c.ram.free(m.gpa, pages as u64 * PAGE);
                0
            }
            None => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        ctx()
            .as_ref()
            .and_then(|c| c.ram.host_ptr(paddr))
            .unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let mut g = ctx();
        let Some(c) = g.as_mut() else {
            return 0;
        };
        let ptr = buffer.as_ptr().cast::<u8>();
        let len = buffer.len();
        if let Some(gpa) = c.ram.gpa_of(ptr, len) {
            return c.map(gpa, len as u64, direction, false).unwrap_or(0);
        }
        // Outside guest RAM (e.g. on the driver's stack): bounce. The
        // original is copied in whatever the direction, so a short device
        // write exposes nothing stale.
        let Some(gpa) = c.ram.alloc(len as u64) else {
            c.failures += 1;
            return 0;
        };
        let Some(dst) = c.ram.host_ptr(gpa) else {
            return 0;
        };
        // SAFETY: `buffer` is valid for `len` bytes (the caller's contract)
        // and `dst` is a fresh allocation of at least `len` bytes; they do
        // not overlap (one is inside guest RAM, the other is not).
        unsafe { core::ptr::copy_nonoverlapping(ptr, dst.as_ptr(), len) };
        c.map(gpa, len as u64, direction, true).unwrap_or(0)
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mut g = ctx();
        let Some(c) = g.as_mut() else {
            return;
        };
        let Some(m) = c.unmap(paddr) else {
            return;
        };
        if !m.bounce {
            return;
        }
        let off = paddr & (PAGE - 1);
        if direction != BufferDirection::DriverToDevice {
            if let Some(src) = c.ram.host_ptr(m.gpa + off) {
                // SAFETY: the bounce allocation holds `buffer.len()` bytes
                // from `off`, `buffer` is valid for writes (the caller's
                // contract), and they do not overlap.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        buffer.as_ptr().cast::<u8>(),
                        buffer.len(),
                    )
                };
            }
        }
        c.ram.free(m.gpa, m.len);
    }
}
