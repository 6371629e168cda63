//! Model-checked concurrency: table install, retire and reclaim, and the
//! links-in-flight protocol of non-coherent walkers, run on loom's atomics
//! (`io_pgtable`'s `sync` module) so that loom explores the interleavings
//! and weak-memory outcomes of the real table code.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p io-pgtable --test loom --profile loom   # or --release
//! ```
//!
//! Every model runs with a preemption bound ([`builder`]): loom explores
//! every interleaving with at most that many preemptions (and every value
//! each load may read), not the unbounded state space.
//!
//! | model | threads | bound |
//! |---|---|---|
//! | install race at two levels, disjoint pages | 2 | 3 |
//! | overlapping maps, same missing tables | 2 | 2 |
//! | whole-table unmap racing a disjoint map, reclaim | 2 | 3 |
//! | whole-table unmap racing a walker and an overlapping map | 2 | 2 |
//! | two whole-table unmaps and an install | 3 | 2 |
//! | links in flight, non-coherent walker | 2 | 2 |
//! | links in flight, deferred walker | 2 | 1 |
//! | links in flight, non-coherent, one shared missing table | 3 | 1 |
//!
//! These bounds keep the run of the whole file near half a minute on two
//! cores. The two-thread models also pass with `LOOM_MAX_PREEMPTIONS=3`
//! (about five minutes: 23384 executions of the non-coherent links model,
//! 118016 of the deferred one).
//!
//! [`LoomEnv`] is the environment: table memory is an array of loom
//! atomics, one per 8-byte entry, behind a made-up physical address space
//! laid out in 8-byte entries (see the `sync` module for why). It counts
//! allocations and frees, poisons freed blocks and panics on any access to
//! one, and for non-coherent walkers keeps a *device view* of memory that
//! only cache cleans update and that the device reads through
//! happens-before (see [`LoomEnv::clean`]).

#![cfg(loom)]

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::sync::{Mutex, MutexGuard};

use io_pgtable::env::{
    AllocError, CacheError, CacheMaintenance, Gather, MIN_TABLE_SIZE, TableBlock, TableMemory,
    TlbError, TlbHooks, barrier,
};
use io_pgtable::{Config, Error, Granule, PageTable, Partial, Prot, WalkCoherency};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const PA: u64 = 0x40_0000_0000;

/// Block `i` of the environment lives at physical `(i + 1) * STRIDE`.
const STRIDE: u64 = 1 << 16;
/// What a freed block holds: a table descriptor pointing nowhere, so a
/// walk through freed memory hits [`LoomEnv::phys_to_cpu`]'s check, and a
/// leaf read from it translates to an address no test maps.
const POISON: u64 = 0x0000_dead_0000_0003;
/// What the device sees of a new block until it is cleaned (stale memory
/// below the cache): a walk through an uncleaned table goes nowhere.
const STALE: u64 = 0x0000_beef_0000_0003;
/// A device-view entry no partial clean wrote: the device sees what the
/// block held when it was cleaned whole (zero), or [`STALE`].
const UNSET: u64 = u64::MAX;
/// Descriptor output address bits 47:12.
const ADDR: u64 = 0x0000_ffff_ffff_f000;

/// Stage 1, 4K granule, 32-bit IOVAs: a 4-entry level-1 root, then 512-entry
/// level-2 and level-3 tables.
fn config(coherency: WalkCoherency) -> Config {
    Config::stage1(Granule::K4, 32, 40).with_coherency(coherency)
}

/// A loom model builder bounded to `preemptions` preemptions per execution
/// (`LOOM_MAX_PREEMPTIONS` overrides it, for deeper runs by hand).
/// `max_branches` is raised from loom's default of 1000 because every
/// atomic operation is a branch and retiring a table alone swaps 512
/// entries.
fn builder(preemptions: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = b.preemption_bound.or(Some(preemptions));
    b.max_branches = 200_000;
    b
}

