//! The error type of every operation.

use crate::debug::DebugReport;
use crate::types::DmaAddr;

/// A CPU cache maintenance operation failed (the environment does not
/// manage the range).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cache maintenance failed on {phys:#x}+{len:#x}")]
pub struct CacheError {
    /// First byte.
    pub phys: u64,
    /// Length.
    pub len: u64,
}

/// Why a DMA operation was refused or failed. `E` is the IOMMU domain's
/// error type. Every refusal happens before anything changed, unless the
/// variant says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaError<E> {
    /// A mapping of zero bytes.
    #[error("zero-sized mapping")]
    ZeroSize,
    /// `phys + size` (or `dma + size`) overflows the address space.
    #[error("address range {addr:#x}+{size:#x} overflows")]
    Overflow {
        /// Start of the range.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// The device cannot address the buffer (DMA mask) and no bounce pool
    /// can help.
    #[error("device cannot reach {addr:#x}+{size:#x} (mask {mask:#x})")]
    Unreachable {
        /// Device address the buffer would have.
        addr: u64,
        /// Size.
        size: u64,
        /// The device's DMA mask.
        mask: u64,
    },
    /// `REQUIRE_COHERENT` on a device that is not cache coherent.
    #[error("coherent DMA required but the device is not coherent")]
    NotCoherent,
    /// The buffer must be bounced but its attributes forbid it
    /// (`MMIO`, `REQUIRE_COHERENT`).
    #[error("bouncing needed but refused by the attributes")]
    BounceRefused,
    /// The mapping needs a bounce buffer larger than one mapping may use.
    #[error("{size:#x} bytes exceed the bounce limit per mapping")]
    BounceTooLarge {
        /// Bytes the bounce buffer would need.
        size: u64,
    },
    /// The bounce pool has no free run of slots large enough.
    #[error("bounce pool exhausted ({size:#x} bytes wanted)")]
    BounceExhausted {
        /// Bytes wanted.
        size: u64,
    },
    /// No IOVA range of the size is free below the device's limit.
    #[error("IOVA space exhausted ({size:#x} bytes wanted)")]
    IovaExhausted {
        /// Bytes wanted.
        size: u64,
    },
    /// The address is not mapped (double unmap, or never mapped).
    #[error("{0} is not mapped")]
    NotMapped(DmaAddr),
    /// The IOMMU unmapped a different amount than the mapping's size; the
    /// unmapped part is invalidated, its IOVA is kept out of reuse.
    #[error("unmap of {addr} removed {found:#x} bytes, expected {expected:#x}")]
    SizeMismatch {
        /// Address given.
        addr: DmaAddr,
        /// Bytes the size implied.
        expected: u64,
        /// Bytes actually unmapped.
        found: u64,
    },
    /// The operation needs an IOMMU path (link API).
    #[error("the device has no IOMMU path")]
    NoIommu,
    /// The link API cannot serve a device that bounces.
    #[error("the device needs bounce buffers; use map_phys")]
    NeedsBounce,
    /// A link range does not fit its IOVA reservation or breaks granule
    /// alignment.
    #[error("link of {size:#x} bytes at offset {offset:#x} does not fit the IOVA range")]
    BadLink {
        /// Offset in the reservation.
        offset: u64,
        /// Size.
        size: u64,
    },
    /// A link reservation used with a device of another IOMMU domain
    /// (its IOVA belongs to that domain's space), including one dropped
    /// since: domains are told apart by a serial, not by address.
    #[error("the IOVA reservation belongs to another domain")]
    ForeignRange,
    /// Memory for a coherent allocation could not be had.
    #[error("out of memory for a coherent allocation of {size:#x} bytes")]
    OutOfMemory {
        /// Bytes asked for.
        size: u64,
    },
    /// CPU cache maintenance failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// DMA debugging refused a call (nothing was changed).
    #[error("DMA debug: {0}")]
    Debug(DebugReport),
    /// The device needs a bounce buffer for this mapping but has no pool.
    #[error("bounce buffer needed but the device has no bounce pool")]
    NoBouncePool,
    /// The IOMMU domain reports no usable page size or IOVA space.
    #[error("the IOMMU domain has no usable page size or IOVA space")]
    BadDomain,
    /// The IOMMU domain failed.
    #[error("iommu: {0}")]
    Iommu(E),
}
