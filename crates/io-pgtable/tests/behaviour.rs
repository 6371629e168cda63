//! Behaviour tests: errors, splitting, contiguous hint, reclamation, dirty
//! tracking, deferred sync accounting, a caught missing clean, registers.

mod common;

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{assert_agree, dev_walk, memory, memory_for, table};
use io_pgtable::env::{
    AllocError, CacheError, CacheMaintenance, SimEnv, TableBlock, TableMemory, TlbError, TlbHooks,
};
use io_pgtable::layout::{self, CONTIG, s1};
use io_pgtable::{
    Config, Error, Gather, Granule, PageTable, Prot, Quirks, Regs, Stage, WalkCoherency,
};
use sim_memory::SimMemory;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

fn s1_4k(mode: WalkCoherency) -> Config {
    Config::stage1(Granule::K4, 48, 48).with_coherency(mode)
}

fn leaf(pt: &PageTable<SimEnv>, iova: u64) -> u64 {
    pt.walk(iova).steps().last().unwrap().desc
}

#[test]
fn bad_input_gets_typed_errors_and_maps_nothing() {
    let mem = memory(true, 1 << 20);
    let cfg = Config::stage1(Granule::K4, 39, 40);
    let pt = table(cfg, &mem);
    let err = |r: Result<usize, io_pgtable::Partial>| {
        let p = r.unwrap_err();
        assert_eq!(p.done, 0);
        p.error
    };
    assert_eq!(err(pt.map(0, 0, K4, 0, RW)), Error::ZeroCount);
    assert_eq!(err(pt.map(0, 0, 8192, 1, RW)), Error::BadPageSize(8192));
    assert_eq!(err(pt.map(0, 0, 3, 1, RW)), Error::BadPageSize(3));
    assert_eq!(
        err(pt.map(0x800, 0, K4, 1, RW)),
        Error::UnalignedIova(0x800)
    );
    assert_eq!(
        err(pt.map(0, 0x800, K4, 1, RW)),
        Error::UnalignedPaddr(0x800)
    );
    assert_eq!(
        err(pt.map(1 << 39, 0, K4, 1, RW)),
        Error::IovaOutOfRange(1 << 39)
    );
    let top = (1u64 << 39) - K4;
    assert_eq!(err(pt.map(top, 0, K4, 2, RW)), Error::IovaOutOfRange(top));
    assert_eq!(
        err(pt.map(0, 1 << 40, K4, 1, RW)),
        Error::PaddrOutOfRange(1 << 40)
    );
    assert_eq!(err(pt.map(0, 0, K4, usize::MAX, RW)), Error::Overflow);
    assert_eq!(err(pt.map(0, !0xfff, K4, 2, RW)), Error::Overflow);
    assert_eq!(err(pt.map(0, 0, K4, 1, Prot::NOEXEC)), Error::NoPermission);
    let mut g = Gather::new();
    assert_eq!(err(pt.unmap(0, K4, 0, &mut g)), Error::ZeroCount);
    assert_eq!(
        err(pt.unmap(0x10, K4, 1, &mut g)),
        Error::UnalignedIova(0x10)
    );
    assert_eq!(
        err(pt.map_range(0, 0, 0x1800, RW)),
        Error::UnalignedSize(0x1800)
    );
    assert_eq!(
        pt.sync_map(u64::MAX, 2),
        Err(Error::IovaOutOfRange(u64::MAX))
    );
    assert!(matches!(
        pt.read_and_clear_dirty(0, K4, true, |_, _| {}),
        Err(Error::Unsupported(_))
    ));
    // Nothing was mapped, nothing allocated beyond the start table.
    assert_eq!(mem.blocks_allocated(), 1);
    assert!(g.is_empty());
    // Forbidden configurations.
    for bad in [
        Config::stage1(Granule::K16, 52, 48),
        Config::stage2(Granule::K4, 48, 47),
        Config::stage1(Granule::K4, 48, 48).with_quirks(Quirks::S2FWB),
    ] {
        assert!(matches!(
            PageTable::new(bad, SimEnv::new(mem.clone())).unwrap_err(),
            Error::BadConfig(_)
        ));
    }
}

