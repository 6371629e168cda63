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
