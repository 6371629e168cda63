//! The host's CPU stage 2: an identity map of intermediate physical
//! addresses onto physical ones, with holes where the host must not reach
//! (the hypervisor's memory) or must trap (a register frame the hypervisor
//! emulates).
//!
//! VMSAv8-64, 4 KiB granule, 40-bit IPA starting at level 1 with two
//! concatenated level-1 tables (the start level and concatenation VTCR_EL2
//! describes). RAM is Normal write-back, everything else Device-nGnRE and
//! never executable. Tables come from the caller (the hypervisor's own
//! memory), addressed by the physical address of the first.

use crate::dtb::Bank;

/// Stage-2 descriptor and VTCR_EL2 fields.
pub mod layout {
    /// Descriptor type: valid block (levels 1 and 2).
    pub const BLOCK: u64 = 0b01;
    /// Descriptor type: valid table (levels 1 and 2) or page (level 3).
    pub const TABLE_OR_PAGE: u64 = 0b11;
    /// MemAttr\[5:2\]: Normal, inner and outer write-back cacheable.
    pub const MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;
    /// MemAttr\[5:2\]: Device-nGnRE.
    pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << 2;
    /// S2AP\[7:6\]: read and write.
    pub const S2AP_RW: u64 = 0b11 << 6;
    /// SH\[9:8\]: inner shareable.
    pub const SH_INNER: u64 = 0b11 << 8;
    /// Access flag.
    pub const AF: u64 = 1 << 10;
    /// XN: never executable at EL1/EL0.
    pub const XN: u64 = 1 << 54;
    /// Output address bits \[47:12\].
    pub const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;
    /// VTCR_EL2.T0SZ for a 40-bit IPA space.
    pub const T0SZ: u64 = 64 - super::IPA_BITS as u64;
    /// VTCR_EL2.SL0 = 1: start at level 1 (4 KiB granule).
    pub const SL0_LEVEL1: u64 = 0b01 << 6;
    /// VTCR_EL2.IRGN0/ORGN0 = write-back read/write-allocate walks.
    pub const WALK_WB: u64 = (0b01 << 8) | (0b01 << 10);
    /// VTCR_EL2.SH0 = inner shareable walks.
    pub const WALK_SH_INNER: u64 = 0b11 << 12;
    /// VTCR_EL2.PS = 0b010: 40-bit physical addresses.
    pub const PS_40: u64 = 0b010 << 16;
    /// VTCR_EL2 bit 31 is RES1.
    pub const RES1: u64 = 1 << 31;
}

use layout::*;

/// Bits of IPA the stage 2 translates.
pub const IPA_BITS: u32 = 40;
/// The IPA space's end (exclusive).
pub const IPA_END: u64 = 1 << IPA_BITS;
/// Level-1 tables concatenated at the root (2^40 / 2^39).
pub const ROOT_TABLES: usize = 2;
/// Alignment of the concatenated root (its size).
pub const ROOT_ALIGN: u64 = ROOT_TABLES as u64 * 4096;
/// The VTCR_EL2 value these tables are built for.
pub const VTCR: u64 = T0SZ | SL0_LEVEL1 | WALK_WB | WALK_SH_INNER | PS_40 | RES1;

/// One translation table.
#[derive(Clone)]
#[repr(C, align(4096))]
pub struct Table(pub [u64; 512]);

impl Table {
    /// An empty (all invalid) table.
    pub const EMPTY: Self = Self([0; 512]);
}

/// The memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Normal write-back cacheable (RAM).
    Normal,
    /// Device-nGnRE, never executable (MMIO).
    Device,
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stage2Error {
    /// Fewer tables than the root needs.
    #[error("at least {ROOT_TABLES} tables are needed for the root")]
    NoRoot,
    /// The concatenated root is not aligned to its size (VTTBR_EL2 requires
    /// it; an 8 KiB root at a 4 KiB boundary walks the wrong table).
    #[error("root tables at {0:#x} are not aligned to {ROOT_ALIGN:#x}")]
    RootAlign(u64),
    /// The range is not 4 KiB-aligned.
    #[error("range {base:#x}+{size:#x} is not 4 KiB-aligned")]
    Unaligned {
        /// First byte.
        base: u64,
        /// Length.
        size: u64,
    },
    /// The range reaches past the 40-bit IPA space.
    #[error("range {base:#x}+{size:#x} is outside the 40-bit IPA space")]
    OutOfRange {
        /// First byte.
        base: u64,
        /// Length.
        size: u64,
    },
    /// Part of the range is mapped already.
    #[error("IPA {0:#x} is mapped already")]
    Overlap(u64),
    /// The table pool is used up.
    #[error("out of stage-2 tables")]
    NoTables,
}

