//! The page table itself: lock-free map/unmap, translate, walk, dirty
//! tracking, deferred sync and reclamation.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::config::{self, Config, Geometry, Prot, Quirks, Regs, Stage, WalkCoherency};
use crate::env::{CacheError, Gather, PtEnv, TableBlock};
use crate::error::{Error, Partial};
use crate::layout::{self, AF, CONTIG, SH_INNER, SH_OUTER, SH_SHIFT, SW_SYNCED, s1, s2};

/// Low bits of a retired-list link word (bit 0 clear: an invalid descriptor
/// to anyone still walking the retired table).
const LINK_TAG: u64 = 0b10;
/// The end of the retired list.
const LINK_END: u64 = 0b110;
/// Bits of a link word that are not the address (tables are 64-byte aligned).
const LINK_LOW: u64 = 0x3f;

/// The `Prot` bits that change leaf attributes (all but CONTIG).
const ATTR_PROT_MASK: u32 = 0x3f;

/// Largest contiguous-hint group (16K granule, level 3).
const MAX_CONTIG: usize = 128;

/// One descriptor met by [`PageTable::walk`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStep {
    /// Level of the table holding the descriptor (0..=3).
    pub level: u8,
    /// The descriptor as the CPU sees it.
    pub desc: u64,
    /// Physical address of the descriptor.
    pub desc_phys: u64,
}

/// The descriptors met walking one IOVA, start level first; the last one is
/// a leaf or an invalid entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    steps: [WalkStep; 4],
    len: usize,
}

impl Walk {
    /// Returns the descriptors, start level first.
    pub fn steps(&self) -> &[WalkStep] {
        &self.steps[..self.len]
    }
}

/// A VMSAv8-64 stage-1 or stage-2 IO page table; see the crate docs.
pub struct PageTable<E: PtEnv> {
    env: E,
    cfg: Config,
    geo: Geometry,
    root: TableBlock,
    /// Output address bits of a descriptor (47:granule shift).
    addr_mask: u64,
    /// 52-bit output: PA\[51:48\] in descriptor bits 15:12.
    pa52: bool,
    /// `2^ias - 1`.
    ias_mask: u64,
    /// Any cache maintenance at all (non-coherent or deferred).
    noncoherent: bool,
    /// Leaf writes cleaned in `map` (non-coherent, not deferred).
    clean_leaves: bool,
    /// NSTable for table descriptors (NS quirk).
    table_attrs: u64,
    /// Head of the push-only list of retired tables (a link word).
    retired: AtomicU64,
    /// Leaf attribute bits per `Prot` (without CONTIG); 0 = no access.
    attrs: [u64; ATTR_PROT_MASK as usize + 1],
}

// SAFETY: the table memory is only ever accessed through atomics, from any
// thread; `root` is a plain address pair owned by this value; retired tables
// are freed only through `&mut self` or drop. So sharing `&PageTable` is as
// safe as sharing `&E`, and moving it is as safe as moving `E`.
unsafe impl<E: PtEnv + Send> Send for PageTable<E> {}
// SAFETY: as above; every `&self` method is written for concurrent callers.
unsafe impl<E: PtEnv + Sync> Sync for PageTable<E> {}

impl<E: PtEnv> core::fmt::Debug for PageTable<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageTable")
            .field("cfg", &self.cfg)
            .field("root", &format_args!("{:#x}", self.root.phys))
            .finish_non_exhaustive()
    }
}

#[inline(always)]
fn is_table(d: u64, level: usize) -> bool {
    level < 3 && d & 3 == 3
}

#[inline(always)]
fn is_leaf(d: u64, level: usize) -> bool {
    d & 3 == if level == 3 { 3 } else { 1 }
}

