//! The DMA layer over the driver's own memory environment (`StackEnv` on
//! smmuv3-hosted's `SimDmaMemory`): cache maintenance of DMA buffers goes
//! through the same seam as the page tables, checked by the non-coherent
//! model; MMIO mappings carry device memory attributes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use dma_mapping::smmu::{CpuClock, SmmuDomain, StackEnv};
use dma_mapping::{
    Attrs, DeviceConfig, Direction, DmaDevice, DmaDomain, DomainConfig, IommuDomain,
};
use io_pgtable::Granule;
use sim_memory::Coherency;
use smmuv3_hosted::SimDmaMemory;

#[derive(Default)]
struct Clock(AtomicU64);

impl CpuClock for Clock {
    fn cpu_id(&self) -> usize {
        0
    }
    fn now_ticks(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[test]
fn the_driver_memory_environment_serves_dma_buffers_too() {
    let (sys, hd) = attached(Coherency::NonCoherent, Granule::K4);
    // SAFETY: SimDmaMemory's phys_to_cpu covers all of the simulated memory.
    let env =
        Arc::new(unsafe { StackEnv::new(SimDmaMemory::new(sys.mem.clone()), Clock::default()) });
    let dom =
        Arc::new(DmaDomain::new(SmmuDomain::new(hd, false), env, DomainConfig::default()).unwrap());
    let dev = DmaDevice::behind_iommu(DeviceConfig::new(1), dom.clone());
    let pa = sys.mem.alloc(8192).unwrap();
    sys.mem.cpu_write(pa, &[0x2b; 8192]).unwrap();
    let read = |iova: u64| {
        let mut v = [0u8; 8];
        sys.model
            .dma_read(&smmuv3_model::DmaRequest::read(SID, iova, 8), &mut v)
            .ok()
            .map(|_| v)
    };
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(pa, 8192, Direction::Bidirectional, Attrs::empty()) }.unwrap();
    assert_eq!(
        read(dma.0 + 4096),
        Some([0x2b; 8]),
        "cleaned through the driver's seam"
    );
    sys.model
        .dma_write(
            &smmuv3_model::DmaRequest::write(SID, dma.0, 4),
            &[1, 2, 3, 4],
        )
        .unwrap();
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 8192, Direction::Bidirectional, Attrs::empty()) }.unwrap();
    let mut back = [0u8; 4];
    sys.mem.cpu_read(pa, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4], "invalidated through the driver's seam");
    assert_eq!(read(dma.0), None);
    assert_eq!(read(dma.0 + 4096), None);

    // MMIO: the leaf carries the Device-nGnRE attribute index, RAM the
    // cacheable one only on coherent devices (this one is not).
    // SAFETY: test memory standing in for a BAR, then a buffer.
    unsafe {
        let m = dev
            .map_phys(pa, 4096, Direction::ToDevice, Attrs::MMIO)
            .unwrap();
        let r = dev
            .map_phys(pa + 4096, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let attr = |iova: u64| {
            let w = dom.domain().domain().page_table().walk(iova);
            (w.steps().last().unwrap().desc >> 2) & 7
        };
        assert_eq!(attr(m.0), io_pgtable::layout::MAIR_IDX_DEVICE);
        assert_eq!(attr(r.0), io_pgtable::layout::MAIR_IDX_NC);
        assert!(dom.domain().translate(m.0).is_some());
        dev.unmap_phys(m, 4096, Direction::ToDevice, Attrs::MMIO)
            .unwrap();
        dev.unmap_phys(r, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert_eq!(read(m.0), None);
        assert_eq!(read(r.0), None);
    }
    let b = dev.alloc_coherent(4096).unwrap();
    assert_eq!(read(b.dma.0), Some([0; 8]));
    let d = b.dma;
    // SAFETY: unused now.
    unsafe { dev.free_coherent(b) }.unwrap();
    assert_eq!(read(d.0), None);
}

#[test]
fn coherent_devices_get_cacheable_iommu_mappings() {
    let f = fixture(Coherency::Coherent, dma_mapping::Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 1);
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let w = f.dom.domain().domain().page_table().walk(dma.0);
    assert_eq!(
        (w.steps().last().unwrap().desc >> 2) & 7,
        io_pgtable::layout::MAIR_IDX_CACHE
    );
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    f.assert_unreachable(dma.0, 4096);
}
