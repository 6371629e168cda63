//! The measured DMA-layer operations, by name, shared by the criterion
//! bench (`benches/dma.rs`) and the CPU-time example
//! (`examples/dma_cputime.rs`), so both measure exactly the same work.
//! Included by `#[path]` next to `common` (the model fixture) and `host`.
#![allow(dead_code)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use dma_mapping::iova::{IovaAllocator, IovaConfig};
use dma_mapping::{
    Attrs, BouncePool, DeviceConfig, Direction, DmaDevice, DmaDomain, DmaEnv, DomainConfig,
    Invalidation, IommuDomain, PhysSegment,
};
use sim_memory::Coherency;
use vm_allocator::{AddressAllocator, AllocPolicy};

use crate::common;
use crate::host::{self, HostEnv, NullDomain};

/// One measured operation, given the CPU it runs on.
pub type Op = Arc<dyn Fn(usize) + Send + Sync>;

/// Lazy invalidation that only flushes when the queue fills.
pub const LAZY: Invalidation = Invalidation::Lazy {
    timeout_ticks: u64::MAX,
};

/// A 4K map + unmap by physical address, to the device.
pub fn map_unmap<E: DmaEnv, D: IommuDomain>(dev: &DmaDevice<E, D>, pa: u64) {
    // SAFETY: `pa` is memory this program owns; no device runs.
    unsafe {
        let a = dev
            .map_phys(black_box(pa), 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
    }
}

/// Returns every measured operation by name: the 4K map + unmap paths
/// (`layer_only_*`, `direct`, `bounce`, `iommu_model_*`), `map_sg_64x4k`,
/// and IOVA alloc + free (`iova_magazine`, `iova_tree`,
/// `iova_vm_allocator`, the peer, with the same 1,024 live ranges in both
/// trees). The model fixtures are leaked: they live for the whole run.
pub fn ops() -> Vec<(&'static str, Op)> {
    let mut v: Vec<(&'static str, Op)> = Vec::new();
    let env = Arc::new(HostEnv::default());
    for (name, inv) in [
        ("layer_only_strict", Invalidation::Strict),
        ("layer_only_lazy", LAZY),
    ] {
        let dom = Arc::new(
            DmaDomain::new(
                NullDomain,
                env.clone(),
                DomainConfig {
                    invalidation: inv,
                    ncpus: 2,
                },
            )
            .unwrap(),
        );
        let dev = DmaDevice::behind_iommu(DeviceConfig::new(1), dom);
        let pa = host::region(4096);
        v.push((name, Arc::new(move |_| map_unmap(&dev, pa))));
    }
    let coherent = DeviceConfig {
        coherent: Some(true),
        ..DeviceConfig::new(1)
    };
    let direct = DmaDevice::direct(coherent, env.clone());
    let pa = host::region(4096);
    v.push(("direct", Arc::new(move |_| map_unmap(&direct, pa))));
    let pool = Arc::new(BouncePool::new(host::region(1 << 20), 1 << 20).unwrap());
    let bounce = DmaDevice::direct(
        DeviceConfig {
            force_bounce: true,
            ..coherent
        },
        env.clone(),
    )
    .with_bounce(pool);
    v.push(("bounce", Arc::new(move |_| map_unmap(&bounce, pa))));
    for (name, inv) in [
        ("iommu_model_strict", Invalidation::Strict),
        ("iommu_model_lazy", LAZY),
    ] {
        let f: &'static common::Fixture =
            Box::leak(Box::new(common::fixture(Coherency::Coherent, inv)));
        let dev = f.device(DeviceConfig::new(1));
        let pa = f.buffer(4096, 1);
        v.push((name, Arc::new(move |_| map_unmap(&dev, pa))));
    }
    {
        let f: &'static common::Fixture = Box::leak(Box::new(common::fixture(
            Coherency::Coherent,
            Invalidation::Strict,
        )));
        let dev = f.device(DeviceConfig::new(1));
        let base = f.buffer(128 * 4096, 1);
        let segs: Vec<PhysSegment> = (0..64u64)
            .map(|i| PhysSegment {
                phys: base + 2 * i * 4096,
                len: 4096,
            })
            .collect();
        v.push((
            "map_sg_64x4k",
            Arc::new(move |_| {
                // SAFETY: memory this program owns; no device runs.
                unsafe {
                    let m = dev
                        .map_sg(&segs, Direction::ToDevice, Attrs::empty())
                        .unwrap();
                    dev.unmap_sg(m).unwrap();
                }
            }),
        ));
    }
    let magazine = Arc::new(IovaAllocator::new(IovaConfig::new(12, 48, 2)));
    let tree = Arc::new(IovaAllocator::new(IovaConfig::new(12, 48, 0)));
    let peer = Arc::new(Mutex::new(
        AddressAllocator::new(4096, (1 << 48) - 4096).unwrap(),
    ));
    for _ in 0..1024 {
        tree.alloc(1, u64::MAX, 0).unwrap();
        peer.lock()
            .unwrap()
            .allocate(4096, 4096, AllocPolicy::LastMatch)
            .unwrap();
    }
    v.push(("iova_magazine", {
        let a = magazine;
        Arc::new(move |cpu| {
            let p = a.alloc(black_box(1), u64::MAX, cpu).unwrap();
            a.free(p, 1, cpu).unwrap();
        })
    }));
    v.push(("iova_tree", {
        let a = tree;
        Arc::new(move |cpu| {
            let p = a.alloc(black_box(1), u64::MAX, cpu).unwrap();
            a.free(p, 1, cpu).unwrap();
        })
    }));
    v.push(("iova_vm_allocator", {
        let a = peer;
        Arc::new(move |_| {
            let mut a = a.lock().unwrap();
            let r = a
                .allocate(black_box(4096), 4096, AllocPolicy::LastMatch)
                .unwrap();
            a.free(&r).unwrap();
        })
    }));
    v
}