#[test]
fn mapping_over_a_mapping_is_refused_but_a_block_replaces_an_empty_table() {
    let mem = memory(true, 1 << 20);
    let pt = table(s1_4k(WalkCoherency::Coherent), &mem);
    assert_eq!(pt.map(0x20_0000, 0, K4, 4, RW), Ok(4 * 4096));
    // Overlap in the middle of a run: the prefix is mapped and reported.
    let p = pt.map(0x1f_e000, 0x100_0000, K4, 4, RW).unwrap_err();
    assert_eq!((p.done, p.error), (2 * 4096, Error::Exists(0x20_0000)));
    // A block over a table with leaves is refused.
    let p = pt.map(0x20_0000, 0, M2, 1, RW).unwrap_err();
    assert_eq!(p.error, Error::Exists(0x20_0000));
    // Once its leaves are gone, the block replaces the empty table.
    let mut g = Gather::new();
    assert_eq!(pt.unmap(0x20_0000, K4, 4, &mut g), Ok(4 * 4096));
    let walks = pt.env().flush_walks();
    assert_eq!(pt.map(0x20_0000, 0x4000_0000, M2, 1, RW), Ok(M2 as usize));
    assert_eq!(pt.env().flush_walks(), walks + 1);
    assert_eq!(pt.translate(0x20_1234), Some(0x4000_1234));
    assert_eq!(pt.retired_tables(), 1);
    // Pages under the block are refused at the block's level.
    let p = pt.map(0x20_1000, 0, K4, 1, RW).unwrap_err();
    assert_eq!(p.error, Error::Exists(0x20_1000));
}

#[test]
fn partial_unmap_of_a_block_splits_it_with_break_before_make() {
    for mode in [
        WalkCoherency::Coherent,
        WalkCoherency::NonCoherent,
        WalkCoherency::Deferred,
    ] {
        let mem = memory_for(mode, 1 << 20);
        let pt = table(s1_4k(mode), &mem);
        let gb = 1u64 << 30;
        assert_eq!(pt.map(gb, 0x8000_0000, gb, 1, RW), Ok(gb as usize));
        pt.sync_map(gb, gb).unwrap();
        let mut g = Gather::new();
        // 4K out of a 1G block: two splits (1G -> 2M -> 4K).
        assert_eq!(pt.unmap(gb + 0x40_3000, K4, 1, &mut g), Ok(4096));
        assert_eq!(pt.env().flush_walks(), 2, "one break-before-make per split");
        assert_eq!((g.start(), g.len()), (gb + 0x40_3000, K4));
        assert_eq!(pt.translate(gb + 0x40_3000), None);
        for off in [0, 0x40_2fff, 0x40_4000, 0x3fff_ffff, 0x20_0000] {
            assert_eq!(pt.translate(gb + off), Some(0x8000_0000 + off), "{mode:?}");
            assert_agree(&pt, gb + off);
        }
        assert_agree(&pt, gb + 0x40_3000);
        // Attributes survive the split.
        let attrs = |d: u64| d & !layout::ADDR_MASK_48 & !3;
        assert_eq!(attrs(leaf(&pt, gb)), attrs(leaf(&pt, gb + 0x40_0000)));
        assert_eq!(leaf(&pt, gb + 0x40_0000) & 3, 3, "a page");
        assert_eq!(leaf(&pt, gb) & 3, 1, "a block");
        // 2M out of what is now a table of 2M blocks.
        assert_eq!(pt.unmap(gb + 0x60_0000, M2, 1, &mut g), Ok(M2 as usize));
        assert_eq!(pt.translate(gb + 0x60_0000), None);
        assert_eq!(pt.translate(gb + 0x80_0000), Some(0x8080_0000));
        assert_agree(&pt, gb + 0x60_0000);
        if mode != WalkCoherency::Coherent {
            assert_eq!(mem.all_dirty_lines(), 0, "{mode:?}");
        }
    }
}

