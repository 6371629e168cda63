//! Probe: turn the ID registers into a typed feature set, applying the
//! IIDR errata of Arm's own SMMUs. Pure functions, usable by a hypervisor
//! that only has the register values.

use crate::bits::Field;
use crate::env::RegisterFrame;
use crate::regs::{self, aidr, idr0, idr1, idr3, idr5, iidr};

/// JEP106 code of Arm Ltd in IIDR.IMPLEMENTER.
pub const IMPLEMENTER_ARM: u16 = 0x43b;
/// IIDR.PRODUCT_ID of MMU-600.
pub const PRODUCT_MMU_600: u16 = 0x483;
/// IIDR.PRODUCT_ID of MMU-700.
pub const PRODUCT_MMU_700: u16 = 0x487;
/// IIDR.PRODUCT_ID of MMU-L1.
pub const PRODUCT_MMU_L1: u16 = 0x48a;
/// IIDR.PRODUCT_ID of MMU-S3.
pub const PRODUCT_MMU_S3: u16 = 0x498;

/// Smallest queue (log2 of entries) the driver accepts: queues of 64
/// entries or fewer cannot hold a useful batch plus its CMD_SYNC.
pub const MIN_QUEUE_LOG2: u8 = 7;

/// Raw identification register values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRegs {
    /// IDR0..IDR5.
    pub idr: [u32; 6],
    /// IIDR.
    pub iidr: u32,
    /// AIDR.
    pub aidr: u32,
}

impl IdRegs {
    /// Returns the ID registers read from `frame`.
    pub fn read(frame: &impl RegisterFrame) -> Self {
        let mut idr = [0; 6];
        for (i, r) in idr.iter_mut().enumerate() {
            *r = frame.read32(regs::IDR0 + 4 * i);
        }
        Self {
            idr,
            iidr: frame.read32(regs::IIDR),
            aidr: frame.read32(regs::AIDR),
        }
    }
}

/// Why the hardware cannot be driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The SMMU cannot walk AArch64 (VMSAv8-64) tables.
    #[error("SMMU does not support AArch64 translation tables (IDR0.TTF={0})")]
    NoAArch64Tables(u8),
    /// Neither stage 1 nor stage 2 is implemented.
    #[error("SMMU implements neither stage-1 nor stage-2 translation")]
    NoTranslation,
    /// A queue is too small.
    #[error("{queue} queue of 2^{log2} entries is too small (need at least 2^{min})", min = MIN_QUEUE_LOG2)]
    QueueTooSmall {
        /// "command" or "event".
        queue: &'static str,
        /// log2 of the largest size the hardware supports.
        log2: u8,
    },
    /// Tables must be big-endian; the driver writes little-endian tables.
    #[error("SMMU only walks big-endian tables")]
    BigEndianOnly,
    /// Base addresses are relative to the SMMU (IDR1.REL); not supported.
    #[error("SMMU uses relative base addresses (IDR1.REL)")]
    RelativeBase,
    /// Queue or table bases are preset by the implementation; not supported.
    #[error("SMMU has preset queue or table bases")]
    PresetBases,
    /// Not an SMMUv3.
    #[error("unsupported architecture major revision {0} (AIDR)")]
    UnsupportedArch(u8),
    /// No translation granule is supported.
    #[error("SMMU supports no translation granule (IDR5)")]
    NoGranule,
    /// IDR5.OAS holds a reserved encoding.
    #[error("reserved output address size encoding {0} (IDR5.OAS)")]
    BadOas(u8),
    /// IDR1.SIDSIZE is above the architectural maximum of 32.
    #[error("stream ID size {0} is above 32 bits")]
    BadSidSize(u8),
    /// IDR1.SSIDSIZE is above the architectural maximum of 20.
    #[error("substream ID size {0} is above 20 bits")]
    BadSsidSize(u8),
}

/// Hardware update of table entries (IDR0.HTTU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Httu {
    /// No hardware updates.
    None,
    /// Access flag only.
    AccessFlag,
    /// Access flag and dirty state.
    AccessDirty,
}

/// Stall behaviour (IDR0.STALL_MODEL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallModel {
    /// Stall and terminate both supported.
    StallAndTerminate,
    /// Only terminate: faults never stall.
    TerminateOnly,
    /// Stall is forced: every recorded fault stalls.
    StallForced,
}

