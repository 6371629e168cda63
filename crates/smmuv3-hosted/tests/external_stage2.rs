//! `ExternalStage2`: streams attached to a stage-2 table the driver does
//! not own translate through it; dropping the binding makes them abort and
//! frees its VMID; bad bindings are refused.

use std::sync::Arc;

use io_pgtable::env::{Gather, SimEnv};
use io_pgtable::{Config, Granule, PageTable, Prot, Regs, Stage2Regs};
use sim_memory::Coherency;
use smmuv3::{Error, ExternalStage2, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaFault, DmaRequest, EventType, ModelConfig};

const SID: u32 = 0x42;

fn table(sys: &System) -> (PageTable<SimEnv>, Stage2Regs) {
    let pt = PageTable::new(
        Config::stage2(Granule::K4, 40, 40),
        SimEnv::new(Arc::clone(&sys.mem)),
    )
    .unwrap();
    let Regs::Stage2(r) = pt.regs() else {
        unreachable!("stage-2 table")
    };
    (pt, r)
}

#[test]
fn streams_translate_through_a_foreign_table_until_the_binding_drops() {
    let sys = System::new(
        16 << 20,
        Coherency::Coherent,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    let (pt, regs) = table(&sys);
    let pa = sys.mem.alloc(0x1000).unwrap();
    pt.map(0x8000_0000, pa, 0x1000, 1, Prot::READ | Prot::WRITE)
        .unwrap();
    let b = ExternalStage2::new(&sys.smmu, 0, regs).unwrap();
    assert_eq!((b.vmid(), b.regs()), (0, regs));
    sys.smmu.attach_external(SID, &b).unwrap();
    assert_eq!(b.attached(), vec![SID]);
    sys.model
        .dma_write(&DmaRequest::write(SID, 0x8000_0010, 4), &[1, 2, 3, 4])
        .unwrap();
    let mut back = [0u8; 4];
    sys.mem.cpu_read(pa + 0x10, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4]);
    // Unmapped in the foreign table: the owner invalidates, the device faults.
    let mut g = Gather::new();
    pt.unmap(0x8000_0000, 0x1000, 1, &mut g).unwrap();
    sys.smmu
        .issue(&[smmuv3::command::Command::TlbiS12Vmall { vmid: 0 }], true)
        .unwrap();
    let f = sys
        .model
        .dma_write(&DmaRequest::write(SID, 0x8000_0010, 4), &[0; 4])
        .unwrap_err();
    assert_eq!(f.event_type(), Some(EventType::FTranslation));
    // VMID 0 is taken while the binding lives, free once it dropped.
    assert!(matches!(
        HostedDomain::new_stage2_with_vmid(&sys.smmu, Granule::K4, 40, 0),
        Err(Error::IdsExhausted(_))
    ));
    drop(b);
    assert_eq!(
        sys.model
            .dma_write(&DmaRequest::write(SID, 0x8000_0010, 4), &[0; 4]),
        Err(DmaFault::StreamAbort)
    );
    assert!(HostedDomain::new_stage2_with_vmid(&sys.smmu, Granule::K4, 40, 0).is_ok());
}

#[test]
fn bindings_the_smmu_cannot_walk_are_refused() {
    let sys = System::new(
        16 << 20,
        Coherency::Coherent,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    let (_pt, regs) = table(&sys);
    let bad_tg = Stage2Regs { tg0: 3, ..regs };
    assert!(matches!(
        ExternalStage2::new(&sys.smmu, 1, bad_tg),
        Err(Error::Unsupported(_))
    ));
    let wide = Stage2Regs { ps: 6, ..regs };
    assert!(matches!(
        ExternalStage2::new(&sys.smmu, 1, wide),
        Err(Error::Unsupported(_))
    ));
    let _held = ExternalStage2::new(&sys.smmu, 1, regs).unwrap();
    assert!(matches!(
        ExternalStage2::new(&sys.smmu, 1, regs),
        Err(Error::IdsExhausted(_))
    ));
    let s1_only = System::new(
        16 << 20,
        Coherency::Coherent,
        ModelConfig::stage1_only(),
        SmmuConfig::default(),
    )
    .unwrap();
    assert!(matches!(
        ExternalStage2::new(&s1_only.smmu, 1, regs),
        Err(Error::Unsupported(_))
    ));
}
