//! End-to-end operations on the model: map + DMA + unmap per second, and
//! the TLB invalidation commands each unmap costs.
//!
//! Run: `cargo bench -p smmuv3-hosted --bench e2e`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, ModelConfig};

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

fn setup(coh: Coherency, ril: bool) -> (System, HostedDomain, u64) {
    let model = ModelConfig {
        ril,
        ..ModelConfig::default()
    };
    let sys = System::new(16 << 20, coh, model, SmmuConfig::default()).unwrap();
    let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(1, None, &d, AttachOptions::default())
        .unwrap();
    let pa = sys.mem.alloc(2 << 20).unwrap();
    (sys, d, pa)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("e2e");
    g.throughput(Throughput::Elements(1));
    for (tag, coh) in [
        ("coherent", Coherency::Coherent),
        ("noncoherent", Coherency::NonCoherent),
    ] {
        let (sys, mut d, pa) = setup(coh, true);
        let mut buf = [0u8; 64];
        g.bench_function(format!("map4K+dma64+unmap {tag}"), |b| {
            b.iter(|| {
                d.map(0x100_0000, pa, 4096, RW).unwrap();
                sys.model
                    .dma_read(&DmaRequest::read(1, 0x100_0000, 64), &mut buf)
                    .unwrap();
                d.unmap(0x100_0000, 4096).unwrap();
            })
        });
        g.bench_function(format!("map2M+dma64+unmap {tag}"), |b| {
            b.iter(|| {
                d.map(0x20_0000, pa, 2 << 20, RW).unwrap();
                sys.model
                    .dma_read(&DmaRequest::read(1, 0x20_0000, 64), &mut buf)
                    .unwrap();
                d.unmap(0x20_0000, 2 << 20).unwrap();
            })
        });
        let s = sys.smmu.stats();
        println!(
            "{tag}: {} commands ({} TLBI, {} CMD_SYNC), {} lines cleaned",
            s.commands(),
            s.tlbi_commands(),
            s.syncs,
            sys.mem.cache_stats().lines_cleaned
        );
    }
    for (tag, ril) in [("ril", true), ("no_ril", false)] {
        let (sys, mut d, pa) = setup(Coherency::Coherent, ril);
        g.bench_function(format!("map+unmap 1MiB of 4K {tag}"), |b| {
            b.iter(|| {
                for i in 0..256u64 {
                    d.map(0x100_0000 + i * 4096, pa + i * 4096, 4096, RW)
                        .unwrap();
                }
                d.unmap(0x100_0000, 1 << 20).unwrap();
            })
        });
        drop(sys);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
