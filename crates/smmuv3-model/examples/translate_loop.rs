//! Runs a fixed number of translations of one kind, for load-independent
//! measurement with `perf stat -e cycles:u,instructions:u` (see
//! BENCHMARKS.md):
//! `translate_loop <hit|hit-opaque|hit-two|hit64|walk|walk-uncached|miss|nested|tlbi|lock|swap> <count>`.
//!
//! `hit-opaque` is `hit` with each request passed through `black_box`: the
//! compiler cannot fold the request's constant fields (stream, access
//! kind) into the inlined hit path, as it can for `hit`. `hit-two` is
//! `hit-opaque` alternating between two models.
//!
//! `walk` walks all four levels with a one-entry TLB and walk cache (each
//! walk fills and evicts four entries); `walk-uncached` walks them with the
//! TLB and walk cache disabled (the walk-on-every-access design).
//!
//! `miss` streams over 2^18 pages (1 GiB of 4K pages, four times the TLB):
//! every translation misses the TLB, finds its level-3 table in the walk
//! cache and walks one level, as a real SMMU does on a warm table.
//!
//! `lock` is no translation: the uncontended lock and unlock of a
//! `std::sync::Mutex`, which every translation but a hit of the lock-free
//! copy makes once (the model's state lock). It is the floor under the
//! other cases, and it costs what the host's locked instructions cost.
//! `swap` is one locked instruction and a plain release store per
//! iteration (what a spin lock would cost), to tell the two apart.
//!
//! `tlbi` measures `Iotlb` upkeep: a vm-memory `Iotlb` holds
//! [`IOTLB_PAGES`] pages; each iteration invalidates one of them
//! (TLBI_NH_VA + CMD_SYNC) and translates it again through the `Iommu`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use smmuv3_model::DmaRequest;

const SID: u32 = common::rig::RIG_SID;
const STEP: u64 = (1 << 30) + 0x1000;
const N: u64 = 64;
/// Pages of the `miss` case.
const MISS_PAGES: u64 = 1 << 18;
/// Pages the `Iotlb` of the `tlbi` case holds.
const IOTLB_PAGES: u64 = 4096;

fn tlbi_loop(count: u64) {
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let mut h = model_pages(1 << 16, false, true);
    let io = h.smmu.iommu(SID, None);
    let read = |va: u64| {
        io.translate(GuestAddress(va), 4, Permissions::Read)
            .map_or(0, |mut it| it.next().map_or(0, |m| m.base.0))
    };
    for p in 0..IOTLB_PAGES {
        read(p << 12);
    }
    assert_eq!(io.iotlb_units(), IOTLB_PAGES as usize);
    let mut sum = 0u64;
    for i in 0..count {
        let va = (i % IOTLB_PAGES) << 12;
        let (w0, w1) = tlbi_nh_va(1, va, true);
        h.cmd(w0, w1);
        h.sync();
        sum = sum.wrapping_add(read(va));
    }
    assert_eq!(io.iotlb_units(), IOTLB_PAGES as usize);
    let s = h.smmu.stats();
    println!(
        "tlbi: {count} invalidations, {} Iotlb units dropped (checksum {sum:#x})",
        s.iotlb_invalidations
    );
}

/// The state lock's share of a translation: one uncontended lock and
/// unlock of a `std::sync::Mutex` per iteration, as `SmmuModel` makes.
fn lock_loop(count: u64) {
    use std::hint::black_box;
    let m = std::sync::Mutex::new(0u64);
    for i in 0..count {
        let mut g = black_box(&m).lock().unwrap_or_else(|e| e.into_inner());
        *g = g.wrapping_add(i);
    }
    let sum = *m.lock().unwrap_or_else(|e| e.into_inner());
    println!("lock: {count} lock/unlock pairs (checksum {sum:#x})");
}

/// One locked instruction (an atomic swap) and a release store per
/// iteration: the cost of the host's locked instructions alone.
fn swap_loop(count: u64) {
    use std::hint::black_box;
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = AtomicBool::new(false);
    let mut sum = 0u64;
    for i in 0..count {
        let f = black_box(&flag);
        while f.swap(true, Ordering::Acquire) {}
        sum = black_box(sum.wrapping_add(i));
        f.store(false, Ordering::Release);
    }
    println!("swap: {count} swap/store pairs (checksum {sum:#x})");
}