#[test]
fn contiguous_hint_on_full_aligned_groups_and_cleared_on_partial_unmap() {
    let mem = memory(false, 1 << 20);
    let pt = table(s1_4k(WalkCoherency::NonCoherent), &mem);
    let prot = RW | Prot::CONTIG;
    // 40 pages from page 8: only the groups [16, 32) and [32, 48) are full.
    let iova = 8 * K4;
    assert_eq!(pt.map(iova, 0x100_0000 + iova, K4, 40, prot), Ok(40 * 4096));
    for p in 8..48u64 {
        let has = leaf(&pt, p * K4) & CONTIG != 0;
        assert_eq!(has, (16..48).contains(&p), "page {p}");
        assert_agree(&pt, p * K4);
    }
    // Not congruent modulo the group: no hint at all.
    assert_eq!(pt.map(0x10_0000, 0x200_1000, K4, 32, prot), Ok(32 * 4096));
    assert_eq!(leaf(&pt, 0x10_0000 + 16 * K4) & CONTIG, 0);
    // Unmap one page inside group [16, 32): the rest of the group loses
    // the hint (break-before-make), translations stay.
    let before = pt.env().flush_walks();
    let mut g = Gather::new();
    assert_eq!(pt.unmap(20 * K4, K4, 1, &mut g), Ok(4096));
    assert_eq!(pt.env().flush_walks(), before + 1);
    for p in 16..32u64 {
        assert_eq!(leaf(&pt, p * K4) & CONTIG, 0, "page {p}");
        let want = (p != 20).then_some(0x100_0000 + p * K4);
        assert_eq!(pt.translate(p * K4), want);
        assert_agree(&pt, p * K4);
    }
    // The other group keeps it.
    assert_ne!(leaf(&pt, 32 * K4) & CONTIG, 0);
    // Unmapping a whole group needs no rewrite.
    assert_eq!(pt.unmap(32 * K4, K4, 16, &mut g), Ok(16 * 4096));
    assert_eq!(pt.env().flush_walks(), before + 1);
    // 2M blocks: 16 x 2M groups.
    let gb = 1u64 << 30;
    assert_eq!(pt.map(gb, gb, M2, 16, prot), Ok(16 * M2 as usize));
    assert_ne!(leaf(&pt, gb + 5 * M2) & CONTIG, 0);
    // Splitting a block of a group drops the hint of the group first.
    assert_eq!(pt.unmap(gb + 5 * M2 + K4, K4, 1, &mut g), Ok(4096));
    assert_eq!(leaf(&pt, gb) & CONTIG, 0);
    assert_eq!(pt.translate(gb + 5 * M2), Some(gb + 5 * M2));
    assert_eq!(pt.translate(gb + 5 * M2 + K4), None);
    assert_agree(&pt, gb + 5 * M2 + 2 * K4);
    assert_eq!(mem.all_dirty_lines(), 0);
}

#[test]
fn contiguous_group_sizes_per_granule() {
    for (granule, page, n) in [
        (Granule::K4, 1u64 << 12, 16u64),
        (Granule::K16, 1 << 14, 128),
        (Granule::K64, 1 << 16, 32),
    ] {
        let mem = memory(true, 4 << 20);
        let pt = table(Config::stage2(granule, 40, 40), &mem);
        let prot = RW | Prot::CONTIG;
        assert_eq!(
            pt.map(0, 0, page, n as usize, prot),
            Ok((n * page) as usize)
        );
        assert_ne!(leaf(&pt, 0) & CONTIG, 0, "{granule:?}");
        assert_eq!(
            pt.map(n * page, n * page, page, n as usize - 1, prot),
            Ok(((n - 1) * page) as usize)
        );
        assert_eq!(
            leaf(&pt, n * page) & CONTIG,
            0,
            "{granule:?}: incomplete group"
        );
    }
}

#[test]
fn unmapping_a_table_retires_it_and_reclaim_frees_it() {
    let mem = memory(false, 1 << 20);
    let mut pt = table(s1_4k(WalkCoherency::NonCoherent), &mem);
    let before = mem.bytes_allocated();
    assert_eq!(pt.map(0x20_0000, 0x20_0000, K4, 512, RW), Ok(M2 as usize));
    assert_eq!(pt.map(0x4000_0000, 0, K4, 1, RW), Ok(4096));
    let mut g = Gather::new();
    // A 2M unmap over a table of 4K pages removes the whole table.
    assert_eq!(pt.unmap(0x20_0000, M2, 1, &mut g), Ok(M2 as usize));
    assert_eq!(pt.env().flush_walks(), 1);
    assert_eq!(pt.translate(0x20_0000), None);
    assert_agree(&pt, 0x20_0000);
    assert_eq!(pt.retired_tables(), 1);
    // A retired table reads as invalid entries only.
    let retired_bytes = mem.bytes_allocated();
    // A 1G unmap over a table whose subtree is empty except one page.
    assert_eq!(pt.unmap(0x4000_0000, 1 << 30, 1, &mut g), Ok(1 << 30));
    assert_eq!(pt.retired_tables(), 3);
    assert_eq!(pt.reclaim(), 3);
    assert_eq!(pt.retired_tables(), 0);
    assert!(mem.bytes_allocated() < retired_bytes);
    assert_eq!(pt.translate(0x4000_0000), None);
    // Unmapping nothing reports nothing.
    assert_eq!(pt.unmap(0x4000_0000, K4, 1, &mut g), Ok(0));
    assert!(mem.bytes_allocated() >= before);
    drop(pt);
    assert_eq!(mem.bytes_allocated(), 0);
}

