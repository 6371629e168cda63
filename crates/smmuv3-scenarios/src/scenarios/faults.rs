//! fault-translation, fault-permission, unmap-then-fault: transactions the
//! SMMU must stop, the event records it must write, and data that must stay
//! untouched. Faulting transfers are 4 bytes: one event each.

use alloc::format;
use alloc::string::String;

use io_pgtable::{Granule, Prot};
use smmuv3::driver::StrtabFormat;
use smmuv3::event::EventType;
use smmuv3::{AttachOptions, Domain, Smmu, SmmuConfig};

use super::translate::{IOVA_DST, IOVA_SRC, IPA_BITS, VA_BITS, rw, s1_domain};
use super::{
    Context, Drv, SENTINEL, bring_up, buffer, check_pattern, dev_read, dev_write, expect_fault,
    fill_pattern, no_events, page_transfer, round_trip, untouched, within,
};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

/// An IOVA nothing maps.
const IOVA_HOLE: u64 = 0x8_7654_3000;
/// Bytes of a faulting transfer.
const SMALL: usize = 4;

pub(crate) fn translation<P: Platform>(p: &mut P) -> Outcome {
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let d = s1_domain::<P>(&smmu, &src, &dst)?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach")?;

    // Load the device with data, so a write that wrongly lands is visible.
    fill_pattern(&src, 0, SMALL, 0x41)?;
    dev_read(p, IOVA_SRC, SMALL)?;
    no_events(p, &smmu, "after a mapped read")?;

    dev_write(p, IOVA_HOLE, SMALL)?;
    let w = expect_fault(p, &smmu, EventType::Translation, sid, IOVA_HOLE, false)?;
    ensure!(
        w.fault.is_some_and(|f| !f.stage2),
        "stage-1 fault reported as stage 2: {w}"
    );
    dev_read(p, IOVA_HOLE, SMALL)?;
    expect_fault(p, &smmu, EventType::Translation, sid, IOVA_HOLE, true)?;

    // The stream keeps working after faults.
    let len = page_transfer(p);
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, 0, IOVA_DST), len, 0x42)?;
    let mut detail =
        format!("F_TRANSLATION write+read at {IOVA_HOLE:#x} decoded (sid {sid:#x}, stage 1)");

    if smmu.features().stage2 {
        let s2 = Domain::new_stage2(&smmu, Granule::K4, IPA_BITS).ctx("stage-2 domain")?;
        drop(d);
        smmu.attach(sid, None, &s2, AttachOptions::default())
            .ctx("attach stage 2")?;
        dev_write(p, IOVA_HOLE, SMALL)?;
        let e = expect_fault(p, &smmu, EventType::Translation, sid, IOVA_HOLE, false)?;
        let f = e
            .fault
            .unwrap_or_else(|| unreachable!("expect_fault checked the fault"));
        ensure!(f.stage2, "stage-2 fault reported as stage 1: {e}");
        ensure!(
            f.ipa == Some(IOVA_HOLE),
            "stage-2 fault IPA {:?}, want {IOVA_HOLE:#x}: {e}",
            f.ipa
        );
        detail.push_str("; stage-2 F_TRANSLATION with IPA decoded");
    }
    Ok(detail)
}

pub(crate) fn permission<P: Platform>(p: &mut P) -> Outcome {
    let (src, dst, ro) = (buffer(p, 4096)?, buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let d = s1_domain::<P>(&smmu, &src, &dst)?;
    const IOVA_RO: u64 = 0x8_1234_7000;
    d.map(IOVA_RO, ro.phys(), 4096, Prot::READ | Prot::CACHE)
        .ctx("read-only map")?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach")?;

    fill_pattern(&src, 0, SMALL, 0x43)?;
    ro.fill(0, SMALL, SENTINEL)?;
    dev_read(p, IOVA_SRC, SMALL)?;
    dev_write(p, IOVA_RO, SMALL)?;
    expect_fault(p, &smmu, EventType::Permission, sid, IOVA_RO, false)?;
    ensure!(
        untouched(&ro, 0, SMALL)?,
        "a write to a read-only mapping landed in memory"
    );

    // Reading the read-only page is allowed and raises nothing.
    fill_pattern(&ro, 0, SMALL, 0x44)?;
    dev_read(p, IOVA_RO, SMALL)?;
    no_events(p, &smmu, "after reading a read-only page")?;
    dst.fill(0, SMALL, SENTINEL)?;
    dev_write(p, IOVA_DST, SMALL)?;
    check_pattern(&dst, 0, SMALL, 0x44)?;
    Ok(format!(
        "F_PERMISSION on a write at {IOVA_RO:#x} decoded, data untouched; reads allowed"
    ))
}

/// Pages unmapped at once (the changed translation is the last).
const UNMAP_PAGES: u64 = 3;

fn unmap_once<P: Platform>(p: &mut P, use_ril: bool, seed: u8) -> Result<String, Problem> {
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4 * 4096)?);
    let cfg = SmmuConfig {
        use_ril,
        ..SmmuConfig::default()
    };
    let smmu: Drv<P> = Smmu::new(p.regs(), p.mem(), p.clock(), cfg).ctx("driver bring-up")?;
    let sid = p.device().stream_id();
    let mut d = Domain::new_stage1(&smmu, Granule::K4, VA_BITS).ctx("stage-1 domain")?;
    d.map(IOVA_SRC, src.phys(), 4096, rw()).ctx("map source")?;
    d.map(IOVA_DST, dst.phys(), UNMAP_PAGES * 4096, rw())
        .ctx("map destination")?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach")?;

    // The write lands while mapped (and the SMMU caches the translation).
    let last = IOVA_DST + (UNMAP_PAGES - 1) * 4096;
    let last_off = ((UNMAP_PAGES - 1) * 4096) as usize;
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, last_off, last), SMALL, seed)?;
    let before = smmu.stats().tlbi_commands();
    let unmapped = d.unmap(IOVA_DST, UNMAP_PAGES * 4096).ctx("unmap")?;
    let tlbis = smmu.stats().tlbi_commands() - before;
    ensure!(
        unmapped == UNMAP_PAGES * 4096,
        "unmap returned {unmapped} bytes"
    );
    ensure!(
        d.translate(last).is_none(),
        "page still translates after unmap"
    );

    dst.fill(last_off, SMALL, SENTINEL)?;
    dev_write(p, last, SMALL)?;
    expect_fault(p, &smmu, EventType::Translation, sid, last, false)?;
    ensure!(
        untouched(&dst, last_off, SMALL)?,
        "the write reached memory after unmap: the driver's invalidation ({tlbis} TLBI commands, RIL {use_ril}) missed the cached translation"
    );
    Ok(format!(
        "{} ({tlbis} TLBI)",
        if use_ril && smmu.features().ril {
            "range"
        } else {
            "per-page"
        }
    ))
}

pub(crate) fn unmap_then_fault<P: Platform>(p: &mut P) -> Outcome {
    let with_ril = unmap_once(p, true, 0x45).map_err(within("driver with RIL"))?;
    let without = unmap_once(p, false, 0x46).map_err(within("driver without RIL"))?;
    Ok(format!(
        "write after the driver's unmap of {UNMAP_PAGES} pages faults (F_TRANSLATION), memory untouched: {with_ril}, {without}"
    ))
}
