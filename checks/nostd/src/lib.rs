//! Link-time proof that the no_std crates do not pull in `std`.
#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};

// Name the crates so they are linked, not just listed.
pub use io_pgtable as _pgtable;
pub use hyp_iommu as _hyp_iommu;
pub use hyp_host as _hyp_host;
pub use smmuv3 as _smmuv3;
pub use dma_mapping as _dma_mapping;

/// An allocator that never allocates: `alloc` users need one to link.
struct NoAlloc;

// SAFETY: returning null is always a valid "allocation failed" answer, and
// `dealloc` is never called with a pointer this allocator handed out.
unsafe impl GlobalAlloc for NoAlloc {
    unsafe fn alloc(&self, _layout: Layout) -> *mut u8 {
        core::ptr::null_mut()
    }
    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOC: NoAlloc = NoAlloc;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
