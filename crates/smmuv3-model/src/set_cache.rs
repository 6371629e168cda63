//! A fixed-size set-associative cache: the storage of the TLB and of the
//! walk cache.
//!
//! Keys are two words: `k0` holds a tag (regime, VMID, ASID; the bits below
//! [`SIZE_SHIFT`]) and the log2 size of what the entry covers (the six bits
//! above), `k1` the input address divided by that size. A key lives in one
//! set of at most [`MAX_WAYS`] ways; a set's keys fill one 64-byte line
//! (followed by the set's values and chain links, so one index reaches
//! all of them), so a lookup compares a handful of words and never
//! allocates. Memory is bounded by the capacity, allocated once on the
//! first insert.
//!
//! Filling is cheapest when no chain changes: an insert replaces its own
//! key in place, and an eviction of an entry of the same tag keeps the
//! victim's place in the chain (only the per-size counts move).
//!
//! Invalidation is proportional to what it may remove:
//! - emptying everything bumps a generation number kept in the stored
//!   keys' top bits (O(1); once in 2^18 - 1 clears the slots are reset);
//! - every live entry is on the chain of its tag, so an invalidation by
//!   VMID or ASID visits only the entries of the matching tags;
//! - an invalidation by address probes the sets the range maps to, when
//!   that is cheaper than the chains.
//!
//! The candidates an invalidation visits are always a superset of the
//! entries it removes; the caller's predicate decides exactly.

use crate::tlb::FastMap;

/// Bit position of the size in `k0`; the bits below are the tag.
pub(crate) const SIZE_SHIFT: u32 = 40;
const TAG_MASK: u64 = (1 << SIZE_SHIFT) - 1;
/// Bit position of the generation in a stored `k0`.
const GEN_SHIFT: u32 = 46;
const KEY_MASK: u64 = (1 << GEN_SHIFT) - 1;
/// The most entries one cache holds, whatever the configured capacity.
pub(crate) const MAX_ENTRIES: usize = 1 << 16;
/// Associativity (fewer ways when the capacity is smaller).
pub(crate) const MAX_WAYS: usize = 4;
/// No slot (end of a chain).
const NONE: u32 = u32::MAX;

/// Returns the `k0` word of a key.
#[inline]
pub(crate) fn key0(tag: u64, size_log2: u32) -> u64 {
    tag | u64::from(size_log2 & 63) << SIZE_SHIFT
}

/// Returns the size part of a `k0` word.
#[inline]
pub(crate) fn key_size(k0: u64) -> u32 {
    (k0 >> SIZE_SHIFT & 63) as u32
}

/// Returns the tag part of a `k0` word.
#[inline]
pub(crate) fn key_tag(k0: u64) -> u64 {
    k0 & TAG_MASK
}

/// A stored key: `k0` carries the generation it was stored in (0: dead).
#[derive(Clone, Copy, Debug)]
struct Slot {
    k0: u64,
    k1: u64,
}

const DEAD: Slot = Slot { k0: 0, k1: 0 };

/// A live slot's place in its tag's chain.
#[derive(Clone, Copy, Debug)]
struct Link {
    prev: u32,
    next: u32,
    /// Position of the chain in `Chains::list`.
    chain: u32,
}

const UNLINKED: Link = Link {
    prev: NONE,
    next: NONE,
    chain: NONE,
};

/// One tag's chain: the tag, its first slot and its length.
#[derive(Clone, Copy, Debug)]
struct Chain {
    tag: u64,
    head: u32,
    len: u32,
}

/// The chains of every tag with entries (and of some without: empty
/// chains are dropped when the cache is emptied, and when too many
/// accumulate).
#[derive(Debug, Default)]
struct Chains {
    list: Vec<Chain>,
    /// Tag to position in `list`.
    index: FastMap<u64, u32>,
    /// The tags placed last and their positions (most recent first): the
    /// inserts of one translation (a nested one alternates two tags) find
    /// their chains without hashing.
    recent: [Option<(u64, u32)>; 4],
}

impl Chains {
    /// Returns the position of the chain of `tag`, if it has one.
    #[inline]
    fn find(&mut self, tag: u64) -> Option<u32> {
        if let Some((_, p)) = self.recent.iter().flatten().find(|(t, _)| *t == tag) {
            return Some(*p);
        }
        let p = *self.index.get(&tag)?;
        self.remember(tag, p);
        Some(p)
    }

