//! Instruction counts and commands of donations, for callgrind:
//!
//! ```text
//! cargo build --release -p hyp-iommu --example cost
//! valgrind --tool=callgrind --toggle-collect='cost::measured' \
//!     target/release/examples/cost <case> [count]
//! ```
//!
//! `case`: `split` (first page of fresh 2 MiB blocks, block mode),
//! `block` (pages of blocks already split), `leaf`, `batch-block`,
//! `batch-leaf` (1000 pages a donation). Only `measured` is counted: one
//! donation including its invalidation and CMD_SYNCs on the model. Prints
//! the commands each donation sent, from the driver's counters.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{EXTRA_BASE, Fixture, Hyp, Setup};

const P: u64 = 4096;

#[inline(never)]
fn measured(hyp: &mut Hyp, addr: u64, len: u64) {
    hyp.donate_to_guest(addr, len, 1).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let case = args.first().map_or("split", String::as_str);
    let count: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let leaf = matches!(case, "leaf" | "batch-leaf");
    let mut fx = Fixture::new(Setup {
        host_ram: 2 << 20,
        extra_ram: 8 << 30,
        sim_size: 128 << 20,
        force_leaf: leaf,
        ..Setup::default()
    });
    fx.hyp.attach_host_stream(0, 0x10).unwrap();
    if matches!(case, "block" | "leaf") {
        for b in 0..count.min(4096) {
            fx.hyp
                .donate_to_guest(EXTRA_BASE + (b << 21) + 511 * P, P, 2)
                .unwrap();
        }
    }
    let (pages, addr): (u64, Box<dyn Fn(u64) -> u64>) = match case {
        "split" | "block" | "leaf" => (1, Box::new(|i| EXTRA_BASE + (i << 21) + (i % 511) * P)),
        _ => (1000, Box::new(|i| EXTRA_BASE + 0x5000 + i * 1000 * P)),
    };
    let smmu = fx.hyp.smmu(0).unwrap();
    let s0 = smmu.stats();
    for i in 0..count {
        measured(&mut fx.hyp, addr(i), pages * P);
    }
    let s1 = smmu.stats();
    let per = |a: u64, b: u64| (a - b) as f64 / count as f64;
    println!(
        "{case} ({:?}): {count} donations of {pages} page(s); per donation: {:.2} TLBI_S2_IPA, {:.2} TLBI_NH_ALL, {:.2} other TLBI, {:.2} CMD_SYNC",
        fx.hyp.mode(),
        per(s1.by_opcode[0x2a], s0.by_opcode[0x2a]),
        per(s1.by_opcode[0x10], s0.by_opcode[0x10]),
        per(
            s1.tlbi_commands() - s1.by_opcode[0x2a] - s1.by_opcode[0x10],
            s0.tlbi_commands() - s0.by_opcode[0x2a] - s0.by_opcode[0x10]
        ),
        per(s1.syncs, s0.syncs),
    );
}
