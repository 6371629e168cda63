//! Errors: every refused request says why, and changed nothing.

use crate::owner::{Owner, ShareTarget};

/// Why an ownership, pinning or power request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An address or length is not a multiple of 4 KiB.
    #[error("{0:#x} is not 4 KiB aligned")]
    Unaligned(u64),
    /// A zero-length range.
    #[error("empty range")]
    Empty,
    /// `addr + len` overflows.
    #[error("range overflows the address space")]
    Overflow,
    /// Part of the range is not RAM the tracker knows (past the end of
    /// memory, in a hole or in MMIO).
    #[error("{0:#x} is not tracked RAM")]
    NotRam(u64),
    /// A page is not owned by whom the transition needs.
    #[error("page {addr:#x} is owned by {owner:?}, not {expected:?}")]
    WrongOwner {
        /// First offending page.
        addr: u64,
        /// Its owner.
        owner: Owner,
        /// The owner the request needs.
        expected: Owner,
    },
    /// A page is shared, so it cannot be donated or shared again.
    #[error("page {addr:#x} is shared with {with:?}")]
    Shared {
        /// First offending page.
        addr: u64,
        /// With whom.
        with: ShareTarget,
    },
    /// A page is not shared with that target.
    #[error("page {0:#x} is not shared with that target")]
    NotShared(u64),
    /// A page is mapped for host DMA, so it cannot be donated.
    #[error("page {addr:#x} is pinned for DMA ({pins} mappings)")]
    Pinned {
        /// First offending page.
        addr: u64,
        /// Its DMA mapping count.
        pins: u32,
    },
    /// Unpinning a page that is not pinned.
    #[error("page {0:#x} is not pinned")]
    NotPinned(u64),
    /// A pin count would overflow.
    #[error("page {0:#x} has too many DMA mappings")]
    PinOverflow(u64),
    /// A guest ID the tracker cannot represent.
    #[error("guest id {0} is out of range")]
    BadGuest(u16),
    /// The memory map is inconsistent (overlap, hypervisor range outside
    /// RAM, beyond the shadow's input size, ...).
    #[error("bad memory map: {0}")]
    BadMemoryMap(&'static str),
    /// The SMMUs cannot share one shadow (no 4K pages, no stage 2, ...).
    #[error("unsuitable SMMUs: {0}")]
    Unsuitable(&'static str),
    /// An SMMU index that does not exist.
    #[error("no SMMU {0}")]
    NoSmmu(usize),
    /// The SMMU is powered off.
    #[error("SMMU {0} is off")]
    SmmuOff(usize),
    /// The SMMU is already on.
    #[error("SMMU {0} is already on")]
    SmmuOn(usize),
    /// An SMMU did not complete an invalidation in time (or rejected it):
    /// the request was rolled back and the SMMU is reported here.
    #[error("SMMU {smmu} did not complete the invalidation: {error}")]
    Unresponsive {
        /// Index of the SMMU.
        smmu: usize,
        /// The driver's error.
        error: smmuv3::Error,
    },
    /// The driver refused a configuration change.
    #[error("SMMU {smmu}: {error}")]
    Driver {
        /// Index of the SMMU.
        smmu: usize,
        /// The driver's error.
        error: smmuv3::Error,
    },
    /// The shadow page table refused an operation (out of table memory,
    /// bad geometry).
    #[error("shadow stage 2: {0}")]
    Shadow(io_pgtable::Error),
    /// A rollback after a failure could not restore every mapping: the
    /// pages named stay owned by the host but unreachable by its devices
    /// (the safe side) until a later donation or reclaim, which first
    /// tries again to map them.
    #[error("rollback left {addr:#x}+{len:#x} unmapped: {error}")]
    RollbackIncomplete {
        /// First unmapped byte.
        addr: u64,
        /// Bytes left unmapped.
        len: u64,
        /// Why the remap failed.
        error: io_pgtable::Error,
    },
    /// Scrubbing a reclaimed page failed; the page stays with the guest.
    #[error("scrubbing {0:#x} failed")]
    Scrub(u64),
}
