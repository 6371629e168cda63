//! A minimal EL2 hypervisor for QEMU `virt` (issue 13): it boots Debian's
//! stock arm64 Linux at EL1 as its host, keeps its own memory out of the
//! host's reach with a CPU stage 2, and traps every host access to the SMMUv3
//! register frame (unmapped in that stage 2) into a [`TrappedMmio`]
//! device. For bring-up the device is a pass-through to the real frame;
//! issue 12's virtual SMMU goes behind the same seam.
//!
//! [`TrappedMmio`]: hyp_host::mmio::TrappedMmio

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

mod arch;
#[path = "../../baremetal/src/console.rs"]
mod console;
#[path = "../../baremetal/src/heap.rs"]
mod heap;
mod host;
#[path = "../../baremetal/src/layout.rs"]
#[allow(dead_code)]
mod layout;
mod mmu;
mod passthrough;
mod psci;
#[path = "../../baremetal/src/semihost.rs"]
#[allow(dead_code)]
mod semihost;
#[path = "../../baremetal/src/timer.rs"]
#[allow(dead_code)]
mod timer;
mod vsmmu;

use core::panic::PanicInfo;

use hyp_host::dtb::{self, Bank, Patch};
use hyp_host::image::ImageHeader;
use hyp_host::mmio::TrappedMmio;

use alloc::boxed::Box;

/// Exit status: the host made an access the hypervisor refused to emulate.
pub const EXIT_REFUSED: u32 = 5;
/// Exit status: the host asked for a reset.
pub const EXIT_RESET: u32 = 6;
/// Exit status: the boot could not be set up (bad arguments, images, tree).
pub const EXIT_SETUP: u32 = 7;

/// Room the rewritten device tree may grow by (new properties, split banks).
const DTB_SLACK: usize = 4096;

unsafe extern "C" {
    static __image_start: u8;
}

/// Where the host's images are and what it is told, from the semihosting
/// command line: `image=ADDR initrd=ADDR initrd-size=N -- BOOTARGS...`.
struct Config<'a> {
    image: u64,
    initrd: u64,
    initrd_size: u64,
    /// `smmu=passthrough`: the bring-up pass-through instead of the
    /// virtual SMMU (for comparing what Linux does with each).
    passthrough: bool,
    /// `donate-after=N`: the donation test hook (`vsmmu::DonationHook`).
    donate_after: Option<u64>,
    bootargs: &'a str,
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_config(cmdline: &str) -> Result<Config<'_>, &'static str> {
    let (opts, bootargs) = cmdline
        .split_once(" -- ")
        .ok_or("no ' -- ' before the bootargs")?;
    let (mut image, mut initrd, mut initrd_size) = (None, None, None);
    let mut passthrough = false;
    let mut donate_after = None;
    for word in opts.split(' ') {
        if let Some(device) = word.strip_prefix("smmu=") {
            passthrough = match device {
                "passthrough" => true,
                "virtual" => false,
                _ => return Err("smmu= is neither virtual nor passthrough"),
            };
        } else if let Some((key, value)) = word.split_once('=') {
            let slot = match key {
                "image" => &mut image,
                "initrd" => &mut initrd,
                "initrd-size" => &mut initrd_size,
                "donate-after" => &mut donate_after,
                _ => continue,
            };
            *slot = Some(number(value).ok_or("a number is malformed")?);
        }
    }
    Ok(Config {
        image: image.ok_or("image= is missing")?,
        initrd: initrd.ok_or("initrd= is missing")?,
        initrd_size: initrd_size.ok_or("initrd-size= is missing")?,
        passthrough,
        donate_after,
        bootargs: bootargs.trim(),
    })
}

