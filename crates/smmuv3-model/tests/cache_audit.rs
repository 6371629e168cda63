//! `SmmuModel::audit_caches`: every translation the caches serve that
//! memory no longer gives, named at once instead of when a device happens
//! to use it; and nothing changed by looking.

mod common;

use common::rig::{RIG_SID, Rig, rig};
use common::*;
use smmuv3_model::{
    DmaFault, DmaRequest, Httu, ModelConfig, StaleTranslation, StaleWalk, layout::op,
};

const VA: u64 = 0x4000_0000;
const ASID: u16 = 1;

fn translate(h: &H, va: u64, write: bool) -> Result<u64, DmaFault> {
    let req = DmaRequest {
        write,
        ..DmaRequest::read(RIG_SID, va, 4)
    };
    h.smmu.translate(&req).map(|t| t.pa)
}

fn tlbi_page(h: &mut H, va: u64) {
    let (w0, w1) = tlbi_nh_va(ASID, va, true);
    h.cmd(w0, w1);
    h.sync();
}

/// The rig with `VA` mapped to its page and that translation cached.
fn cached(write: bool) -> Rig {
    let r = rig(64, false);
    r.pt.map(&r.h, VA, r.page, 3, S1_USER_RW);
    assert_eq!(translate(&r.h, VA, write), Ok(r.page));
    r
}

#[test]
fn a_cache_that_matches_memory_audits_clean() {
    let r = cached(true);
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
    // The leaf and the three table descriptors above it.
    assert_eq!((a.checked, a.orphans, a.unchecked), (4, 0, 0));
}

#[test]
fn a_remap_without_tlbi_is_stale_until_invalidated() {
    let mut r = cached(false);
    let other = r.h.alloc(4096);
    r.pt.map(&r.h, VA, other, 3, S1_USER_RW);
    let a = r.h.smmu.audit_caches();
    assert_eq!(
        a.stale,
        [StaleTranslation {
            sid: RIG_SID,
            ssid: None,
            iova: VA,
            write: false,
            cached_pa: r.page,
            now: Ok(other),
        }]
    );
    // What the audit names is what the device still gets.
    assert_eq!(translate(&r.h, VA, false), Ok(r.page));
    tlbi_page(&mut r.h, VA);
    assert!(r.h.smmu.audit_caches().is_clean());
    assert_eq!(translate(&r.h, VA, false), Ok(other));
}

#[test]
fn an_unmap_without_tlbi_is_stale_with_the_fault_memory_gives_now() {
    let mut r = cached(false);
    r.pt.unmap(&r.h, VA, 3);
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale.len(), 1, "{a:?}");
    assert!(
        matches!(a.stale[0].now, Err(DmaFault::Terminated { .. })),
        "{a:?}"
    );
    assert_eq!(translate(&r.h, VA, false), Ok(r.page), "still cached");
    tlbi_page(&mut r.h, VA);
    assert!(r.h.smmu.audit_caches().is_clean());
    assert!(translate(&r.h, VA, false).is_err());
}

#[test]
fn write_permission_taken_away_without_tlbi_is_stale_for_writes_only() {
    let mut r = cached(true);
    r.pt.map(&r.h, VA, r.page, 3, S1_USER_RW | 1 << 7);
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale.len(), 1, "{a:?}");
    let st = a.stale[0];
    assert!(
        st.write && st.cached_pa == r.page && st.now.is_err(),
        "{st:?}"
    );
    tlbi_page(&mut r.h, VA);
    assert!(r.h.smmu.audit_caches().is_clean());
}

/// A cached block checks against every page that now maps its range: the
/// same pages split out of it are not stale, one moved elsewhere is.
#[test]
fn a_block_split_into_its_own_pages_is_clean_and_one_moved_page_is_stale() {
    let r = rig(64, false);
    let block = MEM_BASE + (8 << 20);
    r.pt.map(&r.h, VA, block, 2, S1_USER_RW);
    assert_eq!(translate(&r.h, VA + 0x5000, false), Ok(block + 0x5000));
    for i in 0..512u64 {
        r.pt.map(&r.h, VA + (i << 12), block + (i << 12), 3, S1_USER_RW);
    }
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
    // The block and the two table descriptors above it.
    assert_eq!((a.checked, a.unchecked), (3, 0));
    let moved = r.h.alloc(4096);
    r.pt.map(&r.h, VA + (300 << 12), moved, 3, S1_USER_RW);
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale.len(), 1, "{a:?}");
    assert_eq!(a.stale[0].iova, VA + (300 << 12));
    assert_eq!(a.stale[0].cached_pa, block + (300 << 12));
    assert_eq!(a.stale[0].now, Ok(moved));
}

