//! The hot path allocates nothing: map, unmap, the TLB invalidation it
//! plans and the CMD_SYNC it waits for, proven with a counting global
//! allocator. Page-table memory comes from the environment and is built
//! before counting starts (a steady-state map reuses the tables).

use io_pgtable::env::{Counting, HostEnv};
use io_pgtable::{Config, Gather, Granule, PageTable, Prot};
use sim_memory::Coherency;
use sim_memory::counting::{CountingAlloc, allocations};
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, ModelConfig};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

#[test]
fn the_counter_sees_an_allocation() {
    // The proof below means something only if the counter works.
    let n = allocations(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(n, 1);
}

#[test]
fn page_table_map_and_unmap_allocate_nothing() {
    let env = Counting::new(HostEnv::default());
    let pt = PageTable::new(Config::stage1(Granule::K4, 48, 48), &env).unwrap();
    pt.map(0x1000, 0x1000, 4096, 1, RW).unwrap();
    let n = allocations(|| {
        for k in 0..256u64 {
            let iova = 0x2000 + k * 4096;
            pt.map(iova, iova, 4096, 1, RW).unwrap();
            pt.sync_map(iova, 4096).unwrap();
            let mut g = Gather::new();
            pt.unmap(iova, 4096, 1, &mut g).unwrap();
        }
    });
    assert_eq!(n, 0);
    assert_eq!(
        env.stats().allocs,
        4,
        "the root and the three levels of the warm-up"
    );
}

#[test]
fn driver_map_unmap_tlbi_and_sync_allocate_nothing() {
    for coh in [Coherency::Coherent, Coherency::NonCoherent] {
        let sys =
            System::new(16 << 20, coh, ModelConfig::default(), SmmuConfig::default()).unwrap();
        let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(5, None, &dom, AttachOptions::default())
            .unwrap();
        let pa = sys.mem.alloc(64 << 10).unwrap();
        let iova = 0x4000_0000;
        // Warm up: the table path exists, the queues have wrapped once.
        for _ in 0..300 {
            dom.map(iova, pa, 4096, RW).unwrap();
            dom.unmap(iova, 4096).unwrap();
        }
        let before = sys.smmu.stats();
        let n = allocations(|| {
            for k in 0..64u64 {
                dom.map(iova + k * 4096, pa, 4096, RW).unwrap();
            }
            dom.unmap(iova, 64 * 4096).unwrap();
            for k in 0..64u64 {
                dom.map(iova, pa + k * 4096, 4096, RW).unwrap();
                dom.unmap(iova, 4096).unwrap();
            }
            dom.flush_all().unwrap();
        });
        let after = sys.smmu.stats();
        assert_eq!(n, 0, "{coh:?}: heap allocations on the hot path");
        // And the work was really done: 65 range TLBIs + 1 ASID TLBI, each
        // with its CMD_SYNC.
        assert_eq!(after.tlbi_commands() - before.tlbi_commands(), 66);
        assert_eq!(after.syncs - before.syncs, 66);
        // The device cannot reach the page any more.
        assert!(
            sys.model
                .dma_write(&DmaRequest::write(5, iova, 4), &[1; 4])
                .is_err()
        );
        sys.smmu.drain_events().unwrap();
    }
}
