//! Event records: decoding into typed values with human-readable text.

use core::fmt;

use crate::layout::event::{self as e, ty};

/// Event types (IHI 0070 chapter 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// F_UUT.
    UnsupportedUpstream,
    /// C_BAD_STREAMID.
    BadStreamId,
    /// F_STE_FETCH.
    SteFetch,
    /// C_BAD_STE.
    BadSte,
    /// F_BAD_ATS_TREQ.
    BadAtsRequest,
    /// F_STREAM_DISABLED.
    StreamDisabled,
    /// F_TRANSL_FORBIDDEN.
    TranslationForbidden,
    /// C_BAD_SUBSTREAMID.
    BadSubstreamId,
    /// F_CD_FETCH.
    CdFetch,
    /// C_BAD_CD.
    BadCd,
    /// F_WALK_EABT.
    WalkAbort,
    /// F_TRANSLATION.
    Translation,
    /// F_ADDR_SIZE.
    AddressSize,
    /// F_ACCESS.
    AccessFlag,
    /// F_PERMISSION.
    Permission,
    /// F_TLB_CONFLICT.
    TlbConflict,
    /// F_CFG_CONFLICT.
    ConfigConflict,
    /// E_PAGE_REQUEST.
    PageRequest,
    /// F_VMS_FETCH.
    VmsFetch,
    /// A code the architecture does not define (or a newer one).
    Unknown(u8),
}

impl EventType {
    /// Returns the type of an event code.
    pub fn from_code(code: u8) -> Self {
        match code {
            ty::F_UUT => Self::UnsupportedUpstream,
            ty::C_BAD_STREAMID => Self::BadStreamId,
            ty::F_STE_FETCH => Self::SteFetch,
            ty::C_BAD_STE => Self::BadSte,
            ty::F_BAD_ATS_TREQ => Self::BadAtsRequest,
            ty::F_STREAM_DISABLED => Self::StreamDisabled,
            ty::F_TRANSL_FORBIDDEN => Self::TranslationForbidden,
            ty::C_BAD_SUBSTREAMID => Self::BadSubstreamId,
            ty::F_CD_FETCH => Self::CdFetch,
            ty::C_BAD_CD => Self::BadCd,
            ty::F_WALK_EABT => Self::WalkAbort,
            ty::F_TRANSLATION => Self::Translation,
            ty::F_ADDR_SIZE => Self::AddressSize,
            ty::F_ACCESS => Self::AccessFlag,
            ty::F_PERMISSION => Self::Permission,
            ty::F_TLB_CONFLICT => Self::TlbConflict,
            ty::F_CFG_CONFLICT => Self::ConfigConflict,
            ty::E_PAGE_REQUEST => Self::PageRequest,
            ty::F_VMS_FETCH => Self::VmsFetch,
            other => Self::Unknown(other),
        }
    }

    /// Returns the architectural name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::UnsupportedUpstream => "F_UUT",
            Self::BadStreamId => "C_BAD_STREAMID",
            Self::SteFetch => "F_STE_FETCH",
            Self::BadSte => "C_BAD_STE",
            Self::BadAtsRequest => "F_BAD_ATS_TREQ",
            Self::StreamDisabled => "F_STREAM_DISABLED",
            Self::TranslationForbidden => "F_TRANSL_FORBIDDEN",
            Self::BadSubstreamId => "C_BAD_SUBSTREAMID",
            Self::CdFetch => "F_CD_FETCH",
            Self::BadCd => "C_BAD_CD",
            Self::WalkAbort => "F_WALK_EABT",
            Self::Translation => "F_TRANSLATION",
            Self::AddressSize => "F_ADDR_SIZE",
            Self::AccessFlag => "F_ACCESS",
            Self::Permission => "F_PERMISSION",
            Self::TlbConflict => "F_TLB_CONFLICT",
            Self::ConfigConflict => "F_CFG_CONFLICT",
            Self::PageRequest => "E_PAGE_REQUEST",
            Self::VmsFetch => "F_VMS_FETCH",
            Self::Unknown(_) => "UNKNOWN",
        }
    }

    /// Returns a one-line explanation of the event.
    pub fn description(&self) -> &'static str {
        match self {
            Self::UnsupportedUpstream => "unsupported upstream transaction",
            Self::BadStreamId => "stream ID outside the stream table",
            Self::SteFetch => "external abort fetching the stream table entry",
            Self::BadSte => "stream table entry is invalid or malformed",
            Self::BadAtsRequest => "ATS translation request refused",
            Self::StreamDisabled => "transaction without substream ID refused by S1DSS",
            Self::TranslationForbidden => {
                "ATS-translated transaction refused (the STE does not let translated traffic bypass)"
            }
            Self::BadSubstreamId => "substream ID out of range of the CD table",
            Self::CdFetch => "external abort fetching the context descriptor",
            Self::BadCd => "context descriptor is invalid or malformed",
            Self::WalkAbort => "external abort during a translation table walk",
            Self::Translation => "translation fault (no valid mapping)",
            Self::AddressSize => "address size fault (address beyond the configured size)",
            Self::AccessFlag => "access flag fault",
            Self::Permission => "permission fault (access not allowed by the mapping)",
            Self::TlbConflict => "TLB conflict (overlapping entries)",
            Self::ConfigConflict => "configuration cache conflict",
            Self::PageRequest => "page request (stall model)",
            Self::VmsFetch => "external abort fetching the VMS",
            Self::Unknown(_) => "event type not known to this driver",
        }
    }

    /// Returns whether records of this type have the Stall and STAG
    /// fields: only the four translation-related faults can stall; in
    /// other records those bits are RES0 or an IMPLEMENTATION DEFINED
    /// reason.
    pub fn can_stall(&self) -> bool {
        matches!(
            self,
            Self::Translation | Self::AddressSize | Self::AccessFlag | Self::Permission
        )
    }

    /// Returns whether records of this type have the S2 field (F_UUT has
    /// no stage: its bit 39 is RES0).
    pub fn has_stage(&self) -> bool {
        self.is_fault() && *self != Self::UnsupportedUpstream
    }

    /// Returns whether records of this type have the CLASS field (F_UUT
    /// and F_TLB_CONFLICT do not).
    pub fn has_class(&self) -> bool {
        self.can_stall() || *self == Self::WalkAbort
    }

    /// Returns whether records of this type carry transaction details
    /// (address, direction, stage) in words 1..3.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Self::Translation
                | Self::AddressSize
                | Self::AccessFlag
                | Self::Permission
                | Self::WalkAbort
                | Self::TlbConflict
                | Self::UnsupportedUpstream
        )
    }
}

