#!/usr/bin/env bash
# Installs what the bare-metal QEMU tests need, when it is missing:
#   - Debian's second Rust toolchain with its library source (rustc-web,
#     cargo-web, rust-web-src: /usr/bin/rustc, /usr/bin/cargo, build-std source),
#   - lld (ld.lld links the kernel),
#   - QEMU 10 (qemu-system-arm from the bookworm-backports suite; bookworm's own
#     7.2 has a stage-1-only SMMUv3 and is not enough).
#
# Idempotent: does nothing when everything is already there. Exits 0 when all is
# ready, non-zero with a message saying what is missing otherwise. Never writes a
# repository host name: the backports suite is added to the Suites: line of the
# existing deb822 source file.
set -euo pipefail

SOURCES=/etc/apt/sources.list.d/debian.sources
BACKPORTS=bookworm-backports
QEMU_MIN_MAJOR=10

say() { printf 'setup-qemu: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

qemu_major() {
    command -v qemu-system-aarch64 >/dev/null 2>&1 || { echo 0; return; }
    qemu-system-aarch64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p' | head -n1
}

have_toolchain() {
    [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -d /usr/lib/rustlib/src/rust/library/core ]] &&
        command -v ld.lld >/dev/null 2>&1
}

have_qemu() {
    local major
    major=$(qemu_major)
    [[ -n "$major" && "$major" -ge "$QEMU_MIN_MAJOR" ]]
}

if have_toolchain && have_qemu; then
    say "ready: $(/usr/bin/rustc --version), $(qemu-system-aarch64 --version | head -n1)"
    exit 0
fi

[[ "$(id -u)" -eq 0 ]] || die "packages are missing and this is not root; install rustc-web cargo-web rust-web-src lld and qemu-system-arm (>= $QEMU_MIN_MAJOR, from $BACKPORTS) by hand"
command -v apt-get >/dev/null 2>&1 || die "no apt-get: this script only knows Debian; install the toolchain and QEMU >= $QEMU_MIN_MAJOR by hand"

updated=0
apt_update_once() {
    if [[ $updated -eq 0 ]]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed (no network?)"
        updated=1
    fi
}

if ! have_qemu; then
    [[ -f "$SOURCES" ]] || die "$SOURCES not found; cannot enable $BACKPORTS for QEMU $QEMU_MIN_MAJOR"
    if ! grep -Eq "^Suites:.*\\b${BACKPORTS}\\b" "$SOURCES"; then
        say "adding $BACKPORTS to the Suites: line of $SOURCES"
        # Only the stanza whose Suites: line carries plain 'bookworm' gets the suite.
        sed -i -E "/^Suites:.*\\bbookworm( |\$)/ s/\$/ ${BACKPORTS}/" "$SOURCES"
        grep -Eq "^Suites:.*\\b${BACKPORTS}\\b" "$SOURCES" || die "could not add $BACKPORTS to $SOURCES"
    fi
fi

if ! have_toolchain; then
    apt_update_once
    say "installing rustc-web cargo-web rust-web-src lld"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        rustc-web cargo-web rust-web-src lld >&2 || die "installing the second Rust toolchain failed"
    if ! command -v ld.lld >/dev/null 2>&1; then
        # Debian's lld package installs versioned binaries; link the newest one.
        cand=$(ls /usr/bin/ld.lld-* 2>/dev/null | sort -V | tail -n1 || true)
        [[ -n "$cand" ]] || die "lld installed but no ld.lld found"
        ln -sf "$cand" /usr/local/bin/ld.lld
    fi
fi

if ! have_qemu; then
    apt_update_once
    say "installing qemu-system-arm from $BACKPORTS"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -t "$BACKPORTS" qemu-system-arm >&2 || die "installing qemu-system-arm from $BACKPORTS failed"
fi

have_toolchain || die "toolchain still incomplete after install"
have_qemu || die "qemu-system-aarch64 is $(qemu_major).x after install, need >= $QEMU_MIN_MAJOR"
say "ready: $(/usr/bin/rustc --version), $(qemu-system-aarch64 --version | head -n1)"
