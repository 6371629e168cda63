//! Building STEs and CDs from typed configurations. Pure functions: a
//! hypervisor can build entries with them and write them its own way.

use io_pgtable::config::{Stage1Regs, Stage2Regs};

use crate::entry::{Entry, WORDS};
use crate::layout::{cd, ste};
use crate::probe::StallModel;

/// What a stream does with transactions that carry no substream ID while
/// its STE points at a CD table (STE.S1DSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Dss {
    /// Abort them (F_STREAM_DISABLED).
    Terminate,
    /// Let them bypass stage 1.
    Bypass,
    /// Translate them with CD 0 (SSID 0 is then not usable with a PASID).
    Ssid0,
}

impl S1Dss {
    fn encoding(self) -> u64 {
        match self {
            Self::Terminate => ste::S1DSS_TERMINATE,
            Self::Bypass => ste::S1DSS_BYPASS,
            Self::Ssid0 => ste::S1DSS_SSID0,
        }
    }
}

/// How a CD table is laid out (STE.S1Fmt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdFormat {
    /// One array of 2^S1CDMax CDs.
    Linear,
    /// A level-1 table of descriptors, each pointing at a level-2 table of
    /// 64 CDs (4 KiB).
    TwoLevel4K,
    /// A level-1 table of descriptors, each pointing at a level-2 table of
    /// 1024 CDs (64 KiB).
    TwoLevel64K,
}

impl CdFormat {
    /// Returns whether the table has a level-1 table (needs IDR0.CD2L).
    pub fn two_level(self) -> bool {
        self != Self::Linear
    }

    /// Returns the STE.S1Fmt encoding.
    pub fn encoding(self) -> u64 {
        match self {
            Self::Linear => ste::S1FMT_LINEAR,
            Self::TwoLevel4K => ste::S1FMT_4K_L2,
            Self::TwoLevel64K => ste::S1FMT_64K_L2,
        }
    }
}

/// Where a stream's CD table is and how it is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdTableRef {
    /// Physical (or, nested, intermediate physical) address of the table.
    pub ptr: u64,
    /// Linear or two-level, and the size of the level-2 tables.
    pub format: CdFormat,
    /// log2 of the number of CDs (STE.S1CDMAX).
    pub cdmax_log2: u8,
}

/// Stage-2 part of an STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Ref {
    /// Table registers from io-pgtable.
    pub regs: Stage2Regs,
    /// VMID.
    pub vmid: u16,
}

/// A stream's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteConfig {
    /// Every transaction is aborted (silently).
    Abort,
    /// Transactions bypass translation.
    Bypass,
    /// Stage-1 translation through a CD table.
    Stage1 {
        /// The CD table.
        cd: CdTableRef,
        /// Handling of transactions without a substream ID.
        s1dss: S1Dss,
        /// ATS translation requests allowed.
        ats: bool,
    },
    /// Stage-2 translation.
    Stage2 {
        /// The stage-2 table.
        s2: S2Ref,
        /// ATS translation requests allowed.
        ats: bool,
    },
    /// Stage 1 then stage 2; the CD table and stage-1 tables are IPAs.
    Nested {
        /// The CD table (IPA).
        cd: CdTableRef,
        /// Handling of transactions without a substream ID.
        s1dss: S1Dss,
        /// The stage-2 table.
        s2: S2Ref,
        /// ATS translation requests allowed.
        ats: bool,
    },
}

/// SMMU properties that shape entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryEnv {
    /// Table walks and fetches are coherent.
    pub coherent: bool,
    /// Stall model of the SMMU.
    pub stall: StallModel,
}

impl From<&crate::probe::Features> for EntryEnv {
    /// Returns the entry environment of a probed SMMU (after the driver
    /// settled coherency: see `SmmuConfig::coherent`).
    fn from(f: &crate::probe::Features) -> Self {
        Self {
            coherent: f.coherent,
            stall: f.stall,
        }
    }
}

fn fetch_attrs(coherent: bool) -> u64 {
    use crate::regs::cr1;
    if coherent {
        ste::S1CIR.make(cr1::CACHE_WB)
            | ste::S1COR.make(cr1::CACHE_WB)
            | ste::S1CSH.make(cr1::SH_ISH)
    } else {
        ste::S1CIR.make(cr1::CACHE_NC)
            | ste::S1COR.make(cr1::CACHE_NC)
            | ste::S1CSH.make(cr1::SH_OSH)
    }
}

