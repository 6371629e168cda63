//! Bounded fuzz smoke test: random register writes, memory contents,
//! command streams and DMA must never panic or hang, and the model's
//! architectural invariants must hold after every step.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use smmuv3_model::regs::{self, cr0, gerror, queue};
use smmuv3_model::{Coherency, DmaRequest, Event, ModelConfig, SimMemory, SmmuModel};

const BASE: u64 = 0x4000_0000;
const SIZE: u64 = 256 << 10;

#[derive(Clone, Debug)]
enum Op {
    Write32(u64, u32),
    Write64(u64, u64),
    Read32(u64),
    Mem(u64, u64),
    Cmd(u64, u64),
    Dma(u32, Option<u32>, u64, u8, bool, bool),
    Pause(bool),
    Drop(u8),
    Abort(u64, u16),
}

const OFFSETS: &[u64] = &[
    regs::CR0,
    regs::CR1,
    regs::CR2,
    regs::GBPA,
    regs::IRQ_CTRL,
    regs::GERRORN,
    regs::STRTAB_BASE,
    regs::STRTAB_BASE + 4,
    regs::STRTAB_BASE_CFG,
    regs::CMDQ_BASE,
    regs::CMDQ_PROD,
    regs::CMDQ_CONS,
    regs::EVENTQ_BASE,
    regs::PAGE1 + regs::EVENTQ_PROD,
    regs::PAGE1 + regs::EVENTQ_CONS,
    regs::IDR0,
    0x1234,
    0x1ffff,
];

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..SIZE / 8).prop_map(|w| BASE + w * 8),
        (0..64u64).prop_map(|w| BASE + w * 8),
        any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let off = prop_oneof![prop::sample::select(OFFSETS), (0..0x20000u64)];
    let val32 = prop_oneof![0..16u32, any::<u32>(), Just(regs::gbpa::UPDATE)];
    prop_oneof![
        1 => (off.clone(), val32).prop_map(|(o, v)| Op::Write32(o, v)),
        1 => (off.clone(), prop_oneof![addr(), any::<u64>()]).prop_map(|(o, v)| Op::Write64(o, v)),
        1 => off.prop_map(Op::Read32),
        3 => (addr(), any::<u64>()).prop_map(|(a, v)| Op::Mem(a, v)),
        3 => (0..0x50u64, any::<u64>(), any::<u64>()).prop_map(|(o, a, b)| Op::Cmd(o | (a & !0xff), b)),
        4 => (0..8u32, prop::option::of(0..4u32), prop_oneof![0..0x4000u64, any::<u64>()], 1..64u8, any::<bool>(), any::<bool>())
            .prop_map(|(s, ss, i, l, w, p)| Op::Dma(s, ss, i, l, w, p)),
        1 => any::<bool>().prop_map(Op::Pause),
        1 => (0..3u8).prop_map(Op::Drop),
        1 => (addr(), 1..512u16).prop_map(|(a, l)| Op::Abort(a, l)),
    ]
}

fn check_invariants(smmu: &SmmuModel, mem: &SimMemory, paused: bool) {
    let g = smmu.read32(regs::GERROR);
    assert_eq!(g & !gerror::ALL, 0, "GERROR reserved bits");
    let cr0v = smmu.read32(regs::CR0);
    assert_eq!(
        cr0v,
        smmu.read32(regs::CR0ACK),
        "CR0ACK follows CR0 synchronously"
    );
    let cfg = smmu.config();
    let cmdq_base = smmu.read64(regs::CMDQ_BASE);
    let log2 = (cmdq_base & queue::LOG2SIZE_MASK).min(u64::from(cfg.cmdq_log2)) as u32;
    let mask = (2u32 << log2) - 1;
    let prod = smmu.read32(regs::CMDQ_PROD);
    let cons = smmu.read32(regs::CMDQ_CONS);
    let err = (cons >> 24) & 0x7f;
    assert!(err <= 3, "CONS.ERR is an architected code");
    let active = (g ^ smmu.read32(regs::GERRORN)) & gerror::CMDQ_ERR != 0;
    if cr0v & cr0::CMDQEN != 0 && !active && !paused {
        assert_eq!(
            prod & mask,
            cons & mask,
            "enabled, error-free queue drains synchronously"
        );
    }
    let ev_prod = smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD);
    assert_eq!(ev_prod & !(queue::PTR_MASK | queue::OVFLG), 0);
    // Every event is accounted for exactly once.
    let st = smmu.stats();
    let generated: u64 = st.events.iter().sum();
    assert_eq!(
        generated,
        st.events_recorded + st.events_discarded + st.events_overflowed + st.events_suppressed
    );
    let _ = mem;
    let _ = Event::new;
}

