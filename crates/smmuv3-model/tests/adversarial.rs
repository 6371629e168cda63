//! Adversarial tests: the model under a hostile driver. Random MMIO writes
//! at any offset and width, random contents of the stream table, CDs, page
//! tables and command queue, then DMA. Every call must return (a watchdog
//! turns a hang into a failure), and the architectural invariants must
//! hold after every step: ID registers are read-only, CR0ACK and
//! IRQ_CTRLACK only ever show architected bits, GERROR only defined bits
//! and never changes on a GERRORN write, CMDQ_CONS never passes
//! CMDQ_PROD, events are well formed.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{H, MEM_BASE, Pt, S1_USER_RW, S2, S2_RW, cd, ste_bypass, ste_nested, ste_s1, ste_s2};
use smmuv3_model::layout::op;
use smmuv3_model::regs::{self, gerror, queue};
use smmuv3_model::{Coherency, DmaFault, DmaRequest, Event, ModelConfig, SmmuModel};

/// CR0 bits the architecture defines (SMMUEN, PRIQEN, EVENTQEN, CMDQEN,
/// ATSCHK, VMW).
const CR0_DEFINED: u32 = 0x1df;
/// IRQ_CTRL bits (GERROR_IRQEN, PRIQ_IRQEN, EVENTQ_IRQEN).
const IRQ_DEFINED: u32 = 0x7;
/// GERROR bits (CMDQ_ERR, EVENTQ/PRIQ abort, MSI aborts, SFM_ERR).
const GERROR_DEFINED: u32 = 0x1fd;

const ID_REGS: [u64; 8] = [
    regs::IDR0,
    regs::IDR1,
    regs::IDR2,
    regs::IDR3,
    regs::IDR4,
    regs::IDR5,
    regs::IIDR,
    regs::AIDR,
];

/// A small deterministic generator (xorshift64*), so that a failure names
/// its seed and replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Runs `f` on a thread and fails if it does not finish in `secs`.
fn watchdog(name: &str, secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: surface its message.
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: no progress in {secs} s (hang)"),
    }
}

/// A configured SMMU with four streams (stage 1, stage 2, nested, bypass),
/// each with a few mapped pages, and the addresses of every structure a
/// hostile writer may corrupt.
struct Rig {
    h: H,
    /// Physical ranges of structures: stream table, CD, page tables,
    /// command and event queues.
    targets: Vec<(u64, u64)>,
    buf: u64,
}

const IOVA: u64 = 0x4000_0000;

fn rig(cfg: ModelConfig) -> Rig {
    let mut h = H::with(cfg, Coherency::Coherent, 2 << 20);
    h.enable_linear(3);
    let buf = h.alloc(16 << 12);
    // Stage 1 (48-bit VA, 4K) for stream 0 and the nested stream 2.
    let s1 = Pt::new_s1(&h, 12, 48);
    let s2 = Pt::new_s2(&h, 12, 40, 1);
    let cd_pa = h.alloc(64);
    h.write_words(cd_pa, &cd(16, 0, 5, s1.root, 1));
    for k in 0..8 {
        s1.map(&h, IOVA + k * 4096, buf + k * 4096, 3, S1_USER_RW);
        s2.map(&h, IOVA + k * 4096, buf + k * 4096, 3, S2_RW);
        // The nested stream's stage-1 output (== buf) goes through stage 2.
        s2.map(&h, buf + k * 4096, buf + k * 4096, 3, S2_RW);
    }
    // The stage-1 tables and the CD must be reachable through stage 2 too.
    let s1_tables: Vec<u64> = (1..=3).map(|l| s1.slot(&h, IOVA, l) & !0xfff).collect();
    for pa in [cd_pa, s1.root].into_iter().chain(s1_tables) {
        let page = pa & !0xfff;
        s2.map(&h, page, page, 3, S2_RW);
    }
    let s2p = S2 {
        vmid: 1,
        t0sz: 24,
        sl0: 1,
        tg: 0,
        ps: 5,
        ttb: s2.root,
    };
    h.set_ste(0, ste_s1(cd_pa, 0, 0, 0));
    h.set_ste(1, ste_s2(&s2p));
    h.set_ste(2, ste_nested(cd_pa, &s2p));
    h.set_ste(3, ste_bypass());
    let mut targets = vec![
        (h.strtab, 64 * 8),
        (cd_pa, 64),
        (s1.root, 4096),
        (s2.root, s2.root_bytes()),
        (h.cmdq, 16 << h.cmdq_log2),
        (h.evtq, 32 << h.evtq_log2),
    ];
    // The lower-level tables of both walks.
    for level in 1..=3 {
        targets.push((s1.slot(&h, IOVA, level) & !0xfff, 4096));
    }
    for level in 2..=3 {
        targets.push((s2.slot(&h, IOVA, level) & !0xfff, 4096));
    }
    Rig { h, targets, buf }
}