/// Returns whether `[a, a + alen)` and `[b, b + blen)` overlap.
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// Rust entry at EL2, from `_start`, with the device tree QEMU passed.
#[unsafe(no_mangle)]
extern "C" fn hyp_main(x0: u64) -> ! {
    console::init();
    // QEMU boots an ELF that is not Linux with x0 = 0 and its device tree
    // at the start of RAM; a boot loader that follows the arm64 protocol
    // passes the tree in x0.
    let dtb_addr = if x0 == 0 { layout::RAM } else { x0 };
    if arch::current_el() != 2 {
        setup_failed(format_args!(
            "entered at EL{}, not EL2: run QEMU with -M virt,virtualization=on",
            arch::current_el()
        ));
    }
    // SAFETY: first thing at EL2, MMU off, one CPU.
    unsafe { mmu::enable() };
    let start = timer::ticks();
    let hyp = Bank {
        base: &raw const __image_start as u64,
        size: layout::RAM + layout::RAM_SIZE - &raw const __image_start as u64,
    };
    println!(
        "HYP: smmuv3-hypervisor at EL2, own memory {:#x}..{:#x}, device tree at {dtb_addr:#x}",
        hyp.base,
        hyp.base + hyp.size
    );

    let mut buf = [0u8; 1024];
    let cmdline = semihost::cmdline(&mut buf).unwrap_or("");
    let config = parse_config(cmdline).unwrap_or_else(|why| {
        setup_failed(format_args!("semihosting command line {cmdline:?}: {why}"))
    });

    // QEMU's tree: bounds-checked through its header before anything else.
    // SAFETY: QEMU places the tree in RAM (identity mapped) and its header's
    // first 8 bytes are readable wherever x0 points into RAM.
    let header = unsafe { core::slice::from_raw_parts(dtb_addr as *const u8, 8) };
    let dtb_len = dtb::total_size(header).unwrap_or_else(|e| setup_failed(format_args!("{e}")));
    // SAFETY: the header says the tree is `dtb_len` bytes; it lies in RAM.
    let qemu_dtb = unsafe { core::slice::from_raw_parts(dtb_addr as *const u8, dtb_len) };
    let mut banks = [Bank { base: 0, size: 0 }; 4];
    let nbanks = dtb::memory_banks(qemu_dtb, &mut banks)
        .unwrap_or_else(|e| setup_failed(format_args!("device tree: {e}")));
    let ram = &banks[..nbanks.min(banks.len())];
    if !ram
        .iter()
        .any(|b| b.base <= hyp.base && hyp.base + hyp.size <= b.base + b.size)
    {
        setup_failed(format_args!(
            "the hypervisor's memory is not inside RAM {ram:x?}: run QEMU with -m 1G"
        ));
    }

    // The Linux Image, loaded by QEMU's generic loader.
    // SAFETY: the loader put the Image at `config.image` in RAM; 64 bytes of
    // header are readable there.
    let image_header = unsafe { core::slice::from_raw_parts(config.image as *const u8, 64) };
    let image = ImageHeader::parse(image_header)
        .unwrap_or_else(|e| setup_failed(format_args!("Image at {:#x}: {e}", config.image)));
    let entry = image
        .entry(config.image)
        .unwrap_or_else(|e| setup_failed(format_args!("{e}")));
    let initrd_end = config.initrd + config.initrd_size;
    let new_dtb = (initrd_end + 0xffff) & !0xffff;
    let new_len = dtb_len + DTB_SLACK;
    for (what, base, len) in [
        ("the Image", config.image, image.image_size),
        ("the initramfs", config.initrd, config.initrd_size),
        ("the device tree", new_dtb, new_len as u64),
    ] {
        if overlaps(base, len, hyp.base, hyp.size) || overlaps(base, len, dtb_addr, dtb_len as u64)
        {
            setup_failed(format_args!(
                "{what} at {base:#x}+{len:#x} overlaps the hypervisor or QEMU's tree"
            ));
        }
    }
    if overlaps(
        config.image,
        image.image_size,
        config.initrd,
        config.initrd_size,
    ) || overlaps(config.image, image.image_size, new_dtb, new_len as u64)
    {
        setup_failed(format_args!(
            "the Image's {:#x} bytes at {:#x} overlap the initramfs or device tree",
            image.image_size, config.image
        ));
    }

    // The host's tree: /chosen set, the hypervisor's memory cut out.
    let mut bootargs = [0u8; 512];
    let args = config.bootargs.as_bytes();
    if args.len() >= bootargs.len() {
        setup_failed(format_args!(
            "bootargs longer than {} bytes",
            bootargs.len() - 1
        ));
    }
    bootargs[..args.len()].copy_from_slice(args);
    let start_be = config.initrd.to_be_bytes();
    let end_be = initrd_end.to_be_bytes();
    let chosen: [(&str, &[u8]); 3] = [
        ("bootargs", &bootargs[..=args.len()]),
        ("linux,initrd-start", &start_be),
        ("linux,initrd-end", &end_be),
    ];
    let patch = Patch {
        chosen: &chosen,
        carve: Some(hyp),
    };
    // SAFETY: `[new_dtb, new_dtb + new_len)` is host RAM that overlaps
    // neither the hypervisor, QEMU's tree, the Image nor the initramfs
    // (checked above), and nothing else refers to it.
    let out = unsafe { core::slice::from_raw_parts_mut(new_dtb as *mut u8, new_len) };
    let host_dtb_len = dtb::rewrite(qemu_dtb, &patch, out)
        .unwrap_or_else(|e| setup_failed(format_args!("rewriting the device tree: {e}")));
    arch::clean_dcache(new_dtb, host_dtb_len as u64);

    let (vttbr, tables) = host::build_stage2(ram, hyp)
        .unwrap_or_else(|e| setup_failed(format_args!("host stage 2: {e}")));
    let setup_us = timer::ticks().saturating_sub(start) * 1_000_000 / timer::frequency().max(1);
    println!(
        "HYP: host stage 2 at {vttbr:#x} ({tables} tables): RAM {ram:x?} minus {:#x}+{:#x}, SMMU frame {:#x}+{:#x} trapped",
        hyp.base,
        hyp.size,
        layout::SMMU,
        layout::SMMU_SIZE
    );
    // The device behind the trapped SMMU frame: the virtual SMMU over the
    // real one, which the hypervisor's own driver brings up now; or, when
    // asked, the bring-up pass-through.
    let t = timer::ticks();
    let smmu: &'static mut dyn TrappedMmio = if config.passthrough {
        println!("HYP: SMMU frame passed through to the real SMMU (smmu=passthrough)");
        Box::leak(Box::new(passthrough::Passthrough::new(
            layout::SMMU,
            layout::SMMU_SIZE,
        )))
    } else {
        let virt =
            vsmmu::VirtualSmmu::new(ram, hyp, config.donate_after.map(vsmmu::DonationHook::new))
                .unwrap_or_else(|e| setup_failed(format_args!("virtual SMMU: {e}")));
        let us = timer::ticks().saturating_sub(t) * 1_000_000 / timer::frequency().max(1);
        println!(
            "HYP: virtual SMMU over the real one at {:#x}: shadow stage 2 {:?}, {} bytes of heap, setup {us} us",
            layout::SMMU,
            virt.geometry(),
            heap::used()
        );
        Box::leak(Box::new(virt))
    };
    println!(
        "HYP: entering Linux at EL1: Image {entry:#x} (image_size {:#x}), initrd {:#x}..{initrd_end:#x}, device tree {new_dtb:#x} ({host_dtb_len} bytes), bootargs {:?}, setup {setup_us} us",
        image.image_size, config.initrd, config.bootargs
    );
    // SAFETY: the host has not run yet; nothing else uses the state.
    unsafe { host::install_smmu(smmu) };
    // SAFETY: as above.
    if let Some(st) = unsafe { host::state() } {
        st.entered_ticks = timer::ticks();
    }
    // SAFETY: the stage 2 keeps the hypervisor out of reach (checked by
    // `build_stage2`), the Image's header was validated at `entry`, and the
    // tree is written and cleaned to the point of coherency.
    unsafe { host::enter(entry, new_dtb, vttbr) }
}

