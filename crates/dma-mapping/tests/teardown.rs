//! After every kind of teardown the device reaches nothing of the old
//! memory, proven by model DMA: strict at return, lazy after the flush and
//! with no reuse of the IOVA before it; and bad input on a live domain is a
//! typed error that leaves every other mapping as it was.

mod common;

use common::*;
use dma_mapping::{
    Attrs, DeviceConfig, Direction, DmaDevice, DmaDomain, DmaError, DomainConfig, Invalidation,
    PhysSegment,
};
use io_pgtable::Granule;
use sim_memory::Coherency;
use smmuv3::AttachOptions;
use smmuv3_hosted::HostedDomain;
use smmuv3_model::DmaRequest;

const LAZY: Invalidation = Invalidation::Lazy {
    timeout_ticks: 1000,
};

/// Returns the IOVA frames free or cached.
fn iova_free(f: &Fixture) -> u64 {
    f.dom.iova().tree_free_pages() + f.dom.iova().cached_frames() as u64
}

#[test]
fn a_lazy_unmap_sg_keeps_its_iova_until_the_flush_and_then_reaches_nothing() {
    let f = fixture(Coherency::Coherent, LAZY);
    let dev = f.device(DeviceConfig::new(1));
    let a = f.buffer(8192, 1);
    let b = f.buffer(4096, 2);
    let segs = [
        PhysSegment { phys: a, len: 8192 },
        PhysSegment { phys: b, len: 4096 },
    ];
    // SAFETY: test-owned buffers.
    let m = unsafe { dev.map_sg(&segs, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let base = m.segments()[0].addr.0;
    assert_eq!(f.dev_read(base + 8192, 4).unwrap(), vec![2; 4]);
    let free = iova_free(&f);
    // SAFETY: the list above, DMA done.
    unsafe { dev.unmap_sg(m) }.unwrap();
    assert_eq!(f.dom.pending(), 1);
    assert_eq!(iova_free(&f), free, "not free before its flush");
    // SAFETY: test-owned buffers; none of these may land on the old range.
    unsafe {
        let again = dev
            .map_sg(&segs, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let at = again.segments()[0].addr.0;
        assert!(at + 16384 <= base || base + 16384 <= at);
        dev.unmap_sg(again).unwrap();
    }
    f.dom.flush_pending().unwrap();
    f.assert_unreachable(base, 16384);
    assert_eq!(iova_free(&f), free + 4, "the list's 4 pages are back");
}

#[test]
fn coherent_frees_and_unlinks_are_immediate_even_when_lazy() {
    let f = fixture(Coherency::NonCoherent, LAZY);
    let dev = f.device(DeviceConfig::new(1));
    let c = dev.alloc_coherent(8192).unwrap();
    let cd = c.dma;
    assert!(f.dev_write(cd.0 + 4096, &[3; 4]));
    // SAFETY: the device is done with it.
    unsafe { dev.free_coherent(c) }.unwrap();
    f.assert_unreachable(cd.0, 8192);

    let p = f.buffer(8192, 4);
    let mut r = dev.iova_try_alloc(p, 8192).unwrap();
    // SAFETY: test-owned buffer.
    unsafe { dev.iova_link(&mut r, p, 0, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    // SAFETY: test-owned buffer.
    unsafe {
        dev.iova_link(
            &mut r,
            p + 4096,
            4096,
            4096,
            Direction::ToDevice,
            Attrs::empty(),
        )
    }
    .unwrap();
    dev.iova_sync(&r, 0, 8192).unwrap();
    let base = r.addr().0;
    assert_eq!(f.dev_read(base, 8192).unwrap(), vec![4; 8192]);
    // SAFETY: DMA on the piece done.
    unsafe { dev.iova_unlink(&mut r, 0, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.assert_unreachable(base, 4096);
    assert!(f.dev_read(base + 4096, 4).is_some());
    // SAFETY: DMA done.
    unsafe { dev.iova_destroy(r, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.dom.flush_pending().unwrap();
    f.assert_unreachable(base, 8192);
    assert_eq!(f.dom.pending(), 0);
}

#[test]
fn a_detached_stream_reaches_nothing_live_or_queued() {
    let f = fixture(Coherency::Coherent, LAZY);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 9);
    // SAFETY: test-owned buffer.
    let (live, queued) = unsafe {
        let live = dev
            .map_phys(pa, 4096, Direction::Bidirectional, Attrs::empty())
            .unwrap();
        let queued = dev
            .map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert!(f.dev_read(live.0, 4).is_some());
        assert!(f.dev_read(queued.0, 4).is_some());
        dev.unmap_phys(queued, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        (live, queued)
    };
    assert_eq!(f.dom.pending(), 1);
    f.sys.smmu.detach(SID, None).unwrap();
    f.assert_unreachable(live.0, 4096);
    f.assert_unreachable(queued.0, 4096);
    // SAFETY: the live mapping; the stream is gone, the mapping is not.
    unsafe { dev.unmap_phys(live, 4096, Direction::Bidirectional, Attrs::empty()) }.unwrap();
}

#[test]
fn the_page_table_refusing_an_address_is_a_typed_error_that_changes_nothing() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let other = f.buffer(4096, 0x55);
    // SAFETY: test-owned buffer.
    let keep = unsafe { dev.map_phys(other, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let free = iova_free(&f);
    let a = f.buffer(8192, 1);
    // SAFETY: every call fails before the device is given an address.
    unsafe {
        // Output addresses beyond the SMMU's 48 bits, and the top of the
        // physical space, whose enclosing granule ends at 2^64.
        for (phys, size) in [(1u64 << 50, 8192), (u64::MAX - 10, 5)] {
            let e = dev.map_phys(phys, size, Direction::ToDevice, Attrs::empty());
            assert!(matches!(e, Err(DmaError::Iommu(_))), "{phys:#x}: {e:?}");
        }
        // A list whose third segment the table refuses: the first two were
        // mapped and are removed again.
        let segs = [
            PhysSegment { phys: a, len: 4096 },
            PhysSegment {
                phys: a + 4096,
                len: 4096,
            },
            PhysSegment {
                phys: 1 << 50,
                len: 4096,
            },
        ];
        let e = dev.map_sg(&segs, Direction::ToDevice, Attrs::empty());
        assert!(matches!(e, Err(DmaError::Iommu(_))), "{e:?}");
    }
    assert_eq!(iova_free(&f), free);
    // What the failed list's range would have been is unmapped: the next
    // list of that size takes it.
    // SAFETY: test-owned buffer.
    let probe = unsafe {
        dev.map_sg(
            &[
                PhysSegment { phys: a, len: 8192 },
                PhysSegment { phys: a, len: 4096 },
            ],
            Direction::ToDevice,
            Attrs::empty(),
        )
    }
    .unwrap();
    let base = probe.segments()[0].addr.0;
    // SAFETY: the list above.
    unsafe { dev.unmap_sg(probe) }.unwrap();
    f.assert_unreachable(base, 16384);
    assert_eq!(f.dev_read(keep.0, 4096).unwrap(), vec![0x55; 4096]);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(keep, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.assert_unreachable(keep.0, 4096);
}

#[test]
fn masks_below_a_granule_and_beyond_the_aperture_are_handled() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let pa = f.buffer(4096, 1);
    let tiny = f.device(DeviceConfig {
        dma_mask: 0xfff,
        ..DeviceConfig::new(1)
    });
    let free = iova_free(&f);
    // SAFETY: refused before anything is mapped.
    let e = unsafe { tiny.map_phys(pa, 16, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::IovaExhausted { size: 4096 }));
    assert_eq!(iova_free(&f), free);
    // A 64-bit mask on a 48-bit domain gets IOVAs inside the aperture.
    let wide = f.device(DeviceConfig::new(2));
    // SAFETY: test-owned buffer.
    let d = unsafe { wide.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert!(d.0 + 4096 <= 1 << 48);
    // A mapping larger than the aperture.
    // SAFETY: refused before anything is mapped.
    let e = unsafe { wide.map_phys(pa, 1 << 49, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::IovaExhausted { size: 1 << 49 }));
    // SAFETY: the mapping above.
    unsafe { wide.unmap_phys(d, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert_eq!(iova_free(&f), free);
}

#[test]
fn an_iova_of_another_domain_is_not_mapped_here_and_changes_nothing() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    // A second domain on stream 8.
    let hd = HostedDomain::new_stage1(&f.sys.smmu, Granule::K4, 48).unwrap();
    f.sys
        .smmu
        .attach(8, None, &hd, AttachOptions::default())
        .unwrap();
    let dom_b = std::sync::Arc::new(
        DmaDomain::new(
            dma_mapping::smmu::SmmuDomain::new(hd, true),
            f.env.clone(),
            DomainConfig::default(),
        )
        .unwrap(),
    );
    let a = f.device(DeviceConfig::new(1));
    let b = DmaDevice::behind_iommu(DeviceConfig::new(2), dom_b.clone());
    let pa = f.buffer(8192, 0x66);
    // SAFETY: test-owned buffer.
    let (da, db) = unsafe {
        let da = a
            .map_phys(pa, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let db = b
            .map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        (da, db)
    };
    // Both allocators hand out the top of the space: B's granule is A's
    // second, and A's first is where B's table holds nothing.
    let theirs = da;
    assert_eq!(db.0, da.0 + 4096);
    // SAFETY: refused: B's table holds nothing there.
    let e = unsafe { b.unmap_phys(theirs, 4096, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::NotMapped(theirs)));
    assert_eq!(f.dev_read(da.0, 8192).unwrap(), vec![0x66; 8192]);
    let read_b = |iova: u64| {
        let mut v = vec![0u8; 4];
        f.sys
            .model
            .dma_read(&DmaRequest::read(8, iova, 4), &mut v)
            .ok()
            .map(|_| v)
    };
    assert_eq!(read_b(db.0), Some(vec![0x66; 4]));
    // Stream 8 never reaches A's mapping.
    assert_eq!(read_b(theirs.0), None);
    let _ = f.sys.smmu.drain_events();
}

#[test]
fn a_consuming_teardown_whose_cache_invalidation_fails_still_unmaps() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let a = f.buffer(8192, 1);
    let segs = [
        PhysSegment { phys: a, len: 4096 },
        PhysSegment {
            phys: a + 4096,
            len: 4096,
        },
    ];
    // SAFETY: test-owned buffers.
    let m = unsafe { dev.map_sg(&segs, Direction::FromDevice, Attrs::empty()) }.unwrap();
    let base = m.segments()[0].addr.0;
    let mut r = dev.iova_try_alloc(a, 8192).unwrap();
    // SAFETY: test-owned buffer (device-written pieces, mapped twice).
    unsafe { dev.iova_link(&mut r, a, 0, 8192, Direction::FromDevice, Attrs::empty()) }.unwrap();
    dev.iova_sync(&r, 0, 8192).unwrap();
    let link = r.addr().0;
    assert!(f.dev_write(base, &[2; 4]));
    assert!(f.dev_write(link, &[2; 4]));
    f.env
        .fail_invalidate
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: DMA done. Both handles are consumed: before, the cache
    // error returned first and left the IOVAs mapped with no way to unmap
    // them.
    unsafe {
        assert!(matches!(dev.unmap_sg(m), Err(DmaError::Cache(_))));
        assert!(matches!(
            dev.iova_destroy(r, Direction::FromDevice, Attrs::empty()),
            Err(DmaError::Cache(_))
        ));
    }
    f.assert_unreachable(base, 8192);
    f.assert_unreachable(link, 8192);
}

#[test]
fn a_bounced_list_whose_cache_invalidation_fails_still_unmaps() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let pool = f.pool(16384);
    let dev = f
        .device(DeviceConfig {
            untrusted: true,
            ..DeviceConfig::new(1)
        })
        .with_bounce(pool.clone());
    let a = f.buffer(8192, 1);
    let segs = [
        PhysSegment {
            phys: a + 0x10,
            len: 100,
        },
        PhysSegment {
            phys: a + 4096 + 0x10,
            len: 100,
        },
    ];
    // SAFETY: test-owned buffer.
    let m = unsafe { dev.map_sg(&segs, Direction::FromDevice, Attrs::empty()) }.unwrap();
    assert!(!m.is_contiguous(), "bounced segments are mapped one by one");
    let addrs: Vec<u64> = m.segments().iter().map(|s| s.addr.0).collect();
    f.env
        .fail_invalidate
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: DMA done. Before, each segment's cache error came first and
    // left it mapped, its slots taken, with no handle left.
    let r = unsafe { dev.unmap_sg(m) };
    assert!(matches!(r, Err(DmaError::Cache(_))));
    for a in addrs {
        f.assert_unreachable(a, 100);
    }
    assert_eq!(pool.used_slots(), 0);
}
