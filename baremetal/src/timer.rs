//! The generic timer: the clock behind every bounded wait.

use core::arch::asm;

/// Returns the counter frequency in Hz (CNTFRQ_EL0).
pub fn frequency() -> u64 {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack, preserves_flags)) };
    f
}

/// Returns the virtual counter (CNTVCT_EL0), ordered after earlier instructions.
pub fn ticks() -> u64 {
    let t: u64;
    // SAFETY: the ISB orders the read; reading CNTVCT_EL0 has no side effects.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) t, options(nomem, nostack, preserves_flags))
    };
    t
}

/// Returns nanoseconds since boot.
pub fn now_ns() -> u64 {
    let f = frequency().max(1);
    ((u128::from(ticks()) * 1_000_000_000) / u128::from(f)) as u64
}

/// Polls `done` until it returns true or `timeout_us` microseconds pass.
///
/// Returns whether `done` returned true in time.
pub fn wait_until(timeout_us: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = ticks().saturating_add(frequency().saturating_mul(timeout_us) / 1_000_000);
    loop {
        if done() {
            return true;
        }
        if ticks() >= deadline {
            return done();
        }
        core::hint::spin_loop();
    }
}
