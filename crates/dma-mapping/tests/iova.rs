//! The IOVA allocator: the tree against a brute-force reference, the
//! cached allocator's invariants under random operations, and the
//! magazine/depot mechanics.

use std::collections::BTreeMap;

use dma_mapping::iova::{IovaAllocator, IovaConfig, IovaTree, MAG_SIZE, TreeError, rounded_pages};
use proptest::prelude::*;

/// The reference: a bitmap, searched from the top for the highest
/// size-aligned free run below the limit.
struct Reference {
    used: Vec<bool>,
}

impl Reference {
    fn alloc(&mut self, pages: u64, align: u64, limit: u64) -> Option<u64> {
        let limit = limit.min(self.used.len() as u64);
        let mut cand = limit.checked_sub(pages)? & !(align - 1);
        loop {
            if cand >= 1 && (cand..cand + pages).all(|p| !self.used[p as usize]) {
                (cand..cand + pages).for_each(|p| self.used[p as usize] = true);
                return Some(cand);
            }
            cand = cand.checked_sub(align)?;
        }
    }

    fn free(&mut self, pfn: u64, pages: u64) {
        (pfn..pfn + pages).for_each(|p| self.used[p as usize] = false);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { pages: u64, limit: u64 },
    Free(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (1u64..40, 1u64..=1024).prop_map(|(pages, limit)| Op::Alloc { pages, limit }),
            2 => any::<usize>().prop_map(Op::Free),
        ],
        1..200,
    )
}

proptest! {
    #[test]
    fn tree_matches_the_top_down_reference(ops in ops()) {
        let mut tree = IovaTree::new(1, 1024);
        let mut reference = Reference { used: vec![false; 1024] };
        reference.used[0] = true;
        let mut live: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { pages, limit } => {
                    let align = pages.next_power_of_two();
                    let got = tree.alloc(pages, align, limit);
                    prop_assert_eq!(got, reference.alloc(pages, align, limit));
                    if let Some(p) = got {
                        live.push((p, pages));
                    }
                }
                Op::Free(i) if !live.is_empty() => {
                    let (p, n) = live.swap_remove(i % live.len());
                    prop_assert!(tree.free(p, n).is_ok());
                    reference.free(p, n);
                    // A second free of the same range is refused.
                    prop_assert_eq!(tree.free(p, n), Err(TreeError::NotAllocated { pfn: p, pages: n }));
                }
                Op::Free(_) => {}
            }
        }
        let used: u64 = live.iter().map(|l| l.1).sum();
        prop_assert_eq!(tree.free_pages(), 1023 - used);
    }

    #[test]
    fn cached_allocator_never_overlaps_and_respects_limits(
        ops in ops(),
        cpus in prop::collection::vec(0usize..4, 200),
    ) {
        let cfg = IovaConfig { depot_max: 2, ..IovaConfig::new(12, 12 + 10, 2) };
        let a = IovaAllocator::new(cfg);
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for (k, op) in ops.into_iter().enumerate() {
            let cpu = cpus[k % cpus.len()];
            match op {
                Op::Alloc { pages, limit } => {
                    if let Some(p) = a.alloc(pages, limit, cpu) {
                        let n = rounded_pages(pages);
                        prop_assert!(p >= 1 && p + n <= limit, "{p:#x}+{n} beyond {limit}");
                        prop_assert_eq!(p % n.next_power_of_two(), 0, "size-aligned");
                        let below = live.range(..=p).next_back();
                        prop_assert!(below.is_none_or(|(&s, &l)| s + l <= p), "overlap below");
                        let above = live.range(p..).next();
                        prop_assert!(above.is_none_or(|(&s, _)| s >= p + n), "overlap above");
                        live.insert(p, n);
                    }
                }
                Op::Free(i) if !live.is_empty() => {
                    let (&p, &n) = live.iter().nth(i % live.len()).unwrap();
                    live.remove(&p);
                    prop_assert!(a.free(p, n, cpu).is_ok());
                }
                Op::Free(_) => {}
            }
        }
        for (&p, &n) in &live {
            prop_assert!(a.free(p, n, 0).is_ok());
        }
        a.flush_caches();
        prop_assert_eq!(a.cached_frames(), 0);
        prop_assert_eq!(a.tree_free_pages(), 1023, "everything came back");
    }
}

#[test]
fn sizes_below_32_pages_round_to_powers_of_two() {
    assert_eq!(rounded_pages(1), 1);
    assert_eq!(rounded_pages(3), 4);
    assert_eq!(rounded_pages(17), 32);
    assert_eq!(rounded_pages(31), 32);
    assert_eq!(rounded_pages(32), 32);
    assert_eq!(rounded_pages(33), 33);
}

