//! Unmap: leaves go to the gather, tables are flushed and retired.

use crate::sync::{AtomicU64, Ordering};

use super::{PageTable, is_leaf, is_table};
use crate::env::{Gather, PtEnv};
use crate::error::{Error, Partial};
use crate::layout::{CONTIG, TYPE_MASK, leaf_type};

/// How far a run of clears got before an error: entries cleared (and,
/// for leaves, gathered), and why it stopped.
type Stopped = (usize, Error);

impl<E: PtEnv> PageTable<E> {
    /// Unmaps `pgcount` pages of `pgsize` bytes from `iova`, adding the
    /// unmapped **leaves** to `gather` through
    /// [`crate::env::TlbHooks::add_pages`].
    ///
    /// Returns the bytes unmapped; it stops early (returning less) at the
    /// first `pgsize` entry under which nothing is mapped (an empty table
    /// left by earlier unmaps counts as nothing).
    ///
    /// * A table whose whole range the call covers (a `pgsize` entry that
    ///   is a table, or a table of `pgsize` leaves all inside the range) is
    ///   removed whole: disconnected, flushed from the TLB and walk caches
    ///   at once ([`crate::env::TlbHooks::flush_walk`], synchronous) and
    ///   retired. Its leaves never enter the gather.
    /// * Unmapping part of a block **splits** it (see the `split` module:
    ///   break-before-make, or in place with [`crate::Quirks::BBML2`]),
    ///   then the requested part is unmapped.
    /// * Unmapping part of a contiguous-hint group rewrites the rest of the
    ///   group without the hint first.
    ///
    /// For a non-coherent walker the cleared entries are cleaned before
    /// they are added to the gather, so before the driver's invalidation.
    /// [`Gather::leaf_size`] is the size of the leaves it holds, a valid
    /// leaf-level (TTL) hint, unless a failed sync widened the gather over
    /// leaves of several sizes (then it is `None`: invalidate unhinted).
    ///
    /// # Errors
    ///
    /// [`Partial`] with the bytes unmapped before the error: bad input as
    /// for [`PageTable::map`]; [`Error::Alloc`] when a split needs a table
    /// and none is available; [`Error::Cache`]; [`Error::Tlb`] from a hook.
    /// Every cleared entry is counted in `done` and every cleared leaf is
    /// in `gather` (even when cleaning it failed), so the caller always
    /// knows what to invalidate; a table whose flush failed is linked back
    /// and not counted.
    pub fn unmap(
        &self,
        iova: u64,
        pgsize: u64,
        pgcount: usize,
        gather: &mut Gather,
    ) -> Result<usize, Partial> {
        let (mut va, hi, level, size) = self
            .check(iova, pgsize, pgcount as u64)
            .map_err(|e| Partial::at(0, e))?;
        let shift = self.shift(level);
        let end = va + size;
        let mut done = 0u64;
        'outer: while va < end {
            let mut table = self.root.phys;
            let mut l = self.geo.start_level;
            while l < level {
                let idx = self.index(va, l);
                let d = self.entry(table, idx).load(Ordering::Acquire);
                if is_table(d, l) {
                    self.clean_link_in_flight(table, idx)
                        .map_err(|e| Partial::at(done, e))?;
                    // The call covers the whole table below: remove it
                    // whole (if it holds only leaves).
                    if l + 1 == level
                        && va & (self.block_size(l) - 1) == 0
                        && end - va >= self.block_size(l)
                    {
                        if let Some(removed) = self
                            .remove_full_table(table, idx, d, l, va | hi)
                            .map_err(|e| Partial::at(done, e))?
                        {
                            done += removed;
                            va += removed;
                            continue 'outer;
                        }
                    }
                    table = self.desc_to_pa(d);
                    l += 1;
                } else if is_leaf(d, l) {
                    let block_va = va & !(self.block_size(l) - 1);
                    self.split_block(table, idx, d, l, block_va | hi)
                        .map_err(|e| Partial::at(done, e))?;
                } else {
                    break 'outer;
                }
            }
            let idx = self.index(va, level);
            let n = (((end - va) >> shift) as usize).min(self.entries_in(level) - idx);
            let k = match self.clear_run(table, idx, n, va | hi, level, gather) {
                Ok(k) => k,
                Err((k, e)) => return Err(Partial::at(done + ((k as u64) << shift), e)),
            };
            done += (k as u64) << shift;
            va += (k as u64) << shift;
            if k < n {
                break;
            }
        }
        Ok(done as usize)
    }

    /// Removes the table `d` in entry `idx` of `table` (at `level`) when
    /// every entry of it is a valid leaf: the caller unmaps its whole
    /// range. Returns the bytes removed, or `None` when some entry is not a
    /// leaf (the caller then clears entry by entry and stops at the hole).
    fn remove_full_table(
        &self,
        table: u64,
        idx: usize,
        d: u64,
        level: usize,
        iova: u64,
    ) -> Result<Option<u64>, Error> {
        let child = self.desc_to_pa(d);
        let cl = level + 1;
        let lines = self.slice(child, cl).chunks_exact(8);
        // A constant level for the common case lets the flip fold away.
        let all_leaves = if cl == 3 {
            lines.into_iter().all(|line| line_of_leaves(line, 3))
        } else {
            lines.into_iter().all(|line| line_of_leaves(line, cl))
        };
        if !all_leaves {
            return Ok(None);
        }
        if !self.disconnect(table, idx, d, level, iova)? {
            return Ok(None);
        }
        Ok(Some(self.block_size(level)))
    }

    /// Disconnects table `d` from entry `idx` of `table` (a table at
    /// `level`), makes the device forget it (clean, synchronous walk flush
    /// of the entry's range from `iova`) and retires it. Returns false when
    /// a racer changed the entry first. On failure the table is linked
    /// back: nothing changed.
    pub(super) fn disconnect(
        &self,
        table: u64,
        idx: usize,
        d: u64,
        level: usize,
        iova: u64,
    ) -> Result<bool, Error> {
        let e = self.entry(table, idx);
        if e.compare_exchange(d, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(false);
        }
        let flushed = self
            .clean_if_needed(table, idx, 1)
            .map_err(Error::from)
            .and_then(|()| {
                self.env
                    .flush_walk(iova, self.block_size(level), self.granule())
                    .map_err(Error::from)
            });
        if let Err(err) = flushed {
            e.store(d, Ordering::Release);
            let _ = self.clean_if_needed(table, idx, 1);
            return Err(err);
        }
        self.retire(self.desc_to_pa(d), level + 1);
        Ok(true)
    }

    /// Unmaps `[iova, iova + len)` with the largest page sizes its
    /// alignment allows (a mapping made by [`PageTable::map_range`] with the
    /// same arguments is removed exactly).
    ///
    /// Returns the bytes unmapped.
    ///
    /// # Errors
    ///
    /// As [`PageTable::unmap`]; `len` must be a non-zero multiple of the
    /// granule.
    pub fn unmap_range(&self, iova: u64, len: u64, gather: &mut Gather) -> Result<usize, Partial> {
        self.for_each_chunk(iova, None, len, |va, _, pgsize, count| {
            self.unmap(va, pgsize, count, gather)
        })
    }

    /// Clears up to `n` valid entries from `idx`; returns how many.
    ///
    /// Leaves are cleaned, then gathered, a run at a time; a table met at
    /// this level (the caller unmaps a size over smaller pages) is
    /// disconnected, flushed and retired. On error it returns how many
    /// entries were cleared: every one of them is gathered or flushed.
    fn clear_run(
        &self,
        table: u64,
        idx: usize,
        n: usize,
        iova: u64,
        level: usize,
        gather: &mut Gather,
    ) -> Result<usize, Stopped> {
        let shift = self.shift(level);
        let run = &self.slice(table, level)[idx..idx + n];
        // Contiguous groups cut by the ends of the range lose the hint
        // first. Groups are always complete, so only the groups holding the
        // first and the last requested entries can be cut.
        let c = self.cfg.granule.contig_entries(level) as usize;
        let first = run[0].load(Ordering::Relaxed);
        if first & CONTIG != 0 && is_leaf(first, level) && idx & (c - 1) != 0 {
            self.uncontig_group(table, idx, level, iova)
                .map_err(|e| (0, e))?;
        }
        let last = run[n - 1].load(Ordering::Relaxed);
        if last & CONTIG != 0 && is_leaf(last, level) && (idx + n) & (c - 1) != 0 {
            let va_last = iova.wrapping_add(((n - 1) as u64) << shift);
            self.uncontig_group(table, idx + n - 1, level, va_last)
                .map_err(|e| (0, e))?;
        }
        if level == 3 {
            // No tables at the last level: check and clear in one pass.
            let mut k = clear_leaf_lines(run, level);
            for e in &run[k..] {
                if !is_leaf(e.load(Ordering::Relaxed), 3) {
                    break;
                }
                e.store(0, Ordering::Relaxed);
                k += 1;
            }
            self.gather_leaves(table, idx, iova, level, 0..k, gather)
                .map_err(|e| (k, e))?;
            return Ok(k);
        }
        // Blocks and tables may alternate: gather each run of blocks, and
        // remove each table whole.
        let mut leaves_from = 0;
        let mut k = clear_leaf_lines(run, level);
        while k < n {
            let e = &run[k];
            let d = e.load(Ordering::Acquire);
            if is_leaf(d, level) {
                e.store(0, Ordering::Relaxed);
                k += 1;
                continue;
            }
            if !is_table(d, level) || self.subtree_is_empty(self.desc_to_pa(d), level + 1) {
                // Nothing mapped here (an empty table counts as nothing:
                // it stays, a later block map or `compact` removes it).
                break;
            }
            self.gather_leaves(table, idx, iova, level, leaves_from..k, gather)
                .map_err(|e| (k, e))?;
            let va_k = iova.wrapping_add((k as u64) << shift);
            match self.disconnect(table, idx + k, d, level, va_k) {
                Ok(true) => k += 1,
                Ok(false) => break,
                Err(e) => return Err((k, e)),
            }
            leaves_from = k;
        }
        self.gather_leaves(table, idx, iova, level, leaves_from..k, gather)
            .map_err(|e| (k, e))?;
        Ok(k)
    }

    /// Cleans the cleared leaf entries `run` of the run that starts at
    /// entry `idx` of `table` (IOVA `iova`) and adds them to the gather. A
    /// failed clean still gathers them (the caller must invalidate what it
    /// cleared) and reports the error.
    fn gather_leaves(
        &self,
        table: u64,
        idx: usize,
        iova: u64,
        level: usize,
        run: core::ops::Range<usize>,
        gather: &mut Gather,
    ) -> Result<(), Error> {
        if run.is_empty() {
            return Ok(());
        }
        let count = run.len();
        let cleaned = self.clean_if_needed(table, idx + run.start, count);
        let va = iova.wrapping_add((run.start as u64) << self.shift(level));
        self.env
            .add_pages(gather, va, self.block_size(level), count as u64)?;
        cleaned?;
        Ok(())
    }
}

/// Returns whether every entry of `line` is a leaf at `level`. Flipping
/// the bits a leaf has clear (bit 1 of a block) makes every leaf's type
/// bits 0b11, so one AND per entry tests the whole line.
#[inline(always)]
fn line_of_leaves(line: &[AtomicU64], level: usize) -> bool {
    let flip = TYPE_MASK ^ leaf_type(level);
    let all = line
        .iter()
        .fold(!0u64, |a, e| a & (e.load(Ordering::Relaxed) ^ flip));
    all & TYPE_MASK == TYPE_MASK
}

/// Clears `run` a cache line (8 entries) at a time while whole lines are
/// leaves at `level`; returns how many entries it cleared.
#[inline(always)]
fn clear_leaf_lines(run: &[AtomicU64], level: usize) -> usize {
    let mut k = 0;
    for line in run.chunks_exact(8) {
        if !line_of_leaves(line, level) {
            break;
        }
        for e in line {
            e.store(0, Ordering::Relaxed);
        }
        k += 8;
    }
    k
}
