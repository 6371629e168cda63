//! The model honours IDR3.BBML: a block replaced by a table in one store
//! (no break-before-make) while the block may still be cached is a TLB
//! conflict on an SMMU with BBML < 2, and harmless with BBML 2. This is
//! why the shadow splits blocks only when every SMMU has BBML 2.

mod common;

use std::sync::Arc;

use common::{Setup, smmu_on};
use io_pgtable::env::{Gather, SimEnv};
use io_pgtable::{Config, Granule, PageTable, Quirks, Regs};
use sim_memory::{Coherency, SimMemory};
use smmuv3::ExternalStage2;
use smmuv3_hosted::MEM_BASE;
use smmuv3_model::{DmaRequest, EventType, SmmuModel};

const SID: u32 = 0x20;

/// Maps a 2 MiB block, lets the device cache it, then splits it the way
/// only a BBML2 SMMU allows (one store, and the environment's TLB hooks
/// invalidate nothing), and DMAs to a neighbour of the page unmapped.
/// Returns the neighbour's DMA result.
fn wrong_split(bbml: u8, proper: bool) -> (Result<(), smmuv3_model::DmaFault>, u64) {
    let mem = Arc::new(SimMemory::new(MEM_BASE, 32 << 20, Coherency::Coherent).unwrap());
    let setup = Setup {
        bbml,
        ..Setup::default()
    };
    let model = Arc::new(SmmuModel::new(common::model_config(&setup), mem.clone()).unwrap());
    let smmu = smmu_on(&mem, &model);
    let quirks = if proper {
        Quirks::empty()
    } else {
        Quirks::BBML2
    };
    let cfg = Config::stage2(Granule::K4, 40, 40).with_quirks(quirks);
    let pt = PageTable::new(cfg, SimEnv::new(mem.clone())).unwrap();
    let block = mem.alloc(2 << 20).unwrap();
    pt.map(
        block,
        block,
        2 << 20,
        1,
        io_pgtable::Prot::READ | io_pgtable::Prot::WRITE,
    )
    .unwrap();
    let Regs::Stage2(regs) = pt.regs() else {
        unreachable!()
    };
    let b = ExternalStage2::new(&smmu, 5, regs).unwrap();
    smmu.attach_external(SID, &b).unwrap();
    let next = block + 0x1000;
    model
        .dma_write(&DmaRequest::write(SID, next, 4), &[1; 4])
        .unwrap();
    let mut g = Gather::new();
    assert_eq!(pt.unmap(block, 4096, 1, &mut g), Ok(4096));
    if proper {
        // Break-before-make: io-pgtable cleared the block and asked for a
        // walk flush before writing the table; do what the driver would.
        smmu.issue(&[smmuv3::command::Command::TlbiS12Vmall { vmid: 5 }], true)
            .unwrap();
    }
    let r = model.dma_write(&DmaRequest::write(SID, next, 4), &[2; 4]);
    (r, model.stats().tlb_conflicts)
}

#[test]
fn a_split_without_break_before_make_conflicts_below_bbml2() {
    for bbml in [0, 1] {
        let (r, conflicts) = wrong_split(bbml, false);
        let f = r.unwrap_err();
        assert_eq!(
            f.event_type(),
            Some(EventType::FTlbConflict),
            "BBML {bbml}: {f:?}"
        );
        assert_eq!(conflicts, 1);
    }
}

#[test]
fn bbml2_uses_one_of_the_programmed_entries() {
    let (r, conflicts) = wrong_split(2, false);
    assert_eq!(r, Ok(()));
    assert_eq!(conflicts, 0);
}

#[test]
fn break_before_make_never_conflicts() {
    for bbml in [0, 1, 2] {
        let (r, conflicts) = wrong_split(bbml, true);
        assert_eq!(r, Ok(()), "BBML {bbml}");
        assert_eq!(conflicts, 0);
    }
}

#[test]
fn the_shadow_never_conflicts_on_bbml1_smmus() {
    // Leaf mode: no block is ever split, so the strict model stays quiet
    // through many donations and DMAs to every neighbour.
    let mut fx = common::Fixture::new(Setup {
        bbml: 1,
        ..Setup::default()
    });
    fx.hyp.attach_host_stream(0, SID).unwrap();
    for k in (0..2048).step_by(97) {
        let pa = fx.page(k);
        fx.dma_read(0, SID, pa, 8).unwrap();
        fx.hyp.donate_to_guest(pa, 4096, 1).unwrap();
        fx.dma_read(0, SID, pa + 4096, 8).unwrap();
        if k > 0 {
            fx.dma_read(0, SID, pa - 4096, 8).unwrap();
        }
    }
    assert_eq!(fx.models[0].stats().tlb_conflicts, 0);
}
