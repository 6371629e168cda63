//! A counting global allocator for "allocates nothing" tests: a test binary
//! installs [`CountingAlloc`] as its `#[global_allocator]` and wraps the
//! code under test in [`allocations`]. Only the calling thread's
//! allocations are counted, so tests running in parallel threads of the
//! same binary do not disturb each other.
//!
//! ```text
//! #[global_allocator]
//! static GLOBAL: sim_memory::counting::CountingAlloc = sim_memory::counting::CountingAlloc;
//!
//! assert_eq!(sim_memory::counting::allocations(|| hot_path()), 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting allocations (and reallocations) of
/// threads inside [`allocations`].
pub struct CountingAlloc;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments; counting has no effect on the memory returned.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded caller contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded caller contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded caller contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Returns how many heap allocations this thread made running `f` (0 when
/// [`CountingAlloc`] is not the global allocator).
pub fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.load(Ordering::Relaxed) - before
}
