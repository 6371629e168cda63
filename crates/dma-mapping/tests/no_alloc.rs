//! The fast paths allocate nothing in the steady state: a counting global
//! allocator watches 4K map+unmap (strict and lazy, flush-queue flushes
//! included) and IOVA alloc+free through the magazines and the depot.

#[path = "../benches/host.rs"]
mod host;

use sim_memory::counting::{CountingAlloc, allocations};
use std::sync::Arc;

use dma_mapping::iova::{IovaAllocator, IovaConfig, MAG_SIZE};
use dma_mapping::{
    Attrs, DeviceConfig, Direction, DmaDevice, DmaDomain, DomainConfig, Invalidation,
};
use host::{HostEnv, NullDomain};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn map_unmap_and_iova_fast_paths_do_not_allocate() {
    let env = Arc::new(HostEnv::default());
    for inv in [
        Invalidation::Strict,
        Invalidation::Lazy {
            timeout_ticks: u64::MAX,
        },
    ] {
        let dom = Arc::new(
            DmaDomain::new(
                NullDomain,
                env.clone(),
                DomainConfig {
                    invalidation: inv,
                    ncpus: 1,
                },
            )
            .unwrap(),
        );
        let dev = DmaDevice::behind_iommu(DeviceConfig::new(1), dom.clone());
        let pa = host::region(4096);
        let round = || {
            for _ in 0..1000 {
                // SAFETY: benchmark memory; the null domain maps nothing.
                unsafe {
                    let a = dev
                        .map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
                        .unwrap();
                    dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty())
                        .unwrap();
                }
            }
        };
        round();
        assert_eq!(allocations(round), 0, "{inv:?}");
    }
    // Batches larger than two magazines go through the depot and back.
    let a = IovaAllocator::new(IovaConfig::new(12, 40, 1));
    let mut live = Vec::with_capacity(4 * MAG_SIZE);
    let mut round = || {
        for _ in 0..4 * MAG_SIZE {
            live.push(a.alloc(1, u64::MAX, 0).unwrap());
        }
        for p in live.drain(..) {
            a.free(p, 1, 0).unwrap();
        }
    };
    round();
    round();
    assert_eq!(allocations(round), 0);
}
