//! A read-only walk of a host's stage-1 table (VMSAv8-64, 4 KiB granule)
//! as its device sees it through the SMMU: used by the hypervisor's test
//! hook to find a page a host device really targets (its highest mapped
//! IOVA, where Linux's DMA API keeps the rings it allocated first).
//!
//! The table is the host's, so nothing in it is trusted: every descriptor
//! comes through the caller's reader (which refuses what the host does not
//! own), reserved encodings end the branch, and the walk visits at most
//! [`MAX_VISITS`] descriptors.

/// Descriptors one walk reads at most.
pub const MAX_VISITS: usize = 1 << 14;

/// Bits of a descriptor's output address (4 KiB granule, 48-bit OA).
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
const PAGE: u64 = 4096;

/// A leaf of the walk: `iova` maps the 4 KiB page at `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Input address (IOVA) of the page.
    pub iova: u64,
    /// Output address (an IPA, which is a host PA for the host).
    pub pa: u64,
}

/// Returns the highest-IOVA 4 KiB page mapped by the table at `ttb` for a
/// `64 - t0sz`-bit input space whose output `accept` takes, or `None`.
///
/// `read(pa)` returns the 64-bit descriptor at `pa`, or `None` when it may
/// not be read (the branch is skipped). A block's pages are tried from its
/// last one down.
pub fn highest_leaf(
    read: &mut dyn FnMut(u64) -> Option<u64>,
    ttb: u64,
    t0sz: u32,
    accept: &mut dyn FnMut(u64) -> bool,
) -> Option<Leaf> {
    let ia_bits = 64u32.checked_sub(t0sz)?;
    if !(25..=48).contains(&ia_bits) {
        return None;
    }
    // Each level resolves 9 bits above the 12 of the page offset.
    let levels = (ia_bits - 12).div_ceil(9);
    let start = 4 - levels;
    let mut visits = 0;
    walk(read, accept, ttb & OA_MASK, start, 0, ia_bits, &mut visits)
}

/// Bit position of the lowest input bit level `level` resolves.
fn shift(level: u32) -> u32 {
    12 + 9 * (3 - level)
}

