#!/usr/bin/env bash
# Instructions per page-table operation, io-pgtable beside aarch64-paging,
# counted by callgrind (exact and repeatable, unlike time on a shared box).
#
#   bash scripts/callgrind.sh
#
# Each case runs crates/io-pgtable/examples/callgrind_ops.rs under
# `valgrind --tool=callgrind` with collection on only inside its `measured`
# function (one operation per iteration; setup and the undo step are not
# counted), and divides the instructions by the iterations. Both crates do
# equal work: they unmap to zero descriptors, which the example checks.
# io-pgtable runs coherent (no cache maintenance), like aarch64-paging.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null 2>&1 || {
    echo "callgrind.sh: valgrind is missing (apt-get install valgrind)" >&2
    exit 1
}
cargo build --quiet --release -p io-pgtable --example callgrind_ops
bin="${CARGO_TARGET_DIR:-target}/release/examples/callgrind_ops"

# Prints the instructions per operation of: who load op iterations.
per_op() {
    local out ir
    out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
        '--toggle-collect=callgrind_ops::measured*' "$bin" "$@" 2>&1) || {
        printf '%s\n' "$out" >&2
        exit 1
    }
    ir=$(sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' <<<"$out")
    [[ -n "$ir" ]] || { printf '%s\n' "$out" >&2; exit 1; }
    awk -v ir="$ir" -v n="$4" 'BEGIN { printf "%.0f", ir / n }'
}

printf '%-10s %-6s %14s %16s %8s\n' load op io-pgtable aarch64-paging ratio
# load, op, iterations (fewer for the big loads: callgrind runs ~50x slower).
for case in \
    "1x4K pair 2000" \
    "256x4K map 200" "256x4K unmap 200" "256x4K pair 200" \
    "256x2M map 200" "256x2M unmap 200" "256x2M pair 200" \
    "1G-as-4K map 3" "1G-as-4K unmap 3" "1G-as-4K pair 3"; do
    read -r load op iters <<<"$case"
    ours=$(per_op io-pgtable "$load" "$op" "$iters")
    theirs=$(per_op aarch64-paging "$load" "$op" "$iters")
    ratio=$(awk -v a="$theirs" -v b="$ours" 'BEGIN { printf "%.2f", a / b }')
    printf '%-10s %-6s %14s %16s %7sx\n' "$load" "$op" "$ours" "$theirs" "$ratio"
done
echo "(instructions per operation; ratio = aarch64-paging / io-pgtable)"
