//! SMMUv3 register frame layout (Arm IHI 0070, chapter 6): offsets and
//! field positions, kept apart from the behaviour in [`crate::SmmuModel`].

use crate::config::{Httu, ModelConfig, StallModel};

/// Size of the whole register frame (page 0 and page 1).
pub const FRAME_SIZE: u64 = 0x20000;
/// Offset of register page 1.
pub const PAGE1: u64 = 0x10000;

/// SMMU_IDR0 offset.
pub const IDR0: u64 = 0x00;
/// SMMU_IDR0.COHACC: coherent access to tables, queues and MSIs.
pub const IDR0_COHACC: u32 = 1 << 4;
/// SMMU_IDR0.MSI: MSIs are supported.
pub const IDR0_MSI: u32 = 1 << 13;
/// SMMU_IDR1 offset.
pub const IDR1: u64 = 0x04;
/// SMMU_IDR2 offset.
pub const IDR2: u64 = 0x08;
/// SMMU_IDR3 offset.
pub const IDR3: u64 = 0x0c;
/// SMMU_IDR4 offset.
pub const IDR4: u64 = 0x10;
/// SMMU_IDR5 offset.
pub const IDR5: u64 = 0x14;
/// SMMU_IIDR offset.
pub const IIDR: u64 = 0x18;
/// SMMU_AIDR offset.
pub const AIDR: u64 = 0x1c;
/// SMMU_CR0 offset.
pub const CR0: u64 = 0x20;
/// SMMU_CR0ACK offset.
pub const CR0ACK: u64 = 0x24;
/// SMMU_CR1 offset.
pub const CR1: u64 = 0x28;
/// SMMU_CR2 offset.
pub const CR2: u64 = 0x2c;
/// SMMU_STATUSR offset.
pub const STATUSR: u64 = 0x40;
/// SMMU_GBPA offset.
pub const GBPA: u64 = 0x44;
/// SMMU_AGBPA offset.
pub const AGBPA: u64 = 0x48;
/// SMMU_IRQ_CTRL offset.
pub const IRQ_CTRL: u64 = 0x50;
/// SMMU_IRQ_CTRLACK offset.
pub const IRQ_CTRLACK: u64 = 0x54;
/// SMMU_GERROR offset.
pub const GERROR: u64 = 0x60;
/// SMMU_GERRORN offset.
pub const GERRORN: u64 = 0x64;
/// SMMU_GERROR_IRQ_CFG0 offset (64-bit).
pub const GERROR_IRQ_CFG0: u64 = 0x68;
/// SMMU_GERROR_IRQ_CFG1 offset.
pub const GERROR_IRQ_CFG1: u64 = 0x70;
/// SMMU_GERROR_IRQ_CFG2 offset.
pub const GERROR_IRQ_CFG2: u64 = 0x74;
/// SMMU_STRTAB_BASE offset (64-bit).
pub const STRTAB_BASE: u64 = 0x80;
/// SMMU_STRTAB_BASE_CFG offset.
pub const STRTAB_BASE_CFG: u64 = 0x88;
/// SMMU_CMDQ_BASE offset (64-bit).
pub const CMDQ_BASE: u64 = 0x90;
/// SMMU_CMDQ_PROD offset.
pub const CMDQ_PROD: u64 = 0x98;
/// SMMU_CMDQ_CONS offset.
pub const CMDQ_CONS: u64 = 0x9c;
/// SMMU_EVENTQ_BASE offset (64-bit).
pub const EVENTQ_BASE: u64 = 0xa0;
/// SMMU_EVENTQ_PROD page-0 alias offset (page 1: `PAGE1 + EVENTQ_PROD`).
pub const EVENTQ_PROD: u64 = 0xa8;
/// SMMU_EVENTQ_CONS page-0 alias offset (page 1: `PAGE1 + EVENTQ_CONS`).
pub const EVENTQ_CONS: u64 = 0xac;
/// SMMU_EVENTQ_IRQ_CFG0 offset (64-bit).
pub const EVENTQ_IRQ_CFG0: u64 = 0xb0;
/// SMMU_EVENTQ_IRQ_CFG1 offset.
pub const EVENTQ_IRQ_CFG1: u64 = 0xb8;
/// SMMU_EVENTQ_IRQ_CFG2 offset.
pub const EVENTQ_IRQ_CFG2: u64 = 0xbc;
/// SMMU_PRIQ_BASE offset (64-bit); PRI is not implemented, RAZ/WI.
pub const PRIQ_BASE: u64 = 0xc0;

