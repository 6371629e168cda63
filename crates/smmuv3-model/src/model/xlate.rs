//! Configuration lookup (stream table, CD tables) with their caches, and
//! the translation of one input address through TLB and walker.

use super::State;
use crate::config::{Httu, StallModel};
use crate::event::{Event, EventType, FaultClass};
use crate::layout::{
    RawCd, RawSte, STE_SIZE, l1cd_l2ptr, l1cd_valid, l1std_l2ptr, l1std_span, ste_config,
};
use crate::regs::{cr0, gbpa, oas_field_to_bits, strtab};
use crate::stats::TraceEntry;
use crate::tlb::{Regime, Tag, TlbEntry, WalkEntry};
use crate::walk::{self, Access, Leaf, Perms, S1Perm, Start, TableAttrs, TableCfg, WalkFault};
use crate::{DmaFault, DmaRequest, Termination, Translation};

/// Key of "no SubstreamID" in the per-(sid, ssid) caches (never a valid
/// SubstreamID: those have at most [`MAX_SSID_BITS`] bits).
const NO_SSID: u32 = u32::MAX;

/// The widest SubstreamID the architecture defines (IDR1.SSIDSIZE <= 20).
const MAX_SSID_BITS: u32 = 20;

/// Returns the context-cache key of a (StreamID, SubstreamID) pair.
#[inline]
pub(crate) fn ctx_key(sid: u32, ssid: u32) -> u64 {
    u64::from(sid) << 32 | u64::from(ssid)
}

/// Returns the StreamID of a context-cache key.
#[inline]
pub(crate) fn ctx_key_sid(key: u64) -> u32 {
    (key >> 32) as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct S1Ste {
    ctx_ptr: u64,
    fmt: u64,
    cdmax: u32,
    s1dss: u64,
    stalld: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct S2Ste {
    tt: TableCfg,
    vmid: u16,
    record: bool,
    stall: bool,
}

/// A decoded, valid STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ste {
    config: u64,
    s1: Option<S1Ste>,
    s2: Option<S2Ste>,
    /// VMID tagging stage-1 TLB entries.
    vmid: u16,
    el2: bool,
    eats: u64,
    privcfg: u64,
    instcfg: u64,
}

/// A decoded, valid CD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cd {
    /// TLB tag space of the CD: (regime code, VMID) of its STE.
    space: (u8, u16),
    asid: u16,
    tt: [Option<TableCfg>; 2],
    tbi: [bool; 2],
    perm: S1Perm,
    record: bool,
    stall: bool,
    abort: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Abort,
    Bypass,
    S1,
    S2,
    Nested,
}

/// Everything a translation of one (sid, ssid) needs, derived from the
/// cached STE and CD (so dropping it never changes behaviour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ctx {
    mode: Mode,
    ste: Ste,
    cd: Option<Cd>,
    tag: Tag,
    sizes: [u32; 9],
    nsizes: usize,
}

/// Why a translation stopped, before recording.
enum Stop {
    Global,
    StreamAbort,
    /// A configuration error: always recorded, always aborts.
    Config(Event),
    /// A translation-related fault controlled by R/S/A.
    Fault {
        ev: Event,
        record: bool,
        stall: bool,
        abort: bool,
    },
}

fn granule_shift_s1(tg: u64, sel: u32) -> Option<u32> {
    match (sel, tg) {
        (0, 0) | (1, 2) => Some(12),
        (0, 1) | (1, 3) => Some(16),
        (0, 2) | (1, 1) => Some(14),
        _ => None,
    }
}

fn granule_shift_s2(tg: u64) -> Option<u32> {
    match tg {
        0 => Some(12),
        1 => Some(16),
        2 => Some(14),
        _ => None,
    }
}

fn level_sizes(tt: &TableCfg) -> impl Iterator<Item = u32> {
    let t = *tt;
    (t.start_level.max(1)..=3).map(move |l| t.level_lsb(l))
}

impl State {
    fn granule_ok(&self, shift: u32) -> bool {
        match shift {
            12 => self.cfg.gran4k,
            14 => self.cfg.gran16k,
            _ => self.cfg.gran64k,
        }
    }

    /// Returns the effective (HA, HD) of a structure, or `None` when it asks
    /// for more hardware updates than IDR0.HTTU advertises.
    fn httu_bits(&self, ha: bool, hd: bool) -> Option<(bool, bool)> {
        let ok = match self.cfg.httu {
            Httu::None => !ha && !hd,
            Httu::AccessFlag => !hd,
            Httu::AccessAndDirty => true,
        };
        // Dirty updates without access-flag updates are treated as off.
        ok.then_some((ha, ha && hd))
    }

    pub(super) fn strtab_split(&self) -> u32 {
        match (self.regs.strtab_base_cfg >> strtab::SPLIT_SHIFT) & 0x1f {
            0..=7 => 6,
            8 | 9 => 8,
            _ => 10,
        }
    }

    fn stall_allowed(&self, requested: bool) -> bool {
        match self.cfg.stall_model {
            StallModel::TerminateOnly => false,
            StallModel::StallForced => true,
            StallModel::StallAndTerminate => requested,
        }
    }

    // ---- structure decoding -------------------------------------------

