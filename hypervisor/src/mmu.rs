//! The hypervisor's own EL2 stage-1 translation: an identity map in 1 GiB
//! blocks (Normal write-back for RAM, Device-nGnRE for MMIO), from
//! baremetal's memory map. The host never uses it: its accesses go through
//! its own stage 1 and the stage 2 of `host.rs`.

use core::arch::asm;
use core::cell::UnsafeCell;

use crate::layout;

/// MAIR_EL2: attr0 = 0xff (Normal WB RW-alloc), attr1 = 0x04 (Device-nGnRE).
const MAIR: u64 = 0xff | (0x04 << 8);

/// Level-1 block descriptor fields (VMSAv8-64, 4 KiB granule, EL2 regime).
mod desc {
    pub const BLOCK: u64 = 0b01;
    pub const ATTR_DEVICE: u64 = 1 << 2;
    /// AP\[1\] is RES1 in the single-range EL2 regime.
    pub const AP1: u64 = 1 << 6;
    pub const SH_INNER: u64 = 0b11 << 8;
    pub const AF: u64 = 1 << 10;
    pub const XN: u64 = 1 << 54;
}

/// TCR_EL2: T0SZ = 25 (39-bit VA), walks inner/outer WB WA inner-shareable,
/// TG0 = 4 KiB, PS = 40 bits, RES1 bits 31 and 23.
const TCR: u64 =
    25 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (0b010 << 16) | (1 << 23) | (1 << 31);

const BLOCK_SIZE: u64 = 1 << 30;

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: written only by `enable`, once, on the single CPU, before the MMU
// reads it.
unsafe impl Sync for Table {}

static L1: Table = Table(UnsafeCell::new([0; 512]));

/// Builds the identity map and turns on the EL2 MMU and caches.
///
/// # Safety
///
/// Once, at EL2, MMU off, before anything relies on atomics or caches.
pub unsafe fn enable() {
    // SAFETY: nothing else reads the table before the MMU is on (contract).
    let entries = unsafe { &mut *L1.0.get() };
    for region in layout::REGIONS {
        let mut pa = region.base & !(BLOCK_SIZE - 1);
        while pa < region.base + region.size {
            let common = desc::BLOCK | desc::AF | desc::AP1 | pa;
            entries[(pa / BLOCK_SIZE) as usize] = if region.normal {
                common | desc::SH_INNER
            } else {
                common | desc::ATTR_DEVICE | desc::XN
            };
            pa += BLOCK_SIZE;
        }
    }
    let ttbr = L1.0.get() as u64;
    // SAFETY: the map is the identity over the running code, stack and data,
    // so execution continues at the same addresses once the MMU is on.
    unsafe {
        asm!(
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr}",
            "dsb sy",
            "tlbi alle2",
            "dsb sy",
            "isb",
            "mrs {tmp}, sctlr_el2",
            "orr {tmp}, {tmp}, #(1 << 0)",  // M
            "orr {tmp}, {tmp}, #(1 << 2)",  // C
            "orr {tmp}, {tmp}, #(1 << 12)", // I
            "bic {tmp}, {tmp}, #(1 << 1)",  // A: no alignment faults
            "msr sctlr_el2, {tmp}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            ttbr = in(reg) ttbr,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}
