//! Decoders for what IOMMU developers find in logs: hex words of an STE, a
//! CD, a command, an event record or a page-table descriptor, turned into
//! named fields.
//!
//! Field positions come from the driver's layout modules (`smmuv3::layout`,
//! `io_pgtable::layout`), so the decoders and the driver cannot disagree.

use std::fmt::Write as _;

use smmuv3::bits::Field;
use smmuv3::command::Command;
use smmuv3::event::Event;
use smmuv3::layout::{cd, ste};

use crate::words::{Words, parse_words};

/// Errors from parsing decoder input.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A word is not hexadecimal.
    BadWord(String),
    /// Too many words for the structure.
    TooMany {
        /// Structure name.
        what: &'static str,
        /// Words it has.
        max: usize,
        /// Words given.
        got: usize,
    },
    /// No word given.
    Empty,
    /// A kernel log holds no arm-smmu-v3 event dump.
    NoDump,
    /// The structure is malformed (e.g. an unknown opcode).
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadWord(w) => write!(f, "`{w}` is not a hexadecimal 64-bit word"),
            Self::TooMany { what, max, got } => {
                write!(f, "{what} has {max} 64-bit words, {got} given")
            }
            Self::Empty => write!(f, "no word given"),
            Self::NoDump => write!(
                f,
                "no arm-smmu-v3 event dump (`event 0x.. received:` and four words) in the text"
            ),
            Self::Malformed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// One named field of a structure: word index, name, bits.
