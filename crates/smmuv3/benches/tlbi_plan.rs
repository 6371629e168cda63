//! Range TLB invalidation planning: commands per unmap of 1 MiB, 2 MiB and
//! 1 GiB, with and without RIL, against the minimum, and planning time.
//!
//! Run: `cargo bench -p smmuv3 --bench tlbi_plan`. The command counts are
//! printed once before the timings.

use criterion::{Criterion, criterion_group, criterion_main};
use smmuv3::tlbi::{TlbiPolicy, TlbiRequest, TlbiTarget, min_range_commands, plan};

struct Case {
    name: &'static str,
    size: u64,
    leaf_log2: u8,
}

const CASES: [Case; 5] = [
    Case {
        name: "1MiB of 4K pages",
        size: 1 << 20,
        leaf_log2: 12,
    },
    Case {
        name: "2MiB of 4K pages",
        size: 2 << 20,
        leaf_log2: 12,
    },
    Case {
        name: "2MiB block",
        size: 2 << 20,
        leaf_log2: 21,
    },
    Case {
        name: "1GiB of 2M blocks",
        size: 1 << 30,
        leaf_log2: 21,
    },
    Case {
        name: "1GiB of 4K pages",
        size: 1 << 30,
        leaf_log2: 12,
    },
];

fn req(c: &Case) -> TlbiRequest {
    TlbiRequest {
        target: TlbiTarget::Stage1 { vmid: 0, asid: 1 },
        iova: 0x40_0000_0000,
        size: c.size,
        granule_log2: 12,
        leaf_log2: Some(c.leaf_log2),
    }
}

fn bench(cr: &mut Criterion) {
    println!(
        "{:<20} {:>8} {:>10} {:>8}",
        "unmap", "RIL", "no RIL", "minimum"
    );
    for c in &CASES {
        let ril = plan(&req(c), &TlbiPolicy::new(true)).unwrap().count();
        let non = plan(&req(c), &TlbiPolicy::new(false)).unwrap().count();
        let min = min_range_commands(c.size >> 12);
        println!("{:<20} {ril:>8} {non:>10} {min:>8}", c.name);
    }
    let mut g = cr.benchmark_group("tlbi_plan");
    for c in &CASES {
        for (tag, ril) in [("ril", true), ("no_ril", false)] {
            let r = req(c);
            let p = TlbiPolicy::new(ril);
            g.bench_function(format!("{} {tag}", c.name), |b| {
                b.iter(|| plan(std::hint::black_box(&r), &p).unwrap().count())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
