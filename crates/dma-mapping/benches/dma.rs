//! DMA API costs: 4K map+unmap on every path, map_sg 64 x 4K, and IOVA
//! alloc+free on the magazine and tree paths beside rust-vmm's
//! vm-allocator, on 1 and 2 threads. See BENCHMARKS.md. The operations are
//! `ops/mod.rs`'s, the same the CPU-time example measures.

#[path = "../tests/common/mod.rs"]
mod common;
mod host;
mod ops;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ops::Op;

/// Times `iters` alloc+free pairs on each of `threads` threads at once and
/// returns the wall time divided by `threads`, so the figure is the cost
/// per pair in aggregate throughput terms (ideal scaling halves it).
fn threaded(threads: usize, iters: u64, op: Op) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                host::set_cpu(t);
                barrier.wait();
                for _ in 0..iters {
                    op(t);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed() / threads as u32
}

/// Benchmarks every operation of `ops::ops()`: the 4K map + unmap paths in
/// `map_unmap_4k`, the scatter-gather list in `map_sg_64x4k`, and IOVA
/// alloc + free on 1 and 2 threads in `iova_alloc_free`.
fn all(c: &mut Criterion) {
    let ops = ops::ops();
    let mut g = c.benchmark_group("map_unmap_4k");
    for (name, op) in ops
        .iter()
        .filter(|(n, _)| !n.starts_with("iova_") && !n.starts_with("map_sg"))
    {
        g.bench_function(*name, |b| b.iter(|| op(0)));
    }
    g.finish();
    let mut g = c.benchmark_group("map_sg_64x4k");
    for (_, op) in ops.iter().filter(|(n, _)| n.starts_with("map_sg")) {
        g.bench_function("iommu_model_strict", |b| b.iter(|| op(0)));
    }
    g.finish();
    let mut g = c.benchmark_group("iova_alloc_free");
    for (name, op) in ops.iter().filter(|(n, _)| n.starts_with("iova_")) {
        let name = name.trim_start_matches("iova_");
        for threads in [1, 2] {
            let op = op.clone();
            g.bench_function(format!("{name}/{threads}t"), move |b| {
                b.iter_custom(|iters| threaded(threads, iters, op.clone()))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = all
}
criterion_main!(benches);
