//! The register interface as a guest driver other than ours programs it
//! (Arm IHI 0070 chapter 6 and 3.18): guarded MSI configuration, RES0
//! fields of unimplemented features, GERROR and CMD_SYNC signalling,
//! queue index bits above the wrap bit, the stream table's effective base
//! and SPLIT, stall records on a full queue.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use smmuv3_model::layout::op;
use smmuv3_model::msi::{Cacheability, MemoryType, Shareability};
use smmuv3_model::regs::{self, cr0, gerror, irq_ctrl};
use smmuv3_model::{
    DmaFault, DmaRequest, EventType, IrqLine, ModelConfig, MsiAttr, MsiWrite, SnapshotError,
    StallModel,
};

/// A linear 16-entry stream table, queues of 256 entries, all enabled.
fn linear(cfg: ModelConfig) -> H {
    let mut h = H::new(cfg);
    h.enable_linear(4);
    h
}

/// Returns the (address, data) of every MSI the model sends from now on.
fn msi_log(h: &H) -> Arc<Mutex<Vec<(u64, u32)>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    h.smmu.set_msi_handler(Some(Arc::new(move |addr, data| {
        l.lock().unwrap().push((addr, data));
        true
    })));
    log
}

/// Returns every wired interrupt the model asserts from now on.
fn irq_log(h: &H) -> Arc<Mutex<Vec<IrqLine>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    h.smmu
        .set_irq_handler(Some(Arc::new(move |line| l.lock().unwrap().push(line))));
    log
}

#[test]
fn msi_configuration_is_read_only_while_its_source_is_enabled() {
    let mut h = linear(ModelConfig::default());
    let msis = msi_log(&h);
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, 0x0800_0040);
    h.smmu.write32(regs::EVENTQ_IRQ_CFG1, 0x11);
    h.smmu.write64(regs::GERROR_IRQ_CFG0, 0x0800_0080);
    h.smmu.write32(regs::GERROR_IRQ_CFG1, 0x22);
    h.smmu.write32(
        regs::IRQ_CTRL,
        irq_ctrl::EVENTQ_IRQEN | irq_ctrl::GERROR_IRQEN,
    );
    // Guarded by their IRQEN (6.3.21): these writes are ignored.
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, 0x0900_0000);
    h.smmu.write32(regs::EVENTQ_IRQ_CFG1, 0x99);
    h.smmu.write32(regs::EVENTQ_IRQ_CFG2, 0x3f);
    h.smmu.write32(regs::GERROR_IRQ_CFG0 + 4, 0xf);
    h.smmu.write32(regs::GERROR_IRQ_CFG1, 0x98);
    h.smmu.write32(regs::GERROR_IRQ_CFG2, 0x3f);
    assert_eq!(h.smmu.read64(regs::EVENTQ_IRQ_CFG0), 0x0800_0040);
    assert_eq!(h.smmu.read32(regs::EVENTQ_IRQ_CFG1), 0x11);
    assert_eq!(h.smmu.read32(regs::EVENTQ_IRQ_CFG2), 0);
    assert_eq!(h.smmu.read64(regs::GERROR_IRQ_CFG0), 0x0800_0080);
    assert_eq!(h.smmu.read32(regs::GERROR_IRQ_CFG1), 0x22);
    assert_eq!(h.smmu.read32(regs::GERROR_IRQ_CFG2), 0);
    // The MSI still goes where it was configured before the enable.
    let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    assert_eq!(msis.lock().unwrap().as_slice(), &[(0x0800_0040, 0x11)]);
    // Disabled again, the configuration is writable.
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::GERROR_IRQEN);
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, 0x0900_0000);
    assert_eq!(h.smmu.read64(regs::EVENTQ_IRQ_CFG0), 0x0900_0000);
    assert_eq!(h.smmu.read64(regs::GERROR_IRQ_CFG0), 0x0800_0080);
    assert_eq!(h.events().len(), 1);
}

/// A model without MSIs, broadcast TLB maintenance or 2-level stream
/// tables.
fn bare() -> H {
    let h = H::new(ModelConfig {
        msi: false,
        btm: false,
        two_level_strtab: false,
        sid_bits: 6,
        ..ModelConfig::default()
    });
    assert_eq!(h.smmu.read32(regs::IDR0) & (1 << 13 | 1 << 5 | 3 << 27), 0);
    h
}

#[test]
fn msi_configuration_is_res0_without_msis() {
    let h = bare();
    // IDR0.MSI == 0: the MSI configuration registers are RES0 (6.3.21).
    for (off, v) in [
        (regs::GERROR_IRQ_CFG0, 0x0800_0040),
        (regs::GERROR_IRQ_CFG0 + 4, 0x1),
        (regs::GERROR_IRQ_CFG1, 0x1234),
        (regs::GERROR_IRQ_CFG2, 0x31),
        (regs::EVENTQ_IRQ_CFG0, 0x0800_0080),
        (regs::EVENTQ_IRQ_CFG0 + 4, 0x1),
        (regs::EVENTQ_IRQ_CFG1, 0x5678),
        (regs::EVENTQ_IRQ_CFG2, 0x31),
    ] {
        h.smmu.write32(off, v);
        assert_eq!(h.smmu.read32(off), 0, "offset {off:#x}");
    }
    let full = H::new(ModelConfig::default());
    full.smmu.write32(regs::GERROR_IRQ_CFG1, 0x1234);
    assert_eq!(full.smmu.read32(regs::GERROR_IRQ_CFG1), 0x1234);
}

