//! Bytes per second of 4 KiB device reads through vm-memory's
//! `IommuMemory` and the model, in one run:
//!
//! * `iotlb_hit`: the stream's `Iotlb` holds the page (no model call);
//! * `iotlb_miss`: no `Iotlb` kept, every access resolves through the
//!   model (its TLB hits);
//! * `tlb_disabled`: no `Iotlb` and the model's TLB off, so every access
//!   walks the tables: the design of IOMMU emulators without a TLB.
//!
//! Run with `cargo bench -p vmm-virtio --bench iommu_memory`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_pgtable::{Granule, Prot};
use smmuv3::AttachOptions;
use smmuv3_model::ModelConfig;
use vm_memory::iommu::IommuMemory;
use vm_memory::{Bytes, GuestAddress};
use vmm_virtio::{GuestDomain, Vm};

const SID: u32 = 3;
const IOVA: u64 = 0x1000_0000;
const PAGES: u64 = 64;

fn bench(c: &mut Criterion) {
    let vm = Vm::new(0x4000_0000, 32 << 20, ModelConfig::default()).unwrap();
    let dom = GuestDomain::new_stage1(&vm.smmu, Granule::K4, 48).unwrap();
    vm.smmu
        .attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    let buf = vm.ram.alloc(PAGES * 4096).unwrap();
    dom.map(IOVA, buf, PAGES * 4096, Prot::READ | Prot::WRITE)
        .unwrap();
    let cached = IommuMemory::new(vm.ram.guest().clone(), vm.model.iommu(SID, None), true, ());
    let uncached = IommuMemory::new(
        vm.ram.guest().clone(),
        vm.model.iommu_uncached(SID, None),
        true,
        (),
    );
    let mut page = [0u8; 4096];
    let mut g = c.benchmark_group("iommu_memory_read_4k");
    g.throughput(Throughput::Bytes(4096));
    let mut i = 0u64;
    let mut next = || {
        i = (i + 1) % PAGES;
        GuestAddress(IOVA + i * 4096)
    };
    for p in 0..PAGES {
        cached
            .read_slice(&mut page, GuestAddress(IOVA + p * 4096))
            .unwrap();
    }
    g.bench_function("iotlb_hit", |b| {
        b.iter(|| cached.read_slice(black_box(&mut page), next()).unwrap())
    });
    g.bench_function("iotlb_miss", |b| {
        b.iter(|| uncached.read_slice(black_box(&mut page), next()).unwrap())
    });
    vm.model.set_tlb_enabled(false);
    let walks = vm.model.stats().walks;
    g.bench_function("tlb_disabled", |b| {
        b.iter(|| uncached.read_slice(black_box(&mut page), next()).unwrap())
    });
    assert!(vm.model.stats().walks > walks, "the peer design walks");
    vm.model.set_tlb_enabled(true);
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