    fn decode_s2(&self, raw: &RawSte) -> Option<S2Ste> {
        if !raw.s2aa64() || raw.s2endi() {
            return None;
        }
        let shift = granule_shift_s2(raw.s2tg())?;
        if !self.granule_ok(shift) {
            return None;
        }
        let ps = u32::from(oas_field_to_bits(raw.s2ps())?);
        let mut eff_ps = ps.min(u32::from(self.cfg.oas_bits));
        if shift != 16 {
            eff_ps = eff_ps.min(48);
        }
        // The IPA space may be larger than S2PS; it is bounded by the IAS
        // (= OAS here, no AArch32), at least 16 bits of T0SZ below 64K.
        let t0sz = raw.s2t0sz();
        let oas = u32::from(self.cfg.oas_bits);
        let floor = if shift == 16 { 12 } else { 16 };
        if !((64 - oas).max(floor)..=39).contains(&t0sz) {
            return None;
        }
        let ias = 64 - t0sz;
        let start_level = match (shift, raw.s2sl0()) {
            (12, 0) => 2,
            (12, 1) => 1,
            (12, 2) => 0,
            (_, 0) => 3,
            (_, 1) => 2,
            (_, 2) => 1,
            _ => return None,
        };
        // HA/HD are RES0 without the matching HTTU support; QEMU rejects
        // them, and so do we.
        let (ha, hd) = self.httu_bits(raw.s2ha(), raw.s2hd())?;
        let tt = TableCfg {
            shift,
            start_level,
            ias,
            ttb: raw.s2ttb(),
            oas: eff_ps,
            pa52: shift == 16 && eff_ps == 52,
            stage2: true,
            had: true,
            ha,
            hd,
            affd: raw.s2affd(),
            xnx: self.cfg.xnx,
        };
        // The start level must resolve between 1 bit and a concatenation
        // of at most 16 tables.
        let lsb = tt.level_lsb(start_level);
        if ias <= lsb || ias - lsb > tt.stride() + 4 {
            return None;
        }
        if start_level == 1 && shift == 16 && !tt.pa52 {
            return None;
        }
        if tt.ttb >> eff_ps != 0 {
            return None;
        }
        // Bits below the start table's alignment are treated as zero.
        let mut tt = tt;
        tt.ttb &= !(tt.start_table_bytes() - 1);
        if raw.s2s() && self.cfg.stall_model == StallModel::TerminateOnly {
            return None;
        }
        let vmid = if self.cfg.vmid16 {
            raw.s2vmid()
        } else {
            raw.s2vmid() & 0xff
        };
        if !self.cfg.vmid16 && raw.s2vmid() >> 8 != 0 {
            return None;
        }
        Some(S2Ste {
            tt,
            vmid,
            record: raw.s2r(),
            stall: self.stall_allowed(raw.s2s()),
        })
    }

    fn decode_ste(&self, raw: &RawSte) -> Option<Ste> {
        if !raw.valid() {
            return None;
        }
        // Config 0b0xx other than 0b000 is reserved and behaves as abort.
        let config = match raw.config() {
            c @ (ste_config::BYPASS | ste_config::S1 | ste_config::S2 | ste_config::NESTED) => c,
            _ => ste_config::ABORT,
        };
        let (s1_on, s2_on) = match config {
            ste_config::S1 => (true, false),
            ste_config::S2 => (false, true),
            ste_config::NESTED => (true, true),
            _ => (false, false),
        };
        if (s1_on && !self.cfg.stage1) || (s2_on && !self.cfg.stage2) {
            return None;
        }
        let s2 = if s2_on {
            Some(self.decode_s2(raw)?)
        } else {
            None
        };
        let mut el2 = false;
        let s1 = if s1_on {
            // Without substream support S1CDMax is IGNORED.
            let cdmax = if self.cfg.ssid_bits == 0 {
                0
            } else {
                raw.s1cdmax()
            };
            if cdmax > u32::from(self.cfg.ssid_bits) {
                return None;
            }
            // S1Fmt 0b11 is reserved and behaves as linear.
            let fmt = match raw.s1fmt() {
                _ if cdmax == 0 => 0,
                3 => 0,
                f => f,
            };
            if fmt != 0 && !self.cfg.cd2l {
                return None;
            }
            // The CD table pointer is an IPA when stage 2 is on.
            let in_bits = s2.map_or(u32::from(self.cfg.oas_bits), |s| s.tt.ias);
            if raw.s1_context_ptr() >> in_bits != 0 {
                return None;
            }
            match raw.strw() {
                0 => {}
                2 if self.cfg.hyp && !s2_on => el2 = true,
                _ => return None,
            }
            Some(S1Ste {
                ctx_ptr: raw.s1_context_ptr(),
                fmt,
                cdmax,
                // S1DSS 0b11 is reserved and behaves as terminate.
                s1dss: if raw.s1dss() == 3 { 0 } else { raw.s1dss() },
                stalld: raw.s1stalld(),
            })
        } else {
            None
        };
        // S2VMID tags NS-EL1 translations of either stage when stage 2 is
        // implemented; EL2 StreamWorld and bypass ignore it.
        let vmid = match s2 {
            Some(s) => s.vmid,
            None if self.cfg.stage2 && s1_on && !el2 => {
                if !self.cfg.vmid16 && raw.s2vmid() >> 8 != 0 {
                    return None;
                }
                raw.s2vmid()
            }
            None => 0,
        };
        // Overrides exist only with IDR1.ATTR_PERMS_OVR; 0b01 is reserved
        // and behaves as "use incoming".
        let ovr = |v: u64| {
            if self.cfg.attr_perms_ovr && v != 1 {
                v
            } else {
                0
            }
        };
        Some(Ste {
            config,
            s1,
            s2,
            vmid,
            el2,
            eats: if self.cfg.ats { raw.eats() } else { 0 },
            privcfg: ovr(raw.privcfg()),
            instcfg: ovr(raw.instcfg()),
        })
    }

