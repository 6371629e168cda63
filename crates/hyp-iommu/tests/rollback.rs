//! Failures half way through an operation (table memory running out, an
//! SMMU that stops answering): whatever was done is undone, and the shadow
//! maps exactly the host's pages afterwards.

mod common;

use common::{Fixture, Setup};
use hyp_iommu::{Error, Owner, Ownership};

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

/// Returns a two-SMMU leaf-mode fixture, a 2 MiB host range and the
/// ownership before, after a donation of the range that left it a hole:
/// the donation removed the block's table whole, SMMU 1 did not answer,
/// and mapping it back needed a table that was not there. Table memory
/// still fails when `keep_failing`.
fn with_hole(keep_failing: bool) -> (Fixture, u64, Ownership) {
    let mut fx = fixture(Setup {
        smmus: 2,
        force_leaf: true,
        ..Setup::default()
    });
    let x = block(&fx, 2);
    let owners = fx.hyp.ownership().clone();
    fx.models[1].pause_commands();
    fx.mem.fail_allocs_after(Some(0));
    let r = fx.hyp.donate_to_guest(x, M2, 1);
    if !keep_failing {
        fx.mem.fail_allocs_after(None);
    }
    fx.models[1].resume_commands();
    assert_eq!(
        r,
        Err(Error::RollbackIncomplete {
            addr: x,
            len: M2,
            error: io_pgtable::Error::Alloc(io_pgtable::env::AllocError::NoMemory { size: 4096 }),
        })
    );
    (fx, x, owners)
}

