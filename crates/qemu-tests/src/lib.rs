//! Runs `scripts/qemu-test.sh` (the bare-metal scenarios) or
//! `scripts/el2-test.sh` (the EL2 hypervisor booting Linux) once and turns
//! each scenario line it prints into a verdict a test can assert on.
//!
//! The kernel prints `SCENARIO <name>: PASS|FAIL|SKIP <detail>` and brackets
//! each scenario with `SCENARIO-BEGIN <name>`; the script prefixes lines with
//! the machine (`[virt] SCENARIO ...`) and, after a failure, reruns that
//! machine with QEMU's SMMU trace into `<out>/<machine>.trace.log`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The outcome of one scenario on one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The scenario passed.
    Pass,
    /// The scenario failed.
    Fail,
    /// The scenario does not apply to this machine (e.g. stage 2 on virt-9.1).
    Skip,
}

/// One scenario line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Outcome.
    pub status: Status,
    /// The rest of the line.
    pub detail: String,
}

/// Everything one run of the script produced.
#[derive(Debug)]
pub struct Run {
    /// The script's exit status (0 pass, 1 fail, 77 skipped).
    pub exit_code: Option<i32>,
    /// Scenario verdicts by (machine, scenario name).
    pub verdicts: BTreeMap<(String, String), Verdict>,
    /// The script's stdout and stderr.
    pub output: String,
    /// Where the logs and traces are.
    pub out_dir: PathBuf,
}

/// Exit status with which the script reports that it skipped.
pub const EXIT_SKIPPED: i32 = 77;

/// Parses the script's output into verdicts.
///
/// Returns the verdicts keyed by (machine, scenario); malformed lines are ignored.
pub fn parse(output: &str) -> BTreeMap<(String, String), Verdict> {
    let mut map = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((machine, rest)) = rest.split_once("] SCENARIO ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(": ") else {
            continue;
        };
        let (word, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        let status = match word {
            "PASS" => Status::Pass,
            "FAIL" => Status::Fail,
            "SKIP" => Status::Skip,
            _ => continue,
        };
        map.insert(
            (machine.to_string(), name.to_string()),
            Verdict {
                status,
                detail: detail.trim().to_string(),
            },
        );
    }
    map
}

/// Returns the lines of `log` from `SCENARIO-BEGIN <name>` to that scenario's
/// result line (or the end of the log when it never finished).
pub fn scenario_section(log: &str, name: &str) -> Option<String> {
    let begin = format!("SCENARIO-BEGIN {name}");
    let end = format!("SCENARIO {name}:");
    let mut lines = log.lines().map(|l| l.trim_end_matches('\r'));
    lines.by_ref().find(|l| *l == begin)?;
    let mut section = vec![begin.clone()];
    for l in lines {
        section.push(l.to_string());
        if l.starts_with(&end) {
            break;
        }
    }
    Some(section.join("\n"))
}

impl Run {
    /// Returns the QEMU SMMU trace of scenario `name` on `machine`, when the
    /// script recorded one (it does after a failure).
    pub fn trace(&self, machine: &str, name: &str) -> Option<String> {
        let log =
            std::fs::read_to_string(self.out_dir.join(format!("{machine}.trace.log"))).ok()?;
        scenario_section(&log, name)
    }

    /// Checks scenario `name` on `machine` against what the test expects.
    ///
    /// # Errors
    ///
    /// A report (with the QEMU trace when there is one) when the scenario is
    /// missing, failed, or its status is not `expect`.
    pub fn check(&self, machine: &str, name: &str, expect: Status) -> Result<Verdict, Report> {
        let key = (machine.to_string(), name.to_string());
        match self.verdicts.get(&key) {
            Some(v) if v.status == expect => Ok(v.clone()),
            got => Err(Report {
                what: match got {
                    Some(v) => format!(
                        "[{machine}] {name}: expected {expect:?}, got {:?}: {}",
                        v.status, v.detail
                    ),
                    None => format!(
                        "[{machine}] {name}: no result line (exit status {:?})",
                        self.exit_code
                    ),
                },
                trace: self.trace(machine, name),
                output_tail: tail(&self.output, 60),
            }),
        }
    }
}

