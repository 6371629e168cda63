//! Threads sharing one domain map, DMA through and unmap disjoint ranges
//! at the same time (the page table is lock-free; the command queue is
//! shared): every DMA sees its own data and every unmap makes its range
//! fault at once.

use std::sync::Arc;

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, ModelConfig};

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

#[test]
fn threads_map_dma_unmap_disjoint_ranges() {
    for coh in [Coherency::Coherent, Coherency::NonCoherent] {
        let sys = Arc::new(
            System::new(16 << 20, coh, ModelConfig::default(), SmmuConfig::default()).unwrap(),
        );
        let shared = Arc::new(HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap());
        sys.smmu
            .attach(2, None, &shared, AttachOptions::default())
            .unwrap();
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let (sys, d) = (sys.clone(), shared.clone());
                std::thread::spawn(move || {
                    let pa = sys.mem.alloc(4096).unwrap();
                    // Each thread owns its own 2 MiB region of IOVA space.
                    let base = 0x1000_0000 + t * 0x20_0000;
                    for round in 0..100u64 {
                        let iova = base + (round % 16) * 4096;
                        d.map(iova, pa, 4096, RW).unwrap();
                        let v = (t * 100 + round) as u8;
                        sys.model
                            .dma_write(&DmaRequest::write(2, iova + 8, 1), &[v])
                            .unwrap();
                        let mut b = [0u8; 1];
                        sys.model
                            .dma_read(&DmaRequest::read(2, iova + 8, 1), &mut b)
                            .unwrap();
                        assert_eq!(b[0], v);
                        assert_eq!(d.unmap_shared(iova, 4096).unwrap(), 4096);
                        assert!(
                            sys.model
                                .dma_read(&DmaRequest::read(2, iova + 8, 1), &mut b)
                                .is_err()
                        );
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let mut d = Arc::try_unwrap(shared).ok().unwrap();
        d.reclaim();
        sys.smmu.drain_events().unwrap();
    }
}