    fn decode_cd(&self, raw: &RawCd, ste: &Ste) -> Option<Cd> {
        // ENDI only matters when a table is walked at all.
        if !raw.valid() || !raw.aa64() || (raw.endi() && !(raw.epd(0) && raw.epd(1))) {
            return None;
        }
        // IPS 0b111 is reserved and behaves as 0b110 (52 bits) from v3.1;
        // values above the OAS are capped to it.
        let ips_field = if raw.ips() == 7 { 6 } else { raw.ips() };
        let ips = u32::from(oas_field_to_bits(ips_field)?).min(u32::from(self.cfg.oas_bits));
        if raw.stall()
            && (self.cfg.stall_model == StallModel::TerminateOnly
                || ste.s1.is_some_and(|s| s.stalld))
        {
            return None;
        }
        if !raw.abort() && self.cfg.term_model_abort_only {
            return None;
        }
        if !self.cfg.asid16 && raw.asid() >> 8 != 0 {
            return None;
        }
        let (ha, hd) = self.httu_bits(raw.ha(), raw.hd())?;
        let mut tt = [None, None];
        for sel in 0..2u32 {
            if raw.epd(sel) {
                continue;
            }
            let shift = granule_shift_s1(raw.tg(sel), sel)?;
            if !self.granule_ok(shift) {
                return None;
            }
            let tsz = raw.tsz(sel);
            let min_tsz = if shift == 16 && self.cfg.vax52 {
                12
            } else {
                16
            };
            if !(min_tsz..=39).contains(&tsz) {
                return None;
            }
            let ias = 64 - tsz;
            let oas = if shift == 16 { ips } else { ips.min(48) };
            let stride = shift - 3;
            let levels = (ias - shift).div_ceil(stride);
            let t = TableCfg {
                shift,
                start_level: 4 - levels,
                ias,
                ttb: raw.ttb(sel),
                oas,
                pa52: shift == 16 && oas == 52,
                stage2: false,
                had: self.cfg.had && raw.had(sel),
                ha,
                hd,
                affd: raw.affd(),
                xnx: false,
            };
            if t.ttb >> oas != 0 {
                return None;
            }
            // The SMMU aligns TTB to the start table (64 bytes at least).
            let mut t = t;
            t.ttb &= !(t.start_table_bytes() - 1);
            tt[sel as usize] = Some(t);
        }
        let tbi = raw.tbi();
        let regime = if ste.el2 {
            1
        } else if ste.s2.is_some() {
            3
        } else {
            0
        };
        Some(Cd {
            space: (regime, ste.vmid),
            asid: raw.asid(),
            tt,
            tbi: [tbi & 1 != 0, tbi & 2 != 0],
            perm: S1Perm {
                wxn: raw.wxn(),
                pan: raw.pan(),
            },
            record: raw.record(),
            stall: self.stall_allowed(raw.stall()),
            abort: raw.abort() || self.cfg.term_model_abort_only,
        })
    }

    // ---- structure fetching -------------------------------------------

    fn read_words<const N: usize>(&self, pa: u64) -> Option<[u64; N]> {
        let mut b = [0u8; 64];
        self.mem.dev_read(pa, &mut b[..N * 8]).ok()?;
        let mut w = [0u64; N];
        for (i, x) in w.iter_mut().enumerate() {
            let mut le = [0u8; 8];
            le.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *x = u64::from_le_bytes(le);
        }
        Some(w)
    }

    fn get_ste(&mut self, sid: u32) -> Result<Ste, Stop> {
        if let Some(s) = self.ste_cache.get(&sid) {
            self.stats.ste_hits += 1;
            return Ok(*s);
        }
        self.stats.ste_misses += 1;
        let ev = |k| Stop::Config(Event::new(k, sid));
        let cfg = self.regs.strtab_base_cfg;
        let log2size = (cfg & strtab::LOG2SIZE_MASK).min(u32::from(self.cfg.sid_bits));
        if u64::from(sid) >> log2size != 0 {
            return Err(ev(EventType::CBadStreamId));
        }
        let base = self.regs.strtab_base & strtab::ADDR_MASK;
        let two_level = (cfg >> strtab::FMT_SHIFT) & 3 == 1 && self.cfg.two_level_strtab;
        // (array base, first StreamID of the array, STEs in the array)
        let ste_pa = if two_level {
            let split = self.strtab_split();
            let l1idx = sid >> split;
            let l1 = match self.l1std_cache.get(&l1idx) {
                Some(&d) => d,
                None => {
                    let pa = base + u64::from(l1idx) * 8;
                    let Ok(d) = self.mem.dev_read_u64(pa) else {
                        return Err(Stop::Config(Event {
                            addr2: pa,
                            ..Event::new(EventType::FSteFetch, sid)
                        }));
                    };
                    d
                }
            };
            let span = l1std_span(l1);
            // Span 0 means no level-2 table; a Span above 11 is reserved and
            // one above SPLIT + 1 is out of bounds: all behave as 0 (QEMU
            // accepts one more). The StreamID is then invalid.
            if span == 0 || span > 11 || span > split + 1 {
                return Err(ev(EventType::CBadStreamId));
            }
            self.l1std_cache.insert(l1idx, l1);
            let l2idx = sid & ((1 << split) - 1);
            if u64::from(l2idx) >= 1u64 << (span - 1) {
                return Err(ev(EventType::CBadStreamId));
            }
            // The level-2 array is aligned to its size by the SMMU.
            let l2 = l1std_l2ptr(l1) & !((STE_SIZE << (span - 1)) - 1);
            (l2, sid & !((1 << split) - 1), 1u64 << (span - 1))
        } else {
            (base, 0, 1u64 << log2size)
        };
        let (array, array_first, array_len) = ste_pa;
        let ste_pa = array + u64::from(sid - array_first) * STE_SIZE;
        let Some(words) = self.read_words::<8>(ste_pa) else {
            return Err(Stop::Config(Event {
                addr2: ste_pa,
                ..Event::new(EventType::FSteFetch, sid)
            }));
        };
        let Some(ste) = self.decode_ste(&RawSte(words)) else {
            return Err(ev(EventType::CBadSte));
        };
        self.check_ste_span(sid, &words, array, array_first, array_len)?;
        self.ste_cache.insert(sid, ste);
        Ok(ste)
    }

    /// Checks the STE.CONT promise: every STE of the contiguous span
    /// (capped to the array holding it) is identical but for CONT. A broken
    /// promise is reported as F_CFG_CONFLICT, one of the architected
    /// outcomes.
    fn check_ste_span(
        &self,
        sid: u32,
        words: &[u64; 8],
        array: u64,
        array_first: u32,
        array_len: u64,
    ) -> Result<(), Stop> {
        const CONT: u64 = 0xf << 13;
        let cont = crate::layout::bits(words[1], 16, 13) as u32;
        if cont == 0 {
            return Ok(());
        }
        let n = 1u64 << cont;
        let first = u64::from(sid) & !(n - 1);
        let lo = first.max(u64::from(array_first));
        let hi = (first + n).min(u64::from(array_first) + array_len);
        for other in lo..hi {
            let pa = array + (other - u64::from(array_first)) * STE_SIZE;
            let Some(o) = self.read_words::<8>(pa) else {
                return Err(Stop::Config(Event {
                    addr2: pa,
                    ..Event::new(EventType::FSteFetch, sid)
                }));
            };
            let same = o.iter().zip(words).enumerate().all(|(i, (a, b))| {
                let mask = if i == 1 { !CONT } else { u64::MAX };
                (a ^ b) & mask == 0
            });
            if !same {
                return Err(Stop::Config(Event::new(EventType::FCfgConflict, sid)));
            }
        }
        Ok(())
    }

