//! What one register access costs when a guest fills the command queue
//! with invalidations that each scan the whole TLB: every access does
//! bounded work, and polling CMDQ_CONS (as a driver does) finishes the
//! queue.

mod common;

use std::time::{Duration, Instant};

use common::rig::{RIG_SID, Rig, rig_on};
use common::{H, S1_RW, cd, ste_s1};
use smmuv3_model::layout::op;
use smmuv3_model::regs;
use smmuv3_model::{Coherency, DmaRequest, ModelConfig};

/// A model with a command queue of 2^`log2` and a TLB holding one entry
/// under each of `tags` ASIDs (a guest rewrote its CD's ASID between
/// DMAs, without a TLBI: the old ASIDs' entries stay).
fn tlb_of_many_tags(log2: u32, tags: u32) -> Rig {
    let cfg = ModelConfig {
        cmdq_log2: 19,
        tlb_capacity: 1 << 16,
        ..ModelConfig::default()
    };
    let mut r = rig_on(H::with(cfg, Coherency::Coherent, 64 << 20), false);
    r.pt.map(&r.h, 0x4000, r.page, 3, S1_RW);
    r.h.smmu.write32(regs::CR0, 0);
    r.h.prod = 0;
    r.h.enable_queues(log2, 8);
    r.h.enable_smmu();
    let cdp = r.h.alloc(64);
    r.h.set_ste(RIG_SID, ste_s1(cdp, 0, 0, 0));
    for asid in 0..tags {
        r.h.write_words(cdp, &cd(16, 0, 5, r.pt.root, asid as u16 + 1));
        assert_eq!(
            r.h.cmd(u64::from(op::CFGI_CD) | u64::from(RIG_SID) << 32, 1),
            0
        );
        r.h.smmu
            .translate(&DmaRequest::read(RIG_SID, 0x4000, 4).privileged())
            .unwrap();
    }
    r
}

/// Queues `n` TLBI_NH_ASID of an ASID no entry has; returns the new PROD
/// (not written yet).
fn queue_tlbis(r: &mut Rig, n: u32) -> u32 {
    let slots = 1u32 << r.h.cmdq_log2;
    for i in 0..n {
        let idx = (r.h.prod + i) & (slots - 1);
        r.h.write_words(
            r.h.cmdq + u64::from(idx) * 16,
            &[u64::from(op::TLBI_NH_ASID), 0],
        );
    }
    r.h.prod = (r.h.prod + n) & ((slots << 1) - 1);
    r.h.prod
}

fn cons(r: &Rig) -> u32 {
    r.h.smmu.read32(regs::CMDQ_CONS) & 0xfffff
}

#[test]
fn a_doorbell_of_tlb_scans_does_bounded_work_and_polls_finish_it() {
    // 8192 tags: each TLBI visits at least 8192 chains, so 1024 of them
    // are about 2^23 visits, twice what one run may do.
    let mut r = tlb_of_many_tags(10, 8192);
    let before = r.h.smmu.stats().commands[usize::from(op::TLBI_NH_ASID)];
    let cons0 = cons(&r);
    let n = 1023;
    let prod = queue_tlbis(&mut r, n);
    r.h.smmu.write32(regs::CMDQ_PROD, prod);
    let done = r.h.smmu.stats().commands[usize::from(op::TLBI_NH_ASID)] - before;
    // The write ran the queue twice (the doorbell, then the poll after
    // it), each for at most 2^22 / 8193 + 1 commands.
    assert!(done < u64::from(n), "one doorbell ran all {done} scans");
    assert!(
        done <= 2 * ((1 << 22) / 8193 + 1),
        "{done} scans in one write"
    );
    assert_ne!(cons(&r), prod);
    assert_ne!(cons(&r), cons0);
    let mut polls = 0;
    while cons(&r) != prod {
        polls += 1;
        assert!(polls < 100, "the queue does not progress");
    }
    assert_eq!(
        r.h.smmu.stats().commands[usize::from(op::TLBI_NH_ASID)] - before,
        u64::from(n)
    );
    assert_eq!(r.h.smmu.read32(regs::CMDQ_CONS) >> 24 & 0x7f, 0);
    // A CMD_SYNC behind them completes as soon as they are done.
    r.h.sync();
}

#[test]
#[ignore = "measurement: cargo test --release --test doorbell_cost -- --ignored --nocapture"]
fn worst_doorbell() {
    let tags = std::env::var("TAGS").map_or(140_000u32, |v| v.parse().unwrap());
    let t = Instant::now();
    let mut r = tlb_of_many_tags(19, tags);
    eprintln!("fill {tags} tags: {:?}", t.elapsed());
    let n = (1u32 << 19) - 1;
    let prod = queue_tlbis(&mut r, n);
    let t = Instant::now();
    r.h.smmu.write32(regs::CMDQ_PROD, prod);
    let mut worst = t.elapsed();
    let mut accesses = 1u32;
    loop {
        let a = Instant::now();
        let c = cons(&r);
        worst = worst.max(a.elapsed());
        accesses += 1;
        if c == prod {
            break;
        }
    }
    eprintln!(
        "{n} TLBI_NH_ASID: {:?} over {accesses} register accesses, the longest {:?}",
        t.elapsed(),
        worst
    );
    assert!(worst < Duration::from_secs(1));
}

/// The costliest STE fetch: STE.CONT = 15 promises 2^15 identical STEs,
/// which the model checks (reading 2 MiB) on each fetch; with the last one
/// different, the fetch faults and is not cached, so every DMA repeats it.
#[test]
#[ignore = "measurement: cargo test --release --test doorbell_cost -- --ignored --nocapture"]
fn worst_ste_fetch() {
    let cfg = ModelConfig {
        tlb_capacity: 1 << 16,
        ..ModelConfig::default()
    };
    let mut h = H::with(cfg, Coherency::Coherent, 64 << 20);
    h.enable_linear(16);
    let mut ste = common::ste_bypass();
    ste[1] |= 15 << 13;
    for sid in 0..1u32 << 15 {
        h.write_words(h.ste_at(sid), &ste);
    }
    h.w64(h.ste_at((1 << 15) - 1) + 8, ste[1] | 1 << 40);
    h.cfgi_ste(1);
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        assert!(h.smmu.translate(&DmaRequest::read(1, 0x4000, 4)).is_err());
    }
    eprintln!(
        "STE fetch over a CONT span of 2^15: {:?} each",
        t.elapsed() / n
    );
}
