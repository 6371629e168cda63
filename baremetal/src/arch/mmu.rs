//! The CPU's own stage-1 identity map, so the driver runs with realistic memory
//! types: Normal write-back cacheable for RAM, Device-nGnRE for MMIO.
//!
//! One level-1 table of 1 GiB blocks (4 KiB granule, 39-bit VA) is all QEMU
//! `virt` needs: low MMIO, the 1 GiB of RAM and the high PCIe ECAM each fit in
//! one block.

use core::arch::asm;
use core::cell::UnsafeCell;

use crate::layout;

/// MAIR_EL1 attribute index of Normal, inner/outer write-back, read/write-allocate.
const ATTR_NORMAL: u64 = 0;
/// MAIR_EL1 attribute index of Device-nGnRE.
const ATTR_DEVICE: u64 = 1;
/// MAIR_EL1: attr0 = 0xff (Normal WB RW-alloc), attr1 = 0x04 (Device-nGnRE).
const MAIR: u64 = 0xff | (0x04 << 8);

/// Level-1 block descriptor fields (VMSAv8-64, 4 KiB granule).
mod desc {
    pub const BLOCK: u64 = 0b01;
    pub const ATTR_SHIFT: u64 = 2;
    pub const SH_INNER: u64 = 0b11 << 8;
    pub const AF: u64 = 1 << 10;
    pub const PXN: u64 = 1 << 53;
    pub const UXN: u64 = 1 << 54;
}

/// TCR_EL1: T0SZ = 25 (39-bit VA), walks inner/outer WB WA inner-shareable,
/// TG0 = 4 KiB, TTBR1 walks disabled (EPD1), IPS = 40 bits.
const TCR: u64 = 25 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23) | (0b010 << 32);

/// Size of one level-1 block.
const BLOCK_SIZE: u64 = 1 << 30;

/// A page-aligned level-1 table.
#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: the table is written only by `enable`, on the single boot CPU, before
// anything else can observe it.
unsafe impl Sync for Table {}

static L1: Table = Table(UnsafeCell::new([0; 512]));

/// Returns the level-1 block descriptor identity mapping `pa`.
fn block(pa: u64, normal: bool) -> u64 {
    let common = desc::BLOCK | desc::AF | (pa & !(BLOCK_SIZE - 1));
    if normal {
        common | (ATTR_NORMAL << desc::ATTR_SHIFT) | desc::SH_INNER
    } else {
        common | (ATTR_DEVICE << desc::ATTR_SHIFT) | desc::PXN | desc::UXN
    }
}

/// Builds the identity map and turns on the MMU and both caches.
///
/// # Safety
///
/// Must be called once, on the boot CPU, with the MMU off, before any code that
/// relies on atomics or unaligned accesses runs.
pub unsafe fn enable() {
    let table = L1.0.get();
    // SAFETY: `enable` runs once before anything else reads the table (contract).
    let entries = unsafe { &mut *table };
    for region in layout::REGIONS {
        let mut pa = region.base & !(BLOCK_SIZE - 1);
        while pa < region.base + region.size {
            entries[(pa / BLOCK_SIZE) as usize] = block(pa, region.normal);
            pa += BLOCK_SIZE;
        }
    }
    let ttbr = table as u64;
    // SAFETY: the table maps the running code, its stack and data (RAM block)
    // with the same addresses, so execution continues seamlessly once the MMU
    // is on. The stale-TLB invalidation and barriers make the new state visible.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "dsb sy",
            "tlbi vmalle1",
            "dsb sy",
            "isb",
            "mrs {tmp}, sctlr_el1",
            "orr {tmp}, {tmp}, #(1 << 0)",  // M: MMU on
            "orr {tmp}, {tmp}, #(1 << 2)",  // C: data cache on
            "orr {tmp}, {tmp}, #(1 << 12)", // I: instruction cache on
            "bic {tmp}, {tmp}, #(1 << 1)",  // A: no alignment faults
            "msr sctlr_el1, {tmp}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            ttbr = in(reg) ttbr,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

// Compile-time checks of the descriptor layout against VMSAv8-64.
const _: () = {
    // A level-1 block of 1 GiB uses output address bits [47:30].
    assert!(BLOCK_SIZE == 1 << 30);
    // AF is bit 10, AttrIndx is bits [4:2], SH is [9:8].
    assert!(desc::AF == 0x400);
    assert!(desc::SH_INNER == 0x300);
    // T0SZ 25 gives 2^39 bytes of VA: enough for the ECAM at 0x40_1000_0000.
    assert!(layout::PCIE_ECAM + layout::PCIE_ECAM_SIZE <= 1 << (64 - 25));
};