    /// Translates a structure address through stage 2 when the STE nests.
    fn s2_fetch_addr(
        &mut self,
        ste: &Ste,
        ipa: u64,
        class: FaultClass,
        base_ev: Event,
    ) -> Result<u64, Stop> {
        let Some(s2) = ste.s2 else {
            return Ok(ipa);
        };
        let acc = Access {
            write: false,
            privileged: true,
            instruction: false,
        };
        self.s2_translate(&s2, ipa, acc)
            .map(|(pa, _)| pa)
            .map_err(|f| self.s2_stop(&s2, f, ipa, class, base_ev))
    }

    fn s2_stop(
        &mut self,
        s2: &S2Ste,
        f: WalkFault,
        ipa: u64,
        class: FaultClass,
        base_ev: Event,
    ) -> Stop {
        let ev = Event {
            kind: f.kind,
            s2: true,
            class,
            // The record holds FetchAddr[55:3] for aborts and IPA[55:12]
            // for translation-related faults.
            addr2: if f.kind == EventType::FWalkEabt {
                f.fetch_pa
            } else {
                ipa & !0xfff
            },
            ..base_ev
        };
        if f.kind.is_translation_fault() {
            Stop::Fault {
                ev,
                record: s2.record,
                stall: s2.stall,
                abort: true,
            }
        } else {
            Stop::Config(ev)
        }
    }

    fn get_cd(
        &mut self,
        sid: u32,
        ste: &Ste,
        s1: &S1Ste,
        ssid: u32,
        base_ev: Event,
    ) -> Result<Cd, Stop> {
        if let Some(c) = self.cd_cache.get(&(sid, ssid)) {
            self.stats.cd_hits += 1;
            return Ok(*c);
        }
        self.stats.cd_misses += 1;
        let cd_ev = |k| Stop::Config(Event { kind: k, ..base_ev });
        // Tables are aligned to their size: the SMMU treats the RES0 low
        // pointer bits as zero.
        let cd_ipa = if s1.fmt == 0 {
            let table = s1.ctx_ptr & !((64u64 << s1.cdmax) - 1);
            table + u64::from(ssid) * 64
        } else {
            let split = if s1.fmt == 1 { 6 } else { 10 };
            let l1_bytes = (8u64 << s1.cdmax.saturating_sub(split)).max(64);
            let l1_base = s1.ctx_ptr & !(l1_bytes - 1);
            let l1idx = ssid >> split;
            let l1 = match self.l1cd_cache.get(&(sid, l1idx)) {
                Some(&d) => d,
                None => {
                    let ipa = l1_base + u64::from(l1idx) * 8;
                    let pa = self.s2_fetch_addr(ste, ipa, FaultClass::Cd, base_ev)?;
                    let Ok(d) = self.mem.dev_read_u64(pa) else {
                        return Err(Stop::Config(Event {
                            kind: EventType::FCdFetch,
                            addr2: pa,
                            ..base_ev
                        }));
                    };
                    if !l1cd_valid(d) {
                        return Err(cd_ev(EventType::CBadSubstreamId));
                    }
                    self.l1cd_cache.insert((sid, l1idx), d);
                    d
                }
            };
            let l2 = l1cd_l2ptr(l1) & !((64u64 << split) - 1);
            l2 + u64::from(ssid & ((1 << split) - 1)) * 64
        };
        let cd_pa = self.s2_fetch_addr(ste, cd_ipa, FaultClass::Cd, base_ev)?;
        let Some(words) = self.read_words::<8>(cd_pa) else {
            return Err(Stop::Config(Event {
                kind: EventType::FCdFetch,
                addr2: cd_pa,
                ..base_ev
            }));
        };
        let Some(cd) = self.decode_cd(&RawCd(words), ste) else {
            return Err(cd_ev(EventType::CBadCd));
        };
        // Two cached CDs that share an ASID (in one VMID and regime) but
        // describe different tables would make their TLB entries alias: a
        // driver reused an ASID without CFGI_CD/TLBI. Report the conflict
        // instead of translating through whichever entry happens to hit.
        let conflict = self.cd_cache.iter().any(|(k, o)| {
            *k != (sid, ssid)
                && o.space == cd.space
                && o.asid == cd.asid
                && (o.tt != cd.tt || o.tbi != cd.tbi || o.perm != cd.perm)
        });
        if conflict {
            return Err(cd_ev(EventType::FCfgConflict));
        }
        self.cd_cache.insert((sid, ssid), cd);
        Ok(cd)
    }