struct Block {
    size: usize,
    /// The CPU view: one loom atomic per 8-byte entry.
    cpu: Box<[AtomicU64]>,
    /// The device view (non-coherent walkers only): what partial cleans
    /// wrote back, one loom atomic per entry ([`UNSET`] until then).
    device: Box<[AtomicU64]>,
    /// Whether the block was cleaned whole while the table code had not
    /// touched it yet (so its CPU view was all zero): the device view of
    /// every [`UNSET`] entry then reads zero. One loom atomic instead of a
    /// store per entry keeps the models small.
    cleaned_fresh: AtomicU64,
    /// Whether `phys_to_cpu` handed out a pointer into the block.
    touched: bool,
    freed: bool,
}

#[derive(Default)]
struct Books {
    blocks: Vec<Block>,
    allocs: usize,
    frees: usize,
    /// `flush_walk` calls: (iova, size).
    flushes: Vec<(u64, u64)>,
    /// How many times each entry (by physical address) was cleaned.
    cleans: HashMap<u64, usize>,
}

/// The loom environment; clones share one memory.
///
/// Its bookkeeping sits behind a `std` mutex, invisible to loom: it adds no
/// synchronization to the model, and no loom operation runs while it is
/// held, so no loom thread switch can happen inside it.
#[derive(Clone)]
struct LoomEnv {
    books: std::sync::Arc<Mutex<Books>>,
    /// Whether blocks get a device view (costs a second loom atomic per
    /// entry, so only the non-coherent models have one).
    device_view: bool,
}

