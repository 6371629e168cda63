//! Table configuration, derived geometry and the register values a driver
//! programs.

use crate::error::Error;
use crate::layout;

bitflags::bitflags! {
    /// Access permissions and memory type of a mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// The device may read.
        const READ = 1 << 0;
        /// The device may write.
        const WRITE = 1 << 1;
        /// Instruction fetches are not allowed (XN, and PXN at stage 1).
        const NOEXEC = 1 << 2;
        /// Normal write-back cacheable memory (inner shareable).
        const CACHE = 1 << 3;
        /// Device memory (Device-nGnRE); takes precedence over `CACHE`.
        const MMIO = 1 << 4;
        /// Stage 1: privileged accesses only (AP\[1\] clear).
        const PRIV = 1 << 5;
        /// Set the contiguous hint on every aligned, complete group of
        /// entries the call writes (16 x 4K, 128 x 16K, 32 x 64K pages;
        /// 16 x 2M, 32 x 32M, 32 x 512M blocks).
        const CONTIG = 1 << 6;
    }
}

bitflags::bitflags! {
    /// Format quirks, as in Linux's io-pgtable.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Quirks: u32 {
        /// Stage 1: set NS in leaves and NSTable in table descriptors.
        const NS = 1 << 0;
        /// Stage 1: the table is for TTBR1 (upper, sign-extended IOVAs).
        const TTBR1 = 1 << 1;
        /// Stage 1: walks are outer write-back write-allocate cacheable.
        const OUTER_WBWA = 1 << 2;
        /// Stage 1: hardware dirty tracking (DBM set on writable leaves).
        const HD = 1 << 3;
        /// Stage 2: FEAT_S2FWB MemAttr encodings.
        const S2FWB = 1 << 4;
        /// Every walker of the table implements break-before-make level 2
        /// (SMMU `IDR3.BBML == 2`): a block may be replaced by a table
        /// mapping the same range (and a contiguous run rewritten without
        /// the hint) in one descriptor store, then invalidated, with no
        /// window in which the rest of the block faults.
        const BBML2 = 1 << 5;
    }
}

/// Translation stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Stage 1 (VA -> IPA/PA; SMMU context descriptor).
    Stage1,
    /// Stage 2 (IPA -> PA; SMMU stream table entry).
    Stage2,
}

/// Translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages, 2 MiB and 1 GiB blocks.
    K4,
    /// 16 KiB pages, 32 MiB blocks.
    K16,
    /// 64 KiB pages, 512 MiB blocks, and 4 TiB blocks with 52-bit output.
    K64,
}

impl Granule {
    /// Returns log2 of the granule size.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// Returns the granule size in bytes.
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Returns how many entries one contiguous-hint group holds at `level`.
    pub const fn contig_entries(self, level: usize) -> u64 {
        match (self, level) {
            (Granule::K4, _) => 16,
            (Granule::K16, 3) => 128,
            (Granule::K16, _) => 32,
            (Granule::K64, _) => 32,
        }
    }
}

/// How the device's table walker sees CPU stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WalkCoherency {
    /// The walker snoops CPU caches: no cache maintenance at all.
    Coherent,
    /// Every table and every leaf write is cleaned before `map` returns.
    NonCoherent,
    /// New tables and table descriptors are cleaned in `map`; leaf writes
    /// are cleaned later by [`crate::PageTable::sync_map`].
    Deferred,
}

/// What to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Stage 1 or stage 2.
    pub stage: Stage,
    /// Granule.
    pub granule: Granule,
    /// Input address size in bits: 32..=48, or 52 with the 64K granule.
    pub ias: u32,
    /// Output address size in bits: 32, 36, 40, 42, 44, 48, or 52 (64K).
    pub oas: u32,
    /// Walker coherency.
    pub coherency: WalkCoherency,
    /// Quirks.
    pub quirks: Quirks,
}

impl Config {
    /// Returns a coherent stage-1 configuration without quirks.
    pub const fn stage1(granule: Granule, ias: u32, oas: u32) -> Self {
        Self {
            stage: Stage::Stage1,
            granule,
            ias,
            oas,
            coherency: WalkCoherency::Coherent,
            quirks: Quirks::empty(),
        }
    }

    /// Returns a coherent stage-2 configuration without quirks.
    pub const fn stage2(granule: Granule, ias: u32, oas: u32) -> Self {
        Self {
            stage: Stage::Stage2,
            ..Self::stage1(granule, ias, oas)
        }
    }

    /// Returns `self` with walker coherency `coherency`.
    pub const fn with_coherency(mut self, coherency: WalkCoherency) -> Self {
        self.coherency = coherency;
        self
    }