#[test]
fn allocation_failure_leaves_the_mapped_part_consistent() {
    let mem = memory(false, 1 << 20);
    let pt = table(s1_4k(WalkCoherency::NonCoherent), &mem);
    // The first 2M of pages needs level 1, 2 and 3 tables; the next 2M one
    // more level-3 table, which fails.
    mem.fail_allocs_after(Some(3));
    let p = pt.map(0x4000_0000, 0x4000_0000, K4, 1024, RW).unwrap_err();
    assert_eq!(p.done, M2 as usize);
    assert!(matches!(p.error, Error::Alloc(AllocError::NoMemory { .. })));
    for off in [0, M2 - K4, M2] {
        assert_agree(&pt, 0x4000_0000 + off);
    }
    assert_eq!(
        pt.translate(0x4000_0000 + M2 - K4),
        Some(0x4000_0000 + M2 - K4)
    );
    assert_eq!(pt.translate(0x4000_0000 + M2), None);
    // Splitting needs a table too.
    mem.fail_allocs_after(None);
    assert_eq!(pt.map(0x8000_0000, 0, M2, 1, RW), Ok(M2 as usize));
    mem.fail_allocs_after(Some(0));
    let mut g = Gather::new();
    let p = pt.unmap(0x8000_0000, K4, 1, &mut g).unwrap_err();
    assert_eq!(p.done, 0);
    assert!(matches!(p.error, Error::Alloc(_)));
    assert_eq!(
        pt.translate(0x8000_1000),
        Some(0x1000),
        "the block is untouched"
    );
    mem.fail_allocs_after(None);
    // And a table cannot even be created.
    mem.fail_allocs_after(Some(0));
    assert!(matches!(
        PageTable::new(s1_4k(WalkCoherency::Coherent), SimEnv::new(mem.clone())),
        Err(Error::Alloc(_))
    ));
}

#[test]
fn dirty_tracking_reports_and_clears_device_writes() {
    let mem = memory(true, 1 << 20);
    let cfg = s1_4k(WalkCoherency::Coherent).with_quirks(Quirks::HD);
    let pt = table(cfg, &mem);
    assert_eq!(pt.map(0, 0, K4, 4, RW), Ok(4 * 4096));
    assert_eq!(pt.map(M2, M2, M2, 1, RW), Ok(M2 as usize));
    assert_eq!(pt.map(4 * K4, 0, K4, 1, Prot::READ), Ok(4096));
    let collect = |clear| {
        let mut v = Vec::new();
        pt.read_and_clear_dirty(0, 2 * M2, clear, |iova, size| v.push((iova, size)))
            .unwrap();
        v.sort();
        v
    };
    // Writable leaves start dirty (DBM set, writable).
    let all = vec![(0, K4), (K4, K4), (2 * K4, K4), (3 * K4, K4), (M2, M2)];
    assert_eq!(collect(false), all);
    assert_eq!(collect(true), all);
    assert_eq!(collect(true), vec![]);
    // Clean means DBM set, AP[2] (read-only) set.
    let d = leaf(&pt, K4);
    assert_eq!(d & (s1::DBM | s1::AP_RDONLY), s1::DBM | s1::AP_RDONLY);
    // The device writes page 2 and the block: hardware clears AP[2].
    for iova in [2 * K4, M2 + 5 * K4] {
        let step = *pt.walk(iova).steps().last().unwrap();
        let r = mem.dev_cmpxchg_u64(step.desc_phys, step.desc, step.desc & !s1::AP_RDONLY);
        assert_eq!(r, Ok(Ok(step.desc)));
    }
    assert_eq!(collect(true), vec![(2 * K4, K4), (M2, M2)]);
    assert_eq!(collect(false), vec![]);
    // A read-only leaf has no DBM and is never dirty.
    assert_eq!(leaf(&pt, 4 * K4) & s1::DBM, 0);
    // Stage 2 has no HD.
    let pt2 = table(Config::stage2(Granule::K4, 40, 40), &mem);
    assert!(pt2.read_and_clear_dirty(0, K4, false, |_, _| {}).is_err());
}

/// An environment whose cleans can be switched off: a deliberately broken
/// driver.
struct SkipEnv {
    inner: SimEnv,
    skip: AtomicBool,
    /// Make cleans fail (an environment error).
    fail: AtomicBool,
    /// Cleans attempted.
    calls: AtomicU64,
    /// Dirty lines (walker-visible bits) seen when pages reach the gather.
    dirty_at_add: Mutex<Vec<u64>>,
}

impl SkipEnv {
    fn new(mem: &Arc<SimMemory>) -> Self {
        Self {
            inner: SimEnv::new(mem.clone()),
            skip: AtomicBool::new(false),
            fail: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            dirty_at_add: Mutex::new(Vec::new()),
        }
    }
}