impl LoomEnv {
    fn new(device_view: bool) -> Self {
        Self {
            books: std::sync::Arc::new(Mutex::new(Books::default())),
            device_view,
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns (block index, entry index) of a physical address inside a
    /// live block; panics on anything else (a wild or freed address).
    fn locate(books: &Books, phys: u64) -> (usize, usize) {
        let i = (phys / STRIDE).checked_sub(1).map(|i| i as usize);
        let Some(b) = i.and_then(|i| books.blocks.get(i)) else {
            panic!("access to {phys:#x}: not table memory");
        };
        let i = i.unwrap();
        assert!(!b.freed, "use after free: {phys:#x} (block {i})");
        let off = (phys % STRIDE) as usize;
        assert!(off % 8 == 0 && off < b.size, "{phys:#x} outside block {i}");
        (i, off / 8)
    }

    fn live(&self) -> usize {
        self.books().blocks.iter().filter(|b| !b.freed).count()
    }

    fn allocs_frees(&self) -> (usize, usize) {
        let b = self.books();
        (b.allocs, b.frees)
    }

    fn flushes(&self) -> Vec<(u64, u64)> {
        self.books().flushes.clone()
    }

    /// Returns how many times the entry at `phys` was cleaned.
    fn cleans_of(&self, phys: u64) -> usize {
        self.books().cleans.get(&phys).copied().unwrap_or(0)
    }

    /// Returns whether the block at `phys` was freed.
    fn is_freed(&self, phys: u64) -> bool {
        self.books().blocks[(phys / STRIDE - 1) as usize].freed
    }

    /// Panics unless every block was freed and still holds only the poison
    /// written at its free (no write after free).
    fn assert_all_freed_untouched(&self) {
        let books = self.books();
        for (i, b) in books.blocks.iter().enumerate() {
            assert!(b.freed, "block {i} leaked");
            let cpu: *const [AtomicU64] = &*b.cpu;
            // SAFETY: the block's memory lives as long as `books` (freed
            // blocks are kept, poisoned, until the environment drops).
            for e in unsafe { &*cpu } {
                assert_eq!(e.load(Ordering::Relaxed), POISON, "write after free");
            }
        }
    }

    /// Translates `iova` as the device would, through the device view of
    /// the tables from the root at `root`, reading it from the calling
    /// thread: the device sees a clean once the clean happens before the
    /// caller's read (for the test configuration only: levels 1..=3, 4K
    /// granule). A walk through a stale entry goes nowhere (panics) or
    /// translates to the stale address.
    fn device_translate(&self, root: u64, iova: u64) -> Option<u64> {
        let mut table = root;
        for (level, shift, mask) in [(1, 30, 3), (2, 21, 511), (3, 12, 511)] {
            let (dev, fresh): (*const AtomicU64, *const AtomicU64) = {
                let books = self.books();
                let (b, e) = Self::locate(&books, table + 8 * ((iova >> shift) & mask));
                (&books.blocks[b].device[e], &books.blocks[b].cleaned_fresh)
            };
            // SAFETY: a live block (checked by `locate`); blocks are never
            // dropped before the environment.
            let (dev, fresh) = unsafe { (&*dev, &*fresh) };
            let d = match dev.load(Ordering::Relaxed) {
                UNSET if fresh.load(Ordering::Relaxed) == 1 => 0,
                UNSET => STALE,
                d => d,
            };
            if level < 3 && d & 3 == 3 {
                table = d & ADDR;
            } else if d & 3 == if level == 3 { 3 } else { 1 } {
                return Some((d & ADDR) | (iova & ((1 << shift) - 1)));
            } else {
                return None;
            }
        }
        None
    }
}

// SAFETY: every block is `size` entries of fresh loom atomics (zero),
// aligned to `size` in the physical space (blocks are `STRIDE`-aligned,
// sizes at most `STRIDE`), exclusively the caller's until freed, and only
// accessed atomically. `phys_to_cpu(phys + 8 * i)` is the `i`-th atomic of
// the block (the layout `io_pgtable`'s sync module asks for under loom).
// Freed blocks are never dropped before the environment, so a stale
// pointer still points at valid (poisoned) memory.
unsafe impl TableMemory for LoomEnv {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        if size < MIN_TABLE_SIZE || !size.is_power_of_two() || size as u64 > STRIDE {
            return Err(AllocError::BadSize { size });
        }
        let cpu: Box<[AtomicU64]> = (0..size / 8).map(|_| AtomicU64::new(0)).collect();
        let stale = if self.device_view { size / 8 } else { 0 };
        let device: Box<[AtomicU64]> = (0..stale).map(|_| AtomicU64::new(UNSET)).collect();
        let ptr = NonNull::from(&cpu[0]).cast::<u8>();
        let mut books = self.books();
        books.blocks.push(Block {
            size,
            cpu,
            device,
            cleaned_fresh: AtomicU64::new(0),
            touched: false,
            freed: false,
        });
        books.allocs += 1;
        let phys = books.blocks.len() as u64 * STRIDE;
        Ok(TableBlock { cpu: ptr, phys })
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        let cpu: *const [AtomicU64] = {
            let mut books = self.books();
            let (i, e) = Self::locate(&books, block.phys);
            assert_eq!(e, 0, "free of {:#x}: not a block start", block.phys);
            let b = &mut books.blocks[i];
            assert_eq!(
                b.size, size,
                "free of {:#x} with the wrong size",
                block.phys
            );
            assert_eq!(block.cpu, NonNull::from(&b.cpu[0]).cast::<u8>());
            b.freed = true;
            books.frees += 1;
            &*books.blocks[i].cpu
        };
        // SAFETY: freed blocks are kept until the environment drops.
        for e in unsafe { &*cpu } {
            e.store(POISON, Ordering::Relaxed);
        }
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        let mut books = self.books();
        let (i, e) = Self::locate(&books, phys);
        books.blocks[i].touched = true;
        NonNull::from(&books.blocks[i].cpu[e]).cast::<u8>()
    }
}

impl CacheMaintenance for LoomEnv {
    /// Copies every entry of the range from the CPU view to the device
    /// view, as the cleaning thread reads it.
    ///
    /// The device view is loom atomics, and the device reads it from the
    /// thread that hands it the IOVA ([`LoomEnv::device_translate`]): it
    /// sees a clean only if the clean *happens before* that read. That is
    /// stricter than the hardware, where a completed `DC CVAC; DSB` is
    /// visible in real time, and is what the table code's memory-model
    /// argument claims (a reader that sees the in-flight counter at zero
    /// has synchronized with the installer's decrement after its clean).
    ///
    /// A clean writes back the line as it is in the coherent cache; the
    /// model reads each entry with a load, which may return a value older
    /// than a racer's store the cleaner never observed. The models that
    /// clean only map: every entry goes from zero to one final value once.
    /// So an entry is only written back where its value is non-zero (a
    /// zero read may be stale, and writing it back could hide a racer's
    /// clean); a whole block cleaned before the table code touched it is
    /// all zero, and its stale device memory becomes zero at once. An
    /// entry seen with two different non-zero values is outside the model
    /// and panics. (A read-modify-write would read the latest value, but
    /// loom 0.7 can order a racing store between an RMW's read and its
    /// write, which makes such a model fail spuriously.)
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        if !self.device_view {
            return Ok(());
        }
        let n = len.div_ceil(8);
        let (fresh, entries) = {
            let mut books = self.books();
            let (b, e) = Self::locate(&books, phys);
            let block = &books.blocks[b];
            assert_eq!(cpu, NonNull::from(&block.cpu[e]).cast::<u8>());
            assert!(e + n <= block.size / 8, "clean past {phys:#x}");
            if e == 0 && n == block.size / 8 && !block.touched {
                (Some(&block.cleaned_fresh as *const AtomicU64), Vec::new())
            } else {
                let entries: Vec<(*const AtomicU64, *const AtomicU64)> = (e..e + n)
                    .map(|k| (&block.cpu[k] as *const _, &block.device[k] as *const _))
                    .collect();
                for k in 0..n as u64 {
                    *books.cleans.entry(phys + 8 * k).or_default() += 1;
                }
                (None, entries)
            }
        };
        if let Some(fresh) = fresh {
            // SAFETY: as below.
            unsafe { &*fresh }.store(1, Ordering::Relaxed);
        }
        for (cpu, dev) in entries {
            // SAFETY: a live block (checked above); blocks are never
            // dropped before the environment.
            let (cpu, dev) = unsafe { (&*cpu, &*dev) };
            let v = cpu.load(Ordering::Relaxed);
            if v != 0 {
                let old = dev.swap(v, Ordering::Relaxed);
                assert!(
                    old == UNSET || old == v,
                    "entry changed twice: {old:#x} -> {v:#x}"
                );
            }
        }
        Ok(())
    }

