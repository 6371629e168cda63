#!/usr/bin/env bash
# Boots the EL2 hypervisor (hypervisor/) under QEMU, which boots Debian's stock
# arm64 Linux at EL1 as its host with the SMMUv3 frame trapped (issue 13).
#
#   scripts/el2-test.sh [--out DIR]
#
# Four runs of `-M virt,iommu=smmuv3,virtualization=on -cpu cortex-a57 -m 1G`:
#   1. the disk run: Linux's arm-smmu-v3 probes the SMMU through the trap path,
#      its init (scripts/linux/init) hashes the first 4 MiB of a random disk
#      image this script made, behind virtio-blk-pci,iommu_platform=on, and
#      writes a 4 KiB pattern at 4 MiB; the hypervisor prints its counters
#      when the host calls PSCI SYSTEM_OFF;
#      the hypervisor's virtual SMMU (hyp-iommu's Emulator) must have shadowed
#      the stream as nested, forwarded commands and refused nothing;
#   2. the bypass run (iommu.passthrough=1): the host's bypass STE must become
#      stage 2 on the shadow and the disk still work;
#   3. the donation run (el2.dma-may-stop, hypervisor option donate-after=0):
#      the hypervisor donates a page the disk's DMA uses; the device's accesses
#      to it must fault at stage 2 as the hypervisor's events, the host told
#      nothing;
#   4. the isolation run (el2.touch-hyp): init reads the hypervisor's memory
#      through /dev/mem; the stage 2 must stop it (exit status 5, HYP-REFUSED).
# Each check prints one line `[el2] SCENARIO <name>: PASS|FAIL <detail>`, as
# scripts/qemu-test.sh does; crates/qemu-tests turns each into a test.
# Console logs stay in DIR (default hypervisor/target/el2-results); a failing
# run's log tail is printed.
#
# Exit status: 0 all passed; 1 something failed; 77 SKIPPED (QEMU 10, the
# aarch64 toolchain, or the Linux images from scripts/setup-linux.sh missing;
# a loud banner says which).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HYP_DIR="$ROOT/hypervisor"
LINUX="${EL2_LINUX_DIR:-$ROOT/target/linux}"
OUT="$HYP_DIR/target/el2-results"
RUN_TIMEOUT=${EL2_RUN_TIMEOUT:-180}
EXIT_SKIP=77
IMAGE_ADDR=0x40200000
INITRD_ADDR=0x48000000

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "el2-test: unknown argument $1" >&2; exit 2 ;;
    esac
done

skip() {
    cat >&2 <<EOF2

################################################################################
##  EL2 HYPERVISOR + LINUX TEST SKIPPED -- NOT RUN, NOT PASSED
##  reason: $*
##  fix:    run scripts/setup-qemu.sh and scripts/setup-linux.sh (as root, Debian)
################################################################################

EOF2
    echo "EL2-TESTS: SKIPPED ($*)"
    exit $EXIT_SKIP
}

