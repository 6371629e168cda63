//! Command queue consumption and command semantics.

use super::State;
use super::context::{NO_SSID, ctx_key, ctx_key_sid};
use crate::config::StallModel;
use crate::layout::{CMD_SIZE, RawCmd, op, sync_cs};
use crate::regs::{cerror, cr0, gerror, queue};
use crate::stats::TraceEntry;
use crate::tlb::{InvScope, Regime};

const NH: &[Regime] = &[Regime::Nh, Regime::Nested];
const EL2: &[Regime] = &[Regime::El2];
const S2: &[Regime] = &[Regime::S2];
const VM: &[Regime] = &[Regime::Nh, Regime::S2, Regime::Nested];

/// Address range, TTL level and TG granule shift of a TLBI by address.
type TlbiRange = (Option<(u64, u64)>, Option<u32>, Option<u32>);

/// Work one queue run may do (commands, plus the cache entries and TLB tag
/// chains their invalidations visit) before it yields until the next
/// register access: a full queue of 2^19 TLBIs, each scanning a TLB of
/// 2^16 tags, would otherwise hold one MMIO write for minutes. Large
/// enough that a queue of cheap commands (at most 2^19) runs in one go.
pub(crate) const CMDQ_WORK_BUDGET: u64 = 1 << 22;

impl State {
    /// Consumes commands from CONS up to PROD, stopping at the first error
    /// (CMDQ_CONS.ERR + GERROR.CMDQ_ERR) or when injection says so. Bounded:
    /// at most one pass over the queue per call, and about
    /// [`CMDQ_WORK_BUDGET`] of work: past it the queue resumes at the next
    /// register access (as a CMD_SYNC waiting for `Iotlb`s does), which a
    /// driver polling CMDQ_CONS makes.
    pub(super) fn process_cmdq(&mut self) {
        if self.regs.cr0 & cr0::CMDQEN == 0
            || self.gerror_active(gerror::CMDQ_ERR)
            || self.inject.paused
            || self.inject.delay_polls > 0
        {
            return;
        }
        let q = self.cmdq();
        let entries = 1u64 << q.log2;
        self.cmd_work = 0;
        for _ in 0..entries {
            let prod = self.regs.cmdq_prod;
            let cons = self.regs.cmdq_cons;
            if q.empty(prod, cons) {
                break;
            }
            if self.cmd_work >= CMDQ_WORK_BUDGET {
                super::sync_gate::arm(&self.sync_wait);
                break;
            }
            let index = q.idx(cons);
            let addr = q.base + u64::from(index) * CMD_SIZE;
            let mut raw = [0u8; 16];
            let result = match self.mem.read(addr, &mut raw) {
                Err(_) => {
                    self.stats.command_aborts += 1;
                    Err(cerror::ABT)
                }
                Ok(()) => {
                    let w0 = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
                    let w1 = u64::from_le_bytes(raw[8..].try_into().unwrap_or_default());
                    let cmd = RawCmd([w0, w1]);
                    if cmd.opcode() == op::SYNC && !self.sync_may_complete() {
                        // Accesses still use `Iotlb` entries the commands
                        // before it dropped: the CMD_SYNC stays at CONS
                        // until the last of them ends (see `iotlb.rs`).
                        break;
                    }
                    let r = if self.inject.drop > 0 {
                        self.inject.drop -= 1;
                        self.stats.dropped_commands += 1;
                        Ok(())
                    } else {
                        self.execute(cmd)
                    };
                    self.trace(|| TraceEntry::Command {
                        index,
                        words: [w0, w1],
                        error: r.err(),
                    });
                    r
                }
            };
            match result {
                Ok(()) => {
                    let err = cons & (queue::CONS_ERR_MASK << queue::CONS_ERR_SHIFT);
                    self.regs.cmdq_cons = err | q.inc(cons & queue::PTR_MASK);
                }
                Err(code) => {
                    let ptr = cons & queue::PTR_MASK;
                    self.regs.cmdq_cons = ptr | code << queue::CONS_ERR_SHIFT;
                    self.raise_gerror(gerror::CMDQ_ERR);
                    break;
                }
            }
        }
    }

