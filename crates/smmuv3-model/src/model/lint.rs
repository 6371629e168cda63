//! The model's validation as a linter: whether an STE, CD or command is
//! legal for this SMMU and, if not, which architectural rule it breaks.
//! The same code decides what the model does with the structure at run
//! time (C_BAD_STE, C_BAD_CD, CERROR_ILL).

use super::decode::Violation;
use crate::SmmuModel;
use crate::layout::{RawCd, RawCmd, RawSte, ste_config};

impl SmmuModel {
    /// Returns whether `words` are an STE this SMMU accepts.
    ///
    /// # Errors
    ///
    /// The [`Violation`] that makes the SMMU report C_BAD_STE.
    pub fn check_ste(&self, words: [u64; 8]) -> Result<(), Violation> {
        self.lock().decode_ste(&RawSte(words)).map(|_| ())
    }

    /// Returns whether `words` are a CD this SMMU accepts under the STE
    /// `ste` (a plain valid stage-1 STE when `None`; a CD is only
    /// meaningful under a stage-1 or nested STE).
    ///
    /// # Errors
    ///
    /// The [`Violation`] of the STE, or the one that makes the SMMU report
    /// C_BAD_CD.
    pub fn check_cd(&self, words: [u64; 8], ste: Option<[u64; 8]>) -> Result<(), Violation> {
        let ste = ste.unwrap_or([1 | ste_config::S1 << 1, 0, 0, 0, 0, 0, 0, 0]);
        let s = self.lock();
        let ste = s.decode_ste(&RawSte(ste))?;
        if ste.s1.is_none() {
            return Err(Violation(
                "the STE does not enable stage 1: no CD is used (STE.Config)",
            ));
        }
        s.decode_cd(&RawCd(words), &ste).map(|_| ())
    }

    /// Returns whether `words` are a command this SMMU executes.
    ///
    /// # Errors
    ///
    /// The [`Violation`] that makes the SMMU stop with CERROR_ILL.
    pub fn check_command(&self, words: [u64; 2]) -> Result<(), Violation> {
        match self.lock().command_rule(&RawCmd(words)) {
            Some(rule) => Err(Violation(rule)),
            None => Ok(()),
        }
    }
}
