//! The model's caches are exact: with random tables, random table changes
//! each followed by an invalidation that covers it, and random extra
//! invalidations interleaved, a model with a small TLB and walk cache
//! (evicting all the time) translates every address exactly as the same
//! model with its caches disabled (a walk on every access).

mod common;

use common::*;
use proptest::prelude::*;
use smmuv3_model::layout::op;
use smmuv3_model::{DmaRequest, ModelConfig};

/// Two streams with their own tables and ASIDs.
const SIDS: [u32; 2] = [1, 2];
const ASIDS: [u16; 2] = [1, 2];
/// Four 2 MiB regions of 4K pages and two of 2 MiB blocks, 1 GiB apart
/// so each needs its own level-1 and level-2 descriptors.
const PAGE_REGIONS: u64 = 4;
const PAGES: u64 = 8;
const BLOCK_REGIONS: u64 = 2;

fn page_va(region: u64, page: u64) -> u64 {
    region << 30 | page << 12
}

fn block_va(region: u64) -> u64 {
    (PAGE_REGIONS + region) << 30
}

/// Every address the test translates (page bases, an offset inside, and
/// two pages of each block).
fn probe_vas() -> Vec<u64> {
    let mut v = Vec::new();
    for r in 0..PAGE_REGIONS {
        for p in 0..PAGES {
            v.push(page_va(r, p) + 0x18);
        }
    }
    for r in 0..BLOCK_REGIONS {
        v.push(block_va(r));
        v.push(block_va(r) + 0x1f_f008);
    }
    v
}

struct Rig {
    h: H,
    pts: Vec<Pt>,
    /// Output pages and blocks to map to.
    pages: Vec<u64>,
    blocks: Vec<u64>,
}

fn rig(tlb_capacity: usize, cached: bool) -> Rig {
    let cfg = ModelConfig {
        tlb_capacity,
        ..ModelConfig::default()
    };
    let mut h = H::with(cfg, smmuv3_model::Coherency::Coherent, 32 << 20);
    h.enable_linear(4);
    let mut pts = Vec::new();
    for (i, &sid) in SIDS.iter().enumerate() {
        let pt = Pt::new_s1(&h, 12, 48);
        let cdp = h.alloc(64);
        h.write_words(cdp, &cd(16, 0, 5, pt.root, ASIDS[i]));
        h.set_ste(sid, ste_s1(cdp, 0, 0, 0));
        pts.push(pt);
    }
    let pages = (0..4).map(|_| h.alloc(4096)).collect();
    // 2 MiB aligned blocks.
    let blocks = (0..2)
        .map(|_| {
            let a = h.alloc(4 << 20);
            (a + 0x1f_ffff) & !0x1f_ffff
        })
        .collect();
    h.smmu.set_tlb_enabled(cached);
    let mut r = Rig {
        h,
        pts,
        pages,
        blocks,
    };
    // Everything mapped to start with, so that the caches fill up and
    // invalidations take both ways of finding their entries (chains of
    // the tag, and probes of the address range).
    for stream in 0..2 {
        for region in 0..PAGE_REGIONS {
            for page in 0..PAGES {
                let out = ((region + page) % 4) as usize;
                r.apply(stream, &Change::MapPage { region, page, out });
            }
        }
        for region in 0..BLOCK_REGIONS {
            r.apply(
                stream,
                &Change::MapBlock {
                    region,
                    out: region as usize,
                },
            );
        }
    }
    r
}

#[derive(Clone, Debug)]
enum Change {
    MapPage { region: u64, page: u64, out: usize },
    UnmapPage { region: u64, page: u64 },
    MapBlock { region: u64, out: usize },
    UnmapBlock { region: u64 },
}

/// An invalidation that covers a change of one leaf of one stream.
#[derive(Clone, Copy, Debug)]
enum Cover {
    Va { leaf: bool },
    VaAllAsids,
    Range { ttl: bool },
    Asid,
    All,
    CfgiAndAll,
}

/// An invalidation with no change (it must not make anything differ).
#[derive(Clone, Copy, Debug)]
enum Extra {
    Va { stream: usize, va_index: usize },
    Asid { stream: usize },
    All,
    CfgiSte { stream: usize },
    CfgiAll,
}

