//! Retired tables: the push-only list, reclamation, compaction, and drop.

use crate::sync::Ordering;

use super::{LINK_END, LINK_LOW, LINK_TAG, PageTable, is_table};
use crate::env::{PtEnv, TableBlock};
use crate::error::Error;
use crate::layout::VALID;

impl<E: PtEnv> PageTable<E> {
    /// Retires a disconnected table (and the tables below it): zeroes it so
    /// racing walkers read only invalid entries, and pushes it on the
    /// retired list with the link in word 0.
    pub(super) fn retire(&self, table: u64, level: usize) {
        if level == 3 {
            // No tables below the last level: plain stores suffice.
            for e in self.slice(table, level) {
                e.store(0, Ordering::Relaxed);
            }
        } else {
            // A swap, so each table below is found (and retired) once even
            // if a racer changes the entry.
            for k in 0..self.entries_in_sub(level) {
                let old = self.entry(table, k).swap(0, Ordering::AcqRel);
                if is_table(old, level) {
                    self.retire(self.desc_to_pa(old), level + 1);
                }
            }
        }
        let link = self.entry(table, 0);
        let mut head = self.retired.load(Ordering::Relaxed);
        loop {
            link.store(head, Ordering::Relaxed);
            match self.retired.compare_exchange_weak(
                head,
                table | LINK_TAG,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
    }

    /// Returns how many retired tables wait for [`PageTable::reclaim`].
    pub fn retired_tables(&self) -> usize {
        let mut n = 0;
        let mut w = self.retired.load(Ordering::Acquire);
        while w & LINK_LOW == LINK_TAG {
            n += 1;
            w = self.entry(w & !LINK_LOW, 0).load(Ordering::Acquire);
        }
        n
    }

    /// Frees every retired table. Call it after the TLB invalidation that
    /// followed the unmaps (the `&mut` proves no walk is in progress).
    ///
    /// Returns how many tables were freed.
    pub fn reclaim(&mut self) -> usize {
        self.reclaim_list()
    }

    /// Frees the retired list. Callers hold `&mut self`, or (compaction)
    /// run with exclusive access after the flush of what they retired.
    fn reclaim_list(&self) -> usize {
        let size = self.granule() as usize;
        let mut n = 0;
        let mut w = self.retired.swap(LINK_END, Ordering::Acquire);
        // A link a racing (overlapping, hence buggy) caller overwrote has
        // bit 0 set or is zero: stop there and leak the rest rather than
        // free something that is not ours.
        while w & LINK_LOW == LINK_TAG {
            let table = w & !LINK_LOW;
            w = self.entry(table, 0).load(Ordering::Acquire);
            let cpu = self.env.phys_to_cpu(table);
            // SAFETY: `table` was allocated with `size` (every non-root table
            // is one granule), disconnected and flushed from the walk caches
            // before it was retired, and is on the list exactly once (one
            // thread won its disconnection). Every caller of this function
            // holds `&mut self` (`reclaim`, `compact`, drop), which proves
            // no CPU walk can still read it.
            unsafe { self.env.free_table(TableBlock { cpu, phys: table }, size) };
            n += 1;
        }
        n
    }

    /// Frees every table that holds no valid entry, bottom-up, after
    /// disconnecting it and flushing its range from the walk caches; then
    /// frees the retired tables. Unmaps free a table only when they cover
    /// its whole range; smaller unmaps can leave empty tables behind, and
    /// this call returns their memory.
    ///
    /// `&mut self` is required, not a convenience: freeing a table that a
    /// concurrent mapper of a disjoint range is about to fill would silently
    /// lose that mapping, so compaction must never run behind `&self`.
    ///
    /// Returns how many tables were freed (retired ones included).
    ///
    /// # Errors
    ///
    /// [`Error::Cache`] or [`Error::Tlb`] from disconnecting a table; that
    /// table stays linked and everything freed before it stays freed.
    pub fn compact(&mut self) -> Result<usize, Error> {
        let mut freed = self.reclaim();
        let start = self.geo.start_level;
        if start < 3 {
            let root = self.root.phys;
            for k in 0..self.entries_in(start) {
                let va = (k as u64) << self.shift(start);
                freed += self.compact_entry(root, k, start, va | self.upper_bits())?;
            }
        }
        Ok(freed)
    }

    /// Compacts below entry `idx` of `table` (at `level`, covering `iova`):
    /// returns how many tables were freed.
    fn compact_entry(
        &self,
        table: u64,
        idx: usize,
        level: usize,
        iova: u64,
    ) -> Result<usize, Error> {
        let d = self.entry(table, idx).load(Ordering::Acquire);
        if !is_table(d, level) {
            return Ok(0);
        }
        let child = self.desc_to_pa(d);
        let cl = level + 1;
        let mut freed = 0;
        if cl < 3 {
            for k in 0..self.entries_in_sub(cl) {
                let va = iova.wrapping_add((k as u64) << self.shift(cl));
                freed += self.compact_entry(child, k, cl, va)?;
            }
        }
        let empty = self
            .slice(child, cl)
            .iter()
            .all(|e| e.load(Ordering::Relaxed) & VALID == 0);
        if empty && self.disconnect(table, idx, d, level, iova)? {
            freed += self.reclaim_list();
        }
        Ok(freed)
    }

    fn free_tree(&mut self, table: u64, level: usize) {
        for k in 0..self.entries_in_sub(level) {
            let d = self.entry(table, k).load(Ordering::Acquire);
            if is_table(d, level) {
                let child = self.desc_to_pa(d);
                self.free_tree(child, level + 1);
            }
        }
        let size = self.granule() as usize;
        let cpu = self.env.phys_to_cpu(table);
        // SAFETY: a live non-root table, reachable once from the tree; we
        // own `self` exclusively (drop).
        unsafe { self.env.free_table(TableBlock { cpu, phys: table }, size) };
    }
}

impl<E: PtEnv> Drop for PageTable<E> {
    fn drop(&mut self) {
        self.reclaim();
        let start = self.geo.start_level;
        let entries = self.entries_in(start);
        if start < 3 {
            for k in 0..entries {
                let d = self.entry(self.root.phys, k).load(Ordering::Acquire);
                if is_table(d, start) {
                    let child = self.desc_to_pa(d);
                    self.free_tree(child, start + 1);
                }
            }
        }
        // SAFETY: the root was allocated with `pgd_size` in `new` and is
        // never freed elsewhere; we are dropping, so nobody walks it.
        unsafe { self.env.free_table(self.root, self.geo.pgd_size) };
    }
}
