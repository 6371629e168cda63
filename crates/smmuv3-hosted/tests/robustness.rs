//! Error paths and configurations: rejected commands are reported and
//! skipped, a wedged queue times out instead of hanging, the event queue
//! overflow is detected, ids are not reused while TLB entries may remain,
//! and the SMMU variants (linear stream table, no RIL, QEMU-like, MSI and
//! SEV completion, MMU-600 errata) all translate.

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::command::Command;
use smmuv3::driver::{StrtabFormat, SyncMethod};
use smmuv3::event::EventType;
use smmuv3::{AttachOptions, CmdqErrorKind, DomainKind, Error, SmmuConfig};
use smmuv3_hosted::{HostedDomain, MEM_BASE, System};
use smmuv3_model::{DmaFault, DmaRequest, ModelConfig};

const MEM: u64 = 16 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

fn sys_with(model: ModelConfig, drv: SmmuConfig) -> System {
    System::new(MEM, Coherency::Coherent, model, drv).unwrap()
}

/// Maps a page, DMAs through it, unmaps it and checks the fault.
fn smoke(sys: &System, sid: u32) {
    let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(sid, None, &d, AttachOptions::default())
        .unwrap();
    let pa = sys.mem.alloc(4096).unwrap();
    d.map(0x40_0000, pa, 4096, RW).unwrap();
    sys.model
        .dma_write(&DmaRequest::write(sid, 0x40_0010, 4), &[9, 8, 7, 6])
        .unwrap();
    let mut b = [0u8; 4];
    sys.mem.cpu_read(pa + 0x10, &mut b).unwrap();
    assert_eq!(b, [9, 8, 7, 6]);
    d.unmap(0x40_0000, 4096).unwrap();
    let e = sys
        .model
        .dma_write(&DmaRequest::write(sid, 0x40_0010, 4), &[0; 4])
        .unwrap_err();
    assert_eq!(e.event_type(), Some(smmuv3_model::EventType::FTranslation));
    let evs = sys.smmu.drain_events().unwrap().events;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].ty, EventType::Translation);
}

#[test]
fn rejected_command_is_reported_skipped_and_the_queue_resumes() {
    // The model has no EL2 regime, so TLBI_EL2_ALL is illegal there.
    let sys = sys_with(ModelConfig::default(), SmmuConfig::default());
    let before = sys.smmu.stats();
    let err = sys
        .smmu
        .issue(
            &[
                Command::TlbiNhAll { vmid: 0 },
                Command::TlbiEl2All,
                Command::TlbiNsnhAll,
            ],
            true,
        )
        .unwrap_err();
    match err {
        Error::CommandRejected { kind, decoded, .. } => {
            assert_eq!(kind, CmdqErrorKind::Illegal);
            assert_eq!(decoded, Some(Command::TlbiEl2All));
        }
        other => panic!("unexpected {other}"),
    }
    let after = sys.smmu.stats();
    assert_eq!(after.rejected, before.rejected + 1);
    assert_eq!(after.gerrors, before.gerrors + 1);
    // The command after the bad one ran, and the queue keeps working.
    assert_eq!(sys.model.stats().command(0x30), 2, "bring-up + ours");
    assert_eq!(sys.smmu.handle_gerror(), Ok(0), "nothing left active");
    smoke(&sys, 1);
}

#[test]
fn wedged_queue_times_out_then_recovers() {
    let sys = sys_with(
        ModelConfig::default(),
        SmmuConfig {
            timeout_us: 500,
            ..Default::default()
        },
    );
    sys.model.pause_commands();
    let err = sys.smmu.issue(&[Command::TlbiNsnhAll], true).unwrap_err();
    assert_eq!(err, Error::Timeout("CMD_SYNC completion"));
    sys.model.resume_commands();
    // The late sync completed; later commands work.
    sys.smmu.issue(&[Command::TlbiNsnhAll], true).unwrap();
    // A queue that never drains makes producers time out for space too.
    sys.model.pause_commands();
    let many = vec![Command::TlbiNsnhAll; 300];
    assert_eq!(
        sys.smmu.issue(&many, false).unwrap_err(),
        Error::Timeout("command queue space")
    );
    sys.model.resume_commands();
    sys.smmu.issue(&[], true).unwrap();
}