fn read_only_regs(smmu: &SmmuModel) -> Vec<u32> {
    ID_REGS.iter().map(|&o| smmu.read32(o)).collect()
}

/// Wrap-aware distance from `a` to `b` for queue pointers of 2^log2 slots.
fn dist(a: u32, b: u32, log2: u32) -> u32 {
    let mask = (2u32 << log2) - 1;
    b.wrapping_sub(a) & mask
}

fn cmdq_log2(smmu: &SmmuModel) -> u32 {
    let base = smmu.read64(regs::CMDQ_BASE);
    (base & queue::LOG2SIZE_MASK).min(u64::from(smmu.config().cmdq_log2)) as u32
}

/// Checks the invariants that hold after any single step. `before` is the
/// CMDQ_CONS value before the step and `wrote_cons` whether the step wrote
/// CMDQ_CONS itself.
fn check(smmu: &SmmuModel, ids: &[u32], before_cons: u32, wrote_cons: bool, what: &str) {
    assert_eq!(read_only_regs(smmu), ids, "{what}: ID registers changed");
    let ack = smmu.read32(regs::CR0ACK);
    assert_eq!(
        ack & !CR0_DEFINED,
        0,
        "{what}: CR0ACK {ack:#x} shows undefined bits"
    );
    let irq = smmu.read32(regs::IRQ_CTRLACK);
    assert_eq!(irq & !IRQ_DEFINED, 0, "{what}: IRQ_CTRLACK {irq:#x}");
    let g = smmu.read32(regs::GERROR);
    assert_eq!(
        g & !GERROR_DEFINED,
        0,
        "{what}: GERROR {g:#x} shows undefined bits"
    );
    let log2 = cmdq_log2(smmu);
    let mask = (2u32 << log2) - 1;
    let prod = smmu.read32(regs::CMDQ_PROD) & mask;
    let cons_raw = smmu.read32(regs::CMDQ_CONS);
    let cons = cons_raw & mask;
    let err = (cons_raw >> queue::CONS_ERR_SHIFT) & queue::CONS_ERR_MASK;
    assert!(
        err <= 3,
        "{what}: CMDQ_CONS.ERR {err} is not an architected code"
    );
    if !wrote_cons {
        // Consumption moves CONS towards PROD, never past it.
        let before = before_cons & mask;
        assert!(
            dist(before, cons, log2) <= dist(before, prod, log2),
            "{what}: CMDQ_CONS moved from {before:#x} to {cons:#x}, past PROD {prod:#x}"
        );
    }
    let ev_prod = smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD);
    assert_eq!(
        ev_prod & !(queue::PTR_MASK | queue::OVFLG),
        0,
        "{what}: EVENTQ_PROD {ev_prod:#x}"
    );
}

/// Register offsets a driver uses, plus neighbours and page-1 aliases.
const OFFSETS: [u64; 28] = [
    regs::IDR0,
    regs::IDR1,
    regs::IDR5,
    regs::IIDR,
    regs::AIDR,
    regs::CR0,
    regs::CR0ACK,
    regs::CR1,
    regs::CR2,
    regs::STATUSR,
    regs::GBPA,
    regs::AGBPA,
    regs::IRQ_CTRL,
    regs::IRQ_CTRLACK,
    regs::GERROR,
    regs::GERRORN,
    regs::GERROR_IRQ_CFG0,
    regs::STRTAB_BASE,
    regs::STRTAB_BASE_CFG,
    regs::CMDQ_BASE,
    regs::CMDQ_PROD,
    regs::CMDQ_CONS,
    regs::EVENTQ_BASE,
    regs::PAGE1 + regs::EVENTQ_PROD,
    regs::PAGE1 + regs::EVENTQ_CONS,
    regs::EVENTQ_IRQ_CFG0,
    regs::PRIQ_BASE,
    regs::PAGE1 + 0xc8,
];

