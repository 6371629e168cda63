//! Every illegal ownership, share and pin request is refused with its
//! typed error and changes nothing: not the tracker, not the shadow, not
//! a single command to an SMMU.

mod common;

use common::{Fixture, Setup};
use hyp_iommu::{Error, MAX_GUEST, Owner, ShareTarget};

const P: u64 = 4096;

#[global_allocator]
static GLOBAL: sim_memory::counting::CountingAlloc = sim_memory::counting::CountingAlloc;

/// Runs `op` on `fx`, expects `want`, and checks that nothing changed.
fn refused(fx: &mut Fixture, want: Error, op: impl FnOnce(&mut common::Hyp) -> Result<(), Error>) {
    let owners = fx.hyp.ownership().clone();
    let pt = fx.hyp.shadow().page_table();
    let probe: Vec<Option<u64>> = (0..fx.ram.len / P)
        .map(|k| pt.translate(fx.ram.base + k * P))
        .collect();
    let cmds = fx.hyp.smmu(0).unwrap().stats().commands();
    assert_eq!(op(&mut fx.hyp), Err(want));
    assert_eq!(fx.hyp.ownership(), &owners, "tracker changed by {want:?}");
    let pt = fx.hyp.shadow().page_table();
    let after: Vec<Option<u64>> = (0..fx.ram.len / P)
        .map(|k| pt.translate(fx.ram.base + k * P))
        .collect();
    assert_eq!(after, probe, "shadow changed by {want:?}");
    assert_eq!(
        fx.hyp.smmu(0).unwrap().stats().commands(),
        cmds,
        "commands sent for {want:?}"
    );
}

fn fixture() -> Fixture {
    Fixture::new(Setup {
        host_ram: 2 << 20,
        ..Setup::default()
    })
}

#[test]
fn bad_ranges_are_refused_for_every_operation() {
    let mut fx = fixture();
    let a = fx.page(0);
    type Op = fn(&mut common::Hyp, u64, u64) -> Result<(), Error>;
    let ops: [Op; 7] = [
        |h, a, l| h.donate_to_hyp(a, l),
        |h, a, l| h.donate_to_guest(a, l, 1),
        |h, a, l| h.reclaim_from_guest(a, l, 1),
        |h, a, l| h.share(a, l, ShareTarget::Hyp),
        |h, a, l| h.unshare(a, l, ShareTarget::Hyp),
        |h, a, l| h.pin_dma(a, l),
        |h, a, l| h.unpin_dma(a, l),
    ];
    let sim_end = fx.mem.base() + fx.mem.size();
    for op in ops {
        refused(&mut fx, Error::Unaligned(a + 8), |h| op(h, a + 8, P));
        refused(&mut fx, Error::Unaligned(100), |h| op(h, a, 100));
        refused(&mut fx, Error::Empty, |h| op(h, a, 0));
        refused(&mut fx, Error::Overflow, |h| op(h, a, !0xfff));
        // Past the end of memory, in MMIO, and across the end of RAM.
        refused(&mut fx, Error::NotRam(sim_end), |h| op(h, sim_end, P));
        refused(&mut fx, Error::NotRam(common::MMIO.base), |h| {
            op(h, common::MMIO.base, P)
        });
        refused(&mut fx, Error::NotRam(sim_end), |h| {
            op(h, sim_end - P, 2 * P)
        });
    }
}

