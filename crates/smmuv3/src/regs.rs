//! SMMUv3 programming interface: register offsets and fields (Arm IHI 0070,
//! chapter 6). Layout only; no logic lives here.
//!
//! Offsets are from the base of the 128 KiB register frame. Page 1 starts at
//! [`PAGE1`]; the queue PROD/CONS registers that software polls from another
//! agent's page live there (with page-0 aliases when IDR0... allows, but the
//! page-1 copies are always present).

use crate::bits::Field;

/// Size of the register frame the driver needs (page 0 and page 1).
pub const FRAME_SIZE: usize = 0x2_0000;
/// Offset of register page 1.
pub const PAGE1: usize = 0x1_0000;

/// Identification register 0.
pub const IDR0: usize = 0x00;
/// Identification register 1.
pub const IDR1: usize = 0x04;
/// Identification register 2.
pub const IDR2: usize = 0x08;
/// Identification register 3.
pub const IDR3: usize = 0x0c;
/// Identification register 4 (implementation defined).
pub const IDR4: usize = 0x10;
/// Identification register 5.
pub const IDR5: usize = 0x14;
/// Implementation identification register.
pub const IIDR: usize = 0x18;
/// Architecture version register.
pub const AIDR: usize = 0x1c;
/// Global control register 0.
pub const CR0: usize = 0x20;
/// Acknowledge of CR0 updates.
pub const CR0ACK: usize = 0x24;
/// Table/queue memory attributes.
pub const CR1: usize = 0x28;
/// Miscellaneous global controls.
pub const CR2: usize = 0x2c;
/// Status register.
pub const STATUSR: usize = 0x40;
/// Global bypass attributes (used while SMMUEN = 0).
pub const GBPA: usize = 0x44;
/// Alternative global bypass attributes.
pub const AGBPA: usize = 0x48;
/// Interrupt enables.
pub const IRQ_CTRL: usize = 0x50;
/// Acknowledge of IRQ_CTRL updates.
pub const IRQ_CTRLACK: usize = 0x54;
/// Global error status (toggle bits).
pub const GERROR: usize = 0x60;
/// Global error acknowledge (software toggles to match GERROR).
pub const GERRORN: usize = 0x64;
/// GERROR MSI address (64-bit).
pub const GERROR_IRQ_CFG0: usize = 0x68;
/// GERROR MSI data.
pub const GERROR_IRQ_CFG1: usize = 0x70;
/// GERROR MSI attributes.
pub const GERROR_IRQ_CFG2: usize = 0x74;
/// Stream table base (64-bit).
pub const STRTAB_BASE: usize = 0x80;
/// Stream table format and size.
pub const STRTAB_BASE_CFG: usize = 0x88;
/// Command queue base (64-bit).
pub const CMDQ_BASE: usize = 0x90;
/// Command queue producer index.
pub const CMDQ_PROD: usize = 0x98;
/// Command queue consumer index and error code.
pub const CMDQ_CONS: usize = 0x9c;
/// Event queue base (64-bit).
pub const EVENTQ_BASE: usize = 0xa0;
/// Event queue producer index, page-0 alias.
pub const EVENTQ_PROD_P0: usize = 0xa8;
/// Event queue consumer index, page-0 alias.
pub const EVENTQ_CONS_P0: usize = 0xac;
/// Event queue producer index (page 1).
pub const EVENTQ_PROD: usize = PAGE1 + 0xa8;
/// Event queue consumer index (page 1).
pub const EVENTQ_CONS: usize = PAGE1 + 0xac;
/// Event queue MSI address (64-bit).
pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
/// Event queue MSI data.
pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
/// Event queue MSI attributes.
pub const EVENTQ_IRQ_CFG2: usize = 0xbc;
/// PRI queue base (64-bit).
pub const PRIQ_BASE: usize = 0xc0;
/// PRI queue producer index (page 1).
pub const PRIQ_PROD: usize = PAGE1 + 0xc8;
/// PRI queue consumer index (page 1).
pub const PRIQ_CONS: usize = PAGE1 + 0xcc;

