//! ste-transitions: move one stream through bypass, stage 1, stage 2,
//! nested and abort with the driver's hitless STE updates, the device doing
//! DMA in every state and never seeing a broken configuration.

use alloc::format;
use alloc::string::String;

use io_pgtable::Granule;
use smmuv3::driver::StrtabFormat;
use smmuv3::{AttachOptions, Domain, Update};

use super::translate::{IOVA_DST, IOVA_SRC, IPA_DST, IPA_SRC, VA_BITS, rw, s1_domain, s2_domain};
use super::{
    Buf, Context, SENTINEL, bring_up, buffer, dev_read, dev_write, fill_pattern, no_events,
    round_trip, untouched, within,
};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

const LEN: usize = 256;

fn note(log: &mut String, what: &str, up: &Update) {
    if !log.is_empty() {
        log.push_str(", ");
    }
    log.push_str(&format!(
        "{what} ({} syncs{})",
        up.syncs(),
        if up.breaking { ", breaking" } else { "" }
    ));
}

/// One DMA round trip in the current state: at PAs (bypass) or at the
/// given input addresses.
fn works<P: Platform>(
    p: &mut P,
    src: &Buf<P>,
    dst: &Buf<P>,
    at: (u64, u64),
    seed: u8,
    state: &str,
) -> Result<(), Problem> {
    round_trip(p, (src, 0, at.0), (dst, 0, at.1), LEN, seed)
        .map_err(within(&format!("in state {state}")))
}

pub(crate) fn run<P: Platform>(p: &mut P) -> Outcome {
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let pa = (src.phys(), dst.phys());
    let mut log = String::new();

    let up = smmu.set_bypass(sid).ctx("abort -> bypass")?;
    note(&mut log, "bypass", &up);
    works(p, &src, &dst, pa, 0x71, "bypass")?;

    let s1 = s1_domain::<P>(&smmu, &src, &dst)?;
    let up = smmu
        .attach(sid, None, &s1, AttachOptions::default())
        .ctx("bypass -> stage 1")?;
    note(&mut log, "s1", &up);
    works(p, &src, &dst, (IOVA_SRC, IOVA_DST), 0x72, "stage 1")?;

    let up = smmu.set_bypass(sid).ctx("stage 1 -> bypass")?;
    note(&mut log, "bypass", &up);
    works(p, &src, &dst, pa, 0x73, "bypass again")?;

    if smmu.features().stage2 && smmu.features().nesting {
        let s2 = s2_domain(p, &smmu, &src, &dst, true)?;
        let up = smmu
            .attach(sid, None, &s2, AttachOptions::default())
            .ctx("bypass -> stage 2")?;
        note(&mut log, "s2", &up);
        works(p, &src, &dst, (IPA_SRC, IPA_DST), 0x74, "stage 2")?;

        let n1 =
            Domain::new_nested_stage1(&s2, Granule::K4, VA_BITS).ctx("nested stage-1 domain")?;
        n1.map(IOVA_SRC, IPA_SRC, 4096, rw()).ctx("nested map")?;
        n1.map(IOVA_DST, IPA_DST, 4096, rw()).ctx("nested map")?;
        let up = smmu
            .attach(sid, None, &n1, AttachOptions::default())
            .ctx("stage 2 -> nested")?;
        note(&mut log, "nested", &up);
        works(p, &src, &dst, (IOVA_SRC, IOVA_DST), 0x75, "nested")?;
        drop(n1);
        drop(s2);
    } else {
        log.push_str(", (no stage 2: s2/nested not visited)");
    }

    let up = smmu.set_abort(sid).ctx("-> abort")?;
    note(&mut log, "abort", &up);
    fill_pattern(&src, 0, LEN, 0x76)?;
    dst.fill(0, LEN, SENTINEL)?;
    dev_read(p, src.phys(), LEN)?;
    dev_write(p, dst.phys(), LEN)?;
    ensure!(
        untouched(&dst, 0, LEN)?,
        "a DMA write landed while the STE aborts"
    );

    let up = smmu.set_bypass(sid).ctx("abort -> bypass")?;
    note(&mut log, "bypass", &up);
    works(p, &src, &dst, pa, 0x77, "bypass after abort")?;

    let up = smmu
        .attach(sid, None, &s1, AttachOptions::default())
        .ctx("bypass -> stage 1 again")?;
    note(&mut log, "s1", &up);
    works(p, &src, &dst, (IOVA_SRC, IOVA_DST), 0x78, "stage 1 again")?;

    // Abort is silent and hitless updates never expose a broken STE.
    no_events(p, &smmu, "across the transitions")?;
    Ok(log)
}
