//! The lock-free TLB-hit path of `SmmuModel::translate`: counted like any
//! hit, serving a working set of pages, and never serving a translation an
//! invalidation removed, even with another thread translating all along.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use smmuv3_model::{DmaRequest, ModelConfig};

fn setup() -> (H, Pt, u64) {
    let rig::Rig { h, pt, page, .. } = rig::rig_on(H::new(ModelConfig::default()), false);
    pt.map(&h, 0x4000, page, 3, S1_RW);
    (h, pt, page)
}

#[test]
fn hot_hits_are_counted_and_dropped_by_tlbi() {
    let (mut h, pt, page) = setup();
    let req = DmaRequest::read(1, 0x4010, 4).privileged();
    let before = h.smmu.stats();
    for _ in 0..10 {
        assert_eq!(h.smmu.translate(&req).unwrap().pa, page + 0x10);
    }
    let s = h.smmu.stats();
    assert_eq!(s.translations - before.translations, 10);
    assert_eq!(s.tlb_hits - before.tlb_hits, 9);
    assert_eq!(s.walks - before.walks, 1);
    // The mapping is EL1-only: the copy checks permissions too.
    let user = DmaRequest::read(1, 0x4010, 4);
    assert!(h.smmu.translate(&user).is_err());
    // Unmapped without TLBI: the stale entry still serves (as on hardware).
    pt.unmap(&h, 0x4000, 3);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, page + 0x10);
    // After TLBI + SYNC it does not.
    let (w0, w1) = tlbi_nh_va(1, 0x4000, true);
    h.cmd(w0, w1);
    h.sync();
    assert!(h.smmu.translate(&req).is_err());
    // The snapshot carries the folded counts.
    assert_eq!(h.smmu.snapshot(), h.smmu.snapshot());
}

/// Maps `pages` more pages at `WORKING_SET` (after `setup`'s page at
/// 0x4000), each to its own physical page; returns those.
fn map_working_set(h: &H, pt: &Pt, pages: u64) -> Vec<u64> {
    (0..pages)
        .map(|i| {
            let pa = h.alloc(4096);
            pt.map(h, WORKING_SET + i * 0x1000, pa, 3, S1_RW);
            pa
        })
        .collect()
}

/// Where `map_working_set` maps its pages.
const WORKING_SET: u64 = 0x10_0000;

