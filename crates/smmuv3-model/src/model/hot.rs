//! The lock-free copies of TLB entries, for the hit path of
//! [`crate::SmmuModel::translate`]: a few dozen slots, each a seqlock over
//! a few words, written only under the state lock, read without it. A
//! slot holds the entry a locked hit used for one 4 KiB page of one
//! stream (by a hash of both), so hits spread over a working set of pages
//! stay off the lock, not only repeats of one page.
//!
//! No copy outlives the TLB entry it copies, for the same reason the
//! in-lock copy does not: everything that could drop or change a TLB
//! entry (any command, register write or TLB miss) first drops every copy,
//! before the state lock is released. Dropping them all is one store: a
//! slot serves only while it carries the current generation.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use super::LastHit;
use super::context::{MAX_SSID_BITS, NO_SSID};
use crate::walk::{Access, Perms};
use crate::{DmaRequest, Translation};

/// Returns the shift that brings the bit of `req`'s kind of access to
/// bit 0 of a slot's 32-bit permission mask, modulo 32: its low
/// five bits are the index (bit 0 write, bit 1 privileged, bit 2
/// instruction fetch, bit 3 ATS-translated, bit 4 clear).
///
/// The four flags are gathered by one multiply: placed in the low bits of
/// four bytes (0, 8, 16, 24), times 2^21 + 2^14 + 2^7 + 1 they land on
/// bits 21, 22, 23 and 24, and no two partial products share a bit, so
/// nothing carries into them. The other partial products land on bits
/// 29-31 (bits 8-10 of the result, which a 32-bit shift ignores, so no
/// mask is needed) or beyond bit 31. Written this way the compiler reads
/// the four flags as one word when they are adjacent (they are today).
#[inline(always)]
fn access_shift(req: &DmaRequest) -> u32 {
    let flags = u32::from(req.write)
        | u32::from(req.privileged) << 8
        | u32::from(req.instruction) << 16
        | u32::from(req.ats_translated) << 24;
    flags.wrapping_mul(1 << 21 | 1 << 14 | 1 << 7 | 1) >> 21
}

/// Returns the permission mask a slot checks an access against
/// (see [`access_shift`]): the bit of an access index is set when `p`
/// allows that access. ATS-translated requests never hit (their
/// translation is not the TLB's), and an instruction fetch that writes is
/// a write.
fn perm_mask(p: &Perms) -> u32 {
    (0..8u32).fold(0, |m, i| {
        let write = i & 1 != 0;
        let a = Access {
            write,
            privileged: i & 2 != 0,
            instruction: i & 4 != 0 && !write,
        };
        m | u32::from(p.allows(a)) << i
    })
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

/// Number of slots (a power of two).
const SLOTS: usize = 64;

/// One published copy.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    seq: AtomicU64,
    /// The generation it was published in; it serves only in that one.
    generation: AtomicU64,
    /// StreamID << 32 | SubstreamID (or `NO_SSID`).
    key: AtomicU64,
    /// Input address of the unit's first byte.
    base: AtomicU64,
    /// Bytes in the unit (a power of two).
    size: AtomicU64,
    /// Output address of the unit's first byte.
    out_base: AtomicU64,
    /// The accesses allowed (see [`perm_mask`]); 0 in a slot never
    /// published, so that no access hits.
    perms: AtomicU32,
}

/// The published copies.
#[derive(Debug)]
pub(crate) struct Hot {
    /// In place rather than boxed: one load less per hit.
    slots: [Slot; SLOTS],
    /// The current generation: slots published before the last
    /// [`Hot::clear`] carry an older one.
    generation: AtomicU64,
    id: u64,
    /// Every thread's hit counter and the part of it already folded into
    /// the statistics.
    counters: Mutex<Vec<(Arc<AtomicU64>, u64)>>,
}

impl Default for Hot {
    fn default() -> Self {
        Self {
            slots: core::array::from_fn(|_| Slot::default()),
            // Above the zero of slots never published.
            generation: AtomicU64::new(1),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            counters: Mutex::new(Vec::new()),
        }
    }
}

/// Returns the slot of the 4 KiB page `iova >> 12` of stream `sid`.
#[inline(always)]
fn slot_of(sid: u32, iova: u64) -> usize {
    // Any 64 consecutive pages of one stream take distinct slots (XOR with
    // one value permutes the low six bits); the stream's own value spreads
    // streams that use the same addresses.
    ((iova >> 12) ^ u64::from(sid).wrapping_mul(0x9e37_79b9)) as usize & (SLOTS - 1)
}

impl Hot {
    /// Returns this thread's hit counter for this model, if it has one
    /// and used it last (else [`Hot::claim`] makes it so).
    #[inline(always)]
    fn counter(&self) -> Option<&AtomicU64> {
        let (id, ptr) = LAST.get();
        // SAFETY: LAST only ever names a counter of this thread's MINE
        // list, together with the identity of the model it counts for
        // (identities are never reused). That model is `self`, alive here,
        // and its `counters` list holds a clone of the counter's Arc until
        // it is dropped, so the pointer is valid for as long as `self` is.
        (id == self.id).then(|| unsafe { &*ptr })
    }

