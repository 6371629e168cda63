//! Runs one driver operation N times on the in-process model, for
//! instruction counting under
//! `valgrind --tool=callgrind --toggle-collect='icount::measured_*'`
//! (`scripts/icount.sh`). DMA is done outside the counted functions.
//!
//! ```sh
//! cargo run --release -p smmuv3-hosted --example icount -- map_unmap_4k 1000 [coherent]
//! ```

use std::hint::black_box;

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, ModelConfig};

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

/// A 4K map, then its unmap with the range TLBI and the CMD_SYNC it waits
/// for (the model consumes the commands inside the doorbell write).
#[inline(never)]
fn measured_map_unmap_4k(dom: &mut HostedDomain, iova: u64, pa: u64) {
    dom.map(iova, pa, 4096, RW).unwrap();
    black_box(dom.unmap(iova, 4096)).unwrap();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let coh = match args.next().as_deref() {
        Some("coherent") => Coherency::Coherent,
        _ => Coherency::NonCoherent,
    };
    let sys = System::new(16 << 20, coh, ModelConfig::default(), SmmuConfig::default()).unwrap();
    let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(1, None, &dom, AttachOptions::default())
        .unwrap();
    let pa = sys.mem.alloc(4096).unwrap();
    let iova = 0x1000_0000;
    // Warm: the table path exists.
    dom.map(iova + 0x10_0000, pa, 4096, RW).unwrap();
    match case.as_str() {
        "map_unmap_4k" => {
            for _ in 0..n {
                measured_map_unmap_4k(&mut dom, black_box(iova), pa);
            }
        }
        "map_dma_unmap_4k" => {
            for _ in 0..n {
                dom.map(iova, pa, 4096, RW).unwrap();
                sys.model
                    .dma_write(&DmaRequest::write(1, iova, 64), &[7; 64])
                    .unwrap();
                black_box(dom.unmap(iova, 4096)).unwrap();
            }
        }
        other => {
            eprintln!("unknown case {other:?}: map_unmap_4k | map_dma_unmap_4k");
            std::process::exit(2);
        }
    }
}
