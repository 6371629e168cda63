//! Lazy invalidation on the model: the IOTLB keeps stale entries until the
//! flush queue flushes; an IOVA is reused only after its invalidation
//! completed; full rings and the clock trigger flushes.

mod common;

use common::*;
use dma_mapping::flush_queue::RING_SIZE;
use dma_mapping::{Attrs, DeviceConfig, Direction, Invalidation};
use sim_memory::Coherency;

const LAZY: Invalidation = Invalidation::Lazy {
    timeout_ticks: 1000,
};

#[test]
fn a_lazily_unmapped_iova_is_not_reused_until_flushed() {
    both(|coh| {
        let f = fixture(coh, LAZY);
        let dev = f.device(DeviceConfig::new(1));
        let pa = f.buffer(4096, 0x10);
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        // Fill the IOTLB.
        assert!(f.dev_read(dma.0, 4).is_some());
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(f.dom.pending(), 1);
        // The lazy window: the model's IOTLB still holds the translation.
        assert!(
            f.dev_read(dma.0, 4).is_some(),
            "stale IOTLB entry expected before the flush"
        );
        // And it is the only stale translation the model holds.
        assert_eq!(f.stale_iovas(), [dma.0]);
        // A new mapping meanwhile gets another IOVA.
        let pb = f.buffer(4096, 0x20);
        // SAFETY: test-owned buffer.
        let other = unsafe { dev.map_phys(pb, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_ne!(other, dma);
        f.dom.flush_pending().unwrap();
        assert_eq!(f.dom.pending(), 0);
        f.assert_unreachable(dma.0, 4096);
        assert_eq!(f.stale_iovas(), [0u64; 0]);
        // Now the IOVA is free again and comes back first (magazine LIFO).
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(other, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.dom.flush_pending().unwrap();
        // SAFETY: test-owned buffer.
        let again = unsafe { dev.map_phys(pb, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(again, other);
        assert_eq!(f.dev_read(again.0, 4).unwrap(), vec![0x20; 4]);
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(again, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.dom.flush_pending().unwrap();
        f.assert_unreachable(again.0, 4096);
    });
}

#[test]
fn a_full_ring_flushes_and_frees() {
    let f = fixture(Coherency::Coherent, LAZY);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 1);
    let mut addrs = Vec::new();
    // SAFETY: test-owned buffer mapped read-only many times.
    unsafe {
        for _ in 0..RING_SIZE + 1 {
            addrs.push(
                dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
                    .unwrap(),
            );
        }
        let syncs = f.sys.smmu.stats().syncs;
        for &a in &addrs[..RING_SIZE] {
            dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty())
                .unwrap();
        }
        assert_eq!(f.dom.pending(), RING_SIZE);
        assert_eq!(f.sys.smmu.stats().syncs, syncs, "no invalidation yet");
        // The ring is full: this unmap flushes once and frees all 256.
        dev.unmap_phys(addrs[RING_SIZE], 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert_eq!(f.sys.smmu.stats().syncs, syncs + 1);
        assert_eq!(f.dom.pending(), 1);
    }
    for &a in &addrs[..RING_SIZE] {
        f.assert_unreachable(a.0, 4096);
    }
}

#[test]
fn the_clock_tick_flushes_after_the_timeout() {
    let f = fixture(Coherency::NonCoherent, LAZY);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 1);
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert!(f.dev_read(dma.0, 4).is_some());
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.env.advance(999);
    f.dom.tick().unwrap();
    assert_eq!(f.dom.pending(), 1, "not yet");
    f.env.advance(1);
    f.dom.tick().unwrap();
    assert_eq!(f.dom.pending(), 0);
    f.assert_unreachable(dma.0, 4096);
}

#[test]
fn strict_unmaps_invalidate_before_returning() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 1);
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert!(f.dev_read(dma.0, 4).is_some());
    let syncs = f.sys.smmu.stats().syncs;
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert_eq!(f.sys.smmu.stats().syncs, syncs + 1);
    assert_eq!(f.dom.pending(), 0);
    f.assert_unreachable(dma.0, 4096);
    assert_eq!(
        f.stale_iovas(),
        [0u64; 0],
        "nothing cached is stale at return"
    );
}

#[test]
fn a_double_unmap_or_a_sync_after_unmap_is_not_mapped_and_queues_nothing() {
    let f = fixture(Coherency::NonCoherent, LAZY);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 1);
    // SAFETY: test-owned buffer.
    let d = unsafe { dev.map_phys(pa, 4096, Direction::FromDevice, Attrs::empty()) }.unwrap();
    // SAFETY: the mapping above; the misuse after the unmap is refused.
    unsafe {
        dev.unmap_phys(d, 4096, Direction::FromDevice, Attrs::empty())
            .unwrap();
        assert_eq!(f.dom.pending(), 1);
        assert_eq!(
            dev.unmap_phys(d, 4096, Direction::FromDevice, Attrs::empty()),
            Err(dma_mapping::DmaError::NotMapped(d))
        );
        assert_eq!(
            dev.sync_for_cpu(d, 4096, Direction::FromDevice),
            Err(dma_mapping::DmaError::NotMapped(d))
        );
        assert_eq!(
            dev.sync_for_device(d, 16, Direction::FromDevice),
            Err(dma_mapping::DmaError::NotMapped(d))
        );
        assert_eq!(f.dom.pending(), 1, "queued once");
    }
    f.dom.flush_pending().unwrap();
    f.assert_unreachable(d.0, 4096);
}

#[test]
fn an_exhausted_space_flushes_the_queue_before_failing() {
    let f = fixture(Coherency::Coherent, LAZY);
    // 15 usable IOVA pages.
    let dev = f.device(DeviceConfig {
        dma_mask: 16 * 4096 - 1,
        ..DeviceConfig::new(1)
    });
    let pa = f.buffer(4096, 3);
    // SAFETY: test-owned buffer, mapped read-only many times.
    unsafe {
        let first: Vec<_> = (0..15)
            .map(|_| {
                dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
                    .unwrap()
            })
            .collect();
        for &a in &first {
            assert!(f.dev_read(a.0, 4).is_some());
            dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty())
                .unwrap();
        }
        assert_eq!(f.dom.pending(), 15);
        // Every IOVA waits for a flush: the next map flushes, then reuses.
        let syncs = f.sys.smmu.stats().syncs;
        let again = dev
            .map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert!(f.sys.smmu.stats().syncs > syncs, "flushed first");
        assert_eq!(f.dom.pending(), 0);
        assert!(first.contains(&again));
        for &a in first.iter().filter(|&&a| a != again) {
            f.assert_unreachable(a.0, 4096);
        }
        dev.unmap_phys(again, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
    f.dom.flush_pending().unwrap();
}