type FieldDef = (usize, &'static str, Field);

const STE_FIELDS: &[FieldDef] = &[
    (0, "V", ste::V),
    (0, "Config", ste::CONFIG),
    (0, "S1Fmt", ste::S1FMT),
    (0, "S1ContextPtr", ste::S1CTXPTR),
    (0, "S1CDMax", ste::S1CDMAX),
    (1, "S1DSS", ste::S1DSS),
    (1, "S1CIR", ste::S1CIR),
    (1, "S1COR", ste::S1COR),
    (1, "S1CSH", ste::S1CSH),
    (1, "S1STALLD", ste::S1STALLD),
    (1, "EATS", ste::EATS),
    (1, "STRW", ste::STRW),
    (1, "SHCFG", ste::SHCFG),
    (2, "S2VMID", ste::S2VMID),
    (2, "S2T0SZ", ste::S2T0SZ),
    (2, "S2SL0", ste::S2SL0),
    (2, "S2IR0", ste::S2IR0),
    (2, "S2OR0", ste::S2OR0),
    (2, "S2SH0", ste::S2SH0),
    (2, "S2TG", ste::S2TG),
    (2, "S2PS", ste::S2PS),
    (2, "S2AA64", ste::S2AA64),
    (2, "S2ENDI", ste::S2ENDI),
    (2, "S2AFFD", ste::S2AFFD),
    (2, "S2PTW", ste::S2PTW),
    (2, "S2S", ste::S2S),
    (2, "S2R", ste::S2R),
    (2, "S2FWB", ste::S2FWB),
    (3, "S2TTB", ste::S2TTB),
];

const CD_FIELDS: &[FieldDef] = &[
    (0, "T0SZ", cd::T0SZ),
    (0, "TG0", cd::TG0),
    (0, "IR0", cd::IR0),
    (0, "OR0", cd::OR0),
    (0, "SH0", cd::SH0),
    (0, "EPD0", cd::EPD0),
    (0, "ENDI", cd::ENDI),
    (0, "EPD1", cd::EPD1),
    (0, "V", cd::V),
    (0, "IPS", cd::IPS),
    (0, "AFFD", cd::AFFD),
    (0, "TBI", cd::TBI),
    (0, "AA64", cd::AA64),
    (0, "HD", cd::HD),
    (0, "HA", cd::HA),
    (0, "S", cd::S),
    (0, "R", cd::R),
    (0, "A", cd::A),
    (0, "ASET", cd::ASET),
    (0, "ASID", cd::ASID),
    (1, "TTB0", cd::TTB0),
    (2, "TTB1", cd::TTB1),
    (3, "MAIR", Field::new(63, 0)),
];

/// Returns the line saying which words were read as zero (`""` when all
/// were given), to follow a decoder's or checker's first line.
fn note_line<const N: usize>(w: &Words<N>) -> String {
    w.zero_filled()
        .map(|z| format!("  note: {z}\n"))
        .unwrap_or_default()
}

/// Returns the fields of `words` as "  wN NAME = value" lines; addresses
/// (fields named *PTR / TTB*) are shown shifted back into place.
fn fields(words: &[u64], defs: &[FieldDef]) -> String {
    let mut s = String::new();
    for &(w, name, f) in defs {
        let v = f.get(words[w]);
        let is_addr = name.contains("Ptr") || name.contains("TTB");
        if is_addr {
            let _ = writeln!(s, "  w{w} {name:<13}= {:#x}", v << f.lo);
        } else {
            let _ = writeln!(s, "  w{w} {name:<13}= {v:#x}");
        }
    }
    s
}

/// Returns a field-by-field description of an STE (up to 8 words).
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn ste_words(args: &[String]) -> Result<String, DecodeError> {
    let given: Words<8> = parse_words("an STE", args)?;
    let w = given.words;
    let config = match ste::CONFIG.get(w[0]) {
        ste::CONFIG_ABORT => "abort",
        ste::CONFIG_BYPASS => "bypass",
        ste::CONFIG_S1 => "stage 1 translate, stage 2 bypass",
        ste::CONFIG_S2 => "stage 1 bypass, stage 2 translate",
        ste::CONFIG_NESTED => "nested (stage 1 and stage 2)",
        _ => "reserved (C_BAD_STE if valid)",
    };
    let valid = if ste::V.get(w[0]) == 1 {
        "valid"
    } else {
        "INVALID (all traffic aborts, F_STE invalid)"
    };
    Ok(format!(
        "STE: {valid}, {config}\n{}{}",
        note_line(&given),
        fields(&w, STE_FIELDS)
    ))
}

/// Returns a field-by-field description of a CD (up to 8 words).
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn cd_words(args: &[String]) -> Result<String, DecodeError> {
    let given: Words<8> = parse_words("a CD", args)?;
    let w = given.words;
    let valid = if cd::V.get(w[0]) == 1 {
        "valid"
    } else {
        "INVALID"
    };
    let tg = match cd::TG0.get(w[0]) {
        0 => "4K",
        1 => "64K",
        2 => "16K",
        _ => "reserved",
    };
    Ok(format!(
        "CD: {valid}, ASID {:#x}, {}-bit VA, {tg} granule\n{}{}",
        cd::ASID.get(w[0]),
        64 - cd::T0SZ.get(w[0]),
        note_line(&given),
        fields(&w, CD_FIELDS)
    ))
}

/// Returns a description of a command-queue entry (2 words).
///
/// # Errors
///
/// [`DecodeError::Malformed`] for an unknown opcode, or bad input.
pub fn command_words(args: &[String]) -> Result<String, DecodeError> {
    let given: Words<2> = parse_words("a command", args)?;
    let w = given.words;
    let cmd = Command::decode(w).map_err(|e| DecodeError::Malformed(format!("{e}")))?;
    Ok(format!(
        "command {:#018x} {:#018x}: {cmd}\n{}",
        w[0],
        w[1],
        note_line(&given)
    ))
}

/// Returns a description of an event record (4 words).
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn event_words(args: &[String]) -> Result<String, DecodeError> {
    let given: Words<4> = parse_words("an event record", args)?;
    Ok(format!(
        "event: {}\n{}",
        Event::decode(given.words),
        note_line(&given)
    ))
}

/// Translation stage of a page-table descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Stage 1 (AP, AttrIndx, nG, PXN/UXN).
    S1,
    /// Stage 2 (S2AP, MemAttr, XN).
    S2,
}

