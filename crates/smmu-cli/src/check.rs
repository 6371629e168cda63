//! `smmu check`: the model's validation as a linter. The rule a structure
//! breaks is the one the model enforces at run time (C_BAD_STE, C_BAD_CD,
//! CERROR_ILL), for the chosen SMMU configuration.

use sim_memory::{Coherency, SimMemory};
use smmuv3_model::{ModelConfig, SmmuModel};

use crate::decode::DecodeError;
use crate::words::{Words, parse_words};

/// Which SMMU the structure is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// A rich SMMU (stage 1 and 2, nesting, all granules, RIL).
    Default,
    /// What QEMU's virt machine advertises.
    Qemu,
    /// Stage 1 only.
    Stage1,
    /// Stage 2 only.
    Stage2,
    /// Arm MMU-600.
    Mmu600,
    /// Arm MMU-700.
    Mmu700,
}

impl Preset {
    /// Returns the model configuration.
    pub fn config(self) -> ModelConfig {
        match self {
            Self::Default => ModelConfig::default(),
            Self::Qemu => ModelConfig::qemu_like(),
            Self::Stage1 => ModelConfig::stage1_only(),
            Self::Stage2 => ModelConfig::stage2_only(),
            // The latest revisions (r2p0-like MMU-600, r1p1-like MMU-700).
            Self::Mmu600 => ModelConfig::mmu600(2, 0),
            Self::Mmu700 => ModelConfig::mmu700(1, 1),
        }
    }
}

/// The verdict on one structure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// "ste", "cd" or "cmd".
    pub kind: &'static str,
    /// The words checked.
    pub words: Vec<u64>,
    /// How many of `words` were given; the rest were read as zero.
    pub given: usize,
    /// For a CD: how many words of the `--ste` STE were given, `None`
    /// without one (a plain stage-1 STE is assumed).
    pub ste_given: Option<usize>,
    /// What was read as zero, one line each ("2 of 8 words given; ...").
    pub notes: Vec<String>,
    /// The broken rule, `None` when legal.
    pub rule: Option<&'static str>,
}

impl Verdict {
    /// Returns whether the structure is legal.
    pub fn legal(&self) -> bool {
        self.rule.is_none()
    }

    /// Returns the verdict as text: the verdict line, then a note for
    /// each structure read partly as zero.
    pub fn text(&self) -> String {
        let mut s = match self.rule {
            None => format!("{}: legal", self.kind.to_uppercase()),
            Some(r) => format!("{}: ILLEGAL: {r}", self.kind.to_uppercase()),
        };
        for n in &self.notes {
            s.push_str("\n  note: ");
            s.push_str(n);
        }
        s
    }

    /// Returns the verdict as JSON.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kind": self.kind,
            "words": self.words.iter().map(|w| format!("{w:#x}")).collect::<Vec<_>>(),
            "words_given": self.given,
            "legal": self.legal(),
            "rule": self.rule,
        });
        if self.kind == "cd" {
            v["ste_words_given"] = self.ste_given.into();
        }
        v
    }
}

fn model(preset: Preset) -> Result<SmmuModel, DecodeError> {
    let mem = SimMemory::new(0x8000_0000, 64 << 10, Coherency::Coherent)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    SmmuModel::new(preset.config(), std::sync::Arc::new(mem))
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Checks an STE.
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn ste(args: &[String], preset: Preset) -> Result<Verdict, DecodeError> {
    let w: Words<8> = parse_words("an STE", args)?;
    let rule = model(preset)?.check_ste(w.words).err().map(|v| v.0);
    Ok(Verdict {
        kind: "ste",
        words: w.words.to_vec(),
        rule,
        given: w.given,
        ste_given: None,
        notes: w.zero_filled().into_iter().collect(),
    })
}

/// Checks a CD, under `ste` when given.
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn cd(args: &[String], ste: &[String], preset: Preset) -> Result<Verdict, DecodeError> {
    let w: Words<8> = parse_words("a CD", args)?;
    let ste = if ste.is_empty() {
        None
    } else {
        Some(parse_words::<8>("an STE", ste)?)
    };
    let rule = model(preset)?
        .check_cd(w.words, ste.map(|s| s.words))
        .err()
        .map(|v| v.0);
    let mut notes: Vec<String> = w.zero_filled().into_iter().collect();
    notes.extend(
        ste.and_then(|s| s.zero_filled())
            .map(|z| format!("--ste: {z}")),
    );
    Ok(Verdict {
        kind: "cd",
        words: w.words.to_vec(),
        rule,
        given: w.given,
        ste_given: ste.map(|s| s.given),
        notes,
    })
}

/// Checks a command.
///
/// # Errors
///
/// [`DecodeError`] for bad input.
pub fn cmd(args: &[String], preset: Preset) -> Result<Verdict, DecodeError> {
    let w: Words<2> = parse_words("a command", args)?;
    let rule = model(preset)?.check_command(w.words).err().map(|v| v.0);
    Ok(Verdict {
        kind: "cmd",
        words: w.words.to_vec(),
        rule,
        given: w.given,
        ste_given: None,
        notes: w.zero_filled().into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn legal_and_illegal_stes() {
        // Valid bypass STE.
        assert!(ste(&a("0x9"), Preset::Default).unwrap().legal());
        // Stage 2 with S2TG = 0b11 (reserved).
        let w2: u64 = 3 << 46 | 1 << 51 | 25 << 32 | 5 << 48;
        let v = ste(&a(&format!("0xd 0 {w2:#x} 0x80000000")), Preset::Default).unwrap();
        assert_eq!(v.rule, Some("STE.S2TG = 0b11 is reserved"));
        // Stage 2 on a stage-1-only SMMU.
        let v = ste(&a("0xd"), Preset::Stage1).unwrap();
        assert!(v.rule.unwrap().contains("IDR0.S2P"), "{v:?}");
        assert!(!ste(&a("0"), Preset::Default).unwrap().legal());
    }

    #[test]
    fn cds_and_commands() {
        // T0SZ 16, 4K, IPS 48, AA64, V, R, A, ASID 1, TTB0.
        let w0: u64 = 16 | 5 << 32 | 1 << 31 | 1 << 41 | 1 << 45 | 1 << 46 | 1 << 48 | 1 << 30;
        let ok = cd(&a(&format!("{w0:#x} 0x80001000")), &[], Preset::Default).unwrap();
        assert!(ok.legal(), "{ok:?}");
        let bad = cd(
            &a(&format!("{:#x} 0x80001000", w0 & !0x3f | 8)),
            &[],
            Preset::Default,
        );
        assert!(bad.unwrap().rule.unwrap().contains("T0SZ"));
        assert!(cmd(&a("0x46 0"), Preset::Default).unwrap().legal());
        assert_eq!(
            cmd(&a("0x7f 0"), Preset::Default).unwrap().rule,
            Some("unknown or reserved opcode")
        );
        // TLBI_NH_VA with TG = 4K and NUM = SCALE = TTL = 0.
        let v = cmd(&a("0x12 0x400"), Preset::Default).unwrap();
        assert!(v.rule.unwrap().contains("NUM = SCALE = TTL = 0"), "{v:?}");
        assert_eq!(v.json()["legal"], false);
    }
}
