//! Event records (Arm IHI 0070 chapter 7): types and the 32-byte encoding.

use crate::layout::{addr_mask, bit, bits};

/// Architected event types (EventType field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// Unsupported upstream transaction.
    FUut = 0x01,
    /// StreamID out of range of the stream table.
    CBadStreamId = 0x02,
    /// External abort fetching an STE (or level-1 descriptor).
    FSteFetch = 0x03,
    /// Invalid or illegal STE.
    CBadSte = 0x04,
    /// ATS translation request not allowed.
    FBadAtsTreq = 0x05,
    /// Transaction without SubstreamID on a stream whose STE.S1DSS
    /// terminates such traffic.
    FStreamDisabled = 0x06,
    /// Translated (ATS) transaction not allowed.
    FTranslForbidden = 0x07,
    /// SubstreamID out of range or not allowed.
    CBadSubstreamId = 0x08,
    /// External abort fetching a CD (or level-1 CD descriptor).
    FCdFetch = 0x09,
    /// Invalid or illegal CD.
    CBadCd = 0x0a,
    /// External abort during a table walk.
    FWalkEabt = 0x0b,
    /// Translation fault.
    FTranslation = 0x10,
    /// Address size fault.
    FAddrSize = 0x11,
    /// Access flag fault.
    FAccess = 0x12,
    /// Permission fault.
    FPermission = 0x13,
    /// TLB conflict.
    FTlbConflict = 0x20,
    /// Configuration cache conflict.
    FCfgConflict = 0x21,
}

impl EventType {
    /// Returns the EventType code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Returns the event type of a code, or `None` if the model never
    /// produces that code.
    pub fn from_code(code: u8) -> Option<Self> {
        use EventType::*;
        Some(match code {
            0x01 => FUut,
            0x02 => CBadStreamId,
            0x03 => FSteFetch,
            0x04 => CBadSte,
            0x05 => FBadAtsTreq,
            0x06 => FStreamDisabled,
            0x07 => FTranslForbidden,
            0x08 => CBadSubstreamId,
            0x09 => FCdFetch,
            0x0a => CBadCd,
            0x0b => FWalkEabt,
            0x10 => FTranslation,
            0x11 => FAddrSize,
            0x12 => FAccess,
            0x13 => FPermission,
            0x20 => FTlbConflict,
            0x21 => FCfgConflict,
            _ => return None,
        })
    }

    /// Returns whether the event is a translation-related fault whose
    /// recording is controlled by CD.R / STE.S2R and which may stall.
    pub fn is_translation_fault(self) -> bool {
        matches!(
            self,
            Self::FTranslation | Self::FAddrSize | Self::FAccess | Self::FPermission
        )
    }
}

/// Event CLASS field: what the faulting access was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// Fetching a CD (stage-2 fault of a nested CD fetch).
    Cd = 0,
    /// Fetching a translation table descriptor.
    TableWalk = 1,
    /// The input address itself.
    Input = 2,
}

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Event type.
    pub kind: EventType,
    /// StreamID of the transaction or command.
    pub sid: u32,
    /// SubstreamID, when the transaction had one (SSV = 1).
    pub ssid: Option<u32>,
    /// Stall tag, valid when `stall` is set.
    pub stag: u16,
    /// The transaction is stalled waiting for CMD_RESUME / CMD_STALL_TERM.
    pub stall: bool,
    /// Privileged (PnU = 1) transaction.
    pub privileged: bool,
    /// Instruction (InD = 1) transaction.
    pub instruction: bool,
    /// Read (RnW = 1) transaction.
    pub read: bool,
    /// The fault was at stage 2.
    pub s2: bool,
    /// CLASS field.
    pub class: FaultClass,
    /// Input address of the transaction (translation faults).
    pub input_addr: u64,
    /// Word 3: the IPA of a stage-2 fault, or the fetch address of an
    /// F_*_FETCH / F_WALK_EABT event.
    pub addr2: u64,
}