/// SMMU_CR0 fields.
pub mod cr0 {
    /// SMMUEN.
    pub const SMMUEN: u32 = 1 << 0;
    /// PRIQEN.
    pub const PRIQEN: u32 = 1 << 1;
    /// EVENTQEN.
    pub const EVENTQEN: u32 = 1 << 2;
    /// CMDQEN.
    pub const CMDQEN: u32 = 1 << 3;
    /// ATSCHK.
    pub const ATSCHK: u32 = 1 << 4;
    /// VMW, bits \[8:6\].
    pub const VMW_MASK: u32 = 0x7 << 6;
}

/// SMMU_GBPA fields.
pub mod gbpa {
    /// UPDATE: write 1 with new fields; reads 1 until applied.
    pub const UPDATE: u32 = 1 << 31;
    /// ABORT: abort all incoming transactions while SMMUEN = 0.
    pub const ABORT: u32 = 1 << 20;
    /// Every field software may program (INSTCFG, PRIVCFG, SHCFG,
    /// ALLOCCFG, MTCFG, MEMATTR, ABORT).
    pub const FIELDS: u32 =
        ABORT | (0x3 << 18) | (0x3 << 16) | (0x3 << 12) | (0xf << 8) | (1 << 4) | 0xf;
    /// Value of the attribute fields out of reset (SHCFG = 0b01, "use
    /// incoming").
    pub const RESET_ATTRS: u32 = 0x1 << 12;
}

/// SMMU_GERROR / SMMU_GERRORN fields.
pub mod gerror {
    /// CMDQ_ERR.
    pub const CMDQ_ERR: u32 = 1 << 0;
    /// EVENTQ_ABT_ERR.
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    /// PRIQ_ABT_ERR.
    pub const PRIQ_ABT_ERR: u32 = 1 << 3;
    /// MSI_CMDQ_ABT_ERR.
    pub const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
    /// MSI_EVENTQ_ABT_ERR.
    pub const MSI_EVENTQ_ABT_ERR: u32 = 1 << 5;
    /// MSI_PRIQ_ABT_ERR.
    pub const MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
    /// MSI_GERROR_ABT_ERR.
    pub const MSI_GERROR_ABT_ERR: u32 = 1 << 7;
    /// SFM_ERR.
    pub const SFM_ERR: u32 = 1 << 8;
    /// Every architected bit.
    pub const ALL: u32 = 0x1fd;
}

/// SMMU_IRQ_CTRL fields.
pub mod irq_ctrl {
    /// GERROR_IRQEN.
    pub const GERROR_IRQEN: u32 = 1 << 0;
    /// PRIQ_IRQEN.
    pub const PRIQ_IRQEN: u32 = 1 << 1;
    /// EVENTQ_IRQEN.
    pub const EVENTQ_IRQEN: u32 = 1 << 2;
}

/// MSI configuration (SMMU_GERROR_IRQ_CFG0..2, SMMU_EVENTQ_IRQ_CFG0..2)
/// fields; every set has the same layout (6.3.21 to 6.3.23).
pub mod irq_cfg {
    /// CFG0.ADDR's lowest bit: bits \[1:0\] are RES0.
    pub const ADDR_LSB: u32 = 2;
    /// CFG0.ADDR's highest bit + 1 (\[55:2\]); bits above the OAS are
    /// RES0.
    pub const ADDR_END: u32 = 56;
    /// CFG2.MemAttr, bits \[3:0\] (encoded as STE.MemAttr).
    pub const MEMATTR_MASK: u32 = 0xf;
    /// CFG2.SH shift (bits \[5:4\]).
    pub const SH_SHIFT: u32 = 4;
    /// CFG2.SH mask (after shifting).
    pub const SH_MASK: u32 = 0b11;
    /// Every CFG2 field (bits \[31:6\] are RES0).
    pub const CFG2_FIELDS: u32 = SH_MASK << SH_SHIFT | MEMATTR_MASK;
}

/// Queue registers (SMMU_*Q_BASE / PROD / CONS) fields.
pub mod queue {
    /// Base register LOG2SIZE, bits \[4:0\].
    pub const LOG2SIZE_MASK: u64 = 0x1f;
    /// Base register ADDR, bits \[51:5\].
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;
    /// Base register RA/WA hint, bit 62.
    pub const ALLOC_HINT: u64 = 1 << 62;
    /// CMDQ_CONS.ERR, bits \[30:24\].
    pub const CONS_ERR_SHIFT: u32 = 24;
    /// CMDQ_CONS.ERR mask (after shifting).
    pub const CONS_ERR_MASK: u32 = 0x7f;
    /// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG, bit 31.
    pub const OVFLG: u32 = 1 << 31;
    /// Index + wrap bits of the largest (2^19 entries) queue.
    pub const PTR_MASK: u32 = (1 << 20) - 1;
}

