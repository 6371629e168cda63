//! pci-bridges: what `pci.rs` programmed into each bridge is what the
//! bridge holds, and every function behind it has its BARs inside the
//! bridge's window (the scenarios then reach and DMA through them).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use smmuv3_scenarios::{Outcome, Problem, ensure};

use crate::pci::Function;

/// Type-1 header: bus numbers, memory base/limit.
const BUS_NUMBERS: u16 = 0x18;
const MEM_BASE_LIMIT: u16 = 0x20;

/// Checks every bridge in `functions`; fails when there is none.
pub fn check(functions: &[Function]) -> Outcome {
    let mut detail = String::new();
    for br in functions.iter() {
        let Some(b) = br.bridge else { continue };
        let at = br.bdf;
        let bus = at.read32(BUS_NUMBERS);
        let (pri, sec, sub) = (bus as u8, (bus >> 8) as u8, (bus >> 16) as u8);
        ensure!(
            (pri, sec, sub) == (at.bus, b.secondary, b.subordinate),
            "bridge {at:?} holds buses {pri}/{sec}/{sub}, enumeration set {}/{}/{}",
            at.bus,
            b.secondary,
            b.subordinate
        );
        ensure!(
            sec > at.bus && sub >= sec,
            "bridge {at:?}: secondary {sec}, subordinate {sub}"
        );
        let mem = at.read32(MEM_BASE_LIMIT);
        let base = u64::from(mem & 0xfff0) << 16;
        let limit = (u64::from((mem >> 16) & 0xfff0) << 16) + (1 << 20);
        let behind: Vec<&Function> = functions
            .iter()
            .filter(|f| (sec..=sub).contains(&f.bdf.bus))
            .collect();
        ensure!(!behind.is_empty(), "nothing found behind bridge {at:?}");
        let mut names = String::new();
        for f in &behind {
            for bar in f.bars.iter().flatten() {
                ensure!(
                    bar.addr >= base && bar.addr + bar.size <= limit,
                    "BAR {:#x}+{:#x} of {:?} outside its bridge window {base:#x}..{limit:#x}",
                    bar.addr,
                    bar.size,
                    f.bdf
                );
            }
            names.push_str(&format!(
                " {:04x}:{:04x} sid={:#x}",
                f.vendor,
                f.device,
                f.bdf.requester_id()
            ));
        }
        ensure!(
            (base, limit) == b.window,
            "bridge {at:?} window reads {base:#x}..{limit:#x}, enumeration set {:#x}..{:#x}",
            b.window.0,
            b.window.1
        );
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!(
            "{:02x}:{:02x}.{} -> bus {sec}..{sub} window {base:#x}..{limit:#x}:{names}",
            at.bus, at.dev, at.func
        ));
    }
    if detail.is_empty() {
        return Err(Problem::fail(format_args!(
            "no PCI bridge found (scripts/qemu-test.sh adds a pcie-root-port)"
        )));
    }
    Ok(detail)
}
