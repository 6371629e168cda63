//! The lock-free copy of the last TLB entry used, for the hit path of
//! [`crate::SmmuModel::translate`]: a seqlock over a few words, written
//! only under the state lock (whenever the in-lock copy changes: any
//! command, register write, miss or new hit), read without it.
//!
//! It never outlives the TLB entry it copies, for the same reason the
//! in-lock copy does not: everything that could drop or change that entry
//! first invalidates the copy, before the state lock is released.

use core::sync::atomic::{AtomicU64, Ordering, fence};
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use super::LastHit;
use crate::walk::{Access, Perms};
use crate::{DmaRequest, Translation};

const VALID: u64 = 1 << 63;

/// Returns the permission mask of the copy: bit [`Access::bit`] set when
/// that kind of access is allowed.
fn perm_mask(p: &Perms) -> u64 {
    u64::from(p.access_bits())
}

/// Source of the identities that tell models apart in the per-thread
/// counter lists.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's hit counters: (model identity, counter). Each counter
    /// is written by this thread only, so counting needs no atomic
    /// read-modify-write (a locked instruction would cost as much as the
    /// rest of the hit).
    static MINE: RefCell<Vec<(u64, Arc<AtomicU64>)>> = const { RefCell::new(Vec::new()) };
    /// The counter this thread used last: (model identity, counter). A
    /// plain copyable cell, so the common case is one thread-local load.
    static LAST: Cell<(u64, *const AtomicU64)> = const { Cell::new((0, core::ptr::null())) };
}

/// The published copy.
#[derive(Debug)]
pub(crate) struct Hot {
    seq: AtomicU64,
    /// StreamID << 32 | SubstreamID (or `NO_SSID`).
    key: AtomicU64,
    page: AtomicU64,
    /// VALID | permission mask << 8 | size_log2.
    meta: AtomicU64,
    out_base: AtomicU64,
    id: u64,
    /// Every thread's hit counter and the part of it already folded into
    /// the statistics.
    counters: Mutex<Vec<(Arc<AtomicU64>, u64)>>,
}

impl Default for Hot {
    fn default() -> Self {
        Self {
            seq: AtomicU64::new(0),
            key: AtomicU64::new(0),
            page: AtomicU64::new(0),
            meta: AtomicU64::new(0),
            out_base: AtomicU64::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            counters: Mutex::new(Vec::new()),
        }
    }
}

impl Hot {
    /// Counts one hit on this thread's counter.
    #[inline]
    fn count(&self) {
        let (id, ptr) = LAST.get();
        if id == self.id {
            // SAFETY: LAST only ever names a counter of this thread's MINE
            // list, together with the identity of the model it counts for
            // (identities are never reused). That model is `self`, alive
            // here, and its `counters` list holds a clone of the counter's
            // Arc until it is dropped, so the pointer is valid.
            let c = unsafe { &*ptr };
            // Single writer: a plain load and store are exact.
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            return;
        }
        self.count_slow();
    }

    #[cold]
    fn count_slow(&self) {
        MINE.with(|m| {
            let mut m = m.borrow_mut();
            if let Some((_, c)) = m.iter().rev().find(|(id, _)| *id == self.id) {
                c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                LAST.set((self.id, Arc::as_ptr(c)));
                return;
            }
            // Forget counters of models that are gone.
            m.retain(|(_, c)| Arc::strong_count(c) > 1);
            let c = Arc::new(AtomicU64::new(1));
            self.counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((c.clone(), 0));
            LAST.set((self.id, Arc::as_ptr(&c)));
            m.push((self.id, c));
        });
    }

    /// Returns the hits counted since the last call.
    pub fn take_hits(&self) -> u64 {
        let mut v = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (c, folded) in v.iter_mut() {
            let now = c.load(Ordering::Relaxed);
            n += now - *folded;
            *folded = now;
        }
        n
    }

    /// Publishes `last` (or nothing). Callers hold the state lock, so there
    /// is a single writer.
    pub fn publish(&self, last: Option<&LastHit>) {
        if last.is_none() && self.meta.load(Ordering::Relaxed) == 0 {
            return;
        }
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        // The odd sequence number is visible before any word changes.
        fence(Ordering::Release);
        match last {
            Some(l) => {
                self.key.store(
                    u64::from(l.sid) << 32 | u64::from(l.ssid),
                    Ordering::Relaxed,
                );
                self.page.store(l.page, Ordering::Relaxed);
                self.out_base.store(l.out_base, Ordering::Relaxed);
                let meta = VALID | perm_mask(&l.perms) << 8 | u64::from(l.size_log2);
                self.meta.store(meta, Ordering::Relaxed);
            }
            None => self.meta.store(0, Ordering::Relaxed),
        }
        self.seq.store(s + 2, Ordering::Release);
    }

    /// Returns the translation of `req` when the published copy serves it.
    #[inline]
    pub fn hit(&self, req: &DmaRequest, no_ssid: u32, max_ssid_bits: u32) -> Option<Translation> {
        if req.ats_translated || req.ssid.is_some_and(|s| s >> max_ssid_bits != 0) {
            return None;
        }
        let s1 = self.seq.load(Ordering::Acquire);
        let meta = self.meta.load(Ordering::Relaxed);
        let key = self.key.load(Ordering::Relaxed);
        let page = self.page.load(Ordering::Relaxed);
        let out_base = self.out_base.load(Ordering::Relaxed);
        // The words were read before the sequence number is read again.
        fence(Ordering::Acquire);
        if s1 & 1 != 0 || self.seq.load(Ordering::Relaxed) != s1 || meta & VALID == 0 {
            return None;
        }
        let want = u64::from(req.sid) << 32 | u64::from(req.ssid.unwrap_or(no_ssid));
        let size_log2 = (meta & 0xff) as u32;
        let acc = Access {
            write: req.write,
            privileged: req.privileged,
            instruction: req.instruction && !req.write,
        };
        if key != want || req.iova >> size_log2 != page || (meta >> 8) >> acc.bit() & 1 == 0 {
            return None;
        }
        self.count();
        let off = req.iova & ((1 << size_log2) - 1);
        Some(Translation {
            pa: out_base + off,
            bytes_left: (1 << size_log2) - off,
            bypass: false,
            tlb_hit: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_bits_follow_perms_allows() {
        let p = Perms::from_bits(Perms::READ_USER | Perms::WRITE_PRIV | Perms::EXEC_USER);
        let m = perm_mask(&p);
        for write in [false, true] {
            for instruction in [false, true] {
                for privileged in [false, true] {
                    let a = Access {
                        write,
                        privileged,
                        instruction: instruction && !write,
                    };
                    assert_eq!(m >> a.bit() & 1 == 1, p.allows(a), "{a:?}");
                }
            }
        }
    }
}
