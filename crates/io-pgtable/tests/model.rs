//! Property tests against a reference model: random map/unmap/translate
//! sequences across all granules, both stages and all coherency modes; the
//! device walker must agree with `translate` wherever we probe.

mod common;

use std::sync::{Arc, LazyLock};

use common::{Model, assert_agree};
use io_pgtable::env::SimEnv;
use io_pgtable::{Config, Error, Gather, Granule, PageTable, Prot, WalkCoherency};
use proptest::prelude::*;
use sim_memory::SimMemory;

static COHERENT: LazyLock<Arc<SimMemory>> = LazyLock::new(|| common::memory(true, 32 << 20));
static NON_COHERENT: LazyLock<Arc<SimMemory>> = LazyLock::new(|| common::memory(false, 32 << 20));

#[derive(Clone, Debug)]
enum Op {
    Map {
        region: u64,
        size: usize,
        idx: u64,
        count: u64,
        shift: u64,
        contig: bool,
    },
    Unmap {
        region: u64,
        size: usize,
        idx: u64,
        count: u64,
    },
    Probe {
        region: u64,
        off: u64,
    },
    Reclaim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u64, 0..3usize, 0..40u64, 1..20u64, 0..3u64, any::<bool>()).prop_map(
            |(region, size, idx, count, shift, contig)| Op::Map { region, size, idx, count, shift, contig }
        ),
        3 => (0..3u64, 0..3usize, 0..40u64, 1..20u64)
            .prop_map(|(region, size, idx, count)| Op::Unmap { region, size, idx, count }),
        2 => (0..3u64, any::<u64>()).prop_map(|(region, off)| Op::Probe { region, off }),
        1 => Just(Op::Reclaim),
    ]
}

fn mode(i: u8) -> WalkCoherency {
    [
        WalkCoherency::Coherent,
        WalkCoherency::NonCoherent,
        WalkCoherency::Deferred,
    ][i as usize % 3]
}

fn run(granule: Granule, stage2: bool, mode: WalkCoherency, ops: &[Op]) {
    let cfg = if stage2 {
        Config::stage2(granule, 44, 44)
    } else {
        Config::stage1(granule, 48, 48)
    }
    .with_coherency(mode);
    let mem = if mode == WalkCoherency::Coherent {
        &*COHERENT
    } else {
        &*NON_COHERENT
    };
    let mut pt = PageTable::new(cfg, SimEnv::new(mem.clone())).unwrap();
    let sizes: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|s| pt.pgsize_bitmap() & s != 0)
        .collect();
    let largest = *sizes.last().unwrap();
    let mut model = Model::default();
    let rw = Prot::READ | Prot::WRITE;
    for op in ops {
        match *op {
            Op::Map {
                region,
                size,
                idx,
                count,
                shift,
                contig,
            } => {
                let pgsize = sizes[size % sizes.len()];
                // Small sizes cluster in the first block of the region, so
                // pages, blocks and tables of all levels collide.
                let iova = region * largest + idx * pgsize;
                let pa = iova + shift * largest;
                let prot = if contig { rw | Prot::CONTIG } else { rw };
                let got = pt.map(iova, pa, pgsize, count as usize, prot);
                let (bytes, conflict) = model.map(iova, pa, pgsize, count);
                match got {
                    Ok(n) => {
                        assert!(!conflict, "map {iova:#x} {pgsize:#x} x{count} should fail");
                        assert_eq!(n as u64, bytes);
                    }
                    Err(p) => {
                        assert!(conflict, "unexpected {p:?}");
                        assert!(matches!(p.error, Error::Exists(_)), "{p:?}");
                        assert_eq!(p.done as u64, bytes, "map {iova:#x} {pgsize:#x} x{count}");
                    }
                }
                pt.sync_map(iova, pgsize * count).unwrap();
                assert_agree(&pt, iova);
            }
            Op::Unmap {
                region,
                size,
                idx,
                count,
            } => {
                let pgsize = sizes[size % sizes.len()];
                let iova = region * largest + idx * pgsize;
                let mut g = Gather::new();
                pt.env().take_invalidated();
                let got = pt.unmap(iova, pgsize, count as usize, &mut g).unwrap();
                let want = model.unmap(iova, pgsize, count);
                assert_eq!(got as u64, want, "unmap {iova:#x} {pgsize:#x} x{count}");
                if want > 0 {
                    // The first page is in the gather, or was invalidated by
                    // a hook (a removed table's synchronous walk flush).
                    let mut covered = pt.env().take_invalidated();
                    covered.push((g.start(), g.end()));
                    assert!(
                        covered
                            .iter()
                            .any(|&(s, e)| s <= iova && e >= iova + pgsize),
                        "{g:?} {covered:x?}"
                    );
                }
                assert_agree(&pt, iova);
                assert_agree(&pt, iova + pgsize * count - 1);
            }
            Op::Probe { region, off } => {
                let iova = region * largest + off % largest;
                assert_eq!(pt.translate(iova), model.lookup(iova), "probe {iova:#x}");
                assert_agree(&pt, iova);
            }
            Op::Reclaim => {
                pt.reclaim();
            }
        }
    }
    // Full comparison of every mapped interval's ends and middle.
    for (lo, hi, pa) in model.intervals().collect::<Vec<_>>() {
        for va in [lo, (lo + hi) / 2, hi - 1] {
            assert_eq!(pt.translate(va), Some(pa + (va - lo)));
            assert_agree(&pt, va);
        }
        assert_eq!(pt.translate(hi), model.lookup(hi));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn model_4k(stage2 in any::<bool>(), m in 0..3u8, ops in prop::collection::vec(op(), 1..60)) {
        run(Granule::K4, stage2, mode(m), &ops);
    }

    #[test]
    fn model_16k(stage2 in any::<bool>(), m in 0..3u8, ops in prop::collection::vec(op(), 1..60)) {
        run(Granule::K16, stage2, mode(m), &ops);
    }

    #[test]
    fn model_64k(stage2 in any::<bool>(), m in 0..3u8, ops in prop::collection::vec(op(), 1..60)) {
        run(Granule::K64, stage2, mode(m), &ops);
    }
}
