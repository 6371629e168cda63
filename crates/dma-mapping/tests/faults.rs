//! Driver failures injected between the DMA layer and the SMMU model: a
//! mapping that fails halfway leaves nothing reachable and its IOVA is
//! reused only when its translations are known gone; a teardown that fails
//! part way still removes everything else.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use dma_mapping::{
    Attrs, DeviceConfig, Direction, DmaDevice, DmaDomain, DmaError, DomainConfig, Invalidation,
    IommuDomain, IommuProt, PhysSegment,
};
use io_pgtable::Granule;
use sim_memory::Coherency;
use smmuv3_hosted::HostedDomain;

/// The model's domain with failures on demand: each counter is the number
/// of calls to let through before one fails (`u32::MAX`: never). A failing
/// map maps its first granule first, and a failing deferred unmap unmaps
/// it, as a driver that fails part way.
struct Faulty {
    inner: Smmu,
    map_ok: AtomicU32,
    unmap_ok: AtomicU32,
}

fn fails(c: &AtomicU32) -> bool {
    c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
        u32::MAX => None,
        0 => Some(u32::MAX),
        n => Some(n - 1),
    }) == Ok(0)
}

fn injected() -> smmuv3::Error {
    smmuv3::Error::Timeout("injected")
}

impl IommuDomain for Faulty {
    type Error = smmuv3::Error;
    fn pgsize_bitmap(&self) -> u64 {
        self.inner.pgsize_bitmap()
    }
    fn iova_bits(&self) -> u32 {
        self.inner.iova_bits()
    }
    fn coherent(&self) -> bool {
        self.inner.coherent()
    }
    fn map(&self, iova: u64, phys: u64, len: u64, prot: IommuProt) -> Result<(), Self::Error> {
        if fails(&self.map_ok) {
            if len > 4096 {
                self.inner.map(iova, phys, 4096, prot)?;
                self.inner.sync_map(iova, 4096)?;
            }
            return Err(injected());
        }
        self.inner.map(iova, phys, len, prot)
    }
    fn sync_map(&self, iova: u64, len: u64) -> Result<(), Self::Error> {
        self.inner.sync_map(iova, len)
    }
    fn unmap(&self, iova: u64, len: u64) -> Result<u64, Self::Error> {
        if fails(&self.unmap_ok) {
            return Err(injected());
        }
        self.inner.unmap(iova, len)
    }
    fn unmap_deferred(&self, iova: u64, len: u64) -> Result<u64, Self::Error> {
        if fails(&self.unmap_ok) {
            // Part way, as a page table whose split or clean failed.
            if len > 4096 {
                self.inner.unmap_deferred(iova, 4096)?;
            }
            return Err(injected());
        }
        self.inner.unmap_deferred(iova, len)
    }
    fn flush_all(&self) -> Result<(), Self::Error> {
        self.inner.flush_all()
    }
    fn translate(&self, iova: u64) -> Option<u64> {
        self.inner.translate(iova)
    }
}

struct Rig {
    f: Fixture,
    dom: Arc<DmaDomain<Faulty, SimEnv>>,
}

fn rig(inv: Invalidation) -> Rig {
    let (sys, hd) = attached(Coherency::Coherent, Granule::K4);
    let env = SimEnv::new(sys.mem.clone());
    let faulty = Faulty {
        inner: dma_mapping::smmu::SmmuDomain::new(hd, true),
        map_ok: AtomicU32::new(u32::MAX),
        unmap_ok: AtomicU32::new(u32::MAX),
    };
    let cfg = DomainConfig {
        invalidation: inv,
        ncpus: 1,
    };
    let dom = Arc::new(DmaDomain::new(faulty, env.clone(), cfg).unwrap());
    // The fixture's domain (unattached) only completes the struct: its
    // helpers drive the model's stream, which is attached to ours.
    let spare = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let fdom = Arc::new(
        DmaDomain::new(
            dma_mapping::smmu::SmmuDomain::new(spare, true),
            env.clone(),
            DomainConfig::default(),
        )
        .unwrap(),
    );
    Rig {
        f: Fixture {
            sys,
            env,
            dom: fdom,
        },
        dom,
    }
}

impl Rig {
    fn device(&self) -> DmaDevice<SimEnv, Faulty> {
        DmaDevice::behind_iommu(DeviceConfig::new(1), self.dom.clone())
    }