    /// Returns `self` with quirks `quirks`.
    pub const fn with_quirks(mut self, quirks: Quirks) -> Self {
        self.quirks = quirks;
        self
    }
}

/// Geometry derived from a [`Config`]; all walk arithmetic is shifts and
/// masks precomputed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the granule.
    pub shift: u32,
    /// Index bits per level below the start level (`shift - 3`).
    pub bits_per_level: u32,
    /// First level walked (0..=3).
    pub start_level: usize,
    /// Index bits of the start-level table (includes concatenation).
    pub pgd_bits: u32,
    /// Number of concatenated start-level tables (1 when not concatenated).
    pub concat: u32,
    /// Bytes of the start-level table (at least 64).
    pub pgd_size: usize,
    /// Bit set of supported page and block sizes.
    pub pgsize_bitmap: u64,
    /// `level_shift[l]`: log2 of the size an entry maps at level `l`.
    pub level_shift: [u32; 4],
    /// `index_mask[l]`: mask of the index after shifting by `level_shift[l]`.
    pub index_mask: [u64; 4],
}

impl Geometry {
    /// Returns the geometry of `cfg`.
    ///
    /// # Errors
    ///
    /// [`Error::BadConfig`] for an address size, granule, quirk or
    /// concatenation the architecture forbids.
    pub fn new(cfg: &Config) -> Result<Self, Error> {
        let g = cfg.granule;
        let is_64k = g == Granule::K64;
        let ias_ok = (32..=48).contains(&cfg.ias) || (cfg.ias == 52 && is_64k);
        if !ias_ok {
            return Err(Error::BadConfig(
                "ias must be 32..=48, or 52 with the 64K granule",
            ));
        }
        if layout::ps_encoding(cfg.oas).is_none() || (cfg.oas == 52 && !is_64k) {
            return Err(Error::BadConfig(
                "oas must be 32, 36, 40, 42, 44 or 48, or 52 with the 64K granule",
            ));
        }
        let s1_only = Quirks::NS | Quirks::TTBR1 | Quirks::OUTER_WBWA | Quirks::HD;
        match cfg.stage {
            Stage::Stage1 if cfg.quirks.contains(Quirks::S2FWB) => {
                return Err(Error::BadConfig("S2FWB is a stage-2 quirk"));
            }
            Stage::Stage2 if cfg.quirks.intersects(s1_only) => {
                return Err(Error::BadConfig(
                    "NS, TTBR1, OUTER_WBWA and HD are stage-1 quirks",
                ));
            }
            _ => {}
        }
        let shift = g.shift();
        let bpl = shift - 3;
        let levels = (cfg.ias - shift).div_ceil(bpl) as usize;
        if levels > 4 {
            return Err(Error::BadConfig("too many levels for this granule"));
        }
        let mut level_shift = [0u32; 4];
        for (l, s) in level_shift.iter_mut().enumerate() {
            *s = shift + (3 - l as u32) * bpl;
        }
        let mut start_level = 4 - levels;
        let mut pgd_bits = cfg.ias - level_shift[start_level];
        let mut concat = 1;
        if cfg.stage == Stage::Stage2 && start_level < 3 {
            // Concatenate start tables (up to 16) when starting a level lower
            // is cheaper (Linux's rule: whenever the start level is 0) or when
            // the architecture forbids the start level for this output size
            // (4K at level 0 with PA sizes 40/42, 16K at level 0 with 48-bit
            // sizes, 16K at level 1 with a 40-bit PA).
            let mandatory = match (g, start_level) {
                (Granule::K4, 0) => cfg.oas == 40 || cfg.oas == 42,
                (Granule::K16, 0) => cfg.oas == 48 || cfg.ias == 48,
                (Granule::K16, 1) => cfg.oas == 40,
                _ => false,
            };
            let tables = 1u32 << pgd_bits;
            if (start_level == 0 || mandatory) && tables <= 16 {
                start_level += 1;
                pgd_bits += bpl;
                concat = tables;
            } else if mandatory {
                return Err(Error::BadConfig(
                    "stage 2 would need more than 16 concatenated tables",
                ));
            }
        }
        let pgd_size = (8usize << pgd_bits).max(crate::env::MIN_TABLE_SIZE);
        let mut index_mask = [0u64; 4];
        for (l, m) in index_mask.iter_mut().enumerate() {
            let bits = if l == start_level { pgd_bits } else { bpl };
            *m = (1u64 << bits) - 1;
        }
        let mut pgsize_bitmap = 1u64 << shift;
        let block_levels: &[usize] = match g {
            Granule::K4 => &[1, 2],
            Granule::K16 => &[2],
            Granule::K64 if cfg.oas == 52 => &[1, 2],
            Granule::K64 => &[2],
        };
        for &l in block_levels {
            if l >= start_level && level_shift[l] < cfg.ias {
                pgsize_bitmap |= 1u64 << level_shift[l];
            }
        }
        Ok(Self {
            shift,
            bits_per_level: bpl,
            start_level,
            pgd_bits,
            concat,
            pgd_size,
            pgsize_bitmap,
            level_shift,
            index_mask,
        })
    }