    fn device_write_barrier(&self) {
        barrier::device_write();
    }

    fn full_barrier(&self) {
        barrier::full();
    }
}

impl TlbHooks for LoomEnv {
    fn flush_walk(&self, iova: u64, size: u64, _granule: u64) -> Result<(), TlbError> {
        self.books().flushes.push((iova, size));
        Ok(())
    }

    fn sync_gather(&self, _gather: &Gather) -> Result<(), TlbError> {
        Ok(())
    }
}

type Table = PageTable<LoomEnv>;

fn new_table(coherency: WalkCoherency) -> (Arc<Table>, LoomEnv) {
    let env = LoomEnv::new(coherency != WalkCoherency::Coherent);
    let pt = PageTable::new(config(coherency), env.clone()).expect("table");
    (Arc::new(pt), env)
}

fn spawn<T: Send + 'static>(
    pt: &Arc<Table>,
    f: impl FnOnce(&Table) -> T + Send + 'static,
) -> loom::thread::JoinHandle<T> {
    let pt = pt.clone();
    loom::thread::spawn(move || f(&pt))
}

/// Takes the table back from the threads (they were joined).
fn unshare(pt: Arc<Table>) -> Table {
    Arc::try_unwrap(pt).unwrap_or_else(|_| panic!("a thread still holds the table"))
}

