//! Bare-metal aarch64 test kernel for QEMU `virt` with `iommu=smmuv3`.
//!
//! Boots at EL1, turns on the MMU with an identity map, enumerates PCI, finds
//! the `edu` device and runs the scenarios of `smmuv3-scenarios` against QEMU's
//! SMMUv3. Each scenario prints `SCENARIO <name>: PASS|FAIL|SKIP <detail>`; the
//! run ends through semihosting with status 0 only when none failed.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

mod arch;
mod console;
mod edu;
mod heap;
mod layout;
mod pci;
mod platform;
mod semihost;
mod timer;

use core::panic::PanicInfo;

/// Rust entry, called from `_start` with a stack and a zeroed BSS.
#[unsafe(no_mangle)]
extern "C" fn kernel_main() -> ! {
    // SAFETY: first thing on the boot CPU, MMU still off, nothing else running.
    unsafe { arch::mmu::enable() };
    console::init();
    println!("smmuv3-baremetal: MMU on, CNTFRQ={} Hz", timer::frequency());

    let mut functions = [None; 32];
    let count = match pci::enumerate(&mut functions) {
        Ok(n) => n,
        Err(e) => fail_setup(format_args!("PCI enumeration: {e}")),
    };
    let mut edu = None;
    for f in functions.iter().flatten().take(count) {
        println!(
            "pci {:02x}:{:02x}.{} {:04x}:{:04x} bar0={:#x}+{:#x}",
            f.bdf.bus,
            f.bdf.dev,
            f.bdf.func,
            f.vendor,
            f.device,
            f.bars[0].map_or(0, |b| b.addr),
            f.bars[0].map_or(0, |b| b.size)
        );
        if f.vendor == edu::VENDOR && f.device == edu::DEVICE {
            edu = Some(*f);
        }
    }
    let Some(edu_fn) = edu else {
        fail_setup(format_args!("no edu device: pass -device edu"))
    };
    let edu = match edu::Edu::new(&edu_fn) {
        Ok(e) => e,
        Err(e) => fail_setup(format_args!("edu: {e}")),
    };
    println!("edu stream id {:#x}", edu.stream_id());

    let mut buf = [0u8; 256];
    let cmdline = semihost::cmdline(&mut buf).unwrap_or("");
    if cmdline.split(' ').any(|a| a == "selftest=exception") {
        exception_selftest();
    }
    let profile = match cmdline.split(' ').find_map(|a| a.strip_prefix("machine=")) {
        Some("virt") => Some(smmuv3_scenarios::QEMU_VIRT),
        Some("virt-9.1") => Some(smmuv3_scenarios::QEMU_VIRT_9_1),
        other => {
            println!(
                "no known machine= on the semihosting command line ({other:?}): ID registers not asserted"
            );
            None
        }
    };
    let mut qemu = platform::Qemu::new(edu, profile);
    let start = timer::now_ns();
    let sum = smmuv3_scenarios::run_all(&mut qemu);
    println!(
        "scenarios: {} passed, {} failed, {} skipped in {} ms ({} KiB heap)",
        sum.passed,
        sum.failed,
        sum.skipped,
        (timer::now_ns() - start) / 1_000_000,
        heap::used() / 1024
    );
    if sum.failed == 0 && sum.passed > 0 {
        println!("RESULT: PASS");
        semihost::exit(semihost::EXIT_PASS)
    }
    println!("RESULT: FAIL");
    semihost::exit(semihost::EXIT_FAIL)
}

/// Address beyond the 39-bit identity map: any access takes a translation fault.
const UNMAPPED: u64 = 1 << 40;

/// Proves the exception path: reads an unmapped address, so the vector must
/// print ESR/ELR/FAR and end the run with `EXIT_EXCEPTION` (the host script
/// checks both).
fn exception_selftest() -> ! {
    println!("SELFTEST exception: reading {UNMAPPED:#x}, expect a data abort");
    // SAFETY: the read faults (nothing is mapped there) and the exception
    // handler never returns, so no value is ever produced.
    let v = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    println!("SELFTEST exception: read returned {v:#x}, no exception taken");
    println!("RESULT: FAIL");
    semihost::exit(semihost::EXIT_FAIL)
}

/// Reports a failure to set up the test bed (not a scenario failure) and exits.
fn fail_setup(why: core::fmt::Arguments<'_>) -> ! {
    println!("SETUP FAILED: {why}");
    println!("RESULT: FAIL (setup)");
    semihost::exit(semihost::EXIT_FAIL)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("PANIC: {info}");
    println!("RESULT: FAIL (panic)");
    semihost::exit(semihost::EXIT_PANIC)
}
