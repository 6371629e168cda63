//! Map/unmap benchmarks (see BENCHMARKS.md).

use criterion::{Criterion, criterion_group, criterion_main};
use io_pgtable::env::HostEnv;
use io_pgtable::{Config, Gather, Granule, PageTable, Prot};
use std::hint::black_box;

fn single_4k(c: &mut Criterion) {
    let pt = PageTable::new(Config::stage1(Granule::K4, 48, 48), HostEnv::default()).unwrap();
    let prot = Prot::READ | Prot::WRITE | Prot::CACHE;
    c.bench_function("io-pgtable/coherent/map+unmap 4K", |b| {
        b.iter(|| {
            let mut g = Gather::new();
            pt.map(black_box(0x4000_0000), 0x8000_0000, 4096, 1, prot)
                .unwrap();
            pt.unmap(black_box(0x4000_0000), 4096, 1, &mut g).unwrap();
        })
    });
}

criterion_group!(benches, single_4k);
criterion_main!(benches);
