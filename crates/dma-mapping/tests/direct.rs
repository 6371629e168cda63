//! The direct path (no IOMMU): device address = physical + offset, the DMA
//! mask decides reachability, bounce buffers when forced or beyond the
//! mask. The "device" here reads and writes the memory's device view.

mod common;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, DmaAddr, DmaError};
use sim_memory::Coherency;
use smmuv3_hosted::MEM_BASE;

fn dev_read(f: &Fixture, dma: u64, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    f.sys.mem.dev_read(dma - off, &mut v).unwrap();
    v
}

#[test]
fn direct_address_is_phys_plus_offset_and_caches_are_maintained() {
    both(|coh| {
        let f = fixture(coh, dma_mapping::Invalidation::Strict);
        let off = 0x1000_0000_0000;
        let dev = f.direct(DeviceConfig {
            dma_offset: off,
            ..DeviceConfig::new(1)
        });
        let pa = f.buffer(4096, 0x21);
        // SAFETY: test-owned buffer.
        let dma =
            unsafe { dev.map_phys(pa + 16, 100, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(dma, DmaAddr(pa + 16 + off));
        assert_eq!(dev_read(&f, dma.0, off, 100), vec![0x21; 100]);
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 100, Direction::ToDevice, Attrs::empty()) }.unwrap();

        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(pa, 4096, Direction::FromDevice, Attrs::empty()) }.unwrap();
        f.sys.mem.dev_write(dma.0 - off, &[5; 32]).unwrap();
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 4096, Direction::FromDevice, Attrs::empty()) }.unwrap();
        assert_eq!(f.cpu_read(pa, 32), vec![5; 32]);
    });
}

#[test]
fn beyond_the_mask_without_a_pool_is_unreachable() {
    let f = fixture(Coherency::Coherent, dma_mapping::Invalidation::Strict);
    // Memory starts at 1 GiB: a 30-bit device reaches none of it.
    let mask = (1 << 30) - 1;
    let dev = f.direct(DeviceConfig {
        dma_mask: mask,
        ..DeviceConfig::new(1)
    });
    let pa = f.buffer(4096, 1);
    assert!(pa >= MEM_BASE);
    // SAFETY: refused before touching memory.
    let e = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(
        e,
        Err(DmaError::Unreachable {
            addr: pa,
            size: 4096,
            mask
        })
    );
}

#[test]
fn beyond_the_mask_bounces_into_a_reachable_pool_and_copies_back() {
    both(|coh| {
        let f = fixture(coh, dma_mapping::Invalidation::Strict);
        let pool = f.pool(256 * 1024);
        // The device reaches only the pool's first 256 KiB window.
        let mask = pool.base() + pool.size() - 1;
        let cfg = DeviceConfig {
            dma_mask: mask,
            ..DeviceConfig::new(1)
        };
        let dev = f.direct_bounced(cfg, &pool);
        // A buffer above the mask.
        let pa = std::iter::repeat_with(|| f.buffer(8192, 0x77))
            .find(|&pa| pa > mask)
            .unwrap();
        // SAFETY: test-owned buffer.
        let dma =
            unsafe { dev.map_phys(pa, 5000, Direction::Bidirectional, Attrs::empty()) }.unwrap();
        assert!(pool.contains(dma.0));
        assert_eq!(pool.used_slots(), 3, "5000 bytes take three 2 KiB slots");
        assert_eq!(dev_read(&f, dma.0, 0, 5000), vec![0x77; 5000]);
        f.sys.mem.dev_write(dma.0 + 100, &[3; 50]).unwrap();
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 5000, Direction::Bidirectional, Attrs::empty()) }.unwrap();
        let back = f.cpu_read(pa, 5000);
        assert_eq!(&back[100..150], &[3; 50]);
        assert_eq!(&back[..100], &[0x77; 100]);
        assert_eq!(pool.used_slots(), 0);
        // A second unmap of the bounce address is refused.
        // SAFETY: refused before touching memory.
        let e = unsafe { dev.unmap_phys(dma, 5000, Direction::Bidirectional, Attrs::empty()) };
        assert_eq!(e, Err(DmaError::NotMapped(dma)));
        // MMIO is never bounced.
        // SAFETY: refused before touching memory.
        let e = unsafe { dev.map_phys(pa, 64, Direction::ToDevice, Attrs::MMIO) };
        assert_eq!(e, Err(DmaError::BounceRefused));
    });
}

#[test]
fn forced_bouncing_and_pool_exhaustion() {
    let f = fixture(Coherency::Coherent, dma_mapping::Invalidation::Strict);
    let pool = f.pool(64 * 1024);
    let cfg = DeviceConfig {
        force_bounce: true,
        ..DeviceConfig::new(1)
    };
    let dev = f.direct_bounced(cfg, &pool);
    let pa = f.buffer(64 * 1024, 9);
    let mut live = Vec::new();
    // SAFETY: test-owned buffer.
    unsafe {
        for i in 0..8 {
            live.push(
                dev.map_phys(pa + i * 8192, 8192, Direction::ToDevice, Attrs::empty())
                    .unwrap(),
            );
        }
        assert!(live.iter().all(|a| pool.contains(a.0)));
        assert_eq!(
            dev.map_phys(pa, 2048, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::BounceExhausted { size: 2048 })
        );
        assert_eq!(
            dev.map_phys(pa, 256 * 1024 + 1, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::BounceTooLarge {
                size: 256 * 1024 + 2048
            })
        );
        for a in live {
            dev.unmap_phys(a, 8192, Direction::ToDevice, Attrs::empty())
                .unwrap();
        }
    }
    assert_eq!(pool.used_slots(), 0);
}