    /// Returns the IOVA frames free or cached.
    fn iova_free(&self) -> u64 {
        self.dom.iova().tree_free_pages() + self.dom.iova().cached_frames() as u64
    }

    /// Returns the IOVA a fresh two-granule mapping gets, unmapped again.
    fn next_iova(&self, dev: &DmaDevice<SimEnv, Faulty>, pa: u64) -> u64 {
        // SAFETY: test-owned buffer, unmapped at once.
        unsafe {
            let d = dev
                .map_phys(pa, 8192, Direction::ToDevice, Attrs::empty())
                .unwrap();
            dev.unmap_phys(d, 8192, Direction::ToDevice, Attrs::empty())
                .unwrap();
            d.0
        }
    }
}

#[test]
fn a_map_failing_halfway_leaves_nothing_reachable_and_returns_the_iova() {
    let r = rig(Invalidation::Strict);
    let dev = r.device();
    let pa = r.f.buffer(8192, 0x21);
    let iova = r.next_iova(&dev, pa);
    let free = r.iova_free();
    r.dom.domain().map_ok.store(0, Ordering::Relaxed);
    // SAFETY: test-owned buffer.
    let e = unsafe { dev.map_phys(pa, 8192, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::Iommu(injected())));
    r.f.assert_unreachable(iova, 8192);
    assert_eq!(r.iova_free(), free);
    assert_eq!(r.next_iova(&dev, pa), iova, "the IOVA came back");
}

