//! ste-switch-under-dma: start a DMA write, switch the stream's STE (bypass
//! to stage 1 and back) while it is in flight, then let it finish. The write
//! must land exactly once, under the old or the new configuration, never
//! both, never elsewhere, and raise nothing: a hitless update leaves no
//! window in which the device sees a broken STE.
//!
//! With QEMU's edu the copy really runs ~100 ms after the command, so the
//! switch happens while it is pending; a synchronous device only checks the
//! order "DMA, then switch".

use alloc::format;
use alloc::string::String;

use io_pgtable::Granule;
use smmuv3::driver::StrtabFormat;
use smmuv3::{AttachOptions, Domain};

use super::translate::{VA_BITS, rw};
use super::{
    Buf, Context, Drv, SENTINEL, bring_up, buffer, check_pattern, dev_read, fill_pattern,
    no_events, untouched,
};
use crate::{DmaDevice, Outcome, Platform, Problem};

const LEN: usize = 256;

/// Which buffer a write landed in.
fn landed<P: Platform>(old: &Buf<P>, new: &Buf<P>, seed: u8) -> Result<&'static str, Problem> {
    let in_old = check_pattern(old, 0, LEN, seed).is_ok();
    let in_new = check_pattern(new, 0, LEN, seed).is_ok();
    match (
        in_old,
        in_new,
        untouched(old, 0, LEN)?,
        untouched(new, 0, LEN)?,
    ) {
        (true, false, _, true) => Ok("old"),
        (false, true, true, _) => Ok("new"),
        (o, n, ou, nu) => Err(Problem::fail(format_args!(
            "write landed badly: pattern in old={o} new={n}, old untouched={ou}, new untouched={nu}"
        ))),
    }
}

fn start<P: Platform>(p: &mut P, iova: u64) -> Result<(), Problem> {
    p.device()
        .start_write_to_bus(0, iova, LEN)
        .map_err(|e| Problem::fail(format_args!("starting a write at {iova:#x}: {e}")))
}

fn finish<P: Platform>(p: &mut P) -> Result<(), Problem> {
    p.device()
        .finish()
        .map_err(|e| Problem::fail(format_args!("finishing the write: {e}")))
}

pub(crate) fn run<P: Platform>(p: &mut P) -> Outcome {
    let (src, bypassed, translated) = (buffer(p, 4096)?, buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu: Drv<P> = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    // The device always writes to the PA of `bypassed`: bypass puts it
    // there, stage 1 maps that same address (as an IOVA) to `translated`.
    let target = bypassed.phys();
    let d = Domain::new_stage1(&smmu, Granule::K4, VA_BITS).ctx("stage-1 domain")?;
    d.map(target, translated.phys(), 4096, rw()).ctx("map")?;
    d.map(src.phys(), src.phys(), 4096, rw())
        .ctx("map source")?;
    let mut log = String::new();

    for (round, seed) in [(0u8, 0xa1u8), (1, 0xa2)] {
        // Round 0: bypass -> stage 1. Round 1: stage 1 -> bypass.
        if round == 0 {
            smmu.set_bypass(sid).ctx("bypass")?;
        } else {
            smmu.attach(sid, None, &d, AttachOptions::default())
                .ctx("attach")?;
        }
        fill_pattern(&src, 0, LEN, seed)?;
        dev_read(p, src.phys(), LEN)?;
        bypassed.fill(0, LEN, SENTINEL)?;
        translated.fill(0, LEN, SENTINEL)?;
        start(p, target)?;
        let up = if round == 0 {
            smmu.attach(sid, None, &d, AttachOptions::default())
                .ctx("bypass -> stage 1 under DMA")?
        } else {
            smmu.set_bypass(sid).ctx("stage 1 -> bypass under DMA")?
        };
        finish(p)?;
        let (old, new) = if round == 0 {
            (&bypassed, &translated)
        } else {
            (&translated, &bypassed)
        };
        let which = landed::<P>(old, new, seed)?;
        log.push_str(&format!(
            "{}{}: landed under the {which} STE ({} syncs)",
            if round == 0 { "" } else { ", " },
            if round == 0 {
                "bypass->s1"
            } else {
                "s1->bypass"
            },
            up.syncs()
        ));
    }
    no_events(p, &smmu, "across STE switches under DMA")?;
    if !p.device().is_asynchronous() {
        log.push_str(" (synchronous device: order only)");
    }
    Ok(log)
}