[[ -x /usr/bin/rustc && -x /usr/bin/cargo ]] || skip "Debian's second toolchain (rustc-web, cargo-web) is missing"
[[ -d /usr/lib/rustlib/src/rust/library/core ]] || skip "the Rust library source (rust-web-src) is missing"
command -v ld.lld >/dev/null 2>&1 || skip "ld.lld (lld) is missing"
command -v qemu-system-aarch64 >/dev/null 2>&1 || skip "qemu-system-aarch64 is missing"
qemu_major=$(qemu-system-aarch64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p' | head -n1)
[[ -n "$qemu_major" && "$qemu_major" -ge 10 ]] || skip "qemu-system-aarch64 is ${qemu_major:-unknown}, need >= 10"
[[ -f "$LINUX/READY" && -f "$LINUX/Image" && -f "$LINUX/initramfs.gz" ]] ||
    skip "no Linux Image/initramfs in $LINUX (scripts/setup-linux.sh fetches Debian's arm64 kernel)"

# The initramfs must carry the current init (setup-linux.sh repacks a cached
# one without a download).
init_sum=$(sha256sum "$ROOT/scripts/linux/init" | cut -d' ' -f1)
if ! grep -qx "init $init_sum" "$LINUX/READY"; then
    echo "el2-test: $LINUX/initramfs.gz predates scripts/linux/init, repacking" >&2
    bash "$ROOT/scripts/setup-linux.sh" --out "$LINUX" >&2 && grep -qx "init $init_sum" "$LINUX/READY" ||
        skip "the initramfs in $LINUX does not carry the current scripts/linux/init (scripts/setup-linux.sh failed)"
fi

mkdir -p "$OUT"
echo "el2-test: building the hypervisor" >&2
if ! (cd "$HYP_DIR" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u RUSTC_WRAPPER \
        -u CARGO_BUILD_TARGET -u CARGO_BUILD_RUSTFLAGS -u RUSTDOCFLAGS -u CARGO_MAKEFLAGS \
        CARGO_TARGET_DIR="$HYP_DIR/target" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
        /usr/bin/cargo build --release 2>"$OUT/build.log"); then
    cat "$OUT/build.log" >&2
    echo "EL2-TESTS: FAIL (hypervisor build failed)"
    exit 1
fi
ELF="$HYP_DIR/target/aarch64-unknown-none/release/smmuv3-hypervisor"

# The disk: 8 MiB of random bytes; the guest hashes [0, 4 MiB) and writes
# [4 MiB, 4 MiB + 4 KiB).
disk="$OUT/disk.img"
dd if=/dev/urandom of="$disk" bs=1M count=8 status=none
want_read=$(head -c $((4 << 20)) "$disk" | sha256sum | cut -d' ' -f1)
want_pattern=$(yes 'smmuv3-el2 write pattern' | head -c 4096 | sha256sum | cut -d' ' -f1)
initrd_size=$(stat -c %s "$LINUX/initramfs.gz")

# run LOG EXTRA_BOOTARG [HYP_OPTION]: boots the hypervisor and Linux; returns
# QEMU's status (the hypervisor's semihosting exit status; 124 on timeout).
run() {
    local log=$1 extra=$2 hypopt=${3:-}
    local args="arg=smmuv3-hypervisor,arg=image=$IMAGE_ADDR,arg=initrd=$INITRD_ADDR,arg=initrd-size=$initrd_size${hypopt:+,arg=$hypopt}"
    args="$args,arg=--,arg=console=ttyAMA0,arg=rdinit=/init,arg=quiet${extra:+,arg=$extra}"
    timeout --kill-after=5 "$RUN_TIMEOUT" qemu-system-aarch64 \
        -M virt,iommu=smmuv3,virtualization=on -cpu cortex-a57 -m 1G \
        -display none -monitor none -serial stdio -nic none \
        -semihosting-config "enable=on,target=native,$args" \
        -kernel "$ELF" \
        -device "loader,file=$LINUX/Image,addr=$IMAGE_ADDR,force-raw=on" \
        -device "loader,file=$LINUX/initramfs.gz,addr=$INITRD_ADDR,force-raw=on" \
        -drive "file=$disk,if=none,format=raw,id=d0" \
        -device virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on \
        </dev/null >"$log" 2>&1
}

failed=0
verdict() { # NAME OK DETAIL
    if [[ $2 -eq 1 ]]; then
        echo "[el2] SCENARIO $1: PASS $3"
    else
        echo "[el2] SCENARIO $1: FAIL $3"
        failed=1
    fi
}
line() { tr -d '\r' <"$1" | grep -m1 "^$2" || true; }

# --- run 1: probe, read, write, counters ---------------------------------------
log="$OUT/el2.log"
t0=$(date +%s%N)
run "$log" ""
status=$?
ms=$((($(date +%s%N) - t0) / 1000000))
kernel=$(cat "$LINUX/VERSION")
started=$(line "$log" "EL2-CHECK init-started")
done_line=$(line "$log" "EL2-CHECK done")
entered=$(line "$log" "HYP: entering Linux at EL1")
el1=$(line "$log" "EL2-DMESG .*CPU: All CPU(s) started at EL1")
ok=0; [[ -n "$entered" && -n "$started" && -n "$done_line" && -n "$el1" ]] && ok=1
verdict host-boot $ok "$kernel at EL1 under the hypervisor (${el1:+Linux: }${el1#*] }): init at ${started#*uptime=} s of Linux uptime, init done at ${done_line#*uptime=} s, QEMU run ${ms} ms wall (status $status)"

probe=$(line "$log" "EL2-DMESG .*arm-smmu-v3 .*ias")
group=$(line "$log" "EL2-CHECK iommu-group .*0000:00:")
ok=0; [[ -n "$probe" && -n "$group" ]] && ok=1
verdict smmu-probe $ok "${probe#EL2-DMESG } / ${group#EL2-CHECK }"

got_read=$(line "$log" "EL2-CHECK read-sha256 ")
got_read=${got_read#EL2-CHECK read-sha256 }
ok=0; [[ "$got_read" == "$want_read" ]] && ok=1
verdict virtio-blk-read $ok "guest sha256 of 4 MiB ${got_read:-none}, file's $want_read"

got_file=$(dd if="$disk" bs=4096 skip=1024 count=1 status=none | sha256sum | cut -d' ' -f1)
got_back=$(line "$log" "EL2-CHECK readback-sha256 ")
got_back=${got_back#EL2-CHECK readback-sha256 }
ok=0; [[ "$got_file" == "$want_pattern" && "$got_back" == "$want_pattern" ]] && ok=1
verdict virtio-blk-write $ok "pattern sha256 $want_pattern: in the file $got_file, read back by the guest ${got_back:-none}"

stats=$(line "$log" "HYP-STATS smmu ")
other=$(line "$log" "HYP-STATS smc=")
trapped=$(sed -n 's/.* trapped=\([0-9]*\) .*/\1/p' <<<"$stats")
refused=$(sed -n 's/.* refused=\([0-9]*\) .*/\1/p' <<<"$stats")
ok=0; [[ $status -eq 0 && -n "$trapped" && "$trapped" -gt 0 && "$refused" == 0 ]] && ok=1
verdict trap-counters $ok "exit status $status; ${stats#HYP-STATS smmu }; ${other#HYP-STATS }"

# vsmmu_ok LOG WANT_KIND: the virtual SMMU's counters of one run are clean
# (commands forwarded, STEs shadowed, nothing refused, no stage-2 fault of
# the hypervisor's) and the device stream was shadowed as WANT_KIND.
vsmmu_ok() {
    local vs streams
    vs=$(line "$1" "HYP-STATS vsmmu reads=")
    streams=$(line "$1" "HYP-STATS vsmmu streams-seen")
    n() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$vs"; }
    [[ -n "$vs" && "$(n ste_updates)" -gt 0 && "$(n forwarded)" -gt 0 && "$(n refused_commands)" == 0 &&
        "$(n refused_accesses)" == 0 && "$(n refused_pointers)" == 0 && "$(n bad_stes)" == 0 &&
        "$(n real_failures)" == 0 && "$(n hyp_events)" == 0 && "$streams" == *"=$2"* ]]
}
vs=$(line "$log" "HYP-STATS vsmmu reads=")
streams=$(line "$log" "HYP-STATS vsmmu streams-seen")
ok=0; vsmmu_ok "$log" Nested && ok=1
verdict vsmmu-counters $ok "${vs#HYP-STATS vsmmu }; ${streams#HYP-STATS vsmmu }"

# The shadow never maps the hypervisor's own memory, and maps host RAM
# to itself (sampled): what a host device can reach, bypass or nested.
audit=$(line "$log" "HYP-STATS shadow ")
hmapped=$(sed -n 's/.*hyp-pages-mapped=\([0-9]*\) .*/\1/p' <<<"$audit")
sampled=$(sed -n 's/.*host-ram-sampled=\([0-9]*\) .*/\1/p' <<<"$audit")
ident=$(sed -n 's/.*identity=\([0-9]*\).*/\1/p' <<<"$audit")
ok=0; [[ "$hmapped" == 0 && -n "$sampled" && "$sampled" -gt 0 && "$ident" == "$sampled" ]] && ok=1
verdict shadow-excludes-hypervisor $ok "${audit#HYP-STATS shadow }"
if [[ $failed -ne 0 ]]; then
    echo "---- [el2] console log of the failing run (last 60 lines; full log: $log) ----"
    tr -d '\r' <"$log" | tail -n 60
fi

# --- run 2: iommu.passthrough=1, the host's bypass confined by the shadow ----
plog="$OUT/el2-bypass.log"
run "$plog" "iommu.passthrough=1"
pstatus=$?
p_read=$(line "$plog" "EL2-CHECK read-sha256 ")
p_back=$(line "$plog" "EL2-CHECK readback-sha256 ")
p_type=$(line "$plog" "EL2-DMESG .*Default domain type")
pvs=$(line "$plog" "HYP-STATS vsmmu reads=")
pstreams=$(line "$plog" "HYP-STATS vsmmu streams-seen")
ok=0
[[ $pstatus -eq 0 && "${p_read#EL2-CHECK read-sha256 }" == "$want_read" &&
    "${p_back#EL2-CHECK readback-sha256 }" == "$want_pattern" && "$p_type" == *Passthrough* &&
    "$pstreams" != *"=Nested"* ]] && vsmmu_ok "$plog" Stage2 && ok=1
before=$failed
verdict bypass-is-stage2 $ok "exit status $pstatus; Linux: ${p_type#*] }; guest sha256 of 4 MiB ${p_read#EL2-CHECK read-sha256 } (file's $want_read), read back ${p_back#EL2-CHECK readback-sha256 }; ${pvs#HYP-STATS vsmmu }; ${pstreams#HYP-STATS vsmmu }"
if [[ $failed -ne $before ]]; then
    echo "---- [el2] console log of the bypass run (last 40 lines; full log: $plog) ----"
    tr -d '\r' <"$plog" | tail -n 40
fi

# --- run 3: the hypervisor donates a page the disk's DMA uses ---------------
# The test hook (donate-after=0) donates the highest host-RAM page the
# device's stage 1 maps as soon as there is one (a virtio ring page); init
# (el2.dma-may-stop) runs the disk work in the background and powers off.
dlog="$OUT/el2-donation.log"
run "$dlog" "el2.dma-may-stop" "donate-after=0"
dstatus=$?
donated=$(line "$dlog" "HYP: test hook: donated")
dline=$(line "$dlog" "HYP-STATS vsmmu donation ")
dvs=$(line "$dlog" "HYP-STATS vsmmu reads=")
dn() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$2"; }
in_page=$(dn stage2-faults-in-page "$dline")
kept=$(dn kept-hyp-events "$dline")
ok=0
[[ $dstatus -eq 0 && -n "$donated" && -n "$in_page" && "$in_page" -gt 0 && "$in_page" == "$kept" &&
    "$(dn hyp_events "$dvs")" -gt 0 && "$(dn host_events "$dvs")" == 0 &&
    "$(dn refused_accesses "$dvs")" == 0 && "$(dn refused_commands "$dvs")" == 0 ]] && ok=1
before=$failed
verdict donated-page-faults $ok "exit status $dstatus; ${donated#HYP: test hook: }; ${dline#HYP-STATS vsmmu }; $(sed -n 's/.*\( host_events=[0-9]*\).*\( hyp_events=[0-9]*\).*/\1\2/p' <<<"$dvs")"
if [[ $failed -ne $before ]]; then
    echo "---- [el2] console log of the donation run (last 40 lines; full log: $dlog) ----"
    tr -d '\r' <"$dlog" | tail -n 40
fi

# --- run 4: the host touches the hypervisor's memory -------------------------
ilog="$OUT/el2-isolation.log"
run "$ilog" "el2.touch-hyp"
istatus=$?
refusal=$(line "$ilog" "HYP-REFUSED ")
returned=$(line "$ilog" "EL2-CHECK touch-returned")
touched=$(line "$ilog" "EL2-CHECK touching")
ok=0
[[ $istatus -eq 5 && -n "$touched" && -z "$returned" && "$refusal" == *"IPA 0x7f000000 is outside the trapped frame"* ]] && ok=1
before=$failed
verdict hyp-memory-unreachable $ok "exit status $istatus (want 5); ${refusal:-no refusal printed}"
if [[ $failed -ne $before ]]; then
    echo "---- [el2] console log of the isolation run (last 40 lines; full log: $ilog) ----"
    tr -d '\r' <"$ilog" | tail -n 40
fi

if [[ $failed -eq 0 ]]; then
    echo "EL2-TESTS: PASS"
else
    echo "EL2-TESTS: FAIL"
fi
exit $failed
