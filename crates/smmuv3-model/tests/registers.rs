//! Register frame behaviour: ID registers per preset, read-only and
//! reserved writes, enable handshakes, writes forbidden while enabled,
//! page-1 aliases, GERROR acknowledgement.

mod common;

use common::*;
use smmuv3_model::regs::{self, cr0, gerror};
use smmuv3_model::{Coherency, ConfigError, ModelConfig, SimMemory, SmmuModel};
use std::sync::Arc;

#[test]
fn id_registers_follow_configuration() {
    let h = H::new(ModelConfig::qemu_like());
    assert_eq!(h.smmu.read32(regs::IDR0), 0x0d44_101b);
    assert_eq!(h.smmu.read32(regs::IDR1), 0x0273_0010);
    assert_eq!(h.smmu.read32(regs::IDR3), 0x1414);
    assert_eq!(h.smmu.read32(regs::IDR5), 0x74);
    assert_eq!(h.smmu.read32(regs::IIDR), 0);
    assert_eq!(h.smmu.read32(regs::AIDR), 1);
    let m = H::new(ModelConfig::mmu600(1, 2));
    let iidr = m.smmu.read32(regs::IIDR);
    assert_eq!(
        (
            iidr >> 20,
            (iidr >> 16) & 0xf,
            (iidr >> 12) & 0xf,
            iidr & 0xfff
        ),
        (0x483, 1, 2, 0x43b)
    );
    assert_eq!(m.smmu.read32(regs::IDR3) & 1 << 10, 0, "MMU-600 has no RIL");
    assert_eq!((m.smmu.read32(regs::IDR0) >> 6) & 3, 2, "HTTU AF+dirty");
    let d = H::new(ModelConfig::default());
    let idr1 = d.smmu.read32(regs::IDR1);
    assert_eq!((idr1 & 0x3f, (idr1 >> 6) & 0x1f), (16, 8));
    assert_ne!(d.smmu.read32(regs::IDR0) & 1 << 19, 0, "CD2L");
    assert_eq!(d.smmu.read32(regs::IDR5) & 7, 5, "OAS 48");
}

#[test]
fn coherency_is_derived_and_checked() {
    let nc = Arc::new(SimMemory::new(MEM_BASE, 1 << 20, Coherency::NonCoherent).unwrap());
    let s = SmmuModel::new(ModelConfig::default(), nc.clone()).unwrap();
    assert_eq!(s.read32(regs::IDR0) & 1 << 4, 0);
    let forced = ModelConfig {
        coherent: Some(true),
        ..ModelConfig::default()
    };
    assert!(matches!(
        SmmuModel::new(forced, nc),
        Err(ConfigError::CoherencyMismatch { .. })
    ));
    let bad = ModelConfig {
        oas_bits: 47,
        ..ModelConfig::default()
    };
    let mem = Arc::new(SimMemory::new(MEM_BASE, 1 << 20, Coherency::Coherent).unwrap());
    assert_eq!(
        SmmuModel::new(bad, mem.clone()).unwrap_err(),
        ConfigError::BadOas(47)
    );
    let bad = ModelConfig {
        cmdq_log2: 20,
        ..ModelConfig::default()
    };
    assert_eq!(
        SmmuModel::new(bad, mem).unwrap_err(),
        ConfigError::BadQueueSize(20)
    );
}

#[test]
fn read_only_reserved_and_misaligned_accesses() {
    let h = H::new(ModelConfig::default());
    let idr0 = h.smmu.read32(regs::IDR0);
    h.smmu.write32(regs::IDR0, 0);
    assert_eq!(h.smmu.read32(regs::IDR0), idr0);
    h.smmu.write32(regs::CR0ACK, 0xf);
    assert_eq!(h.smmu.read32(regs::CR0ACK), 0);
    h.smmu.write32(regs::GERROR, 0x1ff);
    assert_eq!(h.smmu.read32(regs::GERROR), 0);
    h.smmu.write32(0x1234, 0xffff_ffff);
    assert_eq!(h.smmu.read32(0x1234), 0);
    assert_eq!(h.smmu.read32(regs::IDR0 + 1), 0, "misaligned reads as zero");
    assert_eq!(h.smmu.read32(0x20000), 0, "outside the frame");
    // CR0 reserved bits (and PRIQEN without PRI) are not kept.
    h.smmu.write32(regs::CR0, 0xffff_ffff);
    assert_eq!(
        h.smmu.read32(regs::CR0),
        cr0::SMMUEN | cr0::EVENTQEN | cr0::CMDQEN
    );
    assert_eq!(h.smmu.read32(regs::CR0ACK), h.smmu.read32(regs::CR0));
}

