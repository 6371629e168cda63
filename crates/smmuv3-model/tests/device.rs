//! The model mounted like a VMM mounts it: MMIO by offset and size,
//! requester IDs, interrupt and MSI callbacks, snapshot and restore.

mod common;

use std::sync::{Arc, Mutex};

use common::fixed::*;
use smmuv3_model::layout::op;
use smmuv3_model::regs::{self, irq_ctrl};
use smmuv3_model::{
    DeviceMemory, DmaRequest, Event, EventType, IrqLine, MmioError, ModelConfig, RidMapping,
    SmmuDevice, SmmuModel, SnapshotError, Stats, pci_rid,
};

#[test]
fn mmio_by_offset_and_size() {
    let (m, _ram) = guest_model(ModelConfig::default());
    let dev = SmmuDevice::new(m.clone(), vec![RidMapping::identity()]);
    let mut w = [0u8; 4];
    dev.mmio_read(regs::IDR0, &mut w).unwrap();
    assert_eq!(u32::from_le_bytes(w), m.read32(regs::IDR0));
    let mut d = [0u8; 8];
    dev.mmio_read(regs::IDR0, &mut d).unwrap();
    let both = u64::from(m.read32(regs::IDR0)) | u64::from(m.read32(regs::IDR1)) << 32;
    assert_eq!(u64::from_le_bytes(d), both);
    // A 64-bit write lands in both halves; 32-bit reads see them.
    dev.mmio_write(regs::STRTAB_BASE, &0x1_2345_6000u64.to_le_bytes())
        .unwrap();
    dev.mmio_read(regs::STRTAB_BASE + 4, &mut w).unwrap();
    assert_eq!(u32::from_le_bytes(w), 1);
    dev.mmio_read(regs::STRTAB_BASE, &mut w).unwrap();
    assert_eq!(u32::from_le_bytes(w), 0x2345_6000);
    // Refused accesses change nothing and read as zero.
    assert_eq!(
        dev.mmio_write(regs::STRTAB_BASE, &[0xff; 2]),
        Err(MmioError::BadSize { size: 2 })
    );
    assert_eq!(
        dev.mmio_write(regs::STRTAB_BASE + 4, &[0xff; 8]),
        Err(MmioError::Misaligned {
            offset: regs::STRTAB_BASE + 4,
            size: 8
        })
    );
    assert_eq!(
        dev.mmio_write(SmmuDevice::FRAME_SIZE, &[0xff; 4]),
        Err(MmioError::OutOfFrame {
            offset: SmmuDevice::FRAME_SIZE
        })
    );
    assert_eq!(m.read64(regs::STRTAB_BASE), 0x1_2345_6000);
    let mut one = [0xaau8; 1];
    assert_eq!(
        dev.mmio_read(regs::IDR0, &mut one),
        Err(MmioError::BadSize { size: 1 })
    );
    assert_eq!(one, [0]);
    // Page 1 aliases of the event queue pointers.
    dev.mmio_read(regs::PAGE1 + regs::EVENTQ_PROD, &mut w)
        .unwrap();
    assert_eq!(u32::from_le_bytes(w), m.read32(regs::EVENTQ_PROD));
}

#[test]
fn requester_ids_map_to_stream_ids() {
    assert_eq!(pci_rid(1, 2, 3), 0x113);
    assert_eq!(pci_rid(0, 0x1f, 7), 0xff);
    let (m, _ram) = guest_model(ModelConfig::default());
    let dev = SmmuDevice::new(
        m,
        vec![
            RidMapping {
                rid_base: 0x100,
                count: 0x100,
                sid_base: 0x1000,
            },
            RidMapping {
                rid_base: 0,
                count: 8,
                sid_base: 40,
            },
        ],
    );
    assert_eq!(dev.stream_id(pci_rid(1, 2, 3)), Some(0x1013));
    assert_eq!(dev.stream_id(pci_rid(0, 0, 7)), Some(47));
    assert_eq!(dev.stream_id(pci_rid(0, 1, 0)), None);
    assert_eq!(dev.stream_id(pci_rid(2, 0, 0)), None);
    assert_eq!(
        dev.iommu_for(pci_rid(1, 0, 1)).map(|i| i.sid()),
        Some(0x1001)
    );
}

