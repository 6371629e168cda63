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
            Self::Malformed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Parses hex words ("0x" optional, "_" allowed) into up to `N` words,
/// zero-filling the rest.
///
/// # Errors
///
/// [`DecodeError`] for empty input, a bad word or too many words.
pub fn parse_words<const N: usize>(
    what: &'static str,
    args: &[String],
) -> Result<[u64; N], DecodeError> {
    if args.is_empty() {
        return Err(DecodeError::Empty);
    }
    // Accept "w0 w1" as well as "w0,w1" or one quoted string.
    let words: Vec<&str> = args
        .iter()
        .flat_map(|a| a.split([',', ' ']))
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() > N {
        return Err(DecodeError::TooMany {
            what,
            max: N,
            got: words.len(),
        });
    }
    let mut out = [0u64; N];
    for (slot, w) in out.iter_mut().zip(&words) {
        let clean: String = w.trim_start_matches("0x").replace('_', "");
        *slot = u64::from_str_radix(&clean, 16).map_err(|_| DecodeError::BadWord(w.to_string()))?;
    }
    Ok(out)
}

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
    let w: [u64; 8] = parse_words("an STE", args)?;
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
        "STE: {valid}, {config}\n{}",
        fields(&w, STE_FIELDS)
    ))
}

/// Returns a field-by-field description of a CD (up to 8 words).
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn cd_words(args: &[String]) -> Result<String, DecodeError> {
    let w: [u64; 8] = parse_words("a CD", args)?;
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
        "CD: {valid}, ASID {:#x}, {}-bit VA, {tg} granule\n{}",
        cd::ASID.get(w[0]),
        64 - cd::T0SZ.get(w[0]),
        fields(&w, CD_FIELDS)
    ))
}

/// Returns a description of a command-queue entry (2 words).
///
/// # Errors
///
/// [`DecodeError::Malformed`] for an unknown opcode, or bad input.
pub fn command_words(args: &[String]) -> Result<String, DecodeError> {
    let w: [u64; 2] = parse_words("a command", args)?;
    let cmd = Command::decode(w).map_err(|e| DecodeError::Malformed(format!("{e}")))?;
    Ok(format!("command {:#018x} {:#018x}: {cmd}", w[0], w[1]))
}

/// Returns a description of an event record (4 words).
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn event_words(args: &[String]) -> Result<String, DecodeError> {
    let w: [u64; 4] = parse_words("an event record", args)?;
    Ok(format!("event: {}", Event::decode(w)))
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
    let [d]: [u64; 1] = parse_words("a descriptor", args)?;
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
        s.push_str("  invalid (bit 0 clear)\n");
        return Ok(s);
    }
    let table_bit = d & 2 != 0;
    let kind = match (level, table_bit) {
        (3, true) => "page",
        (3, false) => "reserved (invalid at level 3)",
        (_, true) => "table",
        (_, false) => "block",
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
    fn command_and_event_round_trip_through_the_driver_codec() {
        let text = command_words(&args("0x46 0")).unwrap();
        assert!(text.contains("SYNC"), "{text}");
        // F_TRANSLATION (0x10) for stream 8.
        let text = event_words(&args(&format!("{:#x} 0 0x1000", 0x10u64 | (8u64 << 32)))).unwrap();
        assert!(text.to_lowercase().contains("translation"), "{text}");
    }
}