const PAGE: u64 = 1 << 12;

fn block_size(level: u32) -> u64 {
    1 << (12 + 9 * (3 - level))
}

/// A host stage 2 under construction (and, once installed, to walk).
pub struct Stage2<'t> {
    tables: &'t mut [Table],
    pa: u64,
    used: usize,
}

impl<'t> Stage2<'t> {
    /// Returns an empty stage 2 over `tables`, the first of which is at
    /// physical address `pa` (the rest follow contiguously).
    ///
    /// # Errors
    ///
    /// [`Stage2Error::NoRoot`] with fewer than [`ROOT_TABLES`] tables,
    /// [`Stage2Error::RootAlign`] when `pa` is not aligned to [`ROOT_ALIGN`].
    pub fn new(tables: &'t mut [Table], pa: u64) -> Result<Self, Stage2Error> {
        if tables.len() < ROOT_TABLES {
            return Err(Stage2Error::NoRoot);
        }
        if pa % ROOT_ALIGN != 0 {
            return Err(Stage2Error::RootAlign(pa));
        }
        for t in tables[..ROOT_TABLES].iter_mut() {
            *t = Table::EMPTY;
        }
        Ok(Self {
            tables,
            pa,
            used: ROOT_TABLES,
        })
    }

    /// Returns the VTTBR_EL2 base address (the concatenated root).
    pub fn root(&self) -> u64 {
        self.pa
    }

    /// Returns how many tables are in use.
    pub fn tables_used(&self) -> usize {
        self.used
    }

    fn index_of(&self, pa: u64) -> usize {
        ((pa - self.pa) / PAGE) as usize
    }

    /// Returns the slot for `ipa` at `level`, creating tables on the way.
    fn slot(&mut self, ipa: u64, level: u32) -> Result<(usize, usize), Stage2Error> {
        let l1 = (ipa >> 30) as usize;
        let mut at = (l1 / 512, l1 % 512);
        for next in 2..=level {
            let desc = self.tables[at.0].0[at.1];
            let table = match desc & 0b11 {
                0b00 => {
                    let n = self.used;
                    if n >= self.tables.len() {
                        return Err(Stage2Error::NoTables);
                    }
                    self.tables[n] = Table::EMPTY;
                    self.used += 1;
                    self.tables[at.0].0[at.1] = (self.pa + n as u64 * PAGE) | TABLE_OR_PAGE;
                    n
                }
                TABLE_OR_PAGE => self.index_of(desc & ADDR_MASK),
                _ => return Err(Stage2Error::Overlap(ipa)),
            };
            let shift = 12 + 9 * (3 - next);
            at = (table, ((ipa >> shift) & 511) as usize);
        }
        Ok(at)
    }

    /// Maps `[base, base + size)` to the same physical addresses as `memory`,
    /// with the largest blocks the alignment allows.
    ///
    /// # Errors
    ///
    /// A [`Stage2Error`] when the range is unaligned, outside the IPA space,
    /// overlaps a mapping, or tables run out (what was mapped before the error
    /// stays mapped).
    pub fn map(&mut self, base: u64, size: u64, memory: Memory) -> Result<(), Stage2Error> {
        if base % PAGE != 0 || size % PAGE != 0 {
            return Err(Stage2Error::Unaligned { base, size });
        }
        let end = base
            .checked_add(size)
            .filter(|&e| e <= IPA_END)
            .ok_or(Stage2Error::OutOfRange { base, size })?;
        let attrs = match memory {
            Memory::Normal => MEMATTR_NORMAL_WB | SH_INNER,
            Memory::Device => MEMATTR_DEVICE_NGNRE | XN,
        } | S2AP_RW
            | AF;
        let mut ipa = base;
        while ipa < end {
            let level = (1..=3)
                .find(|&l| ipa % block_size(l) == 0 && end - ipa >= block_size(l))
                .unwrap_or(3);
            let (t, i) = self.slot(ipa, level)?;
            if self.tables[t].0[i] != 0 {
                return Err(Stage2Error::Overlap(ipa));
            }
            let kind = if level == 3 { TABLE_OR_PAGE } else { BLOCK };
            self.tables[t].0[i] = ipa | attrs | kind;
            ipa += block_size(level);
        }
        Ok(())
    }