/// An STE rewritten without CMD_CFGI_STE is a stale configuration, and its
/// stream's cached translations are stale too; after the CFGI the leaf
/// entries of the dropped ASID are orphans until a TLBI removes them.
#[test]
fn an_ste_changed_without_cfgi_is_stale_and_leaves_orphans_after_it() {
    let mut r = cached(false);
    let ste = r.h.ste_at(RIG_SID);
    r.h.write_words(ste, &ste_abort());
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale_configs, [(RIG_SID, None)]);
    assert_eq!(a.stale.len(), 1);
    assert_eq!(a.stale[0].now, Err(DmaFault::StreamAbort));
    r.h.cfgi_ste(RIG_SID);
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
    // The leaf and its three table descriptors.
    assert_eq!((a.orphans, a.checked), (4, 0));
    r.h.cmd(op::TLBI_NH_ASID as u64 | u64::from(ASID) << 48, 0);
    r.h.sync();
    assert_eq!(r.h.smmu.audit_caches().orphans, 0);
}

#[test]
fn a_nested_streams_stage1_change_is_stale() {
    let mut r = rig(64, true);
    r.pt.map(&r.h, VA, r.page, 3, S1_USER_RW);
    assert_eq!(translate(&r.h, VA, false), Ok(r.page));
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
    // The combined leaf, stage 2's leaf and its table descriptor, and
    // stage 1's three table descriptors (walked through stage 2).
    assert_eq!((a.checked, a.unchecked), (6, 0));
    let other = r.h.alloc(4096);
    r.pt.map(&r.h, VA, other, 3, S1_USER_RW);
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale.len(), 1, "{a:?}");
    assert_eq!(a.stale[0].now, Ok(other));
    // TLBI_NH_VA names the VMID too: with VMID 0 it misses the nested
    // stream's entry (VMID 1), and the audit says so.
    tlbi_page(&mut r.h, VA);
    assert_eq!(r.h.smmu.audit_caches().stale.len(), 1);
    let (w0, w1) = tlbi_nh_va(ASID, VA, true);
    r.h.cmd(w0 | 1 << 32, w1);
    r.h.sync();
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
}

/// A nested stream's stage-1 table replaced behind a leaf-only TLBI: its
/// walk-cache entry (an IPA) is checked by a stage-1 walk whose table
/// fetches go through stage 2.
#[test]
fn a_nested_streams_stage1_table_replaced_leaf_only_is_a_stale_walk() {
    let mut r = rig(64, true);
    r.pt.map(&r.h, VA, r.page, 3, S1_USER_RW);
    assert_eq!(translate(&r.h, VA, false), Ok(r.page));
    let l2 = r.pt.slot(&r.h, VA, 2);
    let old_table = r.h.r64(l2) & 0x0000_ffff_ffff_f000;
    let new_table = r.h.alloc(4096);
    r.h.w64(new_table + ((VA >> 12) & 511) * 8, r.page | S1_USER_RW | 3);
    r.h.w64(l2, new_table | 3);
    let (w0, w1) = tlbi_nh_va(ASID, VA, true);
    r.h.cmd(w0 | 1 << 32, w1);
    r.h.sync();
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale_walks.len(), 1, "{a:?}");
    let w = a.stale_walks[0];
    assert!(!w.stage2 && w.level == 3, "{w:?}");
    assert_eq!((w.cached_table, w.now), (old_table, Some(new_table)));
    let (w0, w1) = tlbi_nh_va(ASID, VA, false);
    r.h.cmd(w0 | 1 << 32, w1);
    r.h.sync();
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
}

/// The audit's own translations fault (the unmapped page), but record no
/// event, set no access flag and count nothing: the model's whole state
/// and the memory under it are as they were.
#[test]
fn the_audit_changes_nothing() {
    let mut r = cached(false);
    r.pt.unmap(&r.h, VA, 3);
    let size = 16 << 20;
    let memory = |h: &H| {
        let mut b = vec![0u8; size];
        h.mem.cpu_read(MEM_BASE, &mut b).unwrap();
        b
    };
    let (before, bytes) = (r.h.smmu.snapshot(), memory(&r.h));
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale.len(), 1);
    assert_eq!(r.h.smmu.snapshot(), before);
    assert!(memory(&r.h) == bytes, "memory changed");
    assert_eq!(r.h.events(), []);
}

