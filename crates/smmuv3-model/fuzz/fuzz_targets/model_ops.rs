//! Coverage-guided fuzzing of the SMMUv3 model: any configuration, any
//! register write, any memory contents (cleaned, dirty or device-only), any
//! command stream and any DMA. Every call must return (the inputs are
//! bounded, so a hang is a model bug) and the invariants of [`check`] must
//! hold after every step.

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use smmuv3_model::regs::{self, cr0, gerror, irq_ctrl, queue};
use smmuv3_model::{
    Coherency, DmaFault, DmaRequest, Event, Httu, ModelConfig, SimMemory, SmmuModel, StallModel,
};

/// Simulated physical memory: small so random addresses hit structures.
const BASE: u64 = 0x4000_0000;
const SIZE: u64 = 64 << 10;
/// Where the initial layout puts the stream table and the queues.
const STRTAB: u64 = BASE;
const CMDQ: u64 = BASE + 0x1000;
const EVTQ: u64 = BASE + 0x2000;
/// Linear CD table (16 CDs) and the pages that hold page tables and data.
const CDTAB: u64 = BASE + 0x3000;
const FIRST_TABLE_PAGE: u64 = 4;
const PAGES: u64 = SIZE >> 12;
/// Upper bounds that keep one input fast: steps, DMA bytes, initial words.
const MAX_OPS: usize = 256;
const MAX_DMA: u64 = 0x4000;
const MAX_INIT: usize = 512;

/// Input addresses that [`Op::Map`] and DMAs share.
const FIXED_IOVAS: &[u64] = &[
    0x1000,
    0x2ff8,
    0x20_0000,
    0x4000_0000,
    0x8000_1000,
    0x7f_ffff_f000,
    0xffff_ffff_f000,
    0x1_0000_0000_0000,
];

/// Registers worth hitting often (any other offset is reachable too).
const REGS: &[u64] = &[
    regs::CR0,
    regs::CR1,
    regs::CR2,
    regs::GBPA,
    regs::IRQ_CTRL,
    regs::GERRORN,
    regs::GERROR_IRQ_CFG0,
    regs::STRTAB_BASE,
    regs::STRTAB_BASE + 4,
    regs::STRTAB_BASE_CFG,
    regs::CMDQ_BASE,
    regs::CMDQ_BASE + 4,
    regs::CMDQ_PROD,
    regs::CMDQ_CONS,
    regs::EVENTQ_BASE,
    regs::EVENTQ_BASE + 4,
    regs::EVENTQ_PROD,
    regs::EVENTQ_CONS,
    regs::EVENTQ_IRQ_CFG0,
    regs::EVENTQ_IRQ_CFG1,
    regs::PAGE1 + regs::EVENTQ_PROD,
    regs::PAGE1 + regs::EVENTQ_CONS,
    regs::IDR0,
    regs::GERROR,
];

/// The implementation choices of the model under test.
#[derive(Arbitrary, Debug)]
struct Cfg {
    preset: u8,
    /// Overrides applied to the preset when `tweak` is set.
    tweak: bool,
    stage1: bool,
    stage2: bool,
    asid16: bool,
    vmid16: bool,
    sid_bits: u8,
    ssid_bits: u8,
    two_level_strtab: bool,
    cd2l: bool,
    ril: bool,
    bbml: u8,
    oas_bits: u8,
    granules: u8,
    vax52: bool,
    cmdq_log2: u8,
    evtq_log2: u8,
    httu: u8,
    ats: bool,
    sev: bool,
    msi: bool,
    hyp: bool,
    btm: bool,
    stall_model: u8,
    term_model_abort_only: bool,
    attr_perms_ovr: bool,
    had: bool,
    xnx: bool,
    gbpa_abort_at_reset: bool,
    tlb_capacity: u8,
}