fn opaque_loop(count: u64) {
    use std::hint::black_box;
    let h = model(1 << 16, false);
    let mut sum = 0u64;
    for _ in 0..count {
        let r = black_box(DmaRequest::read(SID, 0x40, 4).privileged());
        sum = sum.wrapping_add(h.smmu.translate(&r).map_or(0, |t| t.pa));
    }
    let s = h.smmu.stats();
    println!(
        "hit-opaque: {count} translations, {} TLB hits (checksum {sum:#x})",
        s.tlb_hits
    );
}

/// Hits on two models in turn from one thread (two devices behind two
/// SMMUs served by one VMM thread): each translation's model is not the
/// one this thread counted a hit for last.
fn two_models_loop(count: u64) {
    use std::hint::black_box;
    let models = [model(1 << 16, false), model(1 << 16, false)];
    let mut sum = 0u64;
    for i in 0..count {
        let r = black_box(DmaRequest::read(SID, 0x40, 4).privileged());
        let t = models[(i & 1) as usize].smmu.translate(&r);
        sum = sum.wrapping_add(t.map_or(0, |t| t.pa));
    }
    let hits: u64 = models.iter().map(|h| h.smmu.stats().tlb_hits).sum();
    println!("hit-two: {count} translations, {hits} TLB hits (checksum {sum:#x})");
}

fn model(tlb_capacity: usize, nested: bool) -> H {
    model_pages(tlb_capacity, nested, false)
}

fn model_pages(tlb_capacity: usize, nested: bool, stream: bool) -> H {
    let common::rig::Rig { h, pt, page, .. } = common::rig::rig(tlb_capacity, nested);
    if stream {
        for i in 0..MISS_PAGES {
            // User-accessible: the `Iommu` of the `tlbi` case makes
            // unprivileged accesses.
            pt.map(&h, i << 12, page, 3, S1_USER_RW);
        }
    } else {
        for i in 0..N {
            pt.map(&h, i * STEP, page, 3, S1_RW);
        }
    }
    h
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("hit", String::as_str);
    let count: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // The cases with a loop of their own.
    let own: Option<fn(u64)> = match mode {
        "tlbi" => Some(tlbi_loop),
        "lock" => Some(lock_loop),
        "swap" => Some(swap_loop),
        "hit-opaque" => Some(opaque_loop),
        "hit-two" => Some(two_models_loop),
        _ => None,
    };
    if let Some(run) = own {
        run(count);
        return;
    }
    let (h, spread) = match mode {
        "hit" => (model(1 << 16, false), false),
        "hit64" => (model(1 << 16, false), true),
        "walk" => (model(1, false), true),
        "walk-uncached" => {
            let h = model(1 << 16, false);
            h.smmu.set_tlb_enabled(false);
            (h, true)
        }
        "miss" => (model_pages(1 << 16, false, true), false),
        "nested" => (model(1, true), true),
        other => {
            eprintln!(
                "unknown mode {other}; use hit, hit-opaque, hit-two, hit64, walk, walk-uncached, miss, nested, tlbi, lock or swap"
            );
            std::process::exit(2);
        }
    };
    // Decided once: the loop body is the same for every case.
    let (modulo, step) = match (mode == "miss", spread) {
        (true, _) => (MISS_PAGES, 1 << 12),
        (false, true) => (N, STEP),
        (false, false) => (1, 0),
    };
    let mut sum = 0u64;
    for i in 0..count {
        let va = if step == 0 { 0x40 } else { (i % modulo) * step };
        let r = DmaRequest::read(SID, va, 4).privileged();
        sum = sum.wrapping_add(h.smmu.translate(&r).map_or(0, |t| t.pa));
    }
    let s = h.smmu.stats();
    println!(
        "{mode}: {count} translations, {} TLB hits, {} walks, {} walk-cache hits, {} descriptor reads (checksum {sum:#x})",
        s.tlb_hits, s.walks, s.walk_cache_hits, s.descriptor_reads
    );
}
