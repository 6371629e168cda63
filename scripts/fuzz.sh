#!/usr/bin/env bash
# Coverage-guided fuzzing of the SMMUv3 model and the decoders
# (crates/smmuv3-model/fuzz). Exits non-zero when a target crashes, panics,
# hangs (-timeout) or runs out of memory; the input that did it is in
# crates/smmuv3-model/fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh            # every target for 60 s
#   bash scripts/fuzz.sh 300        # every target for 300 s
#   bash scripts/fuzz.sh 60 model_ops
#
# libFuzzer needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them. Installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(model_ops decoders hostile_host)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target/fuzz}"
cd crates/smmuv3-model/fuzz

failed=()
for t in "${targets[@]}"; do
    printf '\n==== fuzz %s for %ss ====\n' "$t" "$seconds"
    mkdir -p "corpus/$t"
    # -timeout: one input taking over 10 s is a hang; -rss_limit_mb bounds
    # memory; the corpus persists between runs so coverage accumulates.
    extra=()
    # Ten bytes make one hostile operation: start long instead of letting
    # libFuzzer grow inputs from 4 bytes.
    [ "$t" = hostile_host ] && extra=(-len_control=0 -max_len=1200)
    if ! cargo fuzz run "$t" "corpus/$t" -- "${extra[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1; then
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in crates/smmuv3-model/fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: ok (${targets[*]}, ${seconds}s each)"
