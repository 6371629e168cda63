//! `Iotlb` upkeep drops exactly the units whose model TLB entry went: one
//! page for a TLBI of one page, every unit of the ASID for TLBI_NH_ASID,
//! the evicted entries' units when the TLB evicts, every unit of a stream
//! whose configuration a CFGI removed; what stays is what the model would
//! still serve from its caches.

mod common;

use common::*;
use smmuv3_model::layout::op;
use smmuv3_model::{ModelConfig, StreamIommu};
use vm_memory::iommu::Iommu;
use vm_memory::{GuestAddress, Permissions};

const SID: u32 = 1;
const PAGES: u64 = 64;

fn rig(tlb_capacity: usize) -> (H, Vec<u64>) {
    let cfg = ModelConfig {
        tlb_capacity,
        ..ModelConfig::default()
    };
    let mut h = H::with(cfg, smmuv3_model::Coherency::Coherent, 16 << 20);
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    let pages: Vec<u64> = (0..PAGES).map(|_| h.alloc(4096)).collect();
    for (i, pa) in pages.iter().enumerate() {
        pt.map(&h, (i as u64) << 12, *pa, 3, S1_USER_RW);
    }
    (h, pages)
}

fn fill(io: &StreamIommu) {
    for p in 0..PAGES {
        io.translate(GuestAddress(p << 12), 8, Permissions::Read)
            .unwrap();
    }
}

/// Returns the pages the `Iotlb` holds, checking each against the model.
fn held(h: &H, io: &StreamIommu, pages: &[u64]) -> Vec<u64> {
    let mut v = Vec::new();
    for p in 0..PAGES {
        let got = io.iotlb_lookup(p << 12, Permissions::Read);
        let model = h
            .smmu
            .cached_translation(SID, None, p << 12)
            .map(|u| u.pa_base);
        assert_eq!(got, model, "page {p}: Iotlb vs model cache");
        if let Some(pa) = got {
            assert_eq!(pa, pages[p as usize]);
            v.push(p);
        }
    }
    assert_eq!(io.iotlb_units(), v.len());
    v
}

#[test]
fn a_page_tlbi_drops_one_unit_and_an_asid_tlbi_drops_all() {
    let (mut h, pages) = rig(1 << 16);
    let io = h.smmu.iommu(SID, None);
    fill(&io);
    assert_eq!(held(&h, &io, &pages).len(), PAGES as usize);
    let before = h.smmu.stats().iotlb_invalidations;
    let (w0, w1) = tlbi_nh_va(1, 9 << 12, true);
    h.cmd(w0, w1);
    h.sync();
    let now = held(&h, &io, &pages);
    assert_eq!(now.len(), PAGES as usize - 1);
    assert!(!now.contains(&9));
    assert_eq!(h.smmu.stats().iotlb_invalidations - before, 1);
    // Another ASID's invalidation removes nothing of ours.
    h.cmd(op::TLBI_NH_ASID as u64 | 2 << 48, 0);
    h.sync();
    assert_eq!(held(&h, &io, &pages).len(), PAGES as usize - 1);
    h.cmd(op::TLBI_NH_ASID as u64 | 1 << 48, 0);
    h.sync();
    assert!(held(&h, &io, &pages).is_empty());
    assert_eq!(h.smmu.stats().iotlb_invalidations - before, PAGES);
}

#[test]
fn evictions_drop_their_units_and_cfgi_drops_the_stream() {
    // 16 entries for 64 pages: filling evicts, and the Iotlb follows.
    let (mut h, pages) = rig(16);
    let io = h.smmu.iommu(SID, None);
    fill(&io);
    let now = held(&h, &io, &pages);
    assert!(!now.is_empty() && now.len() <= 16, "{now:?}");
    assert!(h.smmu.stats().tlb_evictions >= PAGES - 16);
    // A CFGI of another stream keeps ours; of ours drops every unit.
    h.cfgi_ste(SID + 1);
    assert_eq!(held(&h, &io, &pages), now);
    h.cfgi_ste(SID);
    assert!(held(&h, &io, &pages).is_empty());
}

/// CMD_CFGI_CD (Leaf = 1) invalidates one CD, the one at the index its
/// SubstreamID names: the `Iotlb`s of the stream's other substreams keep
/// their units (every context of the stream was dropped before). With
/// S1DSS = 0b10, index 0 serves transactions without a SubstreamID (and
/// SubstreamID 0 is refused): their handle loses its units with it.
/// Leaf = 0 (level-1 descriptors too) may take them all.
#[test]
fn cfgi_cd_drops_the_iotlb_units_of_its_own_cd_only() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let page = h.alloc(4096);
    pt.map(&h, 0x1000, page, 3, S1_USER_RW);
    // Four CDs, one stage-1 table; S1DSS = 0b10: no SubstreamID uses CD 0.
    let cds = h.alloc(4 * 64);
    for i in 0..4u64 {
        h.write_words(cds + i * 64, &cd(16, 0, 5, pt.root, 7 + i as u16));
    }
    h.set_ste(SID, ste_s1(cds, 2, 0, 2));
    let ios: Vec<StreamIommu> = [None, Some(1), Some(2)]
        .into_iter()
        .map(|ss| h.smmu.iommu(SID, ss))
        .collect();
    let fill = |ios: &[StreamIommu]| {
        for io in ios {
            io.translate(GuestAddress(0x1000), 4, Permissions::Read)
                .unwrap()
                .for_each(drop);
        }
    };
    let units = |ios: &[StreamIommu]| ios.iter().map(|io| io.iotlb_units()).collect::<Vec<_>>();
    let cfgi_cd = |h: &mut H, ssid: u64, leaf: bool| {
        h.cmd(
            op::CFGI_CD as u64 | u64::from(SID) << 32 | ssid << 12,
            u64::from(leaf),
        );
        h.sync();
    };
    fill(&ios);
    assert_eq!(units(&ios), [1, 1, 1]);
    cfgi_cd(&mut h, 2, true);
    assert_eq!(units(&ios), [1, 1, 0], "only substream 2's");
    fill(&ios);
    cfgi_cd(&mut h, 0, true);
    assert_eq!(units(&ios), [0, 1, 1], "CD 0 serves no SubstreamID");
    fill(&ios);
    cfgi_cd(&mut h, 1, false);
    assert_eq!(units(&ios), [0, 0, 0], "Leaf = 0: every context");
    // Nothing stale survives: each handle translates afresh.
    fill(&ios);
    assert_eq!(units(&ios), [1, 1, 1]);
}
