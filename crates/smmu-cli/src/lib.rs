//! The `smmu` tool's library: the end-to-end demonstrations it runs and the
//! decoders it offers, kept out of `main.rs` so they are tested.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod check;
pub mod decode;
pub mod klog;
pub mod pgtable_demo;
pub mod system_demo;
pub mod words;
