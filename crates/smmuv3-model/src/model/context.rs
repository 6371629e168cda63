//! Configuration lookup: stream table and CD table fetches with their
//! caches (STE, level-1 descriptors, CD, and the per-stream context the
//! translation path starts from). Walks live in `xlate`.

use super::State;
use super::decode::{Cd, S1Ste, S2Ste, Ste};
use super::xlate::Stop;
use crate::event::{Event, EventType, FaultClass};
use crate::layout::{
    RawCd, RawSte, STE_SIZE, l1cd_l2ptr, l1cd_valid, l1std_l2ptr, l1std_span, ste_config,
};
use crate::regs::strtab;
use crate::tlb::{Regime, Tag};
use crate::walk::{Access, TableCfg};

/// Key of "no SubstreamID" in the per-(sid, ssid) caches (never a valid
/// SubstreamID: those have at most [`MAX_SSID_BITS`] bits).
pub(super) const NO_SSID: u32 = u32::MAX;

/// The widest SubstreamID the architecture defines (IDR1.SSIDSIZE <= 20).
pub(super) const MAX_SSID_BITS: u32 = 20;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Mode {
    Abort,
    Bypass,
    S1,
    S2,
    Nested,
}

/// Everything a translation of one (sid, ssid) needs, derived from the
/// cached STE and CD (so dropping it never changes behaviour).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ctx {
    pub(super) mode: Mode,
    pub(super) ste: Ste,
    pub(super) cd: Option<Cd>,
    pub(super) tag: Tag,
    pub(super) sizes: [u32; 9],
    pub(super) nsizes: usize,
}

impl Ctx {
    /// Returns the context of a stream in `mode` with its decoded STE and
    /// CD: the TLB tag and the leaf sizes a lookup tries follow from them.
    fn new(mode: Mode, ste: Ste, cd: Option<Cd>) -> Self {
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
        Ctx {
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
        }
    }

    /// Returns whether the context is one [`State::context`] can build: a
    /// mode its STE and CD select, consistent structures, and the tag and
    /// sizes they give (a restored snapshot's contexts are checked with it,
    /// as every translation indexes and shifts by them).
    pub(super) fn is_consistent(&self) -> bool {
        let (abort, cd, s2) = (
            self.ste.config == ste_config::ABORT,
            self.cd.is_some(),
            self.ste.s2.is_some(),
        );
        let shape = match self.mode {
            Mode::Abort => abort && !cd,
            Mode::Bypass => !abort && !cd && !s2,
            Mode::S2 => !abort && !cd && s2,
            Mode::S1 => !abort && cd && !s2 && self.ste.s1.is_some(),
            Mode::Nested => !abort && cd && s2 && self.ste.s1.is_some(),
        };
        shape
            && self.ste.is_consistent()
            && self.cd.is_none_or(|c| c.is_consistent())
            && *self == Ctx::new(self.mode, self.ste, self.cd)
    }
}

fn level_sizes(tt: &TableCfg) -> impl Iterator<Item = u32> {
    let t = *tt;
    (t.start_level.max(1)..=3).map(move |l| t.level_lsb(l))
}

impl State {
    pub(super) fn strtab_split(&self) -> u32 {
        // Reserved values behave as 6 (IHI 0070 6.3.25).
        match (self.regs.strtab_base_cfg >> strtab::SPLIT_SHIFT) & 0x1f {
            8 => 8,
            10 => 10,
            _ => 6,
        }
    }

    /// Returns the effective stream table base: ADDR aligned by the SMMU
    /// to the table size (linear) or to the larger of 64 bytes and the
    /// level-1 table size (2-level), both from the literal LOG2SIZE, not
    /// capped by SIDSIZE (IHI 0070 6.3.24).
    fn strtab_base(&self, two_level: bool) -> u64 {
        let log2size = self.regs.strtab_base_cfg & strtab::LOG2SIZE_MASK;
        // log2 of the alignment in bytes.
        let align = if two_level {
            (log2size.saturating_sub(self.strtab_split()) + 3).max(6)
        } else {
            log2size + 6
        };
        let low = 1u64.checked_shl(align).map_or(u64::MAX, |a| a - 1);
        self.regs.strtab_base & strtab::ADDR_MASK & !low
    }

    // ---- structure fetching -------------------------------------------

    fn read_words<const N: usize>(&self, pa: u64) -> Option<[u64; N]> {
        let mut b = [0u8; 64];
        self.mem.read(pa, &mut b[..N * 8]).ok()?;
        let mut w = [0u64; N];
        for (i, x) in w.iter_mut().enumerate() {
            let mut le = [0u8; 8];
            le.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *x = u64::from_le_bytes(le);
        }
        Some(w)
    }

    pub(super) fn get_ste(&mut self, sid: u32) -> Result<Ste, Stop> {
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
        let two_level = (cfg >> strtab::FMT_SHIFT) & 3 == 1 && self.cfg.two_level_strtab;
        let base = self.strtab_base(two_level);
        // (array base, first StreamID of the array, STEs in the array)
        let ste_pa = if two_level {
            let split = self.strtab_split();
            let l1idx = sid >> split;
            let l1 = match self.l1std_cache.get(&l1idx) {
                Some(&d) => d,
                None => {
                    let pa = base + u64::from(l1idx) * 8;
                    let Ok(d) = self.mem.read_u64(pa) else {
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
        let Ok(ste) = self.decode_ste(&RawSte(words)) else {
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
        match ste.s2 {
            None => Ok(ipa),
            Some(s2) => self.s2_fetch(&s2, ipa, class, || base_ev),
        }
    }

    /// Translates the address of an SMMU read (structure or table
    /// descriptor fetch) through stage 2; `base_ev` builds the event of a
    /// fault, only when there is one.
    pub(super) fn s2_fetch(
        &mut self,
        s2: &S2Ste,
        ipa: u64,
        class: FaultClass,
        base_ev: impl FnOnce() -> Event,
    ) -> Result<u64, Stop> {
        let acc = Access {
            write: false,
            privileged: true,
            instruction: false,
        };
        self.s2_translate(s2, ipa, acc)
            .map(|(pa, _)| pa)
            .map_err(|f| self.s2_stop(s2, f, ipa, class, base_ev()))
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
                    let Ok(d) = self.mem.read_u64(pa) else {
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
        let Ok(cd) = self.decode_cd(&RawCd(words), ste) else {
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

    pub(super) fn context(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        base_ev: Event,
    ) -> Result<Ctx, Stop> {
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
        let ctx = Ctx::new(mode, ste, cd);
        self.ctx_cache.insert(key, ctx);
        Ok(ctx)
    }
}