fn offset(r: &mut Rng) -> u64 {
    match r.below(10) {
        0..=5 => r.pick(&OFFSETS),
        6 => r.pick(&OFFSETS) + r.below(8), // unaligned
        7 => r.below(regs::FRAME_SIZE),
        8 => r.pick(&[
            regs::FRAME_SIZE,
            regs::FRAME_SIZE - 4,
            u64::MAX - 3,
            u64::MAX,
            1 << 40,
        ]),
        _ => r.next(),
    }
}

fn value(r: &mut Rng, rig: &Rig) -> u64 {
    match r.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => r.below(16),
        // A plausible address: inside a structure, or in memory.
        3 => {
            let (pa, len) = r.pick(&rig.targets);
            pa + r.below(len)
        }
        4 => MEM_BASE + r.below(16 << 20),
        5 => 1 << r.below(64),
        _ => r.next(),
    }
}

/// Writes a random word into a random structure (or the command queue
/// slot the next command goes to), as a buggy or hostile driver might.
fn corrupt(r: &mut Rng, rig: &Rig) {
    let (pa, len) = r.pick(&rig.targets);
    let at = pa + (r.below(len) & !7);
    let v = match r.below(6) {
        // Point a descriptor back at its own table (walk loops).
        0 => (pa & !0xfff) | 3,
        // A valid-looking descriptor to outside memory.
        1 => 0x000f_ffff_ffff_f003,
        2 => value(r, rig) | 1,
        _ => value(r, rig),
    };
    rig.h.mem.cpu_write_u64(at, v).unwrap();
    rig.h.mem.clean(at, 8).unwrap();
}

fn dma(r: &mut Rng, rig: &Rig) -> Result<(), DmaFault> {
    let sid = if r.chance(90) {
        r.below(4) as u32
    } else {
        r.next() as u32
    };
    let iova = match r.below(5) {
        0 => r.next(),
        1 => rig.buf + r.below(8 << 12),
        _ => IOVA + r.below(9 << 12),
    };
    let max_len = if r.chance(10) { 3 << 12 } else { 64 };
    let len = 1 + r.below(max_len);
    let mut req = if r.chance(50) {
        DmaRequest::write(sid, iova, len)
    } else {
        DmaRequest::read(sid, iova, len)
    };
    if r.chance(20) {
        req = req.with_ssid(r.below(4) as u32);
    }
    if r.chance(10) {
        req = req.privileged();
    }
    let mut data = vec![0xa5u8; len as usize];
    let res = rig.h.smmu.dma(&req, &mut data);
    if let Err(DmaFault::Bus { pa, .. }) = res {
        // Only an output address outside memory is a bus error.
        assert!(
            !rig.h.mem.contains(pa, 1),
            "bus error at {pa:#x}, inside memory"
        );
    }
    res
}

/// Consumes every event, checking each record decodes.
fn drain_events(h: &mut H) -> usize {
    drain(h, true)
}

/// Consumes every event; with `decode`, checks each record decodes (only
/// meaningful while nobody scribbles on the queue).
fn drain(h: &mut H, decode: bool) -> usize {
    let n = 1u32 << h.evtq_log2;
    let mask = (n << 1) - 1;
    let prod = h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD) & mask;
    let mut cons = h.smmu.read32(regs::PAGE1 + regs::EVENTQ_CONS) & mask;
    let mut k = 0;
    while cons != prod && k <= n as usize {
        let pa = h.evtq + u64::from(cons & (n - 1)) * 32;
        let mut b = [0u8; 32];
        h.mem.invalidate(pa, 32).unwrap();
        h.mem.cpu_read(pa, &mut b).unwrap();
        if decode {
            let ev = Event::from_bytes(&b);
            assert!(ev.is_some(), "undecodable event record {b:x?}");
        }
        cons = (cons + 1) & mask;
        k += 1;
    }
    h.smmu.write32(regs::PAGE1 + regs::EVENTQ_CONS, cons);
    k
}

