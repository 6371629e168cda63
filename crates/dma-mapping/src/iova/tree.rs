//! The allocator behind the caches: free ranges of page frames in a
//! `BTreeMap`, allocated top-down and size-aligned.
//!
//! Why our own: the interval-tree crates that fit (rust-vmm's
//! `vm-allocator`) need `std`; `alloc::collections::BTreeMap` is no_std,
//! well-kept and ordered, which is all a top-down search needs.

use alloc::collections::BTreeMap;

/// Why a range could not be given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The range is (partly) free already or outside the space.
    #[error("range {pfn:#x}+{pages:#x} is not allocated")]
    NotAllocated {
        /// First page frame.
        pfn: u64,
        /// Page count.
        pages: u64,
    },
}

/// Free page-frame ranges `[start, end)`, keyed by start.
#[derive(Debug)]
pub struct IovaTree {
    free: BTreeMap<u64, u64>,
    start: u64,
    end: u64,
}

impl IovaTree {
    /// Returns a tree where `[start, end)` is free.
    pub fn new(start: u64, end: u64) -> Self {
        let mut free = BTreeMap::new();
        if start < end {
            free.insert(start, end);
        }
        Self { free, start, end }
    }

    /// Returns the highest `align`-aligned run of `pages` free frames that
    /// ends at or below `limit`, marking it allocated.
    pub fn alloc(&mut self, pages: u64, align: u64, limit: u64) -> Option<u64> {
        if pages == 0 || !align.is_power_of_two() {
            return None;
        }
        let limit = limit.min(self.end);
        let mut found = None;
        for (&s, &e) in self.free.range(..limit).rev() {
            let top = e.min(limit);
            if top - s < pages {
                continue;
            }
            let cand = (top - pages) & !(align - 1);
            if cand >= s {
                found = Some((s, e, cand));
                break;
            }
        }
        let (s, e, cand) = found?;
        self.free.remove(&s);
        if cand > s {
            self.free.insert(s, cand);
        }
        if cand + pages < e {
            self.free.insert(cand + pages, e);
        }
        Some(cand)
    }

    /// Marks `[pfn, pfn + pages)` free again, merging with neighbours.
    ///
    /// # Errors
    ///
    /// [`TreeError::NotAllocated`] when any of it is free already or
    /// outside the space; nothing changes then.
    pub fn free(&mut self, pfn: u64, pages: u64) -> Result<(), TreeError> {
        let bad = TreeError::NotAllocated { pfn, pages };
        let end = pfn.checked_add(pages).ok_or(bad)?;
        if pages == 0 || pfn < self.start || end > self.end {
            return Err(bad);
        }
        let below = self.free.range(..=pfn).next_back().map(|(&s, &e)| (s, e));
        if below.is_some_and(|(_, e)| e > pfn) {
            return Err(bad);
        }
        let above = self.free.range(pfn..).next().map(|(&s, &e)| (s, e));
        if above.is_some_and(|(s, _)| s < end) {
            return Err(bad);
        }
        let (mut s, mut e) = (pfn, end);
        if let Some((bs, be)) = below.filter(|&(_, be)| be == pfn) {
            self.free.remove(&bs);
            s = bs;
            let _ = be;
        }
        if let Some((as_, ae)) = above.filter(|&(as_, _)| as_ == end) {
            self.free.remove(&as_);
            e = ae;
        }
        self.free.insert(s, e);
        Ok(())
    }

    /// Returns the number of free frames.
    pub fn free_pages(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// Returns the number of free ranges (a fragmentation measure).
    pub fn free_ranges(&self) -> usize {
        self.free.len()
    }
}