#[test]
fn cr2_ptm_is_res0_without_btm() {
    let h = bare();
    // 6.3.12: PTM exists when IDR0.BTM == 1; RECINVSID always.
    h.smmu.write32(regs::CR2, 0b110);
    assert_eq!(h.smmu.read32(regs::CR2), 0b010);
    let full = H::new(ModelConfig {
        btm: true,
        ..ModelConfig::default()
    });
    full.smmu.write32(regs::CR2, 0b110);
    assert_eq!(full.smmu.read32(regs::CR2), 0b110);
}

#[test]
fn strtab_fmt_and_split_are_res0_without_two_level_tables() {
    let h = bare();
    // 6.3.25: FMT and SPLIT exist when IDR0.ST_LEVEL != 0.
    h.smmu.write32(regs::STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 6);
    assert_eq!(h.smmu.read32(regs::STRTAB_BASE_CFG), 6);
    let full = H::new(ModelConfig::default());
    full.smmu
        .write32(regs::STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 6);
    assert_eq!(
        full.smmu.read32(regs::STRTAB_BASE_CFG),
        1 << 16 | 8 << 6 | 6
    );
}

#[test]
fn a_global_error_sends_its_msi() {
    let mut h = linear(ModelConfig::default());
    let doorbell = h.alloc(64);
    h.smmu.write64(regs::GERROR_IRQ_CFG0, doorbell + 8);
    h.smmu.write32(regs::GERROR_IRQ_CFG1, 0x6e6e);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::GERROR_IRQEN);
    // An illegal command activates CMDQ_ERR: the GERROR MSI is written
    // (3.18.2: "If enabled, an MSI is sent ... ADDR not zero").
    assert_eq!(h.cmd(0xff, 0), 1);
    assert_eq!(h.gerror_active(), gerror::CMDQ_ERR);
    assert_eq!(h.r64(doorbell + 8) as u32, 0x6e6e);
    assert_eq!(h.smmu.stats().msi_writes, 1);
    assert!(h.smmu.take_interrupts().gerror, "and the wired line");
    // An error already active is not raised again: no second MSI.
    h.w64(doorbell + 8, 0);
    h.smmu.write32(regs::CMDQ_PROD, h.prod);
    assert_eq!(h.r64(doorbell + 8), 0);
    // An aborted GERROR MSI activates MSI_GERROR_ABT_ERR (once).
    h.mem.inject_abort(doorbell, 64);
    h.ack_gerror();
    assert_eq!(
        h.gerror_active(),
        gerror::CMDQ_ERR | gerror::MSI_GERROR_ABT_ERR
    );
    assert_eq!(h.smmu.stats().gerrors[7], 1);
    // Without IRQEN no MSI is sent.
    let msis = msi_log(&h);
    h.smmu.write32(regs::IRQ_CTRL, 0);
    h.ack_gerror();
    assert_eq!(h.gerror_active(), gerror::CMDQ_ERR);
    assert!(msis.lock().unwrap().is_empty());
}

#[test]
fn cmd_sync_sig_irq_pulses_the_wired_line_whatever_the_msi_address() {
    let mut h = linear(ModelConfig::default());
    let lines = irq_log(&h);
    let msis = msi_log(&h);
    let target = 0x0800_0040u64;
    let sync_irq = u64::from(op::SYNC) | 1 << 12 | 0x5a5a_0001 << 32;
    assert_eq!(h.cmd(sync_irq, target), 0);
    // 4.7.3: "an event on a unique wired interrupt output is asserted on
    // this signal, regardless of the value of MSIAddress".
    assert_eq!(msis.lock().unwrap().as_slice(), &[(target, 0x5a5a_0001)]);
    assert_eq!(lines.lock().unwrap().as_slice(), &[IrqLine::CmdSync]);
    assert!(h.smmu.take_interrupts().cmd_sync);
    // Without an address: the wired line only.
    assert_eq!(h.cmd(sync_irq, 0), 0);
    assert_eq!(msis.lock().unwrap().len(), 1);
    assert_eq!(lines.lock().unwrap().len(), 2);
    assert!(h.smmu.take_interrupts().cmd_sync);
    // SIG_NONE signals nothing.
    h.sync();
    assert_eq!(lines.lock().unwrap().len(), 2);
    assert!(!h.smmu.take_interrupts().cmd_sync);
}

