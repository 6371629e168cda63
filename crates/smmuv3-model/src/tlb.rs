//! TLB and walk cache: entries stay until a matching invalidation command
//! removes them, so a driver that forgets a TLBI observes the stale
//! translation (as on hardware with a big TLB).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::set_cache::{Placed, SetCache, key_size, key_tag, key0};
use crate::walk::{Perms, TableAttrs};

/// A small multiplicative hasher: keys are already well-mixed integers and
/// the TLB hit path must be cheap.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }
}

impl Tag {
    /// Returns the tag as the low bits of a cache key.
    #[inline]
    pub(crate) fn packed(self) -> u64 {
        let regime = match self.regime {
            Regime::Nh => 0u64,
            Regime::El2 => 1,
            Regime::S2 => 2,
            Regime::Nested => 3,
        };
        regime | u64::from(self.vmid) << 8 | u64::from(self.asid) << 24
    }

    fn unpack(p: u64) -> Self {
        let regime = match p & 0xff {
            0 => Regime::Nh,
            1 => Regime::El2,
            2 => Regime::S2,
            _ => Regime::Nested,
        };
        Tag {
            regime,
            vmid: (p >> 8) as u16,
            asid: (p >> 24) as u16,
        }
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Translation regime an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) enum Regime {
    /// Stage 1 only, non-hypervisor EL1&0.
    Nh,
    /// Stage 1 only, EL2.
    El2,
    /// Stage 2 only (also the stage-2 walks of nested table fetches).
    S2,
    /// Combined stage 1 + stage 2.
    Nested,
}

/// TLB tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(crate) struct Tag {
    pub regime: Regime,
    pub vmid: u16,
    pub asid: u16,
}

/// A cached leaf translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TlbEntry {
    /// Output address of the first byte of the entry.
    pub out_base: u64,
    /// log2 of the range this entry translates.
    pub size_log2: u32,
    /// Range that invalidations must match: the stage-1 leaf for stage-1
    /// and nested entries (a TLBI anywhere in a block kills the block), the
    /// stage-2 leaf for stage-2 entries.
    pub match_base: u64,
    pub match_size_log2: u32,
    /// Level of the leaf invalidations match TTL against.
    pub level: u32,
    /// Granule shift of the matched stage (for range TLBI TG checks).
    pub granule_shift: u32,
    pub global: bool,
    /// Permissions of the whole translation (both stages when nested).
    pub perms: Perms,
    /// Stage-1 permissions alone, to tell which stage a cached fault
    /// belongs to.
    pub s1_perms: Perms,
    /// Intermediate address of the entry's first byte (nested entries).
    pub ipa_base: u64,
}

/// A cached table descriptor (walk cache): the next-level table covering
/// `[base, base + 2^size_log2)`, its granule and the hierarchical
/// attributes accumulated down to it.
///
/// One word: the table address is granule-aligned, so its low 12 bits hold
/// the attributes (bits \[3:0\]) and the granule (bits \[6:4\], shift
/// minus 12). Each walk builds and stores up to three of these, and a
/// two-word entry was copied into the cache with a 16-byte load over the
/// separate stores that had just built it, which the CPU cannot forward
/// (a stall per fill).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct WalkEntry(u64);

impl WalkEntry {
    const ATTRS: u64 = 0xf;
    const GRANULE_SHIFT: u32 = 4;
    const LOW: u64 = 0xfff;

    /// Returns the entry for the table at `next_table` (aligned to its
    /// granule of 2^`granule_shift` bytes, 12 to 16) reached with `attrs`.
    #[inline]
    pub fn new(next_table: u64, attrs: TableAttrs, granule_shift: u32) -> Self {
        debug_assert!(next_table & Self::LOW == 0 && (12..=16).contains(&granule_shift));
        Self(
            next_table & !Self::LOW
                | u64::from(granule_shift - 12) << Self::GRANULE_SHIFT
                | u64::from(attrs.bits()) & Self::ATTRS,
        )
    }

