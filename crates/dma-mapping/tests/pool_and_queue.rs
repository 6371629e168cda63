//! The bounce pool and the flush queue in isolation: runs never overlap and
//! respect alignment; nothing queued is ever freed before a flush that
//! started after it completed, even when flushes fail.

use std::cell::Cell;

use dma_mapping::bounce::{BounceError, BouncePool, MAX_MAPPING, SLOT_SIZE};
use dma_mapping::flush_queue::{FlushQueue, RING_SIZE};
use proptest::prelude::*;

proptest! {
    #[test]
    fn bounce_runs_never_overlap_and_are_aligned(
        ops in prop::collection::vec((1u64..70_000, 0u32..3, any::<bool>(), any::<usize>()), 1..120)
    ) {
        // A base that is 2 KiB but not 4 KiB aligned, so alignment is
        // relative to physical addresses, not slot indices.
        let base = 0x1000_0800;
        let pool = BouncePool::new(base, 512 * 1024).unwrap();
        let mut live: Vec<(u64, u64)> = Vec::new();
        for (size, align_pow, release, pick) in ops {
            if release && !live.is_empty() {
                let (b, _) = live.swap_remove(pick % live.len());
                prop_assert!(pool.release(b).is_some());
                prop_assert!(pool.release(b).is_none(), "double release refused");
                continue;
            }
            let align = 4096u64 << (align_pow * 2);
            let run = size.next_multiple_of(align);
            match pool.alloc(0x9000_0000, size, 0, run, align) {
                Ok(s) => {
                    prop_assert_eq!(s.run_start % align, 0);
                    prop_assert!(s.run_start >= base && s.run_start + s.run_len <= base + pool.size());
                    for &(b, l) in &live {
                        prop_assert!(s.bounce + s.run_len <= b || b + l <= s.bounce, "overlap");
                    }
                    prop_assert_eq!(pool.lookup(s.bounce + size - 1).map(|x| x.bounce), Some(s.bounce));
                    live.push((s.bounce, s.run_len));
                }
                Err(BounceError::TooLarge(_)) => prop_assert!(run > MAX_MAPPING),
                Err(BounceError::Exhausted(_)) => prop_assert!(run <= MAX_MAPPING),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
        let used: u64 = live.iter().map(|l| l.1 / SLOT_SIZE).sum();
        prop_assert_eq!(pool.used_slots() as u64, used);
    }
}

#[test]
fn queued_ranges_are_freed_only_after_a_successful_flush() {
    let q = FlushQueue::new(1, 100, 0);
    let freed = Cell::new(0u32);
    let ok = || Ok::<(), ()>(());
    let fail = || Err::<(), ()>(());
    let mut free = |_: u64, _: u64| freed.set(freed.get() + 1);
    for i in 0..10 {
        q.queue(0, i, 1, 0, &ok, &mut free).unwrap();
    }
    assert_eq!((freed.get(), q.pending()), (0, 10));
    // A failing flush frees nothing.
    assert_eq!(q.flush_now(0, &fail, &mut free), Err(()));
    assert_eq!((freed.get(), q.pending()), (0, 10));
    q.flush_now(0, &ok, &mut free).unwrap();
    assert_eq!((freed.get(), q.pending()), (10, 0));
    // A full ring whose flush fails keeps its entries and reports it.
    for i in 0..RING_SIZE as u64 {
        q.queue(0, i, 1, 0, &ok, &mut free).unwrap();
    }
    assert_eq!(q.queue(0, 999, 1, 0, &fail, &mut free), Err(()));
    assert_eq!((freed.get(), q.pending()), (10, RING_SIZE));
    // The timeout triggers a flush on the next queue operation.
    q.queue(0, 1000, 1, 100, &ok, &mut free).unwrap();
    assert_eq!((freed.get(), q.pending()), (10 + RING_SIZE as u32, 1));
}