#[test]
fn slow_queue_is_waited_for_within_the_bound() {
    let sys = sys_with(ModelConfig::default(), SmmuConfig::default());
    sys.model.delay_commands(50);
    sys.smmu.issue(&[Command::TlbiNsnhAll], true).unwrap();
}

#[test]
fn event_queue_overflow_is_detected() {
    let sys = sys_with(ModelConfig::default(), SmmuConfig::default());
    let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(2, None, &d, AttachOptions::default())
        .unwrap();
    // 128-entry queue; 200 faults overflow it.
    for i in 0..200u64 {
        let _ = sys
            .model
            .dma_write(&DmaRequest::write(2, 0x1000 * i, 4), &[0; 4]);
    }
    let b = sys.smmu.drain_events().unwrap();
    assert!(b.overflowed);
    assert!(!b.events.is_empty() && b.events.len() <= 128);
    assert!(
        b.events
            .iter()
            .all(|e| e.ty == EventType::Translation && e.sid == 2)
    );
    // Acknowledged: new events are recorded again, no new overflow.
    let _ = sys
        .model
        .dma_write(&DmaRequest::write(2, 0xdead_0000, 4), &[0; 4]);
    let b = sys.smmu.drain_events().unwrap();
    assert!(!b.overflowed);
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].fault.unwrap().addr, 0xdead_0000);
    assert_eq!(sys.smmu.stats().overflows, 1);
}

#[test]
fn dropped_domain_detaches_and_its_asid_waits_for_invalidation() {
    let sys = sys_with(ModelConfig::default(), SmmuConfig::default());
    let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let DomainKind::Stage1 { asid, .. } = d.kind() else {
        panic!()
    };
    let pa = sys.mem.alloc(4096).unwrap();
    d.map(0x1000, pa, 4096, RW).unwrap();
    sys.smmu
        .attach(4, None, &d, AttachOptions::default())
        .unwrap();
    sys.model
        .dma_write(&DmaRequest::write(4, 0x1000, 4), &[1; 4])
        .unwrap();
    let asid_tlbis = sys.model.stats().command(0x11);
    drop(d);
    // The stream aborts, and the ASID was invalidated before being freed.
    assert_eq!(
        sys.model
            .dma_write(&DmaRequest::write(4, 0x1000, 4), &[1; 4]),
        Err(DmaFault::StreamAbort)
    );
    assert_eq!(sys.model.stats().command(0x11), asid_tlbis + 1);
    // Fresh ids are preferred over recently freed ones.
    let d2 = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let DomainKind::Stage1 { asid: a2, .. } = d2.kind() else {
        panic!()
    };
    assert_ne!(a2, asid);
}

#[test]
fn linear_stream_table() {
    let sys = sys_with(
        ModelConfig::default(),
        SmmuConfig {
            strtab: StrtabFormat::Linear,
            linear_max_log2: 6,
            ..Default::default()
        },
    );
    assert!(!sys.smmu.strtab_two_level());
    smoke(&sys, 63);
    assert_eq!(sys.smmu.set_bypass(64), Err(Error::BadStreamId(64)));
}

