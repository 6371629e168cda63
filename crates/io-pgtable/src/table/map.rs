//! Map: table install, leaf writes, the contiguous hint.

use crate::sync::Ordering;

use super::{PageTable, is_table};
use crate::config::Prot;
use crate::env::{CacheError, PtEnv};
use crate::error::{Error, Partial};
use crate::layout::{self, CONTIG};

impl<E: PtEnv> PageTable<E> {
    /// Maps `pgcount` pages of `pgsize` bytes from `iova` to `paddr`.
    ///
    /// Returns the bytes mapped. Safe to call concurrently with other calls
    /// on disjoint ranges; overlapping concurrent calls cannot cause
    /// undefined behaviour but their outcome is unspecified.
    ///
    /// A block mapped where an empty table (no valid leaves) hangs replaces
    /// it (break-before-make, the table is retired).
    ///
    /// # Errors
    ///
    /// [`Partial`] with the bytes mapped before the error: bad input
    /// ([`Error::ZeroCount`], [`Error::BadPageSize`], [`Error::UnalignedIova`],
    /// [`Error::UnalignedPaddr`], [`Error::IovaOutOfRange`],
    /// [`Error::PaddrOutOfRange`], [`Error::Overflow`],
    /// [`Error::NoPermission`]) maps nothing; [`Error::Exists`] stops at the
    /// first page already mapped; [`Error::Alloc`] and [`Error::Cache`]
    /// stop where the environment failed. What was mapped stays mapped and
    /// consistent.
    pub fn map(
        &self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        pgcount: usize,
        prot: Prot,
    ) -> Result<usize, Partial> {
        let fail = |e| Partial::at(0, e);
        let (mut va, hi, level, size) = self.check(iova, pgsize, pgcount as u64).map_err(fail)?;
        if paddr & (pgsize - 1) != 0 {
            return Err(fail(Error::UnalignedPaddr(paddr)));
        }
        let pend = paddr.checked_add(size).ok_or(fail(Error::Overflow))?;
        if (pend - 1) >> self.cfg.oas != 0 {
            return Err(fail(Error::PaddrOutOfRange(paddr)));
        }
        let attrs = self.leaf_attrs(prot, level).map_err(fail)?;
        let contig = prot.contains(Prot::CONTIG) && level >= 2;
        let shift = self.shift(level);
        let end = va + size;
        let mut pa = paddr;
        let mut done = 0u64;
        while va < end {
            let table = self
                .table_for(va | hi, va, level)
                .map_err(|e| Partial::at(done, e))?;
            let idx = self.index(va, level);
            let n = (((end - va) >> shift) as usize).min(self.entries_in(level) - idx);
            self.fill(table, idx, n, va | hi, pa, level, attrs, contig, &mut done)
                .map_err(|e| Partial::at(done, e))?;
            va += (n as u64) << shift;
            pa += (n as u64) << shift;
        }
        Ok(done as usize)
    }

    /// Maps `[iova, iova + len)` to `[paddr, paddr + len)` with the largest
    /// page sizes their alignment allows.
    ///
    /// Returns the bytes mapped.
    ///
    /// # Errors
    ///
    /// As [`PageTable::map`]; `len` must be a non-zero multiple of the
    /// granule ([`Error::ZeroCount`], [`Error::UnalignedSize`]).
    pub fn map_range(&self, iova: u64, paddr: u64, len: u64, prot: Prot) -> Result<usize, Partial> {
        self.for_each_chunk(iova, Some(paddr), len, |va, pa, pgsize, count| {
            self.map(va, pa, pgsize, count, prot)
        })
    }