#[test]
fn index_bits_above_the_wrap_bit_read_as_zero() {
    let h = H::new(ModelConfig::default());
    // 16-entry queues: RD/WR are bits [3:0], the wrap bit is bit 4.
    h.smmu.write64(regs::CMDQ_BASE, MEM_BASE | 4);
    h.smmu.write64(regs::EVENTQ_BASE, (MEM_BASE + 0x1000) | 4);
    // SMMU-written indexes: bits [19:QS+1] are RAZ (6.3.28, and
    // EVENTQ_PROD likewise).
    h.smmu.write32(regs::CMDQ_CONS, 0xf_ffe3);
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS), 0x03);
    h.smmu.write32(regs::EVENTQ_PROD, 0x8fff_fff5);
    assert_eq!(h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD), 0x8000_0015);
    // A queue made smaller shows the truncated index.
    h.smmu.write32(regs::EVENTQ_PROD, 0x1c);
    h.smmu.write64(regs::EVENTQ_BASE, (MEM_BASE + 0x1000) | 2);
    assert_eq!(h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD), 0x4);
    // The model's consumption keeps them clear: consume 3 commands from
    // CONS = 0x1e (index 14, wrap 1) of a 16-entry queue.
    let mut h = H::new(ModelConfig::default());
    h.enable_queues(4, 4);
    h.smmu.write32(regs::CR0, 0);
    h.smmu.write32(regs::CMDQ_CONS, 0xff_ff1e);
    h.smmu.write32(regs::CMDQ_PROD, 0x1e);
    h.prod = 0x1e;
    h.smmu.write32(regs::CR0, cr0::CMDQEN | cr0::EVENTQEN);
    for _ in 0..3 {
        h.sync();
    }
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS), 0x01);
}

#[test]
fn reserved_split_values_behave_as_six() {
    let mut h = H::new(ModelConfig::default());
    let l1 = h.alloc(8 * 1024);
    h.smmu.write64(regs::STRTAB_BASE, l1);
    // SPLIT = 9 is reserved and behaves as 6 (6.3.25): StreamID 0x45 is
    // STE 5 of the level-2 table of L1 descriptor 1.
    h.smmu.write32(regs::STRTAB_BASE_CFG, 1 << 16 | 9 << 6 | 16);
    h.enable_queues(8, 8);
    h.enable_smmu();
    let l2 = h.alloc(64 * 64);
    h.w64(l1 + 8, l2 | 7);
    h.write_words(l2 + 5 * 64, &ste_bypass());
    h.cfgi_ste(0x45);
    let t = h.smmu.translate(&DmaRequest::read(0x45, 0x1000, 1));
    assert!(t.unwrap().bypass);
    // Under SPLIT 8 this StreamID would have used L1 descriptor 0.
    assert_eq!(
        h.smmu
            .translate(&DmaRequest::read(0x05, 0x1000, 1))
            .unwrap_err()
            .event_type(),
        Some(EventType::CBadStreamId)
    );
}

#[test]
fn a_linear_stream_table_base_is_aligned_to_the_table_size() {
    let mut h = H::new(ModelConfig::default());
    // A 16-entry linear table (1 KiB) inside a 2 KiB aligned block, with
    // ADDR programmed 0x100 bytes past its start: the SMMU ignores the
    // low bits (6.3.24, ADDR[LOG2SIZE + 5:0] = 0).
    let block = h.alloc(2048);
    assert_eq!(block % 2048, 0);
    h.strtab = block;
    h.smmu.write64(regs::STRTAB_BASE, block + 0x100);
    h.smmu.write32(regs::STRTAB_BASE_CFG, 4);
    h.enable_queues(8, 8);
    h.enable_smmu();
    h.write_words(block + 3 * 64, &ste_bypass());
    h.write_words(block + 0x100 + 3 * 64, &ste_abort());
    h.cfgi_ste(3);
    assert!(
        h.smmu
            .translate(&DmaRequest::read(3, 0x1000, 1))
            .unwrap()
            .bypass
    );
    // The register still reads back what was written.
    assert_eq!(h.smmu.read64(regs::STRTAB_BASE), block + 0x100);
}

#[test]
fn a_two_level_stream_table_base_is_aligned_to_the_level1_size() {
    // 2-level: aligned to the level-1 table size (2^(16 - 8) descriptors
    // of 8 bytes: 2 KiB).
    let mut h = H::new(ModelConfig::default());
    let l1 = h.alloc(4096);
    assert_eq!(l1 % 4096, 0);
    h.smmu.write64(regs::STRTAB_BASE, l1 + 0x440);
    h.smmu.write32(regs::STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 16);
    h.enable_queues(8, 8);
    h.enable_smmu();
    let l2 = h.alloc(64 * 4);
    h.w64(l1 + 8, l2 | 3);
    h.write_words(l2 + 64, &ste_bypass());
    h.cfgi_ste(0x101);
    assert!(
        h.smmu
            .translate(&DmaRequest::read(0x101, 0x1000, 1))
            .unwrap()
            .bypass
    );
}

