//! The `virtio-drivers` crate's `Hal` over a [`DmaDevice`].
//!
//! `Hal` is a trait of static, infallible functions, so:
//!
//! * **which domain**: the platform names it statically.
//!   [`VirtioPlatform::device`] returns the `&'static DmaDevice` (and so
//!   the IOMMU domain, bounce pool and debugging) every virtio device of
//!   that `Hal` type shares; a system with several IOMMU domains defines
//!   one platform type per domain and instantiates the drivers with
//!   `VirtioHal<ThatPlatform>`.
//! * **exhaustion**: `share` first flushes the lazy queue and retries
//!   once; if the mapping still fails it returns
//!   [`VirtioPlatform::share_failed`]'s address (by default 0: IOVA page 0
//!   is never allocated, so behind an IOMMU the device's access faults and
//!   touches no memory; on the direct path the platform must pick an
//!   address with nothing behind it). `unshare` of that address does
//!   nothing. `dma_alloc` reports failure as physical address 0, which
//!   virtio-drivers turns into its own `Error::DmaError`.

use core::marker::PhantomData;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

use crate::device::{CoherentBuffer, DmaDevice};
use crate::domain::IommuDomain;
use crate::env::DmaEnv;
use crate::error::DmaError;
use crate::types::{Attrs, Direction, DmaAddr};

/// What a platform supplies so [`VirtioHal`] can serve virtio-drivers.
pub trait VirtioPlatform: 'static {
    /// The environment of the device.
    type Env: DmaEnv;
    /// The IOMMU domain type (or [`crate::NoIommu`]).
    type Domain: IommuDomain;

    /// Returns the DMA device every virtio device of this `Hal` uses.
    fn device() -> &'static DmaDevice<Self::Env, Self::Domain>;

    /// Returns the physical address of a CPU pointer into RAM.
    fn virt_to_phys(vaddr: NonNull<u8>) -> u64;

    /// Returns a CPU pointer to the device MMIO region at `paddr`.
    ///
    /// # Safety
    ///
    /// As `Hal::mmio_phys_to_virt`.
    unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> NonNull<u8>;

    /// Returns the device address `share` hands out when mapping failed.
    fn share_failed(err: &DmaError<<Self::Domain as IommuDomain>::Error>) -> u64 {
        let _ = err;
        0
    }
}

/// virtio-drivers' `Hal` over the platform's [`DmaDevice`].
pub struct VirtioHal<P>(PhantomData<P>);

fn direction(d: BufferDirection) -> Direction {
    match d {
        BufferDirection::DriverToDevice => Direction::ToDevice,
        BufferDirection::DeviceToDriver => Direction::FromDevice,
        BufferDirection::Both => Direction::Bidirectional,
    }
}

fn failed_sentinel<P: VirtioPlatform>() -> u64 {
    P::share_failed(&DmaError::ZeroSize)
}

// SAFETY: `dma_alloc` returns zeroed memory of the asked size from the
// environment's coherent allocator (or 0 on failure), mapped for the device;
// `share` maps exactly the buffer's bytes with the buffer's direction and
// `unshare` copies device data back before unmapping.
unsafe impl<P: VirtioPlatform> Hal for VirtioHal<P> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(size) = pages.checked_mul(PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        match P::device().alloc_coherent(size as u64) {
            Ok(b) => (b.dma.0, b.cpu),
            Err(_) => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Some(size) = pages.checked_mul(PAGE_SIZE) else {
            return -1;
        };
        let size = size as u64;
        let phys = P::virt_to_phys(vaddr);
        // SAFETY: virtio-drivers passes back what `dma_alloc` returned once
        // the device stopped using it.
        let buf = unsafe { CoherentBuffer::from_raw_parts(vaddr, phys, DmaAddr(paddr), size) };
        // SAFETY: as above: the allocation is ours and no longer in use.
        match unsafe { P::device().free_coherent(buf) } {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded contract.
        unsafe { P::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction_: BufferDirection) -> PhysAddr {
        let dev = P::device();
        let phys = P::virt_to_phys(buffer.cast());
        let len = buffer.len() as u64;
        let dir = direction(direction_);
        // SAFETY: virtio-drivers gives the device the buffer until `unshare`
        // and does not touch it in between.
        let r = unsafe { dev.map_phys(phys, len, dir, Attrs::empty()) };
        let r = match r {
            Err(DmaError::IovaExhausted { .. }) | Err(DmaError::BounceExhausted { .. }) => {
                if let Some(d) = dev.dma_domain() {
                    let _ = d.flush_pending();
                }
                // SAFETY: as above.
                unsafe { dev.map_phys(phys, len, dir, Attrs::empty()) }
            }
            r => r,
        };
        match r {
            Ok(a) => a.0,
            Err(e) => P::share_failed(&e),
        }
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction_: BufferDirection) {
        if paddr == failed_sentinel::<P>() {
            return;
        }
        // SAFETY: `paddr` came from `share` of this buffer and direction,
        // and the device is done with it.
        let _ = unsafe {
            P::device().unmap_phys(
                DmaAddr(paddr),
                buffer.len() as u64,
                direction(direction_),
                Attrs::empty(),
            )
        };
    }
}
