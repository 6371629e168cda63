//! virtio-drivers' `Hal` over a DMA device behind the SMMUv3 model:
//! `share` maps for the direction, `unshare` unmaps (and the device can no
//! longer reach the buffer), `dma_alloc` gives coherent memory, exhaustion
//! yields the faulting address 0.
#![cfg(feature = "virtio")]

mod common;

use std::ptr::NonNull;
use std::sync::OnceLock;

use common::*;
use dma_mapping::DeviceConfig;
use dma_mapping::hal::{VirtioHal, VirtioPlatform};
use sim_memory::Coherency;
use virtio_drivers::{BufferDirection, Hal};

struct State {
    f: Fixture,
    dev: Dev,
}

fn state(mask: u64, cell: &'static OnceLock<State>) -> &'static State {
    cell.get_or_init(|| {
        let f = fixture(Coherency::NonCoherent, dma_mapping::Invalidation::Strict);
        let dev = f.device(DeviceConfig {
            dma_mask: mask,
            pci: true,
            ..DeviceConfig::new(1)
        });
        State { f, dev }
    })
}

macro_rules! platform {
    ($name:ident, $mask:expr) => {
        struct $name;
        impl $name {
            fn state() -> &'static State {
                static CELL: OnceLock<State> = OnceLock::new();
                state($mask, &CELL)
            }
        }
        impl VirtioPlatform for $name {
            type Env = SimEnv;
            type Domain = Smmu;
            fn device() -> &'static Dev {
                &Self::state().dev
            }
            fn virt_to_phys(vaddr: NonNull<u8>) -> u64 {
                Self::state().f.sys.mem.phys_of(vaddr.as_ptr()).unwrap()
            }
            unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
                NonNull::new(Self::state().f.sys.mem.cpu_ptr(paddr).unwrap()).unwrap()
            }
        }
    };
}

platform!(Wide, u64::MAX);
// 8 pages of IOVA: frame 0 reserved, 7 usable.
platform!(Tiny, 8 * 4096 - 1);

fn buffer(f: &Fixture, len: usize, fill: u8) -> NonNull<[u8]> {
    let pa = f.buffer(len as u64, fill);
    let ptr = NonNull::new(f.sys.mem.cpu_ptr(pa).unwrap()).unwrap();
    NonNull::slice_from_raw_parts(ptr, len)
}

#[test]
fn share_maps_for_the_direction_and_unshare_makes_it_unreachable() {
    let f = &Wide::state().f;
    let out = buffer(f, 512, 0x3c);
    // SAFETY: the buffer is test memory handed to the device until unshare.
    let dma = unsafe { VirtioHal::<Wide>::share(out, BufferDirection::DriverToDevice) };
    assert_ne!(dma, 0);
    assert!(dma < 1 << 32, "PCI: below 4 GiB first");
    assert_eq!(
        f.dev_read(dma, 512).unwrap(),
        vec![0x3c; 512],
        "cleaned for the device"
    );
    assert!(
        !f.dev_write(dma, &[0]),
        "driver-to-device is read-only to the device"
    );
    // SAFETY: as returned by share.
    unsafe { VirtioHal::<Wide>::unshare(dma, out, BufferDirection::DriverToDevice) };
    f.assert_unreachable(dma, 512);

    let inb = buffer(f, 64, 0);
    // SAFETY: as above.
    let dma = unsafe { VirtioHal::<Wide>::share(inb, BufferDirection::DeviceToDriver) };
    assert!(f.dev_write(dma, &[0x99; 64]));
    // SAFETY: as returned by share.
    unsafe { VirtioHal::<Wide>::unshare(dma, inb, BufferDirection::DeviceToDriver) };
    let phys = Wide::virt_to_phys(inb.cast());
    assert_eq!(
        f.cpu_read(phys, 64),
        vec![0x99; 64],
        "invalidated for the CPU"
    );
    f.assert_unreachable(dma, 64);
}

#[test]
fn dma_alloc_is_coherent_and_dealloc_unmaps() {
    let f = &Wide::state().f;
    let (dma, cpu) = VirtioHal::<Wide>::dma_alloc(2, BufferDirection::Both);
    assert_ne!(dma, 0);
    assert!(f.dev_write(dma + 4096, &[1; 8]));
    assert_eq!(Wide::virt_to_phys(cpu) & 0xfff, 0);
    // SAFETY: as returned by dma_alloc, unused now.
    assert_eq!(unsafe { VirtioHal::<Wide>::dma_dealloc(dma, cpu, 2) }, 0);
    f.assert_unreachable(dma, 8192);
}

#[test]
fn exhaustion_returns_the_faulting_address_zero() {
    let f = &Tiny::state().f;
    let bufs: Vec<_> = (0..8).map(|_| buffer(f, 4096, 1)).collect();
    // SAFETY: test buffers handed to the device until unshare.
    let addrs: Vec<u64> = bufs
        .iter()
        .map(|&b| unsafe { VirtioHal::<Tiny>::share(b, BufferDirection::DriverToDevice) })
        .collect();
    assert!(addrs[..7].iter().all(|&a| a != 0));
    assert_eq!(addrs[7], 0, "the eighth page does not fit");
    // The device's access to 0 faults: nothing is mapped there.
    assert!(f.dev_read(0, 4).is_none());
    for (&a, &b) in addrs.iter().zip(&bufs) {
        // SAFETY: as returned by share (0 is a no-op).
        unsafe { VirtioHal::<Tiny>::unshare(a, b, BufferDirection::DriverToDevice) };
    }
    for &a in &addrs[..7] {
        f.assert_unreachable(a, 4096);
    }
    let (zero, _) = {
        // Coherent allocations beyond the space fail as 0 too.
        let big = VirtioHal::<Tiny>::dma_alloc(16, BufferDirection::Both);
        (big.0, big.1)
    };
    assert_eq!(zero, 0);
}