// SAFETY: delegates every memory operation to SimEnv.
unsafe impl TableMemory for SkipEnv {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        self.inner.alloc_table(size)
    }
    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        // SAFETY: forwarded caller guarantee.
        unsafe { self.inner.free_table(block, size) }
    }
    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.inner.phys_to_cpu(phys)
    }
}

impl CacheMaintenance for SkipEnv {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            return Err(CacheError { phys, len });
        }
        if self.skip.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.clean(cpu, phys, len)
    }
    fn device_write_barrier(&self) {
        self.inner.device_write_barrier()
    }
    fn full_barrier(&self) {
        self.inner.full_barrier()
    }
}

impl TlbHooks for SkipEnv {
    fn flush_walk(&self, iova: u64, size: u64, granule: u64) -> Result<(), TlbError> {
        self.inner.flush_walk(iova, size, granule)
    }
    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError> {
        self.inner.sync_gather(gather)
    }
    fn add_pages(
        &self,
        gather: &mut Gather,
        iova: u64,
        pgsize: u64,
        count: u64,
    ) -> Result<(), TlbError> {
        let dirty = self.inner.mem().all_dirty_lines();
        self.dirty_at_add.lock().unwrap().push(dirty);
        if let Some(old) = gather.add(iova, pgsize, count) {
            self.sync_gather(&old)?;
        }
        Ok(())
    }
}

#[test]
fn a_skipped_clean_is_caught_by_the_device_walker() {
    let mem: Arc<SimMemory> = memory(false, 1 << 20);
    let env = SkipEnv::new(&mem);
    let pt = PageTable::new(s1_4k(WalkCoherency::NonCoherent), env).unwrap();
    let walk = |iova| dev_walk(&mem, &pt.regs(), iova);
    assert_eq!(pt.map(0, 0x5000, K4, 1, RW), Ok(4096));
    assert_eq!(walk(0), Ok(Some(0x5000)));
    // A leaf write whose clean is skipped: translate sees it, the walker not.
    pt.env().skip.store(true, Ordering::Relaxed);
    assert_eq!(pt.map(K4, 0x6000, K4, 1, RW), Ok(4096));
    assert_eq!(pt.translate(K4), Some(0x6000));
    assert_eq!(walk(K4), Ok(None));
    // New tables linked without cleaning: the walker misses the link...
    assert_eq!(pt.map(1 << 30, 0, K4, 1, RW), Ok(4096));
    assert_eq!(pt.translate(1 << 30), Some(0));
    assert_eq!(walk(1 << 30), Ok(None));
    // ...and once the link reaches memory, it reads the stale table.
    let link = pt.walk(1 << 30).steps()[1].desc_phys;
    mem.clean(link, 8).unwrap();
    let e = walk(1 << 30).unwrap_err();
    assert!(e.contains("uncleaned"), "{e}");
    // An unmap whose clean is skipped: the walker still translates.
    let mut g = Gather::new();
    assert_eq!(pt.unmap(0, K4, 1, &mut g), Ok(4096));
    assert_eq!(pt.translate(0), None);
    assert_eq!(walk(0), Ok(Some(0x5000)));
}

#[test]
fn deferred_sync_cleans_each_dirty_line_exactly_once() {
    let mem = memory(false, 2 << 20);
    let pt = table(s1_4k(WalkCoherency::Deferred), &mem);
    // Runs that start and end mid-line, several tables, blocks and pages.
    let runs = [
        (0x3000u64, K4, 37u64),
        (0x20_0000 - 5 * K4, K4, 10),
        (0x4000_0000, M2, 3),
        (0x4000_0000 + 9 * M2, M2, 1),
        (0x7fff_f000, K4, 1),
    ];
    for (iova, size, n) in runs {
        assert_eq!(
            pt.map(iova, iova, size, n as usize, RW),
            Ok((size * n) as usize)
        );
    }
    let dirty = mem.all_dirty_lines();
    assert!(dirty >= 7, "{dirty}");
    // The walker does not see deferred leaves yet.
    assert_eq!(dev_walk(&mem, &pt.regs(), 0x3000), Ok(None));
    mem.reset_cache_stats();
    for (iova, size, n) in runs {
        pt.sync_map(iova, size * n).unwrap();
    }
    let s = mem.cache_stats();
    assert_eq!(s.lines_cleaned, dirty, "one clean per dirty line");
    assert_eq!(s.redundant_lines, 0);
    assert_eq!(mem.all_dirty_lines(), 0);
    for (iova, size, n) in runs {
        for k in 0..n {
            assert_agree(&pt, iova + k * size + 8);
        }
    }
    // Adjacent lines of one table are merged into one call.
    assert_eq!(pt.map(0x1000_0000, 0, K4, 64, RW), Ok(64 * 4096));
    mem.reset_cache_stats();
    pt.sync_map(0x1000_0000, 64 * K4).unwrap();
    let s = mem.cache_stats();
    assert_eq!((s.clean_calls, s.lines_cleaned), (1, 8));
}