    fn remember(&mut self, tag: u64, p: u32) {
        self.recent.copy_within(0..3, 1);
        self.recent[0] = Some((tag, p));
    }

    /// Returns the position of a new, empty chain for `tag`.
    fn add(&mut self, tag: u64) -> u32 {
        let p = self.list.len() as u32;
        self.index.insert(tag, p);
        self.list.push(Chain {
            tag,
            head: NONE,
            len: 0,
        });
        self.remember(tag, p);
        p
    }

    fn clear(&mut self) {
        self.list.clear();
        self.index.clear();
        self.recent = [None; 4];
    }
}

/// A placed entry, for snapshots: slot index, key, value.
pub(crate) type Placed<V> = (u32, (u64, u64), V);

/// One set: its ways' keys (one 64-byte line, what a lookup reads), their
/// values and chain links, and the way its next eviction replaces. A cache
/// of fewer than [`MAX_WAYS`] ways leaves the last ways unused.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Set<V> {
    keys: [Slot; MAX_WAYS],
    vals: [V; MAX_WAYS],
    links: [Link; MAX_WAYS],
    /// Round robin, so the model is deterministic and its snapshots
    /// reproduce evictions.
    victim: u8,
}

impl<V: Copy + Default> Default for Set<V> {
    fn default() -> Self {
        Self {
            keys: [DEAD; MAX_WAYS],
            vals: [V::default(); MAX_WAYS],
            links: [UNLINKED; MAX_WAYS],
            victim: 0,
        }
    }
}

/// The cache. `V` is the cached value; it must be cheap to copy.
///
/// A slot index (what chains link and snapshots record) is
/// `set << way_shift | way`.
#[derive(Debug)]
pub(crate) struct SetCache<V> {
    /// Empty until the first insert.
    sets: Vec<Set<V>>,
    nsets: usize,
    ways: usize,
    /// `nsets - 1` and `log2(ways)`, kept so that finding a set is a
    /// multiply, a mask and a shift.
    set_mask: usize,
    way_shift: u32,
    /// The current generation, shifted into place.
    generation: u64,
    live: usize,
    chains: Chains,
    /// Live entries per size.
    per_size: [u32; 64],
    /// Per size, the largest range (log2) an entry of that size was
    /// inserted for since the cache was last emptied: address probes widen
    /// the range by it.
    span: [u8; 64],
}

