//! The DMA API on this machine: `dma-mapping` over our `smmuv3` driver, one
//! IOMMU domain per virtio device, and the virtio-drivers `Hal` each device's
//! driver is instantiated with.
//!
//! virtio-drivers' `Hal` is a set of static functions, so a driver reaches
//! its device through a type: `Slot<N>` names the `N`th entry of [`SLOTS`],
//! set once by [`install`] before the driver is created. Two slots, two
//! domains: each disk sees only its own mappings.
//!
//! [`TracedHal`] is that `Hal` with a record of what is shared, so a scenario
//! can look at the live IOVAs of a request in flight, and with two faults a
//! scenario can inject: a data buffer unmapped before the device uses it (a
//! driver's use-after-unmap), and a data buffer replaced by an IOVA of
//! another domain.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;

use dma_mapping::hal::{VirtioHal, VirtioPlatform};
use dma_mapping::smmu::{CpuClock, SmmuDomain, StackEnv};
use dma_mapping::{Attrs, DmaAddr, DmaDevice};
use smmuv3::env::MmioFrame;
use spin::{Mutex, Once};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::platform::Env;
use crate::timer;

/// The driver's environment: register frame, memory, clock.
pub type Parts = (MmioFrame, Env, Env);
/// An `smmuv3` domain as the DMA layer drives it.
pub type Iommu = SmmuDomain<Parts>;
/// The DMA environment: the driver's memory seam plus CPU id and time.
pub type KernelEnv = StackEnv<Env, Cpu>;
/// A device behind the SMMU.
pub type Dev = DmaDevice<KernelEnv, Iommu>;

/// One CPU; time in microseconds of the generic timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl CpuClock for Cpu {
    fn cpu_id(&self) -> usize {
        0
    }

    fn now_ticks(&self) -> u64 {
        timer::now_ns() / 1000
    }
}

/// Returns the DMA environment.
pub fn kernel_env() -> Arc<KernelEnv> {
    // SAFETY: RAM is identity mapped, so `Env::phys_to_cpu` (the identity)
    // is a valid CPU pointer for every physical address a device is given,
    // which is always RAM the kernel owns.
    Arc::new(unsafe { StackEnv::new(Env, Cpu) })
}

/// How many virtio devices can have a `Hal`.
pub const SLOTS_LEN: usize = 2;

/// A device's DMA state and the record of its shares.
pub struct SlotState {
    /// The DMA device (its domain, allocator, debugging).
    pub dev: Dev,
    /// Shares the device may still use, and the armed fault.
    pub trace: Mutex<Trace>,
}

/// The devices of the virtio drivers, by slot.
pub static SLOTS: [Once<SlotState>; SLOTS_LEN] = [Once::new(), Once::new()];

/// Gives slot `N` its device. Returns false if the slot was already set.
pub fn install(slot: usize, dev: Dev) -> bool {
    let Some(s) = SLOTS.get(slot) else {
        return false;
    };
    let mut fresh = false;
    s.call_once(|| {
        fresh = true;
        SlotState {
            dev,
            trace: Mutex::new(Trace::default()),
        }
    });
    fresh
}

/// Returns slot `n`'s state.
///
/// # Panics
///
/// When the slot was never installed: a driver was created before its
/// device (a bug of this kernel; the panic handler reports it).
pub fn slot(n: usize) -> &'static SlotState {
    match SLOTS.get(n).and_then(Once::get) {
        Some(s) => s,
        None => panic!("DMA slot {n} used before dma::install"),
    }
}

/// A fault [`TracedHal`] injects into the next request's data buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Inject {
    /// Share as asked.
    #[default]
    None,
    /// Map the data buffer, then unmap it (strictly invalidated) while the
    /// request's next buffer is shared, i.e. before the device is notified.
    UnmapData,
    /// Give the device this IOVA for the data buffer instead of mapping it.
    Foreign(u64),
}

/// One buffer handed to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// The device address handed out.
    pub iova: u64,
    /// The buffer's CPU (= physical) address.
    pub addr: u64,
    /// Its length.
    pub len: usize,
    /// Device-to-driver (the device writes it).
    pub from_device: bool,
    /// Whether `iova` still maps the buffer (false once injected).
    pub mapped: bool,
}