/// Shrinks `h`'s (enabled) event queue to two entries and gives SID 2 a
/// stage-1 CD that stalls (CD.S) on a fault, with nothing mapped.
fn two_entries_and_a_stalling_stream(h: &mut H) {
    h.smmu.write32(regs::CR0, cr0::CMDQEN | cr0::SMMUEN);
    h.evtq_log2 = 1;
    h.smmu.write64(regs::EVENTQ_BASE, h.evtq | 1);
    h.smmu
        .write32(regs::CR0, cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN);
    let pt = Pt::new_s1(h, 12, 48);
    let cdp = h.alloc(64);
    let mut d = cd(16, 0, 5, pt.root, 9);
    d[0] |= 1 << 44; // S
    h.write_words(cdp, &d);
    h.set_ste(2, ste_s1(cdp, 0, 0, 0));
}

#[test]
fn a_stall_record_waits_for_room_instead_of_overflowing() {
    let cfg = ModelConfig {
        stall_model: StallModel::StallAndTerminate,
        ..ModelConfig::default()
    };
    let mut h = H::new(cfg);
    h.enable_linear(4);
    two_entries_and_a_stalling_stream(&mut h);
    // Fill the queue with two terminated faults (C_BAD_STE on SID 1).
    for _ in 0..2 {
        let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    }
    let prod = h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD);
    assert_eq!(prod, 0b10, "full: index 0, wrap 1");
    // The stalled transaction's record finds the queue full: it is not
    // discarded and causes no overflow (7.4).
    let f = h.smmu.translate(&DmaRequest::read(2, 0x4000, 4));
    let Err(DmaFault::Stalled { event }) = f else {
        panic!("expected a stall, got {f:?}");
    };
    assert_eq!(h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD), prod);
    let st = h.smmu.stats();
    assert_eq!((st.events_waiting, st.events_overflowed), (1, 0));
    // A terminated fault now is discarded and overflows.
    let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    assert_eq!(
        h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD),
        prod | 1 << 31
    );
    // Consuming makes room: the stall record is written.
    let evs = h.events();
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e.kind == EventType::CBadSte));
    let evs = h.events();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0], event);
    assert!(evs[0].stall);
    assert_eq!(h.smmu.stalled(), vec![(2, event.stag)]);
    let st = h.smmu.stats();
    assert_eq!((st.events_waiting, st.events_recorded), (0, 3));

    // A record still waiting when its stall is retired is not written.
    h.cmd(u64::from(op::STALL_TERM) | 2 << 32, 0);
    h.sync();
    for _ in 0..2 {
        let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    }
    assert!(matches!(
        h.smmu.translate(&DmaRequest::read(2, 0x4000, 4)),
        Err(DmaFault::Stalled { .. })
    ));
    assert_eq!(h.smmu.stats().events_waiting, 1);
    h.cmd(u64::from(op::STALL_TERM) | 2 << 32, 0);
    h.sync();
    let st = h.smmu.stats();
    assert_eq!((st.events_waiting, st.events_discarded), (0, 1));
    assert_eq!(h.events().len(), 2);
    assert!(h.events().is_empty());
    assert!(h.smmu.stalled().is_empty());
    // Every event is accounted for once.
    let st = h.smmu.stats();
    let generated: u64 = st.events.iter().sum();
    assert_eq!(
        generated,
        st.events_recorded + st.events_discarded + st.events_overflowed + st.events_suppressed
    );
}

#[test]
fn the_event_interrupt_fires_when_the_queue_becomes_non_empty() {
    let mut h = linear(ModelConfig::default());
    let lines = irq_log(&h);
    let msis = msi_log(&h);
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, 0x0800_0040);
    h.smmu.write32(regs::EVENTQ_IRQ_CFG1, 0x7);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::EVENTQ_IRQEN);
    let fault = |h: &H| {
        let r = h.smmu.translate(&DmaRequest::read(1, 0, 4));
        assert_eq!(r.unwrap_err().event_type(), Some(EventType::CBadSte));
    };
    // 3.18.2: the trigger is the queue going from empty to non-empty.
    fault(&h);
    fault(&h);
    fault(&h);
    assert_eq!(lines.lock().unwrap().as_slice(), &[IrqLine::EventQ]);
    assert_eq!(msis.lock().unwrap().len(), 1);
    assert_eq!(h.events().len(), 3);
    // Drained: the next record interrupts again.
    fault(&h);
    assert_eq!(lines.lock().unwrap().len(), 2);
    assert_eq!(msis.lock().unwrap().as_slice(), &[(0x0800_0040, 7); 2]);
    // Records written while the source was disabled leave the queue
    // non-empty: enabling it then does not interrupt for them, and a new
    // record into the non-empty queue does not either.
    h.smmu.write32(regs::IRQ_CTRL, 0);
    fault(&h);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::EVENTQ_IRQEN);
    fault(&h);
    assert_eq!(lines.lock().unwrap().len(), 2);
    assert_eq!(h.events().len(), 3);
}

#[test]
fn gerrorn_keeps_only_the_errors_this_smmu_has() {
    // No PRI queue: PRIQ_ABT_ERR and MSI_PRIQ_ABT_ERR are RES0 (6.3.20);
    // without MSIs the MSI abort errors are too.
    let h = H::new(ModelConfig::default());
    h.smmu.write32(regs::GERRORN, 0xffff_ffff);
    assert_eq!(h.smmu.read32(regs::GERRORN), 0x1b5);
    let bare = bare();
    bare.smmu.write32(regs::GERRORN, 0xffff_ffff);
    assert_eq!(bare.smmu.read32(regs::GERRORN), 0x105);
}

