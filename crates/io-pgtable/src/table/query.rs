//! Queries and range visits: translate, walk, deferred sync, dirty state.

use crate::sync::Ordering;

use super::{PageTable, Walk, WalkStep, is_leaf, is_table};
use crate::config::{Quirks, Stage, WalkCoherency};
use crate::env::PtEnv;
use crate::error::Error;
use crate::layout::s1;

impl<E: PtEnv> PageTable<E> {
    /// Returns the physical address `iova` translates to, or `None`.
    pub fn translate(&self, iova: u64) -> Option<u64> {
        let (va, _) = self.normalize(iova).ok()?;
        let mut table = self.root.phys;
        for l in self.geo.start_level..4 {
            let d = self.entry(table, self.index(va, l)).load(Ordering::Acquire);
            if is_table(d, l) {
                table = self.desc_to_pa(d);
            } else if is_leaf(d, l) {
                let off = va & ((1u64 << self.shift(l)) - 1);
                return Some(self.desc_to_pa(d) | off);
            } else {
                return None;
            }
        }
        None
    }

    /// Returns the descriptors met walking `iova` (for debugging and tests).
    pub fn walk(&self, iova: u64) -> Walk {
        let mut w = Walk::default();
        let Ok((va, _)) = self.normalize(iova) else {
            return w;
        };
        let mut table = self.root.phys;
        for l in self.geo.start_level..4 {
            let idx = self.index(va, l);
            let d = self.entry(table, idx).load(Ordering::Acquire);
            w.steps[w.len] = WalkStep {
                level: l as u8,
                desc: d,
                desc_phys: table + 8 * idx as u64,
            };
            w.len += 1;
            if !is_table(d, l) {
                break;
            }
            table = self.desc_to_pa(d);
        }
        w
    }

    /// Visits every table overlapping `[lo, hi]` (normalized, inclusive):
    /// `f(table, level, from, to, iova of entry from)`.
    fn visit(
        &self,
        table: u64,
        level: usize,
        lo: u64,
        hi: u64,
        f: &mut impl FnMut(u64, usize, usize, usize, u64) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let shift = self.shift(level);
        let from = self.index(lo, level);
        let to = self.index(hi, level) + 1;
        let va_from = lo & !((1u64 << shift) - 1);
        f(table, level, from, to, va_from)?;
        if level < 3 {
            for k in from..to {
                let d = self.entry(table, k).load(Ordering::Acquire);
                if is_table(d, level) {
                    let va_k = va_from + (((k - from) as u64) << shift);
                    let clo = lo.max(va_k);
                    let chi = hi.min(va_k + ((1u64 << shift) - 1));
                    self.visit(self.desc_to_pa(d), level + 1, clo, chi, f)?;
                }
            }
        }
        Ok(())
    }

    fn check_span(&self, iova: u64, size: u64) -> Result<(u64, u64, u64), Error> {
        let (lo, hi) = self.normalize(iova)?;
        let end = lo.checked_add(size).ok_or(Error::Overflow)?;
        if end - 1 > self.ias_mask {
            return Err(Error::IovaOutOfRange(iova));
        }
        Ok((lo, end - 1, hi))
    }

    /// Makes the leaf writes of earlier `map` calls on `[iova, iova + size)`
    /// visible to the device: call it after a map (or a batch of maps) and
    /// before the device may use the IOVAs, in every coherency mode.
    ///
    /// With [`WalkCoherency::Deferred`] it cleans each cache line holding
    /// leaf entries of the range once (per table, adjacent lines merged
    /// into one clean; stops at the first error). In every mode it then
    /// issues [`crate::env::CacheMaintenance::device_write_barrier`], which
    /// orders the leaf stores before whatever store next tells a device to
    /// use them (a doorbell, a queue entry).
    ///
    /// # Errors
    ///
    /// [`Error::IovaOutOfRange`] / [`Error::Overflow`] for a bad range,
    /// [`Error::Cache`] from the environment.
    pub fn sync_map(&self, iova: u64, size: u64) -> Result<(), Error> {
        if size != 0 {
            self.clean_mapped(iova, size)?;
        }
        self.env.device_write_barrier();
        Ok(())
    }