    fn context(&mut self, sid: u32, ssid: Option<u32>, base_ev: Event) -> Result<Ctx, Stop> {
        let key = ctx_key(sid, ssid.unwrap_or(NO_SSID));
        if let Some(c) = self.ctx_cache.get(&key) {
            self.stats.ste_hits += 1;
            return Ok(*c);
        }
        let ste = self.get_ste(sid)?;
        let bad_ssid = || Stop::Config(Event::new(EventType::CBadSubstreamId, sid).with_ssid(ssid));
        let mut cd = None;
        let mode = match (ste.config, ste.s1) {
            (ste_config::ABORT, _) => Mode::Abort,
            (_, None) => {
                if ssid.is_some() {
                    return Err(bad_ssid());
                }
                if ste.s2.is_some() {
                    Mode::S2
                } else {
                    Mode::Bypass
                }
            }
            (_, Some(s1)) => {
                let use_ssid = match ssid {
                    Some(s) => {
                        if s1.cdmax == 0 || u64::from(s) >> s1.cdmax != 0 {
                            return Err(bad_ssid());
                        }
                        if s == 0 && s1.s1dss == 2 {
                            // Substream 0 belongs to traffic without one.
                            let ev = Event::new(EventType::FStreamDisabled, sid);
                            return Err(Stop::Config(ev.with_ssid(ssid)));
                        }
                        Some(s)
                    }
                    None if s1.cdmax == 0 => Some(0),
                    None => match s1.s1dss {
                        0 => {
                            return Err(Stop::Config(Event::new(EventType::FStreamDisabled, sid)));
                        }
                        1 => None,
                        _ => Some(0),
                    },
                };
                match use_ssid {
                    None => {
                        if ste.s2.is_some() {
                            Mode::S2
                        } else {
                            Mode::Bypass
                        }
                    }
                    Some(s) => {
                        cd = Some(self.get_cd(sid, &ste, &s1, s, base_ev)?);
                        if ste.s2.is_some() {
                            Mode::Nested
                        } else {
                            Mode::S1
                        }
                    }
                }
            }
        };
        let (regime, asid) = match mode {
            Mode::S1 if ste.el2 => (Regime::El2, cd.map_or(0, |c| c.asid)),
            Mode::S1 => (Regime::Nh, cd.map_or(0, |c| c.asid)),
            Mode::Nested => (Regime::Nested, cd.map_or(0, |c| c.asid)),
            _ => (Regime::S2, 0),
        };
        let mut sizes = [0u32; 9];
        let mut n = 0;
        let mut add = |s: u32| {
            if !sizes[..n].contains(&s) && n < sizes.len() {
                sizes[n] = s;
                n += 1;
            }
        };
        if matches!(mode, Mode::S1 | Mode::Nested) {
            for t in cd.iter().flat_map(|c| c.tt.iter().flatten()) {
                level_sizes(t).for_each(&mut add);
            }
        }
        if matches!(mode, Mode::S2 | Mode::Nested) {
            if let Some(s2) = ste.s2 {
                level_sizes(&s2.tt).for_each(&mut add);
            }
        }
        sizes[..n].sort_unstable();
        let ctx = Ctx {
            mode,
            ste,
            cd,
            tag: Tag {
                regime,
                vmid: ste.vmid,
                asid,
            },
            sizes,
            nsizes: n,
        };
        self.ctx_cache.insert(key, ctx);
        Ok(ctx)
    }

    // ---- translation ----------------------------------------------------

    /// Translates through stage 2 only (data IPA or a structure/table
    /// fetch of a nested stage 1), using and filling the TLB.
    fn s2_translate(
        &mut self,
        s2: &S2Ste,
        ipa: u64,
        acc: Access,
    ) -> Result<(u64, TlbEntry), WalkFault> {
        let tt = s2.tt;
        if ipa >> tt.ias != 0 {
            return Err(WalkFault {
                kind: EventType::FTranslation,
                level: tt.start_level,
                fetch_pa: 0,
            });
        }
        let tag = Tag {
            regime: Regime::S2,
            vmid: s2.vmid,
            asid: 0,
        };
        let sizes = [tt.level_lsb(3), tt.level_lsb(2), tt.level_lsb(1)];
        let sizes = &sizes[..(4 - tt.start_level.max(1)) as usize];
        if let Some(e) = self.tlb.lookup(tag, ipa, sizes).copied() {
            if e.perms.allows(acc) {
                self.stats.tlb_hits += 1;
                return Ok((e.out_base + (ipa & ((1 << e.size_log2) - 1)), e));
            }
            if !(acc.write && e.perms.dirty_on_write) {
                return Err(WalkFault {
                    kind: EventType::FPermission,
                    level: e.level,
                    fetch_pa: 0,
                });
            }
        }
        self.stats.tlb_misses += 1;
        self.last = None;
        let start = self.walk_start(tag, &tt, ipa);
        let mem = self.mem.clone();
        let mut steps = [(0, 0, TableAttrs::default()); 4];
        let mut nsteps = 0;
        self.stats.walks += 1;
        let r = walk::walk::<()>(
            &mem,
            &tt,
            start,
            ipa,
            acc,
            S1Perm::default(),
            &mut |a| Ok(a),
            &mut steps,
            &mut nsteps,
        );
        let leaf = match r {
            Ok(r) => r,
            Err(()) => unreachable_fault(),
        };
        self.note_steps(tag, &tt, ipa, &steps[..nsteps]);
        self.trace(|| TraceEntry::Walk {
            stage2: true,
            ia: ipa,
            result: leaf.map(|l| l.oa_base).map_err(|f| f.kind),
        });
        let leaf = leaf?;
        self.count_leaf(&leaf);
        let e = TlbEntry {
            out_base: leaf.oa_base,
            size_log2: leaf.size_log2,
            match_base: ipa & !((1 << leaf.size_log2) - 1),
            match_size_log2: leaf.size_log2,
            level: leaf.level,
            granule_shift: tt.shift,
            global: false,
            perms: leaf.perms,
            s1_perms: Perms::all(),
            ipa_base: 0,
        };
        if self.tlb.insert(tag, ipa, e) {
            return Err(WalkFault {
                kind: EventType::FTlbConflict,
                level: leaf.level,
                fetch_pa: 0,
            });
        }
        Ok((leaf.oa_base + (ipa & ((1 << leaf.size_log2) - 1)), e))
    }

    fn count_leaf(&mut self, leaf: &Leaf) {
        self.stats.descriptor_reads += u64::from(leaf.reads);
        self.stats.httu_updates += u64::from(leaf.updates);
    }