/// Returns every register a driver reads (page 0 up to the PRI queue
/// registers, and page 1's event queue pointers).
fn register_reads(h: &H) -> Vec<(u64, u32)> {
    (0..0xe0)
        .step_by(4)
        .chain([
            regs::PAGE1 + regs::EVENTQ_PROD,
            regs::PAGE1 + regs::EVENTQ_CONS,
        ])
        .map(|o| (o, h.smmu.read32(o)))
        .collect()
}

#[test]
fn a_snapshot_taken_mid_use_restores_registers_events_and_interrupts() {
    let mut a = linear(ModelConfig::default());
    let doorbell = a.alloc(64);
    a.smmu.write64(regs::EVENTQ_IRQ_CFG0, doorbell);
    a.smmu.write32(regs::EVENTQ_IRQ_CFG1, 0xe0);
    a.smmu.write64(regs::GERROR_IRQ_CFG0, doorbell + 8);
    a.smmu.write32(regs::GERROR_IRQ_CFG1, 0x6e);
    a.smmu.write32(
        regs::IRQ_CTRL,
        irq_ctrl::EVENTQ_IRQEN | irq_ctrl::GERROR_IRQEN,
    );
    two_entries_and_a_stalling_stream(&mut a);
    // Mid-use: two events not consumed (the queue is full), a stall
    // record waiting for room, the event and GERROR interrupts pending,
    // a command error with a CMD_SYNC (SIG_IRQ, with an MSI) behind it.
    for _ in 0..2 {
        let _ = a.smmu.translate(&DmaRequest::read(1, 0, 4));
    }
    assert!(matches!(
        a.smmu.translate(&DmaRequest::read(2, 0x4000, 4)),
        Err(DmaFault::Stalled { .. })
    ));
    let bad_at = a.cmdq + u64::from(a.prod & 0xff) * 16;
    assert_eq!(a.cmd(0xff, 0), 1);
    let sync_irq = u64::from(op::SYNC) | 1 << 12 | 0x5a << 32;
    let _ = a.cmd(sync_irq, doorbell + 16);
    assert_eq!(a.gerror_active(), gerror::CMDQ_ERR);
    assert!(a.smmu.interrupts().eventq && a.smmu.interrupts().gerror);

    let snap = a.smmu.snapshot();
    let mut b = H::new(ModelConfig::default());
    let mut image = vec![0u8; 16 << 20];
    a.mem.dev_read(MEM_BASE, &mut image).unwrap();
    b.mem.dev_write(MEM_BASE, &image).unwrap();
    (b.cmdq, b.cmdq_log2, b.evtq, b.evtq_log2, b.prod) =
        (a.cmdq, a.cmdq_log2, a.evtq, a.evtq_log2, a.prod);
    b.smmu.restore(&snap).unwrap();

    assert_eq!(register_reads(&b), register_reads(&a));
    assert_eq!(b.smmu.interrupts(), a.smmu.interrupts());
    assert_eq!(b.smmu.stalled(), a.smmu.stalled());
    // The same future: fix the command and acknowledge the error, then
    // drain the queue twice (the stall record follows the two events).
    let mut outcomes = Vec::new();
    for h in [&mut a, &mut b] {
        let lines = irq_log(h);
        let msis = msi_log(h);
        let _ = h.smmu.take_interrupts();
        h.write_words(bad_at, &[u64::from(op::CFGI_STE_RANGE), 31]);
        h.ack_gerror();
        let first = h.events();
        let second = h.events();
        let after = register_reads(h);
        let lines = lines.lock().unwrap().clone();
        let msis = msis.lock().unwrap().clone();
        outcomes.push((first, second, after, lines, msis, h.smmu.interrupts()));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    let (first, second, _, lines, msis, irqs) = &outcomes[0];
    assert_eq!(first.len(), 2);
    assert!(second.len() == 1 && second[0].stall);
    // CMD_SYNC's wired line and MSI; the stall record into the drained
    // queue interrupts (wired and MSI).
    assert_eq!(lines.as_slice(), &[IrqLine::CmdSync, IrqLine::EventQ]);
    assert_eq!(msis.as_slice(), &[(doorbell + 16, 0x5a), (doorbell, 0xe0)]);
    assert!(irqs.cmd_sync && irqs.eventq && !irqs.gerror);
}

/// An MSI the VMM's callback declines is written to memory by the model;
/// when that write aborts, the source's MSI abort error activates, as
/// without a callback (3.18.1: a completed MSI is visible or its abort is
/// in GERROR).
#[test]
fn a_declined_msi_that_aborts_activates_its_abort_error() {
    let mut h = linear(ModelConfig::default());
    let doorbell = h.alloc(64);
    h.smmu
        .set_msi_handler(Some(Arc::new(|_addr: u64, _data: u32| false)));
    h.mem.inject_abort(doorbell, 64);
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, doorbell);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::EVENTQ_IRQEN);
    let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    assert_eq!(h.gerror_active(), gerror::MSI_EVENTQ_ABT_ERR);
    // CMD_SYNC's MSI likewise.
    let sync_irq = u64::from(op::SYNC) | 1 << 12;
    assert_eq!(h.cmd(sync_irq, doorbell + 8), 0);
    assert_eq!(
        h.gerror_active(),
        gerror::MSI_EVENTQ_ABT_ERR | gerror::MSI_CMDQ_ABT_ERR
    );
    // And the GERROR MSI of those errors, once enabled.
    h.ack_gerror();
    h.smmu.write64(regs::GERROR_IRQ_CFG0, doorbell + 16);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::GERROR_IRQEN);
    assert_eq!(h.cmd(sync_irq, doorbell + 8), 0);
    assert_eq!(
        h.gerror_active(),
        gerror::MSI_CMDQ_ABT_ERR | gerror::MSI_GERROR_ABT_ERR
    );
}