/// Reader threads translate `vas` round robin while this one unmaps
/// `vas[victim]` and completes TLBI_NH_VA + CMD_SYNC for it: from then on
/// no translation of that page may succeed, and the others keep theirs.
fn tlbi_under_concurrent_hits(pages: u64, victim: usize) {
    let (mut h, pt, page) = setup();
    let mut pas = vec![page];
    pas.extend(map_working_set(&h, &pt, pages - 1));
    let vas: Vec<u64> = std::iter::once(0x4000)
        .chain((0..pages - 1).map(|i| WORKING_SET + i * 0x1000))
        .collect();
    let smmu: &'static smmuv3_model::SmmuModel = Box::leak(Box::new(std::mem::replace(
        &mut h.smmu,
        Arc::new(smmuv3_model::SmmuModel::new(ModelConfig::default(), h.mem.clone()).unwrap()),
    )));
    // The model moves to a 'static for the reader thread; `h` keeps the
    // memory and queue bookkeeping used to issue commands to it below.
    let done = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(false));
    let req = |va: u64| DmaRequest::read(1, va + 0x10, 4).privileged();
    for _ in 0..3 {
        for (&va, &pa) in vas.iter().zip(&pas) {
            assert_eq!(smmu.translate(&req(va)).unwrap().pa, pa + 0x10);
        }
    }
    // Every page has its copy now: the reader's hits take no lock.
    let before = smmu.lock_free_hits();
    let reader = {
        let (done, after, running) = (done.clone(), after.clone(), running.clone());
        let (vas, pas) = (vas.clone(), pas.clone());
        std::thread::spawn(move || {
            let (mut hits, mut checked) = (0u64, 0u64);
            let mut i = 0;
            while checked < 10_000 {
                i = (i + 1) % vas.len();
                let invalidated = done.load(Ordering::Acquire);
                let r = smmu.translate(&req(vas[i]));
                if i != victim {
                    assert_eq!(r.unwrap().pa, pas[i] + 0x10, "page {i}");
                } else if invalidated {
                    checked += 1;
                    if r.is_ok() {
                        after.fetch_add(1, Ordering::Relaxed);
                    }
                } else if r.is_ok() {
                    hits += 1;
                    running.store(true, Ordering::Release);
                }
            }
            hits
        })
    };
    while !running.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    pt.unmap(&h, vas[victim], 3);
    // TLBI_NH_VA + SYNC on the leaked model's command queue.
    let (w0, w1) = tlbi_nh_va(1, vas[victim], true);
    let n = 1u32 << h.cmdq_log2;
    for (i, w) in [(w0, w1), (u64::from(smmuv3_model::layout::op::SYNC), 0)]
        .into_iter()
        .enumerate()
    {
        let idx = (h.prod + i as u32) & (n - 1);
        h.write_words(h.cmdq + u64::from(idx) * 16, &[w.0, w.1]);
    }
    h.prod = (h.prod + 2) & ((n << 1) - 1);
    smmu.write32(smmuv3_model::regs::CMDQ_PROD, h.prod);
    assert_eq!(smmu.read32(smmuv3_model::regs::CMDQ_CONS) & 0xfffff, h.prod);
    done.store(true, Ordering::Release);
    let hits_before = reader.join().unwrap();
    assert!(hits_before > 0, "the reader raced the invalidation");
    assert!(smmu.lock_free_hits() > before, "and hit without the lock");
    assert_eq!(after.load(Ordering::Relaxed), 0);
    assert!(smmu.translate(&req(vas[victim])).is_err());
}

#[test]
fn no_translation_after_a_completed_tlbi_under_concurrent_hits() {
    tlbi_under_concurrent_hits(1, 0);
}

#[test]
fn no_page_of_a_working_set_translates_after_its_tlbi_under_concurrent_hits() {
    // The eighth page after `setup`'s (at `WORKING_SET` + 7 pages) has a
    // slot of its own. The fifth would share one with `setup`'s page at
    // 0x4000 (page 260 is page 4 modulo 64) and be served through the
    // lock as often as not.
    tlbi_under_concurrent_hits(16, 8);
}

#[test]
fn copies_serve_a_working_set_of_pages_without_the_lock() {
    let (h, pt, _page) = setup();
    let pas = map_working_set(&h, &pt, 32);
    let req = |i: u64| DmaRequest::read(1, WORKING_SET + i * 0x1000 + 8, 4).privileged();
    // A walk, then a locked TLB hit that publishes the page's copy.
    for _ in 0..2 {
        for (i, &pa) in pas.iter().enumerate() {
            assert_eq!(h.smmu.translate(&req(i as u64)).unwrap().pa, pa + 8);
        }
    }
    let (before, stats) = (h.smmu.lock_free_hits(), h.smmu.stats());
    for (i, &pa) in pas.iter().enumerate() {
        let t = h.smmu.translate(&req(i as u64)).unwrap();
        assert_eq!((t.pa, t.bytes_left, t.tlb_hit), (pa + 8, 0x1000 - 8, true));
    }
    assert_eq!(
        h.smmu.lock_free_hits() - before,
        32,
        "every page off the lock"
    );
    let s = h.smmu.stats();
    assert_eq!(s.tlb_hits - stats.tlb_hits, 32, "counted as TLB hits");
    assert_eq!(s.walks, stats.walks);
}

