//! The vocabulary of the API: addresses, directions and attributes.

/// A CPU physical address.
pub type PhysAddr = u64;

/// An address as the device issues it: a bus address on the direct path,
/// an IOVA behind an IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaAddr(pub u64);

impl DmaAddr {
    /// Returns the raw address.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl core::fmt::Display for DmaAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Which way the data of a mapping moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The device reads (the mapping is read-only to the device).
    ToDevice,
    /// The device writes (the mapping is write-only to the device).
    FromDevice,
    /// Both.
    Bidirectional,
}

impl Direction {
    /// Returns whether the device may read the buffer.
    pub const fn device_reads(self) -> bool {
        matches!(self, Self::ToDevice | Self::Bidirectional)
    }

    /// Returns whether the device may write the buffer.
    pub const fn device_writes(self) -> bool {
        matches!(self, Self::FromDevice | Self::Bidirectional)
    }
}

bitflags::bitflags! {
    /// Mapping attributes (bit positions as Linux's `DMA_ATTR_*`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Attrs: u32 {
        /// No CPU cache maintenance (the caller syncs explicitly) and no
        /// copy back from a bounce buffer at unmap.
        const SKIP_CPU_SYNC = 1 << 5;
        /// Privileged device accesses only (stage-1 AP).
        const PRIVILEGED = 1 << 9;
        /// Not RAM (a peer device's BAR): never cached, no CPU cache
        /// maintenance, never bounced, device memory attributes in the
        /// IOMMU mapping.
        const MMIO = 1 << 10;
        /// Fail rather than fall back to bouncing or cache maintenance.
        const REQUIRE_COHERENT = 1 << 12;
    }
}

bitflags::bitflags! {
    /// What an IOMMU mapping allows and how the memory is typed; the
    /// [`crate::IommuDomain`] implementation translates it to its format.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct IommuProt: u32 {
        /// The device may read.
        const READ = 1 << 0;
        /// The device may write.
        const WRITE = 1 << 1;
        /// Normal cacheable memory, for devices that snoop CPU caches.
        const CACHE = 1 << 2;
        /// Device memory attributes (never cacheable).
        const MMIO = 1 << 3;
        /// Privileged accesses only.
        const PRIV = 1 << 4;
    }
}

/// One physically contiguous piece of a scatter-gather list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysSegment {
    /// First byte.
    pub phys: PhysAddr,
    /// Length in bytes.
    pub len: u64,
}

/// One DMA segment the device is given for a scatter-gather list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
    /// First byte as the device sees it.
    pub addr: DmaAddr,
    /// Length in bytes.
    pub len: u64,
}