#[derive(Clone, Debug)]
enum Op {
    Change {
        stream: usize,
        change: Change,
        cover: Cover,
    },
    Extra(Extra),
    Translate {
        stream: usize,
        va_index: usize,
        write: bool,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..PAGE_REGIONS, 0..PAGES, 0..4usize).prop_map(|(region, page, out)| Change::MapPage {
            region,
            page,
            out
        }),
        (0..PAGE_REGIONS, 0..PAGES).prop_map(|(region, page)| Change::UnmapPage { region, page }),
        (0..BLOCK_REGIONS, 0..2usize).prop_map(|(region, out)| Change::MapBlock { region, out }),
        (0..BLOCK_REGIONS).prop_map(|region| Change::UnmapBlock { region }),
    ]
}

fn cover() -> impl Strategy<Value = Cover> {
    prop_oneof![
        any::<bool>().prop_map(|leaf| Cover::Va { leaf }),
        Just(Cover::VaAllAsids),
        any::<bool>().prop_map(|ttl| Cover::Range { ttl }),
        Just(Cover::Asid),
        Just(Cover::All),
        Just(Cover::CfgiAndAll),
    ]
}

fn extra(nvas: usize) -> impl Strategy<Value = Extra> {
    prop_oneof![
        (0..2usize, 0..nvas).prop_map(|(stream, va_index)| Extra::Va { stream, va_index }),
        (0..2usize).prop_map(|stream| Extra::Asid { stream }),
        Just(Extra::All),
        (0..2usize).prop_map(|stream| Extra::CfgiSte { stream }),
        Just(Extra::CfgiAll),
    ]
}

fn op(nvas: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, change(), cover()).prop_map(|(stream, change, cover)| Op::Change {
            stream,
            change,
            cover
        }),
        1 => extra(nvas).prop_map(Op::Extra),
        4 => (0..2usize, 0..nvas, any::<bool>()).prop_map(|(stream, va_index, write)| {
            Op::Translate {
                stream,
                va_index,
                write,
            }
        }),
    ]
}

impl Rig {
    fn apply(&mut self, stream: usize, c: &Change) -> (u64, u32) {
        let pt = &self.pts[stream];
        match *c {
            Change::MapPage { region, page, out } => {
                let va = page_va(region, page);
                pt.map(&self.h, va, self.pages[out], 3, S1_RW);
                (va, 3)
            }
            Change::UnmapPage { region, page } => {
                let va = page_va(region, page);
                pt.unmap(&self.h, va, 3);
                (va, 3)
            }
            Change::MapBlock { region, out } => {
                let va = block_va(region);
                pt.map(&self.h, va, self.blocks[out], 2, S1_RW);
                (va, 2)
            }
            Change::UnmapBlock { region } => {
                let va = block_va(region);
                pt.unmap(&self.h, va, 2);
                (va, 2)
            }
        }
    }

    fn cover(&mut self, stream: usize, va: u64, level: u32, c: Cover) {
        let asid = ASIDS[stream];
        match c {
            Cover::Va { leaf } => {
                let (w0, w1) = tlbi_nh_va(asid, va, leaf);
                self.h.cmd(w0, w1);
            }
            Cover::VaAllAsids => {
                self.h.cmd(op::TLBI_NH_VAA as u64, va & !0xfff);
            }
            Cover::Range { ttl } => {
                // Two 4K pages from the changed address, TG = 4K.
                let ttl = if ttl { u64::from(level) } else { 0 };
                let (w0, w1) = tlbi_nh_va_range(asid, va, 1, 0, 1, ttl, true);
                self.h.cmd(w0, w1);
            }
            Cover::Asid => {
                self.h
                    .cmd(op::TLBI_NH_ASID as u64 | u64::from(asid) << 48, 0);
            }
            Cover::All => {
                self.h.cmd(op::TLBI_NH_ALL as u64, 0);
            }
            Cover::CfgiAndAll => {
                self.h.cmd(op::CFGI_STE_RANGE as u64, 31);
                self.h.cmd(op::TLBI_NSNH_ALL as u64, 0);
            }
        }
        self.h.sync();
    }

    fn extra(&mut self, e: Extra, vas: &[u64]) {
        match e {
            Extra::Va { stream, va_index } => {
                let (w0, w1) = tlbi_nh_va(ASIDS[stream], vas[va_index], false);
                self.h.cmd(w0, w1);
            }
            Extra::Asid { stream } => {
                self.h
                    .cmd(op::TLBI_NH_ASID as u64 | u64::from(ASIDS[stream]) << 48, 0);
            }
            Extra::All => {
                self.h.cmd(op::TLBI_NSNH_ALL as u64, 0);
            }
            Extra::CfgiSte { stream } => {
                self.h
                    .cmd(op::CFGI_STE as u64 | u64::from(SIDS[stream]) << 32, 0);
            }
            Extra::CfgiAll => {
                self.h.cmd(op::CFGI_STE_RANGE as u64, 31);
            }
        }
        self.h.sync();
    }

