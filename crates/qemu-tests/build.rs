//! Decides at build time whether the QEMU tests can run here.
//!
//! When QEMU 10 or Debian's aarch64-capable toolchain is missing, every test is
//! compiled with `#[ignore = "SKIPPED ..."]` (cfg `qemu_missing`): cargo then
//! lists each as `ignored`, never as `ok`, and this script prints a warning.

use std::path::Path;
use std::process::Command;

fn qemu_major() -> Option<u32> {
    let out = Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

fn missing() -> Option<String> {
    if std::env::var_os("SMMUV3_SKIP_QEMU").is_some_and(|v| v != "0") {
        return Some("SMMUV3_SKIP_QEMU is set".into());
    }
    for (path, what) in [
        ("/usr/bin/rustc", "rustc-web"),
        ("/usr/bin/cargo", "cargo-web"),
        ("/usr/lib/rustlib/src/rust/library/core", "rust-web-src"),
    ] {
        if !Path::new(path).exists() {
            return Some(format!("{path} ({what}) is missing"));
        }
    }
    if Command::new("ld.lld").arg("--version").output().is_err() {
        return Some("ld.lld (lld) is missing".into());
    }
    match qemu_major() {
        None => Some("qemu-system-aarch64 is missing".into()),
        Some(v) if v < 10 => Some(format!("qemu-system-aarch64 is {v}.x, need >= 10")),
        Some(_) => None,
    }
}

/// Returns why the Linux images of the EL2 test are missing, if they are.
fn linux_missing() -> Option<String> {
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?)
        .join("../../target/linux");
    println!("cargo::rerun-if-changed={}", dir.join("READY").display());
    if dir.join("READY").exists() {
        None
    } else {
        Some(format!("{} has no READY stamp", dir.display()))
    }
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(qemu_missing)");
    println!("cargo::rustc-check-cfg=cfg(linux_missing)");
    println!("cargo::rerun-if-env-changed=SMMUV3_SKIP_QEMU");
    println!("cargo::rerun-if-env-changed=PATH");
    // Missing paths count as changed, so an install is noticed on the next build.
    for p in [
        "/usr/bin/qemu-system-aarch64",
        "/usr/bin/rustc",
        "/usr/bin/cargo",
        "/usr/bin/ld.lld",
    ] {
        println!("cargo::rerun-if-changed={p}");
    }
    // dpkg keeps the packaged (old) mtimes of what it installs, so the paths
    // above can look unchanged after setup-qemu.sh; its database does change.
    println!("cargo::rerun-if-changed=/var/lib/dpkg/status");
    let qemu = missing();
    let linux = linux_missing();
    if let Some(why) = qemu.clone().or(linux) {
        println!("cargo::rustc-cfg=linux_missing");
        println!(
            "cargo::warning=EL2 hypervisor + Linux tests will be SKIPPED (shown as ignored): {why}; run scripts/setup-linux.sh"
        );
    }
    if let Some(why) = qemu {
        println!("cargo::rustc-cfg=qemu_missing");
        println!(
            "cargo::warning=QEMU SMMUv3 tests will be SKIPPED (shown as ignored): {why}; run scripts/setup-qemu.sh"
        );
    }
}
