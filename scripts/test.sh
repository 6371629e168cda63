#!/usr/bin/env bash
# The whole test suite (the README's second command). Fails on any failure.
#
#   bash scripts/test.sh
#
# Steps: install what the QEMU tests need (scripts/setup-qemu.sh, and
# scripts/setup-linux.sh for the EL2 hypervisor's Linux host; when that is
# impossible those tests are reported as SKIPPED, loudly, and everything
# else still runs), format, clippy, the no_std link check, packaging
# (`cargo package --workspace --no-verify`), then every crate's tests, each
# crate on its own (unit, integration, property, fuzz smoke, doc tests, and
# the bare-metal scenarios and the EL2 hypervisor booting Linux under QEMU
# through crates/qemu-tests), the loom model
# checks of io-pgtable (crates/io-pgtable/tests/loom.rs) and of the
# model's CMD_SYNC hand-off (crates/smmuv3-model/tests/loom.rs), and a short
# coverage-guided libFuzzer run of the model and the decoders.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }
started=$(date +%s)
# Disk is the resource a CI machine runs out of first: say how much the
# build takes and how much is left, so a shortage is plain in the log.
disk_report() {
    echo "disk ($1): target/ $(du -sh target 2>/dev/null | cut -f1), $(df -h --output=avail . | tail -n 1 | tr -d ' ') free"
}
# Incremental caches (about 3 GB for this workspace) only help a rebuild
# after a small edit; the suite builds once.
export CARGO_INCREMENTAL=0
disk_report "at the start"

step "setup: QEMU 10 and the aarch64 toolchain for the bare-metal tests"
qemu_status=ready
if ! bash scripts/setup-qemu.sh; then
    qemu_status="SKIPPED (setup-qemu.sh could not install QEMU or the toolchain)"
    cat >&2 <<'BANNER'
################################################################################
##  QEMU SETUP FAILED: the bare-metal QEMU tests will be SKIPPED (listed as
##  "ignored" by cargo test), NOT passed. Everything else still runs.
################################################################################
BANNER
fi

step "setup: Debian's arm64 Linux and a busybox initramfs for the EL2 hypervisor test"
linux_status=ready
if [[ "$qemu_status" != ready ]]; then
    linux_status="SKIPPED (no QEMU or toolchain, see above)"
elif ! bash scripts/setup-linux.sh; then
    linux_status="SKIPPED (setup-linux.sh could not fetch the kernel or busybox)"
    cat >&2 <<'BANNER'
################################################################################
##  LINUX SETUP FAILED: the EL2 hypervisor + Linux tests will be SKIPPED
##  (listed as "ignored" by cargo test), NOT passed. Everything else still runs.
################################################################################
BANNER
fi

step "format"
cargo fmt --all -- --check
# The crates outside the workspace (their own targets and toolchain) too.
for manifest in baremetal/Cargo.toml hypervisor/Cargo.toml crates/smmuv3-model/fuzz/Cargo.toml; do
    cargo fmt --manifest-path "$manifest" -- --check
done

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "no_std: io-pgtable, smmuv3, dma-mapping (with virtio-drivers), hyp-iommu and hyp-host link without std (checks/nostd)"
cargo rustc --quiet --manifest-path checks/nostd/Cargo.toml -- -C panic=abort
# smmuv3's pure layers (probe, commands, planner, STE/CD, the queue producer)
# without even `alloc`, as a hypervisor without a heap uses them.
cargo build --quiet -p smmuv3 --no-default-features --lib
echo "no_std link check: ok (smmuv3 without alloc builds too)"

step "packaging: every crate packages (metadata, versions on path dependencies)"
# --no-verify keeps this to seconds; it still refuses a path dependency
# without a version. A full verified build of the library crates works too
# (packaged together, so each verifies against the others):
#   cargo package -p sim-memory -p io-pgtable -p smmuv3 -p smmuv3-model \
#       -p smmuv3-hosted -p smmuv3-scenarios --allow-dirty
cargo package --quiet --workspace --no-verify --allow-dirty
echo "cargo package --workspace: ok"

step "tests: each crate on its own (QEMU scenarios included when available)"
# Each crate's tests run alone (`cargo test -p NAME`) rather than once for
# the workspace: `cargo test --workspace` unifies features across members,
# which hides a crate whose tests need a feature it does not enable itself,
# and running them alone is what a user of one crate does. Every test
# belongs to exactly one crate, so this runs the whole suite once.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
tests_rc=0
for manifest in crates/*/Cargo.toml; do
    name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -n 1)
    step "tests: cargo test -p $name"
    cargo test -p "$name" --no-fail-fast 2>&1 | tee -a "$log" || tests_rc=$?
done
disk_report "after the tests"

# loom rebuilds with `--cfg loom` (every atomic of io-pgtable's table code
# becomes loom's), so it has its own target directory; the `loom` profile
# optimizes only the code under test and the checker (fresh build and run:
# about 135 s of CPU, two minutes of wall time on two shared cores).
step "loom: model check of io-pgtable's install, retire/reclaim and link protocol"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p io-pgtable --test loom --profile loom 2>&1 | tee -a "$log" || tests_rc=$?
step "loom: model check of the model's CMD_SYNC hand-off (smmuv3-model)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p smmuv3-model --test loom --profile loom 2>&1 | tee -a "$log" || tests_rc=$?
# Totals over every test binary and doc-test run, for the closing line.
read -r passed failed ignored < <(awk '/^test result:/ {p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}' "$log")
if [ "$tests_rc" -ne 0 ]; then
    echo "tests: $passed passed, $failed failed, $ignored skipped"
    exit "$tests_rc"
fi

step "fuzz smoke: libFuzzer on the model and the decoders (20 s per target)"
fuzz_status=ran
if cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked; then
    bash scripts/fuzz.sh 20
else
    fuzz_status="SKIPPED (cargo-fuzz could not be installed)"
    cat >&2 <<'BANNER'
################################################################################
##  FUZZ SMOKE SKIPPED -- NOT RUN, NOT PASSED: cargo-fuzz could not be
##  installed. The proptest fuzz smoke tests above still ran.
################################################################################
BANNER
fi

step "summary"
disk_report "at the end"
echo "QEMU bare-metal scenarios: $qemu_status"
echo "EL2 hypervisor + Linux: $linux_status"
echo "libFuzzer smoke: $fuzz_status"
echo "total time: $(( $(date +%s) - started )) s"
# Ignored tests are the QEMU scenarios when QEMU could not be set up.
echo "tests: $passed passed, $failed failed, $ignored skipped"