/// Returns the table descriptors walked to reach `iova`'s last level.
fn tables_of(pt: &Table, iova: u64) -> Vec<u64> {
    let w = pt.walk(iova);
    w.steps()
        .iter()
        .filter(|s| s.level < 3 && s.desc & 3 == 3)
        .map(|s| s.desc)
        .collect()
}

/// Drops the table, then checks the environment has nothing left.
fn drop_and_check(pt: Table, env: &LoomEnv) {
    drop(pt);
    let (allocs, frees) = env.allocs_frees();
    assert_eq!(allocs, frees, "allocations and frees differ");
    env.assert_all_freed_untouched();
}

/// Counts outcomes across the executions of one model.
#[derive(Default)]
struct Seen {
    executions: AtomicUsize,
    a: AtomicUsize,
    b: AtomicUsize,
}

impl Seen {
    fn count(&self, a: bool, b: bool) {
        self.executions.fetch_add(1, StdOrdering::Relaxed);
        self.a.fetch_add(a as usize, StdOrdering::Relaxed);
        self.b.fetch_add(b as usize, StdOrdering::Relaxed);
    }

    fn get(&self) -> (usize, usize, usize) {
        (
            self.executions.load(StdOrdering::Relaxed),
            self.a.load(StdOrdering::Relaxed),
            self.b.load(StdOrdering::Relaxed),
        )
    }
}

/// (1) Two threads map disjoint pages under the same missing level-2 and
/// level-3 tables: both race to install each. Exactly one table is linked
/// at each level, both pages are mapped through it, and every loser's
/// table is freed (and never touched after).
#[test]
fn install_race_links_one_table_per_level_and_frees_the_losers() {
    let seen = std::sync::Arc::new(Seen::default());
    let s = seen.clone();
    builder(3).check(move || {
        let (pt, env) = new_table(WalkCoherency::Coherent);
        let t: Vec<_> = (0..2)
            .map(|i| spawn(&pt, move |pt| pt.map(i * K4, PA + i * K4, K4, 1, RW)))
            .collect();
        for h in t {
            assert_eq!(h.join().unwrap(), Ok(K4 as usize));
        }
        let pt = unshare(pt);
        assert_eq!(pt.translate(0x123), Some(PA + 0x123));
        assert_eq!(pt.translate(K4 + 0x123), Some(PA + K4 + 0x123));
        let tables = tables_of(&pt, 0);
        assert_eq!(tables.len(), 2);
        assert_eq!(
            tables,
            tables_of(&pt, K4),
            "both pages under the same tables"
        );
        // Root, one level-2 and one level-3 table; every other allocation
        // was a loser's table, freed.
        assert_eq!(env.live(), 3);
        let (allocs, frees) = env.allocs_frees();
        assert_eq!(allocs - frees, 3);
        assert!(frees <= 2, "at most one loser per level");
        s.count(frees > 0, frees == 2);
        drop_and_check(pt, &env);
    });
    let (runs, lost_some, lost_both) = seen.get();
    eprintln!("install race: {runs} executions, {lost_some} with a loser, {lost_both} with two");
    assert!(lost_some > 0 && lost_some < runs, "both outcomes explored");
    assert!(lost_both > 0, "a loser at each level explored");
}

/// Returns the pages `[first, first + n)` a map result claims (all of them
/// for `Ok`, the `done` prefix for `Exists`).
fn claimed(r: Result<usize, Partial>, first: u64, n: u64) -> Vec<u64> {
    let done = match r {
        Ok(bytes) => bytes as u64,
        Err(p) => {
            assert!(matches!(p.error, Error::Exists(_)), "{p:?}");
            p.done as u64
        }
    };
    assert!(done <= n * K4 && done % K4 == 0);
    (first..first + done / K4).collect()
}