    fn execute(&mut self, c: RawCmd) -> Result<(), u32> {
        self.set_last(None);
        let opc = c.opcode();
        self.stats.commands[usize::from(opc)] += 1;
        self.cmd_work += 1 + self.invalidation_cost(opc);
        // Commands only ever remove cache entries; what a `StreamIommu`
        // probe reads (TLB leaves, contexts) changed iff one went.
        let before = (self.stats.tlb_entries_invalidated, self.ctx_cache.len());
        let r = self.execute_inner(c);
        if r == Err(cerror::ILL) {
            self.stats.illegal_commands += 1;
        }
        if (self.stats.tlb_entries_invalidated, self.ctx_cache.len()) != before {
            // Before any later CMD_SYNC can complete, the Iotlbs forget
            // what this command invalidated.
            self.sync_iotlbs_removed();
        }
        r
    }

    /// Returns a bound on the cache entries and tag chains command `opc`
    /// visits: filtered invalidations scan whole caches.
    fn invalidation_cost(&self, opc: u8) -> u64 {
        match opc {
            op::CFGI_STE..=op::CFGI_CD_ALL => {
                (self.ste_cache.len()
                    + self.l1std_cache.len()
                    + self.cd_cache.len()
                    + self.l1cd_cache.len()
                    + self.ctx_cache.len()) as u64
            }
            op::TLBI_NH_ALL..=op::TLBI_NSNH_ALL => self.tlb.invalidate_cost(),
            _ => 0,
        }
    }

    fn sid_ok(&self, sid: u32) -> bool {
        self.cfg.sid_bits >= 32 || u64::from(sid) < 1u64 << self.cfg.sid_bits
    }

    fn vmid_of(&self, c: &RawCmd) -> u16 {
        if self.cfg.vmid16 {
            c.vmid()
        } else {
            c.vmid() & 0xff
        }
    }

    fn asid_of(&self, c: &RawCmd) -> u16 {
        if self.cfg.asid16 {
            c.asid()
        } else {
            c.asid() & 0xff
        }
    }

    /// Returns the invalidation range of a TLBI-by-address command:
    /// `[start, end)`, TTL level and TG granule shift.
    fn tlbi_range(&self, c: &RawCmd, addr: u64) -> Result<TlbiRange, u32> {
        let tg = if self.cfg.ril { c.tg() } else { 0 };
        if tg == 0 {
            // Single address: matches every entry that translates it.
            return Ok((Some((addr, addr.saturating_add(1))), None, None));
        }
        let shift = match tg {
            1 => 12,
            2 => 14,
            _ => 16,
        };
        // TTL 0b01 with the 16K granule is reserved (no level-1 blocks
        // without DS) and treated as 0b00.
        let ttl = match (tg, c.ttl()) {
            (2, 1) => 0,
            (_, t) => t,
        };
        // A single granule without a level hint says nothing a non-range
        // command would not: the encoding is reserved.
        if c.num() == 0 && c.scale() == 0 && ttl == 0 {
            return Err(cerror::ILL);
        }
        let start = addr & !((1u64 << shift) - 1);
        let pages = u64::from(c.num()) + 1;
        let len_log2 = c.scale() + shift;
        let len = if len_log2 >= 64 {
            u64::MAX
        } else {
            pages
                .checked_shl(len_log2)
                .filter(|&l| l >> len_log2 == pages)
                .unwrap_or(u64::MAX)
        };
        let end = start.saturating_add(len);
        let level = (ttl != 0).then_some(ttl);
        Ok((Some((start, end)), level, Some(shift)))
    }

    /// Returns whether the ASID/VMID operands fit the implemented widths;
    /// with 8-bit ones the upper bits are RES0 and a command that sets them
    /// is not required to affect anything (the model does nothing).
    fn ids_fit(&self, c: &RawCmd, asid: bool, vmid: bool) -> bool {
        let a = !asid || self.cfg.asid16 || c.asid() >> 8 == 0;
        let v = !vmid || !self.cfg.stage2 || self.cfg.vmid16 || c.vmid() >> 8 == 0;
        a && v
    }

