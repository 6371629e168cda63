//! Per-CPU caches of freed IOVAs (Linux's "rcache"): two magazines per CPU
//! and size order, and a shared depot of full magazines.
//!
//! A CPU allocates from its loaded magazine, swaps in its previous one when
//! that is empty, and only then takes a full magazine from the depot; frees
//! go the other way. The depot keeps at most a bounded number of full
//! magazines; beyond that the oldest is emptied into the tree. Empty
//! magazines are recycled through the depot, so the steady state
//! allocates nothing.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use spin::mutex::SpinMutex;

/// Entries per magazine (as Linux: a 1 KiB magazine with its count).
pub const MAG_SIZE: usize = 127;
/// Cached size orders: 1, 2, 4, ... 32 pages.
pub const ORDERS: usize = 6;

/// A stack of cached page frame numbers of one order.
pub struct Magazine {
    len: usize,
    pfns: [u64; MAG_SIZE],
}

impl Magazine {
    fn new() -> Box<Self> {
        Box::new(Self {
            len: 0,
            pfns: [0; MAG_SIZE],
        })
    }

    fn is_full(&self) -> bool {
        self.len == MAG_SIZE
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, pfn: u64) {
        self.pfns[self.len] = pfn;
        self.len += 1;
    }

    /// Pops an entry whose range ends at or below `limit` (the top one when
    /// it qualifies, else the first that does, swapped out).
    #[inline]
    fn pop(&mut self, pages: u64, limit: u64) -> Option<u64> {
        let fits = |pfn: u64| pfn + pages <= limit;
        let top = self.len.checked_sub(1)?;
        if !fits(self.pfns[top]) {
            let i = self.pfns[..top].iter().position(|&p| fits(p))?;
            self.pfns.swap(i, top);
        }
        self.len = top;
        Some(self.pfns[top])
    }

    fn drain(&mut self) -> impl Iterator<Item = u64> + '_ {
        let n = core::mem::take(&mut self.len);
        self.pfns[..n].iter().copied()
    }
}

struct CpuMags {
    loaded: Box<Magazine>,
    prev: Box<Magazine>,
}

/// One CPU's magazines of every order, on its own cache lines.
#[repr(align(128))]
struct CpuCache {
    orders: SpinMutex<[CpuMags; ORDERS]>,
}

// Magazines are boxed so moving one between a CPU and the depot is a
// pointer swap, not a 1 KiB copy.
#[allow(clippy::vec_box)]
#[derive(Default)]
struct Depot {
    full: VecDeque<Box<Magazine>>,
    empty: Vec<Box<Magazine>>,
}

/// The caches of one IOVA space.
pub struct RangeCache {
    cpus: Box<[CpuCache]>,
    depots: [SpinMutex<Depot>; ORDERS],
    depot_max: usize,
}

impl RangeCache {
    /// Returns caches for `ncpus` CPUs whose depots keep at most
    /// `depot_max` full magazines per order.
    pub fn new(ncpus: usize, depot_max: usize) -> Self {
        let cpus = (0..ncpus.max(1))
            .map(|_| CpuCache {
                orders: SpinMutex::new(core::array::from_fn(|_| CpuMags {
                    loaded: Magazine::new(),
                    prev: Magazine::new(),
                })),
            })
            .collect();
        Self {
            cpus,
            depots: core::array::from_fn(|_| SpinMutex::new(Depot::default())),
            depot_max: depot_max.max(1),
        }
    }

    fn cpu(&self, cpu: usize) -> &CpuCache {
        // A division costs more than the rest of the fast path: only pay
        // it for out-of-range ids.
        let n = self.cpus.len();
        &self.cpus[if cpu < n { cpu } else { cpu % n }]
    }

    /// Returns a cached frame of `order` ending at or below `limit`.
    #[inline]
    pub fn get(&self, cpu: usize, order: usize, limit: u64) -> Option<u64> {
        let pages = 1u64 << order;
        let mut mags = self.cpu(cpu).orders.lock();
        let m = &mut mags[order];
        if let Some(p) = m.loaded.pop(pages, limit) {
            return Some(p);
        }
        if let Some(p) = m.prev.pop(pages, limit) {
            core::mem::swap(&mut m.loaded, &mut m.prev);
            return Some(p);
        }
        // Both local magazines are empty (or hold nothing below `limit`):
        // trade the loaded one for a full one from the depot.
        let mut depot = self.depots[order].lock();
        let full = depot.full.pop_back()?;
        let old = core::mem::replace(&mut m.loaded, full);
        if old.is_empty() {
            depot.empty.push(old);
        } else {
            depot.full.push_front(old);
        }
        drop(depot);
        m.loaded.pop(pages, limit)
    }

    /// Caches `pfn` of `order`. Returns frames the caller must give back
    /// to the tree: none normally, a whole magazine when the depot
    /// overflowed (`spill` receives them).
    #[inline]
    pub fn put(&self, cpu: usize, order: usize, pfn: u64, spill: &mut dyn FnMut(u64)) {
        let mut mags = self.cpu(cpu).orders.lock();
        let m = &mut mags[order];
        if !m.loaded.is_full() {
            m.loaded.push(pfn);
            return;
        }
        if !m.prev.is_full() {
            core::mem::swap(&mut m.loaded, &mut m.prev);
            m.loaded.push(pfn);
            return;
        }
        let mut depot = self.depots[order].lock();
        let fresh = depot.empty.pop().unwrap_or_else(Magazine::new);
        let full = core::mem::replace(&mut m.loaded, fresh);
        depot.full.push_back(full);
        let mut trimmed = None;
        if depot.full.len() > self.depot_max {
            trimmed = depot.full.pop_front();
        }
        drop(depot);
        m.loaded.push(pfn);
        drop(mags);
        if let Some(mut t) = trimmed {
            t.drain().for_each(&mut *spill);
            self.depots[order].lock().empty.push(t);
        }
    }

    /// Empties every cache into `spill` (Linux does this before a retry
    /// when the tree is exhausted).
    pub fn flush(&self, spill: &mut dyn FnMut(u64, usize)) {
        for c in self.cpus.iter() {
            let mut mags = c.orders.lock();
            for (order, m) in mags.iter_mut().enumerate() {
                m.loaded.drain().for_each(|p| spill(p, order));
                m.prev.drain().for_each(|p| spill(p, order));
            }
        }
        for (order, d) in self.depots.iter().enumerate() {
            let mut d = d.lock();
            while let Some(mut mag) = d.full.pop_front() {
                mag.drain().for_each(|p| spill(p, order));
                d.empty.push(mag);
            }
        }
    }

    /// Returns the number of cached frames of every order (an entry of
    /// order `o` is `1 << o` frames).
    pub fn cached(&self) -> usize {
        let local: usize = self
            .cpus
            .iter()
            .map(|c| {
                c.orders
                    .lock()
                    .iter()
                    .enumerate()
                    .map(|(o, m)| (m.loaded.len + m.prev.len) << o)
                    .sum::<usize>()
            })
            .sum();
        let depot: usize = self
            .depots
            .iter()
            .enumerate()
            .map(|(o, d)| d.lock().full.iter().map(|m| m.len << o).sum::<usize>())
            .sum();
        local + depot
    }
}