fn walk(
    read: &mut dyn FnMut(u64) -> Option<u64>,
    accept: &mut dyn FnMut(u64) -> bool,
    table: u64,
    level: u32,
    base: u64,
    ia_bits: u32,
    visits: &mut usize,
) -> Option<Leaf> {
    let sh = shift(level);
    // The start level may resolve fewer than 9 bits.
    let entries = 1u64 << (ia_bits.min(sh + 9) - sh);
    for index in (0..entries).rev() {
        *visits += 1;
        if *visits > MAX_VISITS {
            return None;
        }
        let Some(desc) = read(table + index * 8) else {
            continue;
        };
        let iova = base | (index << sh);
        let oa = desc & OA_MASK;
        match (desc & 0b11, level) {
            // Table (levels 0-2) descriptor.
            (0b11, 0..=2) => {
                if let Some(leaf) = walk(read, accept, oa, level + 1, iova, ia_bits, visits) {
                    return Some(leaf);
                }
            }
            // Page (level 3) or block (levels 1-2): the last page first.
            (0b11, 3) | (0b01, 1..=2) => {
                let size = 1u64 << sh;
                let block = oa & !(size - 1);
                for page in (0..size / PAGE).rev() {
                    if accept(block + page * PAGE) {
                        return Some(Leaf {
                            iova: iova + page * PAGE,
                            pa: block + page * PAGE,
                        });
                    }
                    *visits += 1;
                    if *visits > MAX_VISITS {
                        return None;
                    }
                }
            }
            // Invalid or reserved: nothing mapped here.
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::BTreeMap;

    use super::*;

    /// A sparse memory of descriptors.
    struct Mem(BTreeMap<u64, u64>);

    impl Mem {
        fn read(&self, pa: u64) -> Option<u64> {
            Some(self.0.get(&pa).copied().unwrap_or(0))
        }
    }

    const TABLE: u64 = 0b11;
    const PAGE_DESC: u64 = 0b11 | (1 << 10);
    const BLOCK: u64 = 0b01 | (1 << 10);

    /// A 48-bit, 4-level table mapping `iova -> pa` pages (tables at
    /// 0x1000 * n).
    fn table(maps: &[(u64, u64)]) -> Mem {
        let mut m = BTreeMap::new();
        let mut next = 0x10_0000u64;
        let root = 0x1000u64;
        for &(iova, pa) in maps {
            let mut t = root;
            for level in 0..3 {
                let idx = (iova >> shift(level)) & 511;
                let slot = t + idx * 8;
                let d = *m.entry(slot).or_insert_with(|| {
                    next += 0x1000;
                    next | TABLE
                });
                t = d & OA_MASK;
            }
            m.insert(t + ((iova >> 12) & 511) * 8, pa | PAGE_DESC);
        }
        Mem(m)
    }

    #[test]
    fn the_highest_mapped_page_is_found() {
        let mem = table(&[
            (0x8000_0000, 0x4100_0000),
            (0xffff_f000, 0x4200_3000),
            (0x1_0000_0000_0000 - 0x1000, 0x4300_0000),
        ]);
        let leaf = highest_leaf(&mut |pa| mem.read(pa), 0x1000, 16, &mut |_| true);
        assert_eq!(
            leaf,
            Some(Leaf {
                iova: 0xffff_ffff_f000,
                pa: 0x4300_0000
            })
        );
    }

    #[test]
    fn rejected_outputs_are_skipped() {
        let mem = table(&[(0x0800_0000, 0x0802_0000), (0xffff_e000, 0x4200_3000)]);
        // The MSI doorbell page is not RAM; the ring below 4 GiB is taken.
        let leaf = highest_leaf(&mut |pa| mem.read(pa), 0x1000, 16, &mut |pa| {
            pa >= 0x4000_0000
        });
        assert_eq!(
            leaf,
            Some(Leaf {
                iova: 0xffff_e000,
                pa: 0x4200_3000
            })
        );
        let none = highest_leaf(&mut |pa| mem.read(pa), 0x1000, 16, &mut |pa| {
            pa >= 0x8000_0000
        });
        assert_eq!(none, None);
    }

    #[test]
    fn blocks_give_their_last_accepted_page() {
        // A 2 MiB block at level 2 for IOVA 0x4020_0000.
        let mut m = BTreeMap::new();
        m.insert(0x1000, 0x2000 | TABLE);
        m.insert(0x2000 + 8, 0x3000 | TABLE);
        m.insert(0x3000 + 8, 0x4060_0000 | BLOCK);
        let mem = Mem(m);
        let leaf = highest_leaf(&mut |pa| mem.read(pa), 0x1000, 16, &mut |pa| {
            pa < 0x4070_0000
        });
        assert_eq!(
            leaf,
            Some(Leaf {
                iova: 0x402f_f000,
                pa: 0x406f_f000
            })
        );
    }

    #[test]
    fn unreadable_and_bad_tables_end_the_branch() {
        let mem = table(&[(0xffff_f000, 0x4200_3000)]);
        assert_eq!(highest_leaf(&mut |_| None, 0x1000, 16, &mut |_| true), None);
        for t0sz in [0, 8, 15, 40, 64, 65] {
            assert_eq!(
                highest_leaf(&mut |pa| mem.read(pa), 0x1000, t0sz, &mut |_| true),
                None,
                "t0sz {t0sz}"
            );
        }
        // A level-3 "block" encoding (0b01) is reserved: nothing mapped.
        let mut m = BTreeMap::new();
        m.insert(0x1000, 0x2000 | TABLE);
        m.insert(0x2000, 0x3000 | TABLE);
        m.insert(0x3000, 0x4000 | TABLE);
        m.insert(0x4000, 0x4200_0000 | BLOCK);
        let mem = Mem(m);
        assert_eq!(
            highest_leaf(&mut |pa| mem.read(pa), 0x1000, 16, &mut |_| true),
            None
        );
    }

    #[test]
    fn a_self_referencing_table_is_bounded() {
        // Every entry of every level points back at the root, and no page
        // is accepted: the walk would visit 2^36 entries without its bound.
        let mut reads = 0usize;
        let mut mem = |_pa: u64| {
            reads += 1;
            Some(0x1000 | TABLE)
        };
        assert_eq!(highest_leaf(&mut mem, 0x1000, 16, &mut |_| false), None);
        assert!(reads <= MAX_VISITS, "{reads}");
    }
}