#[test]
fn a_map_sg_failing_halfway_leaves_nothing_reachable_and_returns_the_iova() {
    let r = rig(Invalidation::Strict);
    let dev = r.device();
    let a = r.f.buffer(8192, 1);
    let b = r.f.buffer(8192, 2);
    let c = r.f.buffer(8192, 3);
    let segs = [
        PhysSegment { phys: a, len: 8192 },
        PhysSegment { phys: b, len: 8192 },
        PhysSegment { phys: c, len: 8192 },
    ];
    let free = r.iova_free();
    // The second segment's map fails after mapping its first granule.
    r.dom.domain().map_ok.store(1, Ordering::Relaxed);
    // SAFETY: test-owned buffers.
    let e = unsafe { dev.map_sg(&segs, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e.unwrap_err(), DmaError::Iommu(injected()));
    assert_eq!(r.iova_free(), free);
    // SAFETY: test-owned buffers.
    let m = unsafe { dev.map_sg(&segs, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let base = m.segments()[0].addr.0;
    // SAFETY: the list above, unused.
    unsafe { dev.unmap_sg(m) }.unwrap();
    // The failed list had the same IOVA range: all of it is gone.
    r.f.assert_unreachable(base, 4 * 8192);
}

#[test]
fn an_iova_whose_cleanup_unmap_failed_is_never_reused() {
    let r = rig(Invalidation::Strict);
    let dev = r.device();
    let pa = r.f.buffer(8192, 0x21);
    let iova = r.next_iova(&dev, pa);
    let free = r.iova_free();
    // The map fails after mapping a granule, and so does its cleanup.
    r.dom.domain().map_ok.store(0, Ordering::Relaxed);
    r.dom.domain().unmap_ok.store(0, Ordering::Relaxed);
    // SAFETY: test-owned buffer.
    let e = unsafe { dev.map_phys(pa, 8192, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::Iommu(injected())));
    // The granule is still mapped: its IOVA must stay out of reuse (it
    // came back before, and the next mapping was handed it).
    assert!(r.dom.domain().translate(iova).is_some());
    assert_eq!(r.iova_free(), free - 2);
    assert_ne!(r.next_iova(&dev, pa), iova);
}

#[test]
fn a_destroy_whose_first_unlink_fails_still_removes_the_rest() {
    let r = rig(Invalidation::Strict);
    let dev = r.device();
    let a = r.f.buffer(16384, 7);
    let mut range = dev.iova_try_alloc(a, 16384).unwrap();
    // SAFETY: test-owned buffer.
    unsafe {
        dev.iova_link(&mut range, a, 0, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        dev.iova_link(
            &mut range,
            a + 8192,
            8192,
            8192,
            Direction::ToDevice,
            Attrs::empty(),
        )
        .unwrap();
    }
    dev.iova_sync(&range, 0, 16384).unwrap();
    let base = range.addr().0;
    assert!(r.f.dev_read(base + 8192, 4).is_some());
    let free = r.iova_free();
    r.dom.domain().unmap_ok.store(0, Ordering::Relaxed);
    // SAFETY: DMA done.
    let e = unsafe { dev.iova_destroy(range, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::Iommu(injected())));
    // Before, the second piece stayed mapped with no handle left to
    // unmap it.
    r.f.assert_unreachable(base + 8192, 8192);
    assert_eq!(r.iova_free(), free, "the reservation is kept from reuse");
}

#[test]
fn a_link_whose_cleanup_failed_is_removed_by_destroy() {
    let r = rig(Invalidation::Strict);
    let dev = r.device();
    let a = r.f.buffer(8192, 7);
    let mut range = dev.iova_try_alloc(a, 8192).unwrap();
    r.dom.domain().map_ok.store(0, Ordering::Relaxed);
    r.dom.domain().unmap_ok.store(0, Ordering::Relaxed);
    // SAFETY: test-owned buffer.
    let e = unsafe { dev.iova_link(&mut range, a, 0, 8192, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::Iommu(injected())));
    let base = range.addr().0;
    // The driver left the first granule mapped; the piece is kept so that
    // destroy removes it (before, it was forgotten and stayed mapped).
    assert_eq!(range.linked(), &[(0, 8192)]);
    // SAFETY: DMA done.
    unsafe { dev.iova_destroy(range, Direction::ToDevice, Attrs::empty()) }.unwrap();
    r.f.assert_unreachable(base, 8192);
    assert_eq!(r.dom.domain().translate(base), None);
}

#[test]
fn a_lazy_unmap_failing_part_way_leaves_nothing_it_cleared_reachable() {
    let r = rig(Invalidation::Lazy {
        timeout_ticks: 1000,
    });
    let dev = r.device();
    let pa = r.f.buffer(8192, 0x21);
    // SAFETY: test-owned buffer.
    let d = unsafe { dev.map_phys(pa, 8192, Direction::ToDevice, Attrs::empty()) }.unwrap();
    // Both granules in the IOTLB.
    assert!(r.f.dev_read(d.0, 4).is_some());
    assert!(r.f.dev_read(d.0 + 4096, 4).is_some());
    r.dom.domain().unmap_ok.store(0, Ordering::Relaxed);
    // SAFETY: the mapping above, DMA done.
    let e = unsafe { dev.unmap_phys(d, 8192, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::Iommu(injected())));
    // The cleared granule was invalidated (before, it stayed in the IOTLB
    // with nothing queued to flush it); the rest is still mapped and its
    // IOVA kept.
    r.f.assert_unreachable(d.0, 4096);
    assert!(r.f.dev_read(d.0 + 4096, 4).is_some());
    assert_eq!(r.dom.pending(), 0);
}

#[test]
fn a_bounced_map_failing_gives_back_its_slots_and_its_iova() {
    let r = rig(Invalidation::Strict);
    let pool = r.f.pool(16384);
    let dev = DmaDevice::behind_iommu(
        DeviceConfig {
            untrusted: true,
            ..DeviceConfig::new(1)
        },
        r.dom.clone(),
    )
    .with_bounce(pool.clone());
    let a = r.f.buffer(8192, 1) + 0x10;
    let free = r.iova_free();
    // A bounced single mapping whose IOMMU map fails halfway.
    r.dom.domain().map_ok.store(0, Ordering::Relaxed);
    // SAFETY: test-owned buffer.
    let e = unsafe { dev.map_phys(a, 5000, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::Iommu(injected())));
    assert_eq!((pool.used_slots(), r.iova_free()), (0, free));
    // A list whose second, bounced, segment fails: the first is undone.
    let segs = [
        PhysSegment { phys: a, len: 100 },
        PhysSegment {
            phys: a + 4096,
            len: 100,
        },
    ];
    r.dom.domain().map_ok.store(1, Ordering::Relaxed);
    // SAFETY: test-owned buffer.
    let e = unsafe { dev.map_sg(&segs, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e.unwrap_err(), DmaError::Iommu(injected()));
    assert_eq!((pool.used_slots(), r.iova_free()), (0, free));
    // Whatever IOVAs those were, the top of the space maps nothing.
    r.f.assert_unreachable((1 << 48) - 0x10000, 0x10000);
}