    /// Returns where a walk of `ia` starts: the deepest cached table
    /// descriptor, or the configured start table.
    fn walk_start(&mut self, tag: Tag, tt: &TableCfg, ia: u64) -> Start {
        let mut levels = [(0u32, 0u32); 3];
        let mut n = 0;
        for l in (tt.start_level..3).rev() {
            levels[n] = (l, tt.level_lsb(l));
            n += 1;
        }
        match self.tlb.walk_lookup(tag, ia, &levels[..n]) {
            Some((level, w)) if w.granule_shift == tt.shift => {
                self.stats.walk_cache_hits += 1;
                Start {
                    level: level + 1,
                    table: w.next_table,
                    attrs: w.attrs,
                }
            }
            _ => Start {
                level: tt.start_level,
                table: tt.ttb,
                attrs: TableAttrs::default(),
            },
        }
    }

    fn note_steps(&mut self, tag: Tag, tt: &TableCfg, ia: u64, steps: &[(u32, u64, TableAttrs)]) {
        for &(level, next, attrs) in steps {
            let w = WalkEntry {
                next_table: next,
                attrs,
                granule_shift: tt.shift,
            };
            self.tlb.walk_insert(tag, ia, tt.level_lsb(level), w);
        }
    }

    /// Turns a stop into the DMA fault, recording the event as the
    /// architecture says.
    fn finish(&mut self, stop: Stop) -> DmaFault {
        match stop {
            Stop::Global => DmaFault::GlobalAbort,
            Stop::StreamAbort => DmaFault::StreamAbort,
            Stop::Config(ev) => {
                // Invalid StreamIDs are only reported when software asks.
                let recorded = if ev.kind == EventType::CBadStreamId && self.regs.cr2 & 2 == 0 {
                    self.stats.events[usize::from(ev.kind.code())] += 1;
                    self.stats.events_suppressed += 1;
                    false
                } else {
                    self.record_event(ev)
                };
                DmaFault::Terminated {
                    event: ev,
                    recorded,
                    termination: Termination::Abort,
                }
            }
            Stop::Fault {
                mut ev,
                record,
                stall,
                abort,
            } => {
                if stall {
                    ev.stall = true;
                    ev.stag = self.alloc_stag();
                    self.stats.stalls += 1;
                    self.stalled.push(super::Stalled {
                        sid: ev.sid,
                        stag: ev.stag,
                    });
                    self.record_event(ev);
                    return DmaFault::Stalled { event: ev };
                }
                let recorded = if record {
                    self.record_event(ev)
                } else {
                    self.stats.events[usize::from(ev.kind.code())] += 1;
                    self.stats.events_suppressed += 1;
                    false
                };
                DmaFault::Terminated {
                    event: ev,
                    recorded,
                    termination: if abort {
                        Termination::Abort
                    } else {
                        Termination::RazWi
                    },
                }
            }
        }
    }

    /// Serves a translation from the one-entry copy of the TLB entry used
    /// last (same stream, same page), which any command, register write or
    /// TLB miss drops; so it never outlives the entry it copies.
    #[inline]
    fn last_hit(&mut self, req: &DmaRequest, iova: u64) -> Option<Translation> {
        let l = self.last.as_ref()?;
        if l.sid != req.sid
            || l.ssid != req.ssid.unwrap_or(NO_SSID)
            || iova >> l.size_log2 != l.page
            || req.ats_translated
            || self.trace.is_some()
            || (l.size_log2 >= 21 && self.tlb.rewalks_blocks())
        {
            return None;
        }
        let acc = Access {
            write: req.write,
            privileged: req.privileged,
            instruction: req.instruction && !req.write,
        };
        if !l.perms.allows(acc) {
            return None;
        }
        let off = iova & ((1 << l.size_log2) - 1);
        let t = Translation {
            pa: l.out_base + off,
            bytes_left: (1 << l.size_log2) - off,
            bypass: false,
            tlb_hit: true,
        };
        self.stats.tlb_hits += 1;
        Some(t)
    }

    /// Serves a TLB hit of an already cached context by reference, without
    /// building the fault-reporting state the full path needs.
    #[inline]
    fn cached_hit(&mut self, req: &DmaRequest, iova: u64) -> Option<Translation> {
        if self.regs.cr0 & cr0::SMMUEN == 0 || req.ats_translated || self.trace.is_some() {
            return None;
        }
        let (sid, ssid) = (req.sid, req.ssid.unwrap_or(NO_SSID));
        let ctx = self.ctx_cache.get(&ctx_key(sid, ssid))?;
        if ctx.ste.privcfg != 0 || ctx.ste.instcfg != 0 {
            return None;
        }
        let ia = match ctx.mode {
            Mode::S2 => iova,
            Mode::S1 | Mode::Nested => {
                let cd = ctx.cd.as_ref()?;
                let sel = usize::from(iova >> 55 & 1 == 1);
                let tt = cd.tt[sel].as_ref()?;
                let hi = if cd.tbi[sel] { 55 } else { 63 };
                let top = crate::layout::bits(iova, hi, tt.ias);
                let ones = (1u64 << (hi - tt.ias + 1)) - 1;
                let want = if sel == 0 { 0 } else { ones };
                if top != want {
                    return None;
                }
                let low = iova & ((1u64 << tt.ias) - 1);
                if sel == 1 {
                    low | !((1u64 << tt.ias) - 1)
                } else {
                    low
                }
            }
            _ => return None,
        };
        let acc = Access {
            write: req.write,
            privileged: req.privileged,
            instruction: req.instruction && !req.write,
        };
        let Some(&e) = self.tlb.lookup(ctx.tag, ia, &ctx.sizes[..ctx.nsizes]) else {
            // The full path need not look again.
            self.known_miss = ctx.mode != Mode::S2;
            return None;
        };
        if !e.perms.allows(acc) {
            return None;
        }
        self.stats.tlb_hits += 1;
        self.stats.ste_hits += 1;
        if ia == iova {
            self.last = Some(super::LastHit {
                sid,
                ssid,
                page: ia >> e.size_log2,
                size_log2: e.size_log2,
                out_base: e.out_base,
                perms: e.perms,
            });
        }
        let off = ia & ((1 << e.size_log2) - 1);
        Some(Translation {
            pa: e.out_base + off,
            bytes_left: (1 << e.size_log2) - off,
            bypass: false,
            tlb_hit: true,
        })
    }

