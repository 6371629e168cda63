//! The link API on the model: reserve, link without IOTLB work, one sync,
//! unlink (invalidated at once), destroy.

mod common;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, DmaAddr, DmaError, Invalidation, IommuDomain};
use sim_memory::Coherency;

#[test]
fn linked_pieces_are_reachable_after_sync_and_gone_after_unlink_and_destroy() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = f.device(DeviceConfig::new(1));
        let a = f.buffer(4096, 0xa1);
        let b = f.buffer(8192, 0xb2);
        let c = f.buffer(4096, 0xc3);
        // 0x100 bytes of slack before `a`'s piece: it starts mid-granule.
        let mut r = dev.iova_try_alloc(a + 0x100, 0xf00 + 8192 + 0x80).unwrap();
        assert_eq!(r.addr().0 & 0xfff, 0x100);
        let syncs = f.sys.smmu.stats().syncs;
        // SAFETY: test-owned buffers.
        unsafe {
            dev.iova_link(
                &mut r,
                a + 0x100,
                0,
                0xf00,
                Direction::ToDevice,
                Attrs::empty(),
            )
            .unwrap();
            dev.iova_link(&mut r, b, 0xf00, 8192, Direction::ToDevice, Attrs::empty())
                .unwrap();
            dev.iova_link(
                &mut r,
                c,
                0xf00 + 8192,
                0x80,
                Direction::ToDevice,
                Attrs::empty(),
            )
            .unwrap();
        }
        assert_eq!(
            f.sys.smmu.stats().syncs,
            syncs,
            "linking issues no IOTLB work"
        );
        dev.iova_sync(&r, 0, r.size()).unwrap();
        let base = r.addr().0;
        assert_eq!(f.dev_read(base, 0xf00).unwrap(), vec![0xa1; 0xf00]);
        assert_eq!(f.dev_read(base + 0xf00, 8192).unwrap(), vec![0xb2; 8192]);
        assert_eq!(
            f.dev_read(base + 0xf00 + 8192, 0x80).unwrap(),
            vec![0xc3; 0x80]
        );
        // SAFETY: DMA on the piece is done.
        unsafe { dev.iova_unlink(&mut r, 0xf00, 8192, Direction::ToDevice, Attrs::empty()) }
            .unwrap();
        f.assert_unreachable(base + 0xf00, 8192);
        assert!(f.dev_read(base, 4).is_some(), "other pieces stay");
        // SAFETY: DMA is done.
        unsafe { dev.iova_destroy(r, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.assert_unreachable(base, 0xf00 + 8192 + 0x80);
    });
}

#[test]
fn bad_links_are_refused_and_change_nothing() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let a = f.buffer(16384, 1);
    let mut r = dev.iova_try_alloc(a, 16384).unwrap();
    // SAFETY: every call is refused before mapping, or maps test memory.
    unsafe {
        let bad = |offset, size| Err(DmaError::BadLink { offset, size });
        // Beyond the reservation.
        assert_eq!(
            dev.iova_link(&mut r, a, 8192, 16384, Direction::ToDevice, Attrs::empty()),
            bad(8192, 16384)
        );
        // Phys offset differs from the IOVA offset.
        assert_eq!(
            dev.iova_link(&mut r, a + 8, 0, 4096, Direction::ToDevice, Attrs::empty()),
            bad(0, 4096)
        );
        // An inner piece that ends mid-granule.
        assert_eq!(
            dev.iova_link(&mut r, a, 0, 100, Direction::ToDevice, Attrs::empty()),
            bad(0, 100)
        );
        dev.iova_link(&mut r, a, 0, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        // Overlapping a linked piece.
        assert_eq!(
            dev.iova_link(
                &mut r,
                a + 4096,
                4096,
                4096,
                Direction::ToDevice,
                Attrs::empty()
            ),
            bad(4096, 4096)
        );
        // Unlinking something never linked.
        assert_eq!(
            dev.iova_unlink(&mut r, 8192, 4096, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::NotMapped(DmaAddr(r.addr().0 + 8192)))
        );
    }
    assert_eq!(r.linked(), &[(0, 8192)]);
    dev.iova_sync(&r, 0, 8192).unwrap();
    assert!(f.dev_read(r.addr().0, 8192).is_some());
    let base = r.addr().0;
    // SAFETY: DMA done.
    unsafe { dev.iova_destroy(r, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.assert_unreachable(base, 16384);
}

#[test]
fn link_needs_an_iommu_and_a_trusted_device() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let direct: DirectDev = dma_mapping::DmaDevice::direct(DeviceConfig::new(1), f.env.clone());
    assert_eq!(
        direct.iova_try_alloc(0x4000_0000, 4096).unwrap_err(),
        DmaError::NoIommu
    );
    let untrusted = f.device(DeviceConfig {
        untrusted: true,
        ..DeviceConfig::new(2)
    });
    assert_eq!(
        untrusted.iova_try_alloc(0x4000_0000, 4096).unwrap_err(),
        DmaError::NeedsBounce
    );
}

#[test]
fn lazy_destroy_defers_the_iova_until_the_flush() {
    let f = fixture(
        Coherency::Coherent,
        Invalidation::Lazy {
            timeout_ticks: 1000,
        },
    );
    let dev = f.device(DeviceConfig::new(1));
    let a = f.buffer(8192, 7);
    let mut r = dev.iova_try_alloc(a, 8192).unwrap();
    // SAFETY: test-owned buffer.
    unsafe { dev.iova_link(&mut r, a, 0, 8192, Direction::ToDevice, Attrs::empty()) }.unwrap();
    dev.iova_sync(&r, 0, 8192).unwrap();
    let base = r.addr().0;
    assert!(f.dev_read(base, 4).is_some());
    // SAFETY: DMA done.
    unsafe { dev.iova_destroy(r, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert_eq!(f.dom.pending(), 1);
    f.dom.flush_pending().unwrap();
    f.assert_unreachable(base, 8192);
}

#[test]
fn a_reservation_of_another_domain_is_refused_and_changes_nothing() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let other = fixture(Coherency::Coherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    // A device of another domain (its own model and stream table).
    let stranger = other.device(DeviceConfig::new(2));
    let a = f.buffer(8192, 5);
    let mut r = dev.iova_try_alloc(a, 8192).unwrap();
    // SAFETY: test-owned buffer.
    unsafe { dev.iova_link(&mut r, a, 0, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    dev.iova_sync(&r, 0, 4096).unwrap();
    let base = r.addr().0;
    // SAFETY: all three calls are refused before anything is mapped or
    // unmapped.
    unsafe {
        // Before, the stranger mapped into its own table at an IOVA its
        // allocator never gave out (and would later hand out again).
        assert_eq!(
            stranger.iova_link(
                &mut r,
                a + 4096,
                4096,
                4096,
                Direction::ToDevice,
                Attrs::empty()
            ),
            Err(DmaError::ForeignRange)
        );
        assert_eq!(
            stranger.iova_unlink(&mut r, 0, 4096, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::ForeignRange)
        );
    }
    assert_eq!(stranger.iova_sync(&r, 0, 4096), Err(DmaError::ForeignRange));
    assert_eq!(r.linked(), &[(0, 4096)]);
    let theirs = stranger.dma_domain().unwrap().domain();
    assert_eq!(theirs.translate(base + 4096), None);
    assert_eq!(f.dev_read(base, 4096).unwrap(), vec![5; 4096]);
    // SAFETY: DMA done.
    unsafe { dev.iova_destroy(r, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.assert_unreachable(base, 8192);
}