#[test]
fn non_coherent_map_cleans_one_run_per_table() {
    let mem = memory(false, 2 << 20);
    let pt = table(s1_4k(WalkCoherency::NonCoherent), &mem);
    assert_eq!(pt.map(0, 0, K4, 1, RW), Ok(4096));
    mem.reset_cache_stats();
    // 1000 pages from page 1: two level-3 tables exist or get created.
    assert_eq!(pt.map(K4, 0, K4, 1000, RW), Ok(1000 * 4096));
    let s = mem.cache_stats();
    // Run 1 (pages 1..512) + new table + its descriptor (once: a link is
    // cleaned only by its installer when no other link is in flight) +
    // run 2.
    assert_eq!(s.clean_calls, 4);
    assert_eq!(s.redundant_lines, 0);
    assert_eq!(mem.all_dirty_lines(), 0);
}

#[test]
fn leaf_encodings_follow_the_architecture() {
    let mem = memory(true, 1 << 20);
    let pt = table(s1_4k(WalkCoherency::Coherent).with_quirks(Quirks::NS), &mem);
    pt.map(0, 0x1000, K4, 1, Prot::READ | Prot::CACHE).unwrap();
    pt.map(
        K4,
        0x2000,
        K4,
        1,
        Prot::READ | Prot::WRITE | Prot::MMIO | Prot::NOEXEC | Prot::PRIV,
    )
    .unwrap();
    let d = leaf(&pt, 0);
    assert_eq!(d & 3, 3);
    assert_eq!(d & layout::ADDR_MASK_48, 0x1000);
    assert_eq!((d >> 2) & 7, layout::MAIR_IDX_CACHE);
    assert_eq!(
        d & (s1::AP_RDONLY | s1::AP_UNPRIV | layout::AF | s1::NG | s1::NS),
        s1::AP_RDONLY | s1::AP_UNPRIV | layout::AF | s1::NG | s1::NS
    );
    assert_eq!((d >> 8) & 3, layout::SH_INNER);
    let d = leaf(&pt, K4);
    assert_eq!((d >> 2) & 7, layout::MAIR_IDX_DEVICE);
    assert_eq!(d & (s1::AP_RDONLY | s1::AP_UNPRIV), 0);
    assert_eq!(d & (s1::UXN | s1::PXN), s1::UXN | s1::PXN);
    // Table descriptors carry NSTable with the NS quirk.
    assert_ne!(pt.walk(0).steps()[0].desc & s1::NS_TABLE, 0);

    let pt = table(
        Config::stage2(Granule::K4, 40, 40).with_quirks(Quirks::S2FWB),
        &mem,
    );
    pt.map(0, 0x1000, K4, 1, Prot::WRITE | Prot::CACHE).unwrap();
    pt.map(K4, 0x1000, K4, 1, Prot::READ).unwrap();
    let d = leaf(&pt, 0);
    assert_eq!((d >> 2) & 0xf, layout::s2::MEMATTR_FWB_WB);
    assert_eq!(
        d & (layout::s2::S2AP_READ | layout::s2::S2AP_WRITE),
        layout::s2::S2AP_WRITE
    );
    let d = leaf(&pt, K4);
    assert_eq!((d >> 2) & 0xf, layout::s2::MEMATTR_NC);
    assert_eq!(
        d & (layout::s2::S2AP_READ | layout::s2::S2AP_WRITE),
        layout::s2::S2AP_READ
    );
}

#[test]
fn pa_bits_51_48_live_in_descriptor_bits_15_12() {
    let mem = memory(false, 4 << 20);
    let cfg = Config::stage1(Granule::K64, 52, 52).with_coherency(WalkCoherency::NonCoherent);
    let pt = table(cfg, &mem);
    let pa = 0xa_1234_5678_0000u64;
    let iova = 0xf_0000_0000_0000u64;
    assert_eq!(pt.map(iova, pa, 1 << 16, 3, RW), Ok(3 << 16));
    let d = leaf(&pt, iova);
    assert_eq!((d >> 12) & 0xf, 0xa);
    assert_eq!(d & 0x0000_ffff_ffff_0000, pa & 0x0000_ffff_ffff_ffff);
    assert_eq!(pt.translate(iova + 0x1_0042), Some(pa + 0x1_0042));
    assert_agree(&pt, iova + 0x2_0000);
    // A 4T block at the top of the 52-bit space.
    let top = (1u64 << 52) - (1 << 42);
    assert_eq!(pt.map(top, top, 1 << 42, 1, RW), Ok(1 << 42));
    assert_eq!(pt.walk(top).steps().len(), 1, "a level-1 block");
    assert_agree(&pt, top + 12345678);
}