/// IDR5.STALL_MAX was 0 on a model that stalls, which promises that no
/// stall record is ever outstanding (6.3.6); it now says how many stalls
/// the model keeps (65,535: `audit.rs` `stalls_are_bounded_by_the_stag_space`
/// checks the bound), and stays RES0 without the stall model.
#[test]
fn idr5_stall_max_tells_how_many_stalls_may_be_outstanding() {
    let h = H::new(ModelConfig::default());
    let idr5 = h.smmu.read32(regs::IDR5);
    assert_eq!(idr5 >> 16, regs::STALL_MAX);
    assert_eq!(idr5 & 0xffff, 0x75, "OAS 48, 4K/16K/64K granules");
    let forced = H::new(ModelConfig {
        stall_model: StallModel::StallForced,
        ..ModelConfig::default()
    });
    assert_eq!(forced.smmu.read32(regs::IDR5) >> 16, 0xffff);
    let terminate = H::new(ModelConfig::qemu_like());
    assert_eq!(terminate.smmu.read32(regs::IDR5), 0x74);
}

/// The effective LOG2SIZE is MIN(LOG2SIZE, IDR1.SIDSIZE) for the range
/// check and indexing (found right), while the base alignment uses the
/// literal LOG2SIZE (6.3.24, 6.3.25; the alignment fix above).
#[test]
fn log2size_beyond_sidsize_is_capped_but_aligns_literally() {
    let mut h = H::new(ModelConfig {
        sid_bits: 6,
        ..ModelConfig::default()
    });
    let block = h.alloc(64 << 8);
    assert_eq!(block % (64 << 8), 0);
    h.strtab = block;
    h.smmu.write64(regs::STRTAB_BASE, block + (64 << 6));
    h.smmu.write32(regs::STRTAB_BASE_CFG, 8);
    assert_eq!(
        h.smmu.read32(regs::STRTAB_BASE_CFG),
        8,
        "read back literally"
    );
    h.enable_queues(8, 8);
    h.enable_smmu();
    h.write_words(block + 0x3f * 64, &ste_bypass());
    h.cfgi_ste(0x3f);
    let t = |sid| h.smmu.translate(&DmaRequest::read(sid, 0x1000, 1));
    assert!(t(0x3f).unwrap().bypass);
    assert_eq!(
        t(0x40).unwrap_err().event_type(),
        Some(EventType::CBadStreamId)
    );
}

/// CMD_SYNC(SIG_IRQ)'s MSIAddress (4.7.3): "If this field is non-zero, it
/// configures the physical address that an MSI is sent to ... The check
/// for zero applies to the entire specified field span and is not limited
/// to the physical address size (OAS) of an implementation. If the OAS is
/// smaller than this field, MSIAddress is truncated to the OAS". The span
/// is \[55:2\], of which \[55:52\] are RES0 in SMMUv3.1 to v3.3 and
/// \[55:48\] in v3.0 (4.1.6); a RES0 field is checked or ignored entirely
/// (4.1.5), and the model ignores them.
#[test]
fn cmd_sync_msi_address_is_truncated_to_the_oas() {
    let target = 0x0800_0040u64;
    let sync_irq = u64::from(op::SYNC) | 1 << 12 | 0x77 << 32;
    // SMMUv3.2, OAS 48: bits [51:48] are address bits above the OAS.
    let mut h = linear(ModelConfig::default());
    let msis = msi_log(&h);
    assert_eq!(h.cmd(sync_irq, 1 << 50 | target), 0);
    // Only bits above the OAS: the field is not zero, so an MSI is sent,
    // to the truncated address.
    assert_eq!(h.cmd(sync_irq, 1 << 51), 0);
    // [63:56] and [55:52] (RES0 here) and [1:0] (below the field) are
    // ignored: no MSI when nothing else is set.
    assert_eq!(h.cmd(sync_irq, 0xff << 56 | 0xf << 52 | target | 3), 0);
    assert_eq!(h.cmd(sync_irq, 0xff << 56 | 0xf << 52 | 3), 0);
    assert_eq!(
        msis.lock().unwrap().as_slice(),
        &[(target, 0x77), (0, 0x77), (target, 0x77)]
    );
    assert_eq!(h.smmu.stats().sync_msi_writes, 3);

    // SMMUv3.4 and later: [55:52] belong to the field, so its zero check
    // sees them, and the truncation to the OAS drops them.
    let mut v34 = linear(ModelConfig {
        arch_minor: 4,
        ..ModelConfig::default()
    });
    let msis = msi_log(&v34);
    assert_eq!(v34.cmd(sync_irq, 1 << 53), 0);
    assert_eq!(v34.cmd(sync_irq, 1 << 55 | target), 0);
    assert_eq!(v34.cmd(sync_irq, 1 << 56), 0);
    assert_eq!(
        msis.lock().unwrap().as_slice(),
        &[(0, 0x77), (target, 0x77)]
    );

    // SMMUv3.0: [55:48] are RES0 and ignored; OAS 44 truncates [47:44].
    let mut v30 = linear(ModelConfig {
        arch_minor: 0,
        oas_bits: 44,
        ..ModelConfig::default()
    });
    let msis = msi_log(&v30);
    assert_eq!(v30.cmd(sync_irq, 1 << 50), 0);
    assert_eq!(v30.cmd(sync_irq, 1 << 46 | target), 0);
    assert_eq!(msis.lock().unwrap().as_slice(), &[(target, 0x77)]);
}

