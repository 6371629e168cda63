//! Runs the `smmu` binary for the integration tests.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Exit status, standard output and standard error of one run.
#[allow(dead_code)] // `err`: only some test files read it.
pub struct Run {
    pub code: i32,
    pub out: String,
    pub err: String,
}

pub fn smmu(args: &[&str], stdin: Option<&str>) -> Run {
    smmu_bytes(args, stdin.map(str::as_bytes))
}

#[allow(dead_code)]
pub fn smmu_bytes(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smmu"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = c.stdin.take().unwrap();
    if let Some(t) = stdin {
        input.write_all(t).unwrap();
    }
    drop(input);
    let out = c.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