#[test]
fn stage2_concatenated_start_tables_are_walked_by_the_device() {
    for (granule, ias, concat) in [
        (Granule::K16, 40, 16),
        (Granule::K4, 40, 2),
        (Granule::K4, 42, 8),
    ] {
        let mem = memory(false, 4 << 20);
        let cfg = Config::stage2(granule, ias, ias).with_coherency(WalkCoherency::NonCoherent);
        let pt = table(cfg, &mem);
        assert_eq!(pt.geometry().concat, concat);
        let page = 1u64 << granule.shift();
        // One page in every concatenated table, and the very last one.
        let span = 1u64 << (ias - concat.trailing_zeros());
        for t in 0..u64::from(concat) {
            let iova = t * span + 5 * page;
            assert_eq!(pt.map(iova, iova, page, 1, RW), Ok(page as usize));
            assert_agree(&pt, iova + 1);
        }
        let last = (1u64 << ias) - page;
        assert_eq!(pt.map(last, last, page, 1, RW), Ok(page as usize));
        assert_agree(&pt, last + 7);
        let Regs::Stage2(r) = pt.regs() else { panic!() };
        assert_eq!(r.vttbr, pt.root_phys());
        assert_eq!(
            r.vttbr % (concat as u64 * page),
            0,
            "concatenated tables are aligned to their size"
        );
    }
}

#[test]
fn ttbr1_tables_take_sign_extended_iovas() {
    let mem = memory(true, 1 << 20);
    let cfg = Config::stage1(Granule::K4, 39, 48).with_quirks(Quirks::TTBR1);
    let pt = table(cfg, &mem);
    let iova = 0xffff_ff80_0020_0000u64;
    assert_eq!(pt.map(iova, 0x9000_0000, K4, 2, RW), Ok(8192));
    assert_eq!(pt.translate(iova + 0x1010), Some(0x9000_1010));
    let p = pt.map(0x20_0000, 0, K4, 1, RW).unwrap_err();
    assert_eq!(p.error, Error::IovaOutOfRange(0x20_0000));
    let mut g = Gather::new();
    assert_eq!(pt.unmap(iova, K4, 2, &mut g), Ok(8192));
    assert_eq!(g.start(), iova);
    let Regs::Stage1(r) = pt.regs() else { panic!() };
    assert!(r.ttbr1 && !r.epd1);
}

#[test]
fn register_values_for_the_driver() {
    let mem = memory(false, 1 << 20);
    let pt = table(Config::stage1(Granule::K16, 47, 44), &mem);
    let Regs::Stage1(r) = pt.regs() else { panic!() };
    assert_eq!((r.t0sz, r.tg0, r.ips), (17, 2, 4));
    assert_eq!(
        (r.irgn0, r.orgn0, r.sh0),
        (1, 1, 3),
        "coherent: WBWA, inner shareable"
    );
    assert!(r.epd1 && !r.ttbr1 && !r.hd);
    assert_eq!(r.mair, layout::mair());
    assert_eq!(r.ttbr, pt.root_phys());
    let cfg = Config::stage2(Granule::K64, 48, 48).with_coherency(WalkCoherency::NonCoherent);
    let pt = table(cfg, &mem);
    assert_eq!(pt.config().stage, Stage::Stage2);
    let Regs::Stage2(r) = pt.regs() else { panic!() };
    assert_eq!((r.t0sz, r.tg0, r.ps, r.sl0), (16, 1, 5, 2));
    assert_eq!(
        (r.irgn0, r.orgn0, r.sh0),
        (0, 0, 2),
        "non-coherent: NC, outer shareable"
    );
    let cfg = Config::stage1(Granule::K4, 48, 48)
        .with_coherency(WalkCoherency::NonCoherent)
        .with_quirks(Quirks::OUTER_WBWA | Quirks::HD);
    let Regs::Stage1(r) = table(cfg, &mem).regs() else {
        panic!()
    };
    assert_eq!((r.irgn0, r.orgn0), (0, 1));
    assert!(r.hd);
}

