#!/usr/bin/env bash
# Instruction counts per operation of the hot paths, with callgrind (repeatable
# on noisy machines, unlike times). Only the `measured_*` functions of the
# icount examples are counted (--toggle-collect), so setup is excluded.
#
#   bash scripts/icount.sh [N]        # N iterations per case (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
command -v valgrind >/dev/null || { echo "icount: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo build --quiet --release -p io-pgtable --features std --example icount
cp target/release/examples/icount target/release/examples/icount-pgtable
cargo build --quiet --release -p smmuv3-hosted --example icount
cp target/release/examples/icount target/release/examples/icount-e2e
count() { # binary case [mode]
    local total
    total=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        --toggle-collect='icount::measured_*' "$@" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    echo $(( total / n ))
}
printf '%-48s %8s\n' "case" "instr/op"
printf '%-48s %8s\n' "io-pgtable: 4K map + unmap pair (HostEnv)" "$(count target/release/examples/icount-pgtable map_unmap_4k "$n")"
printf '%-48s %8s\n' "io-pgtable: unmap of 256 x 2M (HostEnv)" "$(count target/release/examples/icount-pgtable unmap_256x2m "$n")"
printf '%-48s %8s\n' "e2e model: 4K map+unmap+TLBI+SYNC, coherent" "$(count target/release/examples/icount-e2e map_unmap_4k "$n" coherent)"
printf '%-48s %8s\n' "e2e model: 4K map+unmap+TLBI+SYNC, non-coherent" "$(count target/release/examples/icount-e2e map_unmap_4k "$n" noncoherent)"