/// What [`TracedHal`] knows of a slot.
#[derive(Debug, Default)]
pub struct Trace {
    /// Shares not yet unshared, oldest first.
    pub live: Vec<Share>,
    /// The fault for the next data buffer.
    pub inject: Inject,
    /// The data buffer `UnmapData` unmaps at the next share.
    pending_unmap: Option<Share>,
    /// Shares so far.
    pub shares: usize,
    /// The last data buffer shared (kept after its unshare).
    pub last_data: Option<Share>,
}

impl Trace {
    /// Returns the live data buffers (device-written, longer than a status byte).
    pub fn data(&self) -> impl Iterator<Item = &Share> {
        self.live.iter().filter(|s| s.from_device && s.len > 1)
    }
}

/// Names slot `N` for [`VirtioHal`].
pub struct Slot<const N: usize>;

impl<const N: usize> VirtioPlatform for Slot<N> {
    type Env = KernelEnv;
    type Domain = Iommu;

    fn device() -> &'static Dev {
        &slot(N).dev
    }

    fn virt_to_phys(vaddr: NonNull<u8>) -> u64 {
        // Identity map.
        vaddr.as_ptr() as u64
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        // BARs are in the identity-mapped 32-bit window (Device memory).
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }
}

/// virtio-drivers' `Hal` for slot `N`: [`VirtioHal`] plus the share record
/// and the injected faults.
pub struct TracedHal<const N: usize>;

/// Unmaps share `s` of `state`'s device.
///
/// # Safety
///
/// As `Hal::unshare`: the device can no longer use the buffer.
unsafe fn unmap(state: &SlotState, s: &Share) {
    let dir = if s.from_device {
        dma_mapping::Direction::FromDevice
    } else {
        dma_mapping::Direction::ToDevice
    };
    // SAFETY: forwarded contract; `s.iova` maps `s.len` bytes with `dir`.
    let _ = unsafe {
        state
            .dev
            .unmap_phys(DmaAddr(s.iova), s.len as u64, dir, Attrs::empty())
    };
}

// SAFETY: every allocation, share and unshare is `VirtioHal`'s, whose
// contract holds; the injected faults only ever hand the device an address
// with nothing of this buffer behind it (an unmapped IOVA, or one of another
// domain), never memory the device may not touch, and a share they replaced
// is not unmapped twice.
unsafe impl<const N: usize> Hal for TracedHal<N> {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        VirtioHal::<Slot<N>>::dma_alloc(pages, direction)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: forwarded contract.
        unsafe { VirtioHal::<Slot<N>>::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded contract.
        unsafe { VirtioHal::<Slot<N>>::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let state = slot(N);
        let mut t = state.trace.lock();
        t.shares += 1;
        let addr = buffer.cast::<u8>().as_ptr() as u64;
        let len = buffer.len();
        let from_device = direction == BufferDirection::DeviceToDriver;
        let is_data = from_device && len > 1;
        let mut share = Share {
            iova: 0,
            addr,
            len,
            from_device,
            mapped: true,
        };
        match t.inject {
            Inject::Foreign(iova) if is_data => {
                t.inject = Inject::None;
                share.iova = iova;
                share.mapped = false;
            }
            _ => {
                // SAFETY: forwarded contract: the device owns the buffer
                // until `unshare`.
                share.iova = unsafe { VirtioHal::<Slot<N>>::share(buffer, direction) };
            }
        }
        if let Some(mut victim) = t.pending_unmap.take() {
            // The request's next buffer is mapped: now pull the data buffer
            // away. Its IOVA stays out of the allocator's reach until this
            // share is made, so nothing else can land on it.
            // SAFETY: the device has not been told of the request yet, so
            // it cannot be using the buffer.
            unsafe { unmap(state, &victim) };
            victim.mapped = false;
            if let Some(s) = t
                .live
                .iter_mut()
                .find(|s| s.iova == victim.iova && s.mapped)
            {
                *s = victim;
            }
        }
        if t.inject == Inject::UnmapData && is_data {
            t.inject = Inject::None;
            t.pending_unmap = Some(share);
        }
        if is_data {
            t.last_data = Some(share);
        }
        t.live.push(share);
        share.iova
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mut t = slot(N).trace.lock();
        let injected = match t.live.iter().position(|s| s.iova == paddr) {
            Some(i) => !t.live.remove(i).mapped,
            // Not recorded (cannot happen): still unmap rather than leak.
            None => false,
        };
        drop(t);
        if !injected {
            // SAFETY: forwarded contract.
            unsafe { VirtioHal::<Slot<N>>::unshare(paddr, buffer, direction) };
        }
    }
}
