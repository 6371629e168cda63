//! Structure validation: raw STEs and CDs decoded into what translation
//! uses, or rejected (`C_BAD_STE` / `C_BAD_CD`) as the architecture says.
//! The model's linter (`smmu check`) is this code.

use super::State;
use crate::config::{Httu, StallModel};
use crate::layout::{RawCd, RawSte, ste_config};
use crate::regs::oas_field_to_bits;
use crate::walk::{S1Perm, TableCfg};

/// The architectural rule a structure breaks (the reason the SMMU
/// rejects it with C_BAD_STE / C_BAD_CD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Violation(pub &'static str);

impl core::fmt::Display for Violation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

fn bad<T>(rule: &'static str) -> Result<T, Violation> {
    Err(Violation(rule))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct S1Ste {
    pub(super) ctx_ptr: u64,
    pub(super) fmt: u64,
    pub(super) cdmax: u32,
    pub(super) s1dss: u64,
    pub(super) stalld: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct S2Ste {
    pub(super) tt: TableCfg,
    pub(super) vmid: u16,
    pub(super) record: bool,
    pub(super) stall: bool,
}

/// A decoded, valid STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Ste {
    pub(super) config: u64,
    pub(super) s1: Option<S1Ste>,
    pub(super) s2: Option<S2Ste>,
    /// VMID tagging stage-1 TLB entries.
    pub(super) vmid: u16,
    pub(super) el2: bool,
    pub(super) eats: u64,
    pub(super) privcfg: u64,
    pub(super) instcfg: u64,
}

/// A decoded, valid CD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Cd {
    /// TLB tag space of the CD: (regime code, VMID) of its STE.
    pub(super) space: (u8, u16),
    pub(super) asid: u16,
    pub(super) tt: [Option<TableCfg>; 2],
    pub(super) tbi: [bool; 2],
    pub(super) perm: S1Perm,
    pub(super) record: bool,
    pub(super) stall: bool,
    pub(super) abort: bool,
}

impl Ste {
    /// Returns whether the decoded STE is one `decode_ste` can produce in
    /// the fields translation shifts and indexes by (a restored snapshot's
    /// STEs are checked with it).
    pub(super) fn is_consistent(&self) -> bool {
        let s1 = self
            .s1
            .is_none_or(|s| s.cdmax <= super::context::MAX_SSID_BITS && s.fmt <= 2 && s.s1dss <= 2);
        let s2 = self.s2.is_none_or(|s| s.tt.stage2 && s.tt.is_consistent());
        let stages = match self.config {
            ste_config::ABORT | ste_config::BYPASS => (false, false),
            ste_config::S1 => (true, false),
            ste_config::S2 => (false, true),
            ste_config::NESTED => (true, true),
            _ => return false,
        };
        s1 && s2
            && stages == (self.s1.is_some(), self.s2.is_some())
            && (!self.el2 || self.s1.is_some())
    }
}

impl Cd {
    /// Returns whether the decoded CD is one `decode_cd` can produce in
    /// the fields translation shifts and indexes by (checked on restore).
    pub(super) fn is_consistent(&self) -> bool {
        self.tt
            .iter()
            .flatten()
            .all(|t| !t.stage2 && t.is_consistent())
    }

    /// Returns the address the TLB knows a cached stage-1 translation of
    /// `iova` by (sign-extended for the TTBR1 half), or `None` when `iova`
    /// is outside both halves' input ranges or its half has no table: the
    /// checks a cached lookup must make before trusting the TLB.
    #[inline]
    pub(super) fn tlb_input(&self, iova: u64) -> Option<u64> {
        self.walk_input(iova).map(|(_, _, key)| key)
    }

