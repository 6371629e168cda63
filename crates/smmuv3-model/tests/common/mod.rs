//! Hand-built SMMU structures and page tables for the model's tests,
//! written from the architecture and independent of io-pgtable.
#![allow(dead_code)]

pub mod fixed;
pub mod guest;
pub mod rig;

use std::sync::Arc;

use smmuv3_model::layout::op;
use smmuv3_model::regs::{self, cr0, queue};
use smmuv3_model::{Coherency, Event, ModelConfig, SimMemory, SmmuModel};

pub const MEM_BASE: u64 = 0x8000_0000;

/// Stage-1 leaf attributes: AF, nG, inner shareable, AttrIndx 0, EL1 RW.
pub const S1_RW: u64 = 1 << 11 | 1 << 10 | 3 << 8;
/// Stage-1 leaf, EL1 read-only.
pub const S1_RO: u64 = S1_RW | 1 << 7;
/// Stage-1 leaf, EL0 and EL1 read-write.
pub const S1_USER_RW: u64 = S1_RW | 1 << 6;
/// Stage-2 leaf: AF, S2AP RW, normal WB memory, inner shareable.
pub const S2_RW: u64 = 1 << 10 | 3 << 6 | 0xf << 2 | 3 << 8;
/// Stage-2 leaf read-only.
pub const S2_RO: u64 = 1 << 10 | 1 << 6 | 0xf << 2 | 3 << 8;

pub struct H {
    pub mem: Arc<SimMemory>,
    pub smmu: Arc<SmmuModel>,
    pub cmdq: u64,
    pub cmdq_log2: u32,
    pub evtq: u64,
    pub evtq_log2: u32,
    pub strtab: u64,
    pub prod: u32,
}

impl H {
    pub fn new(cfg: ModelConfig) -> Self {
        Self::with(cfg, Coherency::Coherent, 16 << 20)
    }

    pub fn with(cfg: ModelConfig, coh: Coherency, size: u64) -> Self {
        let mem = Arc::new(SimMemory::new(MEM_BASE, size, coh).unwrap());
        let smmu = Arc::new(SmmuModel::new(cfg, mem.clone()).unwrap());
        Self {
            mem,
            smmu,
            cmdq: 0,
            cmdq_log2: 0,
            evtq: 0,
            evtq_log2: 0,
            strtab: 0,
            prod: 0,
        }
    }

    pub fn alloc(&self, size: u64) -> u64 {
        let pa = self.mem.alloc(size.max(64)).unwrap();
        self.mem.clean(pa, size.max(64)).unwrap();
        pa
    }

    /// CPU store + clean, as a careful driver does.
    pub fn w64(&self, pa: u64, v: u64) {
        self.mem.cpu_write_u64(pa, v).unwrap();
        self.mem.clean(pa, 8).unwrap();
    }

    pub fn r64(&self, pa: u64) -> u64 {
        self.mem.cpu_read_u64(pa).unwrap()
    }

    pub fn write_words(&self, pa: u64, w: &[u64]) {
        for (i, v) in w.iter().enumerate() {
            self.mem.cpu_write_u64(pa + i as u64 * 8, *v).unwrap();
        }
        self.mem.clean(pa, w.len() as u64 * 8).unwrap();
    }

    /// Sets up queues and a linear stream table of 2^sid_log2 entries, and
    /// enables everything.
    pub fn enable_linear(&mut self, sid_log2: u32) {
        self.strtab = self.alloc(64 << sid_log2);
        self.smmu.write64(regs::STRTAB_BASE, self.strtab);
        self.smmu.write32(regs::STRTAB_BASE_CFG, sid_log2);
        self.enable_queues(8, 8);
        self.enable_smmu();
    }

    pub fn enable_queues(&mut self, cmdq_log2: u32, evtq_log2: u32) {
        // Record C_BAD_STREAMID (RECINVSID) and ignore broadcast TLBI (PTM).
        self.smmu.write32(regs::CR2, 0b110);
        self.cmdq_log2 = cmdq_log2;
        self.evtq_log2 = evtq_log2;
        self.cmdq = self.alloc(16 << cmdq_log2);
        self.evtq = self.alloc(32 << evtq_log2);
        self.smmu
            .write64(regs::CMDQ_BASE, self.cmdq | u64::from(cmdq_log2));
        self.smmu
            .write64(regs::EVENTQ_BASE, self.evtq | u64::from(evtq_log2));
        self.smmu.write32(regs::CMDQ_PROD, 0);
        self.smmu.write32(regs::CMDQ_CONS, 0);
        self.smmu.write32(regs::EVENTQ_PROD, 0);
        self.smmu.write32(regs::EVENTQ_CONS, 0);
        self.smmu.write32(regs::CR0, cr0::CMDQEN | cr0::EVENTQEN);
        assert_eq!(self.smmu.read32(regs::CR0ACK), cr0::CMDQEN | cr0::EVENTQEN);
    }