impl<V: Copy + Default> SetCache<V> {
    /// Returns an empty cache of at most `capacity` entries (at least one,
    /// at most [`MAX_ENTRIES`]; a power of two sets of ways).
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.clamp(1, MAX_ENTRIES);
        // Powers of two, so a set's first slot is a shift away.
        let ways = 1usize << cap.min(MAX_WAYS).ilog2();
        let nsets = 1usize << (cap / ways).ilog2();
        Self {
            sets: Vec::new(),
            nsets,
            ways,
            set_mask: nsets - 1,
            way_shift: ways.trailing_zeros(),
            generation: 1 << GEN_SHIFT,
            live: 0,
            chains: Chains::default(),
            per_size: [0; 64],
            span: [0; 64],
        }
    }

    /// Returns the number of entries the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.nsets * self.ways
    }

    /// Returns the number of tag chains (live or empty) a filtered
    /// [`SetCache::remove_where`] looks at.
    pub fn chain_count(&self) -> usize {
        self.chains.list.len()
    }

    /// Returns the number of live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Returns the set of a key: the address bits select it directly (so
    /// consecutive pages never conflict), offset by a hash of the tag and
    /// size (so other tags and sizes spread over other sets).
    #[inline]
    pub fn set_of(&self, k0: u64, k1: u64) -> usize {
        let mix = (k0 & KEY_MASK).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        ((k1 ^ mix) as usize) & self.set_mask
    }

    /// Returns the set and way of slot `i`.
    #[inline]
    fn split(&self, i: usize) -> (usize, usize) {
        // The mask keeps the way in the array (ways <= MAX_WAYS).
        (i >> self.way_shift, i & (self.ways - 1) & (MAX_WAYS - 1))
    }

    #[inline]
    fn slot(&self, i: usize) -> Slot {
        let (s, w) = self.split(i);
        self.sets[s].keys[w]
    }

    #[inline]
    fn val(&self, i: usize) -> &V {
        let (s, w) = self.split(i);
        &self.sets[s].vals[w]
    }

    #[inline]
    fn link_mut(&mut self, i: usize) -> &mut Link {
        let (s, w) = self.split(i);
        &mut self.sets[s].links[w]
    }

    #[inline]
    fn is_live(&self, i: usize) -> bool {
        self.slot(i).k0 & !KEY_MASK == self.generation
    }

    /// Returns the slot holding the key.
    #[inline]
    fn find(&self, k0: u64, k1: u64) -> Option<usize> {
        let s = self.set_of(k0, k1);
        let set = self.sets.get(s)?;
        let want = k0 | self.generation;
        // Ways past `ways` stay dead (see `get`).
        let w = set.keys.iter().position(|k| k.k0 == want && k.k1 == k1)?;
        Some(s << self.way_shift | w)
    }

    /// Returns the value cached for the key.
    #[inline]
    pub fn get(&self, k0: u64, k1: u64) -> Option<&V> {
        if self.live == 0 {
            // Loop invariant: a caller probing several keys of an empty
            // (or never filled) cache stops at once.
            return None;
        }
        let set = self.sets.get(self.set_of(k0, k1))?;
        let want = k0 | self.generation;
        // Ways past `ways` stay dead, so scanning all of them finds the
        // same (and unrolls into straight compares).
        set.keys
            .iter()
            .zip(&set.vals)
            .find(|(k, _)| k.k0 == want && k.k1 == k1)
            .map(|(_, v)| v)
    }

    /// Returns whether any entry of size `size_log2` is live.
    #[inline]
    pub fn has_size(&self, size_log2: u32) -> bool {
        self.per_size[(size_log2 & 63) as usize] != 0
    }

    fn allocate(&mut self) {
        self.sets = vec![Set::default(); self.nsets];
    }

    /// Caches `v` for the key, covering a range of `2^span_log2` bytes for
    /// invalidations (at least the key's size: 0 says just that). Returns
    /// the key of the entry it evicted, if any (replacing the same key
    /// evicts nothing).
    #[inline(always)]
    pub fn insert(&mut self, k0: u64, k1: u64, v: V, span_log2: u32) -> Option<(u64, u64)> {
        let s = self.set_of(k0, k1);
        // `&{ v }` below: the out-of-line calls get a copy's address, never
        // `v`'s own, so that `v` can stay in registers and be stored into
        // its way from there (from memory it was copied with loads wider
        // than the stores that built it: a store-forwarding stall).
        if s >= self.sets.len() {
            return self.insert_first(k0, k1, &{ v }, span_log2);
        }
        if span_log2 > key_size(k0) {
            // Probes widen by at least the key's own size anyway.
            self.widen(k0, span_log2);
        }
        let want = k0 | self.generation;
        let ways = self.ways;
        let set = &mut self.sets[s];
        // A stored key against the one inserted: zero when equal, generation
        // bits set when the stored one is dead, tag bits set when it is on
        // another tag's chain.
        let w = if ways == 1 {
            // Direct mapped: one way to look at, no victim to choose.
            let k = set.keys[0];
            let d = k.k0 ^ want;
            if d == 0 && k.k1 == k1 {
                set.vals[0] = v;
                return None;
            }
            if d >> GEN_SHIFT != 0 {
                self.place(s << self.way_shift, k0, k1, &{ v });
                return None;
            }
            if d & TAG_MASK == 0 {
                // The eviction below, with `d` at hand (the common case
                // of a small cache: one walk's entries replace each other).
                if d != 0 {
                    self.per_size[key_size(k.k0) as usize] -= 1;
                    self.per_size[key_size(k0) as usize] += 1;
                }
                set.keys[0] = Slot { k0: want, k1 };
                set.vals[0] = v;
                return Some((k.k0 & KEY_MASK, k.k1));
            }
            0
        } else {
            // One pass: the key itself (replaced in place), else the first
            // dead way.
            let mut free = None;
            for (w, k) in set.keys.iter().enumerate().take(ways) {
                let d = k.k0 ^ want;
                if d == 0 && k.k1 == k1 {
                    set.vals[w] = v;
                    return None;
                }
                if free.is_none() && d >> GEN_SHIFT != 0 {
                    free = Some(w);
                }
            }
            if let Some(w) = free {
                self.place(s << self.way_shift | w, k0, k1, &{ v });
                return None;
            }
            let w = usize::from(set.victim) & (MAX_WAYS - 1);
            set.victim = ((w + 1) & (ways - 1)) as u8;
            w
        };
        // The victim is live: `d` has no generation bits.
        let old = set.keys[w];
        let d = old.k0 ^ want;
        if d & TAG_MASK == 0 {
            // Same chain: replace in place, no relinking.
            if d != 0 {
                // Another size.
                self.per_size[key_size(old.k0) as usize] -= 1;
                self.per_size[key_size(k0) as usize] += 1;
            }
            set.keys[w] = Slot { k0: want, k1 };
            set.vals[w] = v;
        } else {
            let i = s << self.way_shift | w;
            self.unlink(i);
            self.place(i, k0, k1, &{ v });
        }
        Some((old.k0 & KEY_MASK, old.k1))
    }

    /// [`SetCache::insert`] into a cache not allocated yet.
    #[cold]
    #[inline(never)]
    fn insert_first(&mut self, k0: u64, k1: u64, v: &V, span_log2: u32) -> Option<(u64, u64)> {
        self.allocate();
        self.insert(k0, k1, *v, span_log2)
    }

    #[inline]
    fn widen(&mut self, k0: u64, span_log2: u32) {
        let s = key_size(k0) as usize;
        let span = span_log2.clamp(key_size(k0), 64) as u8;
        self.span[s] = self.span[s].max(span);
    }

    /// Makes slot `i` (dead) hold the key, linked into its tag's chain.
    fn place(&mut self, i: usize, k0: u64, k1: u64, v: &V) {
        let p = match self.chains.find(key_tag(k0)) {
            Some(p) => p,
            None => {
                if self.chains.list.len() > 2 * self.capacity() + 16 {
                    self.compact_chains();
                }
                self.chains.add(key_tag(k0))
            }
        };
        let chain = &mut self.chains.list[p as usize];
        let old_head = chain.head;
        chain.head = i as u32;
        chain.len += 1;
        let generation = self.generation;
        let (s, w) = self.split(i);
        let set = &mut self.sets[s];
        set.keys[w] = Slot {
            k0: k0 | generation,
            k1,
        };
        set.links[w] = Link {
            prev: NONE,
            next: old_head,
            chain: p,
        };
        set.vals[w] = *v;
        if old_head != NONE {
            self.link_mut(old_head as usize).prev = i as u32;
        }
        self.live += 1;
        self.per_size[key_size(k0) as usize] += 1;
    }

    /// Drops the empty chains (more tags were used than entries fit).
    fn compact_chains(&mut self) {
        let old = std::mem::take(&mut self.chains.list);
        self.chains.clear();
        let mut moved = vec![NONE; old.len()];
        for (i, c) in old.iter().enumerate() {
            if c.len != 0 {
                moved[i] = self.chains.list.len() as u32;
                self.chains.index.insert(c.tag, moved[i]);
                self.chains.list.push(*c);
            }
        }
        for i in 0..self.slot_count() {
            if self.is_live(i) {
                let l = self.link_mut(i);
                l.chain = moved[l.chain as usize];
            }
        }
    }

    /// Returns the number of slots allocated.
    fn slot_count(&self) -> usize {
        self.sets.len() * self.ways
    }

    /// Removes live slot `i`.
    fn unlink(&mut self, i: usize) {
        let (s, w) = self.split(i);
        let l = self.sets[s].links[w];
        if l.next != NONE {
            self.link_mut(l.next as usize).prev = l.prev;
        }
        if l.prev != NONE {
            self.link_mut(l.prev as usize).next = l.next;
        }
        let c = &mut self.chains.list[l.chain as usize];
        if l.prev == NONE {
            c.head = l.next;
        }
        c.len -= 1;
        let set = &mut self.sets[s];
        self.per_size[key_size(set.keys[w].k0) as usize] -= 1;
        set.keys[w] = DEAD;
        set.links[w] = UNLINKED;
        self.live -= 1;
    }

    /// Empties the cache in O(1); returns the number of entries removed.
    pub fn clear(&mut self) -> usize {
        let n = self.live;
        self.generation = self.generation.wrapping_add(1 << GEN_SHIFT);
        if self.generation == 0 {
            // Once in 2^18 - 1 clears: forget the old generations for real.
            for set in &mut self.sets {
                set.keys = [DEAD; MAX_WAYS];
            }
            self.generation = 1 << GEN_SHIFT;
        }
        self.live = 0;
        self.chains.clear();
        self.per_size = [0; 64];
        self.span = [0; 64];
        n
    }

    /// Returns the live tags.
    pub fn tags(&self) -> impl Iterator<Item = u64> + '_ {
        self.chains
            .list
            .iter()
            .filter(|c| c.len != 0)
            .map(|c| c.tag)
    }

    /// Removes every entry for which `remove(k0, k1, value)` returns true,
    /// consulting it only for entries whose tag `tag_may_match` accepts
    /// and, when `range` (`[start, end)` of input addresses) is given, whose
    /// range (the key's, widened by the span it was inserted with) overlaps
    /// it. Returns the number of entries removed.
    pub fn remove_where(
        &mut self,
        tag_may_match: impl Fn(u64) -> bool,
        range: Option<(u64, u64)>,
        mut remove: impl FnMut(u64, u64, &V) -> bool,
    ) -> usize {
        let tags: Vec<(u64, u32)> = self
            .chains
            .list
            .iter()
            .enumerate()
            .filter(|(_, c)| c.len != 0 && tag_may_match(c.tag))
            .map(|(p, c)| (c.tag, p as u32))
            .collect();
        if tags.is_empty() {
            return 0;
        }
        let chain_cost: u128 = tags
            .iter()
            .map(|&(_, p)| u128::from(self.chains.list[p as usize].len))
            .sum();
        let probes = range.map(|r| self.probe_plan(r));
        let probe_cost = probes.as_ref().map(|p| {
            let per_tag: u128 = p.iter().map(|&(_, lo, hi)| hi - lo).sum();
            per_tag * tags.len() as u128 * self.ways as u128
        });
        let mut n = 0;
        match probes {
            Some(plan) if probe_cost.is_some_and(|c| c <= chain_cost) => {
                for &(tag, _) in &tags {
                    for &(size, lo, hi) in &plan {
                        let k0 = key0(tag, size);
                        for page in lo..hi {
                            let k1 = page as u64;
                            if let Some(i) = self.find(k0, k1) {
                                if remove(k0, k1, self.val(i)) {
                                    self.unlink(i);
                                    n += 1;
                                }
                            }
                        }
                    }
                }
            }
            _ => {
                for (_, p) in tags {
                    let mut i = self.chains.list[p as usize].head;
                    while i != NONE {
                        let s = self.slot(i as usize);
                        let (set, w) = self.split(i as usize);
                        let next = self.sets[set].links[w].next;
                        if remove(s.k0 & KEY_MASK, s.k1, self.val(i as usize)) {
                            self.unlink(i as usize);
                            n += 1;
                        }
                        i = next;
                    }
                }
            }
        }
        n
    }

    /// Returns, per live size, the pages `[lo, hi)` whose entries may
    /// overlap `[start, end)`.
    fn probe_plan(&self, (start, end): (u64, u64)) -> Vec<(u32, u128, u128)> {
        let mut plan = Vec::new();
        if start >= end {
            return plan;
        }
        for size in 0..64u32 {
            if self.per_size[size as usize] == 0 {
                continue;
            }
            // An entry whose range (2^span, aligned) overlaps the
            // invalidated range has its key address in
            // [align_down(start, span), align_up(end, span)).
            let span = u32::from(self.span[size as usize]).max(size);
            let unit = 1u128 << span;
            let lo = u128::from(start) & !(unit - 1);
            let hi = (u128::from(end) + unit - 1) & !(unit - 1);
            plan.push((size, lo >> size, hi.min(1u128 << 64) >> size));
        }
        plan
    }

    /// Returns every live entry with its slot, in slot order.
    pub fn placed(&self) -> Vec<Placed<V>> {
        (0..self.slot_count())
            .filter(|&i| self.is_live(i))
            .map(|i| {
                let s = self.slot(i);
                (i as u32, (s.k0 & KEY_MASK, s.k1), *self.val(i))
            })
            .collect()
    }

    /// Returns the sets whose next victim is not way 0, with that way.
    pub fn victims(&self) -> Vec<(u32, u8)> {
        self.sets
            .iter()
            .enumerate()
            .filter(|(_, set)| set.victim != 0)
            .map(|(s, set)| (s as u32, set.victim))
            .collect()
    }

    /// Returns a cache of `capacity` holding `placed` (each in its slot when
    /// that slot is free and in the key's set, else inserted) with the
    /// given eviction state; `span_of` gives each entry's range.
    pub fn restore(
        capacity: usize,
        placed: &[Placed<V>],
        victims: &[(u32, u8)],
        span_of: impl Fn(u64, &V) -> u32,
    ) -> Self {
        let mut c = Self::new(capacity);
        if placed.is_empty() && victims.is_empty() {
            return c;
        }
        c.allocate();
        for &(slot, (k0, k1), v) in placed {
            let i = slot as usize;
            let k0 = k0 & KEY_MASK;
            let fits = i < c.slot_count()
                && i >> c.way_shift == c.set_of(k0, k1)
                && !c.is_live(i)
                && c.find(k0, k1).is_none();
            if fits {
                c.place(i, k0, k1, &v);
                c.widen(k0, span_of(k0, &v));
            } else {
                c.insert(k0, k1, v, span_of(k0, &v));
            }
        }
        for &(set, w) in victims {
            let ways = c.ways;
            if let Some(s) = c.sets.get_mut(set as usize) {
                s.victim = (usize::from(w) % ways) as u8;
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 0x55;

    #[test]
    fn geometry_is_bounded_and_never_exceeds_the_capacity() {
        for (cap, sets, ways) in [
            (0, 1, 1),
            (1, 1, 1),
            (3, 1, 2),
            (4, 1, 4),
            (7, 1, 4),
            (8, 2, 4),
            (100, 16, 4),
            (1 << 16, 1 << 14, 4),
            (usize::MAX, 1 << 14, 4),
        ] {
            let c = SetCache::<u64>::new(cap);
            assert_eq!((c.nsets, c.ways), (sets, ways), "capacity {cap}");
            assert!(c.capacity() <= cap.max(1));
        }
    }

    #[test]
    fn small_caches_find_exactly_what_they_hold() {
        // Sets have MAX_WAYS ways; a cache of fewer ways must never use
        // (or find anything in) the ways past its own, which lookups scan.
        for cap in [1, 2, 3] {
            let mut c = SetCache::<u64>::new(cap);
            let keys: Vec<(u64, u64)> = (0..40u64)
                .map(|p| (key0(T + p % 3, 12 + (p % 2) as u32 * 9), p))
                .collect();
            for (n, &(k0, k1)) in keys.iter().enumerate() {
                c.insert(k0, k1, k1, 0);
                let found: Vec<_> = keys[..=n]
                    .iter()
                    .filter(|&&(k0, k1)| c.get(k0, k1).is_some())
                    .collect();
                assert_eq!(found.len(), c.len(), "capacity {cap} after {n}");
                assert!(c.len() <= c.capacity());
                assert_eq!(c.get(k0, k1), Some(&k1));
            }
            assert_eq!(c.len(), c.capacity());
            let spare = c.sets.iter().flat_map(|s| &s.keys[c.ways..]);
            assert!(spare.clone().all(|k| k.k0 == 0), "capacity {cap}");
        }
    }

    #[test]
    fn eviction_within_a_tag_moves_the_per_size_counts() {
        // One slot: each insert replaces the previous entry of the same tag
        // without relinking; the counts must follow the sizes.
        let mut c = SetCache::<u64>::new(1);
        for (n, size) in [39, 30, 21, 21, 39].into_iter().enumerate() {
            let k0 = key0(T, size);
            let evicted = c.insert(k0, n as u64, 0, 0);
            assert_eq!(evicted.is_some(), n != 0);
            for s in [21, 30, 39] {
                assert_eq!(c.has_size(s), s == size, "insert {n}, size {s}");
            }
            assert_eq!(c.len(), 1);
        }
        // An invalidation by address still finds the entry that stayed.
        let n = c.remove_where(|_| true, Some((4 << 39, (4 << 39) + 1)), |_, _, _| true);
        assert_eq!((n, c.len()), (1, 0));
        assert!(!c.has_size(39));
    }

    #[test]
    fn consecutive_pages_fill_every_slot_before_evicting() {
        let mut c = SetCache::<u64>::new(64);
        for p in 0..64 {
            assert_eq!(c.insert(key0(T, 12), p, p * 10, 12), None);
        }
        assert_eq!(c.len(), 64);
        for p in 0..64 {
            assert_eq!(c.get(key0(T, 12), p), Some(&(p * 10)));
        }
        // The 65th goes to a full set and evicts exactly one entry of it.
        let ev = c.insert(key0(T, 12), 64, 640, 12).unwrap();
        assert_eq!(c.len(), 64);
        assert_eq!(c.get(ev.0, ev.1), None);
        assert_eq!(c.set_of(ev.0, ev.1), c.set_of(key0(T, 12), 64));
    }

    #[test]
    fn a_full_set_evicts_its_ways_round_robin() {
        let mut c = SetCache::<u64>::new(4);
        let k = key0(T, 12);
        for p in 0..4 {
            c.insert(k, p, p, 12);
        }
        let evicted: Vec<u64> = (4..8).map(|p| c.insert(k, p, p, 12).unwrap().1).collect();
        assert_eq!(evicted, [0, 1, 2, 3]);
        assert_eq!(c.len(), 4);
        // Replacing a live key evicts nothing.
        assert_eq!(c.insert(k, 5, 50, 12), None);
        assert_eq!(c.get(k, 5), Some(&50));
    }

    #[test]
    fn clear_is_a_new_generation_and_slots_are_reused() {
        let mut c = SetCache::<u64>::new(16);
        for p in 0..10 {
            c.insert(key0(T, 12), p, p, 12);
        }
        assert_eq!(c.clear(), 10);
        assert_eq!(c.len(), 0);
        assert_eq!(c.tags().count(), 0);
        assert!((0..10).all(|p| c.get(key0(T, 12), p).is_none()));
        assert!(!c.has_size(12));
        for p in 0..16 {
            assert_eq!(c.insert(key0(T, 12), p, p, 12), None);
        }
        assert_eq!(c.len(), 16);
    }

    #[test]
    fn generation_wrap_forgets_old_entries() {
        let mut c = SetCache::<u64>::new(8);
        // The last generation before the wrap.
        c.generation = !KEY_MASK;
        c.insert(key0(T, 12), 1, 1, 12);
        assert_eq!(c.get(key0(T, 12), 1), Some(&1));
        c.clear();
        assert_eq!(c.generation, 1 << GEN_SHIFT);
        assert_eq!(c.get(key0(T, 12), 1), None);
        assert!(c.sets.iter().all(|s| s.keys.iter().all(|k| k.k0 == 0)));
    }

    #[test]
    fn remove_where_by_tag_visits_only_that_tag() {
        let mut c = SetCache::<u64>::new(256);
        for p in 0..20 {
            c.insert(key0(1, 12), p, p, 12);
            c.insert(key0(2, 12), p, p, 12);
        }
        let mut visited = 0;
        let n = c.remove_where(
            |t| t == 1,
            None,
            |k0, _, _| {
                visited += 1;
                assert_eq!(key_tag(k0), 1);
                true
            },
        );
        assert_eq!((n, visited), (20, 20));
        assert_eq!(c.len(), 20);
        assert!((0..20).all(|p| c.get(key0(2, 12), p).is_some()));
        assert_eq!(c.tags().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_small_range_probes_only_its_pages() {
        let mut c = SetCache::<u64>::new(1024);
        for p in 0..512 {
            c.insert(key0(T, 12), p, p, 12);
        }
        let mut visited = Vec::new();
        let n = c.remove_where(
            |_| true,
            Some((5 << 12, 7 << 12)),
            |_, k1, _| {
                visited.push(k1);
                true
            },
        );
        assert_eq!(n, 2);
        assert_eq!(visited, [5, 6]);
        assert_eq!(c.len(), 510);
    }

    #[test]
    fn a_wide_span_widens_the_probe() {
        // A 4K entry that stands for a 2M range is found by an invalidation
        // anywhere in those 2M.
        let mut c = SetCache::<u64>::new(1024);
        c.insert(key0(T, 12), 0x200, 1, 21);
        let n = c.remove_where(|_| true, Some((0x3f_f000, 0x40_0000)), |_, _, _| true);
        assert_eq!(n, 1);
    }

    #[test]
    fn restore_reproduces_slots_and_victims() {
        let mut c = SetCache::<u64>::new(8);
        for p in [0, 2, 4, 6, 8, 10] {
            c.insert(key0(T, 12), p, p, 12);
        }
        // Even pages share a set: two of them were evicted.
        assert_eq!(c.len(), 4);
        let placed = c.placed();
        let victims = c.victims();
        assert!(!victims.is_empty());
        let mut r = SetCache::restore(8, &placed, &victims, |k0, _| key_size(k0));
        assert_eq!(r.placed(), placed);
        assert_eq!(r.len(), 4);
        for p in 12..20 {
            assert_eq!(
                r.insert(key0(T, 12), p, p, 12),
                c.insert(key0(T, 12), p, p, 12)
            );
        }
    }
}