    /// Returns the table `iova` is translated by, the walk's input address
    /// (`iova` below the input size) and the TLB's address for it (see
    /// [`Cd::tlb_input`]), or `None` when either check fails.
    #[inline(always)]
    pub(super) fn walk_input(&self, iova: u64) -> Option<(&TableCfg, u64, u64)> {
        // Select TTB0 or TTB1 from the top of the address (bit 55 decides
        // when the top byte is ignored).
        let sel = usize::from(iova >> 55 & 1 == 1);
        let tt = self.tt[sel].as_ref()?;
        let hi = if self.tbi[sel] { 55 } else { 63 };
        let top = crate::layout::bits(iova, hi, tt.ias);
        let ones = (1u64 << (hi - tt.ias + 1)) - 1;
        if top != if sel == 0 { 0 } else { ones } {
            return None;
        }
        let low = iova & ((1u64 << tt.ias) - 1);
        let key = if sel == 1 {
            low | !((1u64 << tt.ias) - 1)
        } else {
            low
        };
        Some((tt, low, key))
    }
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

impl State {
    pub(super) fn granule_ok(&self, shift: u32) -> bool {
        match shift {
            12 => self.cfg.gran4k,
            14 => self.cfg.gran16k,
            _ => self.cfg.gran64k,
        }
    }

    /// Returns the effective (HA, HD) of a structure, or `None` when it asks
    /// for more hardware updates than IDR0.HTTU advertises.
    pub(super) fn httu_bits(
        &self,
        ha: bool,
        hd: bool,
        rule: &'static str,
    ) -> Result<(bool, bool), Violation> {
        let ok = match self.cfg.httu {
            Httu::None => !ha && !hd,
            Httu::AccessFlag => !hd,
            Httu::AccessAndDirty => true,
        };
        // Dirty updates without access-flag updates are treated as off.
        if ok {
            Ok((ha, ha && hd))
        } else {
            Err(Violation(rule))
        }
    }

