//! The driver's register frame over the mounted device's MMIO handlers:
//! every register access of the guest driver goes through
//! [`SmmuDevice::mmio_read`] / [`SmmuDevice::mmio_write`], as a VMM's MMIO
//! exit handler would deliver it.

use smmuv3::env::RegisterFrame;
use smmuv3_model::SmmuDevice;

/// A `RegisterFrame` that turns each access into an MMIO exit.
#[derive(Clone, Debug)]
pub struct MmioFrame {
    device: SmmuDevice,
}

impl MmioFrame {
    /// Returns the frame of `device`.
    pub fn new(device: SmmuDevice) -> Self {
        Self { device }
    }
}

impl RegisterFrame for MmioFrame {
    fn read32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        // A refused access reads as zero, as the device reports it.
        let _ = self.device.mmio_read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(&self, offset: usize, value: u32) {
        let _ = self.device.mmio_write(offset as u64, &value.to_le_bytes());
    }

    fn read64(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        let _ = self.device.mmio_read(offset as u64, &mut b);
        u64::from_le_bytes(b)
    }

    fn write64(&self, offset: usize, value: u64) {
        let _ = self.device.mmio_write(offset as u64, &value.to_le_bytes());
    }
}
