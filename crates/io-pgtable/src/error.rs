//! Errors.

use crate::env::{AllocError, CacheError, TlbError};

/// Why an operation or a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration is one the architecture (or this crate) forbids.
    #[error("forbidden configuration: {0}")]
    BadConfig(&'static str),
    /// The page size is not in the table's page-size bitmap.
    #[error("page size {0:#x} is not supported by this table")]
    BadPageSize(u64),
    /// The IOVA is not aligned to the page size.
    #[error("iova {0:#x} is not aligned to the page size")]
    UnalignedIova(u64),
    /// The physical address is not aligned to the page size.
    #[error("physical address {0:#x} is not aligned to the page size")]
    UnalignedPaddr(u64),
    /// The IOVA range does not fit in the input address size.
    #[error("iova {0:#x} is beyond the input address size")]
    IovaOutOfRange(u64),
    /// The physical range does not fit in the output address size.
    #[error("physical address {0:#x} is beyond the output address size")]
    PaddrOutOfRange(u64),
    /// A length that is not a multiple of the granule.
    #[error("length {0:#x} is not a multiple of the granule")]
    UnalignedSize(u64),
    /// A page count of zero.
    #[error("page count is zero")]
    ZeroCount,
    /// `iova + size` or `paddr + size` overflows.
    #[error("address range overflows")]
    Overflow,
    /// Part of the range is already mapped.
    #[error("iova {0:#x} is already mapped")]
    Exists(u64),
    /// Neither read nor write permission requested.
    #[error("a mapping needs read or write permission")]
    NoPermission,
    /// The operation needs a feature the table was not configured with.
    #[error("not supported by this table: {0}")]
    Unsupported(&'static str),
    /// Table memory could not be allocated.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// Cache maintenance failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A TLB or walk-cache invalidation asked of the driver failed.
    #[error(transparent)]
    Tlb(#[from] TlbError),
}

/// An operation that stopped part way: how far it got and why it stopped.
///
/// Everything before `done` bytes is complete and consistent (mapped and,
/// unless deferred, cleaned; or unmapped and gathered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {done:#x} bytes)")]
pub struct Partial {
    /// Bytes handled before the error.
    pub done: usize,
    /// Why it stopped.
    pub error: Error,
}

impl Partial {
    pub(crate) const fn at(done: u64, error: Error) -> Self {
        Self {
            done: done as usize,
            error,
        }
    }
}
