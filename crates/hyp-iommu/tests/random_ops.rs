//! Property test: random ownership operations, shares, DMA pins and device
//! DMAs across 2 SMMUs and several streams, checked against a reference
//! ownership map. Zero DMAs reach a page the host does not own, zero
//! faults on host-owned pages, every illegal request refused with nothing
//! changed.
//!
//! `HYP_IOMMU_CASES=N` sets the number of cases (default 20), and
//! `HYP_IOMMU_OPS=N` the operations per case (default 150).

mod common;

use std::collections::HashMap;

use common::{Fixture, Setup, is_s2_translation_fault};
use hyp_iommu::{Error, Owner, ShareTarget};
use proptest::prelude::*;

const P: u64 = 4096;
const PAGES: u64 = 1024;
const SIDS: [u32; 2] = [0x10, 0x11];

#[derive(Clone, Copy, Debug)]
enum Op {
    DonateHyp(u64, u64),
    DonateGuest(u64, u64, u16),
    Reclaim(u64, u64, u16),
    Share(u64, u64, Option<u16>),
    Unshare(u64, u64, Option<u16>),
    Pin(u64, u64),
    Unpin(u64, u64),
    Dma {
        smmu: usize,
        sid: u32,
        page: u64,
        write: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Pages cluster near block boundaries and near each other so that
    // requests collide; ranges are short so most are legal.
    let page = prop_oneof![0..PAGES, 500..524u64, 0..16u64];
    let n = 1..6u64;
    let guest = 0..3u16;
    let target = prop::option::of(0..3u16);
    prop_oneof![
        2 => (page.clone(), n.clone()).prop_map(|(p, n)| Op::DonateHyp(p, n)),
        3 => (page.clone(), n.clone(), guest.clone()).prop_map(|(p, n, g)| Op::DonateGuest(p, n, g)),
        3 => (page.clone(), n.clone(), guest).prop_map(|(p, n, g)| Op::Reclaim(p, n, g)),
        1 => (page.clone(), n.clone(), target.clone()).prop_map(|(p, n, t)| Op::Share(p, n, t)),
        1 => (page.clone(), n.clone(), target).prop_map(|(p, n, t)| Op::Unshare(p, n, t)),
        1 => (page.clone(), n.clone()).prop_map(|(p, n)| Op::Pin(p, n)),
        1 => (page.clone(), n).prop_map(|(p, n)| Op::Unpin(p, n)),
        4 => (0..2usize, 0..2usize, page, any::<bool>())
            .prop_map(|(smmu, s, page, write)| Op::Dma { smmu, sid: SIDS[s], page, write }),
    ]
}

/// The reference: owner, share and pin count per page index.
#[derive(Clone, Default)]
struct Reference {
    owner: HashMap<u64, Owner>,
    share: HashMap<u64, ShareTarget>,
    pins: HashMap<u64, u32>,
}

impl Reference {
    fn owner(&self, p: u64) -> Owner {
        self.owner.get(&p).copied().unwrap_or(Owner::Host)
    }

    fn in_ram(p: u64, n: u64) -> bool {
        p + n <= PAGES
    }

