//! PCIe enumeration over ECAM, depth first through bridges: every bridge
//! (e.g. QEMU's `pcie-root-port`) gets its bus numbers and a memory window,
//! every function its memory BARs from the 32-bit window, and memory decoding
//! and bus mastering are enabled (on a bridge, bus mastering is what lets the
//! DMA of the devices behind it through).
//!
//! QEMU `virt` has no firmware here, so nothing is assigned before we run.

use crate::layout::{PCIE_ECAM, PCIE_MMIO32, PCIE_MMIO32_END};

/// Configuration space offsets and bits.
mod cfg {
    pub const VENDOR_DEVICE: u16 = 0x00;
    pub const COMMAND: u16 = 0x04;
    pub const HEADER_TYPE: u16 = 0x0e;
    pub const BAR0: u16 = 0x10;
    /// BARs of a type-0 (endpoint) header.
    pub const ENDPOINT_BARS: u16 = 6;
    /// BARs of a type-1 (bridge) header.
    pub const BRIDGE_BARS: u16 = 2;
    /// Type 1: primary, secondary, subordinate bus number, latency timer.
    pub const BUS_NUMBERS: u16 = 0x18;
    /// Type 1: I/O base and limit (low half; the high half is RW1C status).
    pub const IO_BASE_LIMIT: u16 = 0x1c;
    /// Type 1: memory base and limit, address bits 31:20 in bits 15:4.
    pub const MEM_BASE_LIMIT: u16 = 0x20;
    /// Type 1: prefetchable memory base and limit, and their upper halves.
    pub const PREF_BASE_LIMIT: u16 = 0x24;
    pub const PREF_BASE_UPPER: u16 = 0x28;
    pub const PREF_LIMIT_UPPER: u16 = 0x2c;
    /// COMMAND.MSE: memory space enable.
    pub const CMD_MEMORY: u32 = 1 << 1;
    /// COMMAND.BME: bus master enable (the device may DMA; a bridge
    /// forwards its secondary side's DMA upstream).
    pub const CMD_BUS_MASTER: u32 = 1 << 2;
    /// Header type field without the multi-function bit.
    pub const HEADER_BRIDGE: u8 = 1;
    /// A bridge's memory window is aligned to and sized in 1 MiB.
    pub const WINDOW_ALIGN: u64 = 1 << 20;
}

/// A PCI function address.
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
        // SAFETY: the ECAM window (all 256 buses) is identity mapped as
        // Device memory and the address is 4-byte aligned inside this
        // function's 4 KiB of config space.
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

/// What enumeration programmed into a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// The bus behind it.
    pub secondary: u8,
    /// The highest bus number behind it.
    pub subordinate: u8,
    /// Its memory window `[base, limit)`, empty when nothing behind it has
    /// a memory BAR.
    pub window: (u64, u64),
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
    /// Set for a PCI-to-PCI bridge (type-1 header).
    pub bridge: Option<Bridge>,
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
    /// More bridges than bus numbers (256).
    TooManyBuses,
}

impl core::fmt::Display for PciError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::WindowFull { size } => {
                write!(f, "32-bit MMIO window full (BAR of {size:#x} bytes)")
            }
            Self::TooManyFunctions => write!(f, "too many PCI functions"),
            Self::TooManyBuses => write!(f, "more bridges than bus numbers"),
        }
    }
}

/// The enumeration cursor: next free bus number and MMIO address.
struct Walk<'a> {
    next_bus: u16,
    next_mem: u64,
    out: &'a mut [Option<Function>],
    found: usize,
}

/// Scans from bus 0 through every bridge, numbering the buses depth first,
/// assigns every memory BAR and every bridge window, and enables memory
/// decoding and bus mastering. Fills `out` and returns how many functions
/// (bridges included) were found.
///
/// # Errors
///
/// `WindowFull` when the BARs do not fit the window, `TooManyFunctions` when
/// `out` is too small, `TooManyBuses` past bus 255.
pub fn enumerate(out: &mut [Option<Function>]) -> Result<usize, PciError> {
    let mut walk = Walk {
        next_bus: 1,
        next_mem: PCIE_MMIO32,
        out,
        found: 0,
    };
    walk.bus(0)?;
    Ok(walk.found)
}

fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