    /// Returns the next-level table's address.
    #[inline]
    pub fn next_table(self) -> u64 {
        self.0 & !Self::LOW
    }

    /// Returns the hierarchical attributes accumulated down to the table.
    #[inline]
    pub fn attrs(self) -> TableAttrs {
        TableAttrs::from_bits((self.0 & Self::ATTRS) as u8)
    }

    /// Returns log2 of the table's granule.
    #[inline]
    pub fn granule_shift(self) -> u32 {
        12 + (self.0 >> Self::GRANULE_SHIFT & 7) as u32
    }
}

/// What an invalidation command selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InvScope {
    /// Regimes affected.
    pub regimes: &'static [Regime],
    /// Only this VMID (None: any).
    pub vmid: Option<u16>,
    /// Only this ASID, global entries matching any (None: any ASID).
    pub asid: Option<u16>,
    /// Skip global entries (TLBI_NH_ASID).
    pub non_global_only: bool,
    /// Address range `[start, end)`; None: all addresses.
    pub range: Option<(u64, u64)>,
    /// Leaf level to match (TTL), None: any level.
    pub level: Option<u32>,
    /// Granule the range command was built for (TG), None: any.
    pub granule_shift: Option<u32>,
    /// Leaf-only: walk-cache entries survive.
    pub leaf_only: bool,
}

impl InvScope {
    pub fn all(regimes: &'static [Regime]) -> Self {
        Self {
            regimes,
            vmid: None,
            asid: None,
            non_global_only: false,
            range: None,
            level: None,
            granule_shift: None,
            leaf_only: false,
        }
    }

    fn tag_matches(&self, t: &Tag, global: bool) -> bool {
        self.regimes.contains(&t.regime)
            && self.vmid.is_none_or(|v| v == t.vmid)
            && self.asid.is_none_or(|a| a == t.asid || global)
            && !(self.non_global_only && global)
    }

    fn range_matches(&self, base: u64, size_log2: u32) -> bool {
        match self.range {
            None => true,
            Some((s, e)) => {
                let end = base.saturating_add((1u64 << size_log2) - 1);
                base < e && end >= s
            }
        }
    }
}

/// Every leaf size of the three granules (4K, 16K, 64K pages and blocks).
const LEAF_SIZES: [u32; 10] = [12, 14, 16, 21, 25, 29, 30, 36, 39, 42];

/// TLB + walk cache.
///
/// Both are fixed-size set-associative caches ([`SetCache`]): a full set
/// evicts one entry (round robin), which is always architecturally allowed.
///
/// Break-before-make (IDR3.BBML): with level 2 a cached block and the
/// table software put in its place in one store are both "programmed
/// entries" and either may translate (the cached one is used). Below level
/// 2 such a change of a live translation, with both translations possibly
/// cached, is reported as a TLB conflict (an architecturally allowed
/// outcome): a hit on a block entry is re-walked, and a walk whose leaf
/// has another size than an entry still cached for the same address is
/// not cached and makes the access fault with F_TLB_CONFLICT. A correct
/// break-before-make sequence invalidates the block before the table is
/// written, so it never conflicts. Table-to-block merges are only caught
/// when the walked address itself still has a smaller entry cached.
pub(crate) struct Tlb {
    leaves: SetCache<TlbEntry>,
    walks: SetCache<WalkEntry>,
    capacity: usize,
    /// IDR3.BBML < 2: block/table changes without break-before-make conflict.
    strict_bbm: bool,
    /// Cleared: nothing is cached, every translation walks.
    pub enabled: bool,
    /// Walk-cache entries evicted.
    ///
    /// Counted apart from the leaf evictions, not as one total beside
    /// them: with two adjacent counters bumped by one fill, LLVM updated
    /// both with one 16-byte load and store, and that load read the
    /// 8-byte store of the walk-cache fill just before (a store-forwarding
    /// stall on every walk).
    pub walk_evictions: u64,
    /// Leaf entries evicted (what `Iotlb` copies may have to follow).
    pub leaf_evictions: u64,
    pub granule_mismatch: u64,
    pub conflicts: u64,
    /// Record the leaf entries that go (for the `Iotlb` copies).
    pub log_removals: bool,
    removed: Removed,
}