/// (2) Overlapping maps: thread A maps pages 0..2 to `PA`, thread B pages
/// 1..3 to `PA + 1M`, racing for the same missing tables and for page 1.
/// The tree stays one table per level, every page translates to the map
/// of a thread that claimed it (an unclaimed page translates to nothing),
/// no table is freed twice or leaked. Overlapping maps are unspecified:
/// both threads may claim page 1 (the check and the store of a leaf are
/// separate), and the model records whether that happened.
#[test]
fn overlapping_maps_keep_one_consistent_tree() {
    let seen = std::sync::Arc::new(Seen::default());
    let s = seen.clone();
    let pb = PA + (1 << 20);
    builder(2).check(move || {
        let (pt, env) = new_table(WalkCoherency::Coherent);
        let a = spawn(&pt, |pt| pt.map(0, PA, K4, 2, RW));
        let b = spawn(&pt, move |pt| pt.map(K4, pb, K4, 2, RW));
        let a = claimed(a.join().unwrap(), 0, 2);
        let b = claimed(b.join().unwrap(), 1, 2);
        let pt = unshare(pt);
        assert_eq!(a.first(), Some(&0), "page 0 is only A's");
        for page in 0..3u64 {
            let got = pt.translate(page * K4);
            let by_a = a.contains(&page).then_some(PA + page * K4);
            let by_b = b.contains(&page).then_some(pb + (page - 1) * K4);
            match got {
                None => assert!(by_a.is_none() && by_b.is_none(), "page {page} lost"),
                Some(p) => assert!(
                    Some(p) == by_a || Some(p) == by_b,
                    "page {page} -> {p:#x}: claimed by neither"
                ),
            }
        }
        assert_eq!(tables_of(&pt, 0), tables_of(&pt, 2 * K4));
        assert_eq!(env.live(), 3);
        s.count(a.contains(&1) && b.contains(&1), b.is_empty());
        drop_and_check(pt, &env);
    });
    let (runs, both, b_none) = seen.get();
    eprintln!(
        "overlapping maps: {runs} executions, {both} with page 1 claimed by both, {b_none} with B refused"
    );
    assert!(b_none > 0, "B refused at page 1 explored");
    assert!(both > 0, "both claiming page 1 explored");
}

/// Maps page 0 (tables L2 and L3 under it), then returns the level-3
/// table's physical address.
fn map_page0(pt: &Table) -> u64 {
    assert_eq!(pt.map(0, PA, K4, 1, RW), Ok(K4 as usize));
    tables_of(pt, 0)[1] & ADDR
}

/// Unmaps the level-3 table holding `iova` whole (one 2M page size over
/// it): it is disconnected, flushed and retired; no leaf is gathered.
fn unmap_table(pt: &Table, iova: u64) {
    let mut g = Gather::new();
    assert_eq!(pt.unmap(iova, M2, 1, &mut g), Ok(M2 as usize));
    assert!(g.is_empty(), "a removed table's leaves are not gathered");
}

/// (3) Unmap of a whole table (disconnect + retire) racing a map of
/// another 2M range that installs a new table beside it in the same
/// level-2 table, then `reclaim`: the retired table is freed exactly once,
/// only after reclaim, never touched after; the new mapping survives.
#[test]
fn retire_races_disjoint_map_then_reclaim_frees_once() {
    builder(3).check(|| {
        let (pt, env) = new_table(WalkCoherency::Coherent);
        let old = map_page0(&pt);
        let u = spawn(&pt, |pt| unmap_table(pt, 0));
        let m = spawn(&pt, |pt| pt.map(M2, PA + M2, K4, 1, RW));
        u.join().unwrap();
        assert_eq!(m.join().unwrap(), Ok(K4 as usize));
        let mut pt = unshare(pt);
        assert_eq!(env.flushes(), vec![(0, M2)]);
        assert_eq!(
            pt.translate(0),
            None,
            "the device cannot reach the old page"
        );
        assert_eq!(
            pt.walk(0).steps()[1].desc,
            0,
            "the level-2 entry is cleared"
        );
        assert_eq!(pt.translate(M2 + 8), Some(PA + M2 + 8));
        assert_eq!(pt.retired_tables(), 1);
        assert!(!env.is_freed(old), "retired, not freed, before reclaim");
        assert_eq!(pt.reclaim(), 1);
        assert!(env.is_freed(old));
        assert_eq!(pt.reclaim(), 0, "freed once");
        assert_eq!(env.live(), 3);
        drop_and_check(pt, &env);
    });
}

