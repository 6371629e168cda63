//! Linux's io-pgtable self-test matrix, re-implemented: every granule, every
//! (oas, ias <= oas) pair, both stages, every page size, the last page of
//! the address space; run with a coherent walker, a non-coherent one and in
//! deferred mode, where an independent walker reading only the device view
//! must agree with `translate` after every operation (and sync).

mod common;

use common::{assert_agree, memory_for, table};
use io_pgtable::env::SimEnv;
use io_pgtable::{Config, Error, Gather, Granule, PageTable, Prot, WalkCoherency};

const SIZES: [u32; 6] = [32, 36, 40, 42, 44, 48];
const GB: u64 = 1 << 30;

fn sync(pt: &PageTable<SimEnv>, iova: u64, size: u64) {
    pt.sync_map(iova, size).unwrap();
}

fn probe(pt: &PageTable<SimEnv>, iova: u64, size: u64) {
    for off in [0, 42, size / 2, size - 8] {
        assert_agree(pt, iova + off);
    }
}

fn run(cfg: Config, pt: &PageTable<SimEnv>) {
    let rw = Prot::READ | Prot::WRITE | Prot::NOEXEC | Prot::CACHE;
    // 1. Empty.
    for iova in [42, GB + 42, 2 * GB + 42] {
        assert_eq!(pt.translate(iova), None, "{cfg:?}");
        assert_agree(pt, iova);
    }
    let sizes: Vec<u64> = (0..64)
        .map(|b| 1u64 << b)
        .filter(|s| pt.pgsize_bitmap() & s != 0)
        .collect();
    assert!(!sizes.is_empty());
    // 2. Map each page size at 0, 1G, 2G, ... (4T blocks at the next 4T
    // boundary); mapping again fails.
    let mut iovas = Vec::new();
    let mut next = 0u64;
    for &size in &sizes {
        let iova = next.next_multiple_of(size);
        next = iova + GB.max(size);
        iovas.push(iova);
        assert_eq!(
            pt.map(iova, iova, size, 1, rw),
            Ok(size as usize),
            "{cfg:?} size {size:#x}"
        );
        sync(pt, iova, size);
        let again = pt.map(iova, iova + size, size, 1, rw).unwrap_err();
        assert!(
            matches!(again.error, Error::Exists(_)),
            "{cfg:?}: {again:?}"
        );
        assert_eq!(again.done, 0);
        assert_eq!(pt.translate(iova + 42), Some(iova + 42), "{cfg:?}");
        probe(pt, iova, size);
    }
    // 3. Unmap each; translation empty; remap write-only.
    for (&size, &iova) in sizes.iter().zip(&iovas) {
        let mut g = Gather::new();
        assert_eq!(
            pt.unmap(iova, size, 1, &mut g),
            Ok(size as usize),
            "{cfg:?}"
        );
        assert_eq!((g.start(), g.len()), (iova, size));
        assert_eq!(pt.translate(iova + 42), None, "{cfg:?}");
        probe(pt, iova, size);
        assert_eq!(pt.map(iova, iova, size, 1, Prot::WRITE), Ok(size as usize));
        sync(pt, iova, size);
        assert_eq!(pt.translate(iova + 42), Some(iova + 42));
        probe(pt, iova, size);
    }
    // 4. The largest page at the very end of the input space.
    let size = *sizes.last().unwrap();
    let last = (1u64 << cfg.ias) - size;
    let pa = last & ((1u64 << cfg.oas) - 1);
    assert_eq!(pt.map(last, pa, size, 1, rw), Ok(size as usize), "{cfg:?}");
    sync(pt, last, size);
    assert_eq!(pt.translate(last + size - 1), Some(pa + size - 1));
    probe(pt, last, size);
    let mut g = Gather::new();
    assert_eq!(
        pt.unmap(last, size, 1, &mut g),
        Ok(size as usize),
        "{cfg:?}"
    );
    probe(pt, last, size);
    // Nothing may remain dirty for the walker after the syncs.
    if cfg.coherency != WalkCoherency::Coherent {
        assert_eq!(pt.env().mem().all_dirty_lines(), 0, "{cfg:?}");
    }
}

fn matrix(mode: WalkCoherency) {
    // Small memory (dirty-line scans read all of it), reused by every table.
    let mem = memory_for(mode, 2 << 20);
    let mut n = 0;
    for granule in [Granule::K4, Granule::K16, Granule::K64] {
        for oas in SIZES {
            for ias in SIZES.into_iter().filter(|&i| i <= oas) {
                for cfg in [
                    Config::stage1(granule, ias, oas),
                    Config::stage2(granule, ias, oas),
                ] {
                    let cfg = cfg.with_coherency(mode);
                    let pt = table(cfg, &mem);
                    run(cfg, &pt);
                    drop(pt);
                    assert_eq!(mem.bytes_allocated(), 0, "{cfg:?} leaked table memory");
                    n += 1;
                }
            }
        }
    }
    assert_eq!(n, 3 * 21 * 2);
}

#[test]
fn linux_matrix_coherent() {
    matrix(WalkCoherency::Coherent);
}

#[test]
fn linux_matrix_non_coherent() {
    matrix(WalkCoherency::NonCoherent);
}

#[test]
fn linux_matrix_deferred() {
    matrix(WalkCoherency::Deferred);
}

#[test]
fn linux_matrix_52_bit_64k() {
    for mode in [
        WalkCoherency::Coherent,
        WalkCoherency::NonCoherent,
        WalkCoherency::Deferred,
    ] {
        let mem = memory_for(mode, 2 << 20);
        for (ias, oas) in [(48, 52), (52, 52)] {
            for cfg in [
                Config::stage1(Granule::K64, ias, oas),
                Config::stage2(Granule::K64, ias, oas),
            ] {
                let cfg = cfg.with_coherency(mode);
                let pt = table(cfg, &mem);
                assert!(
                    pt.pgsize_bitmap() & (1 << 42) != 0,
                    "4T blocks with 52-bit oas"
                );
                run(cfg, &pt);
            }
        }
    }
}
