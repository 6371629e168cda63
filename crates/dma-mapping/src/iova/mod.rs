//! The IOVA allocator: Linux's design (power-of-two sizes below 32 pages,
//! per-CPU magazines for orders 0..5 with a depot, a top-down size-aligned
//! tree behind them).

mod magazine;
mod tree;

pub use magazine::{MAG_SIZE, ORDERS};
pub use tree::{IovaTree, TreeError};

use spin::mutex::SpinMutex;

use magazine::RangeCache;

/// Sizes below this many pages are rounded up to a power of two, so freed
/// ranges of one order fit any later request of that order.
pub const ROUND_BELOW: u64 = 32;

/// How an [`IovaAllocator`] is set up.
#[derive(Clone, Copy, Debug)]
pub struct IovaConfig {
    /// Log2 of the granule (the page-frame size).
    pub shift: u32,
    /// First allocatable frame (frame 0 stays reserved so a DMA address of
    /// 0 never maps).
    pub start_pfn: u64,
    /// One past the last allocatable frame.
    pub end_pfn: u64,
    /// CPUs of the per-CPU caches; 0 disables the caches (tree only).
    pub ncpus: usize,
    /// Full magazines the depot keeps per order before trimming.
    pub depot_max: usize,
}

impl IovaConfig {
    /// Returns the configuration of a space of `bits` address bits with
    /// granule `1 << shift`, caches for `ncpus` CPUs and a depot trimmed to
    /// twice the CPU count (at least 8 magazines).
    pub fn new(shift: u32, bits: u32, ncpus: usize) -> Self {
        // An impossible geometry (bits <= shift) gives an empty space.
        let span = bits.saturating_sub(shift);
        let end_pfn = if span >= 64 { u64::MAX } else { 1u64 << span };
        Self {
            shift,
            start_pfn: 1,
            end_pfn,
            ncpus,
            depot_max: ncpus.saturating_mul(2).max(8),
        }
    }
}

/// Returns the frame count an allocation of `pages` really takes.
pub fn rounded_pages(pages: u64) -> u64 {
    if pages < ROUND_BELOW {
        pages.next_power_of_two()
    } else {
        pages
    }
}

fn cache_order(pages: u64) -> Option<usize> {
    let order = pages.trailing_zeros() as usize;
    (pages.is_power_of_two() && order < ORDERS).then_some(order)
}

/// An IOVA space: hands out and takes back runs of page frames.
pub struct IovaAllocator {
    cfg: IovaConfig,
    tree: SpinMutex<IovaTree>,
    cache: Option<RangeCache>,
}

impl IovaAllocator {
    /// Returns an allocator over `cfg`'s space.
    pub fn new(cfg: IovaConfig) -> Self {
        Self {
            tree: SpinMutex::new(IovaTree::new(cfg.start_pfn, cfg.end_pfn)),
            cache: (cfg.ncpus > 0).then(|| RangeCache::new(cfg.ncpus, cfg.depot_max)),
            cfg,
        }
    }

    /// Returns the configuration.
    pub fn config(&self) -> &IovaConfig {
        &self.cfg
    }

    /// Returns the first frame of a free run of `pages` frames (rounded as
    /// [`rounded_pages`] says, size-aligned) ending at or below frame
    /// `limit`, from CPU `cpu`'s cache when possible.
    #[inline]
    pub fn alloc(&self, pages: u64, limit: u64, cpu: usize) -> Option<u64> {
        if pages == 0 {
            return None;
        }
        let pages = rounded_pages(pages);
        let order = cache_order(pages);
        if let (Some(c), Some(o)) = (&self.cache, order) {
            if let Some(p) = c.get(cpu, o, limit) {
                return Some(p);
            }
        }
        let align = pages.checked_next_power_of_two()?;
        if let Some(p) = self.tree.lock().alloc(pages, align, limit) {
            return Some(p);
        }
        // Cached frames may be what is missing: give them all back, retry.
        let c = self.cache.as_ref()?;
        self.flush_caches_of(c);
        self.tree.lock().alloc(pages, align, limit)
    }

    fn flush_caches_of(&self, c: &RangeCache) {
        let mut tree = self.tree.lock();
        c.flush(&mut |pfn, order| {
            // Frames in a cache are allocated in the tree by construction.
            let _ = tree.free(pfn, 1 << order);
        });
    }

    /// Gives back the run [`IovaAllocator::alloc`] returned for `pages`.
    ///
    /// # Errors
    ///
    /// [`TreeError::NotAllocated`] when the tree path detects a double or
    /// foreign free (the cached path cannot check; DMA debugging does).
    #[inline]
    pub fn free(&self, pfn: u64, pages: u64, cpu: usize) -> Result<(), TreeError> {
        let pages = rounded_pages(pages);
        if let (Some(c), Some(o)) = (&self.cache, cache_order(pages)) {
            if pfn < self.cfg.start_pfn || pfn.saturating_add(pages) > self.cfg.end_pfn {
                return Err(TreeError::NotAllocated { pfn, pages });
            }
            c.put(cpu, o, pfn, &mut |spilled| {
                let _ = self.tree.lock().free(spilled, pages);
            });
            return Ok(());
        }
        self.tree.lock().free(pfn, pages)
    }

    /// Empties the per-CPU caches and the depot into the tree.
    pub fn flush_caches(&self) {
        if let Some(c) = &self.cache {
            self.flush_caches_of(c);
        }
    }

    /// Returns how many frames sit in the caches.
    pub fn cached_frames(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.cached())
    }

    /// Returns how many frames are free in the tree (cached frames count
    /// as allocated there).
    pub fn tree_free_pages(&self) -> u64 {
        self.tree.lock().free_pages()
    }
}