impl<E: PtEnv> PageTable<E> {
    /// Returns an empty table for `cfg`, its start-level table allocated
    /// (and cleaned for a non-coherent walker) from `env`.
    ///
    /// # Errors
    ///
    /// [`Error::BadConfig`] for a configuration the architecture forbids,
    /// [`Error::Alloc`] or [`Error::Cache`] from the environment.
    pub fn new(cfg: Config, env: E) -> Result<Self, Error> {
        let geo = Geometry::new(&cfg)?;
        let root = env.alloc_table(geo.pgd_size)?;
        let noncoherent = cfg.coherency != WalkCoherency::Coherent;
        if noncoherent {
            if let Err(e) = env.clean(root.cpu, root.phys, geo.pgd_size) {
                // SAFETY: allocated just above, never published.
                unsafe { env.free_table(root, geo.pgd_size) };
                return Err(e.into());
            }
        }
        let table_attrs = if cfg.quirks.contains(Quirks::NS) {
            s1::NS_TABLE
        } else {
            0
        };
        Ok(Self {
            env,
            cfg,
            addr_mask: layout::ADDR_MASK_48 & !((1u64 << geo.shift) - 1),
            pa52: cfg.oas == 52,
            ias_mask: (1u64 << cfg.ias) - 1,
            noncoherent,
            clean_leaves: cfg.coherency == WalkCoherency::NonCoherent,
            table_attrs,
            geo,
            root,
            retired: AtomicU64::new(LINK_END),
            attrs: core::array::from_fn(|i| {
                Self::attrs_for(&cfg, Prot::from_bits_truncate(i as u32))
            }),
        })
    }

    /// Returns the configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Returns the derived geometry (levels, page sizes, concatenation).
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Returns the bit set of supported page sizes.
    pub fn pgsize_bitmap(&self) -> u64 {
        self.geo.pgsize_bitmap
    }

    /// Returns the environment.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// Returns the physical address of the start-level table.
    pub fn root_phys(&self) -> u64 {
        self.root.phys
    }

    /// Returns the register values a driver programs for this table.
    pub fn regs(&self) -> Regs {
        config::regs(&self.cfg, &self.geo, self.root.phys)
    }

    // ---- descriptor helpers ------------------------------------------

    #[inline(always)]
    fn granule(&self) -> u64 {
        1 << self.geo.shift
    }

    #[inline(always)]
    fn desc_to_pa(&self, d: u64) -> u64 {
        let pa = d & self.addr_mask;
        if self.pa52 {
            pa | ((d & layout::PA_HI_MASK_52) << layout::PA_HI_SHIFT_52)
        } else {
            pa
        }
    }

    #[inline(always)]
    fn pa_to_desc(&self, pa: u64) -> u64 {
        let d = pa & self.addr_mask;
        if self.pa52 {
            d | ((pa >> layout::PA_HI_SHIFT_52) & layout::PA_HI_MASK_52)
        } else {
            d
        }
    }

    #[inline(always)]
    fn index(&self, va: u64, level: usize) -> usize {
        ((va >> self.geo.level_shift[level]) & self.geo.index_mask[level]) as usize
    }

    #[inline(always)]
    fn entries_in(&self, level: usize) -> usize {
        self.geo.index_mask[level] as usize + 1
    }

    #[inline(always)]
    fn base(&self, table: u64) -> *const AtomicU64 {
        self.env.phys_to_cpu(table).as_ptr().cast::<AtomicU64>()
    }

    /// Returns entry `idx` of the table at `table`.
    #[inline(always)]
    fn entry(&self, table: u64, idx: usize) -> &AtomicU64 {
        // SAFETY: `table` is the physical address of a live table of this
        // PageTable (root, or read from a table descriptor we wrote; tables
        // are freed only via `&mut self`), and `idx` is below its entry
        // count (index() masks with the level's index mask). The memory is
        // 8-byte aligned, valid for the borrow of `self`, and only accessed
        // atomically (TableMemory contract).
        unsafe { &*self.base(table).add(idx) }
    }

    /// Returns the entries of the table at `table`, a table of `level`.
    #[inline(always)]
    fn slice(&self, table: u64, level: usize) -> &[AtomicU64] {
        // SAFETY: as in `entry`: a live table of this PageTable at `level`,
        // holding `entries_in(level)` naturally aligned 64-bit entries that
        // are only accessed atomically, valid while `self` is borrowed.
        unsafe { core::slice::from_raw_parts(self.base(table), self.entries_in(level)) }
    }

    fn clean_entries(&self, table: u64, idx: usize, n: usize) -> Result<(), CacheError> {
        let off = idx * 8;
        let cpu = self.env.phys_to_cpu(table + off as u64);
        self.env.clean(cpu, table + off as u64, n * 8)
    }

