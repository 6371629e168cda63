//! A hostile host against trap-and-emulate: random register writes, random
//! command words, random STE and level-1 contents with pointers into
//! hypervisor memory, guest memory, MMIO and past memory, interleaved
//! with donations, reclaims and device DMA. Decoded from bytes, so the
//! property test and the coverage-guided fuzz target drive the same
//! interpreter.
#![allow(dead_code)]

use std::collections::BTreeSet;

use io_pgtable::{Granule, Prot};
use smmuv3::command::{Command, TlbiAddr};
use smmuv3::regs as r;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_model::DmaRequest;

use super::Setup;
use super::host::{HostDomain, HostSmmu, Trapped};

/// The host stream the world starts with.
pub const SID: u32 = 0x10;
/// A stream outside the host's table (past a linear one's end, under an
/// empty level-1 descriptor of a 2-level one): C_BAD_STREAMID traffic.
pub const FAR_SID: u32 = 0x4321;
/// Its first IOVA.
pub const IOVA: u64 = 0x4000_0000;
/// Host RAM pages the operations aim at (the host driver's structures
/// live in the first ones).
const HOST_PAGES: u64 = 96;

/// Register offsets worth hitting (every emulated one, aliases, hidden and
/// unknown ones).
const OFFSETS: &[usize] = &[
    r::IDR0,
    r::IDR1,
    r::IDR5,
    r::CR0,
    r::CR0ACK,
    r::CR1,
    r::CR2,
    r::GBPA,
    r::IRQ_CTRL,
    r::GERROR,
    r::GERRORN,
    r::GERROR_IRQ_CFG0,
    r::STRTAB_BASE,
    r::STRTAB_BASE + 4,
    r::STRTAB_BASE_CFG,
    r::CMDQ_BASE,
    r::CMDQ_BASE + 4,
    r::CMDQ_PROD,
    r::CMDQ_CONS,
    r::EVENTQ_BASE,
    r::EVENTQ_PROD,
    r::EVENTQ_CONS,
    r::EVENTQ_PROD_P0,
    r::PRIQ_BASE,
    r::PRIQ_PROD,
    0x30,
    0x1_0000,
    0x1_fffc,
    0x2_0000,
    0x3,
];

/// Command opcodes worth sending (every one the driver knows, and junk).
const OPCODES: &[u8] = &[
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x28, 0x2a, 0x30,
    0x40, 0x41, 0x44, 0x45, 0x46, 0x00, 0x7f, 0xff,
];

/// One hostile action.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// A register write of `size` bytes.
    Write { off: usize, size: u8, value: u64 },
    /// A register read.
    Read { off: usize, size: u8 },
    /// A store into host RAM (the host's own memory, its structures
    /// included).
    Poke { pa: u64, value: u64 },
    /// A command written at the host's PROD, then PROD advanced.
    Cmd { words: [u64; 2] },
    /// An STE written into the host's (linear) stream table, then
    /// CFGI_STE.
    Ste { sid: u32, words: [u64; 2] },
    /// A level-1 descriptor written, then CFGI_ALL.
    L1 { index: u64, desc: u64 },
    /// The hypervisor donates a host page to guest 1.
    Donate { pa: u64 },
    /// The hypervisor takes a page back from guest 1.
    Reclaim { pa: u64 },
    /// A device transaction.
    Dma { sid: u32, iova: u64, write: bool },
    /// The hypervisor drains the real event queues.
    Poll,
    /// The host driver maps or unmaps a page of its domain.
    HostMap { page: u64, map: bool },
}

