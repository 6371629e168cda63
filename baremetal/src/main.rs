//! Bare-metal aarch64 test kernel for QEMU `virt` with `iommu=smmuv3`.
//!
//! Boots at EL1, turns on the MMU with an identity map, enumerates PCI through
//! its bridges, finds the `edu` device and runs the scenarios of
//! `smmuv3-scenarios` against QEMU's SMMUv3, then this kernel's own: the
//! bridges, and virtio-drivers' block driver over `dma-mapping` on two
//! virtio-blk-pci disks. Each scenario prints
//! `SCENARIO <name>: PASS|FAIL|SKIP <detail>`; the run ends through
//! semihosting with status 0 only when none failed.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

mod arch;
mod bridges;
mod cksum;
mod console;
mod disk;
mod dma;
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
        let bar = f.bars.iter().flatten().next().copied().unwrap_or_default();
        println!(
            "pci {:02x}:{:02x}.{} {:04x}:{:04x} first bar={:#x}+{:#x}{}",
            f.bdf.bus,
            f.bdf.dev,
            f.bdf.func,
            f.vendor,
            f.device,
            bar.addr,
            bar.size,
            match f.bridge {
                Some(b) => alloc::format!(
                    " bridge to bus {}..{} window {:#x}..{:#x}",
                    b.secondary,
                    b.subordinate,
                    b.window.0,
                    b.window.1
                ),
                None => alloc::string::String::new(),
            }
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
    let mut sum = smmuv3_scenarios::run_all(&mut qemu);
    let found: alloc::vec::Vec<pci::Function> =
        functions.iter().flatten().take(count).copied().collect();
    kernel_scenarios(&found, &mut sum);
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

/// Runs this kernel's own scenarios (QEMU only: real PCI bridges, virtio
/// devices) after the shared ones, in the same line format.
fn kernel_scenarios(functions: &[pci::Function], sum: &mut smmuv3_scenarios::Summary) {
    use smmuv3_scenarios::{Outcome, Problem, ResultLine};
    let mut report = |name: &str, run: &mut dyn FnMut() -> Outcome| {
        println!("SCENARIO-BEGIN {name}");
        let outcome = run();
        println!("{}", ResultLine::new(name, &outcome));
        match outcome {
            Ok(_) => sum.passed += 1,
            Err(Problem::Fail(_)) => sum.failed += 1,
            Err(Problem::Skip(_)) => sum.skipped += 1,
        }
    };
    report("pci-bridges", &mut || bridges::check(functions));
    let mut disks = disk::Disks::new(functions);
    let steps: [(&str, fn(&mut disk::Disks) -> Outcome); 4] = [
        ("virtio-blk-read", disk::read_disk),
        ("virtio-blk-write", disk::write_disk),
        ("virtio-blk-unmapped-fault", disk::unmapped_fault),
        ("virtio-blk-two-domains", disk::two_domains),
    ];
    for (name, step) in steps {
        report(name, &mut || match &mut disks {
            Ok(d) => step(d),
            Err(e) => Err(e.clone()),
        });
    }
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