    /// The cleaning half of [`PageTable::sync_map`].
    fn clean_mapped(&self, iova: u64, size: u64) -> Result<(), Error> {
        let (lo, hi, _) = self.check_span(iova, size)?;
        if self.cfg.coherency != WalkCoherency::Deferred {
            return Ok(());
        }
        let mut clean = |table: u64, level: usize, from: usize, to: usize, _va: u64| {
            // Lines are runs of 8 entries (tables are 64-byte aligned); a
            // line is cleaned if it holds a leaf of the range, and adjacent
            // such lines are merged into one call.
            let entries = self.slice(table, level);
            let mut run: Option<(usize, usize)> = None;
            for line in (from >> 3)..=((to - 1) >> 3) {
                let lo = (line << 3).max(from);
                let hi = ((line << 3) + 8).min(to);
                if !entries[lo..hi]
                    .iter()
                    .any(|e| is_leaf(e.load(Ordering::Relaxed), level))
                {
                    continue;
                }
                run = match run {
                    Some((a, b)) if line == b + 1 => Some((a, line)),
                    Some((a, b)) => {
                        self.clean_entries(table, a << 3, (b - a + 1) << 3)?;
                        Some((line, line))
                    }
                    None => Some((line, line)),
                };
            }
            if let Some((a, b)) = run {
                self.clean_entries(table, a << 3, (b - a + 1) << 3)?;
            }
            Ok(())
        };
        self.visit(self.root.phys, self.geo.start_level, lo, hi, &mut clean)
    }

    /// Reports the leaves of `[iova, iova + size)` the device wrote since
    /// the last call (stage 1 with [`Quirks::HD`]: DBM set and AP\[2\]
    /// clear), calling `record(iova, leaf size)` for each, and with `clear`
    /// makes them writable-clean again (AP\[2\] set). Newly mapped writable
    /// leaves start dirty, so that writes work even before the driver
    /// enables hardware dirty updates.
    ///
    /// The caller must invalidate the TLB for the range after clearing,
    /// otherwise the device keeps writing through cached dirty entries.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] without stage 1 + HD; range errors as
    /// [`PageTable::sync_map`]; [`Error::Cache`].
    pub fn read_and_clear_dirty(
        &self,
        iova: u64,
        size: u64,
        clear: bool,
        mut record: impl FnMut(u64, u64),
    ) -> Result<(), Error> {
        if self.cfg.stage != Stage::Stage1 || !self.cfg.quirks.contains(Quirks::HD) {
            return Err(Error::Unsupported(
                "dirty tracking needs stage 1 with the HD quirk",
            ));
        }
        if size == 0 {
            return Ok(());
        }
        let (lo, hi, sext) = self.check_span(iova, size)?;
        let mut scan = |table: u64, level: usize, from: usize, to: usize, va: u64| {
            let shift = self.shift(level);
            for k in from..to {
                let e = self.entry(table, k);
                let d = e.load(Ordering::Acquire);
                let dirty = is_leaf(d, level) && d & (s1::DBM | s1::AP_RDONLY) == s1::DBM;
                if !dirty {
                    continue;
                }
                let va_k = va + (((k - from) as u64) << shift);
                record(va_k | sext, 1 << shift);
                if clear {
                    // Compare-exchange: the device may update it at any time.
                    let _ = e.fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
                        (is_leaf(x, level) && x & s1::DBM != 0).then_some(x | s1::AP_RDONLY)
                    });
                    if self.noncoherent {
                        self.clean_entries(table, k, 1)?;
                    }
                }
            }
            Ok(())
        };
        self.visit(self.root.phys, self.geo.start_level, lo, hi, &mut scan)
    }
}
