//! Untrusted devices behind the IOMMU: a buffer that does not fill its
//! granules is bounced, the padding is zeroed, the original is copied in
//! even for device-to-memory, and the device never sees the neighbours.

mod common;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, DmaError, Invalidation};

fn untrusted() -> DeviceConfig {
    DeviceConfig {
        untrusted: true,
        ..DeviceConfig::new(1)
    }
}

#[test]
fn neighbours_of_a_small_buffer_stay_invisible() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let pool = f.pool(64 * 1024);
        let dev = f.device(untrusted()).with_bounce(pool.clone());
        // A 100-byte buffer in the middle of a page full of secrets.
        let page = f.buffer(4096, 0xcc);
        let buf = page + 0x300;
        f.sys.mem.cpu_write(buf, &[0x42; 100]).unwrap();
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(buf, 100, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(dma.0 & 0xfff, 0x300, "the in-granule offset is kept");
        let granule = f.dev_read(dma.0 & !0xfff, 4096).unwrap();
        assert_eq!(&granule[0x300..0x364], &[0x42; 100]);
        assert!(
            granule[..0x300].iter().all(|&b| b == 0),
            "head padding zeroed"
        );
        assert!(
            granule[0x364..].iter().all(|&b| b == 0),
            "tail padding zeroed"
        );
        assert_eq!(pool.used_slots(), 2);
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 100, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(pool.used_slots(), 0);
        f.assert_unreachable(dma.0, 100);
    });
}

#[test]
fn a_short_device_write_leaks_nothing_and_copies_back() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        // One granule of pool: the second mapping reuses the first's slots.
        let pool = f.pool(4096);
        let dev = f.device(untrusted()).with_bounce(pool.clone());
        // Leave stale data in the pool from an earlier user.
        let stale = f.buffer(4096, 0xdd);
        // SAFETY: test-owned buffer.
        let d0 =
            unsafe { dev.map_phys(stale + 1, 4000, Direction::ToDevice, Attrs::empty()) }.unwrap();
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(d0, 4000, Direction::ToDevice, Attrs::empty()) }.unwrap();

        let buf = f.buffer(4096, 0) + 0x10;
        f.sys.mem.cpu_write(buf, &[0x5e; 256]).unwrap();
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(buf, 256, Direction::FromDevice, Attrs::empty()) }.unwrap();
        // The bounce buffer holds the original, not the earlier user's data,
        // even though the device is only meant to write it.
        let seen = f.dev_read(dma.0, 256);
        // (FromDevice is write-only where the format allows; stage 1 maps
        // it readable, which is what makes the copy-in matter.)
        if let Some(seen) = seen {
            assert_eq!(seen, vec![0x5e; 256]);
        }
        assert!(f.dev_write(dma.0, &[1; 16]), "a short write of 16 bytes");
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 256, Direction::FromDevice, Attrs::empty()) }.unwrap();
        let back = f.cpu_read(buf, 256);
        assert_eq!(&back[..16], &[1; 16]);
        assert_eq!(
            &back[16..],
            &[0x5e; 240],
            "unwritten bytes keep the original"
        );
        f.assert_unreachable(dma.0, 256);
    });
}