#[test]
fn donations_need_host_pages_that_are_unshared_and_unpinned() {
    let mut fx = fixture();
    let (a, b) = (fx.page(0), fx.page(1));
    // The hypervisor's own memory (outside the host RAM) is not the host's.
    let hyp_page = fx.map.hyp()[0].base;
    let hyp_owned = Error::WrongOwner {
        addr: hyp_page,
        owner: Owner::Hyp,
        expected: Owner::Host,
    };
    refused(&mut fx, hyp_owned, |h| h.donate_to_hyp(hyp_page, P));
    refused(&mut fx, hyp_owned, |h| h.donate_to_guest(hyp_page, P, 3));
    // Double donation, and donating a guest's page.
    fx.hyp.donate_to_hyp(a, P).unwrap();
    let twice = Error::WrongOwner {
        addr: a,
        owner: Owner::Hyp,
        expected: Owner::Host,
    };
    refused(&mut fx, twice, |h| h.donate_to_hyp(a, P));
    refused(&mut fx, twice, |h| h.donate_to_guest(a, P, 1));
    fx.hyp.donate_to_guest(b, P, 1).unwrap();
    let guests = Error::WrongOwner {
        addr: b,
        owner: Owner::Guest(1),
        expected: Owner::Host,
    };
    refused(&mut fx, guests, |h| h.donate_to_guest(b, P, 2));
    // A range whose later page fails names that page, and the earlier,
    // legal page is not donated either.
    let (e, f) = (fx.page(4), fx.page(5));
    fx.hyp.donate_to_guest(f, P, 1).unwrap();
    refused(
        &mut fx,
        Error::WrongOwner {
            addr: f,
            owner: Owner::Guest(1),
            expected: Owner::Host,
        },
        |h| h.donate_to_hyp(e, 2 * P),
    );
    assert_eq!(fx.hyp.owner(e), Some(Owner::Host));
    let c = fx.page(2);
    // Shared pages stay the host's and cannot be donated.
    fx.hyp.share(c, P, ShareTarget::Guest(4)).unwrap();
    refused(
        &mut fx,
        Error::Shared {
            addr: c,
            with: ShareTarget::Guest(4),
        },
        |h| h.donate_to_guest(c, P, 4),
    );
    // Pinned pages cannot be donated until every mapping is gone.
    let d = fx.page(3);
    fx.hyp.pin_dma(d, P).unwrap();
    fx.hyp.pin_dma(d, P).unwrap();
    refused(&mut fx, Error::Pinned { addr: d, pins: 2 }, |h| {
        h.donate_to_hyp(d, P)
    });
    fx.hyp.unpin_dma(d, P).unwrap();
    refused(&mut fx, Error::Pinned { addr: d, pins: 1 }, |h| {
        h.donate_to_hyp(d, P)
    });
    fx.hyp.unpin_dma(d, P).unwrap();
    fx.hyp.donate_to_hyp(d, P).unwrap();
    assert_eq!(fx.hyp.owner(d), Some(Owner::Hyp));
}

#[test]
fn reclaims_need_the_guests_own_pages() {
    let mut fx = fixture();
    let (a, b) = (fx.page(0), fx.page(1));
    fx.hyp.donate_to_guest(a, P, 1).unwrap();
    fx.hyp.donate_to_hyp(b, P).unwrap();
    refused(
        &mut fx,
        Error::WrongOwner {
            addr: a,
            owner: Owner::Guest(1),
            expected: Owner::Guest(2),
        },
        |h| h.reclaim_from_guest(a, P, 2),
    );
    refused(
        &mut fx,
        Error::WrongOwner {
            addr: b,
            owner: Owner::Hyp,
            expected: Owner::Guest(1),
        },
        |h| h.reclaim_from_guest(b, P, 1),
    );
    refused(
        &mut fx,
        Error::WrongOwner {
            addr: b,
            owner: Owner::Hyp,
            expected: Owner::Guest(1),
        },
        |h| h.reclaim_from_guest(a, 2 * P, 1),
    );
    let c = fx.page(2);
    refused(
        &mut fx,
        Error::WrongOwner {
            addr: c,
            owner: Owner::Host,
            expected: Owner::Guest(1),
        },
        |h| h.reclaim_from_guest(c, P, 1),
    );
    refused(&mut fx, Error::BadGuest(MAX_GUEST + 1), |h| {
        h.reclaim_from_guest(a, P, MAX_GUEST + 1)
    });
    refused(&mut fx, Error::BadGuest(u16::MAX), |h| {
        h.donate_to_guest(c, P, u16::MAX)
    });
    fx.hyp.reclaim_from_guest(a, P, 1).unwrap();
    assert_eq!(fx.hyp.owner(a), Some(Owner::Host));
    refused(
        &mut fx,
        Error::WrongOwner {
            addr: a,
            owner: Owner::Host,
            expected: Owner::Guest(1),
        },
        |h| h.reclaim_from_guest(a, P, 1),
    );
}