/// Random MMIO writes of both widths at any offset, interleaved with
/// corrupted structures, commands and DMA.
#[test]
fn random_mmio_memory_and_dma_keep_the_invariants() {
    watchdog("mmio fuzz", 60, || {
        let (mut ok, mut faulted) = (0u32, 0u32);
        for seed in 1..=48u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut rig = rig(ModelConfig::default());
            let ids = read_only_regs(&rig.h.smmu);
            for step in 0..400 {
                let before = rig.h.smmu.read32(regs::CMDQ_CONS);
                let mut wrote_cons = false;
                let what;
                match r.below(10) {
                    0..=2 => {
                        let (o, v) = (offset(&mut r), value(&mut r, &rig));
                        let width = if r.chance(50) { 4 } else { 8 };
                        // Writes reaching CMDQ_BASE or CMDQ_CONS legitimately
                        // move CONS (or the queue under it).
                        let touches = |lo: u64, hi: u64| o < hi && o.saturating_add(width) > lo;
                        wrote_cons = touches(regs::CMDQ_BASE, regs::CMDQ_BASE + 8)
                            || touches(regs::CMDQ_CONS, regs::CMDQ_CONS + 4);
                        if width == 4 {
                            what = format!(
                                "seed {seed} step {step}: write32({o:#x}, {:#x})",
                                v as u32
                            );
                            let g = rig.h.smmu.read32(regs::GERROR);
                            rig.h.smmu.write32(o, v as u32);
                            if o == regs::GERRORN {
                                // Acknowledging CMDQ_ERR resumes the queue,
                                // which may stop at the next bad command
                                // (whose GERROR MSI may abort); no other
                                // error can appear from the write.
                                let moved = gerror::CMDQ_ERR | gerror::MSI_GERROR_ABT_ERR;
                                assert_eq!(
                                    rig.h.smmu.read32(regs::GERROR) & !moved,
                                    g & !moved,
                                    "{what}: GERROR moved"
                                );
                            }
                        } else {
                            what = format!("seed {seed} step {step}: write64({o:#x}, {v:#x})");
                            rig.h.smmu.write64(o, v);
                        }
                    }
                    3 => {
                        let o = offset(&mut r);
                        what = format!("seed {seed} step {step}: read({o:#x})");
                        // Reads have no side effects a second read can see.
                        let a = rig.h.smmu.read32(o);
                        if !matches!(o, regs::GERROR | regs::CMDQ_CONS) && o < regs::PAGE1 {
                            assert_eq!(rig.h.smmu.read32(o), a, "{what}: unstable read");
                        }
                        let _ = rig.h.smmu.read64(o);
                    }
                    4..=5 => {
                        what = format!("seed {seed} step {step}: corrupt");
                        corrupt(&mut r, &rig);
                    }
                    6 => {
                        let wild = r.next() as u8;
                        let opcode = r.pick(&[
                            op::CFGI_STE_RANGE,
                            op::TLBI_NSNH_ALL,
                            op::SYNC,
                            op::CFGI_CD_ALL,
                            op::TLBI_NH_VA,
                            op::TLBI_S2_IPA,
                            wild,
                        ]);
                        let w0 = (r.next() & !0xff) | u64::from(opcode);
                        what = format!("seed {seed} step {step}: command {w0:#x}");
                        rig.h.cmd(w0, r.next());
                    }
                    _ => {
                        what = format!("seed {seed} step {step}: dma");
                        match dma(&mut r, &rig) {
                            Ok(()) => ok += 1,
                            Err(_) => faulted += 1,
                        }
                    }
                }
                check(&rig.h.smmu, &ids, before, wrote_cons, &what);
                if step % 50 == 0 {
                    // The queue itself is a corruption target here.
                    drain(&mut rig.h, false);
                }
            }
        }
        // Both outcomes must have been exercised for the run to mean much.
        assert!(ok > 50 && faulted > 50, "dma ok {ok}, faulted {faulted}");
    });
}

