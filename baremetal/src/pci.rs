//! PCIe enumeration over ECAM: scan bus 0, size and assign memory BARs from the
//! 32-bit window, enable memory decoding and bus mastering.
//!
//! QEMU `virt` has no firmware here, so nothing is assigned before we run.

use crate::layout::{PCIE_ECAM, PCIE_MMIO32, PCIE_MMIO32_END};

/// Configuration space offsets (type 0 header).
mod cfg {
    pub const VENDOR_DEVICE: u16 = 0x00;
    pub const COMMAND: u16 = 0x04;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    pub const BAR_COUNT: u16 = 6;
    /// COMMAND.MSE: memory space enable.
    pub const CMD_MEMORY: u32 = 1 << 1;
    /// COMMAND.BME: bus master enable (the device may DMA).
    pub const CMD_BUS_MASTER: u32 = 1 << 2;
}

/// A PCI function address on bus 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

impl Bdf {
    /// Returns the requester ID, which QEMU's SMMU uses as the stream ID.
    pub fn requester_id(self) -> u32 {
        (u32::from(self.bus) << 8) | (u32::from(self.dev) << 3) | u32::from(self.func)
    }

    fn cfg_addr(self, off: u16) -> u64 {
        PCIE_ECAM
            | (u64::from(self.bus) << 20)
            | (u64::from(self.dev) << 15)
            | (u64::from(self.func) << 12)
            | u64::from(off & 0xffc)
    }

    /// Reads a 32-bit configuration register.
    pub fn read32(self, off: u16) -> u32 {
        // SAFETY: the ECAM window is identity mapped as Device memory and the
        // address is 4-byte aligned inside this function's 4 KiB of config space.
        unsafe { core::ptr::read_volatile(self.cfg_addr(off) as *const u32) }
    }

    /// Writes a 32-bit configuration register.
    pub fn write32(self, off: u16, val: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile(self.cfg_addr(off) as *mut u32, val) }
    }
}

/// An assigned memory BAR.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bar {
    /// Bus (and, identity mapped, CPU) address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A function found on the bus, its BARs assigned.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Memory BARs by index (a 64-bit BAR occupies its index; the next is empty).
    pub bars: [Option<Bar>; 6],
}

/// Why enumeration failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// The 32-bit window has no room left for a BAR of this size.
    WindowFull {
        /// The BAR size that did not fit.
        size: u64,
    },
    /// More functions than the caller's table holds.
    TooManyFunctions,
}

impl core::fmt::Display for PciError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::WindowFull { size } => {
                write!(f, "32-bit MMIO window full (BAR of {size:#x} bytes)")
            }
            Self::TooManyFunctions => write!(f, "too many PCI functions"),
        }
    }
}

/// Scans bus 0, assigns every memory BAR of every type-0 function and enables
/// memory decoding and bus mastering. Fills `out` and returns how many
/// functions were found.
///
/// # Errors
///
/// `WindowFull` when the BARs do not fit the window, `TooManyFunctions` when
/// `out` is too small.
pub fn enumerate(out: &mut [Option<Function>]) -> Result<usize, PciError> {
    let mut next = PCIE_MMIO32;
    let mut found = 0;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let bdf = Bdf { bus: 0, dev, func };
            let id = bdf.read32(cfg::VENDOR_DEVICE);
            if id & 0xffff == 0xffff {
                if func == 0 {
                    break;
                }
                continue;
            }
            let header = (bdf.read32(cfg::HEADER_TYPE & !3) >> 16) as u8;
            let mut f = Function {
                bdf,
                vendor: id as u16,
                device: (id >> 16) as u16,
                bars: [None; 6],
            };
            if header & 0x7f == 0 {
                assign_bars(&mut f, &mut next)?;
                let cmd = bdf.read32(cfg::COMMAND);
                bdf.write32(
                    cfg::COMMAND,
                    (cmd & 0xffff) | cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER,
                );
            }
            *out.get_mut(found).ok_or(PciError::TooManyFunctions)? = Some(f);
            found += 1;
            if func == 0 && header & 0x80 == 0 {
                break; // single-function device
            }
        }
    }
    Ok(found)
}

fn assign_bars(f: &mut Function, next: &mut u64) -> Result<(), PciError> {
    let bdf = f.bdf;
    // Decoding off while BARs hold sizing patterns.
    let cmd = bdf.read32(cfg::COMMAND) & 0xffff;
    bdf.write32(cfg::COMMAND, cmd & !(cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER));
    let mut i = 0;
    while i < cfg::BAR_COUNT {
        let off = cfg::BAR0 + 4 * i;
        let orig = bdf.read32(off);
        if orig & 1 != 0 {
            i += 1; // I/O BAR: not used on arm64 virt
            continue;
        }
        let is64 = (orig >> 1) & 3 == 2;
        bdf.write32(off, 0xffff_ffff);
        let lo = bdf.read32(off) & !0xf;
        let mut mask = u64::from(lo);
        if is64 {
            bdf.write32(off + 4, 0xffff_ffff);
            mask |= u64::from(bdf.read32(off + 4)) << 32;
        } else {
            mask |= 0xffff_ffff_0000_0000;
        }
        if lo == 0 && !is64 {
            bdf.write32(off, orig); // unimplemented BAR
            i += 1;
            continue;
        }
        let size = (!mask).wrapping_add(1);
        if size == 0 {
            i += if is64 { 2 } else { 1 };
            continue;
        }
        let addr = (*next + size - 1) & !(size - 1);
        if addr + size > PCIE_MMIO32_END {
            return Err(PciError::WindowFull { size });
        }
        *next = addr + size;
        bdf.write32(off, addr as u32);
        if is64 {
            bdf.write32(off + 4, (addr >> 32) as u32);
        }
        f.bars[i as usize] = Some(Bar { addr, size });
        i += if is64 { 2 } else { 1 };
    }
    Ok(())
}