/// SMMU_GERROR_IRQ_CFG0 / SMMU_EVENTQ_IRQ_CFG0.ADDR (6.3.21, 6.3.30):
/// "High-order bits of the ADDR field above the system physical address
/// size, as reported by SMMU_IDR5.OAS, are RES0. Note: An implementation
/// is not required to store these bits." The model does not store them,
/// so the MSI goes to the address truncated to the OAS (3.4.3: an MSI
/// write configured by SMMU_(*_)*_IRQ_CFG{0,1,2} is truncated to the OAS).
#[test]
fn irq_cfg0_address_bits_above_the_oas_are_not_stored() {
    let target = 0x0800_0040u64;
    let mut h = linear(ModelConfig::default());
    let msis = msi_log(&h);
    for cfg0 in [regs::GERROR_IRQ_CFG0, regs::EVENTQ_IRQ_CFG0] {
        h.smmu.write64(cfg0, u64::MAX);
        assert_eq!(h.smmu.read64(cfg0), 0x0000_ffff_ffff_fffc, "{cfg0:#x}");
        h.smmu.write32(cfg0 + 4, 0x0004_0000);
        assert_eq!(h.smmu.read64(cfg0), 0xffff_fffc, "{cfg0:#x}");
        h.smmu.write64(cfg0, 1 << 50 | target);
        assert_eq!(h.smmu.read64(cfg0), target, "{cfg0:#x}");
    }
    h.smmu.write32(regs::EVENTQ_IRQ_CFG1, 0x5);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::EVENTQ_IRQEN);
    let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    assert_eq!(msis.lock().unwrap().as_slice(), &[(target, 0x5)]);
    // Only bits above the OAS: ADDR reads 0, and no MSI is sent.
    assert_eq!(h.events().len(), 1);
    h.smmu.write32(regs::IRQ_CTRL, 0);
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, 1 << 50);
    assert_eq!(h.smmu.read64(regs::EVENTQ_IRQ_CFG0), 0);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::EVENTQ_IRQEN);
    let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    assert_eq!(h.events().len(), 1);
    assert_eq!(msis.lock().unwrap().len(), 1);

    // OAS 52 keeps [51:48]; [55:52] are never stored (the OAS is at most
    // 52 bits), nor [63:56] and [1:0].
    let h52 = H::new(ModelConfig {
        oas_bits: 52,
        ..ModelConfig::default()
    });
    h52.smmu.write64(regs::GERROR_IRQ_CFG0, u64::MAX);
    assert_eq!(
        h52.smmu.read64(regs::GERROR_IRQ_CFG0),
        0x000f_ffff_ffff_fffc
    );
    // OAS 32: the high half holds nothing.
    let h32 = H::new(ModelConfig {
        oas_bits: 32,
        ..ModelConfig::default()
    });
    h32.smmu.write64(regs::EVENTQ_IRQ_CFG0, u64::MAX);
    assert_eq!(h32.smmu.read64(regs::EVENTQ_IRQ_CFG0), 0xffff_fffc);

    // A snapshot holding a bit the registers no longer store is refused.
    let mut snap = serde_json::to_value(h.smmu.snapshot()).unwrap();
    for cfg0 in ["gerror_irq_cfg0", "eventq_irq_cfg0"] {
        let genuine = snap["regs"][cfg0].clone();
        snap["regs"][cfg0] = serde_json::json!(1u64 << 50 | target);
        let forged = serde_json::from_value(snap.clone()).unwrap();
        let fresh = H::new(ModelConfig::default());
        assert!(
            matches!(
                fresh.smmu.restore(&forged),
                Err(SnapshotError::Corrupt { .. })
            ),
            "{cfg0}"
        );
        snap["regs"][cfg0] = genuine;
    }
    let genuine = serde_json::from_value(snap).unwrap();
    H::new(ModelConfig::default())
        .smmu
        .restore(&genuine)
        .unwrap();
}