fn s1_words(e: &mut Entry, cdt: &CdTableRef, s1dss: S1Dss, env: &EntryEnv) {
    e[0] |= ste::S1FMT.make(cdt.format.encoding())
        | (cdt.ptr & ste::S1CTXPTR.mask())
        | ste::S1CDMAX.make(cdt.cdmax_log2.into());
    // With a single CD there is no substream to choose: S1DSS is ignored
    // by the SMMU, so keep it at 0 and do not depend on it.
    let dss = if cdt.cdmax_log2 == 0 {
        0
    } else {
        s1dss.encoding()
    };
    e[1] |= ste::S1DSS.make(dss) | fetch_attrs(env.coherent);
    if env.stall == StallModel::StallAndTerminate {
        e[1] |= ste::S1STALLD.make(1);
    }
    if dss == ste::S1DSS_BYPASS {
        e[1] |= ste::SHCFG.make(ste::SHCFG_INCOMING);
    }
}

fn s2_words(e: &mut Entry, s2: &S2Ref, env: &EntryEnv) {
    let r = &s2.regs;
    e[1] |= ste::SHCFG.make(ste::SHCFG_INCOMING);
    e[2] = ste::S2VMID.make(s2.vmid.into())
        | ste::S2T0SZ.make(r.t0sz.into())
        | ste::S2SL0.make(r.sl0.into())
        | ste::S2IR0.make(r.irgn0.into())
        | ste::S2OR0.make(r.orgn0.into())
        | ste::S2SH0.make(r.sh0.into())
        | ste::S2TG.make(r.tg0.into())
        | ste::S2PS.make(r.ps.into())
        | ste::S2AA64.make(1)
        | ste::S2PTW.make(1)
        | ste::S2R.make(1)
        // A stall-forced SMMU stalls stage-2 faults: S2S = 0 is ILLEGAL.
        | ste::S2S.make((env.stall == StallModel::StallForced).into())
        | ste::S2FWB.make(r.fwb.into());
    e[3] = r.vttbr & ste::S2TTB.mask();
}

/// A configuration that no entry can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// A value does not fit its field (or an address is misaligned).
    #[error("{field} value {value:#x} does not fit the entry")]
    DoesNotFit {
        /// Field name.
        field: &'static str,
        /// Offending value.
        value: u64,
    },
}

fn check(field: &'static str, value: u64, ok: bool) -> Result<(), EntryError> {
    if ok {
        Ok(())
    } else {
        Err(EntryError::DoesNotFit { field, value })
    }
}

impl SteConfig {
    /// Checks that every operand fits its STE field.
    ///
    /// # Errors
    ///
    /// [`EntryError::DoesNotFit`] naming the first operand that does not.
    pub fn validate(&self) -> Result<(), EntryError> {
        let cd = |c: &CdTableRef| {
            check("S1CDMax", c.cdmax_log2.into(), c.cdmax_log2 <= 20)?;
            check("S1ContextPtr", c.ptr, c.ptr & !ste::S1CTXPTR.mask() == 0)
        };
        let s2 = |s: &S2Ref| {
            let r = &s.regs;
            check("S2T0SZ", r.t0sz.into(), ste::S2T0SZ.fits(r.t0sz.into()))?;
            check("S2SL0", r.sl0.into(), ste::S2SL0.fits(r.sl0.into()))?;
            check("S2TG", r.tg0.into(), r.tg0 <= 2)?;
            check("S2PS", r.ps.into(), r.ps <= 6)?;
            check("S2TTB", r.vttbr, r.vttbr & !ste::S2TTB.mask() == 0)
        };
        match self {
            Self::Abort | Self::Bypass => Ok(()),
            Self::Stage1 { cd: c, .. } => cd(c),
            Self::Stage2 { s2: t, .. } => s2(t),
            Self::Nested { cd: c, s2: t, .. } => cd(c).and_then(|()| s2(t)),
        }
    }
}

/// Returns the STE for a configuration, refusing operands that do not fit.
///
/// # Errors
///
/// As [`SteConfig::validate`].
pub fn try_build_ste(cfg: &SteConfig, env: &EntryEnv) -> Result<Entry, EntryError> {
    cfg.validate()?;
    Ok(build_ste(cfg, env))
}

