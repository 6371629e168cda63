//! A protected hypervisor's host stage-2 shadow (`hyp-iommu`) on the real
//! SMMU: the host device reaches host RAM through it, a donated page is out
//! of its reach the moment the donation returns while the neighbouring
//! page is not, and a reclaimed page comes back scrubbed.

use alloc::format;
use alloc::vec;

use hyp_iommu::{HypIommu, MemoryMap, Options, Range, Scrub, ScrubError};
use smmuv3::driver::StrtabFormat;
use smmuv3::env::DmaMemory;
use smmuv3::event::EventType;

use super::{
    Buf, Context, SENTINEL, bring_up, buffer, dev_read, dev_write, events, list, need_stage2,
    no_events, page_transfer, round_trip, untouched,
};
use crate::{DmaBuffer, DmaDevice, Outcome, Platform, Problem};

const PAGE: u64 = 4096;

/// Scrubs pages of one DMA buffer (the only pages this scenario reclaims).
pub(crate) struct BufScrub<'a, M: DmaMemory>(pub(crate) &'a DmaBuffer<M>);

impl<M: DmaMemory> Scrub for BufScrub<'_, M> {
    fn scrub(&self, addr: u64, len: u64) -> Result<(), ScrubError> {
        let off = addr.checked_sub(self.0.phys()).ok_or(ScrubError)? as usize;
        self.0.fill(off, len as usize, 0).map_err(|_| ScrubError)
    }
}

pub(crate) fn shadow<P: Platform>(p: &mut P) -> Outcome {
    let len = page_transfer(p);
    let src: Buf<P> = buffer(p, 4096)?;
    // Two pages: the first is donated, the second is its neighbour.
    let pages: Buf<P> = buffer(p, 8192)?;
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    need_stage2::<P>(&smmu)?;
    let sid = p.device().stream_id();
    let (base, size) = p.ram();
    let map = MemoryMap::new(&[Range::new(base, size)], &[], &[]).ctx("memory map")?;
    let mut hyp = HypIommu::new(
        &map,
        vec![smmu.clone()],
        p.mem(),
        BufScrub(&pages),
        Options::default(),
    )
    .ctx("hypervisor IOMMU")?;
    hyp.attach_host_stream(0, sid)
        .ctx("host stream onto the shadow")?;
    let (a, b) = (pages.phys(), pages.phys() + PAGE);
    // Identity: the device uses physical addresses.
    round_trip(p, (&src, 0, src.phys()), (&pages, 0, a), len, 0x61)?;
    no_events(p, &smmu, "before the donation")?;
    hyp.donate_to_guest(a, PAGE, 1).ctx("donating the page")?;
    // A short write: the device faults once per bus beat, and the event
    // queue must not overflow.
    let short = len.min(64);
    pages.fill(0, len, SENTINEL)?;
    dev_read(p, src.phys(), short)?;
    dev_write(p, a, short)?;
    if !untouched(&pages, 0, len)? {
        return Err(Problem::fail(format_args!(
            "the device wrote a page donated to a guest"
        )));
    }
    let ev = events(p, &smmu, 1)?;
    let blocked = !ev.is_empty()
        && ev.iter().all(|e| {
            e.ty == EventType::Translation
                && e.sid == sid
                && e.fault
                    .is_some_and(|f| f.stage2 && (a..a + PAGE).contains(&f.addr))
        });
    if !blocked {
        return Err(Problem::fail(format_args!(
            "want stage-2 translation faults in the donated page, got {}",
            list(&ev)
        )));
    }
    // The neighbour in the same former block never stopped working.
    round_trip(
        p,
        (&src, 0, src.phys()),
        (&pages, PAGE as usize, b),
        len,
        0x62,
    )?;
    no_events(p, &smmu, "DMA to the neighbour")?;
    hyp.reclaim_from_guest(a, PAGE, 1)
        .ctx("reclaiming the page")?;
    let mut got = vec![0u8; len];
    pages.read(0, &mut got)?;
    if got.iter().any(|&x| x != 0) {
        return Err(Problem::fail(format_args!(
            "the reclaimed page was not scrubbed"
        )));
    }
    round_trip(p, (&src, 0, src.phys()), (&pages, 0, a), len, 0x63)?;
    no_events(p, &smmu, "after the reclaim")?;
    Ok(format!(
        "{:?} mode: donated page faults at stage 2, neighbour and reclaimed page reachable",
        hyp.mode()
    ))
}