#[test]
fn a_completed_tlbi_drops_the_copies_of_every_page() {
    let (mut h, pt, _page) = setup();
    let pas = map_working_set(&h, &pt, 8);
    let req = |i: u64| DmaRequest::read(1, WORKING_SET + i * 0x1000, 4).privileged();
    let all = |h: &H| {
        for (i, &pa) in pas.iter().enumerate() {
            assert_eq!(h.smmu.translate(&req(i as u64)).unwrap().pa, pa);
        }
    };
    for _ in 0..3 {
        all(&h);
    }
    pt.unmap(&h, WORKING_SET + 3 * 0x1000, 3);
    let (w0, w1) = tlbi_nh_va(1, WORKING_SET + 3 * 0x1000, true);
    h.cmd(w0, w1);
    h.sync();
    assert!(h.smmu.translate(&req(3)).is_err());
    // The other pages keep their translations, each through the lock
    // once (every copy went with the command), then off it again.
    let before = h.smmu.lock_free_hits();
    for i in (0..8).filter(|&i| i != 3) {
        assert_eq!(h.smmu.translate(&req(i)).unwrap().pa, pas[i as usize]);
        assert_eq!(h.smmu.lock_free_hits(), before, "page {i}");
    }
    for i in (0..8).filter(|&i| i != 3) {
        assert_eq!(h.smmu.translate(&req(i)).unwrap().pa, pas[i as usize]);
    }
    assert_eq!(h.smmu.lock_free_hits() - before, 7);
}

#[test]
fn pages_sharing_a_slot_never_serve_each_other() {
    let (h, pt, _page) = setup();
    // 64 slots: pages 64 apart share one.
    let (a, b) = (WORKING_SET, WORKING_SET + 64 * 0x1000);
    let (pa, pb) = (h.alloc(4096), h.alloc(4096));
    pt.map(&h, a, pa, 3, S1_RW);
    pt.map(&h, b, pb, 3, S1_RW);
    for _ in 0..50 {
        for (va, want) in [(a, pa), (b, pb)] {
            let r = DmaRequest::read(1, va + 4, 4).privileged();
            assert_eq!(h.smmu.translate(&r).unwrap().pa, want + 4);
        }
    }
}

/// Translates `req` until the lock-free copy holds its page (a repeat
/// publishes it) and serves it once.
fn make_copy(h: &H, req: &DmaRequest) {
    for _ in 0..3 {
        h.smmu.translate(req).unwrap();
    }
}

/// Returns the model's TLB-hit count.
fn hits(h: &H) -> u64 {
    h.smmu.stats().tlb_hits
}

#[test]
fn copy_serves_only_its_page_its_stream_and_allowed_accesses() {
    let (h, _pt, page) = setup();
    let req = DmaRequest::read(1, 0x4010, 4).privileged();
    make_copy(&h, &req);
    let before = hits(&h);
    // Both ends of the page hit, with what is left of it.
    let first = h
        .smmu
        .translate(&DmaRequest::read(1, 0x4000, 4).privileged());
    let last = h
        .smmu
        .translate(&DmaRequest::read(1, 0x4fff, 1).privileged());
    assert_eq!(
        (first.unwrap().bytes_left, last.unwrap().bytes_left),
        (0x1000, 1)
    );
    assert_eq!(last.unwrap().pa, page + 0xfff);
    assert_eq!(hits(&h) - before, 2);
    // The bytes either side are not mapped: neither may hit (each miss
    // drops the copy, so it is made again before each).
    for va in [0x3fff, 0x5000] {
        make_copy(&h, &req);
        assert!(
            h.smmu
                .translate(&DmaRequest::read(1, va, 1).privileged())
                .is_err()
        );
    }
    // A privileged write is allowed (S1_RW, EL1 only): served.
    let w = DmaRequest::write(1, 0x4010, 4).privileged();
    assert_eq!(h.smmu.translate(&w).unwrap().pa, page + 0x10);
    // An unprivileged access, another stream or a SubstreamID the STE
    // does not have: not served.
    let others = [
        DmaRequest::read(1, 0x4010, 4),
        DmaRequest::read(2, 0x4010, 4).privileged(),
        DmaRequest::read(1, 0x4010, 4).privileged().with_ssid(0),
    ];
    for other in others {
        make_copy(&h, &req);
        let before = hits(&h);
        assert!(h.smmu.translate(&other).is_err(), "{other:?}");
        assert_eq!(hits(&h), before, "{other:?}");
    }
}

