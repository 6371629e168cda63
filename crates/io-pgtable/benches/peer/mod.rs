//! The aarch64-paging peer, used as its users use it, so that both crates
//! do equal work in every comparison (criterion bench, `cputime` and
//! `callgrind_ops` examples).
//!
//! Unmapping: aarch64-paging unmaps through `map_range*` with attributes
//! that lack `VALID`, and *stores those attributes* in the invalid entries.
//! Its own tests and documentation unmap with `El1Attributes::empty()`,
//! which leaves zero descriptors, as io-pgtable's unmap does. Unmapping
//! with the mapping's attributes minus `VALID` instead leaves non-zero
//! invalid entries; where a whole table was freed (a 2M region of 4K pages)
//! the next map then sees a non-zero entry, takes it for a block to split,
//! and fills each new table with 512 invalid copies before mapping: extra
//! work no user asks for, which inflated the earlier ratios.

#![allow(dead_code)]

use aarch64_paging::descriptor::El1Attributes;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion};

/// Read-write normal memory, the attributes io-pgtable's `PROT` maps with.
pub const RW: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_1)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED)
    .union(El1Attributes::NON_GLOBAL);

/// What a user unmaps with: no attributes at all, so entries become zero.
pub const UNMAPPED: El1Attributes = El1Attributes::empty();

/// Returns a 4-level (level-0 root) table, like io-pgtable's 48-bit one.
pub fn table() -> IdMap<El1And0> {
    IdMap::with_asid(1, 0, El1And0)
}

/// Returns `[start, start + len)`.
pub fn region(start: u64, len: u64) -> MemoryRegion {
    MemoryRegion::new(start as usize, (start + len) as usize)
}

/// Returns the constraints for pages of `pgsize`: no blocks for 4K pages.
pub fn constraints(pgsize: u64) -> Constraints {
    if pgsize == 4096 {
        Constraints::NO_BLOCK_MAPPINGS
    } else {
        Constraints::empty()
    }
}

/// Maps `r` read-write with pages of `pgsize`.
pub fn map(t: &mut IdMap<El1And0>, r: &MemoryRegion, pgsize: u64) {
    t.map_range_with_constraints(r, RW, constraints(pgsize))
        .unwrap();
}

/// Unmaps `r` as a user would (zero descriptors).
pub fn unmap(t: &mut IdMap<El1And0>, r: &MemoryRegion, pgsize: u64) {
    t.map_range_with_constraints(r, UNMAPPED, constraints(pgsize))
        .unwrap();
}

/// Panics unless every descriptor covering `r` is zero (checked once per
/// workload, outside any measurement, to prove the unmap above is equal
/// work to io-pgtable's).
pub fn assert_unmapped(t: &IdMap<El1And0>, r: &MemoryRegion) {
    t.walk_range(r, &mut |mr, d, level| {
        let zero = d.flags().is_empty() && d.output_address().0 == 0;
        assert!(
            zero,
            "level {level} descriptor for {mr:?} left non-zero: {d:?}"
        );
        Ok(())
    })
    .unwrap();
}
