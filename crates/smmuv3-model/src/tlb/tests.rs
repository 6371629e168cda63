//! Invalidation removes exactly what its scope covers, whichever way the
//! cache finds the candidates (O(1) clear, tag chains, address probes).

use super::*;
use proptest::prelude::*;

const NH: &[Regime] = &[Regime::Nh, Regime::Nested];
const S2: &[Regime] = &[Regime::S2];
const ALL: &[Regime] = &[Regime::Nh, Regime::El2, Regime::S2, Regime::Nested];

fn tag(regime: Regime, vmid: u16, asid: u16) -> Tag {
    Tag { regime, vmid, asid }
}

/// A leaf of `2^size` at `ia`, matched by invalidations over `2^span`
/// (a nested entry smaller than its stage-1 leaf).
fn leaf(ia: u64, size: u32, span: u32, global: bool) -> TlbEntry {
    TlbEntry {
        out_base: 0x8000_0000 + (ia & 0xfff_ffff),
        size_log2: size,
        match_base: ia & !((1u64 << span) - 1),
        match_size_log2: span,
        level: match span {
            12 => 3,
            21 => 2,
            _ => 1,
        },
        granule_shift: 12,
        global,
        ..TlbEntry::default()
    }
}

/// The architectural rule, written out on its own: does `sc` cover the
/// leaf `e` of tag `t`?
fn covers(sc: &InvScope, t: Tag, e: &TlbEntry) -> bool {
    let tag_ok = sc.regimes.contains(&t.regime)
        && sc.vmid.is_none_or(|v| v == t.vmid)
        && sc.asid.is_none_or(|a| a == t.asid || e.global)
        && !(sc.non_global_only && e.global);
    let range_ok = sc.range.is_none_or(|(s, end)| {
        let last = e.match_base + ((1u64 << e.match_size_log2) - 1);
        e.match_base < end && last >= s
    });
    tag_ok
        && range_ok
        && sc.level.is_none_or(|l| l == e.level)
        && sc.granule_shift.is_none_or(|g| g == e.granule_shift)
}

type Live = Vec<(u64, u64, TlbEntry)>;

fn live(t: &Tlb) -> Live {
    let mut v: Live = t
        .leaves
        .placed()
        .into_iter()
        .map(|(_, (k0, k1), e)| (k0, k1, e))
        .collect();
    v.sort_by_key(|x| (x.0, x.1));
    v
}

#[derive(Clone, Debug)]
struct Ins {
    regime: Regime,
    vmid: u16,
    asid: u16,
    ia: u64,
    size: u32,
    span: u32,
    global: bool,
}

fn ins() -> impl Strategy<Value = Ins> {
    (
        prop_oneof![Just(Regime::Nh), Just(Regime::Nested), Just(Regime::S2)],
        0..3u16,
        0..3u16,
        0..(1u64 << 32),
        prop_oneof![Just(12u32), Just(21), Just(30)],
        0..2u32,
        any::<bool>(),
    )
        .prop_map(|(regime, vmid, asid, ia, size, wide, global)| {
            // A nested entry may stand for a larger stage-1 leaf.
            let span = if wide == 1 && size < 30 {
                size + 9
            } else {
                size
            };
            Ins {
                regime,
                vmid,
                asid: if regime == Regime::S2 { 0 } else { asid },
                ia,
                size,
                span,
                global: global && regime != Regime::S2,
            }
        })
}

fn scope() -> impl Strategy<Value = InvScope> {
    let range = prop_oneof![
        Just(None),
        (0..(1u64 << 32), 0..40u32).prop_map(|(s, log)| {
            let s = s & !0xfff;
            Some((s, s.saturating_add(1u64 << (12 + log % 20))))
        }),
    ];
    (
        prop_oneof![Just(NH), Just(S2), Just(ALL)],
        proptest::option::of(0..3u16),
        proptest::option::of(0..3u16),
        any::<bool>(),
        range,
        proptest::option::of(1..4u32),
        any::<bool>(),
    )
        .prop_map(
            |(regimes, vmid, asid, non_global_only, range, level, leaf_only)| InvScope {
                regimes,
                vmid,
                asid,
                non_global_only: non_global_only && asid.is_some(),
                range,
                level,
                granule_shift: None,
                leaf_only,
            },
        )
}

proptest! {
    #[test]
    fn invalidation_removes_exactly_what_it_covers(
        capacity in prop_oneof![Just(4usize), Just(64), Just(1 << 12)],
        batches in proptest::collection::vec(
            (proptest::collection::vec(ins(), 0..80), scope()),
            1..8,
        ),
    ) {
        let mut t = Tlb::new(capacity);
        for (inserts, sc) in batches {
            for i in &inserts {
                let tg = tag(i.regime, i.vmid, i.asid);
                t.insert(tg, i.ia, leaf(i.ia, i.size, i.span, i.global));
                // A table entry above each leaf, for the walk cache.
                t.walk_insert(tg, i.ia, 30, WalkEntry::new(0x1000, TableAttrs::default(), 12));
            }
            let before = live(&t);
            let walks_before = t.walk_len();
            let removed = t.invalidate(&sc);
            let expect: Live = before
                .iter()
                .filter(|(k0, _, e)| !covers(&sc, Tag::unpack(key_tag(*k0)), e))
                .copied()
                .collect();
            prop_assert_eq!(live(&t), expect.clone());
            let walks_removed = walks_before - t.walk_len();
            prop_assert_eq!(removed, before.len() - expect.len() + walks_removed);
            if sc.leaf_only {
                prop_assert_eq!(walks_removed, 0);
            }
            prop_assert!(t.len() <= capacity);
        }
    }
}