/// Endianness of table walks (IDR0.TTENDIAN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endianness {
    /// Either, chosen per table.
    Mixed,
    /// Little-endian only.
    Little,
    /// Big-endian only.
    Big,
}

/// Implementation identity (IIDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Iidr {
    /// JEP106 implementer code.
    pub implementer: u16,
    /// Product ID.
    pub product: u16,
    /// Major revision.
    pub variant: u8,
    /// Minor revision.
    pub revision: u8,
}

impl Iidr {
    /// Returns the decoded IIDR value.
    pub fn from_raw(raw: u32) -> Self {
        let r = u64::from(raw);
        Self {
            implementer: iidr::IMPLEMENTER.get(r) as u16,
            product: iidr::PRODUCT_ID.get(r) as u16,
            variant: iidr::VARIANT.get(r) as u8,
            revision: iidr::REVISION.get(r) as u8,
        }
    }
}

/// Errata workarounds applied from IIDR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errata {
    /// SEV is not trusted (MMU-600 r0p0..r0p2): poll for CMD_SYNC completion.
    pub no_sev: bool,
    /// Nested translation is broken (MMU-600 before r2, early MMU-700).
    pub no_nesting: bool,
    /// Broadcast TLB maintenance is not trusted (MMU-700, MMU-L1, MMU-S3).
    pub no_btm: bool,
    /// Each full command batch must end with a CMD_SYNC (early MMU-700).
    pub force_sync: bool,
}

impl Errata {
    /// Returns the workarounds needed for an implementation.
    pub fn for_iidr(id: Iidr) -> Self {
        let mut e = Self::default();
        if id.implementer != IMPLEMENTER_ARM {
            return e;
        }
        match id.product {
            PRODUCT_MMU_600 => {
                e.no_sev = id.variant == 0 && id.revision <= 2;
                e.no_nesting = id.variant < 2;
            }
            PRODUCT_MMU_700 => {
                e.no_btm = true;
                if id.variant < 1 || id.revision < 1 {
                    e.force_sync = true;
                    e.no_nesting = true;
                }
            }
            PRODUCT_MMU_L1 | PRODUCT_MMU_S3 => e.no_btm = true,
            _ => {}
        }
        e
    }
}

/// What the SMMU can do, after errata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Stage-1 translation.
    pub stage1: bool,
    /// Stage-2 translation.
    pub stage2: bool,
    /// Nested (stage 1 then stage 2) translation usable.
    pub nesting: bool,
    /// AArch32 (LPAE) tables also supported.
    pub aarch32_tables: bool,
    /// Table walks, queues and MSIs are coherent with the CPU caches.
    pub coherent: bool,
    /// Broadcast TLB maintenance usable.
    pub btm: bool,
    /// Hardware access/dirty updates.
    pub httu: Httu,
    /// EL2 stage-1 contexts.
    pub hyp: bool,
    /// PCIe ATS.
    pub ats: bool,
    /// PCIe PRI.
    pub pri: bool,
    /// MSIs.
    pub msi: bool,
    /// SEV on CMD_SYNC completion usable (WFE-based waiting).
    pub sev: bool,
    /// ASID width in bits (8 or 16).
    pub asid_bits: u8,
    /// VMID width in bits (8 or 16).
    pub vmid_bits: u8,
    /// Two-level CD tables.
    pub cd_2lvl: bool,
    /// Two-level stream tables.
    pub strtab_2lvl: bool,
    /// Table walk endianness.
    pub endianness: Endianness,
    /// Stall model.
    pub stall: StallModel,
    /// Stream ID width.
    pub sid_bits: u8,
    /// Substream ID width (0: no substreams).
    pub ssid_bits: u8,
    /// log2 of the largest command queue.
    pub cmdq_log2: u8,
    /// log2 of the largest event queue.
    pub evtq_log2: u8,
    /// log2 of the largest PRI queue.
    pub priq_log2: u8,
    /// Range TLB invalidation (IDR3.RIL).
    pub ril: bool,
    /// Stage-2 forced write-back (IDR3.FWB).
    pub fwb: bool,
    /// Break-before-make level (IDR3.BBML).
    pub bbml: u8,
    /// Hierarchical attribute disable (IDR3.HAD).
    pub had: bool,
    /// Output (physical) address bits.
    pub oas_bits: u8,
    /// Stage-1 input (virtual) address bits.
    pub va_bits: u8,
    /// Stage-2 input (intermediate physical) address bits.
    pub ipa_bits: u8,
    /// Supported page and block sizes (bit n set: 2^n bytes).
    pub pgsize_bitmap: u64,
    /// Implementation identity.
    pub iidr: Iidr,
    /// SMMUv3.x minor version.
    pub arch_minor: u8,
    /// Errata workarounds in force.
    pub errata: Errata,
}