/// A correctly programmed SMMU whose tables are then corrupted word by
/// word: after full invalidation every DMA still returns, commands are
/// still consumed without error, and translations that succeed land in
/// memory.
#[test]
fn corrupted_tables_fault_cleanly() {
    watchdog("table corruption", 60, || {
        let (mut ok, mut faulted) = (0u32, 0u32);
        for seed in 1..=64u64 {
            let mut r = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1);
            let mut rig = rig(ModelConfig::default());
            let ids = read_only_regs(&rig.h.smmu);
            // Before corruption every stream translates its first page.
            for sid in 0..4u32 {
                let iova = if sid == 3 { rig.buf } else { IOVA };
                let t = rig.h.smmu.translate(&DmaRequest::read(sid, iova, 4));
                assert_eq!(
                    t.map(|t| t.pa),
                    Ok(rig.buf),
                    "seed {seed} sid {sid} before corruption"
                );
            }
            // The queues stay intact here: only tables are corrupted.
            rig.targets
                .retain(|&(pa, _)| pa != rig.h.cmdq && pa != rig.h.evtq);
            for round in 0..30 {
                for _ in 0..1 + r.below(3) {
                    corrupt(&mut r, &rig);
                }
                let before = rig.h.smmu.read32(regs::CMDQ_CONS);
                rig.h.cmd(u64::from(op::CFGI_STE_RANGE), 31);
                rig.h.cmd(u64::from(op::TLBI_NSNH_ALL), 0);
                rig.h.sync();
                let what = format!("seed {seed} round {round}");
                check(&rig.h.smmu, &ids, before, false, &what);
                assert_eq!(
                    rig.h.gerror_active() & gerror::CMDQ_ERR,
                    0,
                    "{what}: legal commands refused"
                );
                for _ in 0..8 {
                    match dma(&mut r, &rig) {
                        Ok(()) => ok += 1,
                        Err(_) => faulted += 1,
                    }
                    let sid = r.below(4) as u32;
                    if let Ok(t) =
                        rig.h
                            .smmu
                            .translate(&DmaRequest::read(sid, IOVA + r.below(8 << 12), 1))
                    {
                        assert!(t.bytes_left >= 1, "{what}: empty translation {t:?}");
                    }
                }
                drain_events(&mut rig.h);
            }
        }
        assert!(ok > 50 && faulted > 50, "dma ok {ok}, faulted {faulted}");
    });
}

/// Faults nobody consumes overflow a small event queue: the overflow flag
/// toggles, nothing is written past the queue, every record decodes, and
/// the accounting adds up.
#[test]
fn event_flood_overflows_cleanly() {
    watchdog("event flood", 30, || {
        let mut h = H::with(ModelConfig::default(), Coherency::Coherent, 2 << 20);
        h.strtab = h.alloc(64 << 2);
        h.smmu.write64(regs::STRTAB_BASE, h.strtab);
        h.smmu.write32(regs::STRTAB_BASE_CFG, 2);
        h.enable_queues(7, 2);
        h.enable_smmu();
        let s1 = Pt::new_s1(&h, 12, 48);
        let cd_pa = h.alloc(64);
        h.write_words(cd_pa, &cd(16, 0, 5, s1.root, 1));
        h.set_ste(0, ste_s1(cd_pa, 0, 0, 0));
        // Guard words right after the 4-entry event queue.
        let guard = h.evtq + (32 << 2);
        let guard_before: Vec<u64> = (0..8).map(|i| h.r64(guard + 8 * i)).collect();
        let before = h.smmu.stats();
        for k in 0..64u64 {
            // Unmapped: F_TRANSLATION, recorded.
            let r = h
                .smmu
                .dma_read(&DmaRequest::read(0, k << 12, 4), &mut [0; 4]);
            assert!(r.is_err());
        }
        let prod = h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD);
        assert_ne!(
            prod & queue::OVFLG,
            0,
            "overflow not flagged: PROD {prod:#x}"
        );
        let guard_after: Vec<u64> = (0..8).map(|i| h.r64(guard + 8 * i)).collect();
        assert_eq!(guard_after, guard_before, "event written past the queue");
        let st = h.smmu.stats();
        assert!(st.events_overflowed > before.events_overflowed);
        assert_eq!(
            st.events_recorded - before.events_recorded,
            4,
            "a 4-slot queue holds 4 records"
        );
        assert_eq!(drain_events(&mut h), 4);
        // Acknowledging the overflow (CONS.OVACKFLG = PROD.OVFLG) and
        // draining lets new events in again.
        let cons = h.smmu.read32(regs::PAGE1 + regs::EVENTQ_CONS);
        h.smmu.write32(
            regs::PAGE1 + regs::EVENTQ_CONS,
            (cons & queue::PTR_MASK) | (prod & queue::OVFLG),
        );
        let _ = h
            .smmu
            .dma_read(&DmaRequest::read(0, 0x7777_0000, 4), &mut [0; 4]);
        assert_eq!(drain_events(&mut h), 1);
    });
}

