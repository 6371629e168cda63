//! Scatter-gather on the IOMMU path: one IOVA range, merged segments,
//! per-segment mapping when a segment bounces; unreachable after unmap.

mod common;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, Invalidation, PhysSegment};
use sim_memory::Coherency;

#[test]
fn scattered_pages_become_one_iova_range_and_merged_segments() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = f.device(DeviceConfig::new(1));
        // 64 pages, every other one, so physical memory is not contiguous.
        let base = f.buffer(128 * 4096, 0);
        let segs: Vec<PhysSegment> = (0..64u64)
            .map(|i| {
                let phys = base + 2 * i * 4096;
                f.sys.mem.cpu_write(phys, &[i as u8; 4096]).unwrap();
                PhysSegment { phys, len: 4096 }
            })
            .collect();
        // SAFETY: test-owned buffers.
        let m = unsafe { dev.map_sg(&segs, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert!(m.is_contiguous());
        // 64 KiB default segment limit: 4 DMA segments of 16 pages.
        assert_eq!(m.segments().len(), 4);
        let first = m.segments()[0].addr.0;
        for (k, s) in m.segments().iter().enumerate() {
            assert_eq!(s.len, 64 * 1024);
            assert_eq!(s.addr.0, first + k as u64 * 64 * 1024);
        }
        for i in 0..64u64 {
            assert_eq!(
                f.dev_read(first + i * 4096, 4096).unwrap(),
                vec![i as u8; 4096]
            );
        }
        // SAFETY: the mapping above, DMA done.
        unsafe { dev.unmap_sg(m) }.unwrap();
        f.assert_unreachable(first, 64 * 4096);
    });
}

#[test]
fn unaligned_segments_keep_their_offsets_and_only_contiguous_ones_merge() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let a = f.buffer(8192, 1);
    let b = f.buffer(4096, 2);
    let c = f.buffer(4096, 3);
    let segs = [
        // Ends on a granule boundary: b (offset 0) merges into it.
        PhysSegment {
            phys: a + 0x800,
            len: 0x1800,
        },
        PhysSegment {
            phys: b,
            len: 0x100,
        },
        // Starts mid-granule: its own DMA segment.
        PhysSegment {
            phys: c + 0x10,
            len: 0x20,
        },
    ];
    // SAFETY: test-owned buffers.
    let m = unsafe { dev.map_sg(&segs, Direction::Bidirectional, Attrs::empty()) }.unwrap();
    let s = m.segments();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].addr.0 & 0xfff, 0x800);
    assert_eq!(s[0].len, 0x1900);
    assert_eq!(s[1].addr.0 & 0xfff, 0x10);
    assert_eq!(s[1].len, 0x20);
    assert_eq!(
        f.dev_read(s[0].addr.0 + 0x1800, 0x100).unwrap(),
        vec![2; 0x100]
    );
    assert_eq!(f.dev_read(s[1].addr.0, 0x20).unwrap(), vec![3; 0x20]);
    assert!(f.dev_write(s[1].addr.0, &[9; 4]));
    let (lo, hi) = (s[0].addr.0 & !0xfff, s[1].addr.0 + 0x20);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_sg(m) }.unwrap();
    assert_eq!(
        f.cpu_read(c + 0x10, 4),
        vec![9; 4],
        "unmap invalidated the CPU lines"
    );
    f.assert_unreachable(lo, hi - lo);
}

#[test]
fn a_segment_that_must_bounce_maps_every_segment_separately() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let pool = f.pool(64 * 1024);
    let dev = f
        .device(DeviceConfig {
            untrusted: true,
            ..DeviceConfig::new(1)
        })
        .with_bounce(pool.clone());
    let a = f.buffer(4096, 4);
    let b = f.buffer(4096, 5);
    let segs = [
        PhysSegment { phys: a, len: 4096 },
        PhysSegment {
            phys: b + 8,
            len: 16,
        },
    ];
    // SAFETY: test-owned buffers.
    let m = unsafe { dev.map_sg(&segs, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert!(!m.is_contiguous());
    assert_eq!(
        pool.used_slots(),
        2,
        "only the partial segment bounced (one 4K run)"
    );
    let s: Vec<_> = m.segments().to_vec();
    assert_eq!(f.dev_read(s[1].addr.0, 16).unwrap(), vec![5; 16]);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_sg(m) }.unwrap();
    assert_eq!(pool.used_slots(), 0);
    for seg in s {
        f.assert_unreachable(seg.addr.0, seg.len);
    }
}