/// The cache audit leaves the model's whole state as it was whatever that
/// state is (stalls, errors, paused queues, injected aborts), and memory
/// too (compared when `whole_memory`, which is slow); each stale
/// translation it reports is one the model's caches do serve.
fn audit_changes_nothing(smmu: &SmmuModel, mem: &SimMemory, whole_memory: bool) {
    let read = |m: &SimMemory| {
        let mut b = vec![0u8; SIZE as usize];
        m.cpu_read(BASE, &mut b).unwrap();
        b
    };
    let before = smmu.snapshot();
    let bytes = whole_memory.then(|| read(mem));
    let audit = smmu.audit_caches();
    assert_eq!(smmu.snapshot(), before, "the audit changed the model");
    if let Some(b) = bytes {
        assert!(read(mem) == b, "the audit changed memory");
    }
    for st in &audit.stale {
        let unit = smmu.cached_translation(st.sid, st.ssid, st.iova);
        let pa = unit.map(|u| u.pa_base + (st.iova - u.iova_base));
        assert_eq!(pa, Some(st.cached_pa), "{st:?}");
    }
}

#[test]
fn fuzz_registers_memory_commands_dma() {
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let strat = (prop::collection::vec(op(), 1..150), any::<bool>(), 0..3u8);
    runner
        .run(&strat, |(ops, noncoherent, preset)| {
            let coh = if noncoherent {
                Coherency::NonCoherent
            } else {
                Coherency::Coherent
            };
            let mem = Arc::new(SimMemory::new(BASE, SIZE, coh).unwrap());
            let cfg = match preset {
                0 => ModelConfig::default(),
                1 => ModelConfig::qemu_like(),
                _ => ModelConfig::mmu600(0, 1),
            };
            let smmu = SmmuModel::new(cfg, mem.clone()).unwrap();
            // A plausible layout so random memory writes hit structures.
            smmu.write64(regs::STRTAB_BASE, BASE);
            smmu.write32(regs::STRTAB_BASE_CFG, 3);
            smmu.write64(regs::CMDQ_BASE, (BASE + 0x1000) | 4);
            smmu.write64(regs::EVENTQ_BASE, (BASE + 0x2000) | 3);
            smmu.write32(regs::CR0, cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN);
            let mut prod = 0u32;
            let mut paused = false;
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Write32(o, v) => smmu.write32(o, v),
                    Op::Write64(o, v) => smmu.write64(o, v),
                    Op::Read32(o) => {
                        let _ = smmu.read32(o);
                    }
                    Op::Mem(a, v) => {
                        if mem.cpu_write_u64(a, v).is_ok() {
                            let _ = mem.clean(a, 8);
                        }
                    }
                    Op::Cmd(w0, w1) => {
                        let base = smmu.read64(regs::CMDQ_BASE) & queue::ADDR_MASK;
                        let idx = prod & 15;
                        let pa = base + u64::from(idx) * 16;
                        if mem.cpu_write_u64(pa, w0).is_ok()
                            && mem.cpu_write_u64(pa + 8, w1).is_ok()
                        {
                            let _ = mem.clean(pa, 16);
                        }
                        prod = (prod + 1) & 31;
                        smmu.write32(regs::CMDQ_PROD, prod);
                    }
                    Op::Dma(sid, ssid, iova, len, write, privileged) => {
                        let mut req = DmaRequest::read(sid, iova, u64::from(len));
                        req.ssid = ssid;
                        req.write = write;
                        req.privileged = privileged;
                        let mut buf = vec![0u8; usize::from(len)];
                        let _ = smmu.dma(&req, &mut buf);
                    }
                    Op::Pause(p) => {
                        paused = p;
                        if p {
                            smmu.pause_commands();
                        } else {
                            smmu.resume_commands();
                        }
                    }
                    Op::Drop(n) => smmu.drop_commands(u64::from(n)),
                    Op::Abort(a, l) => {
                        mem.clear_aborts();
                        mem.inject_abort(a, u64::from(l));
                    }
                }
                check_invariants(&smmu, &mem, paused);
                audit_changes_nothing(&smmu, &mem, step % 16 == 0);
            }
            let s = smmu.stats();
            prop_assert!(s.tlb_hits + s.tlb_misses <= s.translations * 4 + 1);
            Ok(())
        })
        .unwrap();
}
