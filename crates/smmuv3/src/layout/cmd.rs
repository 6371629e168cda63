//! Command queue entry layout (16 bytes = 2 words) and opcodes.

use crate::bits::Field;

/// Bytes in a command.
pub const CMD_BYTES: usize = 16;

/// Word 0: opcode.
pub const OPCODE: Field = Field::new(7, 0);
/// Word 0: substream ID valid.
pub const SSV: Field = Field::bit(11);
/// Word 0: substream ID.
pub const SSID: Field = Field::new(31, 12);
/// Word 0: stream ID.
pub const SID: Field = Field::new(63, 32);
/// Word 0: VMID of TLBI commands.
pub const VMID: Field = Field::new(47, 32);
/// Word 0: ASID of TLBI commands.
pub const ASID: Field = Field::new(63, 48);
/// Word 0: range TLBI page count minus one.
pub const NUM: Field = Field::new(16, 12);
/// Word 0: range TLBI scale.
pub const SCALE: Field = Field::new(24, 20);
/// Word 0 of ATC_INV: invalidate all substreams.
pub const ATC_GLOBAL: Field = Field::bit(9);

/// Word 1 of CFGI_STE / CFGI_CD and TLBI by address: leaf only.
pub const LEAF: Field = Field::bit(0);
/// Word 1 of CFGI_STE_RANGE: log2 of the number of STEs minus one.
pub const RANGE: Field = Field::new(4, 0);
/// Word 1 of TLBI by address: translation table level hint.
pub const TTL: Field = Field::new(9, 8);
/// Word 1 of TLBI by address: granule of a range TLBI (1: 4K, 2: 16K, 3: 64K).
pub const TG: Field = Field::new(11, 10);
/// Word 1 of TLBI_NH_VA: virtual address, bits \[63:12\].
pub const VA: Field = Field::new(63, 12);
/// Word 1 of TLBI_S2_IPA: IPA, bits \[51:12\].
pub const IPA: Field = Field::new(51, 12);
/// Word 1 of ATC_INV: log2 of the span in 4 KiB pages.
pub const ATC_SIZE: Field = Field::new(5, 0);
/// Word 1 of ATC_INV / PREFETCH_ADDR: address, bits \[63:12\].
pub const ATC_ADDR: Field = Field::new(63, 12);
/// Word 1 of PREFETCH_ADDR: log2 of the prefetch size in 4 KiB pages.
pub const PREFETCH_SIZE: Field = Field::new(4, 0);

/// Word 0 of CMD_RESUME: action, bit 12 Ac (retry) and bit 13 Ab (abort
/// when terminating): 0b00 terminate, 0b01 and 0b11 retry, 0b10 abort.
pub const RESUME_ACTION: Field = Field::new(13, 12);
/// Word 0 of CMD_SYNC: completion signal.
pub const SYNC_CS: Field = Field::new(13, 12);
/// Word 0 of the prefetch and configuration-invalidation commands: SSec,
/// bit 10 (the Secure StreamID space; must be 0 on a Non-secure queue).
pub const SSEC: Field = Field::new(10, 10);
/// Word 0 of CMD_SYNC: MSI shareability.
pub const SYNC_MSH: Field = Field::new(23, 22);
/// Word 0 of CMD_SYNC: MSI memory attributes.
pub const SYNC_MSIATTR: Field = Field::new(27, 24);
/// Word 0 of CMD_SYNC: MSI data.
pub const SYNC_MSIDATA: Field = Field::new(63, 32);
/// Word 1 of CMD_SYNC: MSI address, bits \[51:2\].
pub const SYNC_MSIADDR: Field = Field::new(51, 2);
/// CS: no signal (poll CONS).
pub const CS_NONE: u64 = 0;
/// CS: signal by MSI write.
pub const CS_IRQ: u64 = 1;
/// CS: signal by SEV.
pub const CS_SEV: u64 = 2;

/// Opcodes (IHI 0070 chapter 4).
pub mod op {
    /// Prefetch the configuration of a stream.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// Prefetch the translation of an address.
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// Invalidate a cached STE.
    pub const CFGI_STE: u8 = 0x03;
    /// Invalidate a range of cached STEs (range 31 = all).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// Invalidate a cached CD.
    pub const CFGI_CD: u8 = 0x05;
    /// Invalidate all cached CDs of a stream.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// Invalidate VMS and PASID-map caches.
    pub const CFGI_VMS_PIDM: u8 = 0x07;
    /// Invalidate all non-secure EL1 TLB entries of a VMID.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// Invalidate stage-1 entries by ASID (and VMID).
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// Invalidate stage-1 entries by VA, ASID, VMID.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// Invalidate stage-1 entries by VA for all ASIDs.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// Invalidate all EL3 entries.
    pub const TLBI_EL3_ALL: u8 = 0x18;
    /// Invalidate EL3 entries by VA.
    pub const TLBI_EL3_VA: u8 = 0x1a;
    /// Invalidate all EL2 entries.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// Invalidate EL2 entries by ASID.
    pub const TLBI_EL2_ASID: u8 = 0x21;
    /// Invalidate EL2 entries by VA.
    pub const TLBI_EL2_VA: u8 = 0x22;
    /// Invalidate EL2 entries by VA for all ASIDs.
    pub const TLBI_EL2_VAA: u8 = 0x23;
    /// Invalidate all stage-1 and stage-2 entries of a VMID.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// Invalidate stage-2 entries by IPA.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// Invalidate all non-secure non-hypervisor entries.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// Invalidate a PCIe endpoint's ATC.
    pub const ATC_INV: u8 = 0x40;
    /// Respond to a PRI page request.
    pub const PRI_RESP: u8 = 0x41;
    /// Resume or abort a stalled transaction.
    pub const RESUME: u8 = 0x44;
    /// Terminate stalled transactions of a stream.
    pub const STALL_TERM: u8 = 0x45;
    /// Wait for completion of earlier commands.
    pub const SYNC: u8 = 0x46;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(SID.mask(), 0xffff_ffff_0000_0000);
        assert_eq!(SSID.mask(), 0xffff_f000);
        assert_eq!(NUM.mask(), 0x1f << 12);
        assert_eq!(SCALE.mask(), 0x1f << 20);
        assert_eq!(TG.mask(), 3 << 10);
        assert_eq!(TTL.mask(), 3 << 8);
        assert_eq!(IPA.mask(), 0x000f_ffff_ffff_f000);
        assert_eq!(SYNC_CS.mask(), 3 << 12);
        assert_eq!(SSEC.mask(), 1 << 10);
        assert_eq!(op::TLBI_NH_VA, 0x12);
        assert_eq!(op::TLBI_S2_IPA, 0x2a);
        assert_eq!(op::SYNC, 0x46);
        assert_eq!(op::ATC_INV, 0x40);
    }
}