/// (3b) A walker and an overlapping (buggy) mapper racing the retirement
/// of the table they walk: the walker translates the old page or nothing
/// (the retired table reads as invalid entries, never freed memory), the
/// mapper's leaf lands in the live tree or in the retired table (lost, as
/// overlapping calls are unspecified) but nothing is freed twice, leaked,
/// or touched after its free.
#[test]
fn retire_races_walker_and_overlapping_map() {
    let seen = std::sync::Arc::new(Seen::default());
    let s = seen.clone();
    builder(2).check(move || {
        let (pt, env) = new_table(WalkCoherency::Coherent);
        let old = map_page0(&pt);
        let u = spawn(&pt, |pt| unmap_table(pt, 0));
        let w = spawn(&pt, |pt| {
            let seen = pt.translate(0x10);
            assert!(seen.is_none() || seen == Some(PA + 0x10), "{seen:x?}");
            (seen.is_some(), pt.map(K4, PA + K4, K4, 1, RW))
        });
        u.join().unwrap();
        let (walked_old, mapped) = w.join().unwrap();
        assert_eq!(mapped, Ok(K4 as usize));
        let mut pt = unshare(pt);
        assert_eq!(pt.translate(0), None);
        // The page is mapped only if the mapper installed a new table after
        // the disconnection; a leaf written into the old table is gone.
        let new = pt.translate(K4);
        assert!(new.is_none() || new == Some(PA + K4));
        assert_eq!(
            new.is_some(),
            env.live() == 4,
            "mapped only through a new table"
        );
        assert_eq!(pt.reclaim(), 1);
        assert!(env.is_freed(old));
        s.count(walked_old, new.is_some());
        drop_and_check(pt, &env);
    });
    let (runs, walked_old, mapped_new) = seen.get();
    eprintln!(
        "retire vs walker: {runs} executions, {walked_old} saw the old page, {mapped_new} remapped"
    );
    assert!(
        walked_old > 0 && walked_old < runs,
        "walker before and after explored"
    );
    assert!(
        mapped_new > 0 && mapped_new < runs,
        "leaf lost and remapped explored"
    );
}

/// (4) Three threads: two retire different tables at once (racing pushes
/// on the retired list) while a third installs a new table beside them.
/// Both retired tables are on the list once, reclaim frees each exactly
/// once. Preemption bound 2 keeps the three-thread state space within a
/// few seconds.
#[test]
fn three_threads_two_retires_and_an_install() {
    builder(2).check(|| {
        let (pt, env) = new_table(WalkCoherency::Coherent);
        let a = map_page0(&pt);
        assert_eq!(pt.map(M2, PA + M2, K4, 1, RW), Ok(K4 as usize));
        let b = tables_of(&pt, M2)[1] & ADDR;
        let u1 = spawn(&pt, |pt| unmap_table(pt, 0));
        let u2 = spawn(&pt, |pt| unmap_table(pt, M2));
        let m = spawn(&pt, |pt| pt.map(2 * M2, PA + 2 * M2, K4, 1, RW));
        u1.join().unwrap();
        u2.join().unwrap();
        assert_eq!(m.join().unwrap(), Ok(K4 as usize));
        let mut pt = unshare(pt);
        let mut flushes = env.flushes();
        flushes.sort();
        assert_eq!(flushes, vec![(0, M2), (M2, M2)]);
        assert_eq!((pt.translate(0), pt.translate(M2)), (None, None));
        assert_eq!(pt.translate(2 * M2), Some(PA + 2 * M2));
        assert_eq!(pt.retired_tables(), 2);
        assert_eq!(pt.reclaim(), 2);
        assert!(env.is_freed(a) && env.is_freed(b));
        assert_eq!(env.live(), 3);
        drop_and_check(pt, &env);
    });
}

