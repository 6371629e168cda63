//! Bounded fuzz over page-table contents: random descriptor values in live
//! stage-1, stage-2 and nested tables, interleaved with translations and
//! invalidations. Invariant: once everything is invalidated, the model
//! translates exactly like a freshly created model over the same memory
//! (caching never leaks state past a full invalidation), and nothing
//! panics.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use smmuv3_model::layout::op;
use smmuv3_model::regs::{self, cr0};
use smmuv3_model::{Coherency, DmaFault, DmaRequest, ModelConfig, SmmuModel, Translation};

const VAS: [u64; 6] = [
    0x1000,
    0x2000,
    0x20_0000,
    0x4000_0000,
    0x7f_ffff_f000,
    0x10_0000,
];

#[derive(Clone, Debug)]
enum Op {
    /// Write `value` to the descriptor for VAS[va] at `level` of table `t`.
    Mutate {
        t: usize,
        va: usize,
        level: u32,
        value: u64,
    },
    Translate {
        sid: u32,
        va: usize,
        write: bool,
    },
    Tlbi(u8),
}

fn descriptor() -> impl Strategy<Value = u64> {
    let pa = (0..16u64).prop_map(|p| MEM_BASE + p * 0x1000);
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        (pa.clone(), any::<u16>()).prop_map(|(p, a)| p | 3 | u64::from(a & 0xfff) << 2),
        (pa, any::<u16>()).prop_map(|(p, a)| p | 1 | 1 << 10 | u64::from(a & 0x3ff) << 2),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0..3usize, 0..VAS.len(), 0..4u32, descriptor())
            .prop_map(|(t, va, level, value)| Op::Mutate { t, va, level, value }),
        3 => (0..3u32, 0..VAS.len(), any::<bool>()).prop_map(|(sid, va, write)| Op::Translate { sid, va, write }),
        1 => (0..4u8).prop_map(Op::Tlbi),
    ];
    prop::collection::vec(op, 1..60)
}

/// A comparable summary of a translation result.
fn summary(r: Result<Translation, DmaFault>) -> Result<(u64, bool), Option<u8>> {
    r.map(|t| (t.pa, t.bypass))
        .map_err(|f| f.event_type().map(|k| k.code()))
}

#[test]
fn fuzz_table_contents_against_a_fresh_model() {
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&ops(), |ops| {
            let mut h = H::with(ModelConfig::default(), Coherency::Coherent, 1 << 20);
            h.enable_linear(2);
            // Stage 1 (sid 0), stage 2 (sid 1), nested (sid 2; stage 2
            // identity-maps memory with 2M blocks, stage 1 is table 0).
            let s1 = Pt::new_s1(&h, 12, 48);
            let s2 = Pt::new_s2(&h, 12, 40, 1);
            let s2n = Pt::new_s2(&h, 12, 40, 1);
            s2n.map(&h, MEM_BASE, MEM_BASE, 2, S2_RW);
            let tables = [s1, s2, s2n];
            let page = h.alloc(4096);
            for &va in &VAS {
                s1.map(&h, va, page, 3, S1_RW);
                s2.map(&h, va, page, 3, S2_RW);
            }
            let cdp = h.alloc(64);
            h.write_words(cdp, &cd(16, 0, 5, s1.root, 1));
            h.set_ste(0, ste_s1(cdp, 0, 0, 0));
            let g = |root| S2::ipa40(3, root);
            h.set_ste(
                1,
                ste_s2(&S2 {
                    vmid: 2,
                    ..g(s2.root)
                }),
            );
            h.set_ste(2, ste_nested(cdp, &g(s2n.root)));
            for op in &ops {
                match *op {
                    Op::Mutate {
                        t,
                        va,
                        level,
                        value,
                    } => {
                        let pt = tables[t];
                        let level = level.max(pt.start);
                        // Only rewrite slots reachable through valid tables.
                        let mut table = pt.root;
                        let mut l = pt.start;
                        let mut ok = true;
                        while l < level {
                            let d = h.r64(table + pt_index(&pt, VAS[va], l) * 8);
                            let next = d & 0x0000_ffff_ffff_f000;
                            if d & 3 != 3 || !h.mem.contains(next, 4096) {
                                ok = false;
                                break;
                            }
                            table = next;
                            l += 1;
                        }
                        if ok {
                            h.w64(table + pt_index(&pt, VAS[va], level) * 8, value);
                        }
                    }
                    Op::Translate { sid, va, write } => {
                        let mut r = DmaRequest::read(sid, VAS[va], 4).privileged();
                        r.write = write;
                        let _ = h.smmu.translate(&r);
                    }
                    Op::Tlbi(k) => {
                        let w0 = match k {
                            0 => op::TLBI_NH_ALL as u64,
                            1 => op::TLBI_NH_ASID as u64 | 1 << 48,
                            2 => op::TLBI_S12_VMALL as u64 | 3 << 32,
                            _ => op::TLBI_S2_IPA as u64 | 2 << 32,
                        };
                        h.cmd(w0, VAS[usize::from(k) % VAS.len()]);
                        h.sync();
                    }
                }
            }
            // Full invalidation, then compare with a fresh model.
            h.cmd(op::TLBI_NSNH_ALL as u64, 0);
            h.cmd(op::CFGI_STE_RANGE as u64, 31);
            h.sync();
            let fresh = SmmuModel::new(ModelConfig::default(), h.mem.clone()).unwrap();
            fresh.write64(regs::STRTAB_BASE, h.strtab);
            fresh.write32(regs::STRTAB_BASE_CFG, 2);
            fresh.write32(regs::CR0, cr0::SMMUEN);
            for sid in 0..3 {
                for &va in &VAS {
                    for write in [false, true] {
                        let mut r = DmaRequest::read(sid, va, 4).privileged();
                        r.write = write;
                        let a = summary(h.smmu.translate(&r));
                        let b = summary(fresh.translate(&r));
                        prop_assert_eq!(a, b, "sid {} va {:#x} write {}", sid, va, write);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

fn pt_index(pt: &Pt, va: u64, level: u32) -> u64 {
    let v = va >> pt.lsb(level);
    if level == pt.start {
        v
    } else {
        v & ((1 << pt.stride()) - 1)
    }
}