impl Cfg {
    fn build(&self) -> ModelConfig {
        let base = match self.preset % 6 {
            0 => ModelConfig::default(),
            1 => ModelConfig::qemu_like(),
            2 => ModelConfig::mmu600(0, 1),
            3 => ModelConfig::mmu700(1, 0),
            4 => ModelConfig::stage1_only(),
            _ => ModelConfig::stage2_only(),
        };
        if !self.tweak {
            return base;
        }
        ModelConfig {
            stage1: self.stage1,
            stage2: self.stage2,
            asid16: self.asid16,
            vmid16: self.vmid16,
            sid_bits: self.sid_bits % 34,
            ssid_bits: self.ssid_bits % 22,
            two_level_strtab: self.two_level_strtab,
            cd2l: self.cd2l,
            ril: self.ril,
            bbml: self.bbml % 4,
            oas_bits: self.oas_bits,
            gran4k: self.granules & 1 != 0,
            gran16k: self.granules & 2 != 0,
            gran64k: self.granules & 4 != 0,
            vax52: self.vax52,
            cmdq_log2: self.cmdq_log2 % 21,
            evtq_log2: self.evtq_log2 % 21,
            httu: match self.httu % 3 {
                0 => Httu::None,
                1 => Httu::AccessFlag,
                _ => Httu::AccessAndDirty,
            },
            ats: self.ats,
            sev: self.sev,
            msi: self.msi,
            hyp: self.hyp,
            btm: self.btm,
            stall_model: match self.stall_model % 3 {
                0 => StallModel::StallAndTerminate,
                1 => StallModel::TerminateOnly,
                _ => StallModel::StallForced,
            },
            term_model_abort_only: self.term_model_abort_only,
            attr_perms_ovr: self.attr_perms_ovr,
            had: self.had,
            xnx: self.xnx,
            gbpa_abort_at_reset: self.gbpa_abort_at_reset,
            // Small TLBs exercise eviction.
            tlb_capacity: usize::from(self.tlb_capacity % 64),
            ..base
        }
    }
}

/// A register offset.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Off {
    Known(u8),
    Frame(u32),
    Raw(u64),
}

impl Off {
    fn get(self) -> u64 {
        match self {
            Off::Known(i) => REGS[usize::from(i) % REGS.len()],
            Off::Frame(o) => u64::from(o) % regs::FRAME_SIZE,
            Off::Raw(o) => o,
        }
    }
}

/// A physical address.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// A word inside the simulated memory.
    Word(u16),
    /// A byte inside the simulated memory (maybe unaligned).
    Byte(u16),
    /// Anything (mostly outside memory).
    Raw(u64),
}

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::Word(w) => BASE + (u64::from(w) * 8) % SIZE,
            Addr::Byte(b) => BASE + u64::from(b) % SIZE,
            Addr::Raw(a) => a,
        }
    }
}

/// An input address for a DMA.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Iova {
    /// One of a few fixed addresses, so that a mapping and a DMA meet.
    Fixed(u8),
    /// Inside the simulated memory (bypass and identity-like mappings).
    Mem(u16),
    Low(u16),
    Page(u32),
    Raw(u64),
}

