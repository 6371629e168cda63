//! The model as a device a VMM mounts: MMIO by offset and access size,
//! StreamIDs from PCI requester IDs, one vm-memory `Iommu` per device.
//! Interrupts and MSIs reach the VMM through the model's callbacks
//! ([`SmmuModel::set_irq_handler`], [`SmmuModel::set_msi_handler`]);
//! migration uses [`SmmuModel::snapshot`] / [`SmmuModel::restore`].

use std::sync::Arc;

use crate::regs;
use crate::{SmmuModel, StreamIommu};

/// Why an MMIO access was refused (nothing was read or written; reads
/// return zeroes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioError {
    /// The SMMU register frame only takes 32-bit and 64-bit accesses.
    #[error("MMIO access of {size} bytes (only 4 and 8 are architected)")]
    BadSize {
        /// The access size.
        size: usize,
    },
    /// The access is not naturally aligned.
    #[error("MMIO access of {size} bytes at unaligned offset {offset:#x}")]
    Misaligned {
        /// Offset in the frame.
        offset: u64,
        /// The access size.
        size: usize,
    },
    /// The access is outside the 128 KiB register frame (pages 0 and 1).
    #[error("MMIO offset {offset:#x} outside the register frame")]
    OutOfFrame {
        /// Offset in the frame.
        offset: u64,
    },
}

/// One ID mapping of a PCI root complex to the SMMU (an ACPI IORT ID
/// mapping, or a devicetree `iommu-map` entry): requester IDs
/// `[rid_base, rid_base + count)` become StreamIDs from `sid_base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RidMapping {
    /// First requester ID.
    pub rid_base: u32,
    /// Number of requester IDs: an IORT ID mapping's "Number of IDs"
    /// field plus one (IORT stores the count minus one), a devicetree
    /// `iommu-map` entry's length as it stands.
    pub count: u32,
    /// StreamID of `rid_base`.
    pub sid_base: u32,
}

impl RidMapping {
    /// Returns the identity mapping of every 16-bit requester ID.
    pub fn identity() -> Self {
        Self {
            rid_base: 0,
            count: 1 << 16,
            sid_base: 0,
        }
    }
}

/// Returns the PCI requester ID of bus:device.function (`device` has 5
/// bits, `function` 3; higher bits are ignored).
pub fn pci_rid(bus: u8, device: u8, function: u8) -> u16 {
    u16::from(bus) << 8 | u16::from(device & 0x1f) << 3 | u16::from(function & 7)
}

/// The model mounted in a VMM.
#[derive(Clone, Debug)]
pub struct SmmuDevice {
    model: Arc<SmmuModel>,
    rid_map: Vec<RidMapping>,
}

impl SmmuDevice {
    /// Size of the register frame to map (pages 0 and 1, 64 KiB each).
    pub const FRAME_SIZE: u64 = regs::FRAME_SIZE;

    /// Returns the device over `model`, with requester IDs mapped by
    /// `rid_map` (first matching entry wins).
    pub fn new(model: Arc<SmmuModel>, rid_map: Vec<RidMapping>) -> Self {
        Self { model, rid_map }
    }

    /// Returns the model.
    pub fn model(&self) -> &Arc<SmmuModel> {
        &self.model
    }

    /// Returns the requester ID mappings, in the order they are tried.
    pub fn rid_map(&self) -> &[RidMapping] {
        &self.rid_map
    }

    fn check(offset: u64, size: usize) -> Result<(), MmioError> {
        if size != 4 && size != 8 {
            return Err(MmioError::BadSize { size });
        }
        if offset % size as u64 != 0 {
            return Err(MmioError::Misaligned { offset, size });
        }
        if offset >= Self::FRAME_SIZE || Self::FRAME_SIZE - offset < size as u64 {
            return Err(MmioError::OutOfFrame { offset });
        }
        Ok(())
    }

    /// Handles a guest MMIO read of `data.len()` bytes at `offset` in the
    /// frame (little-endian).
    ///
    /// # Errors
    ///
    /// [`MmioError`] for sizes other than 4 and 8, unaligned or
    /// out-of-frame accesses; `data` is then zeroed and no register is
    /// read (reads of CMDQ_CONS have side effects under fault injection).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) -> Result<(), MmioError> {
        if let Err(e) = Self::check(offset, data.len()) {
            data.fill(0);
            return Err(e);
        }
        if data.len() == 4 {
            data.copy_from_slice(&self.model.read32(offset).to_le_bytes());
        } else {
            data.copy_from_slice(&self.model.read64(offset).to_le_bytes());
        }
        Ok(())
    }

    /// Handles a guest MMIO write of `data` at `offset` (little-endian).
    ///
    /// # Errors
    ///
    /// As [`SmmuDevice::mmio_read`]; nothing is written.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) -> Result<(), MmioError> {
        Self::check(offset, data.len())?;
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        if data.len() == 4 {
            self.model.write32(offset, v as u32);
        } else {
            self.model.write64(offset, v);
        }
        Ok(())
    }

    /// Returns the StreamID of a PCI requester ID, or `None` when no
    /// mapping covers it.
    pub fn stream_id(&self, rid: u16) -> Option<u32> {
        let rid = u32::from(rid);
        self.rid_map
            .iter()
            .find(|m| rid >= m.rid_base && rid - m.rid_base < m.count)
            .and_then(|m| m.sid_base.checked_add(rid - m.rid_base))
    }

    /// Returns the vm-memory `Iommu` of the PCI function with requester ID
    /// `rid` (for `IommuMemory::new`), or `None` when it is not behind
    /// this SMMU.
    pub fn iommu_for(&self, rid: u16) -> Option<StreamIommu> {
        Some(self.model.iommu(self.stream_id(rid)?, None))
    }
}