#[test]
fn ats_translated_requests_never_hit_the_copy() {
    let (h, _pt, page) = setup();
    let req = DmaRequest::read(1, 0x4010, 4).privileged();
    make_copy(&h, &req);
    let before = hits(&h);
    let ats = DmaRequest {
        ats_translated: true,
        ..req
    };
    // Whatever the model does with it, it is not the TLB entry's output.
    if let Ok(t) = h.smmu.translate(&ats) {
        assert!(!t.tlb_hit);
        assert_ne!(t.pa, page + 0x10);
    }
    assert_eq!(hits(&h), before);
}

/// SubstreamIDs of more than 20 bits exist in no cache key; the lock-free
/// copy folds them all into one value no entry has, which must not be the
/// "no SubstreamID" key of an entry made without one.
#[test]
fn out_of_range_substream_ids_never_hit_the_copy() {
    let (h, _pt, _page) = setup();
    let req = DmaRequest::read(1, 0x4010, 4).privileged();
    make_copy(&h, &req);
    for ssid in [u32::MAX, 1 << 20, (1 << 20) + 1, u32::MAX - 1] {
        let before = hits(&h);
        assert!(h.smmu.translate(&req.with_ssid(ssid)).is_err(), "{ssid:#x}");
        assert_eq!(hits(&h), before, "{ssid:#x}");
        // The copy still serves the request it was made for.
        assert!(h.smmu.translate(&req).unwrap().tlb_hit);
    }
}

#[test]
fn hits_on_many_threads_are_counted_exactly() {
    let (h, _pt, page) = setup();
    let req = DmaRequest::read(1, 0x4010, 4).privileged();
    h.smmu.translate(&req).unwrap();
    let before = h.smmu.stats();
    const THREADS: u64 = 4;
    const EACH: u64 = 20_000;
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..EACH {
                    assert_eq!(h.smmu.translate(&req).unwrap().pa, page + 0x10);
                }
            });
        }
    });
    let s = h.smmu.stats();
    assert_eq!(s.translations - before.translations, THREADS * EACH);
    assert_eq!(s.tlb_hits - before.tlb_hits, THREADS * EACH);
    assert_eq!(s.walks, before.walks);
}

#[test]
fn hits_alternating_between_two_models_count_for_each_model() {
    let (a, _pa, page_a) = setup();
    let (b, _pb, page_b) = setup();
    let req = DmaRequest::read(1, 0x4010, 4).privileged();
    let (a0, b0) = (a.smmu.stats(), b.smmu.stats());
    const ROUNDS: u64 = 1_000;
    // One thread, the model changing twice a round (a, a, b): the first
    // hit on each model in a round finds the other model's counter last
    // used. Uneven, so hits counted for the wrong model would show.
    for _ in 0..ROUNDS {
        for _ in 0..2 {
            assert_eq!(a.smmu.translate(&req).unwrap().pa, page_a + 0x10);
        }
        assert_eq!(b.smmu.translate(&req).unwrap().pa, page_b + 0x10);
    }
    for (h, s0, n) in [(&a, a0, 2 * ROUNDS), (&b, b0, ROUNDS)] {
        let s = h.smmu.stats();
        assert_eq!(s.translations - s0.translations, n);
        // The first translation walks, every later one hits.
        assert_eq!(s.walks - s0.walks, 1);
        assert_eq!(s.tlb_hits - s0.tlb_hits, n - 1);
    }
}
