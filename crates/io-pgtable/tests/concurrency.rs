//! Concurrency stress: threads mapping and unmapping disjoint ranges that
//! share upper-level tables (so table installs race), checked against the
//! per-thread models afterwards; and walkers racing table retirement.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{Model, assert_agree};
use io_pgtable::env::{Counting, HostEnv, SimEnv};
use io_pgtable::{Config, Gather, Granule, PageTable, Prot, WalkCoherency};

const THREADS: u64 = 4;
const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE);

/// Thread `t` owns every 2M chunk `c` with `c % THREADS == t` of a 256M
/// window per round: threads race for the level-1/2 tables of each window.
fn worker<E: io_pgtable::env::PtEnv>(pt: &PageTable<E>, t: u64, rounds: u64) -> Model {
    let mut model = Model::default();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ t;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..rounds {
        let window = (round + 1) << 30;
        for c in (t..128).step_by(THREADS as usize) {
            let chunk = window + c * M2;
            let pa = 0x80_0000_0000 + chunk;
            match rand() % 4 {
                0 => {
                    assert_eq!(pt.map(chunk, pa, M2, 1, RW), Ok(M2 as usize));
                    model.insert(chunk, chunk + M2, pa);
                }
                1 => {
                    // Some pages, then take a few back.
                    let n = 1 + rand() % 64;
                    assert_eq!(pt.map(chunk, pa, K4, n as usize, RW), Ok((n * K4) as usize));
                    model.insert(chunk, chunk + n * K4, pa);
                    let mut g = Gather::new();
                    let k = rand() % n;
                    assert_eq!(pt.unmap(chunk + k * K4, K4, 1, &mut g), Ok(4096));
                    model.remove(chunk + k * K4, chunk + (k + 1) * K4);
                }
                2 => {
                    // A block, partly unmapped (split).
                    assert_eq!(pt.map(chunk, pa, M2, 1, RW), Ok(M2 as usize));
                    let mut g = Gather::new();
                    assert_eq!(pt.unmap(chunk + 7 * K4, K4, 3, &mut g), Ok(3 * 4096));
                    model.insert(chunk, chunk + 7 * K4, pa);
                    model.insert(chunk + 10 * K4, chunk + M2, pa + 10 * K4);
                }
                _ => {
                    // Mapped then fully unmapped at 2M: the table is retired.
                    assert_eq!(pt.map(chunk, pa, K4, 512, RW), Ok(M2 as usize));
                    let mut g = Gather::new();
                    assert_eq!(pt.unmap(chunk, M2, 1, &mut g), Ok(M2 as usize));
                }
            }
        }
    }
    model
}

fn check<E: io_pgtable::env::PtEnv>(pt: &PageTable<E>, models: &[Model], rounds: u64) {
    let mut all = Model::default();
    for m in models {
        for (lo, hi, pa) in m.intervals() {
            all.insert(lo, hi, pa);
        }
    }
    for round in 0..rounds {
        let window = (round + 1) << 30;
        let mut va = window;
        while va < window + 128 * M2 {
            assert_eq!(pt.translate(va + 8), all.lookup(va + 8), "{va:#x}");
            va += K4;
        }
    }
}

#[test]
fn disjoint_threads_on_shared_tables_host() {
    let rounds = 3;
    let env = Counting::new(HostEnv::default());
    let mut pt = PageTable::new(Config::stage1(Granule::K4, 48, 48), &env).unwrap();
    let models: Vec<Model> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let pt = &pt;
                s.spawn(move || worker(pt, t, rounds))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    check(&pt, &models, rounds);
    assert!(pt.reclaim() > 0);
    drop(pt);
    // Every table, including those of losing installers, was freed.
    let st = env.stats();
    assert!(st.allocs > 0);
    assert_eq!(st.allocs, st.frees);
    assert_eq!(st.bytes_live, 0);
}

#[test]
fn no_table_memory_leaks_after_concurrent_use() {
    let mem = common::memory(true, 16 << 20);
    {
        let pt = PageTable::new(
            Config::stage2(Granule::K4, 40, 40),
            SimEnv::new(mem.clone()),
        )
        .unwrap();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let pt = &pt;
                s.spawn(move || worker(pt, t, 2));
            }
        });
    }
    assert_eq!(mem.bytes_allocated(), 0);
    assert_eq!(mem.blocks_allocated(), 0);
}

#[test]
fn disjoint_threads_non_coherent_walker_sees_everything() {
    let rounds = 2;
    let mem = common::memory(false, 16 << 20);
    let cfg = Config::stage1(Granule::K4, 48, 48).with_coherency(WalkCoherency::NonCoherent);
    let pt = PageTable::new(cfg, SimEnv::new(mem.clone())).unwrap();
    let models: Vec<Model> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let pt = &pt;
                s.spawn(move || worker(pt, t, rounds))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    check(&pt, &models, rounds);
    for m in &models {
        for (lo, hi, _) in m.intervals() {
            assert_agree(&pt, lo);
            assert_agree(&pt, hi - 1);
            assert_agree(&pt, hi);
        }
    }
}

#[test]
fn translate_races_table_retirement_safely() {
    let mut pt = PageTable::new(
        Config::stage1(Granule::K4, 48, 48),
        Counting::new(HostEnv::default()),
    )
    .unwrap();
    let base = 0x40_0000_0000u64;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let pt = &pt;
        let stop = &stop;
        let reader = s.spawn(move || {
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for k in (0..512).step_by(37) {
                    let va = base + k * K4 + 5;
                    match pt.translate(va) {
                        None => {}
                        Some(pa) => {
                            assert_eq!(pa, 0x1000_0000 + k * K4 + 5);
                            seen += 1;
                        }
                    }
                    // Walks through retiring tables read only invalid or
                    // valid-and-correct descriptors.
                    let _ = pt.walk(va);
                }
            }
            seen
        });
        for _ in 0..300 {
            assert_eq!(pt.map(base, 0x1000_0000, K4, 512, RW), Ok(M2 as usize));
            let mut g = Gather::new();
            assert_eq!(pt.unmap(base, M2, 1, &mut g), Ok(M2 as usize));
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    });
    assert_eq!(pt.retired_tables(), 300);
    assert_eq!(pt.reclaim(), 300);
    let st = pt.env().stats();
    assert_eq!(st.flush_walks, 300);
    // Start table + level-1 + level-2 tables remain.
    assert_eq!(st.bytes_live, 3 * 4096);
}
