//! stage1-dma, stage2-dma, nested-dma, nested-s2-unmap,
//! linear-stream-table, two-level-stream-table: real DMA through each
//! translation regime and both stream table formats, with our driver and
//! page tables.

use alloc::format;

use io_pgtable::{Granule, Prot};
use smmuv3::driver::StrtabFormat;
use smmuv3::event::EventType;
use smmuv3::{AttachOptions, Domain};

use super::{
    Buf, Context, Drv, SENTINEL, bring_up, buffer, dev_write, events, list, need_stage2, no_events,
    page_transfer, round_trip, untouched,
};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

/// Stage-1 IOVAs of the source and destination pages (far from any PA, so an
/// untranslated access could not land by accident).
pub(crate) const IOVA_SRC: u64 = 0x8_1234_5000;
pub(crate) const IOVA_DST: u64 = 0x8_1234_6000;
/// Intermediate physical addresses used at stage 2 (outside RAM). They stay
/// below 2^39: a 40-bit stage 2 with 4K pages starts with two concatenated
/// level-1 tables, and QEMU 10 indexes that start level with 9 bits only
/// (it walked index 256 of the first table for IPA 0xc0_0000_0000, where the
/// architecture selects entry 768 of the pair). See baremetal/README.md.
pub(crate) const IPA_SRC: u64 = 0x40_0000_0000;
pub(crate) const IPA_DST: u64 = 0x40_0001_0000;
/// Input sizes of our domains.
pub(crate) const VA_BITS: u8 = 48;
pub(crate) const IPA_BITS: u8 = 40;

/// Read, write, cacheable: what a DMA buffer mapping gets.
pub(crate) fn rw() -> Prot {
    Prot::READ | Prot::WRITE | Prot::CACHE
}

/// Returns a stage-1 domain mapping `IOVA_SRC` and `IOVA_DST` to the buffers.
pub(crate) fn s1_domain<P: Platform>(
    smmu: &Drv<P>,
    src: &Buf<P>,
    dst: &Buf<P>,
) -> Result<super::Dom<P>, Problem> {
    let d = Domain::new_stage1(smmu, Granule::K4, VA_BITS).ctx("stage-1 domain")?;
    d.map(IOVA_SRC, src.phys(), 4096, rw())
        .ctx("stage-1 map of the source")?;
    d.map(IOVA_DST, dst.phys(), 4096, rw())
        .ctx("stage-1 map of the destination")?;
    ensure!(
        d.translate(IOVA_SRC + 42) == Some(src.phys() + 42),
        "our page table translates {:#x} to {:?}",
        IOVA_SRC + 42,
        d.translate(IOVA_SRC + 42)
    );
    Ok(d)
}

/// Returns a stage-2 domain mapping `IPA_SRC` and `IPA_DST` to the buffers,
/// and (for nesting) all of RAM at its own address, so the CD table and the
/// stage-1 tables the SMMU fetches by IPA are reachable.
pub(crate) fn s2_domain<P: Platform>(
    p: &P,
    smmu: &Drv<P>,
    src: &Buf<P>,
    dst: &Buf<P>,
    identity_ram: bool,
) -> Result<super::Dom<P>, Problem> {
    let d = Domain::new_stage2(smmu, Granule::K4, IPA_BITS).ctx("stage-2 domain")?;
    d.map(IPA_SRC, src.phys(), 4096, rw())
        .ctx("stage-2 map of the source")?;
    d.map(IPA_DST, dst.phys(), 4096, rw())
        .ctx("stage-2 map of the destination")?;
    if identity_ram {
        let (base, size) = p.ram();
        d.map(base, base, size, rw())
            .ctx("stage-2 identity map of RAM")?;
    }
    Ok(d)
}

pub(crate) fn stage1<P: Platform>(p: &mut P) -> Outcome {
    let len = page_transfer(p);
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let d = s1_domain::<P>(&smmu, &src, &dst)?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach stage 1")?;
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, 0, IOVA_DST), len, 0x31)?;
    no_events(p, &smmu, "after stage-1 DMA")?;
    Ok(format!(
        "{len} bytes read at iova {IOVA_SRC:#x} and written at {IOVA_DST:#x} through stage 1 (4K pages)"
    ))
}

pub(crate) fn stage2<P: Platform>(p: &mut P) -> Outcome {
    let len = page_transfer(p);
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    need_stage2::<P>(&smmu)?;
    let sid = p.device().stream_id();
    let d = s2_domain(p, &smmu, &src, &dst, false)?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach stage 2")?;
    round_trip(p, (&src, 0, IPA_SRC), (&dst, 0, IPA_DST), len, 0x32)?;
    no_events(p, &smmu, "after stage-2 DMA")?;
    Ok(format!(
        "{len} bytes through stage 2 at ipa {IPA_SRC:#x}/{IPA_DST:#x}"
    ))
}

/// A nested stream (stage 1 at `IOVA_*` over stage 2 at `IPA_*`) attached
/// to the device, with its source and destination pages.
struct Nested<P: Platform> {
    smmu: Drv<P>,
    s2: super::Dom<P>,
    // Kept alive: the stream's CD points at its tables.
    _s1: super::Dom<P>,
    src: Buf<P>,
    dst: Buf<P>,
    sid: u32,
}