    pub(super) fn decode_s2(&self, raw: &RawSte) -> Result<S2Ste, Violation> {
        if !raw.s2aa64() {
            return bad("STE.S2AA64 = 0: AArch32 stage-2 tables are not implemented");
        }
        if raw.s2endi() {
            return bad("STE.S2ENDI = 1: big-endian stage-2 tables are not implemented");
        }
        let shift = granule_shift_s2(raw.s2tg()).ok_or(Violation("STE.S2TG = 0b11 is reserved"))?;
        if !self.granule_ok(shift) {
            return bad("STE.S2TG selects a granule IDR5.GRAN4K/16K/64K does not advertise");
        }
        // S2PS 0b111 is reserved and behaves as 0b110 (52 bits) from v3.1
        // to v3.3; like any value above the OAS it is then capped, never
        // ILLEGAL.
        let ps_field = if raw.s2ps() == 7 { 6 } else { raw.s2ps() };
        let ps = u32::from(
            oas_field_to_bits(ps_field).ok_or(Violation("STE.S2PS is a reserved encoding"))?,
        );
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
            return bad(
                "STE.S2T0SZ out of range: the IPA size exceeds the IAS or is below 25 bits",
            );
        }
        let ias = 64 - t0sz;
        let start_level = match (shift, raw.s2sl0()) {
            (12, 0) => 2,
            (12, 1) => 1,
            (12, 2) => 0,
            (_, 0) => 3,
            (_, 1) => 2,
            (_, 2) => 1,
            _ => return bad("STE.S2SL0 is reserved for this granule"),
        };
        // HA/HD are RES0 without the matching HTTU support; QEMU rejects
        // them, and so do we.
        let (ha, hd) = self.httu_bits(
            raw.s2ha(),
            raw.s2hd(),
            "STE.S2HA/S2HD request hardware updates IDR0.HTTU does not advertise",
        )?;
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
            return bad(
                "STE.S2SL0 and S2T0SZ are inconsistent: the start level would need more than 16 concatenated tables or resolve nothing",
            );
        }
        if start_level == 1 && shift == 16 && !tt.pa52 {
            return bad("STE.S2SL0: a level-1 start with the 64K granule needs 52-bit output");
        }
        if tt.ttb >> eff_ps != 0 {
            return bad("STE.S2TTB is outside the stage-2 output address size (S2PS)");
        }
        // Bits below the start table's alignment are treated as zero.
        let mut tt = tt;
        tt.ttb &= !(tt.start_table_bytes() - 1);
        if raw.s2s() && self.cfg.stall_model == StallModel::TerminateOnly {
            return bad("STE.S2S = 1 on an SMMU with IDR0.STALL_MODEL = terminate only");
        }
        if !raw.s2s() && self.cfg.stall_model == StallModel::StallForced {
            return bad("STE.S2S = 0 on an SMMU with IDR0.STALL_MODEL = stall forced");
        }
        let vmid = if self.cfg.vmid16 {
            raw.s2vmid()
        } else {
            raw.s2vmid() & 0xff
        };
        if !self.cfg.vmid16 && raw.s2vmid() >> 8 != 0 {
            return bad("STE.S2VMID[15:8] is non-zero without IDR0.VMID16");
        }
        Ok(S2Ste {
            tt,
            vmid,
            record: raw.s2r(),
            // The stall model was checked above: S2S is what it allows.
            stall: raw.s2s(),
        })
    }

    pub(super) fn decode_ste(&self, raw: &RawSte) -> Result<Ste, Violation> {
        if !raw.valid() {
            return bad("STE.V = 0: the StreamID is invalid (C_BAD_STE)");
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
        if s1_on && !self.cfg.stage1 {
            return bad("STE.Config enables stage 1, which IDR0.S1P does not advertise");
        }
        if s2_on && !self.cfg.stage2 {
            return bad("STE.Config enables stage 2, which IDR0.S2P does not advertise");
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
                return bad("STE.S1CDMax exceeds IDR1.SSIDSIZE");
            }
            // S1Fmt 0b11 is reserved and behaves as linear.
            let fmt = match raw.s1fmt() {
                _ if cdmax == 0 => 0,
                3 => 0,
                f => f,
            };
            // Only an SMMU whose stall model is configurable lets the STE
            // forbid stalls; elsewhere S1STALLD = 1 is ILLEGAL.
            if raw.s1stalld() && self.cfg.stall_model != StallModel::StallAndTerminate {
                return bad(
                    "STE.S1STALLD = 1 on an SMMU whose IDR0.STALL_MODEL is not 0b00 (stalls are not configurable)",
                );
            }
            if fmt != 0 && !self.cfg.cd2l {
                return bad("STE.S1Fmt selects a 2-level CD table without IDR0.CD2L");
            }
            // The CD table pointer is an IPA when stage 2 is on.
            let in_bits = s2.map_or(u32::from(self.cfg.oas_bits), |s| s.tt.ias);
            if raw.s1_context_ptr() >> in_bits != 0 {
                return bad("STE.S1ContextPtr is outside the (intermediate) address size");
            }
            match raw.strw() {
                0 => {}
                // With stage 2 on the StreamWorld is NS-EL1 whatever STRW
                // says: the field is IGNORED (it is RES0 without IDR0.HYP,
                // and this SMMU rejects a non-zero RES0 field).
                _ if s2_on && self.cfg.hyp => {}
                2 if self.cfg.hyp => el2 = true,
                _ => {
                    return bad(
                        "STE.STRW: RES0 without IDR0.HYP; 0b01 and 0b11 are reserved (ILLEGAL) with stage 2 off",
                    );
                }
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
                    return bad("STE.S2VMID[15:8] is non-zero without IDR0.VMID16");
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
        Ok(Ste {
            config,
            s1,
            s2,
            vmid,
            el2,
            eats: self.eats(raw, config, s2.as_ref())?,
            privcfg: ovr(raw.privcfg()),
            instcfg: ovr(raw.instcfg()),
        })
    }

    /// Returns the effective STE.EATS: 0 (translated traffic refused), 1
    /// (full ATS: it bypasses) or 2 (split-stage: it is an IPA stage 2
    /// translates).
    fn eats(&self, raw: &RawSte, config: u64, s2: Option<&S2Ste>) -> Result<u64, Violation> {
        // IGNORED without ATS support and when no stage translates.
        if !self.cfg.ats || config == ste_config::ABORT || config == ste_config::BYPASS {
            return Ok(0);
        }
        let s2s = s2.is_some_and(|s| s.stall);
        match raw.eats() {
            1 if s2s => bad("STE.EATS = 0b01 (full ATS) with stage 2 and S2S = 1"),
            2 if config != ste_config::NESTED || s2s => {
                bad("STE.EATS = 0b10 (split-stage ATS) without Config = 0b111 and S2S = 0")
            }
            // 0b11 (DPT checks) without IDR3.DPT is reserved: as 0b00.
            3 => Ok(0),
            e => Ok(e),
        }
    }

    pub(super) fn decode_cd(&self, raw: &RawCd, ste: &Ste) -> Result<Cd, Violation> {
        if !raw.valid() {
            return bad("CD.V = 0 (C_BAD_CD)");
        }
        if !raw.aa64() {
            return bad("CD.AA64 = 0: AArch32 translation tables are not implemented");
        }
        // ENDI only matters when a table is walked at all.
        if raw.endi() && !(raw.epd(0) && raw.epd(1)) {
            return bad("CD.ENDI = 1: big-endian translation tables are not implemented");
        }
        // IPS 0b111 is reserved and behaves as 0b110 (52 bits) from v3.1;
        // values above the OAS are capped to it.
        let ips_field = if raw.ips() == 7 { 6 } else { raw.ips() };
        let ips = u32::from(
            oas_field_to_bits(ips_field).ok_or(Violation("CD.IPS is a reserved encoding"))?,
        )
        .min(u32::from(self.cfg.oas_bits));
        if raw.stall() && self.cfg.stall_model == StallModel::TerminateOnly {
            return bad("CD.S = 1 on an SMMU with IDR0.STALL_MODEL = terminate only");
        }
        if !raw.stall() && self.cfg.stall_model == StallModel::StallForced {
            return bad("CD.S = 0 on an SMMU with IDR0.STALL_MODEL = stall forced");
        }
        if raw.stall() && ste.s1.is_some_and(|s| s.stalld) {
            return bad("CD.S = 1 while the STE sets S1STALLD");
        }
        if !raw.abort() && self.cfg.term_model_abort_only {
            return bad("CD.A = 0 with IDR0.TERM_MODEL = abort only");
        }
        if !self.cfg.asid16 && raw.asid() >> 8 != 0 {
            return bad("CD.ASID[15:8] is non-zero without IDR0.ASID16");
        }
        let (ha, hd) = self.httu_bits(
            raw.ha(),
            raw.hd(),
            "CD.HA/HD request hardware updates IDR0.HTTU does not advertise",
        )?;
        let mut tt = [None, None];
        for sel in 0..2u32 {
            if raw.epd(sel) {
                continue;
            }
            let shift = granule_shift_s1(raw.tg(sel), sel)
                .ok_or(Violation("CD.TG0/TG1 is a reserved encoding"))?;
            if !self.granule_ok(shift) {
                return bad("CD.TG0/TG1 selects a granule IDR5.GRAN4K/16K/64K does not advertise");
            }
            let tsz = raw.tsz(sel);
            let min_tsz = if shift == 16 && self.cfg.vax52 {
                12
            } else {
                16
            };
            if !(min_tsz..=39).contains(&tsz) {
                return bad(
                    "CD.T0SZ/T1SZ out of range (16..=39, 12 with the 64K granule and IDR5.VAX)",
                );
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
                return bad("CD.TTB0/TTB1 is outside the output address size (IPS)");
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
        Ok(Cd {
            space: (regime, ste.vmid),
            asid: raw.asid(),
            tt,
            tbi: [tbi & 1 != 0, tbi & 2 != 0],
            perm: S1Perm {
                wxn: raw.wxn(),
                pan: raw.pan(),
            },
            record: raw.record(),
            // The stall model was checked above: S is what it allows.
            stall: raw.stall(),
            abort: raw.abort() || self.cfg.term_model_abort_only,
        })
    }
}
