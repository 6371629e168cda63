//! What one register access costs when a guest fills the command queue
//! with invalidations that each scan the whole TLB: every access does
//! bounded work, and polling CMDQ_CONS (as a driver does) finishes the
//! queue.

mod common;

use common::guest::{cons, queue_tlbis, tlb_of_many_tags};
use smmuv3_model::layout::op;
use smmuv3_model::regs;

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