#[test]
fn freed_iovas_are_reused_from_the_cpu_magazine_first() {
    let a = IovaAllocator::new(IovaConfig::new(12, 32, 2));
    let p = a.alloc(1, u64::MAX, 0).unwrap();
    let tree_free = a.tree_free_pages();
    a.free(p, 1, 0).unwrap();
    // Cached, not given back to the tree.
    assert_eq!(a.cached_frames(), 1);
    assert_eq!(a.tree_free_pages(), tree_free);
    // The same CPU gets it back; another CPU does not see it.
    let q = a.alloc(1, u64::MAX, 1).unwrap();
    assert_ne!(q, p);
    assert_eq!(a.alloc(1, u64::MAX, 0), Some(p));
    // A cached frame above a device's limit is not handed out.
    a.free(p, 1, 0).unwrap();
    let low = a.alloc(1, 16, 0).unwrap();
    assert!(low < 16);
    assert_eq!(a.cached_frames(), 1);
}

#[test]
fn full_magazines_move_to_the_depot_and_the_depot_is_trimmed() {
    let cfg = IovaConfig {
        depot_max: 1,
        ..IovaConfig::new(12, 32, 1)
    };
    let a = IovaAllocator::new(cfg);
    let n = 4 * MAG_SIZE;
    let pfns: Vec<u64> = (0..n).map(|_| a.alloc(1, u64::MAX, 0).unwrap()).collect();
    let tree_free = a.tree_free_pages();
    for &p in &pfns {
        a.free(p, 1, 0).unwrap();
    }
    // Two local magazines plus one in the depot are kept; the fourth
    // magazine's worth was trimmed back into the tree.
    assert_eq!(a.cached_frames(), 3 * MAG_SIZE);
    assert_eq!(a.tree_free_pages(), tree_free + MAG_SIZE as u64);
    // Another CPU's allocation cannot use CPU 0's magazines, but the depot
    // is shared: a CPU with empty magazines takes the depot's full one.
    let b = IovaAllocator::new(IovaConfig {
        depot_max: 4,
        ..IovaConfig::new(12, 32, 2)
    });
    let pf: Vec<u64> = (0..3 * MAG_SIZE)
        .map(|_| b.alloc(1, u64::MAX, 0).unwrap())
        .collect();
    for &p in &pf {
        b.free(p, 1, 0).unwrap();
    }
    let tf = b.tree_free_pages();
    let got = b.alloc(1, u64::MAX, 1).unwrap();
    assert!(pf.contains(&got), "CPU 1 got a frame from the depot");
    assert_eq!(b.tree_free_pages(), tf);
}

#[test]
fn an_exhausted_tree_takes_back_the_caches_before_failing() {
    // 15 usable frames.
    let a = IovaAllocator::new(IovaConfig::new(12, 16, 2));
    let ones: Vec<u64> = (0..15).map(|_| a.alloc(1, u64::MAX, 0).unwrap()).collect();
    assert_eq!(a.alloc(1, u64::MAX, 0), None);
    for &p in &ones {
        a.free(p, 1, 1).unwrap();
    }
    // Every frame is in CPU 1's magazines; an order-2 request from CPU 0
    // finds nothing cached, the tree is empty, so the caches are flushed.
    let four = a.alloc(4, u64::MAX, 0).unwrap();
    assert_eq!(four % 4, 0);
    assert_eq!(a.cached_frames(), 0);
}

#[test]
fn large_sizes_bypass_the_caches() {
    let a = IovaAllocator::new(IovaConfig::new(12, 32, 1));
    let p = a.alloc(64, u64::MAX, 0).unwrap();
    assert_eq!(p % 64, 0);
    a.free(p, 64, 0).unwrap();
    assert_eq!(a.cached_frames(), 0);
    assert_eq!(
        a.free(p, 64, 0),
        Err(TreeError::NotAllocated { pfn: p, pages: 64 })
    );
}

#[test]
fn an_impossible_geometry_is_an_empty_space_not_a_panic() {
    let a = IovaAllocator::new(IovaConfig::new(12, 8, 1));
    assert_eq!(a.alloc(1, u64::MAX, 0), None);
    assert_eq!(a.tree_free_pages(), 0);
}

#[test]
fn cached_frames_counts_frames_of_every_order() {
    let a = IovaAllocator::new(IovaConfig::new(12, 32, 1));
    let total = a.tree_free_pages();
    let two = a.alloc(2, u64::MAX, 0).unwrap();
    let eight = a.alloc(5, u64::MAX, 0).unwrap();
    a.free(two, 2, 0).unwrap();
    a.free(eight, 5, 0).unwrap();
    // Before, each cached range counted as one frame (2, not 2 + 8).
    assert_eq!(a.cached_frames(), 2 + 8);
    assert_eq!(a.tree_free_pages() + a.cached_frames() as u64, total);
}
