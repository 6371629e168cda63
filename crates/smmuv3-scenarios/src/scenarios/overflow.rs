//! event-overflow: a 4 KiB write to an unmapped IOVA raises one fault per
//! 4-byte beat (QEMU's edu, and our simulated device, issue beats), 1024
//! events into the driver's 128-entry event queue. The driver must report
//! the overflow, keep what fit, acknowledge it, and record the next fault
//! normally.

use alloc::format;

use smmuv3::AttachOptions;
use smmuv3::driver::StrtabFormat;
use smmuv3::event::EventType;

use super::translate::{IOVA_SRC, s1_domain};
use super::{Context, bring_up, buffer, dev_read, dev_write, expect_fault, fill_pattern, list};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

/// An unmapped IOVA range.
const IOVA_HOLE: u64 = 0x8_7654_0000;

pub(crate) fn run<P: Platform>(p: &mut P) -> Outcome {
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let d = s1_domain::<P>(&smmu, &src, &dst)?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach")?;
    fill_pattern(&src, 0, 4096, 0x91)?;
    dev_read(p, IOVA_SRC, 4096)?;

    dev_write(p, IOVA_HOLE, 4096)?;
    let batch = smmu.drain_events().ctx("draining the event queue")?;
    let n = batch.events.len();
    let queue = 1usize << smmu.config().evtq_log2.min(smmu.features().evtq_log2);
    let no_flag = p.leniency().no_eventq_overflow_flag;
    if no_flag {
        // Known QEMU departure: the queue fills, the rest is dropped silently.
        ensure!(
            n == queue,
            "{n} events drained, want a full queue of {queue}"
        );
    } else {
        ensure!(
            batch.overflowed,
            "1024 faulting beats into a {queue}-entry event queue did not report an overflow ({n} events drained)"
        );
        ensure!(
            (1..=queue).contains(&n),
            "{n} events drained from a {queue}-entry queue"
        );
        ensure!(
            smmu.stats().overflows >= 1,
            "driver statistics count no overflow"
        );
    }
    let bad = batch.events.iter().find(|e| {
        e.ty != EventType::Translation
            || e.sid != sid
            || !e
                .fault
                .is_some_and(|f| (IOVA_HOLE..IOVA_HOLE + 4096).contains(&f.addr) && !f.read)
    });
    if let Some(e) = bad {
        return Err(Problem::fail(format_args!(
            "unexpected event in the overflowed queue: {}",
            list(&[*e])
        )));
    }

    // After the acknowledgement the queue records again.
    let next = IOVA_HOLE + 0x1_0000;
    dev_write(p, next, 4)?;
    expect_fault(p, &smmu, EventType::Translation, sid, next, false)?;
    Ok(if no_flag {
        format!(
            "queue filled with {n} of 1024 events, no OVFLG (known QEMU leniency); the next fault was recorded normally"
        )
    } else {
        format!(
            "overflow reported after {n} of 1024 events fit a {queue}-entry queue; the next fault was recorded normally"
        )
    })
}
