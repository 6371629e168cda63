//! Translations per second: TLB hit, full 4-level stage-1 walk, TLB miss
//! on a warm walk cache (one level walked), nested walk.
//!
//! Run with `cargo bench -p smmuv3-model --bench translate`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use smmuv3_model::{DmaFault, DmaRequest, ModelConfig, Translation};

/// Returns the fields a device model uses (output address, bytes left in
/// the unit, whether the TLB served it) folded into one word.
///
/// Not `black_box` of the whole `Result`: that copies it with loads wider
/// than the callee's stores of its fields (16 bytes over two 8-byte
/// stores, 4 bytes over the two `bool`s), which the CPU cannot forward
/// from its store buffer. The stall, about 5 ns a call, is the harness's,
/// not the model's; it made `tlb_hit` read 16.8 ns against 11.5 ns.
#[inline(always)]
fn fields(r: Result<Translation, DmaFault>) -> u64 {
    let t = r.unwrap();
    t.pa ^ t.bytes_left.rotate_left(17) ^ u64::from(t.tlb_hit) << 63
}

const SID: u32 = common::rig::RIG_SID;
/// Input addresses 1 GiB + 1 page apart: each needs its own level-1,
/// level-2 and level-3 descriptors.
const STEP: u64 = (1 << 30) + 0x1000;
const N: u64 = 64;
/// Pages of the TLB-miss case: 1 GiB of 4K pages, four times the TLB.
const MISS_PAGES: u64 = 1 << 18;

/// Stage 1 over `MISS_PAGES` consecutive pages with the default TLB.
fn stream_model() -> H {
    let common::rig::Rig { h, pt, page, .. } =
        common::rig::rig(ModelConfig::default().tlb_capacity, false);
    for i in 0..MISS_PAGES {
        pt.map(&h, i << 12, page, 3, S1_RW);
    }
    h
}

/// Stage 1 (or nested) over `N` pages `STEP` apart.
fn spread_model(tlb_capacity: usize, nested: bool) -> H {
    let common::rig::Rig { h, pt, page, .. } = common::rig::rig(tlb_capacity, nested);
    for i in 0..N {
        pt.map(&h, i * STEP, page, 3, S1_RW);
    }
    h
}

fn s1_model(tlb_capacity: usize) -> H {
    spread_model(tlb_capacity, false)
}

fn nested_model(tlb_capacity: usize) -> H {
    spread_model(tlb_capacity, true)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));

    let h = s1_model(1 << 16);
    let req = DmaRequest::read(SID, 0x40, 4).privileged();
    h.smmu.translate(&req).unwrap();
    g.bench_function("tlb_hit", |b| {
        b.iter(|| black_box(fields(h.smmu.translate(black_box(&req)))))
    });

    // Hits spread over 64 pages: every lookup goes to the TLB proper.
    for i in 0..N {
        h.smmu
            .translate(&DmaRequest::read(SID, i * STEP, 4).privileged())
            .unwrap();
    }
    let mut i = 0u64;
    g.bench_function("tlb_hit_64_pages", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            let r = DmaRequest::read(SID, i * STEP, 4).privileged();
            black_box(fields(h.smmu.translate(&r)))
        })
    });

    // A one-entry TLB and walk cache: every translation walks all levels.
    let h = s1_model(1);
    g.bench_function("s1_4level_walk", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            let r = DmaRequest::read(SID, i * STEP, 4).privileged();
            black_box(fields(h.smmu.translate(&r)))
        })
    });
    assert_eq!(h.smmu.stats().tlb_hits, 0, "every translation walked");

    // The TLB and walk cache off (the walk-on-every-access design): every
    // translation walks all four levels and caches nothing.
    let h = s1_model(1 << 16);
    h.smmu.set_tlb_enabled(false);
    g.bench_function("s1_4level_walk_uncached", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            let r = DmaRequest::read(SID, i * STEP, 4).privileged();
            black_box(fields(h.smmu.translate(&r)))
        })
    });
    let s = h.smmu.stats();
    assert_eq!((s.tlb_hits, s.walk_cache_hits), (0, 0), "nothing cached");

    // Streaming over four times the TLB: every translation misses the TLB
    // and finds its level-3 table in the walk cache (one level walked).
    let h = stream_model();
    let mut p = 0u64;
    g.bench_function("s1_tlb_miss_walk_cache_hit", |b| {
        b.iter(|| {
            p = (p + 1) % MISS_PAGES;
            let r = DmaRequest::read(SID, p << 12, 4).privileged();
            black_box(fields(h.smmu.translate(&r)))
        })
    });
    let s = h.smmu.stats();
    assert_eq!(s.tlb_hits, 0, "every translation missed the TLB");
    assert!(s.walk_cache_hits + 600 >= s.walks, "and hit the walk cache");

    let h = nested_model(1);
    g.bench_function("nested_walk", |b| {
        b.iter(|| {
            i = (i + 1) % N;
            let r = DmaRequest::read(SID, i * STEP, 4).privileged();
            black_box(fields(h.smmu.translate(&r)))
        })
    });

    // Not a translation: the uncontended lock and unlock of the state
    // lock's kind of mutex, which every case above but `tlb_hit` makes
    // once per translation. The floor under them on this host.
    let m = std::sync::Mutex::new(0u64);
    g.bench_function("state_lock_floor", |b| {
        b.iter(|| {
            let mut g = black_box(&m).lock().unwrap_or_else(|e| e.into_inner());
            *g += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