#[test]
fn interrupts_and_msis_reach_the_callbacks() {
    let (m, ram) = guest_model(ModelConfig::default());
    setup(&m, &writer(&ram));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let m2 = m.clone();
    // The callback may call back into the model.
    m.set_irq_handler(Some(Arc::new(move |line| {
        let prod = m2.read32(regs::PAGE1 + regs::EVENTQ_PROD);
        l.lock().unwrap().push((line, prod));
    })));
    m.write32(regs::IRQ_CTRL, irq_ctrl::EVENTQ_IRQEN);
    let fault = m.dma_read(&DmaRequest::read(1, VA + 0x10_0000, 4), &mut [0; 4]);
    assert_eq!(
        fault.unwrap_err().event_type(),
        Some(EventType::FTranslation)
    );
    assert_eq!(*lines.lock().unwrap(), [(IrqLine::EventQ, 1)]);

    // With an MSI doorbell programmed, the MSI callback gets it.
    let msis = Arc::new(Mutex::new(Vec::new()));
    let ms = msis.clone();
    m.set_msi_handler(Some(Arc::new(move |addr, data| {
        ms.lock().unwrap().push((addr, data));
        addr == 0x0800_0040 // the interrupt controller's doorbell
    })));
    // The MSI configuration is written while its source is disabled
    // (writes while enabled are ignored).
    m.write32(regs::IRQ_CTRL, 0);
    m.write64(regs::EVENTQ_IRQ_CFG0, 0x0800_0040);
    m.write32(regs::EVENTQ_IRQ_CFG1, 0x42);
    m.write32(regs::IRQ_CTRL, irq_ctrl::EVENTQ_IRQEN);
    // The guest consumed the first event: the next one finds the queue
    // empty and interrupts.
    m.write32(
        regs::PAGE1 + regs::EVENTQ_CONS,
        m.read32(regs::PAGE1 + regs::EVENTQ_PROD),
    );
    let _ = m.dma_read(&DmaRequest::read(2, VA + 0x10_0000, 4), &mut [0; 4]);
    assert_eq!(*msis.lock().unwrap(), [(0x0800_0040, 0x42)]);
    assert_eq!(lines.lock().unwrap().len(), 2);
    // A CMD_SYNC MSI to RAM the callback declines is written to memory.
    let target = DATA[2] + 0x100;
    writer(&ram)(
        CMDQ,
        &[u64::from(op::SYNC) | 1 << 12 | 0x5a5a_0001 << 32, target],
    );
    m.write32(regs::CMDQ_PROD, 1);
    assert_eq!(msis.lock().unwrap()[1], (target, 0x5a5a_0001));
    let mut b = [0u8; 4];
    ram.read(target, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x5a5a_0001);
    // The wired CMD_SYNC line pulses as well.
    assert_eq!(lines.lock().unwrap()[2].0, IrqLine::CmdSync);
    // Removing the callbacks stops deliveries (of an event into the
    // emptied queue, which interrupts).
    m.write32(
        regs::PAGE1 + regs::EVENTQ_CONS,
        m.read32(regs::PAGE1 + regs::EVENTQ_PROD),
    );
    m.set_irq_handler(None);
    m.set_msi_handler(None);
    let _ = m.dma_read(&DmaRequest::read(1, VA + 0x10_0000, 4), &mut [0; 4]);
    assert_eq!(lines.lock().unwrap().len(), 3);
    assert_eq!(msis.lock().unwrap().len(), 2);
    assert!(m.take_interrupts().eventq, "the level view still sees it");
}

/// A second phase of work whose outcome depends on the cached state.
fn phase2(m: &SmmuModel) -> Vec<Result<Vec<u8>, Option<EventType>>> {
    let mut out = Vec::new();
    for sid in [1u32, 2] {
        for va in [VA, VA + 8, VA + 4096, VA + 8192, VA + 0x20_0000] {
            let mut b = vec![0u8; 8];
            let r = m.dma_read(&DmaRequest::read(sid, va, 8), &mut b);
            out.push(r.map(|()| b).map_err(|f| f.event_type()));
        }
        let r = m.dma_write(&DmaRequest::write(sid, VA + 16, 4), &[9; 4]);
        out.push(r.map(|()| Vec::new()).map_err(|f| f.event_type()));
    }
    out
}