/// IDR0 fields.
pub mod idr0 {
    use super::Field;
    /// Stage-2 translation supported.
    pub const S2P: Field = Field::bit(0);
    /// Stage-1 translation supported.
    pub const S1P: Field = Field::bit(1);
    /// Translation table formats (1: AArch32, 2: AArch64, 3: both).
    pub const TTF: Field = Field::new(3, 2);
    /// Coherent access to tables, queues and MSIs.
    pub const COHACC: Field = Field::bit(4);
    /// Broadcast TLB maintenance.
    pub const BTM: Field = Field::bit(5);
    /// Hardware translation table update (1: access flag, 2: AF and dirty).
    pub const HTTU: Field = Field::new(7, 6);
    /// Hypervisor stage-1 contexts (EL2) supported.
    pub const HYP: Field = Field::bit(9);
    /// PCIe ATS supported.
    pub const ATS: Field = Field::bit(10);
    /// 16-bit ASIDs.
    pub const ASID16: Field = Field::bit(12);
    /// MSIs supported.
    pub const MSI: Field = Field::bit(13);
    /// SEV is sent when the command queue becomes non-full or a sync completes.
    pub const SEV: Field = Field::bit(14);
    /// PCIe PRI supported.
    pub const PRI: Field = Field::bit(16);
    /// VMID wildcard matching.
    pub const VMW: Field = Field::bit(17);
    /// 16-bit VMIDs.
    pub const VMID16: Field = Field::bit(18);
    /// Two-level CD tables supported.
    pub const CD2L: Field = Field::bit(19);
    /// Translation table endianness (0: mixed, 2: little, 3: big).
    pub const TTENDIAN: Field = Field::new(22, 21);
    /// Stall model (0: stall and terminate, 1: terminate only, 2: stall forced).
    pub const STALL_MODEL: Field = Field::new(25, 24);
    /// Terminate model (1: terminated transactions may complete with RAZ/WI).
    pub const TERM_MODEL: Field = Field::bit(26);
    /// Stream table levels (0: linear only, 1: 2-level supported).
    pub const ST_LEVEL: Field = Field::new(28, 27);
}

/// IDR1 fields.
pub mod idr1 {
    use super::Field;
    /// Stream ID width in bits.
    pub const SIDSIZE: Field = Field::new(5, 0);
    /// Substream ID width in bits.
    pub const SSIDSIZE: Field = Field::new(10, 6);
    /// log2 of the largest PRI queue.
    pub const PRIQS: Field = Field::new(15, 11);
    /// log2 of the largest event queue.
    pub const EVENTQS: Field = Field::new(20, 16);
    /// log2 of the largest command queue.
    pub const CMDQS: Field = Field::new(25, 21);
    /// Base addresses are relative (not supported by this driver).
    pub const REL: Field = Field::bit(28);
    /// Queue bases are fixed by the implementation.
    pub const QUEUES_PRESET: Field = Field::bit(29);
    /// Table bases are fixed by the implementation.
    pub const TABLES_PRESET: Field = Field::bit(30);
}

/// IDR3 fields.
pub mod idr3 {
    use super::Field;
    /// Hierarchical attribute disables.
    pub const HAD: Field = Field::bit(2);
    /// Execute-never split for stage 2.
    pub const XNX: Field = Field::bit(4);
    /// Stage-2 forced write-back.
    pub const FWB: Field = Field::bit(8);
    /// Range TLB invalidation (FEAT_TLBIRANGE).
    pub const RIL: Field = Field::bit(10);
    /// Break-before-make level (0..2).
    pub const BBML: Field = Field::new(12, 11);
}

/// IDR5 fields.
pub mod idr5 {
    use super::Field;
    /// Output address size encoding (0..6: 32/36/40/42/44/48/52 bits).
    pub const OAS: Field = Field::new(2, 0);
    /// 4 KiB granule.
    pub const GRAN4K: Field = Field::bit(4);
    /// 16 KiB granule.
    pub const GRAN16K: Field = Field::bit(5);
    /// 64 KiB granule.
    pub const GRAN64K: Field = Field::bit(6);
    /// Virtual address extension (1: 52-bit VA with 64K granule).
    pub const VAX: Field = Field::new(11, 10);
    /// Maximum outstanding stalled transactions.
    pub const STALL_MAX: Field = Field::new(31, 16);
}

/// IIDR fields.
pub mod iidr {
    use super::Field;
    /// JEP106 implementer code.
    pub const IMPLEMENTER: Field = Field::new(11, 0);
    /// Minor revision.
    pub const REVISION: Field = Field::new(15, 12);
    /// Major revision (variant).
    pub const VARIANT: Field = Field::new(19, 16);
    /// Product identifier.
    pub const PRODUCT_ID: Field = Field::new(31, 20);
}

/// AIDR fields.
pub mod aidr {
    use super::Field;
    /// Minor architecture revision (SMMUv3.x).
    pub const MINOR: Field = Field::new(3, 0);
    /// Major architecture revision (0 = SMMUv3).
    pub const MAJOR: Field = Field::new(7, 4);
}

