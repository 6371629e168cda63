//! The seam to the IOMMU driver: what the DMA layer needs of a domain.

use crate::types::IommuProt;

/// An IOMMU translation domain as the DMA layer drives it.
///
/// Kept deliberately small so the adapter to a driver is one short file
/// (`smmu.rs` for `smmuv3`). All methods take `&self`: implementations
/// serialise internally as their page table needs.
pub trait IommuDomain: Send + Sync {
    /// The driver's error type.
    type Error: core::fmt::Debug + core::fmt::Display + Clone;

    /// Returns the page sizes the domain maps; the smallest is the IOVA
    /// granule.
    fn pgsize_bitmap(&self) -> u64;

    /// Returns the number of IOVA bits the domain translates.
    fn iova_bits(&self) -> u32;

    /// Returns whether the IOMMU's DMA is cache coherent (snoops CPU
    /// caches), which devices without their own coherency information
    /// inherit.
    fn coherent(&self) -> bool;

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` (granule aligned),
    /// without any invalidation; the device may only rely on it after
    /// [`IommuDomain::sync_map`] over the range.
    ///
    /// # Errors
    ///
    /// The driver's error; part of the range may be mapped, which the
    /// caller removes with [`IommuDomain::unmap`].
    fn map(&self, iova: u64, phys: u64, len: u64, prot: IommuProt) -> Result<(), Self::Error>;

    /// Publishes the mappings of `[iova, iova + len)` to the IOMMU's walker
    /// (the page table's deferred cache cleans; a no-op for drivers that
    /// clean in `map`).
    ///
    /// # Errors
    ///
    /// The driver's error.
    fn sync_map(&self, iova: u64, len: u64) -> Result<(), Self::Error>;

    /// Unmaps `[iova, iova + len)`, stopping at the first hole, invalidates
    /// the IOTLB for it and waits for completion.
    ///
    /// Returns the bytes unmapped (0 when nothing was mapped at `iova`).
    ///
    /// # Errors
    ///
    /// The driver's error.
    fn unmap(&self, iova: u64, len: u64) -> Result<u64, Self::Error>;

    /// As [`IommuDomain::unmap`] but without the IOTLB invalidation: the
    /// device may keep using stale translations until the next
    /// [`IommuDomain::flush_all`] completes.
    ///
    /// # Errors
    ///
    /// The driver's error.
    fn unmap_deferred(&self, iova: u64, len: u64) -> Result<u64, Self::Error>;

    /// Invalidates every IOTLB entry of the domain and waits.
    ///
    /// # Errors
    ///
    /// The driver's error.
    fn flush_all(&self) -> Result<(), Self::Error>;

    /// Invalidates the IOTLB for `[iova, iova + len)` and waits; by default
    /// everything.
    ///
    /// # Errors
    ///
    /// The driver's error.
    fn flush_range(&self, iova: u64, len: u64) -> Result<(), Self::Error> {
        let _ = (iova, len);
        self.flush_all()
    }

    /// Returns the physical address `iova` translates to.
    fn translate(&self, iova: u64) -> Option<u64>;
}

/// The domain type of devices without an IOMMU: it cannot be built, so a
/// `DmaDevice<E, NoIommu>` is always on the direct path.
#[derive(Debug)]
pub enum NoIommu {}

/// The error of [`NoIommu`] (never produced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no IOMMU")]
pub enum NoIommuError {}

impl IommuDomain for NoIommu {
    type Error = NoIommuError;

    fn pgsize_bitmap(&self) -> u64 {
        match *self {}
    }
    fn iova_bits(&self) -> u32 {
        match *self {}
    }
    fn coherent(&self) -> bool {
        match *self {}
    }
    fn map(&self, _: u64, _: u64, _: u64, _: IommuProt) -> Result<(), Self::Error> {
        match *self {}
    }
    fn sync_map(&self, _: u64, _: u64) -> Result<(), Self::Error> {
        match *self {}
    }
    fn unmap(&self, _: u64, _: u64) -> Result<u64, Self::Error> {
        match *self {}
    }
    fn unmap_deferred(&self, _: u64, _: u64) -> Result<u64, Self::Error> {
        match *self {}
    }
    fn flush_all(&self) -> Result<(), Self::Error> {
        match *self {}
    }
    fn translate(&self, _: u64) -> Option<u64> {
        match *self {}
    }
}