    /// Makes this thread's counter for this model (created if needed) the
    /// one [`Hot::counter`] returns.
    #[cold]
    #[inline(never)]
    fn claim(&self) {
        MINE.with(|m| {
            let mut m = m.borrow_mut();
            if let Some((_, c)) = m.iter().rev().find(|(id, _)| *id == self.id) {
                LAST.set((self.id, Arc::as_ptr(c)));
                return;
            }
            // Forget counters of models that are gone.
            m.retain(|(_, c)| Arc::strong_count(c) > 1);
            let c = Arc::new(AtomicU64::new(0));
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

    /// Returns every hit counted since the model was made.
    pub fn total_hits(&self) -> u64 {
        let v = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().map(|(c, _)| c.load(Ordering::Relaxed)).sum()
    }

    /// Drops every copy. Callers hold the state lock (a single writer).
    pub fn clear(&self) {
        let g = self.generation.load(Ordering::Relaxed);
        // Release: a reader that sees the new generation sees the stores
        // of the state lock's holders before it. Readers compare it after
        // reading a slot (see `hit`), so a slot read before the clear is
        // refused once the clear is visible.
        self.generation.store(g + 1, Ordering::Release);
    }

    /// Publishes `last` in the slot of the page of `iova` (an address it
    /// translates) for the accesses it allows. Callers hold the state
    /// lock, so there is a single writer.
    pub fn publish(&self, iova: u64, last: &LastHit) {
        // A SubstreamID out of range never translates, and `hit` maps
        // every such request to `1 << MAX_SSID_BITS`: an entry of that
        // key must not be served (there is none; this keeps it so).
        if last.ssid != NO_SSID && last.ssid >> MAX_SSID_BITS != 0 {
            return;
        }
        let slot = &self.slots[slot_of(last.sid, iova)];
        let s = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(s + 1, Ordering::Relaxed);
        // The odd sequence number is visible before any word changes.
        fence(Ordering::Release);
        slot.key.store(
            u64::from(last.sid) << 32 | u64::from(last.ssid),
            Ordering::Relaxed,
        );
        slot.base
            .store(last.page << last.size_log2, Ordering::Relaxed);
        slot.size.store(1 << last.size_log2, Ordering::Relaxed);
        slot.out_base.store(last.out_base, Ordering::Relaxed);
        slot.perms.store(perm_mask(&last.perms), Ordering::Relaxed);
        slot.generation
            .store(self.generation.load(Ordering::Relaxed), Ordering::Relaxed);
        slot.seq.store(s + 2, Ordering::Release);
    }

    /// Returns the translation of `req` when the published copy serves it
    /// (and counts it).
    #[inline(always)]
    pub fn hit(&self, req: &DmaRequest) -> Option<Translation> {
        // Out-of-range SubstreamIDs become one no entry has (see `publish`).
        let ssid = match req.ssid {
            None => NO_SSID,
            Some(s) => s.min(1 << MAX_SSID_BITS),
        };
        let want = u64::from(req.sid) << 32 | u64::from(ssid);
        let slot = &self.slots[slot_of(req.sid, req.iova)];
        let s1 = slot.seq.load(Ordering::Acquire);
        let key = slot.key.load(Ordering::Relaxed);
        let base = slot.base.load(Ordering::Relaxed);
        let size = slot.size.load(Ordering::Relaxed);
        let out_base = slot.out_base.load(Ordering::Relaxed);
        let perms = slot.perms.load(Ordering::Relaxed);
        let generation = slot.generation.load(Ordering::Relaxed);
        // The words were read before the sequence number is read again,
        // and before the current generation is.
        fence(Ordering::Acquire);
        let s2 = slot.seq.load(Ordering::Relaxed);
        let current = self.generation.load(Ordering::Relaxed);
        // Wrapping: an address below `base` gives an offset past `size`.
        let off = req.iova.wrapping_sub(base);
        // Unchanged and not being written (even): an odd `s1` cleared of
        // its low bit is below every later value, `s2` included.
        if s2 != s1 & !1
            || generation != current
            || key != want
            || off >= size
            || perms.wrapping_shr(access_shift(req)) & 1 == 0
        {
            return None;
        }
        let c = match self.counter() {
            Some(c) => c,
            None => {
                self.claim();
                // Always there now; were it not, the lock path would serve
                // and count this request instead.
                self.counter()?
            }
        };
        // Single writer: a plain load and store are exact.
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Some(Translation {
            pa: out_base.wrapping_add(off),
            bytes_left: size - off,
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
                    for ats_translated in [false, true] {
                        let req = DmaRequest {
                            write,
                            instruction,
                            privileged,
                            ats_translated,
                            ..DmaRequest::read(1, 0, 4)
                        };
                        let a = Access {
                            write,
                            privileged,
                            instruction: instruction && !write,
                        };
                        let want = !ats_translated && p.allows(a);
                        assert_eq!(m.wrapping_shr(access_shift(&req)) & 1 == 1, want, "{req:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn access_shift_numbers_the_sixteen_kinds() {
        let mut seen = 0u32;
        for i in 0..16u32 {
            let req = DmaRequest {
                write: i & 1 != 0,
                privileged: i & 2 != 0,
                instruction: i & 4 != 0,
                ats_translated: i & 8 != 0,
                ..DmaRequest::read(1, 0, 4)
            };
            assert_eq!(access_shift(&req) % 32, i);
            seen |= 1 << i;
        }
        assert_eq!(seen, 0xffff);
    }
}