#[test]
fn shares_and_pins_follow_their_rules() {
    let mut fx = fixture();
    let (a, b) = (fx.page(0), fx.page(1));
    fx.hyp.share(a, P, ShareTarget::Hyp).unwrap();
    assert_eq!(fx.hyp.ownership().share(a), Some(ShareTarget::Hyp));
    assert_eq!(
        fx.hyp.owner(a),
        Some(Owner::Host),
        "a share keeps host ownership"
    );
    refused(
        &mut fx,
        Error::Shared {
            addr: a,
            with: ShareTarget::Hyp,
        },
        |h| h.share(a, P, ShareTarget::Guest(1)),
    );
    refused(&mut fx, Error::NotShared(a), |h| {
        h.unshare(a, P, ShareTarget::Guest(1))
    });
    refused(&mut fx, Error::NotShared(b), |h| {
        h.unshare(a, 2 * P, ShareTarget::Hyp)
    });
    refused(&mut fx, Error::BadGuest(u16::MAX), |h| {
        h.share(b, P, ShareTarget::Guest(u16::MAX))
    });
    fx.hyp.donate_to_guest(b, P, 5).unwrap();
    let not_host = Error::WrongOwner {
        addr: b,
        owner: Owner::Guest(5),
        expected: Owner::Host,
    };
    refused(&mut fx, not_host, |h| h.share(b, P, ShareTarget::Hyp));
    refused(&mut fx, not_host, |h| h.pin_dma(b, P));
    refused(&mut fx, Error::NotPinned(a), |h| h.unpin_dma(a, P));
    // A shared page may be pinned (it is still the host's).
    fx.hyp.pin_dma(a, P).unwrap();
    assert_eq!(fx.hyp.ownership().pins(a), 1);
    let c = fx.page(2);
    fx.hyp.pin_dma(c, P).unwrap();
    // Unpinning a range fails on its first unpinned page, changing nothing.
    let d = fx.page(3);
    refused(&mut fx, Error::NotPinned(d), |h| h.unpin_dma(c, 2 * P));
    fx.hyp.unshare(a, P, ShareTarget::Hyp).unwrap();
    assert_eq!(fx.hyp.ownership().share(a), None);
    assert_eq!(fx.hyp.ownership().pinned_pages(), 2);
}

/// The host may pin every page of its RAM (and pin it again): that costs
/// the hypervisor no heap, so no sequence of pins can exhaust it.
#[test]
fn pinning_every_page_allocates_nothing() {
    let mut fx = fixture();
    let (base, len) = (fx.ram.base, fx.ram.len);
    let pinned = sim_memory::counting::allocations(|| {
        fx.hyp.pin_dma(base, len).unwrap();
        fx.hyp.pin_dma(base + P, len - P).unwrap();
    });
    assert_eq!(pinned, 0, "heap allocations for pins");
    let o = fx.hyp.ownership();
    assert_eq!(o.pinned_pages() as u64, len / P);
    assert_eq!((o.pins(base), o.pins(base + len - P)), (1, 2));
    assert_eq!(
        fx.hyp.donate_to_hyp(base + 7 * P, P),
        Err(Error::Pinned {
            addr: base + 7 * P,
            pins: 2
        })
    );
    let unpinned = sim_memory::counting::allocations(|| {
        fx.hyp.unpin_dma(base, len).unwrap();
    });
    assert_eq!(unpinned, 0);
    let o = fx.hyp.ownership();
    assert_eq!(o.pinned_pages() as u64, len / P - 1);
    assert_eq!((o.pins(base), o.pins(base + P)), (0, 1));
    assert_eq!(fx.hyp.unpin_dma(base, P), Err(Error::NotPinned(base)));
}