    /// Splits a range into runs of the largest aligned page sizes and calls
    /// `op(iova, paddr, pgsize, count)` on each.
    pub(super) fn for_each_chunk(
        &self,
        iova: u64,
        paddr: Option<u64>,
        len: u64,
        mut op: impl FnMut(u64, u64, u64, usize) -> Result<usize, Partial>,
    ) -> Result<usize, Partial> {
        let g = self.granule();
        if len == 0 {
            return Err(Partial::at(0, Error::ZeroCount));
        }
        if len & (g - 1) != 0 {
            return Err(Partial::at(0, Error::UnalignedSize(len)));
        }
        // The whole range is validated before anything is touched.
        let fail = |e| Partial::at(0, e);
        let (va0, _) = self.normalize(iova).map_err(fail)?;
        let end = va0.checked_add(len).ok_or(fail(Error::Overflow))?;
        if end - 1 > self.ias_mask {
            return Err(fail(Error::IovaOutOfRange(iova)));
        }
        if iova & (g - 1) != 0 {
            return Err(fail(Error::UnalignedIova(iova)));
        }
        if let Some(pa) = paddr {
            let pend = pa.checked_add(len).ok_or(fail(Error::Overflow))?;
            if (pend - 1) >> self.cfg.oas != 0 {
                return Err(fail(Error::PaddrOutOfRange(pa)));
            }
            if pa & (g - 1) != 0 {
                return Err(fail(Error::UnalignedPaddr(pa)));
            }
        }
        if len == g {
            // One granule (the commonest DMA mapping): no size to choose.
            return op(iova, paddr.unwrap_or(iova), g, 1);
        }
        let (mut va, mut pa, mut left, mut done) = (iova, paddr.unwrap_or(iova), len, 0usize);
        while left > 0 {
            let align = va | pa;
            let mut sizes = self.geo.pgsize_bitmap;
            let mut pgsize = 0;
            while sizes != 0 {
                let p = 1u64 << (63 - sizes.leading_zeros());
                sizes &= !p;
                if p <= left && align & (p - 1) == 0 {
                    pgsize = p;
                    break;
                }
            }
            if pgsize == 0 {
                let e = if va & (g - 1) != 0 {
                    Error::UnalignedIova(va)
                } else {
                    Error::UnalignedPaddr(pa)
                };
                return Err(Partial::at(done as u64, e));
            }
            let pshift = pgsize.trailing_zeros();
            let mut count = left >> pshift;
            // Stop at the next boundary where a larger page becomes possible.
            let mut bigger = self.geo.pgsize_bitmap & !((pgsize << 1) - 1);
            while bigger != 0 {
                let p = 1u64 << bigger.trailing_zeros();
                bigger &= !p;
                if (va ^ pa) & (p - 1) == 0 {
                    count = count.min((p - (va & (p - 1))) >> pshift);
                    break;
                }
            }
            match op(va, pa, pgsize, count as usize) {
                Ok(n) => {
                    done += n;
                    let n = n as u64;
                    if n < count << pshift {
                        return Ok(done);
                    }
                    va = va.wrapping_add(n);
                    pa = pa.wrapping_add(n);
                    left -= n;
                }
                Err(p) => return Err(Partial::at((done + p.done) as u64, p.error)),
            }
        }
        Ok(done)
    }

    /// Returns the table at `level` covering `va`, allocating missing
    /// tables on the way.
    fn table_for(&self, iova: u64, va: u64, level: usize) -> Result<u64, Error> {
        let mut table = self.root.phys;
        for l in self.geo.start_level..level {
            let idx = self.index(va, l);
            let e = self.entry(table, idx);
            let mut d = e.load(Ordering::Acquire);
            if d == 0 {
                d = self.install_table(table, idx)?;
            } else {
                self.clean_link_in_flight(table, idx)?;
            }
            if !is_table(d, l) {
                return Err(Error::Exists(iova));
            }
            table = self.desc_to_pa(d);
        }
        Ok(table)
    }

    /// Cleans the table descriptor in entry `idx` of `table` if some link
    /// may still be uncleaned (a racing installer between its publication
    /// and its clean), so no caller returns while its leaves hang below a
    /// link the walker cannot see. Free when no link is in flight.
    ///
    /// Why a counter suffices: an installer counts itself in before the
    /// releasing compare-exchange that publishes its link and out (release)
    /// after the clean. A reader that acquired the link therefore reads the
    /// counter at or after the installer's increment; reading zero means it
    /// also read after the matching decrement, so the clean is visible.
    #[inline(always)]
    pub(super) fn clean_link_in_flight(&self, table: u64, idx: usize) -> Result<(), Error> {
        if self.noncoherent && self.links_in_flight.load(Ordering::Acquire) != 0 {
            self.clean_entries(table, idx, 1)?;
        }
        Ok(())
    }

