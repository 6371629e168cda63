//! SMMUv3 end-to-end scenarios, written once and run on two independent SMMU
//! implementations: QEMU's SMMUv3 (from the bare-metal kernel in
//! `baremetal/`, with QEMU's `edu` PCI device doing the DMA) and our own
//! `smmuv3-model` (host tests of this crate, with a simulated device).
//!
//! A scenario drives the `smmuv3` driver and `io-pgtable` unchanged, makes a
//! device DMA through the SMMU and checks the data and the event queue. Every
//! difference between the two implementations shows up as a scenario that
//! passes on one and fails on the other.
//!
//! Each scenario reports one line: `SCENARIO <name>: PASS|FAIL|SKIP <detail>`,
//! after a `SCENARIO-BEGIN <name>` marker that brackets its diagnostics.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod platform;
mod scenarios;

use alloc::string::String;
use core::fmt;

pub use platform::{
    DeviceError, DmaBuffer, DmaDevice, IdProfile, Leniency, Platform, QEMU_VIRT, QEMU_VIRT_9_1,
};
pub use scenarios::SCENARIOS;

/// Why a scenario did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The implementation under test misbehaved (or our code did).
    Fail(String),
    /// The scenario does not apply here (e.g. stage 2 on a stage-1-only SMMU).
    Skip(String),
}

impl Problem {
    /// Returns a failure with a formatted message.
    pub fn fail(args: fmt::Arguments<'_>) -> Self {
        Self::Fail(alloc::fmt::format(args))
    }

    /// Returns a skip with a formatted reason.
    pub fn skip(args: fmt::Arguments<'_>) -> Self {
        Self::Skip(alloc::fmt::format(args))
    }
}

/// Fails the scenario with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::Problem::fail(format_args!($($arg)*)));
        }
    };
}

/// What a scenario returns: a detail line on success.
pub type Outcome = Result<String, Problem>;

/// A named scenario.
pub struct Scenario<P: Platform> {
    /// Name used in the result line and as the host test name.
    pub name: &'static str,
    /// The scenario.
    pub run: fn(&mut P) -> Outcome,
}

/// Formats the result line of a scenario.
pub struct ResultLine<'a> {
    name: &'a str,
    outcome: &'a Outcome,
}

impl<'a> ResultLine<'a> {
    /// Returns the line for `outcome` of scenario `name`.
    pub fn new(name: &'a str, outcome: &'a Outcome) -> Self {
        Self { name, outcome }
    }
}

impl fmt::Display for ResultLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Detail stays on one line: the host side parses line by line.
        let (word, detail) = match self.outcome {
            Ok(d) => ("PASS", d),
            Err(Problem::Fail(d)) => ("FAIL", d),
            Err(Problem::Skip(d)) => ("SKIP", d),
        };
        write!(f, "SCENARIO {}: {word}", self.name)?;
        if !detail.is_empty() {
            f.write_str(" ")?;
            for c in detail.chars() {
                f.write_fmt(format_args!(
                    "{}",
                    if c == '\n' || c == '\r' { ' ' } else { c }
                ))?;
            }
        }
        Ok(())
    }
}

/// Counts of a whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Scenarios that passed.
    pub passed: usize,
    /// Scenarios that failed.
    pub failed: usize,
    /// Scenarios that did not apply.
    pub skipped: usize,
}

/// Runs scenario `name`.
///
/// Returns `None` when there is no such scenario.
pub fn run_one<P: Platform>(p: &mut P, name: &str) -> Option<Outcome> {
    let s = scenarios::all::<P>().into_iter().find(|s| s.name == name)?;
    Some((s.run)(p))
}

/// Runs every scenario in order, printing the begin marker and the result
/// line of each through [`Platform::log`].
///
/// Returns the counts.
pub fn run_all<P: Platform>(p: &mut P) -> Summary {
    let mut sum = Summary::default();
    for s in scenarios::all::<P>() {
        p.log(format_args!("SCENARIO-BEGIN {}", s.name));
        let outcome = (s.run)(p);
        p.log(format_args!("{}", ResultLine::new(s.name, &outcome)));
        match outcome {
            Ok(_) => sum.passed += 1,
            Err(Problem::Fail(_)) => sum.failed += 1,
            Err(Problem::Skip(_)) => sum.skipped += 1,
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn result_line_has_the_parsed_shape() {
        let ok: Outcome = Ok("4 KiB round trip".to_string());
        assert_eq!(
            ResultLine::new("stage1-dma", &ok).to_string(),
            "SCENARIO stage1-dma: PASS 4 KiB round trip"
        );
        let bad: Outcome = Err(Problem::Fail("line one\nline two".to_string()));
        assert_eq!(
            ResultLine::new("x", &bad).to_string(),
            "SCENARIO x: FAIL line one line two"
        );
        let skip: Outcome = Err(Problem::Skip(String::new()));
        assert_eq!(ResultLine::new("y", &skip).to_string(), "SCENARIO y: SKIP");
    }
}