/// SMMU_STRTAB_BASE / SMMU_STRTAB_BASE_CFG fields.
pub mod strtab {
    /// STRTAB_BASE.ADDR, bits \[51:6\].
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    /// STRTAB_BASE.RA, bit 62.
    pub const RA: u64 = 1 << 62;
    /// STRTAB_BASE_CFG.LOG2SIZE, bits \[5:0\].
    pub const LOG2SIZE_MASK: u32 = 0x3f;
    /// STRTAB_BASE_CFG.SPLIT shift (bits \[10:6\]).
    pub const SPLIT_SHIFT: u32 = 6;
    /// STRTAB_BASE_CFG.FMT shift (bits \[17:16\]).
    pub const FMT_SHIFT: u32 = 16;
    /// Writable bits of STRTAB_BASE_CFG.
    pub const CFG_MASK: u32 = 0x3 << 16 | 0x1f << 6 | 0x3f;
}

/// CMDQ_CONS.ERR values.
pub mod cerror {
    /// No error.
    pub const NONE: u32 = 0;
    /// Illegal command (unknown opcode or malformed fields).
    pub const ILL: u32 = 1;
    /// Abort when fetching the command.
    pub const ABT: u32 = 2;
    /// ATC invalidation timed out before CMD_SYNC.
    pub const ATC_INV_SYNC: u32 = 3;
}

/// SMMU_IDR5.STALL_MAX of a model that stalls: the most stalled
/// transactions it keeps outstanding (one short of the 65,536 STAGs, the
/// field being 16 bits). Further faults that would stall terminate.
pub const STALL_MAX: u32 = 0xffff;

/// SMMU_IIDR encoding.
pub mod iidr {
    /// JEP106 code of Arm (implementer field).
    pub const IMPLEMENTER_ARM: u32 = 0x43b;
    /// ProductID of the CoreLink MMU-600.
    pub const PRODUCT_MMU600: u32 = 0x483;
    /// ProductID of the CoreLink MMU-700.
    pub const PRODUCT_MMU700: u32 = 0x487;
}

/// Returns the SMMU_IIDR value of an Arm part.
pub fn iidr(product: u32, variant: u8, revision: u8) -> u32 {
    (product & 0xfff) << 20
        | u32::from(variant & 0xf) << 16
        | u32::from(revision & 0xf) << 12
        | iidr::IMPLEMENTER_ARM
}

/// Returns the IDR5.OAS / CD.IPS / STE.S2PS encoding of an address size.
pub fn oas_bits_to_field(bits: u8) -> Option<u32> {
    Some(match bits {
        32 => 0,
        36 => 1,
        40 => 2,
        42 => 3,
        44 => 4,
        48 => 5,
        52 => 6,
        _ => return None,
    })
}