#[test]
fn qemu_like_smmu_and_stage1_only() {
    for cfg in [ModelConfig::qemu_like(), ModelConfig::qemu_stage1_only()] {
        let sys = sys_with(cfg, SmmuConfig::default());
        assert_eq!(sys.smmu.sync_method(), SyncMethod::Poll, "QEMU has no SEV");
        smoke(&sys, 8);
    }
    let sys = sys_with(ModelConfig::qemu_stage1_only(), SmmuConfig::default());
    assert!(matches!(
        HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn sync_by_sev_and_by_msi() {
    let sys = sys_with(ModelConfig::default(), SmmuConfig::default());
    assert_eq!(sys.smmu.sync_method(), SyncMethod::Sev);
    smoke(&sys, 1);
    assert!(sys.model.stats().sync_sevs > 0);
    let sys = sys_with(
        ModelConfig::default(),
        SmmuConfig {
            sync: SyncMethod::Msi,
            ..Default::default()
        },
    );
    smoke(&sys, 1);
    assert!(sys.model.stats().sync_msi_writes > 0);
    assert_eq!(sys.model.stats().sync_msi_writes, sys.smmu.stats().syncs);
}

#[test]
fn mmu600_errata_and_no_ril() {
    let sys = sys_with(ModelConfig::mmu600(0, 2), SmmuConfig::default());
    let f = sys.smmu.features();
    assert!(!f.sev && !f.nesting && !f.ril && f.errata.no_sev && f.errata.no_nesting);
    assert_eq!(sys.smmu.sync_method(), SyncMethod::Poll);
    smoke(&sys, 3);
    // Without RIL a 64-page unmap is 64 per-page commands.
    let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(5, None, &d, AttachOptions::default())
        .unwrap();
    let pa = sys.mem.alloc(64 * 4096).unwrap();
    d.map(0x100_0000, pa, 64 * 4096, RW).unwrap();
    let before = sys.model.stats().command(0x12);
    d.unmap(0x100_0000, 64 * 4096).unwrap();
    assert_eq!(sys.model.stats().command(0x12) - before, 64);
}

/// On an SMMU with ATS, traffic an endpoint marks as translated bypasses
/// the SMMU unless CR0.ATSCHK is set. The driver sets it: a stream that
/// did not enable ATS cannot reach memory outside its mappings by marking
/// its requests translated (before, it read and wrote any PA).
#[test]
fn translated_traffic_passes_only_for_streams_that_enable_ats() {
    let sys = sys_with(
        ModelConfig {
            ats: true,
            ..ModelConfig::default()
        },
        SmmuConfig::default(),
    );
    let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(6, None, &d, AttachOptions::default())
        .unwrap();
    let ats = AttachOptions {
        ats: true,
        ..Default::default()
    };
    sys.smmu.attach(7, None, &d, ats).unwrap();
    let secret = sys.mem.alloc(4096).unwrap();
    sys.mem.cpu_write(secret, b"secret").unwrap();
    let translated = |sid: u32, write: bool| {
        let r = if write {
            DmaRequest::write(sid, secret, 6)
        } else {
            DmaRequest::read(sid, secret, 6)
        };
        DmaRequest {
            ats_translated: true,
            ..r
        }
    };
    let mut b = [0u8; 6];
    let e = sys
        .model
        .dma_read(&translated(6, false), &mut b)
        .unwrap_err();
    assert_eq!(
        e.event_type(),
        Some(smmuv3_model::EventType::FTranslForbidden)
    );
    assert_eq!(b, [0; 6]);
    let e = sys
        .model
        .dma_write(&translated(6, true), b"stolen")
        .unwrap_err();
    assert_eq!(
        e.event_type(),
        Some(smmuv3_model::EventType::FTranslForbidden)
    );
    let mut now = [0u8; 6];
    sys.mem.cpu_read(secret, &mut now).unwrap();
    assert_eq!(&now, b"secret");
    let evs = sys.smmu.drain_events().unwrap().events;
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(evs.iter().all(|e| e.ty == EventType::TranslationForbidden));
    // A stream that enabled ATS sends translated traffic as it may.
    sys.model.dma_read(&translated(7, false), &mut b).unwrap();
    assert_eq!(&b, b"secret");
}

/// A stall-forced SMMU stalls stage-2 faults (STE.S2S = 1), and full ATS
/// with S2S = 1 is an ILLEGAL STE: the driver refuses ATS on a stream with
/// stage 2 there, with a typed error and nothing changed (it wrote the
/// ILLEGAL STE, and every DMA of the stream was C_BAD_STE). Stage 1 alone
/// keeps ATS.
#[test]
fn ats_with_stage_2_is_refused_where_stalls_are_forced() {
    let sys = sys_with(
        ModelConfig {
            ats: true,
            stall_model: smmuv3_model::StallModel::StallForced,
            ..ModelConfig::default()
        },
        SmmuConfig::default(),
    );
    let ats = AttachOptions {
        ats: true,
        ..Default::default()
    };
    let s2 = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
    let pa = sys.mem.alloc(4096).unwrap();
    s2.map(0x8000, pa, 4096, RW).unwrap();
    let write = || {
        sys.model
            .dma_write(&DmaRequest::write(4, 0x8000, 4), &[1; 4])
    };
    let before = write().unwrap_err();
    assert!(matches!(
        sys.smmu.attach(4, None, &s2, ats),
        Err(Error::Unsupported(_))
    ));
    // Nothing changed: the stream is refused as it was.
    assert_eq!(write().unwrap_err(), before);
    sys.smmu.drain_events().unwrap();
    sys.smmu
        .attach(4, None, &s2, AttachOptions::default())
        .unwrap();
    write().unwrap();
    let s1 = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    s1.map(0x8000, pa, 4096, RW).unwrap();
    sys.smmu.attach(5, None, &s1, ats).unwrap();
    let mut b = [0u8; 4];
    sys.model
        .dma_read(&DmaRequest::read(5, 0x8000, 4), &mut b)
        .unwrap();
    assert_eq!(b, [1; 4]);
    assert!(sys.smmu.drain_events().unwrap().events.is_empty());
}

#[test]
fn ats_streams_get_atc_invalidations() {
    let sys = sys_with(
        ModelConfig {
            ats: true,
            ..ModelConfig::default()
        },
        SmmuConfig::default(),
    );
    let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let opts = AttachOptions {
        ats: true,
        ..Default::default()
    };
    sys.smmu.attach(9, None, &d, opts).unwrap();
    sys.smmu
        .attach(10, None, &d, AttachOptions::default())
        .unwrap();
    let pa = sys.mem.alloc(0x4000).unwrap();
    d.map(0x7000, pa, 0x2000, RW).unwrap();
    sys.model
        .dma_write(&DmaRequest::write(9, 0x7000, 4), &[1; 4])
        .unwrap();
    let before = sys.model.stats();
    d.unmap(0x7000, 0x2000).unwrap();
    let after = sys.model.stats();
    // One ATC_INV for the one ATS stream, spanning the pages 0x7000-0x8fff
    // (naturally aligned: 0x0000-0xffff, 2^4 pages), after the TLBI was
    // synced: two CMD_SYNCs.
    assert_eq!(after.command(0x40), before.command(0x40) + 1);
    assert_eq!(after.command(0x46), before.command(0x46) + 2);
    // Without ATS support, asking for it is refused.
    let plain = sys_with(ModelConfig::default(), SmmuConfig::default());
    let d2 = HostedDomain::new_stage1(&plain.smmu, Granule::K4, 48).unwrap();
    assert!(matches!(
        plain.smmu.attach(1, None, &d2, opts),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn shutdown_stops_translation_and_commands() {
    let sys = sys_with(ModelConfig::default(), SmmuConfig::default());
    let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let pa = sys.mem.alloc(4096).unwrap();
    d.map(0x1000, pa, 4096, RW).unwrap();
    sys.smmu
        .attach(4, None, &d, AttachOptions::default())
        .unwrap();
    sys.model
        .dma_write(&DmaRequest::write(4, 0x1000, 4), &[1; 4])
        .unwrap();
    sys.smmu.shutdown().unwrap();
    // GBPA aborts while disabled.
    assert_eq!(
        sys.model
            .dma_write(&DmaRequest::write(4, 0x1000, 4), &[1; 4]),
        Err(DmaFault::GlobalAbort)
    );
    assert_eq!(
        sys.smmu.issue(&[Command::TlbiNsnhAll], true),
        Err(Error::QueueDisabled)
    );
    // Dropping a domain of a shut-down SMMU frees it without waiting.
    let tables = sys.mem.blocks_allocated();
    drop(d);
    assert!(sys.mem.blocks_allocated() < tables, "page tables freed");
}

#[test]
fn teardown_frees_every_block() {
    let sys = sys_with(ModelConfig::default(), SmmuConfig::default());
    let System { mem, model, smmu } = sys;
    assert!(mem.blocks_allocated() > 0, "queues and stream table");
    {
        let s2 = HostedDomain::new_stage2(&smmu, Granule::K4, 40).unwrap();
        s2.map(MEM_BASE, MEM_BASE, MEM, RW).unwrap();
        let s1 = HostedDomain::new_nested_stage1(&s2, Granule::K4, 48).unwrap();
        s1.map(0x1000, MEM_BASE, 0x10_0000, RW).unwrap();
        let opts = AttachOptions {
            ssid_bits: 8,
            ..Default::default()
        };
        smmu.attach_nested(5, None, &s2, &s1, opts).unwrap();
        smmu.attach(0x300, Some(7), &s1, opts).unwrap_err();
        let s1b = HostedDomain::new_stage1(&smmu, Granule::K4, 48).unwrap();
        smmu.attach(0x300, Some(7), &s1b, opts).unwrap();
        // Domains go first: they detach their streams.
    }
    assert_eq!(
        model.dma_write(&DmaRequest::write(5, 0x1000, 4), &[0; 4]),
        Err(DmaFault::StreamAbort)
    );
    drop(smmu);
    assert_eq!(
        mem.blocks_allocated(),
        0,
        "everything the driver allocated was freed"
    );
}

#[test]
fn stalled_faults_are_terminated_when_drained() {
    let sys = sys_with(
        ModelConfig {
            stall_model: smmuv3_model::StallModel::StallForced,
            ..ModelConfig::default()
        },
        SmmuConfig::default(),
    );
    let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(6, None, &d, AttachOptions::default())
        .unwrap();
    let e = sys
        .model
        .dma_write(&DmaRequest::write(6, 0x9000, 4), &[0; 4])
        .unwrap_err();
    assert!(matches!(e, DmaFault::Stalled { .. }), "{e}");
    assert_eq!(sys.model.stalled().len(), 1);
    let b = sys.smmu.drain_events().unwrap();
    assert_eq!(b.events.len(), 1);
    let tag = b.events[0].fault.unwrap().stall_tag;
    assert!(tag.is_some(), "{}", b.events[0]);
    assert!(sys.model.stalled().is_empty(), "CMD_RESUME (abort) sent");
    assert_eq!(sys.smmu.stats().by_opcode[0x44], 1);
    // A host with its own fault handling keeps stalls for itself.
    sys.smmu.set_abort_stalls(false);
    let _ = sys
        .model
        .dma_write(&DmaRequest::write(6, 0xa000, 4), &[0; 4]);
    assert_eq!(sys.smmu.drain_events().unwrap().events.len(), 1);
    assert_eq!(sys.model.stalled().len(), 1);
    let (sid, stag) = sys.model.stalled()[0];
    sys.smmu
        .issue(
            &[Command::Resume {
                sid,
                stag,
                abort: true,
            }],
            true,
        )
        .unwrap();
    assert!(sys.model.stalled().is_empty());
}

/// `report_unattached` turns the STEs the driver never configured into
/// invalid ones, now and in level-2 tables installed later: their traffic
/// is still terminated, but recorded (C_BAD_STE), while a stream set to
/// abort stays silent and configured streams are untouched; `set_invalid`
/// does the same for one stream.
#[test]
fn unattached_streams_can_be_made_to_report_their_traffic() {
    for strtab in [StrtabFormat::Linear, StrtabFormat::TwoLevel] {
        let drv = SmmuConfig {
            strtab,
            ..SmmuConfig::default()
        };
        let sys = sys_with(ModelConfig::default(), drv);
        let pa = sys.mem.alloc(4096).unwrap();
        let write = |sid| sys.model.dma_write(&DmaRequest::write(sid, pa, 4), b"dma!");
        let bad_ste = |f: DmaFault| f.event_type() == Some(smmuv3_model::EventType::CBadSte);
        sys.smmu.set_bypass(2).unwrap();
        sys.smmu.set_abort(3).unwrap();
        assert!(matches!(write(4), Err(DmaFault::StreamAbort)), "{strtab:?}");
        sys.smmu.report_unattached().unwrap();
        write(2).unwrap();
        assert!(matches!(write(3), Err(DmaFault::StreamAbort)), "{strtab:?}");
        assert!(bad_ste(write(4).unwrap_err()), "{strtab:?}");
        // A level-2 table installed afterwards starts invalid too.
        sys.smmu.set_bypass(0x300).unwrap();
        write(0x300).unwrap();
        assert!(bad_ste(write(0x301).unwrap_err()), "{strtab:?}");
        sys.smmu.set_invalid(2).unwrap();
        assert!(bad_ste(write(2).unwrap_err()), "{strtab:?}");
        let evs = sys.smmu.drain_events().unwrap().events;
        let seen: Vec<_> = evs.iter().map(|e| (e.ty, e.sid)).collect();
        assert_eq!(
            seen,
            [
                (EventType::BadSte, 4),
                (EventType::BadSte, 0x301),
                (EventType::BadSte, 2)
            ],
            "{strtab:?}"
        );
        // Invalid is a configuration like any other: attaching replaces it.
        sys.smmu.set_bypass(4).unwrap();
        write(4).unwrap();
    }
}
