//! A link reservation outliving its domain, against a new domain the
//! allocator put at the same address (as a slab allocator, the rule in
//! kernels and hypervisors, does at once). Its own test binary: it swaps
//! in a global allocator that hands the last freed block of one size back
//! first, and no other test may allocate that size meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::null_mut;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use common::*;
use dma_mapping::{
    Attrs, DeviceConfig, Direction, DmaDevice, DmaDomain, DmaError, DomainConfig, Invalidation,
    IommuDomain,
};
use sim_memory::Coherency;

/// The system allocator, keeping one freed block of `SIZE` bytes for the
/// next allocation of that size.
struct Recycling;

/// The block size recycled (0: none).
static SIZE: AtomicUsize = AtomicUsize::new(0);
/// The kept block.
static KEPT: AtomicPtr<u8> = AtomicPtr::new(null_mut());

// SAFETY: every block comes from `System` with the layout it is asked
// for (a kept block was allocated with a layout of the same size, and
// the only type of that size recycled here has one alignment) and goes
// back to it at most once: a block is either kept or freed.
unsafe impl GlobalAlloc for Recycling {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() == SIZE.load(Ordering::Relaxed) {
            let p = KEPT.swap(null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                return p;
            }
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if l.size() == SIZE.load(Ordering::Relaxed)
            && KEPT
                .compare_exchange(null_mut(), p, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return;
        }
        // SAFETY: `p` came from `System` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Recycling = Recycling;

/// The block of an `Arc<Dom>`: its two counts and the domain.
fn arc_block_size() -> usize {
    Layout::new::<[usize; 2]>()
        .extend(Layout::new::<Dom>())
        .unwrap()
        .0
        .pad_to_align()
        .size()
}

/// Before, a reservation named its domain by the domain's address: a new
/// domain at that address took it for its own and mapped at an IOVA its
/// allocator never gave out (and would hand to someone else).
#[test]
fn a_reservation_of_a_dropped_domain_is_refused_by_a_new_domain_at_its_address() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let new_domain = || {
        let hd = smmuv3_hosted::HostedDomain::new_stage1(&f.sys.smmu, io_pgtable::Granule::K4, 48)
            .unwrap();
        let coherent = f.sys.smmu.features().coherent;
        Arc::new(
            DmaDomain::new(
                dma_mapping::smmu::SmmuDomain::new(hd, coherent),
                f.env.clone(),
                DomainConfig::default(),
            )
            .unwrap(),
        )
    };
    let a = f.buffer(4096, 7);
    SIZE.store(arc_block_size(), Ordering::Relaxed);
    let first = new_domain();
    let at = Arc::as_ptr(&first);
    let dev = DmaDevice::behind_iommu(DeviceConfig::new(3), first);
    let mut r = dev.iova_try_alloc(a, 4096).unwrap();
    drop(dev);
    let second = new_domain();
    SIZE.store(0, Ordering::Relaxed);
    assert_eq!(Arc::as_ptr(&second), at, "the block was not recycled");
    let dev2 = DmaDevice::behind_iommu(DeviceConfig::new(4), second.clone());
    // SAFETY: refused before anything is mapped.
    let linked = unsafe { dev2.iova_link(&mut r, a, 0, 4096, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(linked, Err(DmaError::ForeignRange));
    assert_eq!(dev2.iova_sync(&r, 0, 4096), Err(DmaError::ForeignRange));
    assert_eq!(second.domain().translate(r.addr().0), None);
    assert!(r.linked().is_empty());
    // The reservation's IOVA belongs to no live domain: nothing to destroy.
    std::mem::forget(r);
}
