//! The invalidation contract between io-pgtable and its TLB owner:
//! leaves only in the gather, removed tables flushed at once, fallible
//! hooks whose errors report exactly what was done, failed steps that
//! change nothing, tables freed when their whole range is unmapped and by
//! compaction, and block splits without a fault window under BBML2.

mod common;

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{dev_walk, memory};
use io_pgtable::env::{
    AllocError, CacheError, CacheMaintenance, Counting, HostEnv, SimEnv, TableBlock, TableMemory,
    TlbError, TlbHooks,
};
use io_pgtable::{Config, Error, Gather, Granule, PageTable, Partial, Prot, Quirks, WalkCoherency};
use sim_memory::SimMemory;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

/// Simulated memory with injectable failures, and a probe that runs at
/// every walk flush (the moment a break-before-make window is open).
struct Rig {
    sim: SimEnv,
    fail_clean: AtomicBool,
    fail_flush: AtomicBool,
    fail_sync: AtomicBool,
    #[allow(clippy::type_complexity)]
    probe: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Rig {
    fn new(mem: &Arc<SimMemory>) -> Self {
        Self {
            sim: SimEnv::new(mem.clone()),
            fail_clean: AtomicBool::new(false),
            fail_flush: AtomicBool::new(false),
            fail_sync: AtomicBool::new(false),
            probe: Mutex::new(None),
        }
    }
}

// SAFETY: delegates every memory operation to SimEnv.
unsafe impl TableMemory for Rig {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        self.sim.alloc_table(size)
    }
    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        // SAFETY: forwarded caller guarantee.
        unsafe { self.sim.free_table(block, size) }
    }
    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.sim.phys_to_cpu(phys)
    }
}

impl CacheMaintenance for Rig {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        if self.fail_clean.load(Ordering::Relaxed) {
            return Err(CacheError { phys, len });
        }
        self.sim.clean(cpu, phys, len)
    }
    fn device_write_barrier(&self) {
        self.sim.device_write_barrier()
    }
    fn full_barrier(&self) {
        self.sim.full_barrier()
    }
}

impl TlbHooks for Rig {
    fn flush_walk(&self, iova: u64, size: u64, granule: u64) -> Result<(), TlbError> {
        if let Some(p) = &*self.probe.lock().unwrap() {
            p();
        }
        if self.fail_flush.load(Ordering::Relaxed) {
            return Err(TlbError::Timeout);
        }
        self.sim.flush_walk(iova, size, granule)
    }
    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError> {
        if self.fail_sync.load(Ordering::Relaxed) {
            return Err(TlbError::Rejected([0x12, 0]));
        }
        self.sim.sync_gather(gather)
    }
}

fn s1(mode: WalkCoherency) -> Config {
    Config::stage1(Granule::K4, 48, 48).with_coherency(mode)
}

fn rig_table(cfg: Config, mem: &Arc<SimMemory>) -> PageTable<Rig> {
    PageTable::new(cfg, Rig::new(mem)).unwrap()
}

#[test]
fn unmap_gathers_leaves_only_and_flushes_removed_tables_at_once() {
    let mem = memory(false, 4 << 20);
    let pt = rig_table(s1(WalkCoherency::NonCoherent), &mem);
    assert_eq!(pt.map(0, 0, K4, 512, RW), Ok(512 * 4096));
    assert_eq!(pt.map(M2, 0x4000_0000, M2, 1, RW), Ok(M2 as usize));
    pt.env().sim.take_invalidated();
    let mut g = Gather::new();
    assert_eq!(pt.unmap(0, M2, 2, &mut g), Ok(2 * M2 as usize));
    // The block is a leaf: gathered, with its size as the leaf hint.
    assert_eq!((g.start(), g.end(), g.pgsize()), (M2, 2 * M2, M2));
    // The table of 4K pages never entered the gather: it was flushed (leaf
    // and walk entries) before unmap returned.
    assert_eq!(pt.env().sim.take_invalidated(), vec![(0, M2)]);
    assert_eq!(pt.retired_tables(), 1);
    assert_eq!(dev_walk(&mem, &pt.regs(), 0x1000), Ok(None));
}

#[test]
fn a_failed_clean_in_unmap_still_counts_and_gathers_what_it_cleared() {
    let mem = memory(false, 4 << 20);
    let pt = rig_table(s1(WalkCoherency::NonCoherent), &mem);
    assert_eq!(pt.map(0x10_0000, 0, K4, 16, RW), Ok(16 * 4096));
    pt.env().fail_clean.store(true, Ordering::Relaxed);
    let mut g = Gather::new();
    let r = pt.unmap(0x10_0000, K4, 16, &mut g);
    let Err(Partial { done, error }) = r else {
        panic!("a failed clean must be reported: {r:?}");
    };
    assert!(matches!(error, Error::Cache(_)), "{error:?}");
    // The entries are gone from the table: the caller must invalidate them,
    // so they are counted and in the gather.
    assert_eq!(done, 16 * 4096);
    assert_eq!((g.start(), g.end(), g.pgsize()), (0x10_0000, 0x11_0000, K4));
    assert_eq!(pt.translate(0x10_0000), None);
}

