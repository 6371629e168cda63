//! The kernel heap: a bump allocator over the RAM after the image.
//!
//! Test runs are short and bounded, so never reusing freed memory is fine; the
//! most recent allocation is given back when freed, which covers the common
//! grow-a-Vec pattern. Exhaustion returns null, which `alloc` reports.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::layout::{RAM, RAM_SIZE};

unsafe extern "C" {
    static __heap_start: u8;
}

/// Bump allocator state: the next free address (0 until the first allocation).
pub struct Bump {
    next: AtomicU64,
}

#[global_allocator]
static HEAP: Bump = Bump {
    next: AtomicU64::new(0),
};

fn heap_start() -> u64 {
    // Only the address of the linker-defined symbol is taken (no read).
    &raw const __heap_start as u64
}

/// Returns how many heap bytes have been handed out.
pub fn used() -> u64 {
    let next = HEAP.next.load(Ordering::Relaxed);
    if next == 0 { 0 } else { next - heap_start() }
}

// SAFETY: every returned block lies in RAM the image does not use, is aligned as
// asked, and blocks never overlap because the bump pointer only moves forward
// past each block (a rollback happens only for the block just handed out).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let end = RAM + RAM_SIZE;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let base = if cur == 0 { heap_start() } else { cur };
            let align = layout.align() as u64;
            let start = (base + align - 1) & !(align - 1);
            let Some(new) = start.checked_add(layout.size() as u64) else {
                return core::ptr::null_mut();
            };
            if new > end {
                return core::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return start as *mut u8,
                Err(seen) => cur = seen,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let end = ptr as u64 + layout.size() as u64;
        // Give back the most recent block only; a failed exchange just leaks.
        let _ = self
            .next
            .compare_exchange(end, ptr as u64, Ordering::AcqRel, Ordering::Relaxed);
    }
}