/// At most this many removed keys are listed; beyond, `all` is set.
const REMOVED_LIMIT: usize = 4096;

/// Leaf entries removed since the list was last taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Keys of the removed entries (tag and size, address / size).
    pub keys: Vec<(u64, u64)>,
    /// Every entry may have gone (the TLB was emptied, or too many went
    /// to list).
    pub all: bool,
}

impl Removed {
    fn note(&mut self, key: (u64, u64)) {
        if self.keys.len() < REMOVED_LIMIT {
            self.keys.push(key);
        } else {
            self.all = true;
        }
    }

    /// Returns whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.all
    }
}

/// The TLB's content for a model snapshot: live entries with their slots,
/// and the sets whose next victim is not their first way.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TlbSnapshot {
    leaves: Vec<Placed<TlbEntry>>,
    walks: Vec<Placed<WalkEntry>>,
    #[serde(default)]
    leaf_victims: Vec<(u32, u8)>,
    #[serde(default)]
    walk_victims: Vec<(u32, u8)>,
    capacity: usize,
    enabled: bool,
    evictions: u64,
    #[serde(default)]
    leaf_evictions: u64,
    granule_mismatch: u64,
    #[serde(default)]
    strict_bbm: bool,
    #[serde(default)]
    conflicts: u64,
}

