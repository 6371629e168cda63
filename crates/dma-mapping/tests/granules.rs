//! A 16 KiB-granule domain: partial granules, untrusted bouncing and
//! scatter-gather all follow the IOVA granule, not 4 KiB.

mod common;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, Invalidation, PhysSegment};
use io_pgtable::Granule;
use sim_memory::Coherency;

const G: u64 = 16 * 1024;

#[test]
fn a_16k_domain_maps_and_bounces_whole_16k_granules() {
    both(|coh| {
        let f = fixture_granule(coh, Invalidation::Strict, 1, Granule::K16);
        assert_eq!(f.dom.granule(), G);
        let trusted = f.device(DeviceConfig::new(1));
        let pa = f.buffer(2 * G, 0x61);
        // SAFETY: test-owned buffer.
        let dma =
            unsafe { trusted.map_phys(pa + 0x2345, 100, Direction::ToDevice, Attrs::empty()) }
                .unwrap();
        assert_eq!(dma.0 % G, 0x2345);
        assert_eq!(f.dev_read(dma.0, 100).unwrap(), vec![0x61; 100]);
        assert!(
            f.dev_read(dma.0 - 0x2345 + G - 1, 1).is_some(),
            "the whole granule"
        );
        // SAFETY: the mapping above.
        unsafe { trusted.unmap_phys(dma, 100, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.assert_unreachable(dma.0 - 0x2345, G);

        let pool = f.pool(4 * G);
        let untrusted = f
            .device(DeviceConfig {
                untrusted: true,
                ..DeviceConfig::new(2)
            })
            .with_bounce(pool.clone());
        // SAFETY: test-owned buffer.
        let dma =
            unsafe { untrusted.map_phys(pa + 0x2345, 100, Direction::ToDevice, Attrs::empty()) }
                .unwrap();
        assert_eq!(dma.0 % G, 0x2345);
        assert_eq!(pool.used_slots() as u64, G / 2048, "one whole 16K run");
        let granule = f.dev_read(dma.0 - 0x2345, G as usize).unwrap();
        assert_eq!(&granule[0x2345..0x2345 + 100], &[0x61; 100]);
        assert_eq!(
            granule.iter().filter(|&&b| b != 0).count(),
            100,
            "padding zeroed"
        );
        // SAFETY: the mapping above.
        unsafe { untrusted.unmap_phys(dma, 100, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.assert_unreachable(dma.0 - 0x2345, G);

        let segs = [
            PhysSegment { phys: pa, len: G },
            PhysSegment {
                phys: pa + G,
                len: 0x100,
            },
        ];
        // SAFETY: test-owned buffer.
        let m = unsafe { trusted.map_sg(&segs, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(m.segments().len(), 1, "contiguous in IOVA: merged");
        assert_eq!(m.segments()[0].len, G + 0x100);
        let a = m.segments()[0].addr.0;
        // SAFETY: the mapping above.
        unsafe { trusted.unmap_sg(m) }.unwrap();
        f.assert_unreachable(a, 2 * G);
    });
}

#[test]
fn four_k_buffers_in_a_16k_domain_are_partial_granules() {
    let f = fixture_granule(
        Coherency::Coherent,
        Invalidation::Lazy { timeout_ticks: 10 },
        1,
        Granule::K16,
    );
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(G, 0x7e);
    // SAFETY: test-owned buffer.
    let dma =
        unsafe { dev.map_phys(pa + 4096, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert_eq!(dma.0 % G, 4096);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.dom.flush_pending().unwrap();
    f.assert_unreachable(dma.0 - 4096, G);
}
