//! The hand-off, without a lock, between a CMD_SYNC that waits for
//! accesses still using dropped `Iotlb` entries and the end of the last of
//! them (see `iotlb.rs`).
//!
//! Two flags, both sequentially consistent: a slot's `stale` (drops are
//! pending while an access holds its `Iotlb`) and the model's `wait` (a
//! CMD_SYNC waits at CMDQ_CONS). Each side stores its own flag, then reads
//! the other's: the waiting CMD_SYNC arms `wait` before it looks at the
//! slots, the releasing access clears `stale` before it looks at `wait`.
//! In every interleaving one of them sees the other's store, so the queue
//! is resumed (a Dekker pair). A sequentially consistent fence sits
//! between each side's store and load: without it loom (which models SeqCst
//! accesses as acquire/release) finds the interleaving where both read the
//! old value. `tests/loom.rs` checks the pair under `--cfg loom`, which
//! swaps these atomics for loom's.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, fence};
use std::sync::atomic::Ordering::SeqCst;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, fence};

/// The waiting side: arms `wait`, then asks `settled` (which reads the
/// slots' `stale`). Returns whether the CMD_SYNC may complete now; `wait`
/// stays armed when it may not.
pub fn arm_then_check(wait: &AtomicBool, settled: impl FnOnce() -> bool) -> bool {
    wait.store(true, SeqCst);
    fence(SeqCst);
    if settled() {
        wait.store(false, SeqCst);
        return true;
    }
    false
}

/// Returns whether a slot's drops are still pending.
pub fn is_stale(stale: &AtomicBool) -> bool {
    stale.load(SeqCst)
}

/// Marks a slot's drops pending (an access holds its `Iotlb`).
pub fn set_stale(stale: &AtomicBool) {
    stale.store(true, SeqCst);
}

/// The releasing side: the drops applied, clears `stale`.
pub fn clear_stale(stale: &AtomicBool) {
    stale.store(false, SeqCst);
}

/// Returns whether a CMD_SYNC waits (read after [`clear_stale`]: the
/// caller then runs the queue, which checks again).
pub fn waiting(wait: &AtomicBool) -> bool {
    fence(SeqCst);
    wait.load(SeqCst)
}

/// Arms `wait`: the queue runs again at the next chance (after a restore,
/// for a CMD_SYNC the source held).
pub fn arm(wait: &AtomicBool) {
    wait.store(true, SeqCst);
}

/// Returns whether a CMD_SYNC waits, without the fence of [`waiting`]: a
/// poll (a register access, which applied no drops), not a side of the
/// hand-off.
pub fn armed(wait: &AtomicBool) -> bool {
    wait.load(SeqCst)
}

/// Disarms `wait` (no slot left to wait for).
pub fn disarm(wait: &AtomicBool) {
    if wait.load(SeqCst) {
        wait.store(false, SeqCst);
    }
}