    /// Maps the whole IPA space for a host: `ram` as Normal memory, the rest
    /// as Device memory, except `holes` (the hypervisor's memory, trapped
    /// frames), which stay unmapped. Every range must be 4 KiB-aligned.
    ///
    /// # Errors
    ///
    /// A [`Stage2Error`] as for [`Stage2::map`]; more than eight RAM banks
    /// and holes together are [`Stage2Error::NoTables`].
    pub fn map_host(&mut self, ram: &[Bank], holes: &[Bank]) -> Result<(), Stage2Error> {
        let mut cuts = [Bank { base: 0, size: 0 }; 8];
        let n = ram.len() + holes.len();
        if n > cuts.len() {
            return Err(Stage2Error::NoTables);
        }
        cuts[..ram.len()].copy_from_slice(ram);
        cuts[ram.len()..n].copy_from_slice(holes);
        let everything = Bank {
            base: 0,
            size: IPA_END,
        };
        // Device memory: everything minus RAM and holes.
        self.map_pieces(everything, &mut cuts[..n], Memory::Device)?;
        // RAM minus holes.
        for bank in ram {
            let mut h = [Bank { base: 0, size: 0 }; 8];
            h[..holes.len()].copy_from_slice(holes);
            self.map_pieces(*bank, &mut h[..holes.len()], Memory::Normal)?;
        }
        Ok(())
    }

    /// Maps `range` minus every bank of `cuts` (sorted here).
    fn map_pieces(
        &mut self,
        range: Bank,
        cuts: &mut [Bank],
        memory: Memory,
    ) -> Result<(), Stage2Error> {
        cuts.sort_unstable_by_key(|b| b.base);
        let end = range.base + range.size;
        let mut at = range.base;
        for c in cuts.iter() {
            let (cb, ce) = (c.base.max(at), (c.base + c.size).min(end));
            if cb >= ce {
                continue;
            }
            if at < cb {
                self.map(at, cb - at, memory)?;
            }
            at = at.max(ce);
        }
        if at < end {
            self.map(at, end - at, memory)?;
        }
        Ok(())
    }