impl TlbSnapshot {
    /// Returns the largest of the TLB's counters (see
    /// `Stats::max_counter`).
    pub fn max_counter(&self) -> u64 {
        [
            self.evictions,
            self.leaf_evictions,
            self.granule_mismatch,
            self.conflicts,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// Returns whether the snapshot is one a TLB of `capacity` entries and
    /// break-before-make level `bbml` over `oas_bits` of output address can
    /// hold: every translation served from it shifts by its sizes and adds
    /// offsets to its addresses, so a restored snapshot is checked first.
    pub fn is_consistent(&self, capacity: usize, bbml: u8, oas_bits: u8) -> bool {
        let size_ok = |s: u32| (12..=52).contains(&s);
        let addr_ok = |a: u64, size: u32| a >> oas_bits == 0 && a & ((1u64 << size) - 1) == 0;
        let leaves = self.leaves.iter().all(|&(_, (k0, _), e)| {
            size_ok(e.size_log2)
                && key_size(k0) == e.size_log2
                && size_ok(e.match_size_log2)
                && e.match_base & ((1u64 << e.match_size_log2) - 1) == 0
                && e.level <= 3
                && matches!(e.granule_shift, 12 | 14 | 16)
                && addr_ok(e.out_base, e.size_log2)
                && addr_ok(e.ipa_base, e.size_log2)
        });
        let walks = self.walks.iter().all(|&(_, (k0, _), w)| {
            size_ok(key_size(k0)) && matches!(w.granule_shift(), 12 | 14 | 16)
        });
        self.capacity == capacity && self.strict_bbm == (bbml < 2) && leaves && walks
    }
}

/// Returns the range (log2) invalidations match a leaf entry by.
fn leaf_span(_k0: u64, e: &TlbEntry) -> u32 {
    e.match_size_log2
}

fn walk_span(k0: u64, _w: &WalkEntry) -> u32 {
    key_size(k0)
}

impl Tlb {
    pub fn snapshot(&self) -> TlbSnapshot {
        TlbSnapshot {
            leaves: self.leaves.placed(),
            walks: self.walks.placed(),
            leaf_victims: self.leaves.victims(),
            walk_victims: self.walks.victims(),
            capacity: self.capacity,
            enabled: self.enabled,
            evictions: self.evictions(),
            leaf_evictions: self.leaf_evictions,
            granule_mismatch: self.granule_mismatch,
            strict_bbm: self.strict_bbm,
            conflicts: self.conflicts,
        }
    }

    /// Returns every live leaf entry: its tag, the input address it is
    /// cached for (its first byte) and the entry.
    pub fn leaf_entries(&self) -> Vec<(Tag, u64, TlbEntry)> {
        self.leaves
            .placed()
            .into_iter()
            .map(|(_, (k0, k1), e)| (Tag::unpack(key_tag(k0)), k1 << key_size(k0), e))
            .collect()
    }

    /// Returns every live walk-cache entry: its tag, the input address of
    /// the first byte its table descriptor resolves, that level's lowest
    /// input bit, and the entry.
    pub fn walk_entries(&self) -> Vec<(Tag, u64, u32, WalkEntry)> {
        self.walks
            .placed()
            .into_iter()
            .map(|(_, (k0, k1), w)| {
                let lsb = key_size(k0);
                (Tag::unpack(key_tag(k0)), k1 << lsb, lsb, w)
            })
            .collect()
    }

    pub fn from_snapshot(s: &TlbSnapshot) -> Self {
        Self {
            leaves: SetCache::restore(s.capacity, &s.leaves, &s.leaf_victims, leaf_span),
            walks: SetCache::restore(s.capacity, &s.walks, &s.walk_victims, walk_span),
            capacity: s.capacity,
            enabled: s.enabled,
            walk_evictions: s.evictions.saturating_sub(s.leaf_evictions),
            leaf_evictions: s.leaf_evictions,
            granule_mismatch: s.granule_mismatch,
            strict_bbm: s.strict_bbm,
            conflicts: s.conflicts,
            log_removals: false,
            removed: Removed::default(),
        }
    }

    /// Returns (and forgets) the leaf entries removed since the last call,
    /// when `log_removals` is set.
    pub fn take_removed(&mut self) -> Removed {
        std::mem::take(&mut self.removed)
    }

    /// Returns whether leaf entries were removed since `take_removed`.
    pub fn removed_any(&self) -> bool {
        !self.removed.is_empty()
    }

    /// Returns the key of the entry `lookup` would return for `ia`.
    pub fn key_of(tag: Tag, ia: u64, e: &TlbEntry) -> (u64, u64) {
        (key0(tag.packed(), e.size_log2), ia >> e.size_log2)
    }

    pub fn new(capacity: usize) -> Self {
        Self {
            leaves: SetCache::new(capacity),
            walks: SetCache::new(capacity),
            capacity,
            strict_bbm: false,
            enabled: true,
            walk_evictions: 0,
            leaf_evictions: 0,
            granule_mismatch: 0,
            conflicts: 0,
            log_removals: false,
            removed: Removed::default(),
        }
    }

    /// Returns the number of entries evicted, leaves and walk-cache
    /// entries together.
    pub fn evictions(&self) -> u64 {
        self.walk_evictions + self.leaf_evictions
    }

    /// Sets the eviction counts to zero.
    pub fn reset_evictions(&mut self) {
        self.walk_evictions = 0;
        self.leaf_evictions = 0;
    }

    /// Returns whether block hits are walked again (BBML < 2), so that no
    /// copy of a block entry may serve a translation either.
    pub fn rewalks_blocks(&self) -> bool {
        self.strict_bbm
    }

    /// Sets the break-before-make level the TLB honours (IDR3.BBML).
    pub fn set_bbml(&mut self, bbml: u8) {
        self.strict_bbm = bbml < 2;
    }

    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Returns the number of walk-cache entries.
    #[cfg(test)]
    pub fn walk_len(&self) -> usize {
        self.walks.len()
    }

    /// Returns the entry translating `ia`, trying each size in `sizes`
    /// (smallest first).
    #[inline]
    pub fn lookup(&self, tag: Tag, ia: u64, sizes: &[u32]) -> Option<&TlbEntry> {
        self.lookup_packed(tag.packed(), ia, sizes)
    }

    /// As [`Tlb::lookup`], for the packed tag `t` ([`Tag::packed`]).
    #[inline(always)]
    pub fn lookup_packed(&self, t: u64, ia: u64, sizes: &[u32]) -> Option<&TlbEntry> {
        for (n, &s) in sizes.iter().enumerate() {
            if !self.leaves.has_size(s) {
                continue;
            }
            if let Some(e) = self.leaves.get(key0(t, s), ia >> s) {
                if self.strict_bbm && n != 0 {
                    // A block: walk again to see whether it was replaced
                    // by a table without break-before-make.
                    return None;
                }
                return Some(e);
            }
        }
        None
    }

    /// As [`Tlb::insert_packed`], for the tag `tag`.
    #[cfg(test)]
    pub fn insert(&mut self, tag: Tag, ia: u64, e: TlbEntry) -> bool {
        self.insert_packed(tag.packed(), ia, e)
    }

    /// Caches `e` for `ia` under the packed tag `t` ([`Tag::packed`]).
    /// Returns true, caching nothing, when break-before-make is enforced
    /// and an entry of another size is still cached for `ia`: a TLB
    /// conflict. Caches nothing (and reports no conflict) when the TLB is
    /// disabled.
    #[inline(always)]
    pub fn insert_packed(&mut self, t: u64, ia: u64, e: TlbEntry) -> bool {
        if !self.enabled {
            return false;
        }
        if self.strict_bbm || self.log_removals {
            // `{ e }`: the call gets a copy's address, never `e`'s.
            return self.insert_checked(t, ia, &{ e });
        }
        self.fill(t, ia, e);
        false
    }

    /// [`Tlb::insert_packed`] with its checks: break-before-make conflicts,
    /// and the entries an `Iotlb` copy may have to follow.
    ///
    /// Out of line, given a copy of the entry: these checks use the entry
    /// by reference, and the address of the caller's entry, once taken,
    /// keeps the entry a walk just built in memory, to be copied into the
    /// cache from there with loads wider than the stores that built it (a
    /// store-forwarding stall on every fill).
    #[inline(never)]
    fn insert_checked(&mut self, t: u64, ia: u64, e: &TlbEntry) -> bool {
        if self.strict_bbm
            && LEAF_SIZES.iter().any(|&s| {
                s != e.size_log2
                    && self.leaves.has_size(s)
                    && self.leaves.get(key0(t, s), ia >> s).is_some()
            })
        {
            self.conflicts += 1;
            return true;
        }
        let key = (key0(t, e.size_log2), ia >> e.size_log2);
        if self.log_removals && self.leaves.get(key.0, key.1).is_some_and(|old| old != e) {
            // Replaced by a different translation: its copies are stale.
            self.removed.note(key);
        }
        self.fill(t, ia, *e);
        false
    }

    /// Caches `e` for `ia`, counting (and, when asked, listing) the entry
    /// it evicts.
    #[inline(always)]
    fn fill(&mut self, t: u64, ia: u64, e: TlbEntry) {
        let key = (key0(t, e.size_log2), ia >> e.size_log2);
        if let Some(old) = self.leaves.insert(key.0, key.1, e, e.match_size_log2) {
            self.leaf_evictions += 1;
            if self.log_removals {
                self.removed.note(old);
            }
        }
    }

    /// Returns the table descriptor cached for `ia` at the level whose
    /// lowest input bit is `lsb`, for the packed tag `t`.
    #[inline]
    pub fn walk_get(&self, t: u64, ia: u64, lsb: u32) -> Option<&WalkEntry> {
        if !self.walks.has_size(lsb) {
            return None;
        }
        self.walks.get(key0(t, lsb), ia >> lsb)
    }

    #[cfg(test)]
    pub fn walk_insert(&mut self, tag: Tag, ia: u64, lsb: u32, w: WalkEntry) {
        if self.enabled {
            self.walk_insert_packed(tag.packed(), ia, lsb, w);
        }
    }

    /// Caches the table descriptors one walk of `ia` used, in walk order:
    /// (lsb of the level the descriptor resolves, entry), for the packed
    /// tag `t` ([`Tag::packed`]).
    #[inline(always)]
    pub fn walk_fill(&mut self, t: u64, ia: u64, steps: impl Iterator<Item = (u32, WalkEntry)>) {
        if !self.enabled {
            return;
        }
        for (lsb, w) in steps {
            self.walk_insert_packed(t, ia, lsb, w);
        }
    }

    #[inline(always)]
    fn walk_insert_packed(&mut self, t: u64, ia: u64, lsb: u32, w: WalkEntry) {
        // A table descriptor covers just its key's range (span 0).
        if self.walks.insert(key0(t, lsb), ia >> lsb, w, 0).is_some() {
            self.walk_evictions += 1;
        }
    }

    /// Returns a bound on what one filtered [`Tlb::invalidate`] visits:
    /// the tag chains of both caches (a probe by address visits fewer).
    pub fn invalidate_cost(&self) -> u64 {
        (self.leaves.chain_count() + self.walks.chain_count()) as u64
    }

    /// Applies an invalidation; returns the number of entries removed.
    ///
    /// Only entries the scope could select are visited (see [`SetCache`]);
    /// an unfiltered scope covering every cached tag empties the cache in
    /// O(1).
    pub fn invalidate(&mut self, sc: &InvScope) -> usize {
        let tag_may_match = |p: u64| {
            let t = Tag::unpack(p);
            // Global entries answer to any ASID, so only an invalidation
            // of non-global entries can skip other ASIDs' tags.
            sc.regimes.contains(&t.regime)
                && sc.vmid.is_none_or(|v| v == t.vmid)
                && !(sc.non_global_only && sc.asid.is_some_and(|a| a != t.asid))
        };
        let unfiltered = sc.vmid.is_none()
            && sc.asid.is_none()
            && !sc.non_global_only
            && sc.range.is_none()
            && sc.level.is_none()
            && sc.granule_shift.is_none();
        let mut removed = 0;
        let log = self.log_removals;
        if unfiltered && self.leaves.tags().all(tag_may_match) {
            let n = self.leaves.clear();
            if log && n != 0 {
                self.removed.all = true;
            }
            removed += n;
        } else {
            let mut mismatch = 0;
            let list = &mut self.removed;
            removed += self
                .leaves
                .remove_where(tag_may_match, sc.range, |k0, k1, e| {
                    if !sc.tag_matches(&Tag::unpack(key_tag(k0)), e.global)
                        || !sc.range_matches(e.match_base, e.match_size_log2)
                    {
                        return false;
                    }
                    if sc.level.is_some_and(|l| l != e.level) {
                        return false;
                    }
                    if sc.granule_shift.is_some_and(|g| g != e.granule_shift) {
                        // CONSTRAINED UNPREDICTABLE; the strict choice keeps it.
                        mismatch += 1;
                        return false;
                    }
                    if log {
                        list.note((k0, k1));
                    }
                    true
                });
            self.granule_mismatch += mismatch;
        }
        if !sc.leaf_only {
            if unfiltered && self.walks.tags().all(tag_may_match) {
                removed += self.walks.clear();
            } else {
                removed += self
                    .walks
                    .remove_where(tag_may_match, sc.range, |k0, k1, w| {
                        let lsb = key_size(k0);
                        sc.tag_matches(&Tag::unpack(key_tag(k0)), false)
                            && sc.granule_shift.is_none_or(|g| g == w.granule_shift())
                            && sc.range_matches(k1 << lsb, lsb)
                    });
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests;
