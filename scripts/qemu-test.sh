#!/usr/bin/env bash
# Runs the bare-metal SMMUv3 scenarios under QEMU (issue 5).
#
#   scripts/qemu-test.sh [--out DIR] [--machine NAME]...
#
# Builds baremetal/ with Debian's second toolchain (build-std, target dir cached
# at baremetal/target), then boots it once per machine: `virt` (stage 1 + 2) and
# `virt-9.1` (stage 1 only), both with iommu=smmuv3, an edu PCI device and two
# virtio-blk-pci disks (iommu_platform=on, disable-legacy=on) with random
# content, some devices behind pcie-root-ports (see `devices`). The kernel
# prints one line per scenario; this script prefixes each with the machine:
#
#   [virt] SCENARIO stage1-dma: PASS <detail>
#
# After each run the script checks the disk images (scenario virtio-blk-image):
# the checksums the kernel printed are those of the original images, disk A
# holds the kernel's text pattern at sectors 1024..1039 and is otherwise
# unchanged, disk B is unchanged.
#
# On any failure the failing machine is booted again with QEMU's SMMU trace
# (-trace 'smmuv3_*' ...) and the trace of each failing scenario is printed.
# Full logs stay in DIR (default baremetal/target/qemu-results).
#
# Exit status: 0 all passed; 1 something failed; 77 SKIPPED because QEMU 10 or
# the aarch64 toolchain is missing (a loud banner says so; scripts/setup-qemu.sh
# installs them). 77 is the automake convention for "skipped".
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KERNEL_DIR="$ROOT/baremetal"
OUT="$KERNEL_DIR/target/qemu-results"
MACHINES=()
RUN_TIMEOUT=${QEMU_RUN_TIMEOUT:-60}
EXIT_SKIP=77

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --machine) MACHINES+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "qemu-test: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ ${#MACHINES[@]} -gt 0 ]] || MACHINES=(virt virt-9.1)

skip() {
    cat >&2 <<EOF

################################################################################
##  QEMU SMMUv3 TESTS SKIPPED -- NOT RUN, NOT PASSED
##  reason: $*
##  fix:    run scripts/setup-qemu.sh (as root, Debian bookworm)
################################################################################

EOF
    echo "QEMU-TESTS: SKIPPED ($*)"
    exit $EXIT_SKIP
}

