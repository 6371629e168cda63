//! Link-time proof that the no_std crates do not pull in `std`.
#![no_std]

// Name the crates so they are linked, not just listed.
pub use io_pgtable as _pgtable;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