/// Returns every MSI, with its attributes, the model sends from now on.
fn msi_write_log(h: &H) -> Arc<Mutex<Vec<MsiWrite>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    h.smmu
        .set_msi_write_handler(Some(Arc::new(move |w: &MsiWrite| {
            l.lock().unwrap().push(*w);
            true
        })));
    log
}

/// SMMU_*_IRQ_CFG2 (6.3.23, 6.3.32): SH \[5:4\] and MemAttr \[3:0\] are
/// kept as written, Reserved encodings included (they are "treated as"
/// another value, not stored as one), bits \[31:6\] are RES0. "Each MSI
/// can be independently configured with a memory type and Shareability"
/// (3.18): the MSI callback gets them, from CFG2 for the event queue and
/// GERROR MSIs and from MSIAttr \[27:24\] / MSH \[23:22\] for CMD_SYNC's
/// (4.7.3), with the effective Shareability (Outer for Device and Normal
/// iNC-oNC) and Reserved MemAttr values behaving as Device-nGnRnE (5.2).
#[test]
fn msi_attributes_read_back_and_reach_the_msi_callback() {
    let mut h = linear(ModelConfig::default());
    for cfg2 in [regs::GERROR_IRQ_CFG2, regs::EVENTQ_IRQ_CFG2] {
        for v in 0..64 {
            h.smmu.write32(cfg2, 0xffff_ffc0 | v);
            assert_eq!(h.smmu.read32(cfg2), v, "{cfg2:#x}");
        }
    }
    let msis = msi_write_log(&h);
    // What Linux programs: Device-nGnRE doorbells, SH left 0.
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, 0x0800_0040);
    h.smmu.write32(regs::EVENTQ_IRQ_CFG1, 0xe);
    h.smmu.write32(regs::EVENTQ_IRQ_CFG2, 0b0001);
    // Normal Write-Back, Inner Shareable.
    h.smmu.write64(regs::GERROR_IRQ_CFG0, 0x0800_0080);
    h.smmu.write32(regs::GERROR_IRQ_CFG1, 0x6);
    h.smmu.write32(regs::GERROR_IRQ_CFG2, 0b11 << 4 | 0b1111);
    h.smmu.write32(
        regs::IRQ_CTRL,
        irq_ctrl::EVENTQ_IRQEN | irq_ctrl::GERROR_IRQEN,
    );
    let _ = h.smmu.translate(&DmaRequest::read(1, 0, 4));
    // An illegal command raises the GERROR MSI; replaced by a legal one.
    let bad_at = h.cmdq + u64::from(h.prod & 0xff) * 16;
    assert_eq!(h.cmd(0xff, 0), 1);
    h.write_words(bad_at, &[u64::from(op::CFGI_STE_RANGE), 31]);
    h.ack_gerror();
    // CMD_SYNC as Linux issues it (MSIAttr Write-Back, MSH Inner), then
    // with a Reserved MSIAttr and MSH.
    let sync = u64::from(op::SYNC) | 1 << 12 | 0x5a << 32;
    assert_eq!(h.cmd(sync | 0b11 << 22 | 0b1111 << 24, 0x0800_00c0), 0);
    assert_eq!(h.cmd(sync | 0b01 << 22 | 0b0100 << 24, 0x0800_00c0), 0);
    let want = [
        MsiWrite::new(0x0800_0040, 0xe, MsiAttr::new(0b0001, 0)),
        MsiWrite::new(0x0800_0080, 0x6, MsiAttr::new(0b1111, 0b11)),
        MsiWrite::new(0x0800_00c0, 0x5a, MsiAttr::new(0b1111, 0b11)),
        MsiWrite::new(0x0800_00c0, 0x5a, MsiAttr::new(0b0100, 0b01)),
    ];
    let got = msis.lock().unwrap().clone();
    assert_eq!(got, want);
    let effective: Vec<_> = got
        .iter()
        .map(|w| (w.attr.memory_type(), w.attr.shareability()))
        .collect();
    let wb = MemoryType::Normal {
        outer: Cacheability::WriteBack,
        inner: Cacheability::WriteBack,
    };
    assert_eq!(
        effective,
        [
            (MemoryType::DeviceNgnre, Shareability::Outer),
            (wb, Shareability::Inner),
            (wb, Shareability::Inner),
            (MemoryType::DeviceNgnrne, Shareability::Outer),
        ]
    );
    // The (address, data) callback replaces it and still gets every MSI.
    let plain = msi_log(&h);
    assert_eq!(h.cmd(sync, 0x0800_0100), 0);
    assert_eq!(plain.lock().unwrap().as_slice(), &[(0x0800_0100, 0x5a)]);
    assert_eq!(msis.lock().unwrap().len(), 4);
}