/// CR0 / CR0ACK fields.
pub mod cr0 {
    use super::Field;
    /// Translation enable.
    pub const SMMUEN: Field = Field::bit(0);
    /// PRI queue enable.
    pub const PRIQEN: Field = Field::bit(1);
    /// Event queue enable.
    pub const EVENTQEN: Field = Field::bit(2);
    /// Command queue enable.
    pub const CMDQEN: Field = Field::bit(3);
    /// ATS check enable.
    pub const ATSCHK: Field = Field::bit(4);
}

/// CR1 fields (cacheability/shareability of tables and queues).
pub mod cr1 {
    use super::Field;
    /// Queue inner cacheability (1: write-back).
    pub const QUEUE_IC: Field = Field::new(1, 0);
    /// Queue outer cacheability.
    pub const QUEUE_OC: Field = Field::new(3, 2);
    /// Queue shareability (3: inner shareable).
    pub const QUEUE_SH: Field = Field::new(5, 4);
    /// Table inner cacheability.
    pub const TABLE_IC: Field = Field::new(7, 6);
    /// Table outer cacheability.
    pub const TABLE_OC: Field = Field::new(9, 8);
    /// Table shareability.
    pub const TABLE_SH: Field = Field::new(11, 10);
    /// Write-back cacheable encoding.
    pub const CACHE_WB: u64 = 1;
    /// Non-cacheable encoding.
    pub const CACHE_NC: u64 = 0;
    /// Inner shareable encoding.
    pub const SH_ISH: u64 = 3;
    /// Outer shareable encoding.
    pub const SH_OSH: u64 = 2;
    /// Non-shareable encoding.
    pub const SH_NSH: u64 = 0;
}

/// CR2 fields.
pub mod cr2 {
    use super::Field;
    /// EL2-E2H translation regime.
    pub const E2H: Field = Field::bit(0);
    /// Record C_BAD_STREAMID for invalid input stream IDs.
    pub const RECINVSID: Field = Field::bit(1);
    /// Private TLB maintenance (ignore broadcast TLBI).
    pub const PTM: Field = Field::bit(2);
}

/// GBPA fields.
pub mod gbpa {
    use super::Field;
    /// Abort all incoming transactions while SMMUEN = 0.
    pub const ABORT: Field = Field::bit(20);
    /// Update in progress / request.
    pub const UPDATE: Field = Field::bit(31);
    /// Shareability override.
    pub const SHCFG: Field = Field::new(13, 12);
}

/// IRQ_CTRL / IRQ_CTRLACK fields.
pub mod irq_ctrl {
    use super::Field;
    /// Global error interrupt enable.
    pub const GERROR_IRQEN: Field = Field::bit(0);
    /// PRI queue interrupt enable.
    pub const PRIQ_IRQEN: Field = Field::bit(1);
    /// Event queue interrupt enable.
    pub const EVENTQ_IRQEN: Field = Field::bit(2);
}

/// GERROR / GERRORN bits (an error is active while the bits differ).
pub mod gerror {
    use super::Field;
    /// Command queue error (see CMDQ_CONS.ERR).
    pub const CMDQ_ERR: Field = Field::bit(0);
    /// Event queue write aborted.
    pub const EVTQ_ABT_ERR: Field = Field::bit(2);
    /// PRI queue write aborted.
    pub const PRIQ_ABT_ERR: Field = Field::bit(3);
    /// CMD_SYNC MSI write aborted.
    pub const MSI_CMDQ_ABT_ERR: Field = Field::bit(4);
    /// Event queue MSI write aborted.
    pub const MSI_EVTQ_ABT_ERR: Field = Field::bit(5);
    /// PRI queue MSI write aborted.
    pub const MSI_PRIQ_ABT_ERR: Field = Field::bit(6);
    /// GERROR MSI write aborted.
    pub const MSI_GERROR_ABT_ERR: Field = Field::bit(7);
    /// Service failure mode entered.
    pub const SFM_ERR: Field = Field::bit(8);
    /// All GERROR bits the architecture defines.
    pub const ALL: u32 = 0x1fd;
}

/// STRTAB_BASE fields.
pub mod strtab_base {
    use super::Field;
    /// Physical address of the table, bits \[51:6\].
    pub const ADDR: Field = Field::new(51, 6);
    /// Read-allocate hint.
    pub const RA: Field = Field::bit(62);
}

/// STRTAB_BASE_CFG fields.
pub mod strtab_base_cfg {
    use super::Field;
    /// log2 of the number of stream IDs the table covers.
    pub const LOG2SIZE: Field = Field::new(5, 0);
    /// Stream ID bits resolved by a level-2 table (6, 8 or 10).
    pub const SPLIT: Field = Field::new(10, 6);
    /// Format (0: linear, 1: 2-level).
    pub const FMT: Field = Field::new(17, 16);
    /// Linear format.
    pub const FMT_LINEAR: u64 = 0;
    /// Two-level format.
    pub const FMT_2LVL: u64 = 1;
}