    /// Returns the attribute and type bits of a leaf at `level`.
    #[inline(always)]
    fn leaf_attrs(&self, prot: Prot, level: usize) -> Result<u64, Error> {
        let a = self.attrs[(prot.bits() & ATTR_PROT_MASK) as usize];
        if a == 0 {
            return Err(Error::NoPermission);
        }
        Ok(a | if level == 3 { 3 } else { 1 })
    }

    /// Returns the attribute bits of leaves mapped with `prot` (0 when
    /// `prot` grants no access).
    fn attrs_for(cfg: &Config, prot: Prot) -> u64 {
        if !prot.intersects(Prot::READ | Prot::WRITE) {
            return 0;
        }
        let sh = if prot.contains(Prot::CACHE) && !prot.contains(Prot::MMIO) {
            SH_INNER
        } else {
            SH_OUTER
        };
        let mut d = AF | (sh << SH_SHIFT);
        match cfg.stage {
            Stage::Stage1 => {
                d |= s1::NG;
                if !prot.contains(Prot::WRITE) {
                    d |= s1::AP_RDONLY;
                } else if cfg.quirks.contains(Quirks::HD) {
                    d |= s1::DBM;
                }
                if !prot.contains(Prot::PRIV) {
                    d |= s1::AP_UNPRIV;
                }
                let idx = if prot.contains(Prot::MMIO) {
                    layout::MAIR_IDX_DEVICE
                } else if prot.contains(Prot::CACHE) {
                    layout::MAIR_IDX_CACHE
                } else {
                    layout::MAIR_IDX_NC
                };
                d |= idx << s1::ATTR_INDX_SHIFT;
                if prot.contains(Prot::NOEXEC) {
                    d |= s1::UXN | s1::PXN;
                }
                if cfg.quirks.contains(Quirks::NS) {
                    d |= s1::NS;
                }
            }
            Stage::Stage2 => {
                if prot.contains(Prot::READ) {
                    d |= s2::S2AP_READ;
                }
                if prot.contains(Prot::WRITE) {
                    d |= s2::S2AP_WRITE;
                }
                let attr = if prot.contains(Prot::MMIO) {
                    s2::MEMATTR_DEVICE_NGNRE
                } else if prot.contains(Prot::CACHE) {
                    if cfg.quirks.contains(Quirks::S2FWB) {
                        s2::MEMATTR_FWB_WB
                    } else {
                        s2::MEMATTR_WB
                    }
                } else {
                    s2::MEMATTR_NC
                };
                d |= attr << s2::MEMATTR_SHIFT;
                if prot.contains(Prot::NOEXEC) {
                    d |= s2::XN;
                }
            }
        }
        d
    }

    /// Returns `(iova within ias, sign-extension bits)`.
    #[inline]
    fn normalize(&self, iova: u64) -> Result<(u64, u64), Error> {
        let hi = if self.cfg.quirks.contains(Quirks::TTBR1) {
            !self.ias_mask
        } else {
            0
        };
        if iova & !self.ias_mask != hi {
            return Err(Error::IovaOutOfRange(iova));
        }
        Ok((iova & self.ias_mask, hi))
    }

    /// Validates an (iova, pgsize, pgcount) request; returns the normalized
    /// iova, its sign-extension bits, the leaf level and the byte size.
    #[inline]
    fn check(&self, iova: u64, pgsize: u64, pgcount: u64) -> Result<(u64, u64, usize, u64), Error> {
        if pgcount == 0 {
            return Err(Error::ZeroCount);
        }
        if !pgsize.is_power_of_two() || pgsize & self.geo.pgsize_bitmap == 0 {
            return Err(Error::BadPageSize(pgsize));
        }
        let (va, hi) = self.normalize(iova)?;
        if va & (pgsize - 1) != 0 {
            return Err(Error::UnalignedIova(iova));
        }
        let size = pgsize.checked_mul(pgcount).ok_or(Error::Overflow)?;
        let end = va.checked_add(size).ok_or(Error::Overflow)?;
        if end - 1 > self.ias_mask {
            return Err(Error::IovaOutOfRange(iova));
        }
        let level = self
            .geo
            .level_of_shift(pgsize.trailing_zeros())
            .ok_or(Error::BadPageSize(pgsize))?;
        Ok((va, hi, level, size))
    }

