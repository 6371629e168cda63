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
    Buf, Context, SENTINEL, bring_up, buffer, check_pattern, dev_read, dev_write, fill_pattern,
    no_events, pattern, within,
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
    let DomainKind::Stage1 { asid, parent_vmid } = d.kind() else {
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

    // V -> A, and the SMMU caches the walk.
    through_v(p)?;
    check_pattern(&out, 0, LEN, 0x51)?;

    // Each round: remap V in the page table only (no TLBI: a fresh gather is
    // dropped), see the old page still used, invalidate a range around V
    // with our planner, see the new page.
    let ril = smmu.features().ril;
    let rounds: [(&Buf<P>, u8, u64, bool); 3] = [
        // 5 pages: one range command with RIL.
        (&b, 0x52, 2, ril),
        // 33 pages: two range commands (1 + 32 pages); V is in the second.
        (&a, 0x51, 32, ril),
        // 3 pages with per-page (non-range) commands, valid on every SMMU.
        (&b, 0x52, 1, false),
    ];
    let mut old_seed = 0x51;
    let mut report = Vec::new();
    for (round, (page, seed, below, use_ril)) in rounds.into_iter().enumerate() {
        let pt = d.page_table();
        let mut gather = Gather::new();
        let n = pt
            .unmap(IOVA_V, 4096, 1, &mut gather)
            .ctx("page-table unmap without TLBI")?;
        ensure!(n == 4096, "unmap returned {n}");
        pt.map(IOVA_V, page.phys(), 4096, 1, rw())
            .ctx("page-table remap of V")?;
        pt.sync_map(IOVA_V, 4096).ctx("page-table sync of V")?;
        ensure!(
            pt.translate(IOVA_V) == Some(page.phys()),
            "page table does not translate V to the new page"
        );
        let seen = through_v(p)?;
        ensure!(
            seen == pattern(old_seed, 0),
            "round {round}: without a TLBI the device saw {} (byte {seen:#04x}): the SMMU did not keep the cached translation",
            if seen == pattern(seed, 0) {
                "the new page"
            } else {
                "neither page"
            }
        );

        let req = TlbiRequest {
            target: TlbiTarget::Stage1 {
                vmid: parent_vmid.unwrap_or(0),
                asid,
            },
            iova: IOVA_V - below * 4096,
            size: (below + 3) * 4096,
            granule_log2: 12,
            leaf_log2: Some(12),
        };
        let cmds: Vec<Command> = plan(&req, &TlbiPolicy::new(use_ril))
            .ctx("planning the TLBI")?
            .collect();
        let ranged = cmds
            .iter()
            .filter(|c| matches!(c, Command::TlbiNhVa { at, .. } if at.tg != 0))
            .count();
        ensure!(
            (ranged == cmds.len()) == use_ril && !cmds.is_empty(),
            "round {round}: RIL={use_ril} but the plan is {cmds:?}"
        );
        smmu.issue(&cmds, true).ctx("issuing the TLBI")?;
        through_v(p)?;
        check_pattern(&out, 0, LEN, seed).map_err(within(&format!(
            "round {round} after {} TLBI commands",
            cmds.len()
        )))?;
        report.push(format!(
            "{} pages: {} {} cmd(s)",
            below + 3,
            cmds.len(),
            if use_ril { "range" } else { "per-page" }
        ));
        old_seed = seed;
    }
    no_events(p, &smmu, "during the stale-TLB check")?;
    Ok(format!(
        "stale translation used until invalidated, then the new page; {}",
        report.join(", ")
    ))
}
