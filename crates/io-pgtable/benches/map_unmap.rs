//! Map/unmap benchmarks, io-pgtable beside aarch64-paging (0.12, 4K granule)
//! in the same run, plus a memset of the same PTE bytes. See BENCHMARKS.md.
//!
//! Every case times one operation on a table whose intermediate tables
//! already exist where the crate keeps them (aarch64-paging frees a table
//! whose whole range is unmapped), and undoes it outside the timed region.
//! Both crates unmap to zero descriptors (checked once per workload).

mod peer;

use std::hint::black_box;
use std::time::{Duration, Instant};

use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{El1And0, MemoryRegion};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use io_pgtable::env::{CleanMode, HostEnv};
use io_pgtable::{Config, Gather, Granule, PageTable, Prot, WalkCoherency};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// 2M-aligned but not 1G-aligned, so no 1G block fits in any 1G range: both
/// crates must use 2M blocks for "1G as 2M".
const BASE: u64 = 0x40_0000_0000 + M2;
const PA: u64 = 0x80_0000_0000 + M2;

const PROT: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);
/// A workload: `count` pages of `pgsize`.
#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    pgsize: u64,
    count: u64,
}

const LOADS: [Load; 5] = [
    Load {
        name: "1x4K",
        pgsize: K4,
        count: 1,
    },
    Load {
        name: "256x4K",
        pgsize: K4,
        count: 256,
    },
    Load {
        name: "256x2M",
        pgsize: M2,
        count: 256,
    },
    Load {
        name: "1G-as-4K",
        pgsize: K4,
        count: G1 / K4,
    },
    Load {
        name: "1G-as-2M",
        pgsize: M2,
        count: G1 / M2,
    },
];

#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    coherency: WalkCoherency,
    clean: CleanMode,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "coherent",
        coherency: WalkCoherency::Coherent,
        clean: CleanMode::Nop,
    },
    Mode {
        name: "noncoherent-nopclean",
        coherency: WalkCoherency::NonCoherent,
        clean: CleanMode::Nop,
    },
    Mode {
        name: "noncoherent-clflush",
        coherency: WalkCoherency::NonCoherent,
        clean: CleanMode::Flush,
    },
    Mode {
        name: "deferred-clflush",
        coherency: WalkCoherency::Deferred,
        clean: CleanMode::Flush,
    },
];

fn ours(mode: Mode) -> PageTable<HostEnv> {
    let cfg = Config::stage1(Granule::K4, 48, 48).with_coherency(mode.coherency);
    PageTable::new(cfg, HostEnv::new(mode.clean)).unwrap()
}

fn our_map(pt: &PageTable<HostEnv>, l: Load) {
    let size = l.pgsize * l.count;
    let n = pt
        .map(black_box(BASE), PA, l.pgsize, l.count as usize, PROT)
        .unwrap();
    debug_assert_eq!(n as u64, size);
    pt.sync_map(BASE, size).unwrap();
}

fn our_unmap(pt: &PageTable<HostEnv>, l: Load) {
    let mut g = Gather::new();
    let n = pt
        .unmap(black_box(BASE), l.pgsize, l.count as usize, &mut g)
        .unwrap();
    debug_assert_eq!(n as u64, l.pgsize * l.count);
    black_box(g);
}

fn region(l: Load) -> MemoryRegion {
    peer::region(BASE, l.pgsize * l.count)
}

fn their_map(t: &mut IdMap<El1And0>, l: Load) {
    peer::map(t, black_box(&region(l)), l.pgsize);
}

fn their_unmap(t: &mut IdMap<El1And0>, l: Load) {
    peer::unmap(t, black_box(&region(l)), l.pgsize);
}

/// Times `op` only, running `undo` after each call outside the timing.
fn timed(iters: u64, mut op: impl FnMut(), mut undo: impl FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        op();
        total += t.elapsed();
        undo();
    }
    total
}

fn bench(c: &mut Criterion) {
    for l in LOADS {
        let mut g = c.benchmark_group(l.name);
        let big = l.count >= 512;
        g.warm_up_time(Duration::from_millis(200));
        g.measurement_time(Duration::from_millis(if big { 1500 } else { 800 }));
        if big {
            g.sample_size(10);
        }
        for mode in MODES {
            let pt = ours(mode);
            our_map(&pt, l);
            our_unmap(&pt, l);
            assert_eq!(pt.walk(BASE).steps().last().map(|s| s.desc), Some(0));
            if l.count == 1 {
                g.bench_function(BenchmarkId::new("io-pgtable/map+unmap", mode.name), |b| {
                    b.iter(|| {
                        our_map(&pt, l);
                        our_unmap(&pt, l);
                    })
                });
            } else {
                g.bench_function(BenchmarkId::new("io-pgtable/map", mode.name), |b| {
                    b.iter_custom(|n| timed(n, || our_map(&pt, l), || our_unmap(&pt, l)))
                });
                g.bench_function(BenchmarkId::new("io-pgtable/unmap", mode.name), |b| {
                    b.iter_custom(|n| timed(n, || our_unmap(&pt, l), || our_map(&pt, l)))
                });
            }
        }
        let mut t = peer::table();
        their_map(&mut t, l);
        their_unmap(&mut t, l);
        peer::assert_unmapped(&t, &region(l));
        if l.count == 1 {
            g.bench_function("aarch64-paging/map+unmap", |b| {
                b.iter(|| {
                    their_map(&mut t, l);
                    their_unmap(&mut t, l);
                })
            });
        } else {
            g.bench_function("aarch64-paging/map", |b| {
                b.iter_custom(|n| {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        let s = Instant::now();
                        their_map(&mut t, l);
                        total += s.elapsed();
                        their_unmap(&mut t, l);
                    }
                    total
                })
            });
            g.bench_function("aarch64-paging/unmap", |b| {
                b.iter_custom(|n| {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        their_map(&mut t, l);
                        let s = Instant::now();
                        their_unmap(&mut t, l);
                        total += s.elapsed();
                    }
                    total
                })
            });
        }
        // The floor: writing the same number of PTE bytes with memset.
        let mut buf = vec![0u64; l.count as usize];
        g.bench_function("memset-pte-bytes", |b| {
            b.iter(|| {
                // SAFETY: `buf` holds exactly `count` u64s.
                unsafe { std::ptr::write_bytes(black_box(buf.as_mut_ptr()), 0x5a, buf.len()) };
                black_box(&buf);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
