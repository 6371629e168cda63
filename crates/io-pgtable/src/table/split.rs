//! Changing the size of what a range is mapped with, keeping the mapping:
//! splitting a block into a table of the next level, and rewriting a
//! contiguous-hint group without the hint.
//!
//! Without [`Quirks::BBML2`] both use break-before-make: the old entries
//! are made invalid, cleaned and flushed from the TLB and walk caches
//! before the new ones are written, so DMA to the rest of the range faults
//! for that window. With it the new entries replace the old ones in place
//! and the flush follows; the architecture then lets the walker use either
//! the old or the new entries, which translate alike. Every failure puts
//! the old entries back: the mapping never changes.

use crate::sync::{AtomicU64, Ordering};

use super::PageTable;
use crate::config::Quirks;
use crate::env::PtEnv;
use crate::error::Error;
use crate::layout::{self, CONTIG};

/// Largest contiguous-hint group (16K granule, level 3).
const MAX_CONTIG: usize = 128;

impl<E: PtEnv> PageTable<E> {
    #[inline]
    fn bbml2(&self) -> bool {
        self.cfg.quirks.contains(Quirks::BBML2)
    }

    /// Rewrites the contiguous group holding entry `idx` without the
    /// contiguous bit.
    pub(super) fn uncontig_group(
        &self,
        table: u64,
        idx: usize,
        level: usize,
        iova: u64,
    ) -> Result<(), Error> {
        let shift = self.shift(level);
        let c = self.cfg.granule.contig_entries(level) as usize;
        let g0 = idx & !(c - 1);
        let group_va = iova.wrapping_sub(((idx - g0) as u64) << shift);
        let group = &self.slice(table, level)[g0..g0 + c];
        let mut saved = [0u64; MAX_CONTIG];
        if self.bbml2() {
            for (s, e) in saved.iter_mut().zip(group) {
                *s = e.fetch_and(!CONTIG, Ordering::AcqRel);
            }
        } else {
            for (s, e) in saved.iter_mut().zip(group) {
                *s = e.swap(0, Ordering::AcqRel);
            }
        }
        let flushed = self
            .clean_if_needed(table, g0, c)
            .map_err(Error::from)
            .and_then(|()| {
                self.env
                    .flush_walk(group_va, (c as u64) << shift, self.granule())
                    .map_err(Error::from)
            });
        if let Err(e) = flushed {
            self.restore(group, &saved[..c], table, g0);
            return Err(e);
        }
        if !self.bbml2() {
            for (s, e) in saved.iter().zip(group) {
                if s & layout::VALID != 0 {
                    e.store(s & !CONTIG, Ordering::Release);
                }
            }
            if let Err(err) = self.clean_if_needed(table, g0, c) {
                // The device may still see the group invalid: put the
                // original entries back so it translates as before.
                self.restore(group, &saved[..c], table, g0);
                return Err(err.into());
            }
        }
        Ok(())
    }

    /// Stores `saved` back into `entries` (from index `from` of `table`)
    /// and cleans them, best effort: used only on a path that already
    /// failed and reports that error.
    fn restore(&self, entries: &[AtomicU64], saved: &[u64], table: u64, from: usize) {
        for (s, e) in saved.iter().zip(entries) {
            e.store(*s, Ordering::Release);
        }
        let _ = self.clean_if_needed(table, from, saved.len());
    }

    /// Replaces block `d` in entry `idx` of `table` (at `level`) by a table
    /// of the next level mapping the same range.
    pub(super) fn split_block(
        &self,
        table: u64,
        idx: usize,
        d: u64,
        level: usize,
        block_va: u64,
    ) -> Result<(), Error> {
        if d & CONTIG != 0 {
            // The block is part of a contiguous group: drop the hint first;
            // the caller re-reads the entry and comes back here.
            return self.uncontig_group(table, idx, level, block_va);
        }
        let size = self.granule() as usize;
        let child = self.env.alloc_table(size)?;
        let cl = level + 1;
        let cshift = self.shift(cl);
        let mut attrs = d & !(self.addr_mask | layout::TYPE_MASK | CONTIG);
        if self.pa52 {
            attrs &= !layout::PA_HI_MASK_52;
        }
        let ty = layout::leaf_type(cl);
        let pa = self.desc_to_pa(d);
        let base = child.cpu.as_ptr().cast::<AtomicU64>();
        for k in 0..self.entries_in_sub(cl) {
            let leaf = self.pa_to_desc(pa + ((k as u64) << cshift)) | attrs | ty;
            // SAFETY: `child` is a fresh block of `size` bytes holding
            // exactly `entries_in_sub` 8-byte entries, accessed atomically.
            unsafe { &*base.add(k) }.store(leaf, Ordering::Relaxed);
        }
        if self.noncoherent {
            if let Err(e) = self.env.clean(child.cpu, child.phys, size) {
                // SAFETY: never published.
                unsafe { self.env.free_table(child, size) };
                return Err(e.into());
            }
        }
        let td = self.table_desc(child.phys);
        let block_size = self.block_size(level);
        let e = self.entry(table, idx);
        if self.bbml2() {
            // One store replaces the block; the flush then drops the cached
            // block so that later changes to the new leaves take effect.
            if !self.link_table(table, idx, d, td)? {
                // SAFETY: the compare-exchange failed: never published.
                unsafe { self.env.free_table(child, size) };
                return Ok(());
            }
            self.env.flush_walk(block_va, block_size, self.granule())?;
            return Ok(());
        }
        if e.compare_exchange(d, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: never published.
            unsafe { self.env.free_table(child, size) };
            return Ok(());
        }
        let broken = self
            .clean_if_needed(table, idx, 1)
            .map_err(Error::from)
            .and_then(|()| {
                self.env
                    .flush_walk(block_va, block_size, self.granule())
                    .map_err(Error::from)
            });
        if let Err(err) = broken {
            e.store(d, Ordering::Release);
            let _ = self.clean_if_needed(table, idx, 1);
            // SAFETY: never published.
            unsafe { self.env.free_table(child, size) };
            return Err(err);
        }
        match self.link_table(table, idx, 0, td) {
            Ok(true) => Ok(()),
            Ok(false) => {
                // An overlapping (buggy) caller filled the entry meanwhile.
                // SAFETY: never published.
                unsafe { self.env.free_table(child, size) };
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}
