//! DMA API costs: 4K map+unmap on every path, map_sg 64 x 4K, and IOVA
//! alloc+free on the magazine and tree paths beside rust-vmm's
//! vm-allocator, on 1 and 2 threads. See BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;
mod host;

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dma_mapping::iova::{IovaAllocator, IovaConfig};
use dma_mapping::{
    Attrs, BouncePool, DeviceConfig, Direction, DmaDevice, DmaDomain, DomainConfig, Invalidation,
    PhysSegment,
};
use host::{HostEnv, NullDomain};
use sim_memory::Coherency;
use vm_allocator::{AddressAllocator, AllocPolicy};

/// One benchmarked operation, given the CPU it runs on.
type Op = Arc<dyn Fn(usize) + Send + Sync>;

const LAZY: Invalidation = Invalidation::Lazy {
    timeout_ticks: u64::MAX,
};

fn map_unmap<E: dma_mapping::DmaEnv, D: dma_mapping::IommuDomain>(dev: &DmaDevice<E, D>, pa: u64) {
    // SAFETY: `pa` is benchmark-owned memory; the device never runs.
    unsafe {
        let a = dev
            .map_phys(black_box(pa), 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
}

fn dma_4k(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_unmap_4k");
    for (name, inv) in [
        ("iommu_model_strict", Invalidation::Strict),
        ("iommu_model_lazy", LAZY),
    ] {
        let f = common::fixture(Coherency::Coherent, inv);
        let dev = f.device(DeviceConfig::new(1));
        let pa = f.buffer(4096, 1);
        g.bench_function(name, |b| b.iter(|| map_unmap(&dev, pa)));
    }
    let env = Arc::new(HostEnv::default());
    for (name, inv) in [
        ("layer_only_strict", Invalidation::Strict),
        ("layer_only_lazy", LAZY),
    ] {
        let dom = Arc::new(
            DmaDomain::new(
                NullDomain,
                env.clone(),
                DomainConfig {
                    invalidation: inv,
                    ncpus: 2,
                },
            )
            .unwrap(),
        );
        let dev = DmaDevice::behind_iommu(DeviceConfig::new(1), dom);
        let pa = host::region(4096);
        g.bench_function(name, |b| b.iter(|| map_unmap(&dev, pa)));
    }
    let coherent = DeviceConfig {
        coherent: Some(true),
        ..DeviceConfig::new(1)
    };
    let direct = DmaDevice::direct(coherent, env.clone());
    let pa = host::region(4096);
    g.bench_function("direct", |b| b.iter(|| map_unmap(&direct, pa)));
    let pool = Arc::new(BouncePool::new(host::region(1 << 20), 1 << 20).unwrap());
    let bounce = DmaDevice::direct(
        DeviceConfig {
            force_bounce: true,
            ..coherent
        },
        env.clone(),
    )
    .with_bounce(pool);
    g.bench_function("bounce", |b| b.iter(|| map_unmap(&bounce, pa)));
    g.finish();
}

fn map_sg(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_sg_64x4k");
    let f = common::fixture(Coherency::Coherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let base = f.buffer(128 * 4096, 1);
    let segs: Vec<PhysSegment> = (0..64u64)
        .map(|i| PhysSegment {
            phys: base + 2 * i * 4096,
            len: 4096,
        })
        .collect();
    g.bench_function("iommu_model_strict", |b| {
        b.iter(|| {
            // SAFETY: benchmark-owned memory; the device never runs.
            unsafe {
                let m = dev
                    .map_sg(&segs, Direction::ToDevice, Attrs::empty())
                    .unwrap();
                dev.unmap_sg(m).unwrap();
            }
        })
    });
    g.finish();
}

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

fn iova(c: &mut Criterion) {
    let mut g = c.benchmark_group("iova_alloc_free");
    let magazine = Arc::new(IovaAllocator::new(IovaConfig::new(12, 48, 2)));
    let tree = Arc::new(IovaAllocator::new(IovaConfig::new(12, 48, 0)));
    let peer = Arc::new(Mutex::new(
        AddressAllocator::new(4096, (1 << 48) - 4096).unwrap(),
    ));
    // Keep some live ranges so the trees are not trivially empty.
    for _ in 0..1024 {
        tree.alloc(1, u64::MAX, 0).unwrap();
        peer.lock()
            .unwrap()
            .allocate(4096, 4096, AllocPolicy::LastMatch)
            .unwrap();
    }
    let ops: [(&str, Op); 3] = [
        ("magazine", {
            let a = magazine.clone();
            Arc::new(move |cpu| {
                let p = a.alloc(black_box(1), u64::MAX, cpu).unwrap();
                a.free(p, 1, cpu).unwrap();
            })
        }),
        ("tree", {
            let a = tree.clone();
            Arc::new(move |cpu| {
                let p = a.alloc(black_box(1), u64::MAX, cpu).unwrap();
                a.free(p, 1, cpu).unwrap();
            })
        }),
        ("vm_allocator", {
            let a = peer.clone();
            Arc::new(move |_| {
                let mut a = a.lock().unwrap();
                let r = a
                    .allocate(black_box(4096), 4096, AllocPolicy::LastMatch)
                    .unwrap();
                a.free(&r).unwrap();
            })
        }),
    ];
    for (name, op) in ops {
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
    targets = dma_4k, map_sg, iova
}
criterion_main!(benches);