#[test]
fn with_the_smmu_disabled_nothing_is_checked() {
    let r = cached(false);
    r.pt.unmap(&r.h, VA, 3);
    r.h.smmu
        .write32(smmuv3_model::regs::CR0, smmuv3_model::regs::cr0::CMDQEN);
    let a = r.h.smmu.audit_caches();
    assert_eq!(a, Default::default());
}

/// With hardware access flag updates, a page software made old again (AF
/// clear, no TLBI) is not stale: the SMMU would set the flag and translate
/// as cached. The audit's walk takes that update as made and does not
/// write it.
#[test]
fn an_access_flag_cleared_under_hardware_updates_is_not_stale_and_stays_clear() {
    let cfg = ModelConfig {
        httu: Httu::AccessFlag,
        tlb_capacity: 64,
        ..ModelConfig::default()
    };
    let mut h = H::with(cfg, smmuv3_model::Coherency::Coherent, 16 << 20);
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    let mut words = cd(16, 0, 5, pt.root, ASID);
    words[0] |= 1 << 43; // CD.HA
    h.write_words(cdp, &words);
    h.set_ste(RIG_SID, ste_s1(cdp, 0, 0, 0));
    let page = h.alloc(4096);
    const AF: u64 = 1 << 10;
    pt.map(&h, VA, page, 3, S1_USER_RW & !AF);
    assert_eq!(translate(&h, VA, false), Ok(page));
    let pte = pt.slot(&h, VA, 3);
    assert_ne!(h.r64(pte) & AF, 0, "the walk set AF");
    h.w64(pte, h.r64(pte) & !AF);
    let a = h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
    assert_eq!(a.checked, 4);
    assert_eq!(h.r64(pte) & AF, 0, "the audit wrote no access flag");
    // Remapped, it is stale as without hardware updates.
    let other = h.alloc(4096);
    pt.map(&h, VA, other, 3, S1_USER_RW & !AF);
    assert_eq!(h.smmu.audit_caches().stale.len(), 1);
}

/// Software replaced a level-3 table (unmapped the 2 MiB range, freed the
/// table, mapped the page again in a new one) and invalidated only the
/// leaf: the walk cache still points at the old table, and walks of the
/// range still start there. The audit names that descriptor; a non-leaf
/// TLBI clears it.
#[test]
fn a_replaced_table_invalidated_leaf_only_is_a_stale_walk() {
    let mut r = cached(false);
    let l2 = r.pt.slot(&r.h, VA, 2);
    let old_table = r.h.r64(l2) & 0x0000_ffff_ffff_f000;
    let new_table = r.h.alloc(4096);
    let other = r.h.alloc(4096);
    let idx = (VA >> 12) & 511;
    r.h.w64(new_table + idx * 8, other | S1_USER_RW | 3);
    r.h.w64(l2, new_table | 3);
    tlbi_page(&mut r.h, VA);
    let a = r.h.smmu.audit_caches();
    assert!(a.stale.is_empty() && a.stale_configs.is_empty(), "{a:?}");
    assert_eq!(
        a.stale_walks,
        [StaleWalk {
            sid: RIG_SID,
            ssid: None,
            stage2: false,
            input: VA & !((2 << 20) - 1),
            level: 3,
            cached_table: old_table,
            now: Some(new_table),
        }]
    );
    // The hazard it names: walks still go through the old table.
    assert_eq!(translate(&r.h, VA, false), Ok(r.page));
    let (w0, w1) = tlbi_nh_va(ASID, VA, false);
    r.h.cmd(w0, w1);
    r.h.sync();
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
    assert_eq!(translate(&r.h, VA, false), Ok(other));
}

/// A table descriptor cleared (the whole 2 MiB range unmapped) with a
/// leaf-only TLBI: the cached descriptor has no counterpart in memory.
#[test]
fn a_cleared_table_descriptor_is_a_stale_walk_with_nothing_now() {
    let mut r = cached(false);
    let l2 = r.pt.slot(&r.h, VA, 2);
    r.h.w64(l2, 0);
    tlbi_page(&mut r.h, VA);
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale_walks.len(), 1, "{a:?}");
    assert_eq!((a.stale_walks[0].level, a.stale_walks[0].now), (3, None));
}