/// A command queue based outside memory, unaligned, or larger than the
/// SMMU supports: the doorbell must not hang, and a fetch that aborts is
/// CERROR_ABT with GERROR.CMDQ_ERR, not a panic.
#[test]
fn hostile_command_queue_bases() {
    watchdog("cmdq bases", 30, || {
        for base in [
            0u64,
            0x10,
            u64::MAX,
            0x000f_ffff_ffff_ffe0 | 31,
            MEM_BASE - 64,
            MEM_BASE + (2 << 20) - 16,
        ] {
            let h = H::with(ModelConfig::default(), Coherency::Coherent, 2 << 20);
            let ids = read_only_regs(&h.smmu);
            h.smmu.write64(regs::CMDQ_BASE, base);
            h.smmu.write32(regs::CMDQ_PROD, 0);
            h.smmu.write32(regs::CMDQ_CONS, 0);
            h.smmu.write32(regs::CR0, regs::cr0::CMDQEN);
            for prod in [1u32, 5, 0xfffff, 0x8000_0000] {
                let before = h.smmu.read32(regs::CMDQ_CONS);
                h.smmu.write32(regs::CMDQ_PROD, prod);
                check(
                    &h.smmu,
                    &ids,
                    before,
                    false,
                    &format!("base {base:#x} prod {prod:#x}"),
                );
                if h.gerror_active() & gerror::CMDQ_ERR != 0 {
                    let err = (h.smmu.read32(regs::CMDQ_CONS) >> 24) & 0x7f;
                    assert!(matches!(err, 1 | 2), "base {base:#x}: CONS.ERR {err}");
                    h.ack_gerror();
                }
            }
        }
    });
}

/// Random (often invalid) configurations: the model refuses with a typed
/// error exactly when `validate` does, and otherwise advertises exactly
/// what it was configured with.
#[test]
fn random_configurations_are_refused_or_advertised_exactly() {
    use smmuv3_model::{Httu, SimMemory, StallModel};
    let mem = std::sync::Arc::new(SimMemory::new(MEM_BASE, 1 << 20, Coherency::Coherent).unwrap());
    let mut up = 0;
    for seed in 1..=3000u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let b = |r: &mut Rng| r.next() & 1 != 0;
        let cfg = ModelConfig {
            stage1: b(&mut r),
            stage2: b(&mut r),
            asid16: b(&mut r),
            vmid16: b(&mut r),
            sid_bits: r.pick(&[0, 5, 8, 16, 24, 32, 33, 64]),
            ssid_bits: r.pick(&[0, 8, 20, 21, 255]),
            two_level_strtab: b(&mut r),
            cd2l: b(&mut r),
            ril: b(&mut r),
            bbml: r.below(4) as u8,
            oas_bits: r.pick(&[32, 36, 40, 42, 44, 48, 52, 0, 33, 255]),
            gran4k: b(&mut r),
            gran16k: b(&mut r),
            gran64k: b(&mut r),
            vax52: b(&mut r),
            cmdq_log2: r.pick(&[0, 7, 10, 19, 20, 255]),
            evtq_log2: r.pick(&[0, 7, 10, 19, 20, 255]),
            iidr: r.next() as u32,
            arch_minor: r.below(16) as u8,
            httu: r.pick(&[Httu::None, Httu::AccessFlag, Httu::AccessAndDirty]),
            ats: b(&mut r),
            sev: b(&mut r),
            msi: b(&mut r),
            hyp: b(&mut r),
            btm: b(&mut r),
            stall_model: r.pick(&[
                StallModel::StallAndTerminate,
                StallModel::TerminateOnly,
                StallModel::StallForced,
            ]),
            coherent: r.pick(&[None, Some(true), Some(false)]),
            tlb_capacity: r.pick(&[0usize, 1, 1 << 16, 1 << 16, usize::MAX]),
            ..ModelConfig::default()
        };
        let valid = cfg.validate();
        let smmu = SmmuModel::new(cfg.clone(), mem.clone());
        let what = format!("seed {seed}: {cfg:?}");
        match (valid, smmu) {
            (Err(a), Err(b)) => assert_eq!(a, b, "{what}"),
            (Ok(()), Err(e)) => assert!(
                matches!(e, smmuv3_model::ConfigError::CoherencyMismatch { .. })
                    && cfg.coherent == Some(false),
                "{what}: {e}"
            ),
            (Err(e), Ok(_)) => panic!("{what}: invalid ({e}) but built"),
            (Ok(()), Ok(m)) => {
                up += 1;
                let idr0 = m.read32(regs::IDR0);
                let idr1 = m.read32(regs::IDR1);
                let idr5 = m.read32(regs::IDR5);
                assert_eq!(idr0 & 1 != 0, cfg.stage2, "{what}: IDR0.S2P");
                assert_eq!(idr0 & 2 != 0, cfg.stage1, "{what}: IDR0.S1P");
                assert_eq!(idr1 & 0x3f, u32::from(cfg.sid_bits), "{what}: IDR1.SIDSIZE");
                assert_eq!(
                    (idr1 >> 6) & 0x1f,
                    u32::from(cfg.ssid_bits),
                    "{what}: IDR1.SSIDSIZE"
                );
                assert_eq!(
                    (idr1 >> 21) & 0x1f,
                    u32::from(cfg.cmdq_log2),
                    "{what}: IDR1.CMDQS"
                );
                assert_eq!(
                    (idr1 >> 16) & 0x1f,
                    u32::from(cfg.evtq_log2),
                    "{what}: IDR1.EVENTQS"
                );
                assert_eq!((idr5 >> 4) & 1 != 0, cfg.gran4k, "{what}: IDR5.GRAN4K");
                assert_eq!((idr5 >> 6) & 1 != 0, cfg.gran64k, "{what}: IDR5.GRAN64K");
                assert_eq!(m.read32(regs::IIDR), cfg.iidr, "{what}: IIDR");
            }
        }
    }
    assert!(up > 20, "only {up} valid configurations");
}