impl Iova {
    fn get(self) -> u64 {
        match self {
            Iova::Fixed(i) => FIXED_IOVAS[usize::from(i) % FIXED_IOVAS.len()],
            Iova::Mem(v) => BASE + u64::from(v) % SIZE,
            Iova::Low(v) => u64::from(v),
            Iova::Page(p) => u64::from(p) << 12,
            Iova::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Write32(Off, u32),
    Write64(Off, u64),
    Read32(Off),
    Read64(Off),
    /// CPU store, cleaned to the point of coherency or left dirty.
    CpuWrite {
        addr: Addr,
        value: u64,
        clean: bool,
    },
    /// A store that only the device view sees (another agent's write).
    DevWrite(Addr, u64),
    /// Writes a command into the slot at CMDQ_PROD and publishes it.
    Command {
        words: [u64; 2],
        clean: bool,
    },
    Dma {
        sid: u8,
        wide_sid: Option<u32>,
        ssid: Option<u32>,
        iova: Iova,
        len: u16,
        write: bool,
        privileged: bool,
        instruction: bool,
        ats_translated: bool,
    },
    Translate {
        sid: u8,
        ssid: Option<u8>,
        iova: Iova,
        write: bool,
    },
    /// A plausible STE (then `noise` flips bits of one word).
    Ste {
        sid: u8,
        kind: u8,
        cdmax: u8,
        s1dss: u8,
        s2: S2Params,
        noise: Option<(u8, u64)>,
    },
    /// A plausible CD in the linear CD table.
    Cd {
        ssid: u8,
        t0sz: u8,
        tg0: u8,
        ips: u8,
        root: u8,
        asid: u16,
        noise: Option<(u8, u64)>,
    },
    /// A table, page or block descriptor pointing into memory.
    Desc {
        table: u8,
        index: u16,
        target: u8,
        kind: u8,
        attrs: u16,
        upper: u16,
    },
    /// A 4K-granule walk for `iova` from `root`: table descriptors from
    /// level `start` to the leaf level, then a page or block descriptor.
    Map {
        root: u8,
        iova: Iova,
        start: u8,
        leaf_level: u8,
        tables: [u8; 3],
        target: u8,
        attrs: u16,
    },
    InjectAbort(Addr, u16),
    ClearAborts,
    Pause,
    Resume,
    Drop(u8),
    Delay(u8),
    TakeInterrupts,
    Trace(u8),
    ResetStats,
}

/// Stage-2 fields of a plausible STE.
#[derive(Arbitrary, Debug)]
struct S2Params {
    vmid: u16,
    t0sz: u8,
    sl0: u8,
    tg: u8,
    ps: u8,
    root: u8,
}

/// Returns the physical address of a table/data page of the input's choice.
fn page(p: u8) -> u64 {
    let span = PAGES - FIRST_TABLE_PAGE;
    BASE + (FIRST_TABLE_PAGE + u64::from(p) % span) * 0x1000
}

/// Returns the words of a plausible STE (layout as in IHI 0070 5.2).
fn ste_words(kind: u8, cdmax: u8, s1dss: u8, s2: &S2Params) -> [u64; 8] {
    let s1_word1 = u64::from(s1dss % 4) | 1 << 2 | 1 << 4 | 3 << 6;
    let word2 = u64::from(s2.vmid)
        | (16 + u64::from(s2.t0sz % 33)) << 32
        | u64::from(s2.sl0 % 4) << 38
        | 1 << 40
        | 1 << 42
        | 3 << 44
        | u64::from(s2.tg % 4) << 46
        | u64::from(s2.ps % 8) << 48
        | 1 << 51
        | 1 << 58;
    // Mostly no substreams: presets without SSIDs refuse any S1CDMax.
    let cdmax = if cdmax < 0xc0 {
        0
    } else {
        u64::from(cdmax % 6) << 59
    };
    match kind % 5 {
        0 => [1, 0, 0, 0, 0, 0, 0, 0],
        1 => [1 | 0b100 << 1, 0, 0, 0, 0, 0, 0, 0],
        2 => [1 | 0b101 << 1 | CDTAB | cdmax, s1_word1, 0, 0, 0, 0, 0, 0],
        3 => [1 | 0b110 << 1, 0, word2, page(s2.root), 0, 0, 0, 0],
        _ => [
            1 | 0b111 << 1 | CDTAB | cdmax,
            s1_word1,
            word2,
            page(s2.root),
            0,
            0,
            0,
            0,
        ],
    }
}

/// Returns the words of a plausible AArch64 CD with TTB0 only.
fn cd_words(t0sz: u8, tg0: u8, ips: u8, root: u8, asid: u16) -> [u64; 8] {
    // T0SZ 16..=48 mostly valid for some granule; noise reaches the rest.
    let w0 = (16 + u64::from(t0sz % 33))
        | u64::from(tg0 % 4) << 6
        | 1 << 8
        | 1 << 10
        | 3 << 12
        | 1 << 30
        | 1 << 31
        | u64::from(ips % 8) << 32
        | 1 << 41
        | 1 << 45
        | 1 << 46
        | u64::from(asid) << 48;
    [w0, page(root), 0, 0xff, 0, 0, 0, 0]
}

#[derive(Arbitrary, Debug)]
struct Input {
    cfg: Cfg,
    noncoherent: bool,
    /// Before the steps: 0 nothing; 1 a 32-entry linear stream table and
    /// enabled queues; 2 also valid STEs for StreamIDs 0-7 (kind StreamID
    /// mod 5) over CD 0 (4K, T0SZ 25, root page 0) and a stage-2 4K,
    /// T0SZ 25, SL0 1 table at page 1.
    setup: u8,
    /// SMMU_CR2 for the setup (RECINVSID, PTM, E2H).
    cr2: u8,
    /// Initial memory words (word index, value), device-visible.
    init: Vec<(u16, u64)>,
    ops: Vec<Op>,
}

/// What the harness knows about the model beyond its registers.
struct Harness {
    smmu: SmmuModel,
    mem: Arc<SimMemory>,
    paused: bool,
    /// CMDQ_CONS reads left before delayed commands are consumed (mirrors
    /// the model's counter: every CONS read, ours included, counts).
    delay: u32,
    tlb_capacity: usize,
}

impl Harness {
    fn read32(&mut self, off: u64) -> u32 {
        self.count_cons_read(off);
        self.smmu.read32(off)
    }

    fn read64(&mut self, off: u64) -> u64 {
        self.count_cons_read(off);
        self.count_cons_read(off.wrapping_add(4));
        self.smmu.read64(off)
    }

    fn count_cons_read(&mut self, off: u64) {
        if off == regs::CMDQ_CONS {
            self.delay = self.delay.saturating_sub(1);
        }
    }

    fn cmdq_log2(&mut self) -> u32 {
        let base = self.read64(regs::CMDQ_BASE);
        ((base & queue::LOG2SIZE_MASK) as u32).min(u32::from(self.smmu.config().cmdq_log2))
    }

    fn evtq_geometry(&mut self) -> (u64, u32) {
        let base = self.read64(regs::EVENTQ_BASE);
        let log2 =
            ((base & queue::LOG2SIZE_MASK) as u32).min(u32::from(self.smmu.config().evtq_log2));
        (base & queue::ADDR_MASK, log2)
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Write32(o, v) => self.smmu.write32(o.get(), v),
            Op::Write64(o, v) => self.smmu.write64(o.get(), v),
            Op::Read32(o) => {
                let off = o.get();
                let v = self.read32(off);
                if off % 4 != 0 || off >= regs::FRAME_SIZE {
                    assert_eq!(v, 0, "misaligned/out-of-frame reads are zero");
                }
            }
            Op::Read64(o) => {
                let _ = self.read64(o.get());
            }
            Op::CpuWrite { addr, value, clean } => {
                let a = addr.get();
                let in_mem = self.mem.contains(a, 8);
                let r = self.mem.cpu_write_u64(a, value);
                if in_mem && a % 8 == 0 {
                    r.expect("aligned in-memory CPU store");
                }
                if clean && r.is_ok() {
                    self.mem.clean(a, 8).expect("clean of a stored word");
                }
            }
            Op::DevWrite(addr, value) => {
                let _ = self.mem.dev_write_u64(addr.get(), value);
            }
            Op::Command { words, clean } => self.command(words, clean),
            Op::Dma {
                sid,
                wide_sid,
                ssid,
                iova,
                len,
                write,
                privileged,
                instruction,
                ats_translated,
            } => {
                let req = DmaRequest {
                    sid: wide_sid.unwrap_or(u32::from(sid % 8)),
                    // Mostly SubstreamIDs a CD table of 16 can hold.
                    ssid: ssid.map(|s| if s < 0xf000_0000 { s % 16 } else { s }),
                    iova: iova.get(),
                    len: u64::from(len) % MAX_DMA,
                    write,
                    privileged,
                    instruction,
                    ats_translated,
                };
                self.dma(&req);
            }
            Op::Translate {
                sid,
                ssid,
                iova,
                write,
            } => {
                let mut req = DmaRequest::read(u32::from(sid % 8), iova.get(), 1);
                req.ssid = ssid.map(|s| u32::from(s % 4));
                req.write = write;
                if let Ok(t) = self.smmu.translate(&req) {
                    assert!(t.bytes_left >= 1, "a translation covers its own byte");
                    // Nothing changed in between: the same answer again
                    // (from the TLB, or from an identical walk).
                    let again = self
                        .smmu
                        .translate(&req)
                        .expect("a successful translation repeats");
                    assert_eq!(again.pa, t.pa, "repeated translation output");
                    assert_eq!(again.bypass, t.bypass);
                }
            }
            Op::Ste {
                sid,
                kind,
                cdmax,
                s1dss,
                s2,
                noise,
            } => {
                let mut w = ste_words(kind, cdmax, s1dss, &s2);
                // A quarter of the flips land; the rest keep the template.
                if let Some((i, bits)) = noise.filter(|(i, _)| *i < 64) {
                    w[usize::from(i % 8)] ^= bits;
                }
                self.store(STRTAB + u64::from(sid % 32) * 64, &w);
            }
            Op::Cd {
                ssid,
                t0sz,
                tg0,
                ips,
                root,
                asid,
                noise,
            } => {
                let mut w = cd_words(t0sz, tg0, ips, root, asid);
                // A quarter of the flips land; the rest keep the template.
                if let Some((i, bits)) = noise.filter(|(i, _)| *i < 64) {
                    w[usize::from(i % 8)] ^= bits;
                }
                self.store(CDTAB + u64::from(ssid % 16) * 64, &w);
            }
            Op::Desc {
                table,
                index,
                target,
                kind,
                attrs,
                upper,
            } => {
                let low = match kind % 4 {
                    0 => 0,
                    1 => 1,
                    _ => 3,
                };
                let d = page(target)
                    | low
                    | u64::from(attrs & 0xffc)
                    | 1 << 10
                    | u64::from(upper & 0x3fff) << 50;
                self.store(page(table) + u64::from(index % 512) * 8, &[d]);
            }
            Op::Map {
                root,
                iova,
                start,
                leaf_level,
                tables,
                target,
                attrs,
            } => {
                let va = iova.get();
                let start = usize::from(start % 4);
                let leaf = (start + usize::from(leaf_level) % 4).min(3);
                let mut table = page(root);
                for (level, next) in (start..leaf).zip(tables) {
                    let idx = (va >> (12 + 9 * (3 - level))) & 511;
                    let next = page(next);
                    self.store(table + idx * 8, &[next | 3]);
                    table = next;
                }
                let idx = (va >> (12 + 9 * (3 - leaf))) & 511;
                let kind = if leaf == 3 { 3 } else { 1 };
                let d = page(target) | kind | u64::from(attrs & 0xffc) | 1 << 10;
                self.store(table + idx * 8, &[d]);
            }
            Op::InjectAbort(a, len) => self.mem.inject_abort(a.get(), u64::from(len)),
            Op::ClearAborts => self.mem.clear_aborts(),
            Op::Pause => {
                self.paused = true;
                self.smmu.pause_commands();
            }
            Op::Resume => {
                self.paused = false;
                self.smmu.resume_commands();
            }
            Op::Drop(n) => self.smmu.drop_commands(u64::from(n % 4)),
            Op::Delay(polls) => {
                let polls = u32::from(polls % 8);
                self.delay = polls;
                self.smmu.delay_commands(polls);
            }
            Op::TakeInterrupts => {
                let _ = self.smmu.take_interrupts();
                assert_eq!(
                    self.smmu.interrupts(),
                    Default::default(),
                    "taken interrupts are cleared"
                );
            }
            Op::Trace(cap) => {
                let cap = usize::from(cap % 16);
                let old = self.smmu.take_trace();
                assert!(old.len() <= 16, "the trace is bounded by its capacity");
                self.smmu.set_trace(cap);
            }
            Op::ResetStats => self.smmu.reset_stats(),
        }
    }

    /// CPU stores, cleaned: what a careful driver does.
    fn store(&mut self, pa: u64, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            self.mem
                .cpu_write_u64(pa + 8 * i as u64, *w)
                .expect("structure store");
        }
        self.mem
            .clean(pa, 8 * words.len() as u64)
            .expect("structure clean");
    }

