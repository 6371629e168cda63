#!/usr/bin/env bash
# Fetches and builds what the EL2 hypervisor test boots as its host (issue 13):
#   - Debian's stock arm64 kernel: the versioned package the metapackage
#     linux-image-arm64:arm64 of the backports suite depends on (resolved
#     here, never hard-coded), fetched with multiarch `apt-get download`;
#     its boot/vmlinuz-* is an uncompressed arm64 Image,
#   - virtio_blk.ko from the same package (the .ko.xz decompressed),
#   - busybox-static:arm64, and from it a busybox initramfs (cpio newc + gzip)
#     whose init is scripts/linux/init.
#
#   scripts/setup-linux.sh [--out DIR] [--fresh]
#
# Output in DIR (default target/linux): Image, initramfs.gz, VERSION (the
# kernel package), initramfs-root/ (the unpacked initramfs). A finished DIR
# (its READY stamp) is reused unless --fresh is given; when only
# scripts/linux/init changed the initramfs is repacked without a download.
# CI starts from an empty target/ and so always fetches from scratch. Exit status 0 when ready, 1 with a message
# saying what is missing (no apt, not root, no network).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/target/linux"
FRESH=0
SOURCES=/etc/apt/sources.list.d/debian.sources
BACKPORTS=bookworm-backports
META=linux-image-arm64

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --fresh) FRESH=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "setup-linux: unknown argument $1" >&2; exit 2 ;;
    esac
done

say() { printf 'setup-linux: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

INIT="$ROOT/scripts/linux/init"
init_sum=$(sha256sum "$INIT" | cut -d' ' -f1)
pack() {
    cp "$INIT" "$1/init"
    chmod 755 "$1/init"
    (cd "$1" && find . | cpio -o -H newc --quiet | gzip -9) >"$OUT/initramfs.gz"
    printf 'kernel %s\ninit %s\n' "$(cat "$OUT/VERSION")" "$init_sum" >"$OUT/READY"
}
if [[ $FRESH -eq 0 && -f "$OUT/READY" && -f "$OUT/Image" && -f "$OUT/initramfs.gz" ]]; then
    if grep -qx "init $init_sum" "$OUT/READY"; then
        say "ready (cached): $(cat "$OUT/VERSION") in $OUT"
        exit 0
    fi
    if [[ -x "$OUT/initramfs-root/bin/busybox" ]] && command -v cpio >/dev/null 2>&1; then
        pack "$OUT/initramfs-root"
        say "ready (cached kernel, initramfs repacked for the new init): $(cat "$OUT/VERSION")"
        exit 0
    fi
fi

command -v apt-get >/dev/null 2>&1 || die "no apt-get: the host kernel comes from Debian packages"
command -v dpkg-deb >/dev/null 2>&1 || die "no dpkg-deb"
[[ "$(id -u)" -eq 0 ]] || die "not root: cannot add the arm64 architecture or run apt-get update"

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
fi
if [[ -f "$SOURCES" ]] && ! grep -Eq "^Suites:.*\\b${BACKPORTS}\\b" "$SOURCES"; then
    say "adding $BACKPORTS to the Suites: line of $SOURCES"
    sed -i -E "/^Suites:.*\\bbookworm( |\$)/ s/\$/ ${BACKPORTS}/" "$SOURCES"
fi
say "apt-get update"
DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed (no network?)"
for tool in cpio xz; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        pkg=$tool; [[ $tool == xz ]] && pkg=xz-utils
        say "installing $pkg"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >&2 ||
            die "installing $pkg failed"
    fi
done

# The metapackage's stanza from the backports suite (its version carries
# "bpo"), else the highest version: its first linux-image-<version> dependency.
kernel_pkg=$(apt-cache show "$META:arm64" | awk '
    /^Version: / { ver = $2 }
    /^Depends: / {
        n = split(substr($0, 10), deps, /, */)
        for (i = 1; i <= n; i++) {
            split(deps[i], w, / /)
            if (w[1] ~ /^linux-image-[0-9]/) { print ver, w[1]; break }
        }
    }' | sort -V | awk '
    { all = $2 } $1 ~ /bpo/ { bpo = $2 }
    END { print (bpo != "" ? bpo : all) }')
[[ -n "$kernel_pkg" ]] || die "could not resolve the kernel package from $META:arm64's Depends"
kernel_pkg=${kernel_pkg%%:*}
say "kernel package: $kernel_pkg (from $META:arm64)"

scratch="$OUT/scratch"
rm -rf "$OUT"
mkdir -p "$scratch/debs" "$scratch/x"
chmod 777 "$scratch/debs" # apt-get download drops to the _apt user
(cd "$scratch/debs" && apt-get download -q "$kernel_pkg:arm64" busybox-static:arm64 >&2) ||
    die "apt-get download of $kernel_pkg:arm64 busybox-static:arm64 failed"
for deb in "$scratch"/debs/*.deb; do
    dpkg-deb -x "$deb" "$scratch/x"
done

image=$(ls "$scratch"/x/boot/vmlinuz-* 2>/dev/null | head -n1)
[[ -n "$image" ]] || die "no boot/vmlinuz-* in $kernel_pkg"
# The arm64 Image header: magic "ARM\x64" at byte 56.
[[ "$(dd if="$image" bs=1 skip=56 count=4 2>/dev/null)" == $'ARM\x64' ]] ||
    die "$image is not an uncompressed arm64 Image"
cp "$image" "$OUT/Image"

ko=$(find "$scratch/x/lib/modules" -name 'virtio_blk.ko*' | head -n1)
[[ -n "$ko" ]] || die "no virtio_blk module in $kernel_pkg"
root="$OUT/initramfs-root"
mkdir -p "$root/bin" "$root/lib" "$root/proc" "$root/sys" "$root/dev"
case "$ko" in
    *.xz) xz -dc "$ko" >"$root/lib/virtio_blk.ko" ;;
    *) cp "$ko" "$root/lib/virtio_blk.ko" ;;
esac
[[ -x "$scratch/x/bin/busybox" ]] || die "no bin/busybox in busybox-static"
cp "$scratch/x/bin/busybox" "$root/bin/busybox"
echo "$kernel_pkg" >"$OUT/VERSION"
pack "$root"
rm -rf "$scratch"
say "ready: $kernel_pkg, Image $(stat -c %s "$OUT/Image") bytes, initramfs $(stat -c %s "$OUT/initramfs.gz") bytes in $OUT"