#[test]
fn a_global_entry_survives_asid_invalidation_but_not_va() {
    let mut t = Tlb::new(64);
    let g = tag(Regime::Nh, 0, 7);
    t.insert(g, 0x5000, leaf(0x5000, 12, 12, true));
    t.insert(g, 0x6000, leaf(0x6000, 12, 12, false));
    let asid = InvScope {
        asid: Some(7),
        non_global_only: true,
        ..InvScope::all(NH)
    };
    assert_eq!(t.invalidate(&asid), 1);
    assert!(t.lookup(g, 0x5000, &[12]).is_some());
    assert!(t.lookup(g, 0x6000, &[12]).is_none());
    // TLBI_NH_VA with another ASID still removes the global entry.
    let va = InvScope {
        asid: Some(9),
        range: Some((0x5000, 0x6000)),
        ..InvScope::all(NH)
    };
    assert_eq!(t.invalidate(&va), 1);
    assert_eq!(t.len(), 0);
}

#[test]
fn invalidate_all_is_a_clear_and_vmid_scope_keeps_other_vmids() {
    let mut t = Tlb::new(1 << 12);
    for vmid in 0..4u16 {
        for p in 0..100u64 {
            t.insert(
                tag(Regime::S2, vmid, 0),
                p << 12,
                leaf(p << 12, 12, 12, false),
            );
        }
    }
    let vm1 = InvScope {
        vmid: Some(1),
        ..InvScope::all(S2)
    };
    assert_eq!(t.invalidate(&vm1), 100);
    assert_eq!(t.len(), 300);
    assert!(t.lookup(tag(Regime::S2, 1, 0), 0x1000, &[12]).is_none());
    assert!(t.lookup(tag(Regime::S2, 2, 0), 0x1000, &[12]).is_some());
    assert_eq!(t.invalidate(&InvScope::all(ALL)), 300);
    assert_eq!(t.len(), 0);
    assert_eq!(t.leaves.tags().count(), 0);
}

#[test]
fn leaf_and_walk_evictions_add_up_and_survive_a_snapshot() {
    // One entry each: every insert after the first evicts.
    let mut t = Tlb::new(1);
    let g = tag(Regime::Nh, 0, 1);
    for p in 0..3u64 {
        t.insert(g, p << 12, leaf(p << 12, 12, 12, false));
    }
    for (n, lsb) in [39, 30, 21, 30].into_iter().enumerate() {
        t.walk_insert(
            g,
            n as u64 * 0x4000_0000,
            lsb,
            WalkEntry::new(0x1000, TableAttrs::default(), 12),
        );
    }
    assert_eq!(
        (t.leaf_evictions, t.walk_evictions, t.evictions()),
        (2, 3, 5)
    );
    let r = Tlb::from_snapshot(&t.snapshot());
    assert_eq!(
        (r.leaf_evictions, r.walk_evictions, r.evictions()),
        (2, 3, 5)
    );
    t.reset_evictions();
    assert_eq!(t.evictions(), 0);
}

#[test]
fn eviction_is_counted_and_drops_one_entry() {
    let mut t = Tlb::new(4);
    let g = tag(Regime::Nh, 0, 1);
    // One set of four ways: the fifth page evicts the first.
    for p in 0..5u64 {
        t.insert(g, p << 12, leaf(p << 12, 12, 12, false));
    }
    assert_eq!((t.len(), t.evictions(), t.leaf_evictions), (4, 1, 1));
    assert!(t.lookup(g, 0, &[12]).is_none());
    assert!((1..5u64).all(|p| t.lookup(g, p << 12, &[12]).is_some()));
}

#[test]
fn strict_bbm_reports_a_conflict_with_another_size() {
    let mut t = Tlb::new(64);
    t.set_bbml(0);
    let g = tag(Regime::Nh, 0, 1);
    assert!(!t.insert(g, 0x20_0000, leaf(0x20_0000, 21, 21, false)));
    assert!(t.insert(g, 0x20_1000, leaf(0x20_1000, 12, 12, false)));
    assert_eq!((t.conflicts, t.len()), (1, 1));
}

#[test]
fn snapshot_round_trip_keeps_entries_and_eviction_order() {
    let mut t = Tlb::new(8);
    let g = tag(Regime::Nh, 0, 1);
    for p in 0..11u64 {
        t.insert(g, p << 13, leaf(p << 13, 12, 12, false));
        t.walk_insert(g, p << 21, 21, WalkEntry::default());
    }
    let s = t.snapshot();
    let mut r = Tlb::from_snapshot(&s);
    assert_eq!(r.snapshot(), s);
    for p in 11..20u64 {
        t.insert(g, p << 13, leaf(p << 13, 12, 12, false));
        r.insert(g, p << 13, leaf(p << 13, 12, 12, false));
    }
    assert_eq!(r.snapshot(), t.snapshot());
}

#[test]
fn walk_entries_keep_table_attributes_and_granule() {
    let no_user_ro = TableAttrs::default()
        .with_table(crate::layout::RawDesc(3 | 1 << 61 | 1 << 62), 0xf)
        .with_table(crate::layout::RawDesc(3 | 1 << 59 | 1 << 60), 0xf);
    // PXNTable, UXNTable, APTable[0] and APTable[1]: all four bits.
    assert_eq!(no_user_ro.bits(), 0xf);
    assert!(no_user_ro.read_only());
    for shift in [12, 14, 16] {
        for attrs in [
            TableAttrs::default(),
            no_user_ro,
            TableAttrs::from_bits(0b0101),
        ] {
            let table = 0x000f_ffff_ffff_0000u64 & !((1 << shift) - 1);
            let w = WalkEntry::new(table, attrs, shift);
            assert_eq!(
                (w.next_table(), w.attrs(), w.granule_shift()),
                (table, attrs, shift)
            );
        }
    }
}
