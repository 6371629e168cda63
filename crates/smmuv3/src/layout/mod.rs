//! In-memory structure layouts: stream table entries, context descriptors,
//! commands and event records (Arm IHI 0070, chapters 3.4, 4, 5 and 7).
//! Field positions only; building and decoding live in the modules that use
//! them.

pub mod cd;
pub mod cmd;
pub mod event;
pub mod ste;