    fn command(&mut self, words: [u64; 2], clean: bool) {
        let log2 = self.cmdq_log2();
        let base = self.read64(regs::CMDQ_BASE) & queue::ADDR_MASK;
        let prod = self.read32(regs::CMDQ_PROD);
        let idx = u64::from(prod & ((1 << log2) - 1));
        let pa = base.wrapping_add(idx * 16);
        if self.mem.contains(pa, 16) {
            for (i, w) in words.iter().enumerate() {
                self.mem
                    .cpu_write_u64(pa + 8 * i as u64, *w)
                    .expect("command slot store");
            }
            if clean {
                self.mem.clean(pa, 16).expect("command slot clean");
            }
        }
        let mask = (2u32 << log2) - 1;
        let next = (prod & !mask) | ((prod & mask) + 1) & mask;
        self.smmu.write32(regs::CMDQ_PROD, next & queue::PTR_MASK);
    }

    fn dma(&mut self, req: &DmaRequest) {
        let before = self.smmu.stats().events_recorded;
        let mut buf = vec![0u8; req.len as usize];
        let r = self.smmu.dma(req, &mut buf);
        let recorded = self.smmu.stats().events_recorded - before;
        let (event, said_recorded) = match &r {
            Err(DmaFault::Terminated {
                event, recorded, ..
            }) => (Some(*event), *recorded),
            Err(DmaFault::Stalled { event }) => (Some(*event), recorded > 0),
            _ => (None, false),
        };
        assert!(recorded <= 1, "one transaction records at most one event");
        if let Some(event) = event {
            assert!(event.kind.code() != 0, "a real event type");
            assert_eq!(said_recorded, recorded == 1, "`recorded` tells the truth");
            if recorded == 1 {
                self.check_last_event(&event);
            }
        } else {
            assert_eq!(recorded, 0, "events only come with a fault");
        }
    }