/// Which access of the SMMU faulted (word 1 CLASS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// Fetching the CD (stage-2 fault on the CD address).
    CdFetch,
    /// A stage-1 table walk (stage-2 fault on a table address).
    TableWalk,
    /// The input address itself.
    Input,
}

/// Details of a faulting transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Input address of the transaction.
    pub addr: u64,
    /// IPA where a stage-2 fault occurred.
    pub ipa: Option<u64>,
    /// The fault was in stage 2 (false for a type without the S2 field,
    /// see [`EventType::has_stage`]).
    pub stage2: bool,
    /// Read (true) or write.
    pub read: bool,
    /// Privileged access.
    pub privileged: bool,
    /// Instruction fetch.
    pub instruction: bool,
    /// What was being accessed; read from RES0 bits (so `CdFetch`) for a
    /// type without the CLASS field, see [`EventType::has_class`].
    pub class: FaultClass,
    /// Stall tag when the transaction is stalled awaiting CMD_RESUME.
    pub stall_tag: Option<u16>,
}

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Event type.
    pub ty: EventType,
    /// Stream ID.
    pub sid: u32,
    /// Substream ID, when the transaction had one.
    pub ssid: Option<u32>,
    /// Transaction details of fault events.
    pub fault: Option<Fault>,
    /// Fetch address of F_STE_FETCH / F_CD_FETCH / F_VMS_FETCH / F_WALK_EABT.
    pub fetch_addr: Option<u64>,
    /// The raw record.
    pub raw: [u64; 4],
}

impl Event {
    /// Returns the event held in a 32-byte record.
    pub fn decode(raw: [u64; 4]) -> Self {
        let [w0, w1, w2, w3] = raw;
        let ty = EventType::from_code(e::TYPE.get(w0) as u8);
        let stage2 = ty.has_stage() && e::S2.get(w1) != 0;
        let fault = ty.is_fault().then(|| Fault {
            addr: w2,
            ipa: (stage2 && ty != EventType::WalkAbort).then(|| w3 & e::IPA.mask()),
            stage2,
            read: e::RNW.get(w1) != 0,
            privileged: e::PNU.get(w1) != 0,
            instruction: e::IND.get(w1) != 0,
            class: match e::CLASS.get(w1) {
                0 => FaultClass::CdFetch,
                1 => FaultClass::TableWalk,
                _ => FaultClass::Input,
            },
            stall_tag: (ty.can_stall() && e::STALL.get(w1) != 0).then(|| e::STAG.get(w1) as u16),
        });
        let fetch_addr = matches!(
            ty,
            EventType::SteFetch | EventType::CdFetch | EventType::VmsFetch | EventType::WalkAbort
        )
        .then(|| w3 & e::FETCH_ADDR.mask());
        Self {
            ty,
            sid: e::SID.get(w0) as u32,
            ssid: (e::SSV.get(w0) != 0).then(|| e::SSID.get(w0) as u32),
            fault,
            fetch_addr,
            raw,
        }
    }