#[test]
fn aligned_buffers_are_not_bounced_and_no_pool_is_a_typed_error() {
    let f = fixture(sim_memory::Coherency::Coherent, Invalidation::Strict);
    let pool = f.pool(64 * 1024);
    let dev = f.device(untrusted()).with_bounce(pool.clone());
    let pa = f.buffer(8192, 3);
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(pa, 8192, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert_eq!(pool.used_slots(), 0);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 8192, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let bare = f.device(untrusted());
    // SAFETY: refused before touching memory.
    let e = unsafe { bare.map_phys(pa + 1, 10, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::NoBouncePool));
    // SAFETY: refused before touching memory.
    let e = unsafe { dev.map_phys(pa + 1, 10, Direction::ToDevice, Attrs::REQUIRE_COHERENT) };
    assert_eq!(e, Err(DmaError::BounceRefused));
    f.assert_unreachable(dma.0, 8192);
}

#[test]
fn bounce_exhaustion_on_the_iommu_path_changes_nothing() {
    let f = fixture(sim_memory::Coherency::Coherent, Invalidation::Strict);
    let pool = f.pool(8192);
    let dev = f.device(untrusted()).with_bounce(pool.clone());
    let pa = f.buffer(16384, 1);
    // SAFETY: test-owned buffer.
    unsafe {
        let a = dev
            .map_phys(pa + 8, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let b = dev
            .map_phys(pa + 4096 + 8, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let free = f.dom.iova().tree_free_pages();
        assert_eq!(
            dev.map_phys(pa + 8192 + 8, 100, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::BounceExhausted { size: 4096 })
        );
        assert_eq!(f.dom.iova().tree_free_pages(), free);
        dev.unmap_phys(a, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
        dev.unmap_phys(b, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
    assert_eq!(pool.used_slots(), 0);
}

#[test]
fn a_lazy_domain_unmaps_untrusted_devices_strictly() {
    // One granule of pool: the second mapping reuses the first's slots at
    // once, so a stale IOTLB entry of the first would hand the second
    // user's bytes to the device.
    let f = fixture(
        sim_memory::Coherency::Coherent,
        Invalidation::Lazy {
            timeout_ticks: 1000,
        },
    );
    let pool = f.pool(4096);
    let dev = f.device(untrusted()).with_bounce(pool.clone());
    let first = f.buffer(4096, 0x11) + 0x300;
    let aligned = f.buffer(8192, 0x22);
    // SAFETY: test-owned buffers.
    unsafe {
        let d0 = dev
            .map_phys(first, 100, Direction::Bidirectional, Attrs::empty())
            .unwrap();
        // An aligned (not bounced) mapping of the same device too.
        let d1 = dev
            .map_phys(aligned, 8192, Direction::Bidirectional, Attrs::empty())
            .unwrap();
        // Fill the IOTLB with both.
        assert!(f.dev_read(d0.0, 4).is_some());
        assert!(f.dev_read(d1.0, 4).is_some());
        dev.unmap_phys(d0, 100, Direction::Bidirectional, Attrs::empty())
            .unwrap();
        dev.unmap_phys(d1, 8192, Direction::Bidirectional, Attrs::empty())
            .unwrap();
        assert_eq!(f.dom.pending(), 0, "nothing queued for an untrusted device");
        // Gone at return (before, the old IOVAs still reached the slot and
        // the page through the IOTLB).
        f.assert_unreachable(d0.0, 100);
        f.assert_unreachable(d1.0, 8192);
        // The slot's next user: the device sees its bytes and zeroes only.
        let secret = f.buffer(4096, 0x77) + 0x300;
        let d2 = dev
            .map_phys(secret, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let granule = f.dev_read(d2.0 & !0xfff, 4096).unwrap();
        assert_eq!(&granule[0x300..0x364], &[0x77; 100]);
        assert!(
            granule[..0x300]
                .iter()
                .chain(&granule[0x364..])
                .all(|&b| b == 0)
        );
        dev.unmap_phys(d2, 100, Direction::ToDevice, Attrs::empty())
            .unwrap();
        f.assert_unreachable(d2.0, 100);
    }
    assert_eq!(pool.used_slots(), 0);
}

#[test]
fn an_address_inside_a_bounce_buffer_is_not_mapped_and_changes_nothing() {
    let f = fixture(sim_memory::Coherency::Coherent, Invalidation::Strict);
    let pool = f.pool(16384);
    let dev = f.device(untrusted()).with_bounce(pool.clone());
    let buf = f.buffer(4096, 0x19) + 0x100;
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(buf, 200, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let inside = dma_mapping::DmaAddr(dma.0 + 8);
    // SAFETY: refused before anything changes. Before, it unmapped the
    // IOVA and leaked the bounce slots for good.
    let e = unsafe { dev.unmap_phys(inside, 192, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::NotMapped(inside)));
    assert_eq!(f.dev_read(dma.0, 200).unwrap(), vec![0x19; 200]);
    assert_eq!(pool.used_slots(), 2);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 200, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert_eq!(pool.used_slots(), 0);
    f.assert_unreachable(dma.0, 200);
}
