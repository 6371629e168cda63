//! Bounce buffers by direction, on the untrusted IOMMU path (through the
//! model) and the forced direct path: to-device data is copied at map and
//! `sync_for_device`, from-device data at `sync_for_cpu` and unmap,
//! bidirectional both, at any sub-granule offset; what the device reaches
//! around its buffer is its own bytes and zeroes, never an earlier user's.

mod common;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, DmaError, Invalidation};
use sim_memory::Coherency;

fn untrusted(f: &Fixture, pool_size: u64) -> Dev {
    f.device(DeviceConfig {
        untrusted: true,
        ..DeviceConfig::new(1)
    })
    .with_bounce(f.pool(pool_size))
}

/// Leaves `0xdd` in every byte of the device's pool.
fn dirty_the_pool(f: &Fixture, dev: &Dev) {
    let pool = dev.bounce_pool().unwrap();
    let stale = f.buffer(pool.size(), 0xdd);
    // SAFETY: test-owned buffer, its bounce run covering the whole pool.
    unsafe {
        let d = dev
            .map_phys(
                stale + 1,
                pool.size() - 1,
                Direction::ToDevice,
                Attrs::empty(),
            )
            .unwrap();
        dev.unmap_phys(d, pool.size() - 1, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
    assert_eq!(f.cpu_read(pool.base() + 8, 4), vec![0xdd; 4]);
}

#[test]
fn to_device_is_copied_at_map_and_sync_for_device_only() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = untrusted(&f, 16384);
        dirty_the_pool(&f, &dev);
        // 300 bytes crossing a granule boundary, at offset 0xf00.
        let page = f.buffer(8192, 0xcc);
        let buf = page + 0xf00;
        f.sys.mem.cpu_write(buf, &[0x41; 300]).unwrap();
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(buf, 300, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(dma.0 & 0xfff, 0xf00);
        // Both granules: the buffer, zeroes around it, no 0xdd, no 0xcc.
        let run = f.dev_read(dma.0 & !0xfff, 8192).unwrap();
        assert_eq!(&run[0xf00..0xf00 + 300], &[0x41; 300]);
        assert!(
            run[..0xf00]
                .iter()
                .chain(&run[0xf00 + 300..])
                .all(|&b| b == 0)
        );
        assert!(!f.dev_write(dma.0, &[1]), "read-only to the device");
        // A CPU write after map is not seen until sync_for_device, which
        // copies only the range it is given.
        f.sys.mem.cpu_write(buf, &[0x42; 300]).unwrap();
        assert_eq!(f.dev_read(dma.0, 4).unwrap(), vec![0x41; 4]);
        // SAFETY: the live mapping.
        unsafe { dev.sync_for_device(dma, 100, Direction::ToDevice) }.unwrap();
        let seen = f.dev_read(dma.0, 300).unwrap();
        assert_eq!(&seen[..100], &[0x42; 100]);
        assert_eq!(&seen[100..], &[0x41; 200]);
        // sync_for_cpu copies nothing back for a to-device buffer.
        f.sys.mem.cpu_write(buf, &[0x43; 300]).unwrap();
        // SAFETY: the live mapping.
        unsafe { dev.sync_for_cpu(dma, 300, Direction::ToDevice) }.unwrap();
        assert_eq!(f.cpu_read(buf, 300), vec![0x43; 300]);
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 300, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(
            f.cpu_read(buf, 300),
            vec![0x43; 300],
            "unmap copies nothing back"
        );
        assert_eq!(f.cpu_read(page + 0xf00 - 4, 4), vec![0xcc; 4]);
        f.assert_unreachable(dma.0, 300);
    });
}

#[test]
fn from_device_is_copied_back_at_sync_for_cpu_and_unmap() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = untrusted(&f, 16384);
        dirty_the_pool(&f, &dev);
        let page = f.buffer(4096, 0xcc);
        let buf = page + 0x123;
        f.sys.mem.cpu_write(buf, &[0x50; 200]).unwrap();
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(buf, 200, Direction::FromDevice, Attrs::empty()) }.unwrap();
        // The device may read (stage 1 cannot express write-only): it sees
        // the original and zeroes, nothing stale.
        if let Some(run) = f.dev_read(dma.0 & !0xfff, 4096) {
            assert_eq!(&run[0x123..0x123 + 200], &[0x50; 200]);
            assert!(
                run[..0x123]
                    .iter()
                    .chain(&run[0x123 + 200..])
                    .all(|&b| b == 0)
            );
        }
        assert!(f.dev_write(dma.0 + 10, &[0x61; 20]));
        // Not copied back yet.
        assert_eq!(f.cpu_read(buf + 10, 20), vec![0x50; 20]);
        // SAFETY: the live mapping.
        unsafe { dev.sync_for_cpu(dma, 200, Direction::FromDevice) }.unwrap();
        assert_eq!(f.cpu_read(buf + 10, 20), vec![0x61; 20]);
        // sync_for_device does not copy the original into a from-device
        // bounce buffer, so the device's data stays.
        f.sys.mem.cpu_write(buf + 10, &[0x50; 20]).unwrap();
        // SAFETY: the live mapping.
        unsafe { dev.sync_for_device(dma, 200, Direction::FromDevice) }.unwrap();
        assert!(f.dev_write(dma.0 + 190, &[0x62; 10]));
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 200, Direction::FromDevice, Attrs::empty()) }.unwrap();
        let back = f.cpu_read(buf, 200);
        assert_eq!(&back[10..30], &[0x61; 20], "the bounce still held them");
        assert_eq!(&back[190..], &[0x62; 10]);
        assert_eq!(&back[..10], &[0x50; 10]);
        // Nothing outside the buffer was written back.
        assert_eq!(f.cpu_read(page + 0x123 + 200, 4), vec![0xcc; 4]);
        assert_eq!(f.cpu_read(page + 0x123 - 4, 4), vec![0xcc; 4]);
        f.assert_unreachable(dma.0, 200);
    });
}