/// A nested stream's stage-2 walk-cache entries are checked against its
/// stage-2 table (its stage-1 ones, with IPA table addresses, are not).
#[test]
fn a_nested_streams_stage2_table_replaced_without_tlbi_is_a_stale_walk() {
    let r = rig(64, true);
    r.pt.map(&r.h, VA, r.page, 3, S1_USER_RW);
    assert_eq!(translate(&r.h, VA, false), Ok(r.page));
    let a = r.h.smmu.audit_caches();
    assert!(a.is_clean(), "{a:?}");
    let s2_walks = |a: &smmuv3_model::CacheAudit| a.stale_walks.iter().filter(|w| w.stage2).count();
    assert_eq!(s2_walks(&a), 0);
    // Point stage 2's level-1 descriptor of the data at an empty table.
    let s2pt = r.s2pt.as_ref().expect("nested rig");
    let l1 = s2pt.slot(&r.h, r.page, 1);
    let empty = r.h.alloc(4096);
    r.h.w64(l1, empty | 3);
    let a = r.h.smmu.audit_caches();
    assert!(s2_walks(&a) >= 1, "{a:?}");
    assert!(
        a.stale_walks
            .iter()
            .any(|w| w.stage2 && w.now == Some(empty)),
        "{a:?}"
    );
}

/// Stage 2 of a nested stream remapped without TLBI: its stage-2 entry is
/// stale for its VMID (the entry a stage-2-only check would miss, since
/// only nested streams use it), and so is the combined one; a
/// CMD_TLBI_S12_VMALL of the VMID clears both. The CD, fetched through
/// stage 2 from the moved block, is a stale configuration until a CFGI.
#[test]
fn a_nested_streams_stage2_block_remapped_without_tlbi_is_stale_at_stage2() {
    let mut r = rig(64, true);
    r.pt.map(&r.h, VA, r.page, 3, S1_USER_RW);
    assert_eq!(translate(&r.h, VA, false), Ok(r.page));
    let s2pt = r.s2pt.as_ref().expect("nested rig");
    let block = r.page & !((2 << 20) - 1);
    let moved = MEM_BASE + (14 << 20);
    assert_ne!(block, moved);
    s2pt.map(&r.h, block, moved, 2, S2_RW);
    let a = r.h.smmu.audit_caches();
    assert!(
        a.stale_stage2
            .iter()
            .any(|s| s.vmid == 1 && s.ipa == block && s.cached_pa == block && s.now == Some(moved)),
        "{a:?}"
    );
    assert!(!a.stale.is_empty(), "the combined entry: {a:?}");
    assert_eq!(a.stale_configs, [(RIG_SID, None)]);
    r.h.cmd(op::TLBI_S12_VMALL as u64 | 1 << 32, 0);
    r.h.sync();
    let a = r.h.smmu.audit_caches();
    assert!(a.stale.is_empty() && a.stale_stage2.is_empty(), "{a:?}");
    assert_eq!(a.stale_configs, [(RIG_SID, None)]);
    r.h.cmd(op::CFGI_STE_RANGE as u64, 31);
    r.h.sync();
    assert!(r.h.smmu.audit_caches().is_clean());
}

/// A table descriptor whose hierarchical attributes changed (APTable made
/// the range read-only) behind a leaf-only TLBI: the same table, but the
/// walk cache would still grant what the new attributes take away.
#[test]
fn a_table_descriptors_attributes_changed_leaf_only_is_a_stale_walk() {
    let mut r = cached(true);
    let l2 = r.pt.slot(&r.h, VA, 2);
    let table = r.h.r64(l2) & 0x0000_ffff_ffff_f000;
    const APTABLE_RO: u64 = 1 << 62;
    r.h.w64(l2, r.h.r64(l2) | APTABLE_RO);
    tlbi_page(&mut r.h, VA);
    let a = r.h.smmu.audit_caches();
    assert_eq!(a.stale_walks.len(), 1, "{a:?}");
    let w = a.stale_walks[0];
    assert_eq!((w.level, w.cached_table, w.now), (3, table, Some(table)));
    // The hazard: the walk through the cached descriptor still allows the
    // write the new APTable forbids.
    assert_eq!(translate(&r.h, VA, true), Ok(r.page));
    let (w0, w1) = tlbi_nh_va(ASID, VA, false);
    r.h.cmd(w0, w1);
    r.h.sync();
    assert!(r.h.smmu.audit_caches().is_clean());
    assert!(translate(&r.h, VA, true).is_err());
}
