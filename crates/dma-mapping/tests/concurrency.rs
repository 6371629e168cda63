//! Two threads (two CPUs of the per-CPU caches and flush queues) map, DMA
//! and unmap through one domain on the model at once; every IOVA is
//! exclusive while live and unreachable after its unmap.

mod common;

use std::collections::HashSet;
use std::sync::Mutex;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, Invalidation};
use sim_memory::Coherency;

#[test]
fn concurrent_mappings_never_share_an_iova_and_end_unreachable() {
    for inv in [
        Invalidation::Strict,
        Invalidation::Lazy { timeout_ticks: 50 },
    ] {
        let f = fixture_with(Coherency::Coherent, inv, 2);
        let dev = f.device(DeviceConfig::new(1));
        let live = Mutex::new(HashSet::new());
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..2u8 {
                let (f, dev, live, seen) = (&f, &dev, &live, &seen);
                s.spawn(move || {
                    set_cpu(t as usize);
                    let pa = f.buffer(4096, 0x10 + t);
                    for i in 0..300 {
                        // SAFETY: this thread's buffer.
                        let a =
                            unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }
                                .unwrap();
                        assert!(
                            live.lock().unwrap().insert(a.0),
                            "IOVA {a} handed out twice"
                        );
                        if i % 16 == 0 {
                            assert_eq!(f.dev_read(a.0, 4).unwrap(), vec![0x10 + t; 4]);
                        }
                        live.lock().unwrap().remove(&a.0);
                        // SAFETY: the mapping above.
                        unsafe { dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty()) }
                            .unwrap();
                        f.env.advance(1);
                        seen.lock().unwrap().push(a.0);
                    }
                });
            }
        });
        f.dom.flush_pending().unwrap();
        let seen = seen.into_inner().unwrap();
        let distinct: HashSet<_> = seen.iter().collect();
        for a in distinct {
            f.assert_unreachable(*a, 4096);
        }
    }
}

/// Four threads on `ncpus` CPUs map (single buffers of 1..=40 pages, and
/// scatter-gather lists), read through the model and unmap. Every live
/// range is disjoint from every other, and every read returns the bytes
/// of the mapping live at that IOVA: a stale IOTLB entry of an IOVA's
/// earlier user (another thread's buffer) would show its bytes.
fn stress(inv: Invalidation, ncpus: usize, threads: u8) {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    let f = fixture_with(Coherency::Coherent, inv, ncpus);
    let dev = f.device(DeviceConfig::new(1));
    let live: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());
    let used = Mutex::new(HashSet::new());
    let maps = AtomicU64::new(0);
    let claim = |start: u64, len: u64| {
        let mut l = live.lock().unwrap();
        let below = l.range(..=start).next_back().map(|(&s, &e)| (s, e));
        let above = l.range(start..).next().map(|(&s, &e)| (s, e));
        assert!(below.is_none_or(|(_, e)| e <= start), "{start:#x} overlaps");
        assert!(
            above.is_none_or(|(s, _)| s >= start + len),
            "{start:#x} overlaps"
        );
        l.insert(start, start + len);
    };
    std::thread::scope(|s| {
        for t in 0..threads {
            let (f, dev, live, used, maps, claim) = (&f, &dev, &live, &used, &maps, &claim);
            s.spawn(move || {
                set_cpu(t as usize);
                let bufs = [
                    f.buffer(40 << 12, 0x10 * t),
                    f.buffer(40 << 12, 0x10 * t + 1),
                ];
                let mut rng = 0x9e37_79b9_u64 ^ u64::from(t);
                for i in 0..400usize {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let which = i % 2;
                    let byte = 0x10 * t + which as u8;
                    let pages = 1 + rng % 40;
                    let len = pages << 12;
                    let pa = bufs[which];
                    if rng % 4 == 0 && pages >= 2 {
                        // Two scattered halves of the buffer, one IOVA range.
                        let half = (pages / 2) << 12;
                        let segs = [
                            dma_mapping::PhysSegment {
                                phys: pa + half,
                                len: len - half,
                            },
                            dma_mapping::PhysSegment {
                                phys: pa,
                                len: half,
                            },
                        ];
                        // SAFETY: this thread's buffer, read-only to the device.
                        let m = unsafe { dev.map_sg(&segs, Direction::ToDevice, Attrs::empty()) }
                            .unwrap();
                        let base = m.segments()[0].addr.0;
                        claim(base, len);
                        for seg in m.segments() {
                            assert_eq!(f.dev_read(seg.addr.0, 8).unwrap(), vec![byte; 8]);
                            let last = seg.addr.0 + seg.len - 8;
                            assert_eq!(f.dev_read(last, 8).unwrap(), vec![byte; 8]);
                        }
                        live.lock().unwrap().remove(&base);
                        // SAFETY: the list above, DMA done.
                        unsafe { dev.unmap_sg(m) }.unwrap();
                        used.lock().unwrap().insert((base, len));
                    } else {
                        // SAFETY: this thread's buffer, read-only to the device.
                        let a =
                            unsafe { dev.map_phys(pa, len, Direction::ToDevice, Attrs::empty()) }
                                .unwrap();
                        claim(a.0, len);
                        assert_eq!(f.dev_read(a.0, 8).unwrap(), vec![byte; 8]);
                        assert_eq!(f.dev_read(a.0 + len - 8, 8).unwrap(), vec![byte; 8]);
                        live.lock().unwrap().remove(&a.0);
                        // SAFETY: the mapping above, DMA done.
                        unsafe { dev.unmap_phys(a, len, Direction::ToDevice, Attrs::empty()) }
                            .unwrap();
                        used.lock().unwrap().insert((a.0, len));
                    }
                    maps.fetch_add(1, Ordering::Relaxed);
                    f.env.advance(1);
                    if i % 32 == 0 {
                        f.dom.tick().unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(maps.into_inner(), 400 * u64::from(threads));
    f.dom.flush_pending().unwrap();
    assert_eq!(f.dom.pending(), 0);
    let used = used.into_inner().unwrap();
    // IOVAs were reused (the case a stale entry would show in).
    let starts: HashSet<u64> = used.iter().map(|&(a, _)| a).collect();
    assert!(
        starts.len() < 400 * usize::from(threads) / 4,
        "{} starts",
        starts.len()
    );
    for (a, len) in used {
        f.assert_unreachable(a, len);
    }
    // Every IOVA is back: free plus cached is the whole space again.
    let space = f.dom.iova().config().end_pfn - f.dom.iova().config().start_pfn;
    assert_eq!(
        f.dom.iova().tree_free_pages() + f.dom.iova().cached_frames() as u64,
        space
    );
}

#[test]
fn four_threads_of_mixed_sizes_strict() {
    stress(Invalidation::Strict, 4, 4);
}

#[test]
fn four_threads_of_mixed_sizes_lazy() {
    stress(Invalidation::Lazy { timeout_ticks: 20 }, 4, 4);
}

#[test]
fn four_threads_sharing_two_cpus_caches() {
    // Two threads per CPU id: the per-CPU magazines and rings are shared,
    // so their locks, not the CPU id, keep them apart.
    stress(Invalidation::Lazy { timeout_ticks: 20 }, 2, 4);
}
