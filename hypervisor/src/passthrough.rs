//! Bring-up emulation of the SMMU frame: every trapped host access is
//! replayed, unchanged, on the real frame (which the hypervisor's own EL2
//! map covers). It proves the trap path with Linux's arm-smmu-v3 driver;
//! issue 12's virtual SMMU replaces it behind the same [`TrappedMmio`] seam.

use hyp_host::mmio::{MmioError, TrappedMmio};

/// The real SMMU register frame, at its physical (= EL2 virtual) address.
pub struct Passthrough {
    base: u64,
    size: u64,
}

impl Passthrough {
    /// Returns a pass-through to the frame at `base` of `size` bytes.
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// Returns the address of the register, or why there is none.
    fn register(&self, offset: u64, size: u8) -> Result<u64, MmioError> {
        if !matches!(size, 4 | 8) || offset.saturating_add(u64::from(size)) > self.size {
            return Err(MmioError::NoRegister { offset, size });
        }
        if offset % u64::from(size) != 0 {
            return Err(MmioError::Unaligned { offset, size });
        }
        Ok(self.base + offset)
    }
}

impl TrappedMmio for Passthrough {
    fn read(&mut self, offset: u64, size: u8) -> Result<u64, MmioError> {
        let addr = self.register(offset, size)?;
        // SAFETY: `addr` is an aligned 32- or 64-bit register inside the SMMU
        // frame, mapped as Device memory in the EL2 identity map; a load from
        // an SMMUv3 register has no side effect beyond what the host asked for.
        Ok(unsafe {
            if size == 8 {
                core::ptr::read_volatile(addr as *const u64)
            } else {
                u64::from(core::ptr::read_volatile(addr as *const u32))
            }
        })
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> Result<(), MmioError> {
        let addr = self.register(offset, size)?;
        // SAFETY: as in `read`; the store is the host's own, replayed.
        unsafe {
            if size == 8 {
                core::ptr::write_volatile(addr as *mut u64, value)
            } else {
                core::ptr::write_volatile(addr as *mut u32, value as u32)
            }
        }
        Ok(())
    }
}
