#!/usr/bin/env bash
# Instructions per operation of the driver's hot path, end to end on the
# in-process model, with callgrind (repeatable on noisy machines, unlike
# times). Only the `measured_*` functions of crates/smmuv3-hosted/examples/
# icount.rs are counted (--toggle-collect), so setup and DMA are excluded.
# The page-table operations alone, beside aarch64-paging: scripts/callgrind.sh.
#
#   bash scripts/icount.sh [N]        # N iterations per case (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
command -v valgrind >/dev/null || { echo "icount: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo build --quiet --release -p smmuv3-hosted --example icount
bin="${CARGO_TARGET_DIR:-target}/release/examples/icount"
count() { # case mode
    local total
    total=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        --toggle-collect='icount::measured_*' "$bin" "$1" "$n" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    echo $(( total / n ))
}
printf '%-52s %8s\n' "case" "instr/op"
printf '%-52s %8s\n' "4K map + unmap + range TLBI + CMD_SYNC, coherent" "$(count map_unmap_4k coherent)"
printf '%-52s %8s\n' "4K map + unmap + range TLBI + CMD_SYNC, non-coherent" "$(count map_unmap_4k noncoherent)"
