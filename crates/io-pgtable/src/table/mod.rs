//! The page table itself. One concept per file:
//!
//! * this file: the table, its descriptors and the checks every operation
//!   shares;
//! * [`map`](self::map): map, table install, leaf writes;
//! * [`unmap`](self::unmap): unmap, whole-table removal;
//! * [`split`](self::split): block split and contiguous-run rewrite;
//! * [`retire`](self::retire): retired tables, reclaim, compaction, drop;
//! * [`query`](self::query): translate, walk, deferred sync, dirty state.

use crate::sync::{AtomicU64, AtomicUsize};

use crate::config::{self, Config, Geometry, Prot, Quirks, Regs, Stage, WalkCoherency};
use crate::env::{CacheError, PtEnv, TableBlock};
use crate::error::Error;
use crate::layout::{self, AF, SH_INNER, SH_OUTER, SH_SHIFT, s1, s2};

mod map;
mod query;
mod retire;
mod split;
mod unmap;

/// Low bits of a retired-list link word (bit 0 clear: an invalid descriptor
/// to anyone still walking the retired table).
const LINK_TAG: u64 = 0b10;
/// The end of the retired list.
const LINK_END: u64 = 0b110;
/// Bits of a link word that are not the address (tables are 64-byte aligned).
const LINK_LOW: u64 = 0x3f;

/// `level_of` entry of a shift that is no page size.
const NO_LEVEL: u8 = u8::MAX;

/// The `Prot` bits that change leaf attributes (all but CONTIG).
const ATTR_PROT_MASK: u32 = 0x3f;

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
    /// Descriptor bits holding PA\[51:48\] (0 unless `pa52`), so the
    /// conversions need no branch.
    pa_hi_mask: u64,
    /// `level_shift` and `index_mask` of the geometry, copied here and
    /// indexed with `level & 3` so the hot paths have no bounds checks.
    shift_of: [u32; 4],
    mask_of: [u64; 4],
    /// Leaf level of each page-size shift (`NO_LEVEL` where none).
    level_of: [u8; 64],
    /// `2^ias - 1`.
    ias_mask: u64,
    /// Sign-extension bits of every IOVA (all ones above `ias` for TTBR1).
    upper: u64,
    /// Any cache maintenance at all (non-coherent or deferred).
    noncoherent: bool,
    /// Leaf writes cleaned in `map` (non-coherent, not deferred).
    clean_leaves: bool,
    /// NSTable for table descriptors (NS quirk).
    table_attrs: u64,
    /// Head of the push-only list of retired tables (a link word).
    retired: AtomicU64,
    /// Table links published but not yet cleaned (non-coherent walkers).
    /// A mapper that reads a table descriptor while this is non-zero may be
    /// looking at an uncleaned link and cleans it itself; when it is zero,
    /// every link it read was cleaned (see `map::link_table`).
    links_in_flight: AtomicUsize,
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
    level < 3 && d & layout::TYPE_MASK == layout::TYPE_TABLE
}

#[inline(always)]
fn is_leaf(d: u64, level: usize) -> bool {
    d & layout::TYPE_MASK == layout::leaf_type(level)
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
            pa_hi_mask: if cfg.oas == 52 {
                layout::PA_HI_MASK_52
            } else {
                0
            },
            shift_of: geo.level_shift,
            mask_of: geo.index_mask,
            level_of: core::array::from_fn(|s| match geo.level_of_shift(s as u32) {
                Some(l) if geo.pgsize_bitmap & (1 << s) != 0 => l as u8,
                _ => NO_LEVEL,
            }),
            ias_mask: (1u64 << cfg.ias) - 1,
            upper: if cfg.quirks.contains(Quirks::TTBR1) {
                !((1u64 << cfg.ias) - 1)
            } else {
                0
            },
            noncoherent,
            clean_leaves: cfg.coherency == WalkCoherency::NonCoherent,
            table_attrs,
            geo,
            root,
            retired: AtomicU64::new(LINK_END),
            links_in_flight: AtomicUsize::new(0),
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
        (d & self.addr_mask) | ((d & self.pa_hi_mask) << layout::PA_HI_SHIFT_52)
    }

    #[inline(always)]
    fn pa_to_desc(&self, pa: u64) -> u64 {
        (pa & self.addr_mask) | ((pa >> layout::PA_HI_SHIFT_52) & self.pa_hi_mask)
    }

    /// Returns log2 of the size an entry maps at `level`.
    #[inline(always)]
    fn shift(&self, level: usize) -> u32 {
        self.shift_of[level & 3]
    }

    #[inline(always)]
    fn index(&self, va: u64, level: usize) -> usize {
        ((va >> self.shift(level)) & self.mask_of[level & 3]) as usize
    }

    #[inline(always)]
    fn entries_in(&self, level: usize) -> usize {
        self.mask_of[level & 3] as usize + 1
    }

    #[inline(always)]
    fn block_size(&self, level: usize) -> u64 {
        1 << self.shift(level)
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

    /// Cleans entries `[idx, idx + n)` of `table` when the walker is not
    /// coherent.
    #[inline]
    fn clean_if_needed(&self, table: u64, idx: usize, n: usize) -> Result<(), CacheError> {
        if self.noncoherent {
            self.clean_entries(table, idx, n)
        } else {
            Ok(())
        }
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
        Ok(a | layout::leaf_type(level))
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

    /// Returns the sign-extension bits of every IOVA of the table.
    #[inline]
    fn upper_bits(&self) -> u64 {
        self.upper
    }

    /// Returns `(iova within ias, sign-extension bits)`.
    #[inline]
    fn normalize(&self, iova: u64) -> Result<(u64, u64), Error> {
        let hi = self.upper_bits();
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
        // Only sizes of the page-size bitmap have a level here.
        let level = self.level_of[(pgsize.trailing_zeros() & 63) as usize];
        if !pgsize.is_power_of_two() || level == NO_LEVEL {
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
        Ok((va, hi, level as usize, size))
    }

    /// Entries of a non-root table at `level` (always one granule).
    #[inline(always)]
    fn entries_in_sub(&self, _level: usize) -> usize {
        1 << self.geo.bits_per_level
    }
}