/// Prints the hypervisor's statistics and ends the run with `status`.
pub fn stop(status: u32) -> ! {
    // SAFETY: called from the trap handler or a fatal path, on the one CPU,
    // after which nothing runs; no other reference to the state is used again.
    match unsafe { host::state() } {
        Some(st) => {
            let ticks = timer::ticks().saturating_sub(st.entered_ticks);
            let host_ms = ticks * 1000 / timer::frequency().max(1);
            println!("HYP-STATS smmu {}", st.smmu.stats());
            if let Some(r) = st.smmu.stats().first_refusal {
                println!("HYP-STATS first refusal: {r}");
            }
            let _ = st.smmu.device().report(&mut console::Console);
            println!(
                "HYP-STATS smc={} hvc={} host-ms={host_ms} heap-bytes={} exit={status}",
                st.smcs,
                st.hvcs,
                heap::used()
            );
        }
        None => println!("HYP-STATS none (the host never ran) exit={status}"),
    }
    semihost::exit(status)
}

/// Reports a failure to set up the host's boot and exits.
fn setup_failed(why: core::fmt::Arguments<'_>) -> ! {
    println!("HYP-SETUP-FAILED {why}");
    semihost::exit(EXIT_SETUP)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    println!("HYP-PANIC {info}");
    semihost::exit(semihost::EXIT_PANIC)
}