    /// Returns the output address, or the fault's event type.
    fn translate(&self, stream: usize, va: u64, write: bool) -> Result<u64, String> {
        let sid = SIDS[stream];
        let req = if write {
            DmaRequest::write(sid, va, 4)
        } else {
            DmaRequest::read(sid, va, 4)
        };
        self.h
            .smmu
            .translate(&req.privileged())
            .map(|t| t.pa)
            .map_err(|f| format!("{:?}", f.event_type()))
    }
}

fn check_all(cached: &Rig, uncached: &Rig, vas: &[u64]) -> Result<(), TestCaseError> {
    for stream in 0..2 {
        for &va in vas {
            for write in [false, true] {
                prop_assert_eq!(
                    cached.translate(stream, va, write),
                    uncached.translate(stream, va, write),
                    "stream {} va {:#x} write {}",
                    stream,
                    va,
                    write
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn cached_translations_equal_uncached_walks(
        capacity in prop_oneof![Just(1usize), Just(4), Just(8), Just(64), Just(1 << 16)],
        ops in proptest::collection::vec(op(probe_vas().len()), 1..60),
    ) {
        let vas = probe_vas();
        let mut cached = rig(capacity, true);
        let mut uncached = rig(capacity, false);
        for o in &ops {
            match o {
                Op::Change { stream, change, cover } => {
                    for r in [&mut cached, &mut uncached] {
                        let (va, level) = r.apply(*stream, change);
                        r.cover(*stream, va, level, *cover);
                    }
                    check_all(&cached, &uncached, &vas)?;
                }
                Op::Extra(e) => {
                    cached.extra(*e, &vas);
                    uncached.extra(*e, &vas);
                    check_all(&cached, &uncached, &vas)?;
                }
                Op::Translate { stream, va_index, write } => {
                    let va = vas[*va_index];
                    prop_assert_eq!(
                        cached.translate(*stream, va, *write),
                        uncached.translate(*stream, va, *write)
                    );
                }
            }
        }
        // The cached model does serve from its caches.
        for r in [&mut cached, &mut uncached] {
            let (va, level) = r.apply(0, &Change::MapPage { region: 0, page: 0, out: 0 });
            r.cover(0, va, level, Cover::Va { leaf: true });
        }
        let req = DmaRequest::read(SIDS[0], page_va(0, 0), 4).privileged();
        let first = cached.h.smmu.translate(&req).map(|t| (t.pa, t.tlb_hit));
        let again = cached.h.smmu.translate(&req).map(|t| (t.pa, t.tlb_hit));
        prop_assert_eq!(first, Ok((cached.pages[0], false)));
        prop_assert_eq!(again, Ok((cached.pages[0], true)));
    }
}

/// Without the invalidation, the cached model keeps serving the old page
/// (the comparison above could fail), and the uncached one walks: a
/// regression test for the last-translation copy, which served the old
/// page with the TLB disabled.
#[test]
fn a_missing_invalidation_is_observed_and_a_disabled_tlb_walks() {
    let mut cached = rig(1 << 16, true);
    let mut uncached = rig(1 << 16, false);
    for r in [&mut cached, &mut uncached] {
        let (va, level) = r.apply(
            0,
            &Change::MapPage {
                region: 0,
                page: 1,
                out: 0,
            },
        );
        r.cover(0, va, level, Cover::Va { leaf: true });
    }
    let va = page_va(0, 1);
    // Twice: the second is the repeat the last-translation copy serves.
    for _ in 0..2 {
        assert_eq!(
            cached.translate(0, va, false),
            uncached.translate(0, va, false)
        );
    }
    for r in [&mut cached, &mut uncached] {
        r.apply(
            0,
            &Change::MapPage {
                region: 0,
                page: 1,
                out: 1,
            },
        );
    }
    assert_eq!(cached.translate(0, va, false), Ok(cached.pages[0]));
    assert_eq!(uncached.translate(0, va, false), Ok(uncached.pages[1]));
}
