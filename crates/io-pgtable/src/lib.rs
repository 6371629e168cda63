//! VMSAv8-64 IO page tables for Arm SMMUv3: stage 1 and stage 2, 4K/16K/64K
//! granules, 32..48-bit and 52-bit (64K) address sizes, lock-free
//! concurrent map/unmap, non-coherent table walkers and deferred sync.
//!
//! `no_std`, no `alloc`: all memory comes from the environment.
//!
//! # Quick start
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use io_pgtable::{Config, Gather, Granule, PageTable, Prot, env::HostEnv};
//!
//! let pt = PageTable::new(Config::stage1(Granule::K4, 48, 48), HostEnv::default()).unwrap();
//! let prot = Prot::READ | Prot::WRITE | Prot::CACHE;
//! assert_eq!(pt.map(0x20_0000, 0x8000_0000, 4096, 16, prot), Ok(16 * 4096));
//! pt.sync_map(0x20_0000, 16 * 4096).unwrap(); // before a device uses it
//! assert_eq!(pt.translate(0x20_1234), Some(0x8000_1234));
//! let mut gather = Gather::new();
//! assert_eq!(pt.unmap(0x20_0000, 4096, 16, &mut gather), Ok(16 * 4096));
//! assert_eq!((gather.start(), gather.len()), (0x20_0000, 16 * 4096));
//! # }
//! ```
//!
//! # Environment
//!
//! [`PageTable<E>`] is generic over [`env::PtEnv`], the combination of three
//! small traits in [`env`](mod@env) that replace Linux's compile-time switches:
//! [`env::TableMemory`] (zeroed, naturally aligned table memory and its
//! physical address), [`env::CacheMaintenance`] (clean to the point of
//! coherency, and the device barriers) and [`env::TlbHooks`] (`flush_walk`
//! when a table is disconnected, `add_pages` into a [`Gather`]). The first two know nothing
//! of page tables; the SMMUv3 driver uses them for its own structures.
//! Implementations: `env::HostEnv` (heap tables, phys == virt, cleans that
//! do nothing or `clflush`) and `env::Counting` (wraps any environment and
//! counts allocations, live bytes, cleans, lines, walk flushes) with feature
//! `std`; `env::SimEnv` over the workspace's simulated memory (feature
//! `sim`). The traits are also implemented for `&T`, so one environment can
//! serve several tables and be inspected while they live.
//!
//! # Configuration and registers
//!
//! A [`Config`] names the stage, granule, ias/oas, [`WalkCoherency`] and
//! [`Quirks`]. [`Geometry`] derives levels, start level, stage-2
//! concatenation (up to 16 start tables: whenever stage 2 would start at
//! level 0, and where the architecture forbids the start level for the
//! output size) and the page-size bitmap (4K: 4K|2M|1G; 16K: 16K|32M;
//! 64K: 64K|512M, plus 4T level-1 blocks with a 52-bit output; blocks
//! needing FEAT_LPA2, such as 4K level-0 or 16K level-1 blocks, are not
//! offered). [`PageTable::regs`]
//! returns what the driver programs: [`Stage1Regs`] (TTB, T0SZ, TG0,
//! IRGN0/ORGN0/SH0, IPS, EPD1, MAIR) for the context descriptor and
//! [`Stage2Regs`] (S2TTB, T0SZ, SL0, IRGN0/ORGN0/SH0, TG0, PS) for the
//! stream table entry. Walk attributes are write-back inner-shareable for a
//! coherent walker and non-cacheable outer-shareable otherwise.
//!
//! Memory types: stage-1 MAIR indices 0 Normal-NC, 1 Normal-WB, 2
//! Device-nGnRE, 3 inner-NC/outer-WB; stage-2 MemAttr Normal-WB (or the
//! S2FWB "force WB" encoding), Normal-NC, Device-nGnRE. All leaves have AF
//! set; stage-1 leaves are nG.
//!
//! # Operations
//!
//! * [`PageTable::map`] / [`PageTable::unmap`]: Linux's `map_pages` /
//!   `unmap_pages`, returning bytes done, and on error a [`Partial`] with
//!   the bytes done before it. Unmap stops at the first entry with nothing
//!   mapped under it (an empty table left by earlier unmaps counts as
//!   nothing). [`PageTable::map_range`] and [`PageTable::unmap_range`]
//!   validate the whole range, then pick the largest page sizes the
//!   alignment allows.
//! * [`PageTable::sync_map`] after a map or a batch of maps, before the
//!   device uses the IOVAs (cleans for [`WalkCoherency::Deferred`], orders
//!   the leaf stores in every mode).
//! * [`PageTable::translate`], [`PageTable::walk`] (descriptor per level).
//! * [`PageTable::read_and_clear_dirty`] (stage 1 with [`Quirks::HD`]).
//! * [`PageTable::reclaim`] frees retired tables; [`PageTable::compact`]
//!   also frees tables left empty by unmaps smaller than them.
//!
//! **Partial unmap of a block splits it** rather than refusing like Linux:
//! the hypervisor's host stage-2 shadow needs to take single pages out of
//! large blocks. Without [`Quirks::BBML2`] the split is break-before-make
//! (the rest of the block faults for the window); with it, the block is
//! replaced by a full table in one store. Unmapping a page size larger
//! than what is mapped removes the whole table below (like Linux), and so
//! does unmapping every page of a table in one call. Mapping a block over a
//! table is allowed only if the table holds no valid leaf; mapping over any
//! valid leaf is [`Error::Exists`].
//!
//! **Contiguous hint**: with [`Prot::CONTIG`], every complete, aligned group
//! (16 x 4K, 128 x 16K, 32 x 64K at level 3; 16/32/32 blocks at level 2)
//! written by one call gets the contiguous bit, provided iova and paddr are
//! congruent modulo the group size. Unmapping part of a group first
//! rewrites the whole group without the bit, so no entry ever claims a
//! contiguous range that is not fully mapped.
//!
//! # The invalidation contract
//!
//! * **Leaves only in the gather.** Unmap adds every leaf it clears to the
//!   [`Gather`] (through [`env::TlbHooks::add_pages`], which syncs first
//!   when a new range cannot merge). A table it disconnects is flushed at
//!   once with the synchronous [`env::TlbHooks::flush_walk`] and retired;
//!   it never enters the gather. After unmap returns, the caller
//!   invalidates exactly what the gather holds, using
//!   [`Gather::leaf_size`] as a leaf-level hint (none when a failed sync
//!   widened the gather over leaves of several sizes).
//! * **Fallible, exact.** Hooks return `Result`; an error surfaces in
//!   [`Partial`] with every cleared entry counted and every cleared leaf
//!   gathered, so the caller still knows what to invalidate. A table whose
//!   flush failed is linked back, a split whose break failed restores the
//!   block: a failed step changes nothing. Nothing is remembered between
//!   calls.
//!
//! # Coherency and ordering
//!
//! * [`WalkCoherency::Coherent`]: no cache maintenance.
//! * [`WalkCoherency::NonCoherent`]: a new table is cleaned before it is
//!   linked; the link is cleaned once after it is published; every run of
//!   leaves written by one call is cleaned with one call per table; cleared
//!   entries are cleaned before they are gathered (so before the driver's
//!   TLB invalidation).
//! * [`WalkCoherency::Deferred`]: as non-coherent but leaf runs are not
//!   cleaned in `map`; [`PageTable::sync_map`] then cleans every line
//!   holding leaves of the range exactly once.
//!
//! The device-side ordering is explicit: [`env::CacheMaintenance`] has two
//! barrier methods with no default. A table's contents are ordered before
//! its link by `device_write_barrier`; leaf stores are relaxed atomics,
//! ordered for the device by `sync_map`'s `device_write_barrier`.
//!
//! # Concurrency
//!
//! All operations take `&self` and are lock-free; `PageTable<E>` is `Sync`
//! when `E` is. Calls on disjoint ranges compose. Missing tables are
//! installed with a compare-exchange of a zero entry (release ordering, so
//! the zeroed and cleaned table is visible before the link); the loser frees
//! its table, which nobody saw. For a non-coherent walker, a counter of
//! links published but not yet cleaned lets a mapper that descends through
//! a racer's fresh link clean it itself (only while some link is in
//! flight), so no mapper returns while its leaves hang below a link the
//! walker cannot see, and an uncontended link is cleaned exactly once.
//!
//! These paths are model-checked with loom (`tests/loom.rs`, built with
//! `--cfg loom`, which swaps every atomic of the table code for loom's):
//! install races, retirement racing maps and walkers, reclaim, and the
//! links-in-flight protocol against a device view that only cleans update.
//!
//! Overlapping concurrent calls give unspecified mappings but never
//! undefined behaviour. The hazard is a table disconnected by one call while
//! another still walks it. **Reclamation**: a disconnected table is not
//! freed but *retired*: its entries are zeroed (a racing walker reads only
//! invalid descriptors) and it is pushed on a lock-free, push-only list
//! (a Treiber stack that is never popped concurrently, so there is no ABA)
//! whose link lives in its word 0 as an invalid descriptor (address of the
//! next retired table | 0b10, bit 0 clear). Tables are disconnected by
//! compare-exchange or swap, so each is retired exactly once.
//! [`PageTable::reclaim`] takes `&mut self`, which proves no walk is in
//! flight, and frees the list; `Drop` does too. A link overwritten by a
//! buggy racing caller is detected (it is zero or has bit 0 set) and the
//! rest of the list is leaked rather than freed wrongly.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod env;
pub mod error;
pub mod layout;
mod sync;
mod table;

pub use config::{
    Config, Geometry, Granule, Prot, Quirks, Regs, Stage, Stage1Regs, Stage2Regs, WalkCoherency,
};
pub use env::{Gather, TlbError};
pub use error::{Error, Partial};
pub use table::{PageTable, Walk, WalkStep};