/// Returns the OAS in bits for an IDR5.OAS / TCR.IPS encoding.
pub fn oas_bits(enc: u8) -> Option<u8> {
    Some(match enc {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => return None,
    })
}

/// Returns the IDR5.OAS / TCR.IPS / VTCR.PS encoding of an address size,
/// rounding up to the next architectural size.
pub fn oas_encoding(bits: u8) -> Option<u8> {
    (0..=6).find(|&e| oas_bits(e).is_some_and(|b| b >= bits))
}

fn get(f: Field, reg: u32) -> u8 {
    f.get(u64::from(reg)) as u8
}

/// Returns the features described by `ids`, with errata applied.
///
/// # Errors
///
/// A [`ProbeError`] naming the first reason the hardware cannot be driven.
pub fn parse(ids: &IdRegs) -> Result<Features, ProbeError> {
    let [i0, i1, _i2, i3, _i4, i5] = ids.idr;
    let major = get(aidr::MAJOR, ids.aidr);
    if major != 0 {
        return Err(ProbeError::UnsupportedArch(major));
    }
    let ttf = get(idr0::TTF, i0);
    if ttf & 2 == 0 {
        return Err(ProbeError::NoAArch64Tables(ttf));
    }
    let stage1 = get(idr0::S1P, i0) != 0;
    let stage2 = get(idr0::S2P, i0) != 0;
    if !stage1 && !stage2 {
        return Err(ProbeError::NoTranslation);
    }
    let endianness = match get(idr0::TTENDIAN, i0) {
        0 => Endianness::Mixed,
        3 => return Err(ProbeError::BigEndianOnly),
        _ => Endianness::Little,
    };
    if get(idr1::REL, i1) != 0 {
        return Err(ProbeError::RelativeBase);
    }
    if get(idr1::QUEUES_PRESET, i1) != 0 || get(idr1::TABLES_PRESET, i1) != 0 {
        return Err(ProbeError::PresetBases);
    }
    let cmdq_log2 = get(idr1::CMDQS, i1);
    if cmdq_log2 < MIN_QUEUE_LOG2 {
        return Err(ProbeError::QueueTooSmall {
            queue: "command",
            log2: cmdq_log2,
        });
    }
    let evtq_log2 = get(idr1::EVENTQS, i1);
    if evtq_log2 < MIN_QUEUE_LOG2 {
        return Err(ProbeError::QueueTooSmall {
            queue: "event",
            log2: evtq_log2,
        });
    }
    let sid_bits = get(idr1::SIDSIZE, i1);
    if sid_bits > 32 {
        return Err(ProbeError::BadSidSize(sid_bits));
    }
    // Substream IDs are at most 20 bits (PCIe PASID width); a larger value
    // would size CD tables the STE cannot describe.
    let ssid_bits = get(idr1::SSIDSIZE, i1);
    if ssid_bits > 20 {
        return Err(ProbeError::BadSsidSize(ssid_bits));
    }
    let oas_enc = get(idr5::OAS, i5);
    let oas = oas_bits(oas_enc).ok_or(ProbeError::BadOas(oas_enc))?;

    let mut pgsize_bitmap = 0u64;
    if get(idr5::GRAN4K, i5) != 0 {
        pgsize_bitmap |= (1 << 12) | (1 << 21) | (1 << 30);
    }
    if get(idr5::GRAN16K, i5) != 0 {
        pgsize_bitmap |= (1 << 14) | (1 << 25);
    }
    if get(idr5::GRAN64K, i5) != 0 {
        pgsize_bitmap |= (1 << 16) | (1 << 29);
        // With 52-bit output addresses a 64K-granule level-1 block maps 4 TiB.
        if oas == 52 {
            pgsize_bitmap |= 1 << 42;
        }
    }
    if pgsize_bitmap == 0 {
        return Err(ProbeError::NoGranule);
    }

    let iidr = Iidr::from_raw(ids.iidr);
    let errata = Errata::for_iidr(iidr);
    let vax = get(idr5::VAX, i5) == 1 && get(idr5::GRAN64K, i5) != 0;

    Ok(Features {
        stage1,
        stage2,
        nesting: stage1 && stage2 && !errata.no_nesting,
        aarch32_tables: ttf & 1 != 0,
        coherent: get(idr0::COHACC, i0) != 0,
        btm: get(idr0::BTM, i0) != 0 && !errata.no_btm,
        httu: match get(idr0::HTTU, i0) {
            1 => Httu::AccessFlag,
            2 => Httu::AccessDirty,
            _ => Httu::None,
        },
        hyp: get(idr0::HYP, i0) != 0,
        ats: get(idr0::ATS, i0) != 0,
        pri: get(idr0::PRI, i0) != 0,
        msi: get(idr0::MSI, i0) != 0,
        sev: get(idr0::SEV, i0) != 0 && !errata.no_sev,
        asid_bits: if get(idr0::ASID16, i0) != 0 { 16 } else { 8 },
        vmid_bits: if get(idr0::VMID16, i0) != 0 { 16 } else { 8 },
        cd_2lvl: get(idr0::CD2L, i0) != 0,
        strtab_2lvl: get(idr0::ST_LEVEL, i0) == 1,
        endianness,
        stall: match get(idr0::STALL_MODEL, i0) {
            1 => StallModel::TerminateOnly,
            2 => StallModel::StallForced,
            _ => StallModel::StallAndTerminate,
        },
        sid_bits,
        ssid_bits,
        cmdq_log2,
        evtq_log2,
        priq_log2: get(idr1::PRIQS, i1),
        ril: get(idr3::RIL, i3) != 0,
        fwb: get(idr3::FWB, i3) != 0,
        bbml: get(idr3::BBML, i3),
        had: get(idr3::HAD, i3) != 0,
        oas_bits: oas,
        va_bits: if vax { 52 } else { 48 },
        ipa_bits: oas,
        pgsize_bitmap,
        iidr,
        arch_minor: get(aidr::MINOR, ids.aidr),
        errata,
    })
}

