//! Model check of the CMD_SYNC hand-off (`src/model/sync_gate.rs`): a
//! CMD_SYNC that waits for an access still using a dropped `Iotlb` entry,
//! and the end of that access, with no lock between them. Whatever the
//! interleaving, once the access has ended the CMD_SYNC completes: either
//! the waiting side sees the drops applied, or the releasing side sees it
//! wait and runs the queue again.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p smmuv3-model --test loom --profile loom
//! ```

#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use smmuv3_model::sync_gate_for_loom as gate;

/// The queue's side, as `State::process_cmdq` runs it at a CMD_SYNC:
/// completes (counts) when no slot is stale.
fn run_queue(wait: &AtomicBool, stale: &AtomicBool, done: &AtomicUsize) {
    if gate::arm_then_check(wait, || !gate::is_stale(stale)) {
        done.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_waiting_sync_always_completes_once_the_access_ends() {
    loom::model(|| {
        // An access holds the Iotlb: its drops are pending.
        let stale = Arc::new(AtomicBool::new(true));
        let wait = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (s, w, d) = (stale.clone(), wait.clone(), done.clone());
        // The guest's CMD_SYNC reaches the head of the queue.
        let queue = loom::thread::spawn(move || run_queue(&w, &s, &d));
        // The access ends: its guard's release applies the drops, then
        // resumes the queue if a CMD_SYNC waits.
        gate::clear_stale(&stale);
        if gate::waiting(&wait) {
            run_queue(&wait, &stale, &done);
        }
        queue.join().unwrap();
        assert!(
            done.load(Ordering::SeqCst) >= 1,
            "the CMD_SYNC was left waiting after the access ended"
        );
    });
}
