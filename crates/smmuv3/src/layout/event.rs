//! Event record layout (32 bytes = 4 words) and event type codes.

use crate::bits::Field;

/// Bytes in an event record.
pub const EVENT_BYTES: usize = 32;

/// Word 0: event type.
pub const TYPE: Field = Field::new(7, 0);
/// Word 0: substream ID valid.
pub const SSV: Field = Field::bit(11);
/// Word 0: substream ID.
pub const SSID: Field = Field::new(31, 12);
/// Word 0: stream ID.
pub const SID: Field = Field::new(63, 32);

/// Word 1: stall tag.
pub const STAG: Field = Field::new(15, 0);
/// Word 1: the transaction is stalled.
pub const STALL: Field = Field::bit(31);
/// Word 1: privileged (1) or unprivileged.
pub const PNU: Field = Field::bit(33);
/// Word 1: instruction (1) or data.
pub const IND: Field = Field::bit(34);
/// Word 1: read (1) or write.
pub const RNW: Field = Field::bit(35);
/// Word 1: the fault was in stage 2.
pub const S2: Field = Field::bit(39);
/// Word 1: class of the access that faulted (0: CD fetch, 1: table walk, 2: input).
pub const CLASS: Field = Field::new(41, 40);
/// Word 2: input address (whole word).
pub const ADDR_WORD: usize = 2;
/// Word 3: IPA of a stage-2 fault, bits \[51:12\].
pub const IPA: Field = Field::new(51, 12);
/// Word 3: fetch address of STE/CD fetch and walk aborts, bits \[51:3\].
pub const FETCH_ADDR: Field = Field::new(51, 3);

/// Event type codes.
pub mod ty {
    /// Unsupported upstream transaction.
    pub const F_UUT: u8 = 0x01;
    /// Stream ID out of range of the stream table.
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// Abort fetching an STE.
    pub const F_STE_FETCH: u8 = 0x03;
    /// Invalid STE.
    pub const C_BAD_STE: u8 = 0x04;
    /// ATS translation request refused.
    pub const F_BAD_ATS_TREQ: u8 = 0x05;
    /// Non-substream traffic on a stream whose STE disallows it.
    pub const F_STREAM_DISABLED: u8 = 0x06;
    /// Translation forbidden (ATS on a bypass stream).
    pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
    /// Substream ID out of range.
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    /// Abort fetching a CD.
    pub const F_CD_FETCH: u8 = 0x09;
    /// Invalid CD.
    pub const C_BAD_CD: u8 = 0x0a;
    /// External abort during a table walk.
    pub const F_WALK_EABT: u8 = 0x0b;
    /// Translation fault.
    pub const F_TRANSLATION: u8 = 0x10;
    /// Address size fault.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// Access flag fault.
    pub const F_ACCESS: u8 = 0x12;
    /// Permission fault.
    pub const F_PERMISSION: u8 = 0x13;
    /// TLB conflict.
    pub const F_TLB_CONFLICT: u8 = 0x20;
    /// Configuration cache conflict.
    pub const F_CFG_CONFLICT: u8 = 0x21;
    /// PRI page request (stall model).
    pub const E_PAGE_REQUEST: u8 = 0x24;
    /// Abort fetching a VMS.
    pub const F_VMS_FETCH: u8 = 0x25;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(EVENT_BYTES, 32);
        assert_eq!(RNW.mask(), 1 << 35);
        assert_eq!(S2.mask(), 1 << 39);
        assert_eq!(CLASS.mask(), 3 << 40);
        assert_eq!(IPA.mask(), 0x000f_ffff_ffff_f000);
        assert_eq!(ty::F_TRANSLATION, 0x10);
        assert_eq!(ty::C_BAD_STE, 0x04);
    }
}