#[test]
fn bases_are_frozen_while_enabled() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let st = h.smmu.read64(regs::STRTAB_BASE);
    h.smmu.write64(regs::STRTAB_BASE, 0x9000_0000);
    assert_eq!(h.smmu.read64(regs::STRTAB_BASE), st);
    let cfg = h.smmu.read32(regs::STRTAB_BASE_CFG);
    h.smmu.write32(regs::STRTAB_BASE_CFG, 0);
    assert_eq!(h.smmu.read32(regs::STRTAB_BASE_CFG), cfg);
    let cq = h.smmu.read64(regs::CMDQ_BASE);
    h.smmu.write64(regs::CMDQ_BASE, 0x9000_0000);
    assert_eq!(h.smmu.read64(regs::CMDQ_BASE), cq);
    let cons = h.smmu.read32(regs::CMDQ_CONS);
    h.smmu.write32(regs::CMDQ_CONS, cons + 3);
    assert_eq!(
        h.smmu.read32(regs::CMDQ_CONS),
        cons,
        "CONS is read-only while enabled"
    );
    let eq = h.smmu.read64(regs::EVENTQ_BASE);
    h.smmu.write64(regs::EVENTQ_BASE, 0);
    assert_eq!(h.smmu.read64(regs::EVENTQ_BASE), eq);
    // Disabling everything lets them change again.
    h.smmu.write32(regs::CR0, 0);
    h.smmu.write64(regs::STRTAB_BASE, 0x9000_0040);
    assert_eq!(h.smmu.read64(regs::STRTAB_BASE), 0x9000_0040);
    // Only ADDR and RA survive; reserved bits are dropped.
    h.smmu.write64(regs::STRTAB_BASE, u64::MAX);
    assert_eq!(h.smmu.read64(regs::STRTAB_BASE), 0x400f_ffff_ffff_ffc0);
}

#[test]
fn page1_aliases_event_queue_pointers() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let _ = h.smmu.translate(&smmuv3_model::DmaRequest::read(1, 0, 1));
    let p0 = h.smmu.read32(regs::EVENTQ_PROD);
    assert_eq!(p0, 1);
    assert_eq!(h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD), p0);
    h.smmu.write32(regs::PAGE1 + regs::EVENTQ_CONS, 1);
    assert_eq!(h.smmu.read32(regs::EVENTQ_CONS), 1);
    // Nothing else lives in page 1.
    assert_eq!(h.smmu.read32(regs::PAGE1 + regs::IDR0), 0);
}

#[test]
fn gerror_is_acknowledged_through_gerrorn() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.cmd(0xff, 0);
    assert_eq!(h.smmu.read32(regs::GERROR), gerror::CMDQ_ERR);
    assert_eq!(h.smmu.read32(regs::GERRORN), 0);
    // Acknowledging without fixing the command: it is fetched again and
    // fails again, toggling GERROR back.
    h.ack_gerror();
    assert_eq!(h.smmu.read32(regs::GERROR), 0);
    assert_eq!(h.gerror_active(), gerror::CMDQ_ERR);
    assert_eq!(h.smmu.stats().gerrors[0], 2);
    assert_eq!(h.smmu.stats().illegal_commands, 2);
}

#[test]
fn trace_records_commands_and_events() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.smmu.set_trace(16);
    h.cmd(smmuv3_model::layout::op::SYNC as u64, 0);
    let _ = h.smmu.translate(&smmuv3_model::DmaRequest::read(1, 0, 1));
    let t = h.smmu.take_trace();
    assert!(
        t.iter()
            .any(|e| matches!(e, smmuv3_model::TraceEntry::Command { error: None, .. }))
    );
    assert!(t.iter().any(|e| matches!(e, smmuv3_model::TraceEntry::Event(ev) if ev.kind == smmuv3_model::EventType::CBadSte)));
    assert!(h.smmu.take_trace().is_empty());
}

#[test]
fn model_is_send_and_sync_and_serialises_concurrent_users() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SmmuModel>();
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.set_ste(1, ste_bypass());
    let buf = h.alloc(4096);
    let smmu = std::sync::Arc::new(h.smmu);
    let workers: Vec<_> = (0..2u8)
        .map(|t| {
            let s = smmu.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let off = (i * 8) % 4096;
                    let req = write_req(1, buf + off);
                    s.dma_write(&req, &[t; 8]).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(smmu.stats().dma_bytes, 2 * 2000 * 8);
}

fn write_req(sid: u32, iova: u64) -> smmuv3_model::DmaRequest {
    smmuv3_model::DmaRequest::write(sid, iova, 8)
}