    fn remember(&mut self, ctx: &Ctx, ev: Event, ia: u64, e: &TlbEntry) {
        if ctx.ste.privcfg != 0 || ctx.ste.instcfg != 0 {
            return;
        }
        self.last = Some(super::LastHit {
            sid: ev.sid,
            ssid: ev.ssid.unwrap_or(NO_SSID),
            page: ia >> e.size_log2,
            size_log2: e.size_log2,
            out_base: e.out_base,
            perms: e.perms,
        });
    }

    pub(super) fn translate(
        &mut self,
        req: &DmaRequest,
        iova: u64,
    ) -> Result<Translation, DmaFault> {
        self.stats.translations += 1;
        self.known_miss = false;
        if let Some(s) = req.ssid.filter(|s| s >> MAX_SSID_BITS != 0) {
            if self.regs.cr0 & cr0::SMMUEN != 0 {
                // Kept away from the caches, whose keys only tell apart
                // architecturally possible SubstreamIDs.
                let stop = self.wide_ssid(req.sid, s);
                return Err(self.finish(stop));
            }
        }
        if let Some(t) = self.last_hit(req, iova) {
            return Ok(t);
        }
        if let Some(t) = self.cached_hit(req, iova) {
            return Ok(t);
        }
        match self.translate_inner(req, iova) {
            Ok(t) => Ok(t),
            Err(stop) => Err(self.finish(stop)),
        }
    }

    /// Returns how a transaction with a SubstreamID wider than the
    /// architecture's 20 bits ends: no CD can be selected by it, so after
    /// the stream's own checks (invalid StreamID, STE fetch, bad or
    /// aborting STE) it is C_BAD_SUBSTREAMID. The event carries the 20 bits
    /// its record can hold, so the event returned equals the one recorded.
    fn wide_ssid(&mut self, sid: u32, ssid: u32) -> Stop {
        match self.get_ste(sid) {
            Err(stop) => stop,
            Ok(ste) if ste.config == ste_config::ABORT => Stop::StreamAbort,
            Ok(_) => Stop::Config(
                Event::new(EventType::CBadSubstreamId, sid)
                    .with_ssid(Some(ssid & ((1 << MAX_SSID_BITS) - 1))),
            ),
        }
    }

    fn translate_inner(&mut self, req: &DmaRequest, iova: u64) -> Result<Translation, Stop> {
        let bypass = |pa: u64| Translation {
            pa,
            bytes_left: 0x1000 - (pa & 0xfff),
            bypass: true,
            tlb_hit: false,
        };
        if self.regs.cr0 & cr0::SMMUEN == 0 {
            if self.regs.gbpa & gbpa::ABORT != 0 {
                return Err(Stop::Global);
            }
            return Ok(bypass(iova));
        }
        let sid = req.sid;
        let mut acc = Access {
            write: req.write,
            privileged: req.privileged,
            instruction: req.instruction && !req.write,
        };
        let base_ev = Event {
            privileged: acc.privileged,
            instruction: acc.instruction,
            read: !acc.write,
            input_addr: iova,
            ..Event::new(EventType::FTranslation, sid).with_ssid(req.ssid)
        };
        let ctx = self.context(sid, req.ssid, base_ev)?;
        match ctx.ste.privcfg {
            2 => acc.privileged = false,
            3 => acc.privileged = true,
            _ => {}
        }
        match ctx.ste.instcfg {
            2 => acc.instruction = false,
            3 => acc.instruction = !acc.write,
            _ => {}
        }
        let base_ev = Event {
            privileged: acc.privileged,
            instruction: acc.instruction,
            ..base_ev
        };
        // An aborting STE aborts translated traffic too, silently.
        if req.ats_translated && !matches!(ctx.mode, Mode::Bypass | Mode::Abort) {
            if ctx.ste.eats == 0 {
                return Err(Stop::Config(Event {
                    kind: EventType::FTranslForbidden,
                    ..base_ev
                }));
            }
            return Ok(bypass(iova));
        }
        // With stage 1 bypassed its output is the input address, which must
        // fit the implemented address size (IAS = OAS here).
        let s1_bypass_too_wide = iova >> self.cfg.oas_bits != 0;
        let bypass_fault = || {
            Stop::Config(Event {
                kind: EventType::FAddrSize,
                ..base_ev
            })
        };
        match ctx.mode {
            Mode::Abort => Err(Stop::StreamAbort),
            Mode::Bypass if s1_bypass_too_wide => Err(bypass_fault()),
            Mode::Bypass => Ok(bypass(iova)),
            Mode::S2 if s1_bypass_too_wide => Err(bypass_fault()),
            Mode::S2 => {
                let s2 = ctx.ste.s2.unwrap_or_else(unreachable_s2);
                match self.s2_translate(&s2, iova, acc) {
                    Ok((pa, e)) => {
                        self.remember(&ctx, base_ev, iova, &e);
                        Ok(Translation {
                            pa,
                            bytes_left: (1u64 << e.size_log2) - (iova & ((1 << e.size_log2) - 1)),
                            bypass: false,
                            tlb_hit: false,
                        })
                    }
                    Err(f) => Err(self.s2_stop(&s2, f, iova, FaultClass::Input, base_ev)),
                }
            }
            Mode::S1 | Mode::Nested => self.s1_translate(&ctx, iova, acc, base_ev),
        }
    }