fn events(m: &SmmuModel, mem: &dyn DeviceMemory) -> Vec<Event> {
    let prod = m.read32(regs::PAGE1 + regs::EVENTQ_PROD) & 0x1f;
    (0..prod)
        .map(|i| {
            let mut b = [0u8; 32];
            mem.read(EVTQ + u64::from(i) * 32, &mut b).unwrap();
            Event::from_bytes(&b).unwrap()
        })
        .collect()
}

#[test]
fn restoring_a_snapshot_gives_identical_translations_events_and_stats() {
    let (a, ram_a) = guest_model(ModelConfig::default());
    setup(&a, &writer(&ram_a));
    // Phase 1: fill caches and the TLB, record events.
    let mut b = [0u8; 8];
    for sid in [1u32, 2] {
        a.dma_write(&DmaRequest::write(sid, VA, 8), &[sid as u8; 8])
            .unwrap();
        a.dma_read(&DmaRequest::read(sid, VA, 8), &mut b).unwrap();
        let _ = a.dma_read(&DmaRequest::read(sid, VA + 0x10_0000, 8), &mut b);
    }
    // Unmap VA without a TLBI: only the cached (stale) entry still reaches
    // DATA[0], which a model without the snapshot's TLB would not.
    let leaf = S1_L[3] + ((VA >> 12) & 0x1ff) * 8;
    writer(&ram_a)(leaf, &[0]);

    let json = serde_json::to_string(&a.snapshot()).unwrap();
    let snap: smmuv3_model::ModelSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(snap, a.snapshot());

    // The VMM migrates guest RAM; the fresh model gets the snapshot.
    let (b_model, ram_b) = guest_model(ModelConfig::default());
    let mut image = vec![0u8; SIZE as usize];
    ram_a.read(BASE, &mut image).unwrap();
    ram_b.write(BASE, &image).unwrap();
    let fresh_stats = b_model.stats();
    b_model.restore(&snap).unwrap();
    assert_eq!(b_model.stats(), a.stats());
    assert_ne!(b_model.stats(), fresh_stats);

    let ra = phase2(&a);
    let rb = phase2(&b_model);
    assert_eq!(ra, rb);
    // The stale TLB entry travelled: VA still reads what was written.
    assert_eq!(ra[0], Ok(vec![2; 8]));
    assert_eq!(ra[6], Ok(vec![2; 8]));
    let (ea, eb) = (events(&a, &ram_a), events(&b_model, &ram_b));
    assert_eq!(ea, eb);
    assert!(ea.len() >= 4);
    let (sa, sb): (Stats, Stats) = (a.stats(), b_model.stats());
    assert_eq!(sa, sb);
    // A TLBI now removes the stale entry in both.
    for m in [&a, &b_model] {
        let mem: &dyn DeviceMemory = if Arc::ptr_eq(m, &a) { &ram_a } else { &ram_b };
        mem.write(
            CMDQ + 16 * 3,
            &[
                (u64::from(op::TLBI_NH_ALL) | 3 << 32).to_le_bytes(),
                0u64.to_le_bytes(),
            ]
            .concat(),
        )
        .unwrap();
        mem.write(
            CMDQ,
            &[u64::from(op::TLBI_NH_ASID) | 7 << 48, 0, 0, 0, 0, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let prod = m.read32(regs::CMDQ_PROD);
        assert_eq!(prod, 0);
        m.write32(regs::CMDQ_PROD, 4);
        let r = m.dma_read(&DmaRequest::read(1, VA, 8), &mut b);
        assert_eq!(r.unwrap_err().event_type(), Some(EventType::FTranslation));
    }
    assert_eq!(a.stats(), b_model.stats());
}

#[test]
fn restore_refuses_another_configuration_and_changes_nothing() {
    let (a, ram) = guest_model(ModelConfig::default());
    setup(&a, &writer(&ram));
    let snap = a.snapshot();
    let (other, _r) = guest_model(ModelConfig::qemu_like());
    let before = other.snapshot();
    assert_eq!(other.restore(&snap), Err(SnapshotError::ConfigMismatch));
    assert_eq!(other.snapshot(), before);
    let mut json: serde_json::Value = serde_json::to_value(&snap).unwrap();
    json["version"] = 99.into();
    let bad: smmuv3_model::ModelSnapshot = serde_json::from_value(json).unwrap();
    let (c, _r2) = guest_model(ModelConfig::default());
    assert_eq!(c.restore(&bad), Err(SnapshotError::Version { found: 99 }));
}
