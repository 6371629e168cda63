#!/usr/bin/env bash
# Instructions of trap-and-emulate (hyp-iommu's virtual SMMU) on the
# in-process model, counted by callgrind: per emulated register access, per
# forwarded host command, and a host map + DMA + unmap through the
# emulation beside the same driver on the bare SMMU. Only the `measured*`
# functions of crates/hyp-iommu/examples/emulation_cost.rs are counted.
#
#   bash scripts/emulation-cost.sh [N]     # N iterations per case (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
command -v valgrind >/dev/null || { echo "emulation-cost: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo build --quiet --release -p hyp-iommu --example emulation_cost
bin="${CARGO_TARGET_DIR:-target}/release/examples/emulation_cost"
count() { # case
    local total
    total=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
        --toggle-collect='emulation_cost::measured*' "$bin" "$1" "$n" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    echo $(( total / n ))
}
read_i=$(count read)
write_i=$(count write)
tlbi=$(count tlbi)
tlbi_bare=$(count tlbi-bare)
e2e=$(count e2e)
e2e_bare=$(count e2e-bare)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '%-58s %10s\n' "case" "instr/op"
printf '%-58s %10s\n' "emulated register read (CMDQ_CONS)" "$read_i"
printf '%-58s %10s\n' "emulated register write (IRQ_CTRL)" "$write_i"
printf '%-58s %10s\n' "host TLBI_NH_VA + CMD_SYNC, emulated" "$tlbi"
printf '%-58s %10s\n' "host TLBI_NH_VA + CMD_SYNC, bare SMMU" "$tlbi_bare"
printf '%-58s %10s\n' "host 4K map + DMA + unmap, emulated (nested)" "$e2e"
printf '%-58s %10s\n' "host 4K map + DMA + unmap, bare SMMU (stage 1)" "$e2e_bare"
echo "ratios (emulated / bare): command $(ratio "$tlbi" "$tlbi_bare")x, map+DMA+unmap $(ratio "$e2e" "$e2e_bare")x"