# --- prerequisites ------------------------------------------------------------
[[ -x /usr/bin/rustc && -x /usr/bin/cargo ]] || skip "Debian's second toolchain (/usr/bin/rustc, /usr/bin/cargo: rustc-web, cargo-web) is missing"
[[ -d /usr/lib/rustlib/src/rust/library/core ]] || skip "the Rust library source for build-std (rust-web-src) is missing"
command -v ld.lld >/dev/null 2>&1 || skip "ld.lld (lld) is missing"
command -v qemu-system-aarch64 >/dev/null 2>&1 || skip "qemu-system-aarch64 is missing"
qemu_major=$(qemu-system-aarch64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p' | head -n1)
[[ -n "$qemu_major" && "$qemu_major" -ge 10 ]] || skip "qemu-system-aarch64 is version ${qemu_major:-unknown}, need >= 10 (bookworm-backports)"

mkdir -p "$OUT"
# Traces are only written for failing runs: never show an old one.
rm -f "$OUT"/*.trace.log

# --- build --------------------------------------------------------------------
echo "qemu-test: building the test kernel (first build of core+alloc takes ~45 s)" >&2
# Run from inside `cargo test` the outer cargo's variables must not leak in.
if ! (cd "$KERNEL_DIR" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u RUSTC_WRAPPER \
        -u CARGO_BUILD_TARGET -u CARGO_BUILD_RUSTFLAGS -u RUSTDOCFLAGS -u CARGO_MAKEFLAGS \
        CARGO_TARGET_DIR="$KERNEL_DIR/target" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
        /usr/bin/cargo build --release 2>"$OUT/build.log"); then
    cat "$OUT/build.log" >&2
    echo "QEMU-TESTS: FAIL (kernel build failed)"
    exit 1
fi
ELF="$KERNEL_DIR/target/aarch64-unknown-none/release/smmuv3-baremetal"

# --- run ----------------------------------------------------------------------
# run MACHINE LOG [extra qemu args...]: boots the kernel, returns QEMU's status
# (124 on timeout). Serial output and QEMU's own diagnostics share LOG, so trace
# lines sit between the scenario markers that produced them.
# devices MACHINE: the PCI devices of a machine's runs. Disk A (serial
# smmu-disk-a, 1 MiB) is always enumerated before disk B (smmu-disk-b,
# 256 KiB). virt: edu on bus 0, disk A behind a root port (stream 0x100),
# disk B on bus 0. virt-9.1: every shared scenario's edu behind a root port
# (stream 0x100), disk A on bus 0, disk B behind a second root port (0x200).
devices() {
    local a="$OUT/$1.disk-a.img" b="$OUT/$1.disk-b.img"
    local blk="virtio-blk-pci,iommu_platform=on,disable-legacy=on"
    local drives=(-drive "if=none,id=da,format=raw,file=$a" -drive "if=none,id=db,format=raw,file=$b")
    case $1 in
        virt-9.1) echo "${drives[@]}" -device pcie-root-port,id=rp0,chassis=1,slot=1 \
            -device edu,dma_mask=0xffffffffffffffff,bus=rp0 \
            -device "$blk,drive=da,serial=smmu-disk-a" \
            -device pcie-root-port,id=rp1,chassis=2,slot=2 \
            -device "$blk,drive=db,serial=smmu-disk-b,bus=rp1" ;;
        *) echo "${drives[@]}" -device edu,dma_mask=0xffffffffffffffff \
            -device pcie-root-port,id=rp0,chassis=1,slot=1 \
            -device "$blk,drive=da,serial=smmu-disk-a,bus=rp0" \
            -device "$blk,drive=db,serial=smmu-disk-b" ;;
    esac
}

# make_disks MACHINE: fresh random images, and copies to compare against.
make_disks() {
    head -c $((1024 * 1024)) /dev/urandom >"$OUT/$1.disk-a.img"
    head -c $((256 * 1024)) /dev/urandom >"$OUT/$1.disk-b.img"
    cp "$OUT/$1.disk-a.img" "$OUT/$1.disk-a.orig"
    cp "$OUT/$1.disk-b.img" "$OUT/$1.disk-b.orig"
}

run() {
    local machine=$1 log=$2
    shift 2
    # Paths without spaces (OUT is ours), so word splitting is safe here.
    # shellcheck disable=SC2046
    timeout --kill-after=5 "$RUN_TIMEOUT" qemu-system-aarch64 \
        -M "$machine,iommu=smmuv3" -cpu cortex-a57 -m 1G \
        -display none -monitor none -serial stdio -nic none \
        -semihosting-config "enable=on,target=native,arg=smmuv3-baremetal,arg=machine=$machine${KERNEL_ARG:+,arg=$KERNEL_ARG}" \
        $(devices "$machine") \
        -kernel "$ELF" "$@" </dev/null >"$log" 2>&1
}

# pattern_of SECTOR COUNT: the text the kernel writes (baremetal/src/disk.rs):
# each sector 16 lines of 32 bytes naming it.
pattern_of() {
    local s k
    for ((s = $1; s < $1 + $2; s++)); do
        for ((k = 0; k < 16; k++)); do printf 'dma-mapping sector %08d ok.\n' "$s"; done
    done
}

# image_check MACHINE LOG: the host side of the virtio-blk scenarios, printed
# as scenario virtio-blk-image.
image_check() {
    local m=$1 log=$2 a="$OUT/$1.disk-a" b="$OUT/$1.disk-b" ka kb ha hb
    ka=$(tr -d '\r' <"$log" | sed -n 's/^SCENARIO virtio-blk-read: PASS cksum=\([0-9]* [0-9]*\) .*/\1/p')
    kb=$(tr -d '\r' <"$log" | sed -n 's/^SCENARIO virtio-blk-two-domains: PASS cksum=\([0-9]* [0-9]*\) .*/\1/p')
    ha=$(cksum <"$a.orig"); hb=$(cksum <"$b.orig")
    local why=()
    [[ "$ka" == "$ha" ]] || why+=("disk A: kernel read cksum '${ka:-none}', image has '$ha'")
    [[ "$kb" == "$hb" ]] || why+=("disk B: kernel read cksum '${kb:-none}', image has '$hb'")
    cmp -s <(pattern_of 1024 16) <(tail -c +$((1024 * 512 + 1)) "$a.img" | head -c $((16 * 512))) \
        || why+=("disk A sectors 1024..1039 do not hold the kernel's pattern")
    cmp -s <(head -c $((1024 * 512)) "$a.img") <(head -c $((1024 * 512)) "$a.orig") \
        && cmp -s <(tail -c +$((1040 * 512 + 1)) "$a.img") <(tail -c +$((1040 * 512 + 1)) "$a.orig") \
        || why+=("disk A changed outside sectors 1024..1039")
    cmp -s "$b.img" "$b.orig" || why+=("disk B changed")
    if [[ ${#why[@]} -eq 0 ]]; then
        echo "[$m] SCENARIO virtio-blk-image: PASS kernel cksums equal the images' (A $ha, B $hb); A holds the pattern at sectors 1024..1039 and is unchanged elsewhere; B unchanged"
        return 0
    fi
    local IFS=';'
    echo "[$m] SCENARIO virtio-blk-image: FAIL ${why[*]}"
    return 1
}

# trace_of LOG NAME: the lines a scenario produced, from its begin marker to its
# result line (or to the end of the log when it never finished).
trace_of() {
    awk -v name="$2" '
        { sub(/\r$/, "") }
        $0 == "SCENARIO-BEGIN " name { on = 1 }
        on { print }
        on && index($0, "SCENARIO " name ":") == 1 { exit }
    ' "$1" | tr -d '\r'
}

# exception_check MACHINE: boots the kernel with selftest=exception, which
# reads an unmapped address; the vectors must report ESR/ELR/FAR and the run
# must end with the exception status (3). Printed as one more scenario line.
exception_check() {
    local machine=$1 elog="$OUT/$1.exception.log" status line
    KERNEL_ARG=selftest=exception run "$machine" "$elog"
    status=$?
    line=$(tr -d '\r' <"$elog" | grep -m1 '^EXCEPTION ' || true)
    if [[ $status -eq 3 && "$line" == "EXCEPTION sync (EL1h): ESR="*"FAR=0x0000010000000000"* ]]; then
        echo "[$machine] SCENARIO exception-vectors: PASS ${line#EXCEPTION }"
        return 0
    fi
    echo "[$machine] SCENARIO exception-vectors: FAIL exit status $status, want 3; exception line: ${line:-none}"
    tr -d '\r' <"$elog" | tail -n 20
    return 1
}

overall=0
for machine in "${MACHINES[@]}"; do
    make_disks "$machine"
    exception_check "$machine" || overall=1
    log="$OUT/$machine.log"
    start=$(date +%s%N)
    run "$machine" "$log"
    status=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    secs="$((ms / 1000)).$(((ms % 1000) / 100))"
    tr -d '\r' <"$log" | sed -n 's/^\(SCENARIO [^ ]*: .*\)$/['"$machine"'] \1/p'
    failed=$(tr -d '\r' <"$log" | sed -n 's/^SCENARIO \([^ ]*\): FAIL.*$/\1/p')
    image_ok=1
    image_check "$machine" "$log" || image_ok=0
    if [[ $status -eq 0 && -z "$failed" && $image_ok -eq 1 ]] && grep -q '^RESULT: PASS' <(tr -d '\r' <"$log"); then
        echo "[$machine] RUN: PASS (${secs} s)"
        continue
    fi
    overall=1
    case $status in
        124|137) why="timed out after ${RUN_TIMEOUT} s" ;;
        *) why="QEMU exit status $status" ;;
    esac
    echo "[$machine] RUN: FAIL ($why, ${secs} s)"
    echo "---- [$machine] kernel output (last 40 lines) ----"
    tr -d '\r' <"$log" | tail -n 40
    if [[ -z "$failed" ]]; then
        # The run died before reporting: the last scenario begun is the culprit.
        failed=$(tr -d '\r' <"$log" | sed -n 's/^SCENARIO-BEGIN \(.*\)$/\1/p' | tail -n1)
    fi
    tlog="$OUT/$machine.trace.log"
    # Tracing slows QEMU down: give the traced run more time.
    RUN_TIMEOUT=$((RUN_TIMEOUT * 3)) run "$machine" "$tlog" -trace 'smmuv3_*' -trace smmu_ptw_level -d guest_errors
    for name in $failed; do
        echo "---- [$machine] QEMU SMMU trace of failing scenario $name ----"
        trace_of "$tlog" "$name" | tail -n 400
    done
    [[ -n "$failed" ]] || { echo "---- [$machine] trace (last 200 lines) ----"; tr -d '\r' <"$tlog" | tail -n 200; }
    echo "---- full trace: $tlog ----"
done

if [[ $overall -eq 0 ]]; then
    echo "QEMU-TESTS: PASS"
else
    echo "QEMU-TESTS: FAIL"
fi
exit $overall