/// Returns the address size of an OAS/IPS/PS encoding (reserved values
/// give `None`).
pub fn oas_field_to_bits(field: u64) -> Option<u8> {
    Some(match field {
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

/// The ID registers a configuration advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRegs {
    /// SMMU_IDR0..5.
    pub idr: [u32; 6],
    /// SMMU_IIDR.
    pub iidr: u32,
    /// SMMU_AIDR.
    pub aidr: u32,
}

impl IdRegs {
    /// Returns the ID registers of `cfg` with IDR0.COHACC = `coherent`.
    pub fn new(cfg: &ModelConfig, coherent: bool) -> Self {
        let b = |v: bool, shift: u32| u32::from(v) << shift;
        let httu = match cfg.httu {
            Httu::None => 0,
            Httu::AccessFlag => 1,
            Httu::AccessAndDirty => 2,
        };
        let idr0 = b(cfg.stage2, 0)
            | b(cfg.stage1, 1)
            | 2 << 2 // TTF: AArch64 tables only
            | if coherent { IDR0_COHACC } else { 0 }
            | b(cfg.btm, 5)
            | httu << 6
            | b(cfg.hyp, 9)
            | b(cfg.ats, 10)
            | b(cfg.asid16, 12)
            | if cfg.msi { IDR0_MSI } else { 0 }
            | b(cfg.sev, 14)
            | b(cfg.vmid16, 18)
            | b(cfg.cd2l, 19)
            | 2 << 21 // TTENDIAN: little-endian only
            | cfg.stall_model.field() << 24
            | b(cfg.term_model_abort_only, 26)
            | b(cfg.two_level_strtab, 27);
        let idr1 = u32::from(cfg.sid_bits)
            | u32::from(cfg.ssid_bits) << 6
            | u32::from(cfg.evtq_log2) << 16
            | u32::from(cfg.cmdq_log2) << 21
            | b(cfg.attr_perms_ovr, 26);
        let idr3 = b(cfg.had, 2) | b(cfg.xnx, 4) | b(cfg.ril, 10) | u32::from(cfg.bbml & 3) << 11;
        // STALL_MAX is RES0 without the stall model.
        let stall_max = if cfg.stall_model == StallModel::TerminateOnly {
            0
        } else {
            STALL_MAX
        };
        let idr5 = oas_bits_to_field(cfg.oas_bits).unwrap_or(5)
            | stall_max << 16
            | b(cfg.gran4k, 4)
            | b(cfg.gran16k, 5)
            | b(cfg.gran64k, 6)
            | b(cfg.vax52, 10);
        Self {
            idr: [idr0, idr1, 0, idr3, 0, idr5],
            iidr: cfg.iidr,
            aidr: u32::from(cfg.arch_minor & 0xf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_preset_matches_qemu_id_registers() {
        let r = IdRegs::new(&ModelConfig::qemu_like(), true);
        assert_eq!(r.idr[0], 0x0d44_101b);
        assert_eq!(r.idr[1], 0x0273_0010);
        assert_eq!(r.idr[3], 0x1414);
        assert_eq!(r.idr[5], 0x74);
        assert_eq!((r.iidr, r.aidr), (0, 1));
        let s1 = IdRegs::new(&ModelConfig::qemu_stage1_only(), true);
        assert_eq!(s1.idr[0], 0x0d44_101a);
        assert_eq!(s1.idr[3], 0x1404, "QEMU virt-9.1 has no XNX");
    }

    #[test]
    fn idr0_fields_are_placed_per_architecture() {
        assert_eq!(IDR0_COHACC, 1 << 4);
        assert_eq!(IDR0_MSI, 1 << 13);
        let msi = ModelConfig {
            msi: true,
            ..ModelConfig::default()
        };
        let no_msi = ModelConfig { msi: false, ..msi };
        assert_eq!(
            IdRegs::new(&msi, false).idr[0] & (IDR0_MSI | IDR0_COHACC),
            IDR0_MSI
        );
        assert_eq!(
            IdRegs::new(&no_msi, true).idr[0] & (IDR0_MSI | IDR0_COHACC),
            IDR0_COHACC
        );
    }

    #[test]
    fn iidr_fields_are_placed_per_architecture() {
        let v = iidr(iidr::PRODUCT_MMU600, 2, 1);
        assert_eq!(v & 0xfff, 0x43b);
        assert_eq!((v >> 12) & 0xf, 1);
        assert_eq!((v >> 16) & 0xf, 2);
        assert_eq!(v >> 20, 0x483);
    }

    #[test]
    fn register_offsets_match_architecture() {
        assert_eq!(
            [
                CR0,
                GBPA,
                IRQ_CTRL,
                GERROR,
                STRTAB_BASE,
                CMDQ_BASE,
                EVENTQ_BASE
            ],
            [0x20, 0x44, 0x50, 0x60, 0x80, 0x90, 0xa0]
        );
        assert_eq!(PAGE1 + EVENTQ_PROD, 0x100a8);
        assert_eq!(PAGE1 + EVENTQ_CONS, 0x100ac);
        assert_eq!(gerror::ALL.count_ones(), 8);
        assert_eq!(
            [GERROR_IRQ_CFG0, GERROR_IRQ_CFG1, GERROR_IRQ_CFG2],
            [0x68, 0x70, 0x74]
        );
        assert_eq!(
            [EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1, EVENTQ_IRQ_CFG2],
            [0xb0, 0xb8, 0xbc]
        );
    }

    #[test]
    fn msi_configuration_fields_sit_at_architected_bits() {
        // CFG0.ADDR [55:2]; CFG2.SH [5:4], MemAttr [3:0] (6.3.21, 6.3.23).
        assert_eq!((irq_cfg::ADDR_LSB, irq_cfg::ADDR_END), (2, 56));
        assert_eq!(irq_cfg::MEMATTR_MASK, 0b00_1111);
        assert_eq!(irq_cfg::SH_MASK << irq_cfg::SH_SHIFT, 0b11_0000);
        assert_eq!(irq_cfg::CFG2_FIELDS, 0x3f);
    }

    #[test]
    fn oas_encodings_round_trip() {
        for bits in [32, 36, 40, 42, 44, 48, 52] {
            let f = oas_bits_to_field(bits).unwrap();
            assert_eq!(oas_field_to_bits(f.into()), Some(bits));
        }
        assert_eq!(oas_field_to_bits(7), None);
        assert_eq!(oas_bits_to_field(47), None);
    }
}