#[test]
fn map_range_uses_the_largest_aligned_pages() {
    let mem = memory(true, 2 << 20);
    let pt = table(s1_4k(WalkCoherency::Coherent), &mem);
    // 4K .. 1G+2M+4K: 4K pages up to 2M, 2M blocks up to 1G, one 1G block,
    // one 2M block, one 4K page.
    let iova = 0x4000_0000 - 0x20_0000 + K4;
    let len = 0x20_0000 - K4 + (1 << 30) + M2 + K4;
    assert_eq!(pt.map_range(iova, iova, len, RW), Ok(len as usize));
    assert_eq!(pt.walk(0x4000_0000).steps().len(), 2, "1G block at level 1");
    assert_eq!(pt.walk(0x8000_0000).steps().len(), 3, "2M block at level 2");
    assert_eq!(pt.walk(iova).steps().len(), 4, "4K page");
    for off in [0, K4, M2, 1 << 30, len - 1] {
        assert_eq!(pt.translate(iova + off), Some(iova + off));
    }
    // Misaligned iova and paddr (not congruent mod 2M): 4K pages only.
    assert_eq!(
        pt.map_range(0x1_0000_0000, 0x1000, 4 * M2, RW),
        Ok(4 * M2 as usize)
    );
    assert_eq!(pt.walk(0x1_0000_0000).steps().len(), 4);
    let mut g = Gather::new();
    assert_eq!(pt.unmap_range(iova, len, &mut g), Ok(len as usize));
    assert_eq!(pt.translate(0x4000_0000), None);
}

#[test]
fn table_memory_is_exactly_the_tables_needed() {
    use io_pgtable::env::{Counting, HostEnv};
    let env = Counting::new(HostEnv::default());
    let mut pt = PageTable::new(Config::stage1(Granule::K4, 48, 48), &env).unwrap();
    assert_eq!(env.stats().bytes_live, 4096, "the start table");
    let gb = 1u64 << 30;
    // 1G as 4K pages: one level-1, one level-2 and 512 level-3 tables.
    assert_eq!(pt.map(gb, gb, K4, 262_144, RW), Ok(1 << 30));
    assert_eq!(env.stats().bytes_live, (1 + 1 + 1 + 512) * 4096);
    // 1G as 2M blocks elsewhere: one more level-2 table only.
    assert_eq!(pt.map(2 * gb, 0, M2, 512, RW), Ok(1 << 30));
    assert_eq!(env.stats().bytes_live, (1 + 1 + 2 + 512) * 4096);
    // Unmapping at 1G retires the level-2 table and its 512 children.
    let mut g = Gather::new();
    assert_eq!(pt.unmap(gb, gb, 1, &mut g), Ok(1 << 30));
    assert_eq!(pt.reclaim(), 513);
    assert_eq!(env.stats().bytes_live, 3 * 4096);
    drop(pt);
    let s = env.stats();
    assert_eq!((s.bytes_live, s.allocs), (0, s.frees));
}

#[test]
fn unmap_cleans_before_the_tlb_hears_of_it_and_sync_stops_at_the_first_error() {
    let mem: Arc<SimMemory> = memory(false, 1 << 20);
    let pt = PageTable::new(s1_4k(WalkCoherency::Deferred), SkipEnv::new(&mem)).unwrap();
    // Three level-3 tables' worth of deferred leaves.
    assert_eq!(pt.map(0, 0, K4, 1536, RW), Ok(1536 * 4096));
    pt.env().fail.store(true, Ordering::Relaxed);
    let before = pt.env().calls.load(Ordering::Relaxed);
    assert_eq!(
        pt.sync_map(0, 1536 * K4),
        Err(Error::Cache(CacheError {
            phys: pt.walk(0).steps()[3].desc_phys,
            len: 4096
        }))
    );
    assert_eq!(
        pt.env().calls.load(Ordering::Relaxed),
        before + 1,
        "stopped at the first error"
    );
    pt.env().fail.store(false, Ordering::Relaxed);
    pt.sync_map(0, 1536 * K4).unwrap();
    assert_eq!(mem.all_dirty_lines(), 0);
    // Every unmapped run is clean in memory before it reaches the gather.
    let mut g = Gather::new();
    assert_eq!(pt.unmap(4 * K4, K4, 1000, &mut g), Ok(1000 * 4096));
    let seen = pt.env().dirty_at_add.lock().unwrap().clone();
    assert_eq!(seen, vec![0, 0], "two runs, one per level-3 table");
    assert_eq!(dev_walk(&mem, &pt.regs(), 5 * K4), Ok(None));
}
