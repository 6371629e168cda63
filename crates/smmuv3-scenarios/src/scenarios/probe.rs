//! probe: the SMMU presents the ID registers we expect, and the driver's
//! parser reads them the way this scenario decodes them independently.

use alloc::string::String;
use core::fmt::Write as _;

use smmuv3::probe::{IdRegs, parse};

use crate::{Outcome, Platform, Problem, ensure};

/// Independent decode of a few ID fields (SMMUv3 IDR0/IDR1/IDR3/IDR5).
fn bit(v: u32, b: u32) -> bool {
    (v >> b) & 1 != 0
}

pub(crate) fn run<P: Platform>(p: &mut P) -> Outcome {
    let ids = IdRegs::read(&p.regs());
    let [idr0, idr1, _, idr3, _, idr5] = ids.idr;
    let mut detail = String::new();
    let _ = write!(
        detail,
        "IDR0={idr0:#010x} IDR1={idr1:#010x} IDR3={idr3:#x} IDR5={idr5:#x} IIDR={:#x} AIDR={:#x}",
        ids.iidr, ids.aidr
    );

    if let Some(want) = p.expected_ids() {
        let mut bad = String::new();
        for (name, got, exp) in [
            ("IDR0", idr0, want.idr0),
            ("IDR1", idr1, want.idr1),
            ("IDR3", idr3, want.idr3),
            ("IDR5", idr5, want.idr5),
            ("IIDR", ids.iidr, want.iidr),
            ("AIDR", ids.aidr, want.aidr),
        ] {
            if got != exp {
                let _ = write!(bad, " {name}={got:#x} (want {exp:#x})");
            }
        }
        ensure!(
            bad.is_empty(),
            "ID registers differ from profile {}:{bad}",
            want.name
        );
        let _ = write!(detail, " profile={}", want.name);
    }

    let f = parse(&ids)
        .map_err(|e| Problem::fail(format_args!("driver refuses the SMMU: {e} ({detail})")))?;
    // Cross-check the driver's parser against our own decode of the fields.
    ensure!(
        f.stage1 == bit(idr0, 1),
        "stage1={} but IDR0.S1P={}",
        f.stage1,
        bit(idr0, 1)
    );
    ensure!(
        f.stage2 == bit(idr0, 0),
        "stage2={} but IDR0.S2P={}",
        f.stage2,
        bit(idr0, 0)
    );
    ensure!(
        f.coherent == bit(idr0, 4),
        "coherent={} but IDR0.COHACC={}",
        f.coherent,
        bit(idr0, 4)
    );
    ensure!(
        f.asid_bits == if bit(idr0, 12) { 16 } else { 8 },
        "asid_bits={}",
        f.asid_bits
    );
    ensure!(
        f.vmid_bits == if bit(idr0, 18) { 16 } else { 8 } || !f.stage2,
        "vmid_bits={}",
        f.vmid_bits
    );
    ensure!(
        f.strtab_2lvl == ((idr0 >> 27) & 3 == 1),
        "strtab_2lvl={}",
        f.strtab_2lvl
    );
    ensure!(
        u32::from(f.sid_bits) == idr1 & 0x3f,
        "sid_bits={} but IDR1.SIDSIZE={}",
        f.sid_bits,
        idr1 & 0x3f
    );
    ensure!(
        f.ril == bit(idr3, 10),
        "ril={} but IDR3.RIL={}",
        f.ril,
        bit(idr3, 10)
    );
    let oas = [32u8, 36, 40, 42, 44, 48, 52]
        .get((idr5 & 7) as usize)
        .copied();
    ensure!(
        Some(f.oas_bits) == oas,
        "oas_bits={} but IDR5.OAS={}",
        f.oas_bits,
        idr5 & 7
    );
    if bit(idr5, 4) {
        let want = (1u64 << 12) | (1 << 21) | (1 << 30);
        ensure!(
            f.pgsize_bitmap & want == want,
            "4K granule sizes missing from {:#x}",
            f.pgsize_bitmap
        );
    }
    let _ = write!(
        detail,
        " stages={}{}",
        if f.stage1 { "1" } else { "" },
        if f.stage2 { "2" } else { "" }
    );
    Ok(detail)
}
