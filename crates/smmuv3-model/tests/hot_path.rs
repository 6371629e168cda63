//! The lock-free TLB-hit path of `SmmuModel::translate`: counted like any
//! hit, and never serving a translation an invalidation removed, even
//! with another thread translating the same page all along.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use smmuv3_model::{DmaRequest, ModelConfig};

fn setup() -> (H, Pt, u64) {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    h.set_ste(1, ste_s1(cdp, 0, 0, 0));
    let page = h.alloc(4096);
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

#[test]
fn no_translation_after_a_completed_tlbi_under_concurrent_hits() {
    let (mut h, pt, page) = setup();
    let smmu: &'static smmuv3_model::SmmuModel = Box::leak(Box::new(std::mem::replace(
        &mut h.smmu,
        Arc::new(smmuv3_model::SmmuModel::new(ModelConfig::default(), h.mem.clone()).unwrap()),
    )));
    // The model moves to a 'static for the reader thread; `h` keeps the
    // memory and queue bookkeeping used to issue commands to it below.
    let done = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(false));
    let req = DmaRequest::read(1, 0x4010, 4).privileged();
    assert_eq!(smmu.translate(&req).unwrap().pa, page + 0x10);
    let reader = {
        let (done, after, running) = (done.clone(), after.clone(), running.clone());
        std::thread::spawn(move || {
            let (mut hits, mut checked) = (0u64, 0u64);
            while checked < 10_000 {
                let invalidated = done.load(Ordering::Acquire);
                let r = smmu.translate(&req);
                if invalidated {
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
    pt.unmap(&h, 0x4000, 3);
    // TLBI_NH_VA + SYNC on the leaked model's command queue.
    let (w0, w1) = tlbi_nh_va(1, 0x4000, true);
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
    assert_eq!(after.load(Ordering::Relaxed), 0);
    assert!(smmu.translate(&req).is_err());
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