/// Returns the CD for a stage-1 table and ASID, refusing operands that do
/// not fit.
///
/// # Errors
///
/// [`EntryError::DoesNotFit`] for a misaligned or too wide TTB, or a T0SZ,
/// TG0 or IPS encoding outside its field.
pub fn try_build_cd(regs: &Stage1Regs, asid: u16, env: &EntryEnv) -> Result<Entry, EntryError> {
    check("TTB0", regs.ttbr, regs.ttbr & !cd::TTB0.mask() == 0)?;
    check("T0SZ", regs.t0sz.into(), cd::T0SZ.fits(regs.t0sz.into()))?;
    check("TG0", regs.tg0.into(), regs.tg0 <= 2)?;
    check("IPS", regs.ips.into(), regs.ips <= 6)?;
    Ok(build_cd(regs, asid, env))
}

/// Returns the STE for a configuration.
///
/// Operands are masked into their fields: use [`try_build_ste`] (or
/// [`SteConfig::validate`]) for values that do not come from io-pgtable and
/// the driver's own tables.
pub fn build_ste(cfg: &SteConfig, env: &EntryEnv) -> Entry {
    let mut e = [0u64; WORDS];
    let v = ste::V.make(1);
    match cfg {
        SteConfig::Abort => e[0] = v | ste::CONFIG.make(ste::CONFIG_ABORT),
        SteConfig::Bypass => {
            e[0] = v | ste::CONFIG.make(ste::CONFIG_BYPASS);
            e[1] = ste::SHCFG.make(ste::SHCFG_INCOMING);
        }
        SteConfig::Stage1 { cd, s1dss, ats } => {
            e[0] = v | ste::CONFIG.make(ste::CONFIG_S1);
            s1_words(&mut e, cd, *s1dss, env);
            e[1] |= ste::EATS.make((*ats).into());
        }
        SteConfig::Stage2 { s2, ats } => {
            e[0] = v | ste::CONFIG.make(ste::CONFIG_S2);
            s2_words(&mut e, s2, env);
            e[1] |= ste::EATS.make((*ats).into());
        }
        SteConfig::Nested { cd, s1dss, s2, ats } => {
            e[0] = v | ste::CONFIG.make(ste::CONFIG_NESTED);
            s1_words(&mut e, cd, *s1dss, env);
            s2_words(&mut e, s2, env);
            e[1] |= ste::EATS.make((*ats).into());
        }
    }
    e
}