    /// Returns where `ipa` goes and as what, or `None` when it faults.
    pub fn translate(&self, ipa: u64) -> Option<(u64, Memory)> {
        if ipa >= IPA_END {
            return None;
        }
        let l1 = (ipa >> 30) as usize;
        let mut desc = self.tables[l1 / 512].0[l1 % 512];
        for level in 1..=3 {
            let kind = desc & 0b11;
            let leaf = (level < 3 && kind == BLOCK) || (level == 3 && kind == TABLE_OR_PAGE);
            if leaf {
                let bs = block_size(level);
                let pa = (desc & ADDR_MASK & !(bs - 1)) | (ipa & (bs - 1));
                let mem = if desc & (0b1111 << 2) == MEMATTR_NORMAL_WB {
                    Memory::Normal
                } else {
                    Memory::Device
                };
                return Some((pa, mem));
            }
            if level == 3 || kind != TABLE_OR_PAGE {
                return None;
            }
            let t = self.tables.get(self.index_of(desc & ADDR_MASK))?;
            desc = t.0[((ipa >> (12 + 9 * (2 - level))) & 511) as usize];
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;

    const RAM: Bank = Bank {
        base: 0x4000_0000,
        size: 0x4000_0000,
    };
    const HYP: Bank = Bank {
        base: 0x7f00_0000,
        size: 0x100_0000,
    };
    const SMMU: Bank = Bank {
        base: 0x0905_0000,
        size: 0x2_0000,
    };

    #[test]
    fn the_host_map_has_its_holes_and_types() {
        let mut tables = vec![Table::EMPTY; 16];
        let mut s2 = Stage2::new(&mut tables, 0x7f80_0000).unwrap();
        s2.map_host(&[RAM], &[HYP, SMMU]).unwrap();
        // The UART, the GIC, the ECAM and the high PCIe window are Device.
        for ipa in [0x0900_0000, 0x0800_0000, 0x40_1000_0000, 0xff_ffff_f000, 0] {
            assert_eq!(s2.translate(ipa), Some((ipa, Memory::Device)), "{ipa:#x}");
        }
        // Just around the SMMU frame: mapped; inside: every page faults.
        assert_eq!(
            s2.translate(0x0904_fffc),
            Some((0x0904_fffc, Memory::Device))
        );
        assert_eq!(
            s2.translate(0x0907_0000),
            Some((0x0907_0000, Memory::Device))
        );
        for page in (SMMU.base..SMMU.base + SMMU.size).step_by(0x1000) {
            assert_eq!(s2.translate(page + 0x44), None);
        }
        // RAM is Normal up to the hypervisor, which is unmapped to its end.
        assert_eq!(
            s2.translate(0x4000_0000),
            Some((0x4000_0000, Memory::Normal))
        );
        assert_eq!(
            s2.translate(0x7eff_fff8),
            Some((0x7eff_fff8, Memory::Normal))
        );
        for ipa in (HYP.base..HYP.base + HYP.size).step_by(0x1000) {
            assert_eq!(s2.translate(ipa), None);
        }
        // Above RAM is Device again (nothing of the hypervisor leaks out).
        assert_eq!(
            s2.translate(0x8000_0000),
            Some((0x8000_0000, Memory::Device))
        );
        assert_eq!(s2.translate(IPA_END), None);
        // Root pair, one level-2 table per split gigabyte, one level 3.
        assert_eq!(s2.tables_used(), 5);
    }

    #[test]
    fn blocks_are_as_large_as_alignment_allows() {
        let mut tables = vec![Table::EMPTY; 8];
        let mut s2 = Stage2::new(&mut tables, 0x1000_0000).unwrap();
        s2.map(0x4000_0000, 0x4000_0000, Memory::Normal).unwrap();
        assert_eq!(s2.tables_used(), 2);
        let d = s2.tables[0].0[1];
        assert_eq!(d & 0b11, BLOCK);
        assert_eq!(
            d,
            0x4000_0000 | MEMATTR_NORMAL_WB | SH_INNER | S2AP_RW | AF | BLOCK
        );
        // The 513th gigabyte lives in the second concatenated root table.
        s2.map(512 << 30, 1 << 30, Memory::Device).unwrap();
        assert_eq!(s2.tables[1].0[0] & XN, XN);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut tables = vec![Table::EMPTY; 3];
        let mut s2 = Stage2::new(&mut tables, 0x1000_0000).unwrap();
        assert_eq!(
            s2.map(0x1234, 0x1000, Memory::Device),
            Err(Stage2Error::Unaligned {
                base: 0x1234,
                size: 0x1000
            })
        );
        assert!(matches!(
            s2.map(IPA_END - 0x1000, 0x2000, Memory::Device),
            Err(Stage2Error::OutOfRange { .. })
        ));
        s2.map(0x4000_0000, 0x20_0000, Memory::Normal).unwrap();
        assert_eq!(
            s2.map(0x4010_0000, 0x1000, Memory::Normal),
            Err(Stage2Error::Overlap(0x4010_0000))
        );
        // One table left was used for level 2; a 4K page needs one more.
        assert_eq!(
            s2.map(0x4020_1000, 0x1000, Memory::Normal),
            Err(Stage2Error::NoTables)
        );
        // Found on QEMU: a 4 KiB-aligned root pair gave the host a level-1
        // translation fault on its first instruction.
        let mut two = vec![Table::EMPTY; 2];
        assert_eq!(
            Stage2::new(&mut two, 0x7f01_3000).err(),
            Some(Stage2Error::RootAlign(0x7f01_3000))
        );
        let mut one = vec![Table::EMPTY; 1];
        assert!(matches!(Stage2::new(&mut one, 0), Err(Stage2Error::NoRoot)));
    }

    #[test]
    fn vtcr_fields() {
        assert_eq!(VTCR & 0x3f, 24);
        assert_eq!((VTCR >> 6) & 3, 1);
        assert_eq!((VTCR >> 14) & 3, 0, "TG0 = 4 KiB");
        assert_eq!((VTCR >> 16) & 7, 0b010);
        assert_eq!(VTCR, 0x8002_3558);
    }
}