    /// The event queue slot just written holds exactly `event`, unless the
    /// event-queue MSI (aimed anywhere by the input) overwrote it.
    fn check_last_event(&mut self, event: &Event) {
        let (base, log2) = self.evtq_geometry();
        let prod = self.read32(regs::PAGE1 + regs::EVENTQ_PROD);
        let idx = (prod.wrapping_sub(1)) & ((1 << log2) - 1);
        let slot = base + u64::from(idx) * 32;
        let msi = self.read64(regs::EVENTQ_IRQ_CFG0) & 0x000f_ffff_ffff_fffc;
        let irq = self.read32(regs::IRQ_CTRL) & irq_ctrl::EVENTQ_IRQEN != 0;
        if irq && msi + 4 > slot && msi < slot + 32 {
            return;
        }
        let mut raw = [0u8; 32];
        if self.mem.dev_read(slot, &mut raw).is_ok() {
            assert_eq!(raw, event.to_bytes(), "recorded event bytes");
            assert_eq!(
                Event::from_bytes(&raw),
                Some(*event),
                "a recorded event decodes to itself"
            );
        }
    }

    /// The architectural invariants that hold after every step whatever
    /// the input did.
    fn check(&mut self) {
        // CONS first: reading it may consume delayed commands, which can
        // raise GERROR.
        let cons = self.read32(regs::CMDQ_CONS);
        let g = self.read32(regs::GERROR);
        let gn = self.read32(regs::GERRORN);
        assert_eq!(g & !gerror::ALL, 0, "GERROR reserved bits read as zero");
        assert_eq!(gn & !gerror::ALL, 0, "GERRORN reserved bits read as zero");
        let c0 = self.read32(regs::CR0);
        assert_eq!(c0, self.read32(regs::CR0ACK), "CR0ACK follows CR0");
        assert_eq!(
            c0 & !(cr0::SMMUEN | cr0::EVENTQEN | cr0::CMDQEN | cr0::ATSCHK),
            0,
            "only implemented CR0 bits stick"
        );
        assert_eq!(
            self.read32(regs::IRQ_CTRL),
            self.read32(regs::IRQ_CTRLACK),
            "IRQ_CTRLACK follows IRQ_CTRL"
        );
        assert_eq!(
            self.read32(regs::GBPA) & regs::gbpa::UPDATE,
            0,
            "GBPA updates complete"
        );

        let log2 = self.cmdq_log2();
        let prod = self.read32(regs::CMDQ_PROD);
        assert_eq!(prod & !queue::PTR_MASK, 0, "CMDQ_PROD holds a pointer only");
        let err = (cons >> queue::CONS_ERR_SHIFT) & queue::CONS_ERR_MASK;
        assert!(err <= 3, "CMDQ_CONS.ERR {err} is an architected code");
        let cmdq_err = (g ^ gn) & gerror::CMDQ_ERR != 0;
        if err != 0 {
            assert!(cmdq_err, "CONS.ERR only with GERROR.CMDQ_ERR active");
        }
        let mask = (2u32 << log2) - 1;
        if c0 & cr0::CMDQEN != 0 && !cmdq_err && !self.paused && self.delay == 0 {
            assert_eq!(
                prod & mask,
                cons & mask,
                "an enabled, error-free, unpaused queue drains synchronously"
            );
        }

        let ev_prod = self.read32(regs::PAGE1 + regs::EVENTQ_PROD);
        assert_eq!(
            ev_prod,
            self.read32(regs::EVENTQ_PROD),
            "EVENTQ_PROD page-1 alias"
        );
        assert_eq!(ev_prod & !(queue::PTR_MASK | queue::OVFLG), 0);

        let st = self.smmu.stats();
        let generated: u64 = st.events.iter().sum();
        assert_eq!(
            generated,
            st.events_recorded + st.events_discarded + st.events_overflowed + st.events_suppressed,
            "every event is recorded, discarded, overflowed or suppressed"
        );
        assert!(
            self.smmu.tlb_entries() <= self.tlb_capacity,
            "the TLB respects its capacity"
        );
    }
}