    pub fn enable_smmu(&mut self) {
        self.cmd(op::CFGI_STE_RANGE as u64, 31);
        self.cmd(op::TLBI_NSNH_ALL as u64, 0);
        self.sync();
        let v = cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN;
        self.smmu.write32(regs::CR0, v);
        assert_eq!(self.smmu.read32(regs::CR0ACK), v);
    }

    /// Queues one command and rings the doorbell; returns CMDQ_CONS.ERR.
    pub fn cmd(&mut self, w0: u64, w1: u64) -> u32 {
        let n = 1u32 << self.cmdq_log2;
        let idx = self.prod & (n - 1);
        let pa = self.cmdq + u64::from(idx) * 16;
        self.write_words(pa, &[w0, w1]);
        self.prod = (self.prod + 1) & ((n << 1) - 1);
        self.smmu.write32(regs::CMDQ_PROD, self.prod);
        (self.smmu.read32(regs::CMDQ_CONS) >> 24) & 0x7f
    }

    pub fn sync(&mut self) {
        assert_eq!(self.cmd(op::SYNC as u64, 0), 0);
        assert_eq!(self.smmu.read32(regs::CMDQ_CONS) & 0xfffff, self.prod);
    }

    /// Issues a CMD_SYNC and polls CMDQ_CONS until it passes it, as a
    /// driver does, for up to `timeout`; returns whether it completed. (A
    /// CMD_SYNC waits for accesses still using `Iotlb` entries the
    /// commands before it dropped, which other threads may hold.)
    #[allow(dead_code)]
    pub fn sync_polled(&mut self, timeout: std::time::Duration) -> bool {
        assert_eq!(self.cmd(op::SYNC as u64, 0), 0);
        let start = std::time::Instant::now();
        while self.smmu.read32(regs::CMDQ_CONS) & 0xfffff != self.prod {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    pub fn cfgi_ste(&mut self, sid: u32) {
        self.cmd(op::CFGI_STE as u64 | u64::from(sid) << 32, 0);
        self.sync();
    }

    /// Reads and consumes every pending event.
    pub fn events(&mut self) -> Vec<Event> {
        let n = 1u32 << self.evtq_log2;
        let mask = (n << 1) - 1;
        let mut out = Vec::new();
        let prod = self.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD) & mask;
        let mut cons = self.smmu.read32(regs::PAGE1 + regs::EVENTQ_CONS) & mask;
        while cons != prod {
            let pa = self.evtq + u64::from(cons & (n - 1)) * 32;
            self.mem.invalidate(pa, 32).unwrap();
            let mut b = [0u8; 32];
            self.mem.cpu_read(pa, &mut b).unwrap();
            out.push(Event::from_bytes(&b).expect("model wrote an unknown event"));
            cons = (cons + 1) & mask;
        }
        self.smmu.write32(regs::PAGE1 + regs::EVENTQ_CONS, cons);
        out
    }

    pub fn gerror_active(&self) -> u32 {
        self.smmu.read32(regs::GERROR) ^ self.smmu.read32(regs::GERRORN)
    }

    pub fn ack_gerror(&self) {
        self.smmu
            .write32(regs::GERRORN, self.smmu.read32(regs::GERROR));
    }

    pub fn ste_at(&self, sid: u32) -> u64 {
        self.strtab + u64::from(sid) * 64
    }

    pub fn set_ste(&mut self, sid: u32, w: [u64; 8]) {
        self.write_words(self.ste_at(sid), &w);
        self.cfgi_ste(sid);
    }
}

pub fn queue_ptr_mask(log2: u32) -> u32 {
    let _ = queue::PTR_MASK;
    (2 << log2) - 1
}

// ---- STE / CD builders ----------------------------------------------

pub fn ste_abort() -> [u64; 8] {
    [1, 0, 0, 0, 0, 0, 0, 0]
}

pub fn ste_bypass() -> [u64; 8] {
    [1 | 0b100 << 1, 0, 0, 0, 0, 0, 0, 0]
}

/// Stage-1 STE: linear (fmt 0) or 2-level (fmt 1/2) CD table.
pub fn ste_s1(cd_ptr: u64, cdmax: u64, fmt: u64, s1dss: u64) -> [u64; 8] {
    [
        1 | 0b101 << 1 | fmt << 4 | cd_ptr | cdmax << 59,
        s1dss | 1 << 2 | 1 << 4 | 3 << 6,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// Stage-2 parameters.
#[derive(Clone, Copy, Debug)]
pub struct S2 {
    pub vmid: u64,
    pub t0sz: u64,
    pub sl0: u64,
    pub tg: u64,
    pub ps: u64,
    pub ttb: u64,
}

impl S2 {
    /// Returns a stage 2 with 4K pages over a 40-bit IPA space starting at
    /// level 1 (S2T0SZ 24, S2SL0 1, S2PS 40 bits), the tests' usual one.
    #[allow(dead_code)]
    pub fn ipa40(vmid: u64, ttb: u64) -> Self {
        Self {
            vmid,
            t0sz: 24,
            sl0: 1,
            tg: 0,
            ps: 2,
            ttb,
        }
    }
}

pub fn s2_word2(s: &S2) -> u64 {
    s.vmid
        | s.t0sz << 32
        | s.sl0 << 38
        | 1 << 40
        | 1 << 42
        | 3 << 44
        | s.tg << 46
        | s.ps << 48
        | 1 << 51
        | 1 << 58
}

pub fn ste_s2(s: &S2) -> [u64; 8] {
    [1 | 0b110 << 1, 0, s2_word2(s), s.ttb, 0, 0, 0, 0]
}

pub fn ste_nested(cd_ptr: u64, s: &S2) -> [u64; 8] {
    let mut w = ste_s2(s);
    w[0] = 1 | 0b111 << 1 | cd_ptr;
    w[1] = 1 << 2 | 1 << 4 | 3 << 6;
    w
}

/// A valid AArch64 CD with TTB0 only (EPD1), R = 1, A = 1.
/// `tg0`: 0 = 4K, 1 = 64K, 2 = 16K. `ips`: OAS encoding.
pub fn cd(t0sz: u64, tg0: u64, ips: u64, ttb: u64, asid: u16) -> [u64; 8] {
    [
        t0sz | tg0 << 6
            | 1 << 8
            | 1 << 10
            | 3 << 12
            | 1 << 30
            | 1 << 31
            | ips << 32
            | 1 << 41
            | 1 << 45
            | 1 << 46
            | u64::from(asid) << 48,
        ttb,
        0,
        0xff,
        0,
        0,
        0,
        0,
    ]
}

// ---- page tables ------------------------------------------------------

/// A page table under construction (stage 1 or 2).
#[derive(Clone, Copy, Debug)]
pub struct Pt {
    pub shift: u32,
    pub start: u32,
    pub ias: u32,
    pub root: u64,
}

impl Pt {
    pub fn stride(&self) -> u32 {
        self.shift - 3
    }
    pub fn lsb(&self, level: u32) -> u32 {
        self.shift + (3 - level) * self.stride()
    }
    pub fn root_bytes(&self) -> u64 {
        (8u64 << (self.ias - self.lsb(self.start))).max(64)
    }

    /// A stage-1 style table: start level from the input size.
    pub fn new_s1(h: &H, shift: u32, ias: u32) -> Self {
        let stride = shift - 3;
        let levels = (ias - shift).div_ceil(stride);
        let mut p = Pt {
            shift,
            start: 4 - levels,
            ias,
            root: 0,
        };
        p.root = h.alloc(p.root_bytes());
        p
    }

    /// A stage-2 table with an explicit start level (concatenation allowed).
    pub fn new_s2(h: &H, shift: u32, ias: u32, start: u32) -> Self {
        let mut p = Pt {
            shift,
            start,
            ias,
            root: 0,
        };
        p.root = h.alloc(p.root_bytes());
        p
    }

    fn index(&self, va: u64, level: u32) -> u64 {
        let v = va >> self.lsb(level);
        if level == self.start {
            v
        } else {
            v & ((1 << self.stride()) - 1)
        }
    }

    /// Returns the PA of the descriptor for `va` at `level`, creating tables.
    pub fn slot(&self, h: &H, va: u64, level: u32) -> u64 {
        let mut table = self.root;
        let mut l = self.start;
        while l < level {
            let d_pa = table + self.index(va, l) * 8;
            let d = h.r64(d_pa);
            table = if d & 3 == 3 {
                d & 0x0000_ffff_ffff_f000 & !((1u64 << self.shift) - 1)
            } else {
                let t = h.alloc(1 << self.shift);
                h.w64(d_pa, t | 3);
                t
            };
            l += 1;
        }
        table + self.index(va, level) * 8
    }

    /// Maps `va` to `pa` with a leaf at `level` (3 = page).
    pub fn map(&self, h: &H, va: u64, pa: u64, level: u32, attrs: u64) {
        let slot = self.slot(h, va, level);
        let ty = if level == 3 { 3 } else { 1 };
        h.w64(slot, pa | attrs | ty);
    }

    pub fn unmap(&self, h: &H, va: u64, level: u32) {
        let slot = self.slot(h, va, level);
        h.w64(slot, 0);
    }
}

/// Command word helpers.
pub fn tlbi_nh_va(asid: u16, va: u64, leaf: bool) -> (u64, u64) {
    (
        op::TLBI_NH_VA as u64 | u64::from(asid) << 48,
        va & !0xfff | u64::from(leaf),
    )
}

pub fn tlbi_nh_va_range(
    asid: u16,
    va: u64,
    num: u64,
    scale: u64,
    tg: u64,
    ttl: u64,
    leaf: bool,
) -> (u64, u64) {
    (
        op::TLBI_NH_VA as u64 | num << 12 | scale << 20 | u64::from(asid) << 48,
        va & !0xfff | u64::from(leaf) | ttl << 8 | tg << 10,
    )
}