#[test]
fn bidirectional_copies_both_ways_and_skip_cpu_sync_copies_nothing_back() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = untrusted(&f, 16384);
        let buf = f.buffer(4096, 0) + 0x40;
        f.sys.mem.cpu_write(buf, &[0x70; 64]).unwrap();
        // SAFETY: test-owned buffer.
        let dma =
            unsafe { dev.map_phys(buf, 64, Direction::Bidirectional, Attrs::empty()) }.unwrap();
        assert_eq!(f.dev_read(dma.0, 64).unwrap(), vec![0x70; 64]);
        assert!(f.dev_write(dma.0, &[0x71; 8]));
        // SAFETY: the live mapping.
        unsafe { dev.sync_for_cpu(dma, 64, Direction::Bidirectional) }.unwrap();
        assert_eq!(f.cpu_read(buf, 8), vec![0x71; 8]);
        f.sys.mem.cpu_write(buf + 8, &[0x72; 8]).unwrap();
        // SAFETY: the live mapping.
        unsafe { dev.sync_for_device(dma, 64, Direction::Bidirectional) }.unwrap();
        assert_eq!(f.dev_read(dma.0 + 8, 8).unwrap(), vec![0x72; 8]);
        assert!(f.dev_write(dma.0 + 16, &[0x73; 8]));
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 64, Direction::Bidirectional, Attrs::empty()) }.unwrap();
        assert_eq!(f.cpu_read(buf + 16, 8), vec![0x73; 8]);

        // With SKIP_CPU_SYNC the unmap leaves the original alone.
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(buf, 64, Direction::Bidirectional, Attrs::SKIP_CPU_SYNC) }
            .unwrap();
        assert!(f.dev_write(dma.0, &[0x74; 8]));
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 64, Direction::Bidirectional, Attrs::SKIP_CPU_SYNC) }.unwrap();
        assert_eq!(f.cpu_read(buf, 8), vec![0x71; 8]);
        assert_eq!(dev.bounce_pool().unwrap().used_slots(), 0);
        f.assert_unreachable(dma.0, 64);
    });
}

#[test]
fn the_forced_direct_path_bounces_by_direction_too() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let pool = f.pool(8192);
    let dev: DirectDev = f.direct_bounced(
        DeviceConfig {
            force_bounce: true,
            ..DeviceConfig::new(1)
        },
        &pool,
    );
    let buf = f.buffer(4096, 0) + 0x10;
    f.sys.mem.cpu_write(buf, &[0x80; 100]).unwrap();
    let read = |a: u64, n: usize| {
        let mut v = vec![0; n];
        f.sys.mem.dev_read(a, &mut v).unwrap();
        v
    };
    // SAFETY: test-owned buffer.
    unsafe {
        let to = dev
            .map_phys(buf, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert!(pool.contains(to.0));
        assert_eq!(read(to.0, 100), vec![0x80; 100]);
        // The device scribbles on a to-device bounce: not copied back.
        f.sys.mem.dev_write(to.0, &[0x81; 4]).unwrap();
        dev.unmap_phys(to, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert_eq!(f.cpu_read(buf, 4), vec![0x80; 4]);

        let from = dev
            .map_phys(buf, 100, Direction::FromDevice, Attrs::empty())
            .unwrap();
        f.sys.mem.dev_write(from.0 + 50, &[0x82; 50]).unwrap();
        dev.sync_for_cpu(from, 100, Direction::FromDevice).unwrap();
        assert_eq!(f.cpu_read(buf + 50, 50), vec![0x82; 50]);
        f.sys.mem.dev_write(from.0, &[0x83; 10]).unwrap();
        dev.unmap_phys(from, 100, Direction::FromDevice, Attrs::empty())
            .unwrap();
        assert_eq!(f.cpu_read(buf, 10), vec![0x83; 10]);
        assert_eq!(f.cpu_read(buf + 10, 40), vec![0x80; 40]);
        // An address in the pool that is no live mapping is refused.
        assert_eq!(
            dev.unmap_phys(from, 100, Direction::FromDevice, Attrs::empty()),
            Err(DmaError::NotMapped(from))
        );
    }
    assert_eq!(pool.used_slots(), 0);
}

#[test]
fn forced_bouncing_without_a_pool_says_so() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dev: DirectDev = f.direct(DeviceConfig {
        force_bounce: true,
        ..DeviceConfig::new(1)
    });
    let pa = f.buffer(4096, 1);
    // SAFETY: refused before anything is touched. Before, this was
    // `Unreachable` for an address the device reaches.
    let e = unsafe { dev.map_phys(pa, 64, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::NoBouncePool));
}