fn u64_at(b: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    let n = b.len().min(8);
    le[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(le)
}

/// The world the operations act on.
pub struct World {
    pub t: Trapped,
    pub host: Option<HostSmmu>,
    pub dom: Option<HostDomain>,
    pub bufs: Vec<u64>,
    pub donated: BTreeSet<u64>,
}

impl Drop for World {
    fn drop(&mut self) {
        // The hostile host may have broken its own queue, and a domain
        // whose detach cannot complete leaks its tables on purpose. Shut
        // the host driver down first (the emulator acknowledges at once),
        // so the domain frees them: a fuzzer building a world per input
        // must not grow without bound.
        if let Some(h) = &self.host {
            let _ = h.shutdown();
        }
        self.dom = None;
    }
}

impl World {
    /// Returns a world for `data`: its first byte picks a linear or a
    /// 2-level host stream table, the rest are the operations
    /// ([`World::decode`]).
    pub fn for_input(data: &[u8]) -> (Self, &[u8]) {
        match data.split_first() {
            Some((b, rest)) => (Self::with(b & 1 == 1), rest),
            None => (Self::with(false), data),
        }
    }

    /// Returns a world whose host driver brought its SMMU up (linear
    /// stream table), attached [`SID`] to a stage-1 domain and mapped eight
    /// pages from [`IOVA`].
    pub fn new() -> Self {
        Self::with(false)
    }

    /// As [`World::new`], with a 2-level host stream table when
    /// `two_level`.
    pub fn with(two_level: bool) -> Self {
        // Small memories: a world is built per input.
        // ATS on: a device may also mark its traffic as translated, which
        // must not let it past the SMMU (CR0.ATSCHK).
        let t = Trapped::new(Setup {
            host_ram: 1 << 20,
            sim_size: 4 << 20,
            tlb_capacity: 256,
            ats: true,
            ..Setup::default()
        });
        let host = t
            .host_smmu(
                0,
                SmmuConfig {
                    strtab: if two_level {
                        smmuv3::driver::StrtabFormat::TwoLevel
                    } else {
                        smmuv3::driver::StrtabFormat::Linear
                    },
                    timeout_us: 2_000,
                    ..SmmuConfig::default()
                },
            )
            .ok();
        let mut bufs = Vec::new();
        let mut dom = None;
        if let Some(h) = &host {
            let d = HostDomain::new_stage1(h, Granule::K4, 48).unwrap();
            h.attach(SID, None, &d, AttachOptions::default()).unwrap();
            for k in 0..8 {
                let b = t.host_ram.alloc(4096).unwrap();
                d.map(IOVA + k * 4096, b, 4096, Prot::READ | Prot::WRITE)
                    .unwrap();
                bufs.push(b);
            }
            dom = Some(d);
        }
        Self {
            t,
            host,
            dom,
            bufs,
            donated: BTreeSet::new(),
        }
    }

    /// Returns an address from the interesting set `k` picks: host pages,
    /// hypervisor memory, a donated page, MMIO, past memory, odd values.
    pub fn pointer(&self, k: u8, low: u64) -> u64 {
        let ram = self.t.ram;
        let page = match k % 10 {
            0..=3 => ram.base + (low % HOST_PAGES) * 4096,
            4 => ram.base - 4096 * (1 + low % 8),
            5 => self.donated.iter().next().copied().unwrap_or(ram.end()),
            6 => super::MMIO.base,
            7 => 1 << 47,
            8 => ram.end(),
            _ => low,
        };
        page | (low & 0x3f)
    }

    /// Decodes operations from `data` (10 bytes each).
    pub fn decode(&self, data: &[u8]) -> Vec<Op> {
        data.chunks(10)
            .filter(|c| c.len() == 10)
            .map(|c| self.op(c))
            .collect()
    }

    fn op(&self, c: &[u8]) -> Op {
        let v = u64_at(&c[2..]);
        let size = if c[1] & 1 == 0 { 4 } else { 8 };
        let off = OFFSETS[usize::from(c[1] >> 1) % OFFSETS.len()];
        match c[0] % 12 {
            0 | 1 => Op::Write {
                off,
                size,
                value: if c[0] & 0x80 != 0 {
                    self.pointer(c[2], v >> 8)
                } else {
                    v
                },
            },
            2 => Op::Read { off, size },
            3 => Op::Poke {
                pa: self.t.ram.base + (v % (HOST_PAGES * 512)) * 8,
                value: self.pointer(c[1], u64_at(&c[4..])),
            },
            4 | 5 => {
                let opc = OPCODES[usize::from(c[1]) % OPCODES.len()];
                let mut w0 = u64::from(opc) | (u64_at(&c[2..6]) << 8);
                // Bits [11:8] of word 1 are a TLBI's TG and TTL (range
                // invalidation and level hint), and a single-granule range
                // (NUM = SCALE = 0) is what random bits rarely give.
                if c[9] & 0x10 != 0 {
                    w0 &= !(0x1f << 12 | 0x3f << 20);
                }
                let w1 = if c[0] & 0x40 != 0 {
                    self.pointer(c[6], u64_at(&c[7..]))
                } else {
                    u64_at(&c[6..]) << 12 | u64::from(c[9] & 0xf) << 8
                };
                Op::Cmd { words: [w0, w1] }
            }
            6 => Op::Ste {
                sid: u32::from(c[1] % 4) + if c[1] & 4 != 0 { SID } else { 0 },
                words: [
                    u64::from(c[2] & 0xf)
                        | self.pointer(c[3], u64_at(&c[4..8])) & !0x3f
                        | u64::from(c[8] % 12) << 59
                        | u64::from(c[8] >> 4 & 3) << 4,
                    u64::from(c[9]),
                ],
            },
            7 => Op::L1 {
                index: u64::from(c[1] % 4),
                desc: self.pointer(c[2], u64_at(&c[3..])) & !0x1f | u64::from(c[9] % 12),
            },
            8 => Op::Donate {
                pa: self.t.ram.base + (v % HOST_PAGES) * 4096,
            },
            9 => Op::Reclaim {
                pa: self.t.ram.base + (v % HOST_PAGES) * 4096,
            },
            10 => Op::Dma {
                sid: if c[1] & 1 == 0 {
                    SID
                } else {
                    match (c[1] >> 1) % 5 {
                        4 => FAR_SID,
                        k => u32::from(k),
                    }
                },
                iova: if c[2] & 1 == 0 {
                    IOVA + (u64::from(c[3]) % 10) * 4096
                } else {
                    self.pointer(c[3], u64_at(&c[4..]))
                },
                write: c[1] & 0x80 != 0,
            },
            _ => {
                if c[1] & 1 == 0 {
                    Op::Poll
                } else {
                    Op::HostMap {
                        page: u64::from(c[2] % 10),
                        map: c[3] & 1 == 0,
                    }
                }
            }
        }
    }

    fn reg(&self, off: usize, size: u8) -> u64 {
        self.t
            .emu
            .lock()
            .unwrap()
            .read(0, off as u64, size)
            .unwrap_or(0)
    }

    fn wreg(&self, off: usize, size: u8, value: u64) {
        let _ = self.t.emu.lock().unwrap().write(0, off as u64, size, value);
    }

    /// Writes `words` at the host's command queue PROD and rings it.
    fn push_cmd(&self, words: [u64; 2]) {
        let base = self.reg(r::CMDQ_BASE, 8);
        let log2 = (base & 0x1f).min(8) as u32;
        let addr = (base & r::q_base::ADDR.mask()) & !((16u64 << log2) - 1);
        let prod = self.reg(r::CMDQ_PROD, 4) as u32;
        let at = addr + u64::from(prod & ((1 << log2) - 1)) * 16;
        self.host_store(at, words[0]);
        self.host_store(at + 8, words[1]);
        let next = (prod + 1) & ((2 << log2) - 1);
        self.wreg(r::CMDQ_PROD, 4, next.into());
    }

    /// A host CPU store, only into host RAM the host still owns (the CPU
    /// stage 2 would stop anything else).
    fn host_store(&self, pa: u64, v: u64) {
        let ram = self.t.ram;
        if pa >= ram.base && pa + 8 <= ram.end() && !self.donated.contains(&(pa & !0xfff)) {
            let _ = self.t.mem.cpu_write(pa, &v.to_le_bytes());
            let _ = self.t.mem.clean(pa, 8);
        }
    }

    /// Applies `op`.
    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { off, size, value } => self.wreg(off, size, value),
            Op::Read { off, size } => {
                let _ = self.t.emu.lock().unwrap().read(0, off as u64, size);
            }
            Op::Poke { pa, value } => self.host_store(pa, value),
            Op::Cmd { words } => self.push_cmd(words),
            Op::Ste { sid, words } => {
                let base = self.reg(r::STRTAB_BASE, 8) & r::strtab_base::ADDR.mask();
                let at = base + u64::from(sid) * 64;
                self.host_store(at, words[0]);
                self.host_store(at + 8, words[1]);
                self.push_cmd(Command::CfgiSte { sid, leaf: true }.encode().unwrap());
            }
            Op::L1 { index, desc } => {
                let base = self.reg(r::STRTAB_BASE, 8) & r::strtab_base::ADDR.mask();
                self.host_store(base + index * 8, desc);
                self.push_cmd(Command::CFGI_ALL.encode().unwrap());
            }
            Op::Donate { pa } => {
                if self.t.donate(pa, 4096).is_ok() {
                    self.donated.insert(pa);
                }
            }
            Op::Reclaim { pa } => {
                let ok = self
                    .t
                    .emu
                    .lock()
                    .unwrap()
                    .hyp_mut()
                    .reclaim_from_guest(pa, 4096, 1)
                    .is_ok();
                if ok {
                    self.donated.remove(&pa);
                    self.t.host.taken.lock().unwrap().remove(&pa);
                }
            }
            Op::Dma { sid, iova, write } => {
                let req = if write {
                    DmaRequest::write(sid, iova, 8)
                } else {
                    DmaRequest::read(sid, iova, 8)
                };
                let mut data = *b"HOSTILE!";
                let _ = self.t.models[0].dma(&req, &mut data);
            }
            Op::Poll => {
                self.t.emu.lock().unwrap().poll_events();
            }
            Op::HostMap { page, map } => {
                if let (Some(d), Some(&b)) = (&self.dom, self.bufs.first()) {
                    let iova = IOVA + page * 4096;
                    if map {
                        let _ = d.map(iova, b, 4096, Prot::READ | Prot::WRITE);
                    } else {
                        let _ = d.unmap_shared(iova, 4096);
                    }
                }
                // The host may also flush everything it thinks it has.
                let _ = self.host.as_ref().map(|h| {
                    h.issue(
                        &[Command::TlbiNhVa {
                            vmid: 0,
                            asid: 1,
                            at: TlbiAddr {
                                addr: IOVA,
                                ..TlbiAddr::default()
                            },
                        }],
                        true,
                    )
                });
            }
        }
    }

    /// Returns an error when a device can reach memory the host does not
    /// own, or the hypervisor touched memory outside the host's.
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = self.t.host.violations.lock().unwrap().first() {
            return Err(format!(
                "hypervisor accessed {:#x}+{} outside host memory",
                v.0, v.1
            ));
        }
        // Every host command the real SMMU sees was checked: none of them
        // stops its queue (CERROR_ILL there would be of the host's making).
        let rejected = self
            .t
            .emu
            .lock()
            .unwrap()
            .hyp()
            .smmu(0)
            .map_or(0, |s| s.stats().rejected);
        let illegal = self.t.models[0].stats().illegal_commands;
        if rejected != 0 || illegal != 0 {
            return Err(format!(
                "the real SMMU rejected {illegal} command(s) ({rejected} skipped by its driver)"
            ));
        }
        let ram = self.t.ram;
        let owned = |pa: u64| {
            let host = pa >= ram.base && pa < ram.end() && !self.donated.contains(&(pa & !0xfff));
            host || (pa >= super::MMIO.base && pa < super::MMIO.end())
        };
        // Everything the real SMMU caches, not only the probes below: the
        // hypervisor's stage 2 is never stale (every donation invalidated
        // it), and a stale translation the host left in its own stage 1
        // still only reaches the host's memory.
        let audit = self.t.models[0].audit_caches();
        if let Some(s) = audit.stale_stage2.first() {
            return Err(format!(
                "stale stage-2 entry after the hypervisor's changes: {s:?}"
            ));
        }
        if let Some(w) = audit.stale_walks.iter().find(|w| w.stage2) {
            return Err(format!("stale stage-2 walk-cache entry: {w:?}"));
        }
        if let Some(st) = audit.stale.iter().find(|st| !owned(st.cached_pa)) {
            return Err(format!(
                "a cached translation reaches {:#x}: {st:?}",
                st.cached_pa
            ));
        }
        let mut probes: Vec<u64> = (0..10).map(|k| IOVA + k * 4096).collect();
        probes.extend(self.donated.iter().copied());
        probes.extend([ram.base - 4096, ram.base, ram.end(), super::MMIO.base]);
        for sid in [SID, SID + 1, 0, 1, 2, 3, FAR_SID] {
            for &iova in &probes {
                let plain = [
                    DmaRequest::read(sid, iova, 8),
                    DmaRequest::write(sid, iova, 8),
                ];
                // The same, marked as translated by the device's ATC.
                let translated = plain.map(|r| DmaRequest {
                    ats_translated: true,
                    ..r
                });
                for req in plain.into_iter().chain(translated) {
                    if let Ok(tr) = self.t.models[0].translate(&req) {
                        let pa = tr.pa;
                        let host = pa >= ram.base
                            && pa < ram.end()
                            && !self.donated.contains(&(pa & !0xfff));
                        let mmio = pa >= super::MMIO.base && pa < super::MMIO.end();
                        if !host && !mmio {
                            return Err(format!(
                                "sid {sid:#x} iova {iova:#x} reaches {pa:#x}, not host memory"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
