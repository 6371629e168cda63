//! What an EL2 hypervisor needs to host an unmodified Linux at EL1 (issue 13).
//!
//! The pieces are free of inline assembly and of any fixed address, so they
//! are tested on the build host and used unchanged by the bare-metal
//! hypervisor in `hypervisor/`:
//!
//! - [`esr`]: the ESR_EL2 syndrome of a trapped host access (data abort,
//!   SMC, HVC) and the faulting IPA from HPFAR_EL2/FAR_EL2,
//! - [`mmio`]: the trapped-MMIO seam ([`mmio::TrappedMmio`]) and the window
//!   that decodes a data abort into one emulated load or store, with
//!   per-register counters and visible refusals,
//! - [`stage2`]: the host's CPU stage 2 (identity map with holes),
//! - [`image`]: the arm64 Linux `Image` header,
//! - [`dtb`]: a device-tree rewriter for `/chosen` and the memory nodes,
//! - [`s1walk`]: a bounded read-only walk of a host stage-1 table (the
//!   test hook that donates a page the host's device targets).

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod dtb;
pub mod esr;
pub mod image;
pub mod mmio;
pub mod s1walk;
pub mod stage2;
