//! stale-tlb-range-tlbi: change a mapping without invalidating, observe the
//! old translation still in use, invalidate with our range TLBI plan, observe
//! the new one. Both QEMU and our model cache walks until told otherwise.

use alloc::format;
use alloc::vec::Vec;

use io_pgtable::{Gather, Granule};
use smmuv3::command::Command;
use smmuv3::driver::StrtabFormat;
use smmuv3::tlbi::{TlbiPolicy, TlbiRequest, TlbiTarget, plan};
use smmuv3::{AttachOptions, Domain, DomainKind};

use super::translate::{VA_BITS, rw};
use super::{
    Context, SENTINEL, bring_up, buffer, check_pattern, dev_read, dev_write, fill_pattern,
    no_events, pattern,
};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

/// The IOVA whose mapping changes.
const IOVA_V: u64 = 0x8_2000_3000;
/// Where the device writes what it read (same level-3 table as `IOVA_V`).
const IOVA_OUT: u64 = 0x8_2000_4000;
/// Bytes per transfer.
const LEN: usize = 64;

pub(crate) fn stale_then_range_tlbi<P: Platform>(p: &mut P) -> Outcome {
    let (a, b, out) = (buffer(p, 4096)?, buffer(p, 4096)?, buffer(p, 4096)?);
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let d = Domain::new_stage1(&smmu, Granule::K4, VA_BITS).ctx("stage-1 domain")?;
    let DomainKind::Stage1 { asid, vmid } = d.kind() else {
        return Err(Problem::fail(format_args!(
            "stage-1 domain of kind {:?}",
            d.kind()
        )));
    };
    d.map(IOVA_V, a.phys(), 4096, rw()).ctx("map V -> A")?;
    d.map(IOVA_OUT, out.phys(), 4096, rw()).ctx("map OUT")?;
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach")?;
    fill_pattern(&a, 0, LEN, 0x51)?;
    fill_pattern(&b, 0, LEN, 0x52)?;

    let through_v = |p: &mut P| -> Result<u8, Problem> {
        out.fill(0, LEN, SENTINEL)?;
        dev_read(p, IOVA_V, LEN)?;
        dev_write(p, IOVA_OUT, LEN)?;
        let mut first = [0u8; 1];
        out.read(0, &mut first)?;
        Ok(first[0])
    };

    // 1. V -> A, and the SMMU caches the walk.
    through_v(p)?;
    check_pattern(&out, 0, LEN, 0x51)?;

    // 2. V -> B in the page table only: no TLBI (a fresh gather is dropped).
    let pt = d.page_table();
    let mut gather = Gather::new();
    let n = pt
        .unmap(IOVA_V, 4096, 1, &mut gather)
        .ctx("page-table unmap without TLBI")?;
    ensure!(n == 4096, "unmap returned {n}");
    pt.map(IOVA_V, b.phys(), 4096, 1, rw())
        .ctx("page-table map V -> B")?;
    ensure!(
        pt.translate(IOVA_V) == Some(b.phys()),
        "page table does not translate V to B"
    );
    let seen = through_v(p)?;
    ensure!(
        seen == pattern(0x51, 0),
        "without a TLBI the device saw {} (byte {seen:#04x}): the SMMU did not keep the cached translation",
        if seen == pattern(0x52, 0) {
            "the new page"
        } else {
            "neither page"
        }
    );

    // 3. Our range TLBI over V's neighbourhood (5 pages: one range command
    //    with RIL), then CMD_SYNC.
    let req = TlbiRequest {
        target: TlbiTarget::Stage1 { vmid, asid },
        iova: IOVA_V - 0x2000,
        size: 5 * 4096,
        granule_log2: 12,
        leaf_log2: Some(12),
    };
    let ril = smmu.features().ril;
    let cmds: Vec<Command> = plan(&req, &TlbiPolicy::new(ril))
        .ctx("planning the TLBI")?
        .collect();
    let ranged = cmds
        .iter()
        .any(|c| matches!(c, Command::TlbiNhVa { at, .. } if at.tg != 0));
    ensure!(
        ranged == ril,
        "RIL={ril} but the plan's commands are {cmds:?}"
    );
    smmu.issue(&cmds, true).ctx("issuing the TLBI")?;
    through_v(p)?;
    check_pattern(&out, 0, LEN, 0x52)?;
    no_events(p, &smmu, "during the stale-TLB check")?;
    Ok(format!(
        "stale translation used until {} TLBI command(s){} + CMD_SYNC, then the new page",
        cmds.len(),
        if ranged { " (range form)" } else { "" }
    ))
}