/// Returns a description of a VMSAv8-64 descriptor at `level` for a 4K, 16K
/// or 64K granule (`granule` in bytes).
///
/// # Errors
///
/// [`DecodeError::Malformed`] for a level above 3 or an unknown granule.
pub fn pte(args: &[String], stage: Stage, level: u8, granule: u64) -> Result<String, DecodeError> {
    // One word: never zero-filled.
    let Words { words: [d], .. } = parse_words("a descriptor", args)?;
    let shift = match granule {
        4096 => 12,
        16384 => 14,
        65536 => 16,
        _ => {
            return Err(DecodeError::Malformed(format!(
                "granule {granule} is not 4096, 16384 or 65536"
            )));
        }
    };
    if level > 3 {
        return Err(DecodeError::Malformed(format!(
            "level {level} is not 0..=3"
        )));
    }
    let mut s = format!(
        "descriptor {d:#018x} at level {level}, {}K granule, stage {}:\n",
        granule >> 10,
        if stage == Stage::S1 { 1 } else { 2 }
    );
    if d & 1 == 0 {
        // A "name = value" line like the others, so --json carries it too.
        s.push_str("  type          = invalid (bit 0 clear)\n");
        return Ok(s);
    }
    if shift == 16 && level == 0 {
        return Err(DecodeError::Malformed(
            "the 64K granule has no level 0 (walks start at level 1)".into(),
        ));
    }
    let table_bit = d & 2 != 0;
    // Blocks exist only at the levels VMSAv8-64 gives them; elsewhere the
    // encoding is a translation fault, as the model's walker treats it.
    let kind = match (level, table_bit, shift) {
        (3, true, _) => "page",
        (3, false, _) => "reserved (invalid at level 3)",
        (_, true, _) => "table",
        (1 | 2, false, 12) | (2, false, _) => "block",
        (1, false, 16) => "block (at level 1 only with a 52-bit output, FEAT_LPA)",
        (0, false, 12) => "reserved (a level-0 block needs FEAT_LPA2, DS = 1)",
        (1, false, _) => "reserved (a level-1 block needs FEAT_LPA2, DS = 1)",
        (_, false, _) => "reserved (no level-0 block with the 16K granule)",
    };
    // Output address bits [47:shift]; with the 64K granule bits 15:12 hold
    // PA[51:48].
    let mut addr = d & 0x0000_ffff_ffff_ffff & !((1u64 << shift) - 1);
    if shift == 16 {
        addr |= ((d >> 12) & 0xf) << 48;
    }
    let _ = writeln!(s, "  type          = {kind}");
    let _ = writeln!(s, "  address       = {addr:#x}");
    if kind == "table" {
        let _ = writeln!(s, "  NSTable/APTable/XNTable/PXNTable = {:#x}", d >> 59);
    } else {
        let _ = writeln!(
            s,
            "  SH            = {}",
            ["non-shareable", "reserved", "outer", "inner"][((d >> 8) & 3) as usize]
        );
        let _ = writeln!(s, "  AF            = {}", (d >> 10) & 1);
        let _ = writeln!(s, "  Contiguous    = {}", (d >> 52) & 1);
        match stage {
            Stage::S1 => {
                let _ = writeln!(s, "  AttrIndx      = {}", (d >> 2) & 7);
                let _ = writeln!(
                    s,
                    "  AP            = {} ({}, {})",
                    (d >> 6) & 3,
                    if d & (1 << 7) != 0 {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    if d & (1 << 6) != 0 {
                        "EL0 too"
                    } else {
                        "privileged only"
                    }
                );
                let _ = writeln!(s, "  nG            = {}", (d >> 11) & 1);
                let _ = writeln!(s, "  DBM           = {}", (d >> 51) & 1);
                let _ = writeln!(s, "  PXN           = {}", (d >> 53) & 1);
                let _ = writeln!(s, "  UXN           = {}", (d >> 54) & 1);
            }
            Stage::S2 => {
                let _ = writeln!(s, "  MemAttr       = {:#x}", (d >> 2) & 0xf);
                let _ = writeln!(
                    s,
                    "  S2AP          = {} (read {}, write {})",
                    (d >> 6) & 3,
                    (d >> 6) & 1,
                    (d >> 7) & 1
                );
                let _ = writeln!(s, "  DBM           = {}", (d >> 51) & 1);
                let _ = writeln!(s, "  XN            = {}", (d >> 53) & 3);
            }
        }
    }
    let sw = (d >> 55) & 0xf;
    if sw != 0 {
        let _ = writeln!(s, "  software bits = {sw:#x} (ignored by the walker)");
    }
    Ok(s)
}

/// Returns the fields of `words` as a JSON object (addresses in place).
fn fields_json(words: &[u64], defs: &[FieldDef]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for &(w, name, f) in defs {
        let v = f.get(words[w]);
        let v = if name.contains("Ptr") || name.contains("TTB") {
            v << f.lo
        } else {
            v
        };
        m.insert(name.into(), format!("{v:#x}").into());
    }
    m.into()
}

fn hex_words(w: &[u64]) -> Vec<String> {
    w.iter().map(|v| format!("{v:#x}")).collect()
}

/// Returns an STE as JSON: its words, summary line and fields.
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn ste_json(args: &[String]) -> Result<serde_json::Value, DecodeError> {
    let given: Words<8> = parse_words("an STE", args)?;
    let w = given.words;
    let text = ste_words(args)?;
    Ok(serde_json::json!({
        "kind": "ste",
        "words": hex_words(&w),
        "words_given": given.given,
        "summary": text.lines().next().unwrap_or_default(),
        "fields": fields_json(&w, STE_FIELDS),
    }))
}

/// Returns a CD as JSON.
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn cd_json(args: &[String]) -> Result<serde_json::Value, DecodeError> {
    let given: Words<8> = parse_words("a CD", args)?;
    let w = given.words;
    let text = cd_words(args)?;
    Ok(serde_json::json!({
        "kind": "cd",
        "words": hex_words(&w),
        "words_given": given.given,
        "summary": text.lines().next().unwrap_or_default(),
        "fields": fields_json(&w, CD_FIELDS),
    }))
}

/// Returns a command as JSON.
///
/// # Errors
///
/// As [`command_words`].
pub fn command_json(args: &[String]) -> Result<serde_json::Value, DecodeError> {
    let given: Words<2> = parse_words("a command", args)?;
    let w = given.words;
    let cmd = Command::decode(w).map_err(|e| DecodeError::Malformed(format!("{e}")))?;
    Ok(serde_json::json!({
        "kind": "cmd",
        "words": hex_words(&w),
        "words_given": given.given,
        "opcode": format!("{:#x}", w[0] & 0xff),
        "name": smmuv3_model::layout::opcode_name((w[0] & 0xff) as u8),
        "text": cmd.to_string(),
    }))
}

/// Returns a decoded event record as JSON, `given` of its words taken
/// from the input (the rest read as zero).
pub fn event_value(w: [u64; 4], given: usize) -> serde_json::Value {
    let e = Event::decode(w);
    let fault = e.fault.map(|f| {
        serde_json::json!({
            "addr": format!("{:#x}", f.addr),
            "ipa": f.ipa.map(|a| format!("{a:#x}")),
            "stage2": e.ty.has_stage().then_some(f.stage2),
            "read": f.read,
            "privileged": f.privileged,
            "instruction": f.instruction,
            "class": e.ty.has_class().then(|| format!("{:?}", f.class)),
            "stall_tag": f.stall_tag,
        })
    });
    serde_json::json!({
        "kind": "event",
        "words": hex_words(&w),
        "words_given": given,
        "type": e.ty.name(),
        "code": format!("{:#x}", w[0] & 0xff),
        "sid": format!("{:#x}", e.sid),
        "ssid": e.ssid.map(|s| format!("{s:#x}")),
        "fault": fault,
        "fetch_addr": e.fetch_addr.map(|a| format!("{a:#x}")),
        "text": e.to_string(),
    })
}

/// Returns an event record as JSON.
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn event_json(args: &[String]) -> Result<serde_json::Value, DecodeError> {
    let given: Words<4> = parse_words("an event record", args)?;
    Ok(event_value(given.words, given.given))
}

/// Returns a page-table descriptor as JSON (the text lines, keyed).
///
/// # Errors
///
/// As [`pte`].
pub fn pte_json(
    args: &[String],
    stage: Stage,
    level: u8,
    granule: u64,
) -> Result<serde_json::Value, DecodeError> {
    let text = pte(args, stage, level, granule)?;
    let mut m = serde_json::Map::new();
    for l in text.lines().skip(1) {
        if let Some((k, v)) = l.split_once(" = ") {
            m.insert(k.trim().into(), v.trim().into());
        }
    }
    Ok(serde_json::json!({
        "kind": "pte",
        "summary": text.lines().next().unwrap_or_default(),
        "fields": m,
    }))
}

/// Decodes every event dump of a kernel log: text, or JSON when `json`.
///
/// # Errors
///
/// [`DecodeError`] from [`crate::klog::parse_log`].
pub fn log(text: &str, json: bool) -> Result<String, DecodeError> {
    let events = crate::klog::parse_log(text)?;
    if json {
        let v: Vec<serde_json::Value> = events
            .iter()
            .map(|le| {
                // A dump short of four words is an error of parse_log.
                let mut v = event_value(le.words, le.words.len());
                v["line"] = le.line.into();
                v["header_code"] = format!("{:#x}", le.header_code).into();
                v["header_matches"] = le.header_matches().into();
                v["kernel_summary"] = le.summary.clone().into();
                v["summary_sid_matches"] = le
                    .summary_sid()
                    .map(|s| s == Event::decode(le.words).sid)
                    .into();
                v
            })
            .collect();
        return Ok(
            serde_json::to_string_pretty(&serde_json::json!({ "events": v })).unwrap_or_default(),
        );
    }
    let mut s = String::new();
    for le in &events {
        let e = Event::decode(le.words);
        let _ = writeln!(s, "line {}: {e}", le.line);
        if !le.header_matches() {
            let _ = writeln!(
                s,
                "  note: the header says event {:#x}, the record's type field is {:#x}",
                le.header_code,
                le.words[0] & 0xff
            );
        }
        if let Some(sid) = le.summary_sid() {
            if sid != e.sid {
                let _ = writeln!(
                    s,
                    "  note: the kernel's summary names sid {sid:#x}, the record {:#x}",
                    e.sid
                );
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn ste_fields_come_out_in_place() {
        // Valid, stage 2, VMID 5, S2TTB 0x8000_1000, S2AA64.
        let w0 = 1 | (ste::CONFIG_S2 << 1);
        let w2: u64 = 5 | (1 << 51);
        let text = ste_words(&args(&format!("{w0:x} 0 {w2:#x} 0x80001000"))).unwrap();
        assert!(
            text.starts_with("STE: valid, stage 1 bypass, stage 2 translate"),
            "{text}"
        );
        assert!(text.contains("S2VMID       = 0x5"), "{text}");
        assert!(text.contains("S2AA64       = 0x1"), "{text}");
        assert!(text.contains("S2TTB        = 0x80001000"), "{text}");
    }

    #[test]
    fn cd_header_reads_asid_and_granule() {
        let w0: u64 = 16 | (1 << 31) | (0x42 << 48) | (2 << 6);
        let text = cd_words(&args(&format!("{w0:#x}"))).unwrap();
        assert!(
            text.starts_with("CD: valid, ASID 0x42, 48-bit VA, 16K granule"),
            "{text}"
        );
    }

    #[test]
    fn pte_decodes_52_bit_address_and_permissions() {
        // 64K page at level 3: PA bits 51:48 = 0xa in descriptor bits 15:12.
        let d: u64 = 3 | (0xa << 12) | 0x1234_0000 | (1 << 10) | (1 << 7) | (1 << 54);
        let text = pte(&args(&format!("{d:#x}")), Stage::S1, 3, 65536).unwrap();
        assert!(text.contains("type          = page"), "{text}");
        assert!(text.contains("address       = 0xa000012340000"), "{text}");
        assert!(text.contains("read-only"), "{text}");
        assert!(text.contains("UXN           = 1"), "{text}");
        assert!(pte(&args("1"), Stage::S1, 4, 4096).is_err());
        assert!(pte(&args("1"), Stage::S1, 3, 8192).is_err());
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(ste_words(&[]), Err(DecodeError::Empty));
        assert!(matches!(
            ste_words(&args("zz")),
            Err(DecodeError::BadWord(_))
        ));
        assert!(matches!(
            command_words(&args("1 2 3")),
            Err(DecodeError::TooMany { max: 2, got: 3, .. })
        ));
        // Opcode 0x7f is not a command.
        assert!(matches!(
            command_words(&args("7f 0")),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn kernel_log_dumps_decode_and_cross_check() {
        let t = "[ 1.0] arm-smmu-v3 x: event 0x10 received:\n\
                 [ 1.0] arm-smmu-v3 x:  0x0000000800000010\n\
                 [ 1.0] arm-smmu-v3 x:  0x0000020000000000\n\
                 [ 1.0] arm-smmu-v3 x:  0x00000000fffff000\n\
                 [ 1.0] arm-smmu-v3 x:  0x0000000000000000\n\
                 [ 1.0] arm-smmu-v3 x: event: F_TRANSLATION client: 0000:00:01.0 sid: 0x9 ssid: 0x0 iova: 0xfffff000 ipa: 0x0\n";
        let text = log(t, false).unwrap();
        assert!(text.starts_with("line 1: F_TRANSLATION"), "{text}");
        assert!(text.contains("0xfffff000"), "{text}");
        // The summary names sid 9, the record sid 8: flagged.
        assert!(
            text.contains("summary names sid 0x9, the record 0x8"),
            "{text}"
        );
        let j: serde_json::Value = serde_json::from_str(&log(t, true).unwrap()).unwrap();
        let e = &j["events"][0];
        assert_eq!(e["type"], "F_TRANSLATION");
        assert_eq!(e["sid"], "0x8");
        assert_eq!(e["fault"]["addr"], "0xfffff000");
        assert_eq!(e["fault"]["read"], false);
        assert_eq!(e["summary_sid_matches"], false);
        assert_eq!(e["line"], 1);
    }

    #[test]
    fn json_decoders_name_fields() {
        let j = ste_json(&args("0xd 0 0x8000000000005 0x80001000")).unwrap();
        assert_eq!(j["fields"]["S2VMID"], "0x5");
        assert_eq!(j["fields"]["S2TTB"], "0x80001000");
        let j = command_json(&args("0x46 0")).unwrap();
        assert_eq!(j["name"], "SYNC");
        let j = pte_json(&args("0x40000000000fc7"), Stage::S1, 3, 4096).unwrap();
        assert_eq!(j["fields"]["type"], "page");
    }

    #[test]
    fn command_and_event_round_trip_through_the_driver_codec() {
        let text = command_words(&args("0x46 0")).unwrap();
        assert!(text.contains("SYNC"), "{text}");
        // F_TRANSLATION (0x10) for stream 8.
        let text = event_words(&args(&format!("{:#x} 0 0x1000", 0x10u64 | (8u64 << 32)))).unwrap();
        assert!(text.to_lowercase().contains("translation"), "{text}");
    }
}