    /// Publishes a new empty table in the (zero) entry `idx` of `table`.
    /// Returns the descriptor now in the entry (ours, or a racer's).
    fn install_table(&self, table: u64, idx: usize) -> Result<u64, Error> {
        let size = self.granule() as usize;
        let blk = self.env.alloc_table(size)?;
        if self.noncoherent {
            // The walker must never see the table's stale memory.
            if let Err(e) = self.env.clean(blk.cpu, blk.phys, size) {
                // SAFETY: allocated above and never published.
                unsafe { self.env.free_table(blk, size) };
                return Err(e.into());
            }
        }
        let desc = self.table_desc(blk.phys);
        match self.link_table(table, idx, 0, desc) {
            Ok(true) => Ok(desc),
            Ok(false) => {
                // SAFETY: the compare-exchange failed, so nobody ever saw it.
                unsafe { self.env.free_table(blk, size) };
                // A racer linked its table first; it may not be cleaned yet.
                self.clean_link_in_flight(table, idx)?;
                Ok(self.entry(table, idx).load(Ordering::Acquire))
            }
            // Linked but the clean failed: the table is ours and reachable
            // by the CPU; the caller sees the error and maps nothing more.
            Err(e) => Err(e),
        }
    }

    /// Returns the descriptor of a table at `phys`.
    #[inline]
    pub(super) fn table_desc(&self, phys: u64) -> u64 {
        self.pa_to_desc(phys) | layout::TYPE_TABLE | self.table_attrs
    }

