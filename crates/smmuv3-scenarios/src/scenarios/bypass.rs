//! bypass-dma / abort-dma: with the SMMU disabled, GBPA decides whether
//! device traffic passes untranslated or is aborted. Programmed directly
//! through registers (no stream table needed), so it also proves the
//! DMA path itself before any translation scenario runs.

use smmuv3::env::{RegisterFrame, poll};
use smmuv3::regs;

use super::{SENTINEL, buffer, check_pattern, fill_pattern, page_transfer, round_trip, untouched};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

/// GBPA.UPDATE: set to request an update; the SMMU clears it when done.
const GBPA_UPDATE: u32 = 1 << 31;
/// GBPA.ABORT: abort all incoming transactions while SMMUEN = 0.
const GBPA_ABORT: u32 = 1 << 20;
/// CR0.SMMUEN.
const CR0_SMMUEN: u32 = 1 << 0;
/// Bound on register handshakes.
const TIMEOUT_US: u64 = 100_000;

/// Disables translation (CR0.SMMUEN = 0) and waits for the acknowledgement.
fn disable<P: Platform>(p: &P) -> Result<(), Problem> {
    let f = p.regs();
    let clock = p.clock();
    let cr0 = f.read32(regs::CR0);
    if cr0 & CR0_SMMUEN != 0 {
        f.write32(regs::CR0, cr0 & !CR0_SMMUEN);
    }
    poll(&clock, TIMEOUT_US, false, || {
        (f.read32(regs::CR0ACK) & CR0_SMMUEN == 0).then_some(())
    })
    .map_err(|_| {
        Problem::fail(format_args!(
            "CR0ACK.SMMUEN still set after clearing CR0.SMMUEN"
        ))
    })
}

/// Sets GBPA.ABORT to `abort` with the UPDATE handshake.
fn set_gbpa_abort<P: Platform>(p: &P, abort: bool) -> Result<(), Problem> {
    let f = p.regs();
    let env = p.clock();
    poll(&env, TIMEOUT_US, false, || {
        (f.read32(regs::GBPA) & GBPA_UPDATE == 0).then_some(())
    })
    .map_err(|_| Problem::fail(format_args!("GBPA.UPDATE stuck before the update")))?;
    let old = f.read32(regs::GBPA) & !GBPA_UPDATE;
    let new = if abort {
        old | GBPA_ABORT
    } else {
        old & !GBPA_ABORT
    };
    f.write32(regs::GBPA, new | GBPA_UPDATE);
    poll(&env, TIMEOUT_US, false, || {
        (f.read32(regs::GBPA) & GBPA_UPDATE == 0).then_some(())
    })
    .map_err(|_| Problem::fail(format_args!("GBPA.UPDATE not cleared by the SMMU")))?;
    let got = f.read32(regs::GBPA);
    ensure!(
        got & GBPA_ABORT == new & GBPA_ABORT,
        "GBPA reads {got:#x} after writing {new:#x}"
    );
    Ok(())
}

pub(crate) fn bypass<P: Platform>(p: &mut P) -> Outcome {
    disable(p)?;
    set_gbpa_abort(p, false)?;
    let len = page_transfer(p);
    let src = buffer(p, 4096)?;
    let dst = buffer(p, 4096)?;
    round_trip(p, (&src, 0, src.phys()), (&dst, 0, dst.phys()), len, 0x11)?;
    Ok(alloc::format!(
        "{len} bytes copied untranslated (SMMUEN=0, GBPA.ABORT=0)"
    ))
}

pub(crate) fn abort<P: Platform>(p: &mut P) -> Outcome {
    disable(p)?;
    set_gbpa_abort(p, false)?;
    let src = buffer(p, 4096)?;
    let dst = buffer(p, 4096)?;
    // Load the device buffer with a pattern while traffic still passes, so a
    // write that wrongly gets through is visible in `dst`.
    fill_pattern(&src, 0, 64, 0x22)?;
    dst.fill(0, 64, SENTINEL)?;
    let dev_err = |e| Problem::fail(format_args!("device: {e}"));
    p.device()
        .read_from_bus(src.phys(), 0, 64)
        .map_err(dev_err)?;
    set_gbpa_abort(p, true)?;
    let blocked = p.device().write_to_bus(0, dst.phys(), 64).map_err(dev_err);
    // Leave the machine in bypass for whatever runs next, even on failure.
    set_gbpa_abort(p, false)?;
    blocked?;
    ensure!(
        untouched(&dst, 0, 64)?,
        "a DMA write landed in memory although GBPA.ABORT=1"
    );
    // The same write in bypass lands: the device really held the pattern.
    p.device()
        .write_to_bus(0, dst.phys(), 64)
        .map_err(dev_err)?;
    check_pattern(&dst, 0, 64, 0x22)?;
    Ok(alloc::string::String::from(
        "DMA write blocked with GBPA.ABORT=1, lands with ABORT=0 (SMMUEN=0)",
    ))
}