fn nested_stream<P: Platform>(p: &mut P) -> Result<Nested<P>, Problem> {
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    need_stage2::<P>(&smmu)?;
    if !smmu.features().nesting {
        return Err(Problem::skip(format_args!(
            "SMMU cannot nest (errata or a missing stage)"
        )));
    }
    let sid = p.device().stream_id();
    let s2 = s2_domain(p, &smmu, &src, &dst, true)?;
    // Stage 1 outputs IPAs; stage 2 turns them into the buffers' PAs.
    let s1 = Domain::new_nested_stage1(&s2, Granule::K4, VA_BITS).ctx("nested stage-1 domain")?;
    s1.map(IOVA_SRC, IPA_SRC, 4096, rw())
        .ctx("stage-1 map to the source IPA")?;
    s1.map(IOVA_DST, IPA_DST, 4096, rw())
        .ctx("stage-1 map to the destination IPA")?;
    smmu.attach(sid, None, &s2, AttachOptions::default())
        .ctx("attach stage 2")?;
    smmu.attach(sid, None, &s1, AttachOptions::default())
        .ctx("attach nested stage 1")?;
    Ok(Nested {
        smmu,
        s2,
        _s1: s1,
        src,
        dst,
        sid,
    })
}

pub(crate) fn nested<P: Platform>(p: &mut P) -> Outcome {
    let len = page_transfer(p);
    let n = nested_stream(p)?;
    round_trip(p, (&n.src, 0, IOVA_SRC), (&n.dst, 0, IOVA_DST), len, 0x33)?;
    no_events(p, &n.smmu, "after nested DMA")?;
    Ok(format!(
        "{len} bytes iova {IOVA_SRC:#x} -> ipa {IPA_SRC:#x} -> pa through both stages"
    ))
}

/// A stage-2 unmap under a live nested stream: `TLBI_S2_IPA` need not
/// remove the combined stage 1+2 entry the nested DMA left in the TLB, so
/// the driver must also drop the VMID's stage-1 entries; the next write
/// must fault at stage 2 and leave memory untouched.
pub(crate) fn nested_s2_unmap<P: Platform>(p: &mut P) -> Outcome {
    let len = page_transfer(p);
    let Nested {
        smmu,
        mut s2,
        _s1,
        src,
        dst,
        sid,
    } = nested_stream(p)?;
    // The write lands, and the SMMU may cache it as one combined entry.
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, 0, IOVA_DST), len, 0x36)?;
    let before = smmu.stats();
    let n = s2
        .unmap(IPA_DST, 4096)
        .ctx("stage-2 unmap of the destination")?;
    ensure!(n == 4096, "stage-2 unmap returned {n}");
    let after = smmu.stats();
    let nh_all = after.by_opcode[0x10] - before.by_opcode[0x10];
    ensure!(
        nh_all >= 1,
        "no TLBI_NH_ALL after the stage-2 unmap of a nest parent"
    );
    // A small write: one transaction, one fault event.
    let small = 4;
    dst.fill(0, small, SENTINEL)?;
    dev_write(p, IOVA_DST, small)?;
    let ev = events(p, &smmu, 1)?;
    let [e] = ev.as_slice() else {
        return Err(Problem::fail(format_args!(
            "want one stage-2 fault, got {}: {}",
            ev.len(),
            list(&ev)
        )));
    };
    ensure!(
        e.ty == EventType::Translation && e.sid == sid && e.fault.is_some_and(|f| f.stage2),
        "want a stage-2 translation fault of stream {sid:#x}, got {e}"
    );
    ensure!(
        untouched(&dst, 0, small)?,
        "the write reached memory after the stage-2 unmap: a combined stage 1+2 TLB entry survived"
    );
    Ok(format!(
        "after the stage-2 unmap ({nh_all} TLBI_NH_ALL) the nested write faults at stage 2, memory untouched"
    ))
}

fn with_table<P: Platform>(p: &mut P, format: StrtabFormat, two_level: bool, seed: u8) -> Outcome {
    let len = page_transfer(p);
    let (src, dst) = (buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, format)?;
    ensure!(
        smmu.strtab_two_level() == two_level,
        "asked for a {} stream table, driver built a {} one",
        if two_level { "2-level" } else { "linear" },
        if smmu.strtab_two_level() {
            "2-level"
        } else {
            "linear"
        }
    );
    let sid = p.device().stream_id();
    let d = s1_domain::<P>(&smmu, &src, &dst)?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach")?;
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, 0, IOVA_DST), len, seed)?;
    no_events(p, &smmu, "after DMA")?;
    Ok(format!(
        "stream {sid:#x} found through a {} stream table",
        if two_level { "2-level" } else { "linear" }
    ))
}

pub(crate) fn linear_table<P: Platform>(p: &mut P) -> Outcome {
    with_table(p, StrtabFormat::Linear, false, 0x34)
}

pub(crate) fn two_level_table<P: Platform>(p: &mut P) -> Outcome {
    with_table(p, StrtabFormat::TwoLevel, true, 0x35)
}