fuzz_target!(|input: Input| {
    let cfg = input.cfg.build();
    let coherency = if input.noncoherent {
        Coherency::NonCoherent
    } else {
        Coherency::Coherent
    };
    let mem = Arc::new(SimMemory::new(BASE, SIZE, coherency).expect("memory"));
    let valid = cfg.validate();
    let smmu = match SmmuModel::new(cfg.clone(), mem.clone()) {
        Ok(s) => {
            assert!(valid.is_ok(), "an invalid configuration was accepted");
            s
        }
        Err(e) => {
            assert_eq!(
                valid.err(),
                Some(e),
                "refused for the reason validate() gives"
            );
            SmmuModel::new(ModelConfig::default(), mem.clone()).expect("default config")
        }
    };
    for &(w, v) in input.init.iter().take(MAX_INIT) {
        let a = BASE + (u64::from(w) * 8) % SIZE;
        mem.dev_write_u64(a, v).expect("initial word");
    }
    let setup = input.setup % 3;
    if setup >= 1 {
        smmu.write64(regs::STRTAB_BASE, STRTAB);
        smmu.write32(regs::STRTAB_BASE_CFG, 5);
        smmu.write32(regs::CR2, u32::from(input.cr2 & 7));
        smmu.write64(regs::CMDQ_BASE, CMDQ | 4);
        smmu.write64(regs::EVENTQ_BASE, EVTQ | 3);
        smmu.write32(regs::CR0, cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN);
    }
    let tlb_capacity = smmu.config().tlb_capacity;
    let mut h = Harness {
        smmu,
        mem,
        paused: false,
        delay: 0,
        tlb_capacity,
    };
    if setup == 2 {
        let s2 = S2Params {
            vmid: 1,
            t0sz: 25 - 16,
            sl0: 1,
            tg: 0,
            ps: 5,
            root: 1,
        };
        for sid in 0..8u8 {
            let w = ste_words(sid, 0, 0, &s2);
            h.store(STRTAB + u64::from(sid) * 64, &w);
        }
        h.store(CDTAB, &cd_words(25 - 16, 0, 5, 0, 1));
    }
    h.check();
    for op in input.ops.into_iter().take(MAX_OPS) {
        h.step(op);
        h.check();
    }
});