impl Event {
    /// Returns an event of `kind` for stream `sid` with every other field
    /// zero.
    pub fn new(kind: EventType, sid: u32) -> Self {
        Self {
            kind,
            sid,
            ssid: None,
            stag: 0,
            stall: false,
            privileged: false,
            instruction: false,
            read: false,
            s2: false,
            class: FaultClass::Input,
            input_addr: 0,
            addr2: 0,
        }
    }

    /// Returns the 32-byte record (four little-endian words) of the event.
    pub fn encode(&self) -> [u64; 4] {
        let b = |v: bool, s: u32| u64::from(v) << s;
        let w0 = u64::from(self.kind.code())
            | b(self.ssid.is_some(), 11)
            | u64::from(self.ssid.unwrap_or(0) & 0xf_ffff) << 12
            | u64::from(self.sid) << 32;
        let w1 = u64::from(self.stag)
            | b(self.stall, 31)
            | b(self.privileged, 33)
            | b(self.instruction, 34)
            | b(self.read, 35)
            | b(self.s2, 39)
            | (self.class as u64) << 40;
        [w0, w1, self.input_addr, self.addr2]
    }

    /// Returns the 32 bytes of the record as written to the event queue.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, w) in self.encode().iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Decodes a record, or returns `None` for an unknown event type.
    pub fn decode(w: [u64; 4]) -> Option<Self> {
        let kind = EventType::from_code(bits(w[0], 7, 0) as u8)?;
        let class = match bits(w[1], 41, 40) {
            0 => FaultClass::Cd,
            1 => FaultClass::TableWalk,
            _ => FaultClass::Input,
        };
        Some(Self {
            kind,
            sid: bits(w[0], 63, 32) as u32,
            ssid: bit(w[0], 11).then_some(bits(w[0], 31, 12) as u32),
            stag: bits(w[1], 15, 0) as u16,
            stall: bit(w[1], 31),
            privileged: bit(w[1], 33),
            instruction: bit(w[1], 34),
            read: bit(w[1], 35),
            s2: bit(w[1], 39),
            class,
            input_addr: w[2],
            addr2: w[3] & addr_mask(0),
        })
    }

    /// Decodes a record from its 32 bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Option<Self> {
        let mut w = [0u64; 4];
        for (i, x) in w.iter_mut().enumerate() {
            let mut le = [0u8; 8];
            le.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *x = u64::from_le_bytes(le);
        }
        Self::decode(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_fields_sit_at_architected_bits() {
        let e = Event {
            ssid: Some(0x12345),
            stag: 0xabc,
            stall: true,
            privileged: true,
            read: true,
            s2: true,
            class: FaultClass::TableWalk,
            input_addr: 0xdead_b000,
            addr2: 0x8_0000_0000,
            ..Event::new(EventType::FTranslation, 0x77)
        };
        let w = e.encode();
        assert_eq!(w[0], 0x10 | 1 << 11 | 0x12345 << 12 | 0x77 << 32);
        assert_eq!(
            w[1],
            0xabc | 1 << 31 | 1 << 33 | 1 << 35 | 1 << 39 | 1 << 40
        );
        assert_eq!(Event::decode(w), Some(e));
        assert_eq!(Event::from_bytes(&e.to_bytes()), Some(e));
        assert_eq!(Event::decode([0xff, 0, 0, 0]), None);
    }

    #[test]
    fn event_codes_match_architecture() {
        use EventType::*;
        let want = [
            (CBadStreamId, 2),
            (FSteFetch, 3),
            (CBadSte, 4),
            (FStreamDisabled, 6),
            (FTranslForbidden, 7),
            (CBadSubstreamId, 8),
            (FCdFetch, 9),
            (CBadCd, 0xa),
            (FWalkEabt, 0xb),
            (FTranslation, 0x10),
            (FAddrSize, 0x11),
            (FAccess, 0x12),
            (FPermission, 0x13),
            (FCfgConflict, 0x21),
        ];
        for (k, c) in want {
            assert_eq!(k.code(), c);
            assert_eq!(EventType::from_code(c), Some(k));
        }
    }
}