#[test]
fn a_failed_sync_of_the_gather_widens_it_and_surfaces_in_partial() {
    let mem = memory(true, 8 << 20);
    let pt = rig_table(s1(WalkCoherency::Coherent), &mem);
    let lo = M2 - 4 * K4;
    assert_eq!(
        pt.map_range(lo, lo, 4 * K4 + M2, RW),
        Ok((4 * K4 + M2) as usize)
    );
    pt.env().fail_sync.store(true, Ordering::Relaxed);
    let mut g = Gather::new();
    let r = pt.unmap_range(lo, 4 * K4 + M2, &mut g);
    // Four pages, then a block: the page size changed, the sync of the
    // pages failed, and both are still in the gather.
    let p = r.unwrap_err();
    assert_eq!(p.error, Error::Tlb(TlbError::Rejected([0x12, 0])));
    assert_eq!(p.done as u64, 4 * K4 + M2);
    assert_eq!((g.start(), g.end(), g.pgsize()), (lo, 2 * M2, K4));
}

#[test]
fn a_failed_walk_flush_changes_nothing() {
    let mem = memory(false, 8 << 20);
    let pt = rig_table(s1(WalkCoherency::NonCoherent), &mem);
    // A block that would be split.
    assert_eq!(pt.map(0, 0x20_0000, M2, 1, RW), Ok(M2 as usize));
    // A table of pages that would be removed whole.
    assert_eq!(pt.map(M2, 0x60_0000, K4, 512, RW), Ok(512 * 4096));
    let before: Vec<_> = [0, 0x1000, M2, M2 + 0x1000]
        .iter()
        .map(|&a| pt.walk(a))
        .collect();
    pt.env().fail_flush.store(true, Ordering::Relaxed);
    let mut g = Gather::new();
    let r = pt.unmap(0x1000, K4, 1, &mut g);
    assert_eq!(
        r,
        Err(Partial {
            done: 0,
            error: Error::Tlb(TlbError::Timeout)
        })
    );
    let r = pt.unmap(M2, M2, 1, &mut g);
    assert_eq!(
        r,
        Err(Partial {
            done: 0,
            error: Error::Tlb(TlbError::Timeout)
        })
    );
    assert!(g.is_empty());
    let after: Vec<_> = [0, 0x1000, M2, M2 + 0x1000]
        .iter()
        .map(|&a| pt.walk(a))
        .collect();
    assert_eq!(before, after, "the tables are as they were");
    // And the device still sees the same mappings.
    assert_eq!(dev_walk(&mem, &pt.regs(), 0x1000), Ok(Some(0x20_1000)));
    assert_eq!(dev_walk(&mem, &pt.regs(), M2 + 0x1000), Ok(Some(0x60_1000)));
    assert_eq!(pt.retired_tables(), 0);
}

#[test]
fn unmapping_every_page_of_a_table_in_one_call_frees_it() {
    let env = Counting::new(HostEnv::default());
    let mut pt = PageTable::new(s1(WalkCoherency::Coherent), &env).unwrap();
    assert_eq!(pt.map(0, 0, K4, 1, RW), Ok(4096));
    let with_path = env.stats().bytes_live;
    assert_eq!(pt.unmap(0, K4, 1, &mut Gather::new()), Ok(4096));
    assert_eq!(pt.map(0, 0, K4, 512, RW), Ok(512 * 4096));
    let mut g = Gather::new();
    assert_eq!(pt.unmap(0, K4, 512, &mut g), Ok(512 * 4096));
    assert!(g.is_empty(), "the table went whole: {g:?}");
    assert_eq!(pt.reclaim(), 1);
    assert_eq!(env.stats().bytes_live, with_path - 4096);
}

#[test]
fn compaction_returns_table_memory_to_the_root() {
    let env = Counting::new(HostEnv::default());
    let mut pt = PageTable::new(s1(WalkCoherency::Coherent), &env).unwrap();
    let root = env.stats().bytes_live;
    // An identity map of mixed 1G and 2M leaves (and 4K at the ends), as a
    // hypervisor's shadow would hold.
    let (lo, len) = (0x4020_0000 + 0x3000, 5 * G1 + 0x1234_5000);
    assert_eq!(pt.map_range(lo, lo, len, RW), Ok(len as usize));
    assert!(env.stats().bytes_live > root + 4 * 4096);
    // Unmap it in pieces smaller than the tables they sit in.
    let mut at = lo;
    let mut g = Gather::new();
    while at < lo + len {
        let step = (0x0700_0000u64).min(lo + len - at);
        assert_eq!(pt.unmap_range(at, step, &mut g), Ok(step as usize));
        at += step;
    }
    for probe in [lo, lo + G1, lo + len - 1] {
        assert_eq!(pt.translate(probe), None);
    }
    let freed = pt.compact().unwrap();
    assert!(freed > 0);
    assert_eq!(env.stats().bytes_live, root, "only the root is left");
    // The table still works after compaction.
    assert_eq!(pt.map(lo & !0xfff, 0, K4, 1, RW), Ok(4096));
    assert_eq!(pt.translate(lo & !0xfff), Some(0));
}