    /// Returns the event held in 32 little-endian bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        let mut w = [0u64; 4];
        for (i, word) in w.iter_mut().enumerate() {
            let mut le = [0u8; 8];
            le.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *word = u64::from_le_bytes(le);
        }
        Self::decode(w)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ty.name())?;
        if let EventType::Unknown(code) = self.ty {
            write!(f, "({code:#04x})")?;
        }
        write!(f, " sid={:#x}", self.sid)?;
        if let Some(s) = self.ssid {
            write!(f, " ssid={s:#x}")?;
        }
        write!(f, ": {}", self.ty.description())?;
        if let Some(flt) = &self.fault {
            if self.ty.has_stage() {
                write!(f, "; stage {}", if flt.stage2 { 2 } else { 1 })?;
            } else {
                f.write_str(";")?;
            }
            write!(
                f,
                " {} {} {} at {:#x}",
                if flt.privileged {
                    "privileged"
                } else {
                    "unprivileged"
                },
                if flt.instruction {
                    "instruction"
                } else {
                    "data"
                },
                if flt.read { "read" } else { "write" },
                flt.addr
            )?;
            if let Some(ipa) = flt.ipa {
                write!(f, " (IPA {ipa:#x})")?;
            }
            match flt.class {
                _ if !self.ty.has_class() => {}
                FaultClass::CdFetch => write!(f, " while fetching the CD")?,
                FaultClass::TableWalk => write!(f, " while walking stage-1 tables")?,
                FaultClass::Input => {}
            }
            if let Some(t) = flt.stall_tag {
                write!(f, " [stalled, tag {t:#x}]")?;
            }
        }
        if let Some(a) = self.fetch_addr {
            write!(f, "; fetch address {a:#x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn decodes_a_stage1_translation_fault() {
        let w0 = 0x10 | (1 << 11) | (5 << 12) | (0x8 << 32);
        let w1 = (1 << 35) | (2 << 40);
        let ev = Event::decode([w0, w1, 0x1234_5000, 0]);
        assert_eq!(ev.ty, EventType::Translation);
        assert_eq!((ev.sid, ev.ssid), (8, Some(5)));
        let flt = ev.fault.unwrap();
        assert!(flt.read && !flt.stage2 && flt.ipa.is_none());
        assert_eq!(flt.addr, 0x1234_5000);
        assert_eq!(flt.class, FaultClass::Input);
        assert_eq!(
            ev.to_string(),
            "F_TRANSLATION sid=0x8 ssid=0x5: translation fault (no valid mapping); \
             stage 1 unprivileged data read at 0x12345000"
        );
    }

    #[test]
    fn decodes_stage2_and_fetch_events() {
        let ev = Event::decode([
            0x13 | (3 << 32),
            (1 << 39) | (1 << 40),
            0x4000,
            0x8_0000_0000,
        ]);
        assert_eq!(ev.ty, EventType::Permission);
        let flt = ev.fault.unwrap();
        assert!(flt.stage2 && !flt.read);
        assert_eq!(flt.ipa, Some(0x8_0000_0000));
        assert_eq!(flt.class, FaultClass::TableWalk);
        assert!(
            ev.to_string()
                .contains("(IPA 0x800000000) while walking stage-1 tables")
        );
        let ev = Event::decode([0x03 | (9 << 32), 0, 0, 0x4000_1040]);
        assert_eq!(ev.ty, EventType::SteFetch);
        assert_eq!(ev.fetch_addr, Some(0x4000_1040));
        assert!(ev.fault.is_none());
        let ev = Event::decode([0x04 | (9 << 32), 0, 0, 0]);
        assert_eq!(
            ev.to_string(),
            "C_BAD_STE sid=0x9: stream table entry is invalid or malformed"
        );
        let ev = Event::decode([0x7f, 0, 0, 0]);
        assert_eq!(ev.ty, EventType::Unknown(0x7f));
        assert!(ev.to_string().starts_with("UNKNOWN(0x7f)"));
    }

    #[test]
    fn only_translation_faults_stall_and_f_uut_has_no_stage_or_class() {
        // Bit 31 (Stall), bit 39 (S2) and CLASS 0 in records without them.
        let w1 = (1 << 31) | (1 << 39) | 0x7f;
        let ev = Event::decode([0x01 | (4 << 32), w1, 0x1000, 0]);
        let flt = ev.fault.unwrap();
        assert_eq!((flt.stall_tag, flt.stage2, flt.ipa), (None, false, None));
        assert_eq!(
            ev.to_string(),
            "F_UUT sid=0x4: unsupported upstream transaction; unprivileged data write at 0x1000"
        );
        for code in [0x0b, 0x20] {
            let ev = Event::decode([code, w1, 0x1000, 0]);
            assert_eq!(ev.fault.unwrap().stall_tag, None, "{code:#x}");
            assert!(!ev.to_string().contains("stalled"), "{ev}");
        }
        assert!(!Event::decode([0x20, w1, 0, 0]).to_string().contains("CD"));
        assert!(Event::decode([0x0b, w1, 0, 0]).to_string().contains("CD"));
        let ev = Event::decode([0x10, w1, 0x1000, 0]);
        assert_eq!(ev.fault.unwrap().stall_tag, Some(0x7f));
    }

    #[test]
    fn every_code_roundtrips_through_the_type() {
        for code in 0..=255u8 {
            let t = EventType::from_code(code);
            if let EventType::Unknown(c) = t {
                assert_eq!(c, code);
            } else {
                let back = Event::decode([u64::from(code), 0, 0, 0]);
                assert_eq!(back.ty, t);
                assert_ne!(t.name(), "UNKNOWN");
            }
        }
    }
}