    /// Applies `op` if legal; returns whether it was.
    fn apply(&mut self, op: Op) -> bool {
        let all = |p: u64, n: u64, f: &dyn Fn(u64) -> bool| (p..p + n).all(f);
        match op {
            Op::DonateHyp(p, n) | Op::DonateGuest(p, n, _) => {
                let to = match op {
                    Op::DonateGuest(_, _, g) => Owner::Guest(g),
                    _ => Owner::Hyp,
                };
                let ok = Self::in_ram(p, n)
                    && all(p, n, &|q| {
                        self.owner(q) == Owner::Host
                            && !self.share.contains_key(&q)
                            && !self.pins.contains_key(&q)
                    });
                if ok {
                    (p..p + n).for_each(|q| {
                        self.owner.insert(q, to);
                    });
                }
                ok
            }
            Op::Reclaim(p, n, g) => {
                let ok = Self::in_ram(p, n) && all(p, n, &|q| self.owner(q) == Owner::Guest(g));
                if ok {
                    (p..p + n).for_each(|q| {
                        self.owner.remove(&q);
                    });
                }
                ok
            }
            Op::Share(p, n, t) => {
                let ok = Self::in_ram(p, n)
                    && all(p, n, &|q| {
                        self.owner(q) == Owner::Host && !self.share.contains_key(&q)
                    });
                if ok {
                    (p..p + n).for_each(|q| {
                        self.share.insert(q, target(t));
                    });
                }
                ok
            }
            Op::Unshare(p, n, t) => {
                let ok =
                    Self::in_ram(p, n) && all(p, n, &|q| self.share.get(&q) == Some(&target(t)));
                if ok {
                    (p..p + n).for_each(|q| {
                        self.share.remove(&q);
                    });
                }
                ok
            }
            Op::Pin(p, n) => {
                let ok = Self::in_ram(p, n) && all(p, n, &|q| self.owner(q) == Owner::Host);
                if ok {
                    (p..p + n).for_each(|q| *self.pins.entry(q).or_insert(0) += 1);
                }
                ok
            }
            Op::Unpin(p, n) => {
                let ok = Self::in_ram(p, n) && all(p, n, &|q| self.pins.contains_key(&q));
                if ok {
                    for q in p..p + n {
                        let c = self.pins.get_mut(&q).unwrap();
                        *c -= 1;
                        if *c == 0 {
                            self.pins.remove(&q);
                        }
                    }
                }
                ok
            }
            Op::Dma { .. } => true,
        }
    }
}

fn target(t: Option<u16>) -> ShareTarget {
    t.map_or(ShareTarget::Hyp, ShareTarget::Guest)
}

fn request_error(e: &Error) -> bool {
    !matches!(
        e,
        Error::Unresponsive { .. }
            | Error::Shadow(_)
            | Error::RollbackIncomplete { .. }
            | Error::Scrub(_)
            | Error::Driver { .. }
    )
}

fn run(fx: &mut Fixture, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut reference = Reference::default();
    let base = fx.ram.base;
    let mut stamp = 1u8;
    for &op in ops {
        let addr = |p: u64| base + p * P;
        let before = fx.hyp.ownership().clone();
        let legal = reference.clone().apply(op);
        let r = match op {
            Op::DonateHyp(p, n) => fx.hyp.donate_to_hyp(addr(p), n * P),
            Op::DonateGuest(p, n, g) => fx.hyp.donate_to_guest(addr(p), n * P, g),
            Op::Reclaim(p, n, g) => fx.hyp.reclaim_from_guest(addr(p), n * P, g),
            Op::Share(p, n, t) => fx.hyp.share(addr(p), n * P, target(t)),
            Op::Unshare(p, n, t) => fx.hyp.unshare(addr(p), n * P, target(t)),
            Op::Pin(p, n) => fx.hyp.pin_dma(addr(p), n * P),
            Op::Unpin(p, n) => fx.hyp.unpin_dma(addr(p), n * P),
            Op::Dma {
                smmu,
                sid,
                page,
                write,
            } => {
                let pa = addr(page);
                let host = reference.owner(page) == Owner::Host;
                let mem_before = fx.cpu_read(pa, 8);
                let r = if write {
                    stamp = stamp.wrapping_add(1).max(1);
                    fx.dma_write(smmu, sid, pa, &[stamp; 8])
                        .map(|()| vec![stamp; 8])
                } else {
                    fx.dma_read(smmu, sid, pa, 8)
                };
                match r {
                    Ok(data) => {
                        prop_assert!(
                            host,
                            "{op:?}: DMA reached a page of {:?}",
                            reference.owner(page)
                        );
                        prop_assert_eq!(fx.cpu_read(pa, 8), data);
                    }
                    Err(f) => {
                        prop_assert!(!host, "{op:?}: DMA to a host page faulted: {f:?}");
                        prop_assert!(is_s2_translation_fault(&f), "{:?}", f);
                        prop_assert_eq!(
                            fx.cpu_read(pa, 8),
                            mem_before,
                            "a faulting DMA changed memory"
                        );
                    }
                }
                Ok(())
            }
        };
        match r {
            Ok(()) => prop_assert!(legal, "{op:?} was accepted but is illegal"),
            Err(e) => {
                prop_assert!(!legal, "{op:?} was refused ({e}) but is legal");
                prop_assert!(request_error(&e), "{op:?}: {e}");
                prop_assert!(
                    fx.hyp.ownership() == &before,
                    "{op:?} refused but changed the tracker"
                );
            }
        }
        reference.apply(op);
    }
    // Sweep: every page on every SMMU and stream.
    for page in 0..PAGES {
        let host = reference.owner(page) == Owner::Host;
        prop_assert_eq!(fx.hyp.owner(base + page * P), Some(reference.owner(page)));
        for smmu in 0..2 {
            for sid in SIDS {
                let r = fx.dma_read(smmu, sid, base + page * P, 8);
                prop_assert_eq!(
                    r.is_ok(),
                    host,
                    "page {} smmu {} sid {:#x}",
                    page,
                    smmu,
                    sid
                );
            }
        }
    }
    Ok(())
}

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: env("HYP_IOMMU_CASES", 20),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_ownership_operations_match_the_reference(
        ops in prop::collection::vec(op(), env("HYP_IOMMU_OPS", 150) as usize),
        leaf in any::<bool>(),
    ) {
        let mut fx = Fixture::new(Setup {
            smmus: 2,
            host_ram: PAGES * P,
            force_leaf: leaf,
            ..Setup::default()
        });
        for s in 0..2 {
            for sid in SIDS {
                fx.hyp.attach_host_stream(s, sid).unwrap();
            }
        }
        run(&mut fx, &ops)?;
    }
}