/// A 2-level stream table whose level-1 descriptors and level-2 STEs are
/// random words (spans out of range, pointers outside memory or back into
/// the level-1 table): every DMA returns, each event decodes, commands
/// keep being consumed.
#[test]
fn random_two_level_stream_tables() {
    watchdog("2-level stream tables", 60, || {
        let (mut ok, mut faulted) = (0u32, 0u32);
        for seed in 1..=60u64 {
            let mut r = Rng(seed.wrapping_mul(0xa076_1d64_78bd_642f) | 1);
            let mut h = H::with(ModelConfig::default(), Coherency::Coherent, 2 << 20);
            let ids = read_only_regs(&h.smmu);
            // 2^12 stream IDs, split 8: 16 level-1 descriptors.
            let l1 = h.alloc(16 * 8);
            let l2 = h.alloc(64 << 8);
            h.smmu.write64(regs::STRTAB_BASE, l1);
            h.smmu.write32(regs::STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 12);
            h.enable_queues(7, 7);
            h.enable_smmu();
            let bypass = ste_bypass();
            for i in 0..16u64 {
                let d = match r.below(5) {
                    0 => r.next(),
                    1 => l1 | r.below(32),
                    2 => 0,
                    _ => l2 | 9, // span 9: 256 STEs
                };
                h.w64(l1 + 8 * i, d);
            }
            for s in 0..256u64 {
                let mut w = if r.below(3) == 0 {
                    [r.next(), r.next(), r.next(), r.next(), 0, 0, 0, 0]
                } else {
                    bypass
                };
                if r.below(8) == 0 {
                    w[0] ^= 1 << r.below(64);
                }
                h.write_words(l2 + 64 * s, &w);
            }
            let before = h.smmu.read32(regs::CMDQ_CONS);
            h.cmd(u64::from(op::CFGI_STE_RANGE), 31);
            h.sync();
            check(&h.smmu, &ids, before, false, &format!("seed {seed}"));
            for _ in 0..40 {
                let sid = if r.below(4) == 0 {
                    r.next() as u32
                } else {
                    r.below(1 << 12) as u32
                };
                let buf = MEM_BASE + r.below(2 << 20);
                let res = h.smmu.dma_read(&DmaRequest::read(sid, buf, 8), &mut [0; 8]);
                match res {
                    Ok(()) => ok += 1,
                    Err(_) => faulted += 1,
                }
            }
            drain_events(&mut h);
            assert_eq!(h.gerror_active() & gerror::CMDQ_ERR, 0, "seed {seed}");
        }
        assert!(ok > 100 && faulted > 100, "dma ok {ok}, faulted {faulted}");
    });
}