#[test]
fn a_rollback_left_incomplete_is_mapped_again_by_the_next_operation() {
    let (mut fx, x, owners) = with_hole(false);
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

/// A hole a rollback left is mapped again later without looking at
/// ownership: so its pages must not change owner while it is open. A
/// donation over it is refused (its range is not fully mapped) and
/// changes nothing; once the hole is filled the host's pages are the
/// host's again and can be donated.
#[test]
fn pages_of_an_open_hole_cannot_be_donated() {
    let (mut fx, x, owners) = with_hole(true);
    // Still no table memory: the hole stays open, and a donation of one
    // of its pages must fail rather than hand over a page a later
    // operation would map for the host.
    let page = x + 5 * P;
    assert!(fx.hyp.donate_to_guest(page, P, 3).is_err());
    assert_eq!(fx.hyp.ownership(), &owners);
    fx.mem.fail_allocs_after(None);
    // The next operation fills the hole: the shadow matches ownership,
    // and the page can now be donated and is then unreachable.
    fx.hyp.donate_to_guest(x + M2, P, 2).unwrap();
    matches_ownership(&fx, x, 2 * M2);
    fx.hyp.donate_to_guest(page, P, 3).unwrap();
    matches_ownership(&fx, x, 2 * M2);
    assert_eq!(fx.hyp.shadow().page_table().translate(page), None);
    for s in 0..2 {
        let audit = fx.models[s].audit_caches();
        assert!(audit.stale.is_empty(), "SMMU {s}: {audit:?}");
    }
}

/// Table memory that runs a hook before each allocation.
struct HookedMem {
    inner: smmuv3_hosted::SimDmaMemory,
    hook: std::sync::Mutex<Option<Box<dyn FnMut() + Send>>>,
}

// SAFETY: forwards to `SimDmaMemory`, which upholds the contract; the hook
// does not touch the blocks.
unsafe impl io_pgtable::env::TableMemory for HookedMem {
    fn alloc_table(
        &self,
        size: usize,
    ) -> Result<io_pgtable::env::TableBlock, io_pgtable::env::AllocError> {
        if let Some(h) = self.hook.lock().unwrap().as_mut() {
            h();
        }
        self.inner.alloc_table(size)
    }

    unsafe fn free_table(&self, block: io_pgtable::env::TableBlock, size: usize) {
        // SAFETY: forwarded from our caller; the block came from `inner`.
        unsafe { self.inner.free_table(block, size) }
    }

    fn phys_to_cpu(&self, phys: u64) -> std::ptr::NonNull<u8> {
        self.inner.phys_to_cpu(phys)
    }
}

impl io_pgtable::env::CacheMaintenance for HookedMem {
    fn clean(
        &self,
        cpu: std::ptr::NonNull<u8>,
        phys: u64,
        len: usize,
    ) -> Result<(), io_pgtable::env::CacheError> {
        self.inner.clean(cpu, phys, len)
    }

    fn device_write_barrier(&self) {
        self.inner.device_write_barrier()
    }

    fn full_barrier(&self) {
        self.inner.full_barrier()
    }
}

#[test]
fn a_reclaim_whose_undoing_an_smmu_misses_says_so() {
    let parts = common::Parts::new(&Setup {
        smmus: 2,
        force_leaf: true,
        ..Setup::default()
    });
    let mem = HookedMem {
        inner: smmuv3_hosted::SimDmaMemory::new(parts.mem.clone()),
        hook: std::sync::Mutex::new(None),
    };
    let mut hyp = hyp_iommu::HypIommu::new(
        &parts.map,
        parts.smmus.clone(),
        mem,
        common::SimScrub(parts.mem.clone()),
        hyp_iommu::Options { force_leaf: true },
    )
    .unwrap();
    for s in 0..2 {
        hyp.attach_host_stream(s, SID).unwrap();
    }
    let x = parts.ram.base.next_multiple_of(M2);
    assert!(x + 2 * M2 <= parts.ram.end());
    // Two whole tables go: mapping them back needs two tables.
    hyp.donate_to_guest(x, 2 * M2, 1).unwrap();
    let owners = hyp.ownership().clone();
    // When the second table is asked for, a device has reached the first
    // half through SMMU 1, which then stops answering; no table is left.
    let (models, smem) = (parts.models.clone(), parts.mem.clone());
    let mut calls = 0;
    *hyp.shadow().page_table().env().mem().hook.lock().unwrap() = Some(Box::new(move || {
        calls += 1;
        if calls == 2 {
            let mut buf = [0u8; 8];
            let req = smmuv3_model::DmaRequest::read(SID, x, 8);
            assert_eq!(models[1].dma_read(&req, &mut buf), Ok(()));
            models[1].pause_commands();
            smem.fail_allocs_after(Some(0));
        }
    }));
    let r = hyp.reclaim_from_guest(x, 2 * M2, 1);
    *hyp.shadow().page_table().env().mem().hook.lock().unwrap() = None;
    parts.mem.fail_allocs_after(None);
    // The pages stay the guest's, but SMMU 1 may still reach the first
    // half: the error must not say they are unreachable.
    assert_eq!(hyp.ownership(), &owners);
    assert!(
        matches!(r, Err(Error::Unresponsive { smmu: 1, .. })),
        "{r:?}"
    );
    let mut buf = [0u8; 8];
    let req = smmuv3_model::DmaRequest::read(SID, x, 8);
    assert!(parts.models[0].dma_read(&req, &mut buf).is_err());
    assert_eq!(
        parts.models[1].dma_read(&req, &mut buf),
        Ok(()),
        "SMMU 1's TLB still serves it"
    );
    // Once it answers, the next operation invalidates it there too.
    parts.models[1].resume_commands();
    let spare = x + 2 * M2;
    hyp.donate_to_guest(spare, P, 2).unwrap();
    for s in 0..2 {
        assert!(
            parts.models[s].dma_read(&req, &mut buf).is_err(),
            "SMMU {s}"
        );
    }
}

mod random {
    //! Random donations and reclaims, each with an injected failure
    //! (table memory running out after a few tables, an SMMU that does not
    //! answer): after every one, no device reaches a page the host does not
    //! own, and a refused request changed nothing; once the failures stop,
    //! the next operation leaves the shadow matching ownership exactly.

    use super::*;
    use proptest::prelude::*;

    const PAGES: u64 = 2048;
    /// Left out of the random operations: the final operation's page.
    const SPARE: u64 = PAGES - 1;

    #[derive(Clone, Copy, Debug)]
    enum Fault {
        None,
        Allocs(u64),
        Pause(usize),
        Both(u64, usize),
    }

    #[derive(Clone, Copy, Debug)]
    struct Op {
        /// Power SMMU `n` off before the operation (and on again after).
        cycle: Option<usize>,
        donate: bool,
        page: u64,
        pages: u64,
        guest: u16,
        fault: Fault,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Ranges start near 2 MiB boundaries and often cover whole blocks.
        let page = prop_oneof![0..SPARE, 508..516u64, 1020..1030u64, 0..4u64];
        let pages = prop_oneof![1..4u64, 510..1030u64];
        let fault = prop_oneof![
            1 => Just(Fault::None),
            2 => (0..4u64).prop_map(Fault::Allocs),
            1 => (0..2usize).prop_map(Fault::Pause),
            2 => (0..4u64, 0..2usize).prop_map(|(k, s)| Fault::Both(k, s)),
        ];
        let cycle = prop_oneof![4 => Just(None), 1 => (0..2usize).prop_map(Some)];
        (cycle, any::<bool>(), page, pages, 0..2u16, fault).prop_map(
            |(cycle, donate, page, pages, guest, fault)| Op {
                cycle,
                donate,
                page,
                pages: pages.min(SPARE - page).max(1),
                guest,
                fault,
            },
        )
    }

    fn isolated(fx: &Fixture, from: u64, to: u64) -> Result<(), TestCaseError> {
        for pa in (from..to).step_by(P as usize) {
            if fx.hyp.owner(pa) == Some(Owner::Host) {
                continue;
            }
            for s in 0..fx.models.len() {
                let r = fx.dma_read(s, SID, pa, 8);
                prop_assert!(
                    r.is_err(),
                    "SMMU {} reaches {:#x} of {:?}",
                    s,
                    pa,
                    fx.hyp.owner(pa)
                );
            }
        }
        Ok(())
    }

    fn run(leaf: bool, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut fx = fixture(Setup {
            smmus: 2,
            host_ram: PAGES * P,
            force_leaf: leaf,
            ..Setup::default()
        });
        let base = fx.ram.base;
        for op in ops {
            let addr = base + op.page * P;
            let len = op.pages * P;
            let before = fx.hyp.ownership().clone();
            if let Some(s) = op.cycle {
                fx.hyp.power_off(s).unwrap();
            }
            match op.fault {
                Fault::None => {}
                Fault::Allocs(k) => fx.mem.fail_allocs_after(Some(k)),
                Fault::Pause(s) => fx.models[s].pause_commands(),
                Fault::Both(k, s) => {
                    fx.mem.fail_allocs_after(Some(k));
                    fx.models[s].pause_commands();
                }
            }
            let r = if op.donate {
                fx.hyp.donate_to_guest(addr, len, op.guest)
            } else {
                fx.hyp.reclaim_from_guest(addr, len, op.guest)
            };
            fx.mem.fail_allocs_after(None);
            for m in &fx.models {
                m.resume_commands();
            }
            if let Some(s) = op.cycle {
                let fresh = common::smmu_on(&fx.mem, &fx.models[s]);
                fx.hyp.power_on(s, fresh).unwrap();
            }
            if let Err(e) = r {
                prop_assert_eq!(
                    fx.hyp.ownership(),
                    &before,
                    "{:?} failed ({}) but changed the tracker",
                    op,
                    e
                );
                let injected = matches!(
                    e,
                    Error::Unresponsive { .. }
                        | Error::Shadow(_)
                        | Error::RollbackIncomplete { .. }
                );
                prop_assert!(
                    injected || matches!(e, Error::WrongOwner { .. }),
                    "{:?}: {}",
                    op,
                    e
                );
                if matches!(op.fault, Fault::None) {
                    prop_assert!(!injected, "{:?} failed without a fault: {}", op, e);
                }
            }
            let lo = addr.saturating_sub(P).max(base);
            let hi = (addr + len + P).min(base + PAGES * P);
            isolated(&fx, lo, hi)?;
        }
        // Without failures, one more operation maps back whatever a
        // rollback left unmapped.
        let spare = base + SPARE * P;
        fx.hyp.donate_to_guest(spare, P, 7).unwrap();
        fx.hyp.reclaim_from_guest(spare, P, 7).unwrap();
        for pa in (base..base + PAGES * P).step_by(P as usize) {
            let host = fx.hyp.owner(pa) == Some(Owner::Host);
            prop_assert_eq!(
                fx.hyp.shadow().page_table().translate(pa),
                host.then_some(pa),
                "shadow at {:#x}",
                pa
            );
            for s in 0..2 {
                prop_assert_eq!(
                    fx.dma_read(s, SID, pa, 8).is_ok(),
                    host,
                    "SMMU {} at {:#x}",
                    s,
                    pa
                );
            }
        }
        for s in 0..2 {
            let audit = fx.models[s].audit_caches();
            prop_assert!(
                audit.stale.is_empty() && audit.stale_walks.is_empty(),
                "SMMU {}: {:?}",
                s,
                audit
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("HYP_IOMMU_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16),
            max_shrink_iters: 100,
            ..ProptestConfig::default()
        })]

        #[test]
        fn failures_half_way_leave_ownership_and_the_shadow_in_step(
            ops in prop::collection::vec(op(), 1..24),
            leaf in any::<bool>(),
        ) {
            run(leaf, &ops)?;
        }
    }
}
