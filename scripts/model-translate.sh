#!/usr/bin/env bash
# Cost per translation of the software SMMUv3 model, per case of
# crates/smmuv3-model/examples/translate_loop.rs, two ways:
#   - instructions (callgrind, (count of 2N - count of N) / N: setup
#     cancels; repeatable on a noisy machine);
#   - CPU time (perf stat task-clock / N) over ROUNDS runs, as min, first
#     quartile, median and third quartile: shared machines alternate
#     between quiet and busy phases, and one figure hides which one it was.
# Give a second binary (BASE, e.g. an older build of the same example) to
# interleave its runs with this tree's and compare in the same sitting:
# each round times both back to back, and the "base/this" line gives the
# median and range of the per-round ratios (a phase change between rounds
# then moves both sides of a ratio, not one side of a comparison of
# medians).
#
#   bash scripts/model-translate.sh [ROUNDS] [BASE]      # default 9 rounds
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-9}
base=${2:-}
cargo build --quiet --release -p smmuv3-model --example translate_loop
bin="${CARGO_TARGET_DIR:-target}/release/examples/translate_loop"
bins=("$bin")
[ -n "$base" ] && bins+=("$base")
have_valgrind=1
command -v valgrind >/dev/null || { have_valgrind=0; echo "model-translate: valgrind is missing: NO instruction counts (apt-get install valgrind)" >&2; }
have_perf=1
perf stat -e task-clock true >/dev/null 2>&1 || { have_perf=0; echo "model-translate: perf stat is not usable here: NO CPU times" >&2; }

icount() { # bin mode n
    local a b
    a=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$2" "$3" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    b=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$2" $(($3 * 2)) 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    echo $(((b - a) / $3))
}
ns() { # bin mode n
    perf stat -e task-clock -x, "$1" "$2" "$3" 2>&1 >/dev/null | awk -F, -v n="$3" '$3 == "task-clock" {printf "%.1f", $1 * 1e6 / n}'
}
quartiles() { # values...
    printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {printf "%s / %s / %s / %s", a[1], a[int(NR / 4) + 1], a[int((NR + 1) / 2)], a[int(3 * NR / 4) + 1]}'
}

paired() { # base values... -- this values...: per-round ratios base/this
    local -a b=() t=()
    while [ "$1" != -- ]; do b+=("$1"); shift; done
    shift
    t=("$@")
    for i in "${!t[@]}"; do echo "${b[$i]} ${t[$i]}"; done | awk '{print $1 / $2}' | sort -n |
        awk '{a[NR] = $1} END {printf "ratio median %.2f (min %.2f, max %.2f, %d rounds)", a[int((NR + 1) / 2)], a[1], a[NR], NR}'
}

printf '%-14s %-10s %12s   %s\n' case binary instr/op "ns/op min / q1 / median / q3 ($rounds rounds)"
for spec in hit:1000000:20000000 hit-opaque:1000000:20000000 hit64:200000:5000000 \
    walk:100000:1000000 walk-uncached:100000:1000000 miss:100000:1000000 nested:50000:500000 \
    lock:1000000:20000000 swap:1000000:20000000; do
    IFS=: read -r mode n_ic n_t <<<"$spec"
    declare -A times=()
    if [ "$have_perf" = 1 ]; then
        for _ in $(seq "$rounds"); do
            for b in "${bins[@]}"; do
                "$b" "$mode" 1 >/dev/null 2>&1 && times[$b]="${times[$b]:-} $(ns "$b" "$mode" "$n_t")"
            done
        done
    fi
    for b in "${bins[@]}"; do
        name=this; [ "$b" != "$bin" ] && name=base
        if ! "$b" "$mode" 1 >/dev/null 2>&1; then
            printf '%-14s %-10s %12s   %s\n' "$mode" "$name" - "(no such case in this binary)"
            continue
        fi
        ic=-; [ "$have_valgrind" = 1 ] && ic=$(icount "$b" "$mode" "$n_ic")
        t=-; [ "$have_perf" = 1 ] && t=$(quartiles ${times[$b]})
        printf '%-14s %-10s %12s   %s\n' "$mode" "$name" "$ic" "$t"
    done
    if [ -n "$base" ] && [ -n "${times[$base]:-}" ] && [ -n "${times[$bin]:-}" ]; then
        printf '%-14s %-10s %12s   %s\n' "$mode" base/this "" "$(paired ${times[$base]} -- ${times[$bin]})"
    fi
    unset times
done