    /// Replaces `old` by table descriptor `desc` in entry `idx` of `table`
    /// (the table's contents already written and cleaned), then cleans the
    /// entry. Returns whether the compare-exchange won.
    ///
    /// Orders the table's contents before the link for the device
    /// ([`crate::env::CacheMaintenance::device_write_barrier`]) and keeps
    /// `links_in_flight` raised from before the publication until the link
    /// is cleaned, so the link is cleaned exactly once by its installer and
    /// again only by a racer that could have seen it uncleaned.
    ///
    /// # Errors
    ///
    /// [`Error::Cache`] when the link was published but not cleaned.
    pub(super) fn link_table(
        &self,
        table: u64,
        idx: usize,
        old: u64,
        desc: u64,
    ) -> Result<bool, Error> {
        let e = self.entry(table, idx);
        if self.noncoherent {
            self.links_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        self.env.device_write_barrier();
        let won = e
            .compare_exchange(old, desc, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if self.noncoherent {
            let r = if won {
                self.clean_entries(table, idx, 1)
            } else {
                Ok(())
            };
            self.links_in_flight.fetch_sub(1, Ordering::Release);
            r?;
        }
        Ok(won)
    }

    /// Writes leaves into entries `[idx, idx + n)` of `table`, refusing
    /// entries in use (except empty tables under a block, which are
    /// replaced).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        table: u64,
        idx: usize,
        n: usize,
        iova: u64,
        pa: u64,
        level: usize,
        attrs: u64,
        contig: bool,
        done: &mut u64,
    ) -> Result<(), Error> {
        let shift = self.shift(level);
        let run = &self.slice(table, level)[idx..idx + n];
        let mut i = 0;
        if !contig && !self.pa52 {
            // Fast path: one pass that checks and writes each entry, so
            // every line is touched once.
            let step = 1u64 << shift;
            let mut d = self.pa_to_desc(pa) | attrs;
            // A cache line (8 entries) at a time: one branch per line.
            while i + 8 <= n {
                let line = &run[i..i + 8];
                if line.iter().fold(0, |a, e| a | e.load(Ordering::Relaxed)) != 0 {
                    break;
                }
                for e in line {
                    e.store(d, Ordering::Relaxed);
                    d += step;
                }
                i += 8;
            }
            for e in &run[i..] {
                if e.load(Ordering::Relaxed) != 0 {
                    break;
                }
                e.store(d, Ordering::Relaxed);
                d += step;
                i += 1;
            }
            if i > 0 {
                if self.clean_leaves {
                    self.clean_entries(table, idx, i)?;
                }
                *done += (i as u64) << shift;
            }
        }
        while i < n {
            let j = i + run[i..]
                .iter()
                .position(|e| e.load(Ordering::Relaxed) != 0)
                .unwrap_or(n - i);
            if j > i {
                let pa_i = pa + ((i as u64) << shift);
                self.write_leaves(table, idx + i, idx + j, pa_i, level, attrs, contig)?;
                *done += ((j - i) as u64) << shift;
            }
            if j == n {
                break;
            }
            let iova_j = iova.wrapping_add((j as u64) << shift);
            let e = &run[j];
            let d = e.load(Ordering::Acquire);
            if !is_table(d, level) || !self.subtree_is_empty(self.desc_to_pa(d), level + 1) {
                return Err(Error::Exists(iova_j));
            }
            // Break-before-make: table -> invalid -> (next round) block.
            if e.compare_exchange(d, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(Error::Exists(iova_j));
            }
            let flushed = self
                .clean_if_needed(table, idx + j, 1)
                .map_err(Error::from)
                .and_then(|()| {
                    self.env
                        .flush_walk(iova_j, 1 << shift, self.granule())
                        .map_err(Error::from)
                });
            if let Err(err) = flushed {
                // Put the (empty) table back: nothing changed.
                e.store(d, Ordering::Release);
                let _ = self.clean_if_needed(table, idx + j, 1);
                return Err(err);
            }
            self.retire(self.desc_to_pa(d), level + 1);
            i = j;
        }
        Ok(())
    }

    /// The hot loop: stores a run of leaves, with the contiguous bit on the
    /// complete aligned groups when asked, then cleans the run once.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn write_leaves(
        &self,
        table: u64,
        from: usize,
        to: usize,
        pa: u64,
        level: usize,
        attrs: u64,
        contig: bool,
    ) -> Result<(), CacheError> {
        let shift = self.shift(level);
        let (mut c0, mut c1) = (to, to);
        if contig {
            let c = self.cfg.granule.contig_entries(level) as usize;
            if ((pa >> shift) as usize ^ from) & (c - 1) == 0 {
                let lo = (from + c - 1) & !(c - 1);
                let hi = to & !(c - 1);
                if lo < hi {
                    (c0, c1) = (lo, hi);
                }
            }
        }
        let run = &self.slice(table, level)[from..to];
        if self.pa52 {
            for (k, e) in (from..).zip(run) {
                let bit = if (c0..c1).contains(&k) { CONTIG } else { 0 };
                e.store(
                    self.pa_to_desc(pa + (((k - from) as u64) << shift)) | attrs | bit,
                    Ordering::Relaxed,
                );
            }
        } else {
            let step = 1u64 << shift;
            let mut d = self.pa_to_desc(pa) | attrs;
            let (head, rest) = run.split_at(c0 - from);
            let (mid, tail) = rest.split_at(c1 - c0);
            for e in head {
                e.store(d, Ordering::Relaxed);
                d += step;
            }
            for e in mid {
                e.store(d | CONTIG, Ordering::Relaxed);
                d += step;
            }
            for e in tail {
                e.store(d, Ordering::Relaxed);
                d += step;
            }
        }
        if self.clean_leaves {
            self.clean_entries(table, from, to - from)?;
        }
        Ok(())
    }

    /// Returns whether no valid leaf hangs below `table` (at `level`).
    pub(super) fn subtree_is_empty(&self, table: u64, level: usize) -> bool {
        (0..self.entries_in_sub(level)).all(|k| {
            let d = self.entry(table, k).load(Ordering::Acquire);
            if is_table(d, level) {
                self.subtree_is_empty(self.desc_to_pa(d), level + 1)
            } else {
                d & layout::VALID == 0
            }
        })
    }
}