    /// Returns the level whose entries map `1 << size_shift` bytes, if any.
    #[inline]
    pub fn level_of_shift(&self, size_shift: u32) -> Option<usize> {
        (self.start_level..4).find(|&l| self.level_shift[l] == size_shift)
    }
}

/// Stage-1 values for an SMMUv3 context descriptor (or TCR/TTBR/MAIR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Regs {
    /// Physical address of the start-level table (CD.TTB0, or TTB1 with the
    /// TTBR1 quirk). Plain address: for 52-bit output it is 64-byte aligned
    /// and the SMMU field holds bits 51:4 as they are.
    pub ttbr: u64,
    /// T0SZ (or T1SZ with the TTBR1 quirk): 64 - ias.
    pub t0sz: u8,
    /// TG0 encoding (4K = 0, 64K = 1, 16K = 2).
    pub tg0: u8,
    /// Inner cacheability of walks.
    pub irgn0: u8,
    /// Outer cacheability of walks.
    pub orgn0: u8,
    /// Shareability of walks.
    pub sh0: u8,
    /// IPS encoding of oas.
    pub ips: u8,
    /// EPD1 (disable walks of the other half): true unless TTBR1; with the
    /// TTBR1 quirk EPD0 must be set instead.
    pub epd1: bool,
    /// Whether the fields describe the TTBR1 half (TTBR1 quirk).
    pub ttbr1: bool,
    /// Whether hardware dirty-state updates (CD.HD) were requested.
    pub hd: bool,
    /// MAIR value matching the AttrIndx values in leaves.
    pub mair: u64,
}

/// Stage-2 values for an SMMUv3 stream table entry (or VTCR/VTTBR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Regs {
    /// Physical address of the (possibly concatenated) start-level table
    /// (STE.S2TTB).
    pub vttbr: u64,
    /// T0SZ: 64 - ias.
    pub t0sz: u8,
    /// SL0 encoding of the start level.
    pub sl0: u8,
    /// Inner cacheability of walks.
    pub irgn0: u8,
    /// Outer cacheability of walks.
    pub orgn0: u8,
    /// Shareability of walks.
    pub sh0: u8,
    /// TG0 encoding (4K = 0, 64K = 1, 16K = 2).
    pub tg0: u8,
    /// PS encoding of oas.
    pub ps: u8,
    /// Whether leaves use FEAT_S2FWB encodings (STE.S2FWB must be set).
    pub fwb: bool,
}

/// Register values of a table, by stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regs {
    /// Stage 1.
    Stage1(Stage1Regs),
    /// Stage 2.
    Stage2(Stage2Regs),
}

