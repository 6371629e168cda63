//! A guest's costliest command queue: a TLB holding entries under many
//! ASIDs, and a queue full of invalidations that each scan it (for
//! `tests/doorbell_cost.rs` and `examples/guest_worst_case.rs`).

use super::rig::{RIG_SID, Rig, rig_on};
use super::{H, S1_RW, cd, ste_s1};
use smmuv3_model::layout::op;
use smmuv3_model::regs;
use smmuv3_model::{Coherency, DmaRequest, ModelConfig};

/// A model with a command queue of 2^`log2` and a TLB holding one entry
/// under each of `tags` ASIDs (a guest rewrote its CD's ASID between
/// DMAs, without a TLBI: the old ASIDs' entries stay).
pub fn tlb_of_many_tags(log2: u32, tags: u32) -> Rig {
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
pub fn queue_tlbis(r: &mut Rig, n: u32) -> u32 {
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

/// Returns CMDQ_CONS (index and wrap bits).
pub fn cons(r: &Rig) -> u32 {
    r.h.smmu.read32(regs::CMDQ_CONS) & 0xfffff
}