    fn s1_translate(
        &mut self,
        ctx: &Ctx,
        va: u64,
        acc: Access,
        base_ev: Event,
    ) -> Result<Translation, Stop> {
        let Some(cd) = ctx.cd else {
            return Err(Stop::Config(Event {
                kind: EventType::CBadCd,
                ..base_ev
            }));
        };
        let s1_fault = |kind: EventType| Stop::Fault {
            ev: Event { kind, ..base_ev },
            record: cd.record,
            stall: cd.stall,
            abort: cd.abort,
        };
        // Select TTB0 or TTB1 from the top of the address (bit 55 decides
        // when the top byte is ignored).
        let sel = usize::from(va >> 55 & 1 == 1);
        let Some(tt) = cd.tt[sel] else {
            return Err(s1_fault(EventType::FTranslation));
        };
        let hi = if cd.tbi[sel] { 55 } else { 63 };
        let top = crate::layout::bits(va, hi, tt.ias);
        let ones = (1u64 << (hi - tt.ias + 1)) - 1;
        if (sel == 0 && top != 0) || (sel == 1 && top != ones) {
            return Err(s1_fault(EventType::FTranslation));
        }
        let ia = va & ((1u64 << tt.ias) - 1);
        let key_va = if sel == 1 {
            ia | !((1u64 << tt.ias) - 1)
        } else {
            ia
        };
        let tag = ctx.tag;
        let s2 = if ctx.mode == Mode::Nested {
            ctx.ste.s2
        } else {
            None
        };

        let cached = if std::mem::take(&mut self.known_miss) {
            None
        } else {
            self.tlb
                .lookup(tag, key_va, &ctx.sizes[..ctx.nsizes])
                .copied()
        };
        if let Some(e) = cached {
            let off = key_va & ((1 << e.size_log2) - 1);
            if e.perms.allows(acc) {
                self.stats.tlb_hits += 1;
                if key_va == va {
                    self.remember(ctx, base_ev, va, &e);
                }
                self.trace(|| TraceEntry::TlbHit {
                    sid: base_ev.sid,
                    iova: va,
                });
                return Ok(Translation {
                    pa: e.out_base + off,
                    bytes_left: (1 << e.size_log2) - off,
                    bypass: false,
                    tlb_hit: true,
                });
            }
            if !(acc.write && e.perms.dirty_on_write) {
                // A stale entry keeps faulting until it is invalidated.
                if let (Some(s2), true) = (s2, e.s1_perms.allows(acc)) {
                    let f = WalkFault {
                        kind: EventType::FPermission,
                        level: 3,
                        fetch_pa: 0,
                    };
                    let ipa = e.ipa_base + off;
                    return Err(self.s2_stop(&s2, f, ipa, FaultClass::Input, base_ev));
                }
                return Err(s1_fault(EventType::FPermission));
            }
        }
        self.stats.tlb_misses += 1;
        self.last = None;

        let start = self.walk_start(tag, &tt, key_va);
        let mem = self.mem.clone();
        let mut steps = [(0, 0, TableAttrs::default()); 4];
        let mut nsteps = 0;
        self.stats.walks += 1;
        let walk_acc = acc;
        let r = {
            let mut fetch = |desc_ipa: u64| -> Result<u64, Stop> {
                match s2 {
                    None => Ok(desc_ipa),
                    Some(s2) => {
                        let racc = Access {
                            write: false,
                            privileged: true,
                            instruction: false,
                        };
                        self.s2_translate(&s2, desc_ipa, racc)
                            .map(|(pa, _)| pa)
                            .map_err(|f| {
                                self.s2_stop(&s2, f, desc_ipa, FaultClass::TableWalk, base_ev)
                            })
                    }
                }
            };
            walk::walk::<Stop>(
                &mem,
                &tt,
                start,
                ia,
                walk_acc,
                cd.perm,
                &mut fetch,
                &mut steps,
                &mut nsteps,
            )
        }?;
        self.note_steps(tag, &tt, key_va, &steps[..nsteps]);
        self.trace(|| TraceEntry::Walk {
            stage2: false,
            ia: va,
            result: r.map(|l| l.oa_base).map_err(|f| f.kind),
        });
        let leaf = match r {
            Ok(l) => l,
            Err(f) => {
                if !f.kind.is_translation_fault() {
                    return Err(Stop::Config(Event {
                        kind: f.kind,
                        class: FaultClass::TableWalk,
                        addr2: f.fetch_pa,
                        ..base_ev
                    }));
                }
                return Err(s1_fault(f.kind));
            }
        };
        self.count_leaf(&leaf);
        let s1_off = ia & ((1 << leaf.size_log2) - 1);
        let ipa = leaf.oa_base + s1_off;
        let (pa, size_log2, perms) = match s2 {
            None => (ipa, leaf.size_log2, leaf.perms),
            Some(s2) => {
                let (pa, e2) = self
                    .s2_translate(&s2, ipa, acc)
                    .map_err(|f| self.s2_stop(&s2, f, ipa, FaultClass::Input, base_ev))?;
                let size = leaf.size_log2.min(e2.size_log2);
                (pa, size, leaf.perms.and(e2.perms))
            }
        };
        let out_base = pa & !((1u64 << size_log2) - 1);
        let e = TlbEntry {
            out_base,
            size_log2,
            match_base: key_va & !((1 << leaf.size_log2) - 1),
            match_size_log2: leaf.size_log2,
            level: leaf.level,
            granule_shift: tt.shift,
            global: !leaf.not_global,
            perms,
            s1_perms: leaf.perms,
            ipa_base: ipa & !((1u64 << size_log2) - 1),
        };
        // Entries that a write would dirty stay uncached for writes: the
        // next write walks again and sets the dirty state.
        if self.tlb.insert(tag, key_va, e) {
            return Err(s1_fault(EventType::FTlbConflict));
        }
        if key_va == va {
            self.remember(ctx, base_ev, va, &e);
        }
        let off = key_va & ((1 << size_log2) - 1);
        Ok(Translation {
            pa,
            bytes_left: (1 << size_log2) - off,
            bypass: false,
            tlb_hit: false,
        })
    }
}

impl Event {
    fn with_ssid(self, ssid: Option<u32>) -> Self {
        Self { ssid, ..self }
    }
}

fn unreachable_fault() -> Result<Leaf, WalkFault> {
    // The identity fetch closure never fails.
    Err(WalkFault {
        kind: EventType::FWalkEabt,
        level: 0,
        fetch_pa: 0,
    })
}

fn unreachable_s2() -> S2Ste {
    S2Ste {
        tt: TableCfg {
            shift: 12,
            start_level: 0,
            ias: 48,
            ttb: 0,
            oas: 48,
            pa52: false,
            stage2: true,
            had: true,
            ha: false,
            hd: false,
            affd: false,
            xnx: false,
        },
        vmid: 0,
        record: false,
        stall: false,
    }
}