impl Walk<'_> {
    fn bus(&mut self, bus: u8) -> Result<(), PciError> {
        for dev in 0..32u8 {
            for func in 0..8u8 {
                let bdf = Bdf { bus, dev, func };
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
                    bridge: None,
                };
                match header & 0x7f {
                    0 => {
                        assign_bars(&mut f, cfg::ENDPOINT_BARS, &mut self.next_mem)?;
                        enable(bdf);
                    }
                    cfg::HEADER_BRIDGE => {
                        assign_bars(&mut f, cfg::BRIDGE_BARS, &mut self.next_mem)?;
                        // The bridge's own slot comes before what is behind it.
                        let slot = self.push(f)?;
                        let b = self.bridge(bdf)?;
                        if let Some(Some(entry)) = self.out.get_mut(slot) {
                            entry.bridge = Some(b);
                        }
                        enable(bdf);
                        if func == 0 && header & 0x80 == 0 {
                            break;
                        }
                        continue;
                    }
                    _ => {} // CardBus: not on virt
                }
                self.push(f)?;
                if func == 0 && header & 0x80 == 0 {
                    break; // single-function device
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, f: Function) -> Result<usize, PciError> {
        let slot = self.found;
        *self.out.get_mut(slot).ok_or(PciError::TooManyFunctions)? = Some(f);
        self.found += 1;
        Ok(slot)
    }

    /// Numbers the bus behind the bridge at `bdf`, enumerates it and opens
    /// the bridge's memory window over exactly what was assigned behind it.
    fn bridge(&mut self, bdf: Bdf) -> Result<Bridge, PciError> {
        let secondary = u8::try_from(self.next_bus).map_err(|_| PciError::TooManyBuses)?;
        self.next_bus += 1;
        // Subordinate 0xff while scanning, so config cycles to any bus we
        // number below this one are forwarded.
        let latency = bdf.read32(cfg::BUS_NUMBERS) & 0xff00_0000;
        let bus_numbers = |sub: u8| {
            latency | (u32::from(sub) << 16) | (u32::from(secondary) << 8) | u32::from(bdf.bus)
        };
        bdf.write32(cfg::BUS_NUMBERS, bus_numbers(0xff));
        // No I/O and no prefetchable window: every BAR (64-bit prefetchable
        // ones too) goes in the non-prefetchable window, which may hold them.
        bdf.write32(cfg::IO_BASE_LIMIT, 0x00f0);
        bdf.write32(cfg::PREF_BASE_LIMIT, 0x0000_fff0);
        bdf.write32(cfg::PREF_BASE_UPPER, 0);
        bdf.write32(cfg::PREF_LIMIT_UPPER, 0);

        self.next_mem = align_up(self.next_mem, cfg::WINDOW_ALIGN);
        let base = self.next_mem;
        self.bus(secondary)?;
        let subordinate = (self.next_bus - 1) as u8;
        bdf.write32(cfg::BUS_NUMBERS, bus_numbers(subordinate));
        self.next_mem = align_up(self.next_mem, cfg::WINDOW_ALIGN);
        let limit = self.next_mem;
        if limit > PCIE_MMIO32_END {
            return Err(PciError::WindowFull { size: limit - base });
        }
        let window = if limit > base {
            let lo = ((base >> 16) & 0xfff0) as u32;
            let hi = (((limit - 1) >> 16) & 0xfff0) as u32;
            bdf.write32(cfg::MEM_BASE_LIMIT, (hi << 16) | lo);
            (base, limit)
        } else {
            // Base above limit: the window is closed.
            bdf.write32(cfg::MEM_BASE_LIMIT, 0x0000_fff0);
            (base, base)
        };
        Ok(Bridge {
            secondary,
            subordinate,
            window,
        })
    }
}

/// Turns on memory decoding and bus mastering.
fn enable(bdf: Bdf) {
    let cmd = bdf.read32(cfg::COMMAND);
    bdf.write32(
        cfg::COMMAND,
        (cmd & 0xffff) | cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER,
    );
}

fn assign_bars(f: &mut Function, count: u16, next: &mut u64) -> Result<(), PciError> {
    let bdf = f.bdf;
    // Decoding off while BARs hold sizing patterns.
    let cmd = bdf.read32(cfg::COMMAND) & 0xffff;
    bdf.write32(cfg::COMMAND, cmd & !(cfg::CMD_MEMORY | cfg::CMD_BUS_MASTER));
    let mut i = 0;
    while i < count {
        let off = cfg::BAR0 + 4 * i;
        let orig = bdf.read32(off);
        if orig & 1 != 0 {
            i += 1; // I/O BAR: not used on arm64 virt
            continue;
        }
        let is64 = (orig >> 1) & 3 == 2 && i + 1 < count;
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
        let addr = align_up(*next, size);
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