pub(crate) fn regs(cfg: &Config, geo: &Geometry, root: u64) -> Regs {
    let tg0 = match cfg.granule {
        Granule::K4 => layout::tg0::K4,
        Granule::K16 => layout::tg0::K16,
        Granule::K64 => layout::tg0::K64,
    };
    let coherent = cfg.coherency == WalkCoherency::Coherent;
    let (irgn0, mut orgn0, sh0) = if coherent {
        (layout::rgn::WBWA, layout::rgn::WBWA, layout::sh::INNER)
    } else {
        (layout::rgn::NC, layout::rgn::NC, layout::sh::OUTER)
    };
    if cfg.quirks.contains(Quirks::OUTER_WBWA) {
        orgn0 = layout::rgn::WBWA;
    }
    let ps = layout::ps_encoding(cfg.oas).unwrap_or(0);
    let t0sz = (64 - cfg.ias) as u8;
    match cfg.stage {
        Stage::Stage1 => Regs::Stage1(Stage1Regs {
            ttbr: root,
            t0sz,
            tg0,
            irgn0,
            orgn0,
            sh0,
            ips: ps,
            epd1: !cfg.quirks.contains(Quirks::TTBR1),
            ttbr1: cfg.quirks.contains(Quirks::TTBR1),
            hd: cfg.quirks.contains(Quirks::HD),
            mair: layout::mair(),
        }),
        Stage::Stage2 => {
            // SL0 counts up from the last level for 16K/64K (0 = level 3) and
            // from level 2 for 4K (0 = level 2).
            let sl = geo.start_level as u8 + u8::from(cfg.granule == Granule::K4);
            Regs::Stage2(Stage2Regs {
                vttbr: root,
                t0sz,
                sl0: !sl & 3,
                irgn0,
                orgn0,
                sh0,
                tg0,
                ps,
                fwb: cfg.quirks.contains(Quirks::S2FWB),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(cfg: Config) -> Geometry {
        Geometry::new(&cfg).unwrap()
    }

    #[test]
    fn stage1_levels_and_page_sizes() {
        let g = geo(Config::stage1(Granule::K4, 48, 48));
        assert_eq!((g.start_level, g.pgd_bits, g.pgd_size), (0, 9, 4096));
        assert_eq!(g.pgsize_bitmap, (1 << 12) | (1 << 21) | (1 << 30));
        assert_eq!(g.level_shift, [39, 30, 21, 12]);
        let g = geo(Config::stage1(Granule::K4, 32, 48));
        assert_eq!((g.start_level, g.pgd_bits, g.pgd_size), (1, 2, 64));
        let g = geo(Config::stage1(Granule::K16, 48, 48));
        assert_eq!(
            (g.start_level, g.pgd_bits, g.pgsize_bitmap),
            (0, 1, (1 << 14) | (1 << 25))
        );
        let g = geo(Config::stage1(Granule::K64, 52, 52));
        assert_eq!((g.start_level, g.pgd_bits, g.pgd_size), (1, 10, 8192));
        assert_eq!(g.pgsize_bitmap, (1 << 16) | (1 << 29) | (1 << 42));
        let g = geo(Config::stage1(Granule::K64, 48, 48));
        assert_eq!(g.pgsize_bitmap, (1 << 16) | (1 << 29));
    }

    #[test]
    fn stage2_concatenates_where_required() {
        // 4K, 40-bit: level 0 would hold 2 entries -> 2 tables at level 1.
        let g = geo(Config::stage2(Granule::K4, 40, 40));
        assert_eq!((g.start_level, g.concat, g.pgd_size), (1, 2, 8192));
        // 4K, 42-bit: 8 tables.
        let g = geo(Config::stage2(Granule::K4, 42, 42));
        assert_eq!((g.start_level, g.concat), (1, 8));
        // 4K, 48-bit: 512 entries at level 0, no concatenation.
        let g = geo(Config::stage2(Granule::K4, 48, 48));
        assert_eq!((g.start_level, g.concat), (0, 1));
        // 16K, 48-bit: 2 tables at level 1.
        let g = geo(Config::stage2(Granule::K16, 48, 48));
        assert_eq!((g.start_level, g.concat), (1, 2));
        // 16K, 40-bit PA: level 1 start is forbidden -> 16 tables at level 2.
        let g = geo(Config::stage2(Granule::K16, 40, 40));
        assert_eq!((g.start_level, g.concat, g.pgd_size), (2, 16, 16 * 16384));
        // 4K, 32-bit: starts at level 1, keeps its 1G blocks.
        let g = geo(Config::stage2(Granule::K4, 32, 32));
        assert_eq!((g.start_level, g.concat), (1, 1));
        assert!(g.pgsize_bitmap & (1 << 30) != 0);
    }

    #[test]
    fn stage2_sl0_encodings() {
        let sl0 = |cfg: Config| {
            let g = geo(cfg);
            match regs(&cfg, &g, 0) {
                Regs::Stage2(r) => r.sl0,
                Regs::Stage1(_) => unreachable!(),
            }
        };
        assert_eq!(sl0(Config::stage2(Granule::K4, 48, 48)), 2); // level 0
        assert_eq!(sl0(Config::stage2(Granule::K4, 40, 40)), 1); // level 1
        assert_eq!(sl0(Config::stage2(Granule::K4, 32, 32)), 1); // level 1
        assert_eq!(sl0(Config::stage2(Granule::K16, 40, 40)), 1); // level 2
        assert_eq!(sl0(Config::stage2(Granule::K64, 42, 42)), 1); // level 2
        assert_eq!(sl0(Config::stage2(Granule::K64, 48, 48)), 2); // level 1
        assert_eq!(sl0(Config::stage2(Granule::K64, 52, 52)), 2); // level 1
    }

    #[test]
    fn forbidden_configs_are_refused() {
        for cfg in [
            Config::stage1(Granule::K4, 52, 48),
            Config::stage1(Granule::K4, 48, 52),
            Config::stage1(Granule::K4, 31, 48),
            Config::stage1(Granule::K4, 48, 39),
            Config::stage1(Granule::K4, 48, 48).with_quirks(Quirks::S2FWB),
            Config::stage2(Granule::K4, 48, 48).with_quirks(Quirks::HD),
        ] {
            assert!(
                matches!(Geometry::new(&cfg), Err(Error::BadConfig(_))),
                "{cfg:?}"
            );
        }
    }
}