/// CMDQ_BASE / EVENTQ_BASE / PRIQ_BASE fields.
pub mod q_base {
    use super::Field;
    /// log2 of the number of entries.
    pub const LOG2SIZE: Field = Field::new(4, 0);
    /// Physical address, bits \[51:5\].
    pub const ADDR: Field = Field::new(51, 5);
    /// Read-allocate (CMDQ) / write-allocate (EVENTQ, PRIQ) hint.
    pub const ALLOC: Field = Field::bit(62);
}

/// CMDQ_CONS fields beyond the index.
pub mod cmdq_cons {
    use super::Field;
    /// Error code of the command at RD when GERROR.CMDQ_ERR is active.
    pub const ERR: Field = Field::new(30, 24);
    /// No error.
    pub const CERROR_NONE: u64 = 0;
    /// Illegal command.
    pub const CERROR_ILL: u64 = 1;
    /// Abort fetching the command.
    pub const CERROR_ABT: u64 = 2;
    /// ATC invalidation timed out before a CMD_SYNC.
    pub const CERROR_ATC_INV_SYNC: u64 = 3;
}

/// Queue overflow flags (EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG).
pub mod evtq {
    use super::Field;
    /// Overflow flag in PROD; acknowledged by copying into CONS.
    pub const OVFLG: Field = Field::bit(31);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_architecture() {
        // Spot checks against IHI 0070 table 6-1.
        assert_eq!(CR0, 0x20);
        assert_eq!(GBPA, 0x44);
        assert_eq!(GERRORN, 0x64);
        assert_eq!(STRTAB_BASE_CFG, 0x88);
        assert_eq!(CMDQ_CONS, 0x9c);
        assert_eq!(EVENTQ_PROD, 0x100a8);
        assert_eq!(EVENTQ_CONS, 0x100ac);
        assert_eq!(PRIQ_PROD, 0x100c8);
        assert_eq!(FRAME_SIZE, 128 * 1024);
    }

    #[test]
    fn idr_fields_decode_qemu_values() {
        // ID registers of QEMU 10's virt,iommu=smmuv3 (see QEMU-BAREMETAL.md).
        let idr0 = 0x0d44_101b;
        assert_eq!(idr0::S2P.get(idr0), 1);
        assert_eq!(idr0::S1P.get(idr0), 1);
        assert_eq!(idr0::TTF.get(idr0), 2);
        assert_eq!(idr0::COHACC.get(idr0), 1);
        assert_eq!(idr0::ASID16.get(idr0), 1);
        assert_eq!(idr0::VMID16.get(idr0), 1);
        assert_eq!(idr0::TTENDIAN.get(idr0), 2);
        assert_eq!(idr0::STALL_MODEL.get(idr0), 1);
        assert_eq!(idr0::ST_LEVEL.get(idr0), 1);
        assert_eq!(idr0::SEV.get(idr0), 0);
        let idr1 = 0x0273_0010;
        assert_eq!(idr1::SIDSIZE.get(idr1), 16);
        assert_eq!(idr1::SSIDSIZE.get(idr1), 0);
        assert_eq!(idr1::EVENTQS.get(idr1), 19);
        assert_eq!(idr1::CMDQS.get(idr1), 19);
        let idr3 = 0x1414;
        assert_eq!(idr3::RIL.get(idr3), 1);
        assert_eq!(idr3::BBML.get(idr3), 2);
        assert_eq!(idr3::HAD.get(idr3), 1);
        let idr5 = 0x74;
        assert_eq!(idr5::OAS.get(idr5), 4);
        assert_eq!(idr5::GRAN4K.get(idr5), 1);
        assert_eq!(idr5::GRAN64K.get(idr5), 1);
    }

    #[test]
    fn control_fields() {
        assert_eq!(cr0::CMDQEN.mask(), 1 << 3);
        assert_eq!(gbpa::UPDATE.mask(), 1 << 31);
        assert_eq!(gbpa::ABORT.mask(), 1 << 20);
        assert_eq!(strtab_base_cfg::FMT.mask(), 3 << 16);
        assert_eq!(strtab_base::ADDR.mask(), 0x000f_ffff_ffff_ffc0);
        assert_eq!(q_base::ADDR.mask(), 0x000f_ffff_ffff_ffe0);
        assert_eq!(cmdq_cons::ERR.mask(), 0x7f << 24);
        assert_eq!(cr1::TABLE_SH.mask(), 3 << 10);
    }
}
