//! scatter-gather-blocks: one large IOVA range built from physically
//! scattered 2 MiB chunks mapped as level-2 blocks (and, where RAM allows, a
//! 1 GiB level-1 block), with transfers that cross the block boundaries.

use alloc::string::String;
use alloc::vec::Vec;

use io_pgtable::Granule;
use smmuv3::driver::StrtabFormat;
use smmuv3::{AttachOptions, Domain};

use super::translate::{VA_BITS, rw};
use super::{
    Buf, Context, SENTINEL, bring_up, buffer, check_pattern, dev_read, dev_write, fill_pattern,
    no_events,
};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

const MB2: u64 = 2 << 20;
const GB1: u64 = 1 << 30;
/// Base of the scatter-gather IOVA range (1 GiB aligned).
const SG_IOVA: u64 = 0x20_0000_0000;
/// Where RAM is mapped with one 1 GiB block.
const GB_IOVA: u64 = 0x40_0000_0000;
/// Bytes per transfer.
const LEN: usize = 4096;

/// Returns the level of the leaf translating `iova`, if any.
fn leaf_level<P: Platform>(d: &super::Dom<P>, iova: u64) -> Option<u8> {
    let w = d.page_table().walk(iova);
    let last = w.steps().last()?;
    (last.desc & 1 == 1).then_some(last.level)
}

pub(crate) fn scatter_gather<P: Platform>(p: &mut P) -> Outcome {
    // Three 2 MiB chunks, placed in IOVA space in the reverse of their
    // physical order so IOVA-contiguous is not PA-contiguous.
    let chunks: Vec<Buf<P>> = (0..3)
        .map(|_| buffer(p, MB2 as usize))
        .collect::<Result<_, _>>()?;
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    let sid = p.device().stream_id();
    let d = Domain::new_stage1(&smmu, Granule::K4, VA_BITS).ctx("stage-1 domain")?;
    let order = [2usize, 0, 1];
    for (slot, &c) in order.iter().enumerate() {
        let iova = SG_IOVA + slot as u64 * MB2;
        d.map(iova, chunks[c].phys(), MB2, rw())
            .ctx("2 MiB block map")?;
        ensure!(
            leaf_level::<P>(&d, iova + 0x1234) == Some(2),
            "2 MiB map at {iova:#x} is not a level-2 block (walk {:?})",
            d.page_table().walk(iova + 0x1234).steps()
        );
    }
    smmu.attach(sid, None, &d, AttachOptions::default())
        .ctx("attach")?;

    // Read across the slot 0 / slot 1 boundary (chunk 2's tail, chunk 0's head).
    let half = LEN / 2;
    let tail = MB2 as usize - half;
    let seed = 0x61;
    let whole: Vec<u8> = (0..LEN).map(|i| super::pattern(seed, i)).collect();
    chunks[2].write(tail, &whole[..half])?;
    chunks[0].write(0, &whole[half..])?;
    dev_read(p, SG_IOVA + MB2 - half as u64, LEN)?;
    // Write across the slot 1 / slot 2 boundary (chunk 0's tail, chunk 1's head).
    chunks[0].fill(tail, half, SENTINEL)?;
    chunks[1].fill(0, half, SENTINEL)?;
    dev_write(p, SG_IOVA + 2 * MB2 - half as u64, LEN)?;
    let mut got = alloc::vec![0u8; LEN];
    chunks[0].read(tail, &mut got[..half])?;
    chunks[1].read(0, &mut got[half..])?;
    if let Some(i) = (0..LEN).find(|&i| got[i] != whole[i]) {
        return Err(Problem::fail(format_args!(
            "scatter-gather data mismatch at byte {i}: got {:#04x}, want {:#04x}",
            got[i], whole[i]
        )));
    }
    // And a plain transfer deep inside the last block.
    fill_pattern(&chunks[1], 0x1_0000, 256, 0x62)?;
    dev_read(p, SG_IOVA + 2 * MB2 + 0x1_0000, 256)?;
    chunks[2].fill(0x8_0000, 256, SENTINEL)?;
    dev_write(p, SG_IOVA + 0x8_0000, 256)?;
    check_pattern(&chunks[2], 0x8_0000, 256, 0x62)?;
    let mut detail = String::from(
        "6 MiB of IOVA over 3 scattered 2 MiB blocks, transfers across both block boundaries",
    );

    // A 1 GiB block over RAM when RAM is a whole aligned gigabyte (QEMU).
    let (base, size) = p.ram();
    if base % GB1 == 0 && size >= GB1 {
        d.map(GB_IOVA, base, GB1, rw()).ctx("1 GiB block map")?;
        ensure!(
            leaf_level::<P>(&d, GB_IOVA) == Some(1),
            "1 GiB map is not a level-1 block"
        );
        let off = chunks[0].phys() - base;
        fill_pattern(&chunks[0], 0, 256, 0x63)?;
        dev_read(p, GB_IOVA + off, 256)?;
        chunks[1].fill(0, 256, SENTINEL)?;
        dev_write(p, GB_IOVA + (chunks[1].phys() - base), 256)?;
        check_pattern(&chunks[1], 0, 256, 0x63)?;
        detail.push_str("; DMA through a 1 GiB block");
    } else {
        detail.push_str("; no 1 GiB-aligned RAM here, 1 GiB block not tried");
    }
    no_events(p, &smmu, "after scatter-gather DMA")?;
    drop(d);
    Ok(detail)
}