    // ---- map ----------------------------------------------------------

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
        let shift = self.geo.level_shift[level];
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
    fn for_each_chunk(
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
            }
            if !is_table(d, l) {
                return Err(Error::Exists(iova));
            }
            if self.noncoherent && d & SW_SYNCED == 0 {
                self.sync_table_desc(table, idx, d)?;
            }
            table = self.desc_to_pa(d);
        }
        Ok(table)
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
        let mut desc = self.pa_to_desc(blk.phys) | 3 | self.table_attrs;
        if !self.noncoherent {
            desc |= SW_SYNCED;
        }
        let e = self.entry(table, idx);
        self.env.publish_barrier();
        match e.compare_exchange(0, desc, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                if self.noncoherent {
                    self.sync_table_desc(table, idx, desc)?;
                }
                Ok(desc | SW_SYNCED)
            }
            Err(cur) => {
                // SAFETY: the compare-exchange failed, so nobody ever saw it.
                unsafe { self.env.free_table(blk, size) };
                Ok(cur)
            }
        }
    }

    /// Cleans a table descriptor and records that it was (software bit), so
    /// later mappers need not clean it again.
    ///
    /// The bit is set only after the clean, so a racing mapper that sees it
    /// knows the walker can reach the table. Whoever sets it cleans the
    /// line once more: the walker ignores the bit, but leaving memory that
    /// differs from what the device sees would hide real missing cleans
    /// from a checker comparing the two views.
    fn sync_table_desc(&self, table: u64, idx: usize, d: u64) -> Result<(), Error> {
        self.clean_entries(table, idx, 1)?;
        let marked = self.entry(table, idx).compare_exchange(
            d,
            d | SW_SYNCED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        if marked.is_ok() {
            self.clean_entries(table, idx, 1)?;
        }
        Ok(())
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
        let shift = self.geo.level_shift[level];
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
            if self.noncoherent {
                self.clean_entries(table, idx + j, 1)?;
            }
            self.env.flush_walk(iova_j, 1 << shift, self.granule());
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
        let shift = self.geo.level_shift[level];
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
    fn subtree_is_empty(&self, table: u64, level: usize) -> bool {
        (0..self.entries_in_sub(level)).all(|k| {
            let d = self.entry(table, k).load(Ordering::Acquire);
            if is_table(d, level) {
                self.subtree_is_empty(self.desc_to_pa(d), level + 1)
            } else {
                d & 1 == 0
            }
        })
    }

    /// Entries of a non-root table at `level` (always one granule).
    #[inline(always)]
    fn entries_in_sub(&self, _level: usize) -> usize {
        1 << self.geo.bits_per_level
    }

    // ---- unmap --------------------------------------------------------

    /// Unmaps `pgcount` pages of `pgsize` bytes from `iova`, adding the
    /// unmapped range to `gather` through [`crate::env::TlbHooks::add_pages`]
    /// (once per run of entries in one table).
    ///
    /// Returns the bytes unmapped; it stops early (returning less) at the
    /// first `pgsize` entry under which nothing is mapped (an empty table
    /// left by earlier unmaps counts as nothing).
    ///
    /// * Unmapping a `pgsize` entry that is a table (mapped with smaller
    ///   pages) unmaps the whole table: it is disconnected, its walk cached
    ///   entries flushed ([`crate::env::TlbHooks::flush_walk`]) and retired.
    /// * Unmapping part of a block **splits** it: a table of the next level
    ///   holding the same mapping is built and cleaned, then the block is
    ///   replaced with break-before-make (invalid, clean, synchronous
    ///   `flush_walk`, table), then the requested part is unmapped. DMA to
    ///   the rest of the block faults during that window.
    /// * Unmapping part of a contiguous-hint group rewrites the rest of the
    ///   group without the hint (break-before-make as above).
    ///
    /// For a non-coherent walker the cleared entries are cleaned before the
    /// pages are added to the gather.
    ///
    /// The gather's page size is the `pgsize` of the call even where a whole
    /// table of smaller pages was removed; those were already invalidated
    /// (leaf and walk entries) by the synchronous `flush_walk`, so a driver
    /// may use the gather's page size as a leaf-level (TTL) hint.
    ///
    /// # Errors
    ///
    /// [`Partial`] with the bytes unmapped before the error: bad input as
    /// for [`PageTable::map`]; [`Error::Alloc`] when a split needs a table
    /// and none is available; [`Error::Cache`].
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
        let shift = self.geo.level_shift[level];
        let end = va + size;
        let mut done = 0u64;
        'outer: while va < end {
            let mut table = self.root.phys;
            let mut l = self.geo.start_level;
            while l < level {
                let idx = self.index(va, l);
                let d = self.entry(table, idx).load(Ordering::Acquire);
                if is_table(d, l) {
                    if self.noncoherent && d & SW_SYNCED == 0 {
                        self.sync_table_desc(table, idx, d)
                            .map_err(|e| Partial::at(done, e))?;
                    }
                    table = self.desc_to_pa(d);
                    l += 1;
                } else if is_leaf(d, l) {
                    let block_va = va & !((1u64 << self.geo.level_shift[l]) - 1);
                    self.split_block(table, idx, d, l, block_va | hi)
                        .map_err(|e| Partial::at(done, e))?;
                } else {
                    break 'outer;
                }
            }
            let idx = self.index(va, level);
            let n = (((end - va) >> shift) as usize).min(self.entries_in(level) - idx);
            let k = self
                .clear_run(table, idx, n, va | hi, level, gather)
                .map_err(|e| Partial::at(done, e))?;
            done += (k as u64) << shift;
            va += (k as u64) << shift;
            if k < n {
                break;
            }
        }
        Ok(done as usize)
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
    fn clear_run(
        &self,
        table: u64,
        idx: usize,
        n: usize,
        iova: u64,
        level: usize,
        gather: &mut Gather,
    ) -> Result<usize, Error> {
        let shift = self.geo.level_shift[level];
        let run = &self.slice(table, level)[idx..idx + n];
        // Contiguous groups cut by the ends of the range lose the hint
        // first. Groups are always complete, so only the groups holding the
        // first and the last requested entries can be cut.
        let c = self.cfg.granule.contig_entries(level) as usize;
        let first = run[0].load(Ordering::Relaxed);
        if first & CONTIG != 0 && is_leaf(first, level) && idx & (c - 1) != 0 {
            self.uncontig_group(table, idx, level, iova)?;
        }
        let last = run[n - 1].load(Ordering::Relaxed);
        if last & CONTIG != 0 && is_leaf(last, level) && (idx + n) & (c - 1) != 0 {
            let va_last = iova.wrapping_add(((n - 1) as u64) << shift);
            self.uncontig_group(table, idx + n - 1, level, va_last)?;
        }
        let mut k = 0;
        if level == 3 {
            // No tables at the last level: check and clear in one pass, a
            // cache line (8 entries) at a time.
            while k + 8 <= n {
                let line = &run[k..k + 8];
                if line.iter().fold(3, |a, e| a & e.load(Ordering::Relaxed)) & 3 != 3 {
                    break;
                }
                for e in line {
                    e.store(0, Ordering::Relaxed);
                }
                k += 8;
            }
            for e in &run[k..] {
                if !is_leaf(e.load(Ordering::Relaxed), 3) {
                    break;
                }
                e.store(0, Ordering::Relaxed);
                k += 1;
            }
        } else {
            for (j, e) in run.iter().enumerate() {
                let d = e.load(Ordering::Acquire);
                if is_leaf(d, level) {
                    e.store(0, Ordering::Relaxed);
                } else if is_table(d, level)
                    && !self.subtree_is_empty(self.desc_to_pa(d), level + 1)
                {
                    // Unmapping a size over a table removes all below it.
                    let old = e.swap(0, Ordering::AcqRel);
                    if is_table(old, level) {
                        if self.noncoherent {
                            self.clean_entries(table, idx + j, 1)?;
                        }
                        let va_j = iova.wrapping_add((j as u64) << shift);
                        self.env.flush_walk(va_j, 1 << shift, self.granule());
                        self.retire(self.desc_to_pa(old), level + 1);
                    }
                } else {
                    // Nothing mapped here (an empty table counts as nothing:
                    // it stays, a later block map replaces it).
                    break;
                }
                k += 1;
            }
        }
        if k == 0 {
            return Ok(0);
        }
        if self.noncoherent {
            self.clean_entries(table, idx, k)?;
        }
        // The gather covers the whole unmapped range, tables included, so
        // one driver sync after unmap always suffices.
        self.env.add_pages(gather, iova, 1 << shift, k as u64);
        Ok(k)
    }

    /// Rewrites the contiguous group holding entry `idx` without the
    /// contiguous bit (break-before-make).
    fn uncontig_group(&self, table: u64, idx: usize, level: usize, iova: u64) -> Result<(), Error> {
        let shift = self.geo.level_shift[level];
        let c = self.cfg.granule.contig_entries(level) as usize;
        let g0 = idx & !(c - 1);
        let group_va = iova.wrapping_sub(((idx - g0) as u64) << shift);
        let mut saved = [0u64; MAX_CONTIG];
        for (k, s) in saved.iter_mut().enumerate().take(c) {
            *s = self.entry(table, g0 + k).swap(0, Ordering::AcqRel);
        }
        if self.noncoherent {
            self.clean_entries(table, g0, c)?;
        }
        self.env
            .flush_walk(group_va, (c as u64) << shift, self.granule());
        for (k, s) in saved.iter().enumerate().take(c) {
            if s & 1 != 0 {
                self.entry(table, g0 + k)
                    .store(s & !CONTIG, Ordering::Release);
            }
        }
        if self.noncoherent {
            self.clean_entries(table, g0, c)?;
        }
        Ok(())
    }

    /// Replaces block `d` in entry `idx` of `table` (at `level`) by a table
    /// of the next level mapping the same range (break-before-make).
    fn split_block(
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
        let cshift = self.geo.level_shift[cl];
        let mut attrs = d & !(self.addr_mask | 3 | CONTIG);
        if self.pa52 {
            attrs &= !layout::PA_HI_MASK_52;
        }
        let ty = if cl == 3 { 3 } else { 1 };
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
        let e = self.entry(table, idx);
        if e.compare_exchange(d, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: never published.
            unsafe { self.env.free_table(child, size) };
            return Ok(());
        }
        if self.noncoherent {
            self.clean_entries(table, idx, 1)?;
        }
        self.env
            .flush_walk(block_va, 1 << self.geo.level_shift[level], self.granule());
        let td = self.pa_to_desc(child.phys) | 3 | self.table_attrs | SW_SYNCED;
        self.env.publish_barrier();
        e.store(td, Ordering::Release);
        if self.noncoherent {
            self.clean_entries(table, idx, 1)?;
        }
        Ok(())
    }

    // ---- reclamation ---------------------------------------------------

    /// Retires a disconnected table (and the tables below it): zeroes it so
    /// racing walkers read only invalid entries, and pushes it on the
    /// retired list with the link in word 0.
    fn retire(&self, table: u64, level: usize) {
        for k in 0..self.entries_in_sub(level) {
            let old = self.entry(table, k).swap(0, Ordering::AcqRel);
            if is_table(old, level) {
                self.retire(self.desc_to_pa(old), level + 1);
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
            // is one granule), disconnected before it was retired, is on the
            // list exactly once (one thread won its disconnection), and
            // `&mut self` proves no walk can still read it.
            unsafe { self.env.free_table(TableBlock { cpu, phys: table }, size) };
            n += 1;
        }
        n
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

    // ---- queries ------------------------------------------------------

    /// Returns the physical address `iova` translates to, or `None`.
    pub fn translate(&self, iova: u64) -> Option<u64> {
        let (va, _) = self.normalize(iova).ok()?;
        let mut table = self.root.phys;
        for l in self.geo.start_level..4 {
            let d = self.entry(table, self.index(va, l)).load(Ordering::Acquire);
            if is_table(d, l) {
                table = self.desc_to_pa(d);
            } else if is_leaf(d, l) {
                let off = va & ((1u64 << self.geo.level_shift[l]) - 1);
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
        let shift = self.geo.level_shift[level];
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
    /// visible to a non-coherent walker ([`WalkCoherency::Deferred`]).
    ///
    /// Cleans each cache line holding leaf entries of the range once:
    /// per table, adjacent lines are merged into one clean. Stops at the
    /// first error. Does nothing for other coherency modes (their leaves
    /// were cleaned in `map` or need no cleaning).
    ///
    /// # Errors
    ///
    /// [`Error::IovaOutOfRange`] / [`Error::Overflow`] for a bad range,
    /// [`Error::Cache`] from the environment.
    pub fn sync_map(&self, iova: u64, size: u64) -> Result<(), Error> {
        if size == 0 {
            return Ok(());
        }
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
            let shift = self.geo.level_shift[level];
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