/// Why a scenario check failed, with the evidence.
#[derive(Debug)]
pub struct Report {
    what: String,
    trace: Option<String>,
    output_tail: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.what)?;
        match &self.trace {
            Some(t) => writeln!(f, "---- QEMU SMMU trace of this scenario ----\n{t}")?,
            None => writeln!(f, "(no QEMU trace recorded for this scenario)")?,
        }
        write!(f, "---- script output (tail) ----\n{}", self.output_tail)
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Returns the workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `scripts/<script>` with `--out out_dir` and collects its verdicts.
///
/// # Errors
///
/// A message when the script could not be started.
pub fn run_script(script: &str, out_dir: &Path) -> Result<Run, String> {
    let path = workspace_root().join("scripts").join(script);
    let out = Command::new("bash")
        .arg(&path)
        .arg("--out")
        .arg(out_dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Run {
        exit_code: out.status.code(),
        verdicts: parse(&output),
        output,
        out_dir: out_dir.to_path_buf(),
    })
}

/// Runs `scripts/qemu-test.sh` once per process and returns its result.
///
/// # Errors
///
/// A message when the script could not be started.
pub fn run_once(out_dir: &Path) -> Result<&'static Run, String> {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    RUN.get_or_init(|| run_script("qemu-test.sh", out_dir))
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `scripts/el2-test.sh` (the EL2 hypervisor booting Linux) once per
/// process and returns its result.
///
/// # Errors
///
/// A message when the script could not be started.
pub fn run_el2_once(out_dir: &Path) -> Result<&'static Run, String> {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    RUN.get_or_init(|| run_script("el2-test.sh", out_dir))
        .as_ref()
        .map_err(Clone::clone)
}

/// Returns the CRC that POSIX `cksum` prints for `data` (CRC-32, polynomial
/// 0x04C11DB7, MSB first, the length appended), the checksum the kernel
/// prints for what it read from a disk.
pub fn cksum(data: &[u8]) -> u32 {
    fn byte(crc: u32, b: u8) -> u32 {
        let mut c = crc ^ (u32::from(b) << 24);
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04c1_1db7
            } else {
                c << 1
            };
        }
        c
    }
    let mut crc = data.iter().fold(0, |c, &b| byte(c, b));
    let mut n = data.len() as u64;
    while n != 0 {
        crc = byte(crc, n as u8);
        n >>= 8;
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
qemu-test: building
[virt] SCENARIO probe: PASS IDR0=0x0d44101b
[virt] SCENARIO stage1-dma: FAIL data mismatch at 0x10
[virt-9.1] SCENARIO stage2-dma: SKIP no stage 2 (IDR0.S2P=0)
[virt] SCENARIO odd: MAYBE whatever
garbage line
[virt] RUN: FAIL
";

    #[test]
    fn cksum_matches_posix_cksum() {
        // `printf abc | cksum` and `printf '' | cksum` (GNU coreutils).
        assert_eq!(cksum(b"abc"), 1_219_131_554);
        assert_eq!(cksum(b""), 4_294_967_295);
        assert_eq!(cksum(b"123456789"), 930_766_865);
    }

    #[test]
    fn parse_reads_machine_name_status_and_detail() {
        let v = parse(SAMPLE);
        assert_eq!(v.len(), 3);
        let probe = &v[&("virt".into(), "probe".into())];
        assert_eq!(probe.status, Status::Pass);
        assert_eq!(probe.detail, "IDR0=0x0d44101b");
        assert_eq!(
            v[&("virt".into(), "stage1-dma".into())].status,
            Status::Fail
        );
        let s2 = &v[&("virt-9.1".into(), "stage2-dma".into())];
        assert_eq!(s2.status, Status::Skip);
        assert_eq!(s2.detail, "no stage 2 (IDR0.S2P=0)");
    }

    #[test]
    fn scenario_section_spans_begin_to_result() {
        let log = "x\r\nSCENARIO-BEGIN a\r\nsmmuv3_translate 1\nSCENARIO a: FAIL y\nSCENARIO-BEGIN b\nz\n";
        assert_eq!(
            scenario_section(log, "a").unwrap(),
            "SCENARIO-BEGIN a\nsmmuv3_translate 1\nSCENARIO a: FAIL y"
        );
        // An unfinished scenario runs to the end of the log.
        assert_eq!(scenario_section(log, "b").unwrap(), "SCENARIO-BEGIN b\nz");
        assert_eq!(scenario_section(log, "c"), None);
    }

    #[test]
    fn check_reports_wrong_status_and_missing_lines() {
        let run = Run {
            exit_code: Some(1),
            verdicts: parse(SAMPLE),
            output: SAMPLE.into(),
            out_dir: PathBuf::from("/nonexistent"),
        };
        assert!(run.check("virt", "probe", Status::Pass).is_ok());
        let e = run
            .check("virt", "stage1-dma", Status::Pass)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected Pass, got Fail: data mismatch"), "{e}");
        let e = run
            .check("virt", "nested-dma", Status::Pass)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no result line"), "{e}");
    }
}