#[test]
fn compaction_keeps_tables_that_still_map_something() {
    let env = Counting::new(HostEnv::default());
    let mut pt = PageTable::new(s1(WalkCoherency::Coherent), &env).unwrap();
    assert_eq!(pt.map(0, 0, K4, 2, RW), Ok(2 * 4096));
    assert_eq!(pt.map(G1, 0, K4, 1, RW), Ok(4096));
    assert_eq!(pt.unmap(G1, K4, 1, &mut Gather::new()), Ok(4096));
    let before = env.stats().bytes_live;
    // The tables under 1G (level 2 and 3) are empty; those under 0 are not.
    assert_eq!(pt.compact(), Ok(2));
    assert_eq!(env.stats().bytes_live, before - 2 * 4096);
    assert_eq!(pt.translate(0x1000), Some(0x1000));
}

/// The device walks another page of the block at every walk flush, the
/// moment a break-before-make window is open.
fn split_windows(quirks: Quirks) -> Vec<Result<Option<u64>, String>> {
    let mem = memory(false, 8 << 20);
    let cfg = s1(WalkCoherency::NonCoherent).with_quirks(quirks);
    let pt = Arc::new(rig_table(cfg, &mem));
    assert_eq!(pt.map(0, 0x20_0000, M2, 1, RW), Ok(M2 as usize));
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let (mem, regs, seen) = (mem.clone(), pt.regs(), seen.clone());
        *pt.env().probe.lock().unwrap() = Some(Box::new(move || {
            seen.lock().unwrap().push(dev_walk(&mem, &regs, 0x8000));
        }));
    }
    let mut g = Gather::new();
    assert_eq!(pt.unmap(0x1000, K4, 1, &mut g), Ok(4096));
    assert_eq!(dev_walk(&mem, &pt.regs(), 0x8000), Ok(Some(0x20_8000)));
    assert_eq!(dev_walk(&mem, &pt.regs(), 0x1000), Ok(None));
    seen.lock().unwrap().clone()
}

#[test]
fn a_block_split_under_bbml2_has_no_fault_window() {
    // Break-before-make: during the flush the rest of the block faults
    // (this is what the BBML2 path avoids, and proves the probe sees it).
    assert_eq!(split_windows(Quirks::empty()), vec![Ok(None)]);
    // BBML2: the table replaced the block in one store; the neighbour
    // translates at every step.
    assert_eq!(split_windows(Quirks::BBML2), vec![Ok(Some(0x20_8000))]);
}

#[test]
fn a_contiguous_run_rewrite_under_bbml2_has_no_fault_window() {
    for (quirks, want) in [
        (Quirks::empty(), Ok(None)),
        (Quirks::BBML2, Ok(Some(0x3_8000))),
    ] {
        let mem = memory(false, 8 << 20);
        let cfg = s1(WalkCoherency::NonCoherent).with_quirks(quirks);
        let pt = rig_table(cfg, &mem);
        assert_eq!(
            pt.map(0, 0x3_0000, K4, 16, RW | Prot::CONTIG),
            Ok(16 * 4096)
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let (mem, regs, seen) = (mem.clone(), pt.regs(), seen.clone());
            *pt.env().probe.lock().unwrap() = Some(Box::new(move || {
                seen.lock().unwrap().push(dev_walk(&mem, &regs, 0x8000));
            }));
        }
        assert_eq!(pt.unmap(0x1000, K4, 1, &mut Gather::new()), Ok(4096));
        assert_eq!(*seen.lock().unwrap(), vec![want.clone()], "{quirks:?}");
        assert_eq!(dev_walk(&mem, &pt.regs(), 0x8000), Ok(Some(0x3_8000)));
        assert_eq!(
            pt.walk(0x8000).steps()[3].desc & io_pgtable::layout::CONTIG,
            0
        );
    }
}

#[test]
fn sync_map_orders_leaf_stores_in_every_mode() {
    for mode in [
        WalkCoherency::Coherent,
        WalkCoherency::NonCoherent,
        WalkCoherency::Deferred,
    ] {
        let env = Counting::new(HostEnv::default());
        let pt = PageTable::new(s1(mode), &env).unwrap();
        assert_eq!(pt.map(0, 0, K4, 4, RW), Ok(4 * 4096));
        let b = env.stats().barriers;
        pt.sync_map(0, 4 * K4).unwrap();
        assert_eq!(env.stats().barriers, b + 1, "{mode:?}");
    }
}
