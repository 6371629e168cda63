//! The atomics behind table memory and the shared table state.
//!
//! Normal builds use `core`'s. Under `--cfg loom` (only `tests/loom.rs`,
//! never a shipped build) they are loom's model-checked atomics, so the
//! model checker sees every load, store and compare-exchange of the table
//! code and explores their interleavings and weak-memory outcomes. In such
//! a build every table operation (and [`crate::env::barrier`], whose fences
//! come from here) must run inside a loom model.
//!
//! Under loom an entry is a `loom::sync::atomic::AtomicU64`, which is larger
//! than 8 bytes. The table code never turns a byte offset into a pointer
//! itself: it indexes `*const AtomicU64` by entry ([`PageTable`]'s `entry`
//! and `slice`) and hands physical addresses (`table + 8 * idx`) to the
//! environment. A loom environment must therefore lay its *physical*
//! address space out in 8-byte entries and map `phys_to_cpu(table + 8 * i)`
//! to the `i`-th loom atomic of the table (tests/loom.rs does), and a
//! `TableBlock::cpu` pointer must point at the table's first loom atomic.
//!
//! [`PageTable`]: crate::PageTable

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