/// Returns the CD for a stage-1 table (walked through TTB0) and ASID.
///
/// Tables built with io-pgtable's TTBR1 quirk are not supported here (the
/// driver only creates TTB0 domains); their registers are placed in TTB0.
/// On a stall-forced SMMU the CD selects the stall fault model (CD.S = 0
/// is ILLEGAL there); elsewhere faults terminate.
pub fn build_cd(regs: &Stage1Regs, asid: u16, env: &EntryEnv) -> Entry {
    let mut e = [0u64; WORDS];
    e[0] = cd::T0SZ.make(regs.t0sz.into())
        | cd::TG0.make(regs.tg0.into())
        | cd::IR0.make(regs.irgn0.into())
        | cd::OR0.make(regs.orgn0.into())
        | cd::SH0.make(regs.sh0.into())
        | cd::EPD1.make(1)
        | cd::V.make(1)
        | cd::IPS.make(regs.ips.into())
        | cd::AA64.make(1)
        | cd::HD.make(regs.hd.into())
        | cd::HA.make(regs.hd.into())
        | cd::R.make(1)
        | cd::A.make(1)
        | cd::ASET.make(1)
        | cd::ASID.make(asid.into())
        | cd::S.make((env.stall == StallModel::StallForced).into());
    e[1] = regs.ttbr & cd::TTB0.mask();
    e[cd::MAIR_WORD] = regs.mair;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{EntryKind, plan_update};

    const ENV: EntryEnv = EntryEnv {
        coherent: true,
        stall: StallModel::TerminateOnly,
    };

    fn s2() -> S2Ref {
        S2Ref {
            regs: Stage2Regs {
                vttbr: 0x4010_0000,
                t0sz: 24,
                sl0: 1,
                irgn0: 1,
                orgn0: 1,
                sh0: 3,
                tg0: 0,
                ps: 4,
                fwb: false,
            },
            vmid: 7,
        }
    }

    fn cdt(cdmax_log2: u8) -> CdTableRef {
        CdTableRef {
            ptr: 0x4020_0000,
            format: CdFormat::Linear,
            cdmax_log2,
        }
    }

    #[test]
    fn stage2_ste_fields() {
        let e = build_ste(
            &SteConfig::Stage2 {
                s2: s2(),
                ats: false,
            },
            &ENV,
        );
        assert_eq!(ste::CONFIG.get(e[0]), ste::CONFIG_S2);
        assert_eq!(ste::S2VMID.get(e[2]), 7);
        assert_eq!(ste::S2T0SZ.get(e[2]), 24);
        assert_eq!(ste::S2SL0.get(e[2]), 1);
        assert_eq!(ste::S2PS.get(e[2]), 4);
        assert_eq!(ste::S2AA64.get(e[2]), 1);
        assert_eq!(ste::S2R.get(e[2]), 1);
        assert_eq!(e[3], 0x4010_0000);
        assert_eq!(ste::SHCFG.get(e[1]), 1);
    }

    #[test]
    fn stage1_ste_fields() {
        let e = build_ste(
            &SteConfig::Stage1 {
                cd: cdt(4),
                s1dss: S1Dss::Bypass,
                ats: true,
            },
            &ENV,
        );
        assert_eq!(ste::CONFIG.get(e[0]), ste::CONFIG_S1);
        assert_eq!(e[0] & ste::S1CTXPTR.mask(), 0x4020_0000);
        assert_eq!(ste::S1CDMAX.get(e[0]), 4);
        assert_eq!(ste::S1DSS.get(e[1]), ste::S1DSS_BYPASS);
        assert_eq!(ste::SHCFG.get(e[1]), 1);
        assert_eq!(ste::EATS.get(e[1]), 1);
        assert_eq!(ste::S1CSH.get(e[1]), 3);
        // A single CD ignores S1DSS: it stays 0.
        let e = build_ste(
            &SteConfig::Stage1 {
                cd: cdt(0),
                s1dss: S1Dss::Bypass,
                ats: false,
            },
            &ENV,
        );
        assert_eq!(ste::S1DSS.get(e[1]), 0);
        let nc = EntryEnv {
            coherent: false,
            stall: StallModel::StallAndTerminate,
        };
        let e = build_ste(
            &SteConfig::Nested {
                cd: cdt(0),
                s1dss: S1Dss::Terminate,
                s2: s2(),
                ats: false,
            },
            &nc,
        );
        assert_eq!(ste::CONFIG.get(e[0]), ste::CONFIG_NESTED);
        assert_eq!(ste::S1STALLD.get(e[1]), 1);
        assert_eq!(ste::S1CSH.get(e[1]), 2);
        assert_eq!(ste::S2VMID.get(e[2]), 7);
    }

    #[test]
    fn operands_that_do_not_fit_are_refused() {
        let bad = SteConfig::Stage1 {
            cd: CdTableRef {
                ptr: 1 << 52,
                format: CdFormat::Linear,
                cdmax_log2: 4,
            },
            s1dss: S1Dss::Ssid0,
            ats: false,
        };
        assert!(matches!(
            try_build_ste(&bad, &ENV),
            Err(EntryError::DoesNotFit {
                field: "S1ContextPtr",
                ..
            })
        ));
        let bad = SteConfig::Stage1 {
            cd: cdt(32),
            s1dss: S1Dss::Ssid0,
            ats: false,
        };
        assert!(matches!(
            try_build_ste(&bad, &ENV),
            Err(EntryError::DoesNotFit {
                field: "S1CDMax",
                ..
            })
        ));
        let mut s = s2();
        s.regs.vttbr = 0x4010_0008;
        assert!(try_build_ste(&SteConfig::Stage2 { s2: s, ats: false }, &ENV).is_err());
        assert_eq!(
            try_build_ste(
                &SteConfig::Stage2 {
                    s2: s2(),
                    ats: false
                },
                &ENV
            ),
            Ok(build_ste(
                &SteConfig::Stage2 {
                    s2: s2(),
                    ats: false
                },
                &ENV
            ))
        );
    }

    #[test]
    fn cd_fields() {
        let regs = Stage1Regs {
            ttbr: 0x4030_0000,
            t0sz: 16,
            tg0: 0,
            irgn0: 1,
            orgn0: 1,
            sh0: 3,
            ips: 5,
            epd1: true,
            ttbr1: false,
            hd: false,
            mair: 0x0004_ff44,
        };
        let e = try_build_cd(&regs, 42, &ENV).unwrap();
        assert!(
            try_build_cd(
                &Stage1Regs {
                    ttbr: 1 << 53,
                    ..regs
                },
                42,
                &ENV
            )
            .is_err()
        );
        assert_eq!(cd::V.get(e[0]), 1);
        assert_eq!(cd::ASID.get(e[0]), 42);
        assert_eq!(cd::T0SZ.get(e[0]), 16);
        assert_eq!(cd::IPS.get(e[0]), 5);
        assert_eq!(cd::EPD1.get(e[0]), 1);
        assert_eq!(cd::AA64.get(e[0]), 1);
        assert_eq!(e[1], 0x4030_0000);
        assert_eq!(e[3], 0x0004_ff44);
        // Faults terminate unless the SMMU forces stalls, where CD.S = 0
        // would make the CD ILLEGAL.
        assert_eq!(cd::S.get(e[0]), 0);
        for (stall, s) in [
            (StallModel::StallAndTerminate, 0),
            (StallModel::StallForced, 1),
        ] {
            let e = build_cd(&regs, 42, &EntryEnv { stall, ..ENV });
            assert_eq!(cd::S.get(e[0]), s, "{stall:?}");
        }
    }

    #[test]
    fn stage_2_stalls_exactly_where_the_smmu_forces_them() {
        let s2 = s2();
        for (stall, s2s, s1stalld) in [
            (StallModel::TerminateOnly, 0, 0),
            (StallModel::StallAndTerminate, 0, 1),
            (StallModel::StallForced, 1, 0),
        ] {
            let env = EntryEnv { stall, ..ENV };
            let e = build_ste(&SteConfig::Stage2 { s2, ats: false }, &env);
            assert_eq!(ste::S2S.get(e[2]), s2s, "{stall:?}");
            let e = build_ste(
                &SteConfig::Nested {
                    cd: CdTableRef {
                        ptr: 0x9000_0000,
                        format: CdFormat::Linear,
                        cdmax_log2: 0,
                    },
                    s1dss: S1Dss::Terminate,
                    s2,
                    ats: false,
                },
                &env,
            );
            assert_eq!(ste::S2S.get(e[2]), s2s, "{stall:?}");
            assert_eq!(ste::S1STALLD.get(e[1]), s1stalld, "{stall:?}");
        }
    }

    #[test]
    fn transition_sync_counts() {
        // The sync counts Linux's KUnit test expects for the same transitions.
        let abort = build_ste(&SteConfig::Abort, &ENV);
        let bypass = build_ste(&SteConfig::Bypass, &ENV);
        let s1 = |dss| {
            build_ste(
                &SteConfig::Stage1 {
                    cd: cdt(4),
                    s1dss: dss,
                    ats: false,
                },
                &ENV,
            )
        };
        let s2e = build_ste(
            &SteConfig::Stage2 {
                s2: s2(),
                ats: false,
            },
            &ENV,
        );
        let n = |a: &Entry, b: &Entry| plan_update(EntryKind::Ste, a, b).syncs();
        assert_eq!(n(&abort, &bypass), 2);
        assert_eq!(n(&bypass, &abort), 2);
        assert_eq!(n(&abort, &s1(S1Dss::Ssid0)), 2);
        assert_eq!(n(&s1(S1Dss::Ssid0), &abort), 2);
        assert_eq!(n(&bypass, &s1(S1Dss::Ssid0)), 3);
        assert_eq!(n(&s1(S1Dss::Ssid0), &bypass), 3);
        assert_eq!(n(&abort, &s2e), 2);
        assert_eq!(n(&s2e, &abort), 2);
        assert_eq!(n(&bypass, &s2e), 2);
        assert_eq!(n(&s2e, &bypass), 2);
        assert_eq!(n(&s1(S1Dss::Ssid0), &s2e), 3);
        assert_eq!(n(&s2e, &s1(S1Dss::Ssid0)), 3);
        // S1DSS changes on a live CD table: one used word (word 1) changes.
        assert_eq!(n(&s1(S1Dss::Ssid0), &s1(S1Dss::Bypass)), 1);
        assert_eq!(n(&s1(S1Dss::Bypass), &s1(S1Dss::Terminate)), 1);
    }
}