    /// Returns the rule a command breaks (CERROR_ILL), if any: the one
    /// place command legality is decided, for execution and for the
    /// linter alike.
    pub(super) fn command_rule(&self, c: &RawCmd) -> Option<&'static str> {
        if c.ssec() {
            // No secure state: only the non-secure queue exists.
            return Some("SSEC = 1 on the non-secure command queue");
        }
        let (s1, s2, hyp) = (self.cfg.stage1, self.cfg.stage2, self.cfg.hyp);
        let stall = self.cfg.stall_model != StallModel::TerminateOnly;
        let supported = match c.opcode() {
            op::PREFETCH_CONFIG
            | op::PREFETCH_ADDR
            | op::CFGI_STE
            | op::CFGI_STE_RANGE
            | op::TLBI_NSNH_ALL
            | op::SYNC => Ok(()),
            op::CFGI_CD | op::CFGI_CD_ALL | op::TLBI_NH_ALL | op::TLBI_NH_ASID => s1
                .then_some(())
                .ok_or("the command needs stage 1 (IDR0.S1P)"),
            op::TLBI_NH_VA | op::TLBI_NH_VAA => s1
                .then_some(())
                .ok_or("the command needs stage 1 (IDR0.S1P)"),
            op::TLBI_EL2_ALL | op::TLBI_EL2_ASID | op::TLBI_EL2_VA | op::TLBI_EL2_VAA => {
                hyp.then_some(()).ok_or("TLBI_EL2_* needs IDR0.HYP")
            }
            op::TLBI_S12_VMALL | op::TLBI_S2_IPA => s2
                .then_some(())
                .ok_or("the command needs stage 2 (IDR0.S2P)"),
            op::ATC_INV => self
                .cfg
                .ats
                .then_some(())
                .ok_or("CMD_ATC_INV needs IDR0.ATS"),
            op::RESUME | op::STALL_TERM => stall
                .then_some(())
                .ok_or("CMD_RESUME/CMD_STALL_TERM need stall support (IDR0.STALL_MODEL)"),
            op::TLBI_EL3_ALL | op::TLBI_EL3_VA => {
                Err("TLBI_EL3_* on the non-secure command queue (no secure state)")
            }
            _ => Err("unknown or reserved opcode"),
        };
        if let Err(rule) = supported {
            return Some(rule);
        }
        match c.opcode() {
            op::TLBI_NH_VA
            | op::TLBI_NH_VAA
            | op::TLBI_EL2_VA
            | op::TLBI_EL2_VAA
            | op::TLBI_S2_IPA
                if self.cfg.ril && c.tg() != 0 =>
            {
                let ttl = if c.tg() == 2 && c.ttl() == 1 {
                    0
                } else {
                    c.ttl()
                };
                (c.num() == 0 && c.scale() == 0 && ttl == 0)
                    .then_some("range TLBI with TG set and NUM = SCALE = TTL = 0 is reserved")
            }
            op::SYNC => (!matches!(c.sync_cs(), sync_cs::NONE | sync_cs::IRQ | sync_cs::SEV))
                .then_some("CMD_SYNC.CS = 0b11 is reserved"),
            _ => None,
        }
    }

    fn execute_inner(&mut self, c: RawCmd) -> Result<(), u32> {
        if self.command_rule(&c).is_some() {
            return Err(cerror::ILL);
        }
        let s1 = self.cfg.stage1;
        let s2 = self.cfg.stage2;
        match c.opcode() {
            op::PREFETCH_CONFIG | op::PREFETCH_ADDR => {
                // Prefetches are hints; an out-of-range StreamID is ignored.
                Ok(())
            }
            // Out-of-range StreamID/SubstreamID parameters: the command has
            // no effect (one of the CONSTRAINED UNPREDICTABLE outcomes).
            op::CFGI_STE => {
                if self.sid_ok(c.sid()) {
                    let sid = u64::from(c.sid());
                    self.invalidate_ste_range(sid, sid + 1, !c.leaf());
                }
                Ok(())
            }
            op::CFGI_STE_RANGE => {
                let n = 2u64 << c.range();
                let start = u64::from(c.sid()) & !(n - 1);
                self.invalidate_ste_range(start, start + n, true);
                Ok(())
            }
            op::CFGI_CD if s1 => {
                let ssid_ok = self.cfg.ssid_bits >= 20 || c.ssid() >> self.cfg.ssid_bits == 0;
                if self.sid_ok(c.sid()) && ssid_ok {
                    let (sid, ssid) = (c.sid(), c.ssid());
                    self.cd_cache.remove(&(sid, ssid));
                    if c.leaf() {
                        // Only the contexts built from this CD: its
                        // substream's, and that of transactions without a
                        // SubstreamID (S1DSS may send them to substream 0).
                        self.ctx_cache.remove(&ctx_key(sid, ssid));
                        if ssid == 0 {
                            self.ctx_cache.remove(&ctx_key(sid, NO_SSID));
                        }
                    } else {
                        // The level-1 descriptors too: every context of
                        // the stream may have been reached through them.
                        self.l1cd_cache.retain(|k, _| k.0 != sid);
                        self.ctx_cache.retain(|k, _| ctx_key_sid(*k) != sid);
                    }
                }
                Ok(())
            }
            op::CFGI_CD_ALL if s1 => {
                if self.sid_ok(c.sid()) {
                    let sid = c.sid();
                    self.cd_cache.retain(|k, _| k.0 != sid);
                    self.l1cd_cache.retain(|k, _| k.0 != sid);
                    self.ctx_cache.retain(|k, _| ctx_key_sid(*k) != sid);
                }
                Ok(())
            }
            op::TLBI_NH_ALL if s1 => {
                if !self.ids_fit(&c, false, true) {
                    return Ok(());
                }
                let sc = InvScope {
                    vmid: s2.then(|| self.vmid_of(&c)),
                    ..InvScope::all(NH)
                };
                self.inv(&sc);
                Ok(())
            }
            op::TLBI_NH_ASID if s1 => {
                if !self.ids_fit(&c, true, true) {
                    return Ok(());
                }
                let sc = InvScope {
                    vmid: s2.then(|| self.vmid_of(&c)),
                    asid: Some(self.asid_of(&c)),
                    non_global_only: true,
                    ..InvScope::all(NH)
                };
                self.inv(&sc);
                Ok(())
            }
            op::TLBI_NH_VA | op::TLBI_NH_VAA if s1 => {
                let (range, level, granule_shift) = self.tlbi_range(&c, c.va())?;
                if !self.ids_fit(&c, c.opcode() == op::TLBI_NH_VA, true) {
                    return Ok(());
                }
                let sc = InvScope {
                    vmid: s2.then(|| self.vmid_of(&c)),
                    asid: (c.opcode() == op::TLBI_NH_VA).then(|| self.asid_of(&c)),
                    range,
                    level,
                    granule_shift,
                    leaf_only: c.leaf(),
                    ..InvScope::all(NH)
                };
                self.inv(&sc);
                Ok(())
            }
            op::TLBI_EL2_ALL if self.cfg.hyp => {
                self.inv(&InvScope::all(EL2));
                Ok(())
            }
            op::TLBI_EL2_ASID if self.cfg.hyp => {
                if !self.ids_fit(&c, true, false) {
                    return Ok(());
                }
                let sc = InvScope {
                    asid: Some(self.asid_of(&c)),
                    non_global_only: true,
                    ..InvScope::all(EL2)
                };
                self.inv(&sc);
                Ok(())
            }
            op::TLBI_EL2_VA | op::TLBI_EL2_VAA if self.cfg.hyp => {
                let (range, level, granule_shift) = self.tlbi_range(&c, c.va())?;
                if !self.ids_fit(&c, c.opcode() == op::TLBI_EL2_VA, false) {
                    return Ok(());
                }
                let sc = InvScope {
                    asid: (c.opcode() == op::TLBI_EL2_VA).then(|| self.asid_of(&c)),
                    range,
                    level,
                    granule_shift,
                    leaf_only: c.leaf(),
                    ..InvScope::all(EL2)
                };
                self.inv(&sc);
                Ok(())
            }
            op::TLBI_S12_VMALL if s2 => {
                if !self.ids_fit(&c, false, true) {
                    return Ok(());
                }
                let sc = InvScope {
                    vmid: Some(self.vmid_of(&c)),
                    ..InvScope::all(VM)
                };
                self.inv(&sc);
                Ok(())
            }
            op::TLBI_S2_IPA if s2 => {
                // Only stage-2 entries: combined stage 1+2 entries need a
                // later TLBI_NH_ALL / S12_VMALL, as the architecture says.
                let (range, level, granule_shift) = self.tlbi_range(&c, c.ipa())?;
                if !self.ids_fit(&c, false, true) {
                    return Ok(());
                }
                let sc = InvScope {
                    vmid: Some(self.vmid_of(&c)),
                    range,
                    level,
                    granule_shift,
                    leaf_only: c.leaf(),
                    ..InvScope::all(S2)
                };
                self.inv(&sc);
                Ok(())
            }
            op::TLBI_NSNH_ALL => {
                self.inv(&InvScope::all(VM));
                Ok(())
            }
            // No ATC is modelled: nothing cached to invalidate.
            op::ATC_INV if self.cfg.ats => Ok(()),
            op::RESUME | op::STALL_TERM if self.cfg.stall_model != StallModel::TerminateOnly => {
                let sid = c.sid();
                if c.opcode() == op::RESUME {
                    let stag = c.stag();
                    self.stalled.retain(|s| !(s.sid == sid && s.stag == stag));
                } else {
                    self.stalled.retain(|s| s.sid != sid);
                }
                self.drop_retired_stall_records();
                Ok(())
            }
            op::SYNC => self.cmd_sync(c),
            _ => Err(cerror::ILL),
        }
    }

    fn cmd_sync(&mut self, c: RawCmd) -> Result<(), u32> {
        match c.sync_cs() {
            sync_cs::NONE => {}
            sync_cs::IRQ => {
                // The wired CMD_SYNC line pulses whatever MSIAddress says
                // (IHI 0070 4.7.3); an MSI is sent as well when one is
                // configured. IRQ_CTRL has no enable for this source.
                self.irq.cmd_sync = true;
                self.outbox.irq(super::signal::IrqLine::CmdSync);
                if let Some(msi) = self.sync_msi(&c) {
                    if self.write_msi(msi, gerror::MSI_CMDQ_ABT_ERR) {
                        self.stats.sync_msi_writes += 1;
                    } else {
                        self.raise_gerror(gerror::MSI_CMDQ_ABT_ERR);
                    }
                }
            }
            // Without SEV support the wake-up event simply does not happen
            // (drivers such as Linux ask for SEV unconditionally).
            sync_cs::SEV => {
                if self.cfg.sev {
                    self.stats.sync_sevs += 1;
                }
            }
            _ => return Err(cerror::ILL),
        }
        Ok(())
    }

    fn inv(&mut self, sc: &InvScope) {
        let n = self.tlb.invalidate(sc);
        self.stats.tlb_entries_invalidated += n as u64;
    }

    /// Drops cached STEs (and their CDs) for StreamIDs in `[start, end)`,
    /// and the level-1 descriptors covering them when `l1` is set.
    fn invalidate_ste_range(&mut self, start: u64, end: u64, l1: bool) {
        let inr = |sid: &u32| (start..end).contains(&u64::from(*sid));
        self.ste_cache.retain(|k, _| !inr(k));
        self.cd_cache.retain(|k, _| !inr(&k.0));
        self.l1cd_cache.retain(|k, _| !inr(&k.0));
        self.ctx_cache.retain(|k, _| !inr(&ctx_key_sid(*k)));
        if l1 {
            let split = self.strtab_split();
            self.l1std_cache.retain(|k, _| {
                let first = u64::from(*k) << split;
                let last = first + (1u64 << split);
                !(first < end && last > start)
            });
        }
    }
}
