//! The translation path allocates nothing once the caches exist: TLB hits,
//! TLB misses that walk and fill (evicting from full sets), full walks
//! with one-entry caches, proven with a counting global allocator. The
//! caches' arrays are allocated by the first fill, and a thread's hit
//! counter by its first lock-free hit, before counting starts.

mod common;

use common::*;
use sim_memory::counting::{CountingAlloc, allocations};
use smmuv3_model::DmaRequest;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SID: u32 = common::rig::RIG_SID;
const PAGES: u64 = 2048;

/// Stage 1 over `PAGES` consecutive pages.
fn model(tlb_capacity: usize) -> H {
    let common::rig::Rig { h, pt, page, .. } = common::rig::rig(tlb_capacity, false);
    for i in 0..PAGES {
        pt.map(&h, i << 12, page, 3, S1_RW);
    }
    h
}

fn translate(h: &H, page: u64) -> bool {
    let r = DmaRequest::read(SID, page << 12, 4).privileged();
    h.smmu.translate(&r).unwrap().tlb_hit
}

#[test]
fn hits_and_misses_with_evictions_allocate_nothing() {
    // 256 entries for 2048 pages: every pass over them misses and evicts.
    let h = model(256);
    for p in 0..PAGES {
        translate(&h, p);
    }
    // A thread's first lock-free hit registers its hit counter (once per
    // thread and model).
    for _ in 0..3 {
        translate(&h, 7);
    }
    let before = h.smmu.stats();
    let mut hits = 0;
    let n = allocations(|| {
        for _ in 0..3 {
            for p in 0..PAGES {
                hits += u64::from(translate(&h, p));
            }
        }
        for _ in 0..1000 {
            hits += u64::from(translate(&h, 7));
        }
    });
    assert_eq!(n, 0, "allocations on the translation path");
    let after = h.smmu.stats();
    // Both paths ran: misses that walked and evicted, and hits.
    assert!(after.walks - before.walks >= 3 * PAGES);
    assert!(after.tlb_evictions > before.tlb_evictions);
    assert!(hits >= 999);
}

#[test]
fn full_walks_with_one_entry_caches_allocate_nothing() {
    let h = model(1);
    for p in 0..4 {
        translate(&h, p * 512);
    }
    let before = h.smmu.stats().walks;
    let n = allocations(|| {
        for i in 0..400 {
            // 2 MiB apart: a new level-3 table every time.
            translate(&h, (i % 4) * 512);
        }
    });
    assert_eq!(n, 0);
    assert_eq!(h.smmu.stats().walks - before, 400);
}
