//! granules-dma: stage-1 tables with 16 KiB and 64 KiB granules, and a
//! 64 KiB-granule stage 2, each carrying real DMA: the geometry io-pgtable
//! derives (levels, start level, TG/T0SZ fields) must match what an
//! independent walker expects.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use io_pgtable::Granule;
use smmuv3::driver::StrtabFormat;
use smmuv3::{AttachOptions, Domain};

use super::translate::{IPA_BITS, VA_BITS, rw};
use super::{Context, bring_up, buffer, no_events, page_transfer, round_trip, within};
use crate::{DmaDevice, Outcome, Platform};

/// IOVA of the source page; the destination is one granule above.
const IOVA: u64 = 0x9_0000_0000;

pub(crate) fn run<P: Platform>(p: &mut P) -> Outcome {
    let len = page_transfer(p);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let f = *smmu.features();
    let mut done: Vec<String> = Vec::new();
    let mut seed = 0x81;
    for (g, name) in [(Granule::K16, "16K"), (Granule::K64, "64K")] {
        let size = g.size();
        if f.pgsize_bitmap & size == 0 {
            done.push(format!("S1 {name}: not supported"));
            continue;
        }
        let (src, dst) = (buffer(p, size as usize)?, buffer(p, size as usize)?);
        let d = Domain::new_stage1(&smmu, g, VA_BITS).ctx("stage-1 domain")?;
        d.map(IOVA, src.phys(), size, rw()).ctx("map source")?;
        d.map(IOVA + size, dst.phys(), size, rw())
            .ctx("map destination")?;
        smmu.attach(sid, None, &d, AttachOptions::default())
            .ctx("attach")?;
        // Start the transfer in the second half of the page: the low bits of
        // the IOVA must carry through the larger page offset.
        let off = size as usize - len;
        round_trip(
            p,
            (&src, off, IOVA + off as u64),
            (&dst, off, IOVA + size + off as u64),
            len,
            seed,
        )
        .map_err(within(&format!("stage 1, {name} granule")))?;
        seed += 1;
        smmu.set_abort(sid).ctx("detach")?;
        drop(d);
        done.push(format!("S1 {name}"));
    }
    if f.stage2 && f.pgsize_bitmap & Granule::K64.size() != 0 {
        let size = Granule::K64.size();
        let (src, dst) = (buffer(p, size as usize)?, buffer(p, size as usize)?);
        let d = Domain::new_stage2(&smmu, Granule::K64, IPA_BITS).ctx("stage-2 domain")?;
        d.map(IOVA, src.phys(), size, rw()).ctx("map source")?;
        d.map(IOVA + size, dst.phys(), size, rw())
            .ctx("map destination")?;
        smmu.attach(sid, None, &d, AttachOptions::default())
            .ctx("attach")?;
        let off = 0x8000;
        round_trip(
            p,
            (&src, off, IOVA + off as u64),
            (&dst, off, IOVA + size + off as u64),
            len,
            seed,
        )
        .map_err(within("stage 2, 64K granule"))?;
        smmu.set_abort(sid).ctx("detach")?;
        drop(d);
        done.push(String::from("S2 64K"));
    }
    no_events(p, &smmu, "after the granule round trips")?;
    Ok(format!(
        "{len}-byte round trips through {}",
        done.join(", ")
    ))
}
