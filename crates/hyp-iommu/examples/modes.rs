//! Block mode against leaf mode for a 4 GiB host: shadow table memory and
//! the model's TLB miss rate for random host DMA, at build and after
//! 10,000 random single-page donations.
//!
//! `cargo run --release -p hyp-iommu --example modes -- [GiB] [donations] [tlb entries]`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{EXTRA_BASE, Fixture, Setup};
use smmuv3_model::DmaRequest;

const P: u64 = 4096;
const SID: u32 = 0x10;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Returns the TLB miss rate of `n` random translations of host pages.
fn miss_rate(fx: &Fixture, rng: &mut Rng, ram: u64, n: u64) -> f64 {
    let m = &fx.models[0];
    m.reset_stats();
    let mut done = 0;
    while done < n {
        let pa = EXTRA_BASE + (rng.next() % (ram / P)) * P;
        if fx.hyp.owner(pa) != Some(hyp_iommu::Owner::Host) {
            continue;
        }
        m.translate(&DmaRequest::read(SID, pa, 8))
            .expect("host page reachable");
        done += 1;
    }
    let s = m.stats();
    s.tlb_misses as f64 / (s.tlb_hits + s.tlb_misses) as f64
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let gib = args.first().copied().unwrap_or(4);
    let donations = args.get(1).copied().unwrap_or(10_000);
    let tlb = args.get(2).copied().unwrap_or(4096) as usize;
    let ram = gib << 30;
    println!(
        "host RAM {gib} GiB, {donations} random 4K donations, model TLB {tlb} entries, 200000 random host DMAs per sample"
    );
    println!(
        "| mode | tables at build | table bytes at build | miss rate at build | tables after | table bytes after | miss rate after | build ms | donations ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for force_leaf in [false, true] {
        let t0 = std::time::Instant::now();
        let mut fx = Fixture::new(Setup {
            host_ram: 2 << 20,
            extra_ram: ram,
            sim_size: 64 << 20,
            tlb_capacity: tlb,
            force_leaf,
            ..Setup::default()
        });
        let build = t0.elapsed();
        fx.hyp.attach_host_stream(0, SID).unwrap();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let s0 = fx.hyp.stats();
        let m0 = miss_rate(&fx, &mut rng, ram, 200_000);
        let t1 = std::time::Instant::now();
        let mut n = 0;
        while n < donations {
            let pa = EXTRA_BASE + (rng.next() % (ram / P)) * P;
            if fx.hyp.donate_to_guest(pa, P, 1).is_ok() {
                n += 1;
            }
        }
        let don = t1.elapsed();
        let s1 = fx.hyp.stats();
        let m1 = miss_rate(&fx, &mut rng, ram, 200_000);
        println!(
            "| {:?} | {} | {} | {:.4} | {} | {} | {:.4} | {} | {} |",
            fx.hyp.mode(),
            s0.tables,
            s0.table_bytes,
            m0,
            s1.tables,
            s1.table_bytes,
            m1,
            build.as_millis(),
            don.as_millis()
        );
    }
}
