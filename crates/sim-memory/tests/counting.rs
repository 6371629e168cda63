//! The counting allocator counts: the "allocates nothing" tests that use it
//! could otherwise pass vacuously.

use sim_memory::counting::{CountingAlloc, allocations};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn allocations_and_reallocations_of_this_thread_are_counted() {
    assert_eq!(allocations(|| {}), 0);
    assert_eq!(
        allocations(|| {
            let mut v: Vec<u64> = Vec::with_capacity(1);
            v.extend([1, 2, 3, 4, 5, 6, 7, 8, 9]);
            std::hint::black_box(&v);
        }),
        2
    );
    // Another thread's allocations are not this thread's.
    let n = allocations(|| {
        std::thread::scope(|s| {
            s.spawn(|| std::hint::black_box(vec![0u8; 64]));
        })
    });
    let spawned = allocations(|| {
        std::thread::scope(|s| {
            s.spawn(|| {});
        })
    });
    assert_eq!(n, spawned, "the child's Vec was counted");
}
