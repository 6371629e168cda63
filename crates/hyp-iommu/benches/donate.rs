//! Donation cost on the model (one SMMU, coherent): a 4K page including
//! its invalidation and CMD_SYNCs, in block mode (first page of a fresh
//! 2 MiB block: the block is split) and leaf mode; a 1000-page batch; and
//! building the shadow for a 64 GiB memory map.
//!
//! `cargo bench -p hyp-iommu --bench donate`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{EXTRA_BASE, Fixture, Parts, Setup};
use criterion::{Criterion, criterion_group, criterion_main};

const P: u64 = 4096;
const SID: u32 = 0x10;

fn fixture(extra: u64, force_leaf: bool) -> Fixture {
    let mut fx = Fixture::new(Setup {
        host_ram: 2 << 20,
        extra_ram: extra,
        sim_size: 128 << 20,
        force_leaf,
        ..Setup::default()
    });
    fx.hyp.attach_host_stream(0, SID).unwrap();
    fx
}

/// Times `iters` donations of `pages` pages at `addr(i)`, rebuilding the
/// fixture with `make` (untimed) whenever `slots` donations used it up.
fn donations(
    iters: u64,
    make: impl Fn() -> Fixture,
    slots: u64,
    pages: u64,
    addr: impl Fn(u64) -> u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut fx = make();
    let mut used = 0;
    for _ in 0..iters {
        if used == slots {
            fx = make();
            used = 0;
        }
        let a = addr(used);
        let t = Instant::now();
        fx.hyp.donate_to_guest(a, pages * P, 1).unwrap();
        total += t.elapsed();
        used += 1;
    }
    total
}

/// 1 GiB of extra RAM with every 2 MiB block already split (its last page
/// donated), or in leaf mode.
fn presplit(leaf: bool) -> Fixture {
    let mut fx = fixture(1 << 30, leaf);
    for b in 0..512 {
        fx.hyp
            .donate_to_guest(EXTRA_BASE + (b << 21) + 511 * P, P, 2)
            .unwrap();
    }
    fx
}

/// Page `i` of [`presplit`]'s free pages: block `i % 512`, so that
/// consecutive donations touch different tables.
fn spread(i: u64) -> u64 {
    EXTRA_BASE + ((i % 512) << 21) + ((i / 512) % 511) * P
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("donate_4k");
    g.measurement_time(Duration::from_secs(4));
    // 8 GiB: 4096 fresh 2 MiB blocks, each split by its first donation.
    let blocks = 4096;
    g.bench_function("block_mode_split", |b| {
        b.iter_custom(|n| {
            donations(
                n,
                || fixture(8 << 30, false),
                blocks,
                1,
                |i| EXTRA_BASE + (i << 21) + (i % 512) * P,
            )
        })
    });
    g.bench_function("block_mode_already_split", |b| {
        b.iter_custom(|n| donations(n, || presplit(false), 512 * 511, 1, spread))
    });
    g.bench_function("leaf_mode", |b| {
        b.iter_custom(|n| donations(n, || presplit(true), 512 * 511, 1, spread))
    });
    g.finish();

    let mut g = c.benchmark_group("donate_batch_1000");
    g.measurement_time(Duration::from_secs(4));
    for (name, leaf) in [("block_mode", false), ("leaf_mode", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                // 4 GiB: 1048 batches of 1000 pages at a 1 MiB-unaligned start.
                donations(
                    n,
                    || fixture(4 << 30, leaf),
                    1000,
                    1000,
                    |i| EXTRA_BASE + 0x5000 + i * 1000 * P,
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("shadow_build_64g");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let parts = Parts::new(&Setup {
        host_ram: 2 << 20,
        extra_ram: 64 << 30,
        sim_size: 512 << 20,
        ..Setup::default()
    });
    for (name, leaf) in [("block_mode", false), ("leaf_mode", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let t = Instant::now();
                    let hyp = parts.hyp(leaf);
                    total += t.elapsed();
                    drop(hyp);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
