//! Failures half way through an operation (table memory running out, an
//! SMMU that stops answering): whatever was done is undone, and the shadow
//! maps exactly the host's pages afterwards.

mod common;

use common::{Fixture, Setup};
use hyp_iommu::{Error, Owner};

const SID: u32 = 0x10;
const P: u64 = 4096;
const M2: u64 = 2 << 20;

fn fixture(setup: Setup) -> Fixture {
    let mut fx = Fixture::new(setup);
    for s in 0..setup.smmus {
        fx.hyp.attach_host_stream(s, SID).unwrap();
    }
    fx
}

/// Returns the first 2 MiB-aligned address of host RAM with `n` blocks of
/// host RAM from it.
fn block(fx: &Fixture, n: u64) -> u64 {
    let x = fx.ram.base.next_multiple_of(M2);
    assert!(x + n * M2 <= fx.ram.end());
    x
}

/// Checks that the shadow maps exactly the host's pages of
/// `[base, base + len)` and that every SMMU reaches exactly those.
fn matches_ownership(fx: &Fixture, base: u64, len: u64) {
    for pa in (base..base + len).step_by(P as usize) {
        let host = fx.hyp.owner(pa) == Some(Owner::Host);
        let mapped = fx.hyp.shadow().page_table().translate(pa);
        assert_eq!(mapped, host.then_some(pa), "shadow at {pa:#x}");
        for s in 0..fx.models.len() {
            let r = fx.dma_read(s, SID, pa, 8);
            assert_eq!(r.is_ok(), host, "SMMU {s} at {pa:#x}: {r:?}");
        }
    }
}

#[test]
fn a_donation_out_of_table_memory_half_way_leaves_the_host_its_mappings() {
    let mut fx = fixture(Setup {
        smmus: 2,
        ..Setup::default()
    });
    let x = block(&fx, 2);
    // The first block becomes a table of leaves, the second stays a block.
    fx.hyp.donate_to_guest(x, P, 1).unwrap();
    fx.hyp.reclaim_from_guest(x, P, 1).unwrap();
    let owners = fx.hyp.ownership().clone();
    fx.mem.fail_allocs_after(Some(0));
    // The first table is removed whole, then splitting the second block
    // needs a table that is not there.
    let r = fx.hyp.donate_to_guest(x, M2 + P, 1);
    fx.mem.fail_allocs_after(None);
    eprintln!("{r:?}");
    assert!(
        matches!(r, Err(Error::Shadow(io_pgtable::Error::Alloc(_)))),
        "{r:?}"
    );
    assert_eq!(fx.hyp.ownership(), &owners);
    matches_ownership(&fx, x, 2 * M2);
}

#[test]
fn a_rollback_left_incomplete_is_mapped_again_by_the_next_operation() {
    let mut fx = fixture(Setup {
        smmus: 2,
        force_leaf: true,
        ..Setup::default()
    });
    let x = block(&fx, 2);
    let owners = fx.hyp.ownership().clone();
    // The donation removes the block's table whole; SMMU 1 does not
    // answer, and mapping it back needs a table that is not there.
    fx.models[1].pause_commands();
    fx.mem.fail_allocs_after(Some(0));
    let r = fx.hyp.donate_to_guest(x, M2, 1);
    fx.mem.fail_allocs_after(None);
    fx.models[1].resume_commands();
    assert_eq!(
        r,
        Err(Error::RollbackIncomplete {
            addr: x,
            len: M2,
            error: io_pgtable::Error::Alloc(io_pgtable::env::AllocError::NoMemory { size: 4096 }),
        })
    );
    assert_eq!(fx.hyp.ownership(), &owners);
    // The host's pages are unmapped (the safe side) ...
    assert_eq!(fx.hyp.shadow().page_table().translate(x), None);
    // ... until the next operation maps them again, whatever it is.
    let other = x + M2;
    fx.hyp.donate_to_guest(other, P, 2).unwrap();
    matches_ownership(&fx, x, 2 * M2);
    for s in 0..2 {
        let audit = fx.models[s].audit_caches();
        assert!(audit.stale.is_empty(), "SMMU {s}: {audit:?}");
    }
    // And the range can be donated again.
    fx.hyp.donate_to_guest(x, M2, 1).unwrap();
    matches_ownership(&fx, x, 2 * M2);
}