/// Returns the features of the SMMU behind `frame`.
///
/// # Errors
///
/// See [`parse`].
pub fn probe(frame: &impl RegisterFrame) -> Result<Features, ProbeError> {
    parse(&IdRegs::read(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10 `virt,iommu=smmuv3`.
    pub(crate) const QEMU: IdRegs = IdRegs {
        idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
        iidr: 0,
        aidr: 1,
    };

    #[test]
    fn qemu_smmu() {
        let f = parse(&QEMU).unwrap();
        assert!(f.stage1 && f.stage2 && f.nesting);
        assert!(f.coherent && f.ril && f.strtab_2lvl && !f.cd_2lvl);
        assert!(!f.sev && !f.msi && !f.ats && !f.pri && !f.btm);
        assert_eq!(f.httu, Httu::None);
        assert_eq!(f.stall, StallModel::TerminateOnly);
        assert_eq!((f.asid_bits, f.vmid_bits), (16, 16));
        assert_eq!((f.sid_bits, f.ssid_bits), (16, 0));
        // SSIDSIZE above 20 (fuzz finding) is refused; 20 is the maximum.
        let mut wide = QEMU;
        wide.idr[1] = (wide.idr[1] & !(0x1f << 6)) | 25 << 6;
        assert_eq!(parse(&wide).map(|_| ()), Err(ProbeError::BadSsidSize(25)));
        wide.idr[1] = (wide.idr[1] & !(0x1f << 6)) | 20 << 6;
        assert_eq!(parse(&wide).map(|f| f.ssid_bits), Ok(20));
        assert_eq!((f.cmdq_log2, f.evtq_log2), (19, 19));
        assert_eq!(f.bbml, 2);
        assert_eq!(f.oas_bits, 44);
        assert_eq!(f.arch_minor, 1);
        let want =
            (1 << 12) | (1 << 21) | (1 << 30) | (1 << 14) | (1 << 25) | (1 << 16) | (1 << 29);
        assert_eq!(f.pgsize_bitmap, want);
        // virt-9.1: stage 1 only, no nesting.
        let mut old = QEMU;
        old.idr[0] = 0x0d44_101a;
        old.idr[3] = 0x1404;
        let f = parse(&old).unwrap();
        assert!(f.stage1 && !f.stage2 && !f.nesting);
        assert!(f.ril && f.bbml == 2);
    }

    #[test]
    fn oas52_adds_4tb_pages() {
        let mut ids = QEMU;
        ids.idr[5] = 0x40 | 6;
        let f = parse(&ids).unwrap();
        assert_eq!(f.oas_bits, 52);
        assert_eq!(f.pgsize_bitmap, (1 << 16) | (1 << 29) | (1 << 42));
        ids.idr[5] = 0x10 | 6;
        assert_eq!(parse(&ids).unwrap().pgsize_bitmap & (1 << 42), 0);
    }

    #[test]
    fn unusable_hardware_is_refused() {
        let mut ids = QEMU;
        ids.idr[0] = (ids.idr[0] & !0xc) | (1 << 2);
        assert_eq!(parse(&ids), Err(ProbeError::NoAArch64Tables(1)));
        let mut ids = QEMU;
        ids.idr[0] &= !3;
        assert_eq!(parse(&ids), Err(ProbeError::NoTranslation));
        let mut ids = QEMU;
        ids.idr[1] = (ids.idr[1] & !(0x1f << 21)) | (6 << 21);
        assert_eq!(
            parse(&ids),
            Err(ProbeError::QueueTooSmall {
                queue: "command",
                log2: 6
            })
        );
        let mut ids = QEMU;
        ids.idr[1] = (ids.idr[1] & !(0x1f << 16)) | (3 << 16);
        assert!(matches!(
            parse(&ids),
            Err(ProbeError::QueueTooSmall { queue: "event", .. })
        ));
        let mut ids = QEMU;
        ids.idr[5] = 0x7;
        assert_eq!(parse(&ids), Err(ProbeError::BadOas(7)));
        let mut ids = QEMU;
        ids.idr[5] = 4;
        assert_eq!(parse(&ids), Err(ProbeError::NoGranule));
        let mut ids = QEMU;
        ids.idr[0] |= 3 << 21;
        assert_eq!(parse(&ids), Err(ProbeError::BigEndianOnly));
        let mut ids = QEMU;
        ids.aidr = 0x10;
        assert_eq!(parse(&ids), Err(ProbeError::UnsupportedArch(1)));
        let mut ids = QEMU;
        ids.idr[1] |= 1 << 28;
        assert_eq!(parse(&ids), Err(ProbeError::RelativeBase));
    }

    fn iidr(product: u32, variant: u32, revision: u32) -> u32 {
        (product << 20) | (variant << 16) | (revision << 12) | u32::from(IMPLEMENTER_ARM)
    }

    #[test]
    fn errata() {
        let mut ids = QEMU;
        ids.idr[0] |= (1 << 14) | (1 << 5); // SEV, BTM
        let with = |raw| {
            let mut i = ids;
            i.iidr = raw;
            parse(&i).unwrap()
        };
        let f = with(iidr(0x483, 0, 2));
        assert!(!f.sev && !f.nesting && f.btm && f.errata.no_sev);
        let f = with(iidr(0x483, 0, 3));
        assert!(f.sev && !f.nesting);
        let f = with(iidr(0x483, 2, 0));
        assert!(f.sev && f.nesting);
        let f = with(iidr(0x487, 0, 1));
        assert!(!f.btm && !f.nesting && f.errata.force_sync);
        let f = with(iidr(0x487, 1, 0));
        assert!(!f.nesting && f.errata.force_sync);
        let f = with(iidr(0x487, 1, 1));
        assert!(!f.btm && f.nesting && !f.errata.force_sync);
        for p in [0x48a, 0x498] {
            let f = with(iidr(p, 0, 0));
            assert!(!f.btm && f.nesting && f.sev);
        }
        // Another implementer with the same product number: no errata.
        let f = with((0x483 << 20) | 0x123);
        assert_eq!(f.errata, Errata::default());
        assert!(f.btm);
    }

    #[test]
    fn oas_encodings() {
        assert_eq!(oas_encoding(44), Some(4));
        assert_eq!(oas_encoding(45), Some(5));
        assert_eq!(oas_encoding(53), None);
        assert_eq!(oas_bits(6), Some(52));
    }
}
