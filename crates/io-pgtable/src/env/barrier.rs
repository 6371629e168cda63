//! The CPU barriers behind [`super::CacheMaintenance`]'s ordering methods,
//! for environments that run on the CPU the device shares memory with.
//!
//! On AArch64 they are the architected instructions; elsewhere (host
//! builds that drive a software model) a fence gives the same ordering to
//! the model, which observes memory as another CPU thread does (under
//! `--cfg loom`, loom's fence, so the model checker sees it).

use crate::sync::{Ordering, fence};

/// Orders earlier stores before later stores (memory and device
/// registers) as an outer-shareable observer sees them: `DMB OSHST`.
#[inline(always)]
pub fn device_write() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction: no memory operands, no registers
    // clobbered, valid at every exception level.
    unsafe {
        core::arch::asm!("dmb oshst", options(nostack, preserves_flags));
    }
    fence(Ordering::Release);
}

/// Completes every earlier memory access before any later one: `DSB SY`.
#[inline(always)]
pub fn full() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as in `device_write`.
    unsafe {
        core::arch::asm!("dsb sy", options(nostack, preserves_flags));
    }
    fence(Ordering::SeqCst);
}