/// (5) The links-in-flight protocol, on the real code with a non-coherent
/// walker: two threads map disjoint pages under the same missing tables.
/// When a mapper returns, the *device* (reading only what cleans wrote
/// back, new tables stale until cleaned) must translate its page: no
/// mapper returns while a link it descended through is uncleaned. Each
/// link is cleaned by its installer, and again only by a racer that may
/// have seen it uncleaned (at most twice here).
fn links_in_flight_model(
    coherency: WalkCoherency,
    threads: u64,
    stride: u64,
    preemptions: usize,
) -> (usize, usize, usize) {
    let seen = std::sync::Arc::new(Seen::default());
    let s = seen.clone();
    builder(preemptions).check(move || {
        let (pt, env) = new_table(coherency);
        let root = pt.root_phys();
        let t: Vec<_> = (0..threads)
            .map(|i| {
                let env = env.clone();
                spawn(&pt, move |pt| {
                    let (va, pa) = (i * stride, PA + i * stride);
                    assert_eq!(pt.map(va, pa, K4, 1, RW), Ok(K4 as usize));
                    pt.sync_map(va, K4).unwrap();
                    assert_eq!(
                        env.device_translate(root, va + 8),
                        Some(pa + 8),
                        "map returned with its page unreachable by the device"
                    );
                    // Nothing else is reachable: the new tables were
                    // cleaned (zero, not stale) before they were linked.
                    // (Holes only in tables this thread walked itself: a
                    // table it never synchronized with is not loom's to
                    // read from here.)
                    for hole in [(va & !(M2 - 1)) + 7 * K4, 3 * M2, 1 << 30] {
                        assert_eq!(env.device_translate(root, hole), None, "{hole:#x}");
                    }
                })
            })
            .collect();
        for h in t {
            h.join().unwrap();
        }
        let pt = unshare(pt);
        let l2 = tables_of(&pt, 0)[0] & ADDR;
        let links = [env.cleans_of(root), env.cleans_of(l2)];
        for n in links {
            assert!(
                (1..=threads as usize).contains(&n),
                "a link cleaned {n} times"
            );
        }
        s.count(links.contains(&2), links == [1, 1]);
        drop_and_check(pt, &env);
    });
    seen.get()
}

#[test]
fn noncoherent_mapper_never_returns_below_an_uncleaned_link() {
    let (runs, racer_cleaned, once) = links_in_flight_model(WalkCoherency::NonCoherent, 2, K4, 2);
    eprintln!(
        "links in flight: {runs} executions, {racer_cleaned} with a racer's clean, {once} with every link cleaned once"
    );
    assert!(
        racer_cleaned > 0,
        "a racer cleaning an in-flight link explored"
    );
    assert!(once > 0, "uncontended links cleaned exactly once");
}

#[test]
fn deferred_mapper_never_returns_below_an_uncleaned_link() {
    let (runs, racer_cleaned, once) = links_in_flight_model(WalkCoherency::Deferred, 2, K4, 1);
    eprintln!(
        "links in flight (deferred): {runs} executions, {racer_cleaned} with a racer's clean, {once} once"
    );
    assert!(racer_cleaned > 0 && once > 0);
}

/// (5c) The links-in-flight protocol with three mappers racing for the
/// same missing tables (preemption bound 1: three threads multiply the
/// state space).
#[test]
fn three_noncoherent_mappers_never_return_below_an_uncleaned_link() {
    let (runs, racer_cleaned, _) = links_in_flight_model(WalkCoherency::NonCoherent, 3, M2, 1);
    eprintln!(
        "links in flight, 3 threads: {runs} executions, {racer_cleaned} with a racer's clean"
    );
    assert!(
        racer_cleaned > 0,
        "a racer cleaning an in-flight link explored"
    );
}
