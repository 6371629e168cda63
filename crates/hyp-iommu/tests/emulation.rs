//! Trap-and-emulate, proven with our own `smmuv3` driver as the host,
//! unchanged: it brings the virtual SMMU up, attaches stage-1 domains
//! (linear and 2-level stream tables, substreams), maps and unmaps with
//! TLBIs, drains events, and its devices reach only host memory.

mod common;

use common::host::{HostDomain, HostSmmu, Trapped};
use common::{Setup, is_s2_translation_fault};
use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::config::S1Dss;
use smmuv3::driver::StrtabFormat;
use smmuv3::event::EventType;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_model::DmaFault;

use hyp_iommu::StreamConfig;

const SID: u32 = 0x10;
const IOVA: u64 = 0x4000_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);

fn host_cfg(strtab: StrtabFormat) -> SmmuConfig {
    SmmuConfig {
        strtab,
        timeout_us: 20_000,
        ..SmmuConfig::default()
    }
}

/// Returns a new stage-1 domain of `host`, attached to `SID`.
fn attach_stage1(host: &HostSmmu) -> HostDomain {
    let dom = HostDomain::new_stage1(host, Granule::K4, 48).unwrap();
    host.attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    dom
}

/// Returns the host driver on SMMU 0 over a `strtab` stream table, with a
/// stage-1 domain attached to `SID`.
fn attached(t: &Trapped, strtab: StrtabFormat) -> (HostSmmu, HostDomain) {
    let host = t.host_smmu(0, host_cfg(strtab)).unwrap();
    let dom = attach_stage1(&host);
    (host, dom)
}

fn setup(coherency: Coherency) -> Trapped {
    Trapped::new(Setup {
        coherency,
        ..Setup::default()
    })
}

/// The host maps a page, its device writes through it, the host unmaps it
/// and the device faults with a stage-1 event the host decodes.
fn round_trip(t: &Trapped, host: &HostSmmu, strtab: StrtabFormat) {
    let mut dom = attach_stage1(host);
    assert_eq!(host.strtab_two_level(), strtab == StrtabFormat::TwoLevel);
    let cfg = t.emu.lock().unwrap().stream(0, SID);
    assert!(matches!(cfg, StreamConfig::Nested { .. }), "{cfg:?}");

    let buf = t.host_ram.alloc(4096).unwrap();
    dom.map(IOVA, buf, 4096, RW).unwrap();
    t.dma_write(SID, IOVA + 8, b"through").unwrap();
    assert_eq!(t.cpu_read(buf + 8, 7), b"through");
    assert_eq!(t.dma_read(SID, IOVA + 8, 7).unwrap(), b"through");

    dom.unmap(IOVA, 4096).unwrap();
    let f = t.dma_write(SID, IOVA + 8, b"stale!!").unwrap_err();
    assert!(!is_s2_translation_fault(&f), "{f:?}");
    assert_eq!(t.cpu_read(buf + 8, 7), b"through");
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].ty, EventType::Translation);
    assert_eq!(events[0].sid, SID);
    let fault = events[0].fault.unwrap();
    assert_eq!(fault.addr, IOVA + 8);
    assert!(!fault.stage2);
}

#[test]
fn our_driver_brings_up_the_virtual_smmu_as_stage1_only() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    let f = host.features();
    assert!(f.stage1);
    assert!(!f.stage2 && !f.nesting && !f.msi && !f.hyp && !f.ats && !f.pri);
    assert!(host.is_enabled());
    let s = t.stats();
    assert!(s.reads > 10 && s.writes > 10, "{s:?}");
    assert_eq!(s.refused_accesses, 0, "{s:?}");
    assert_eq!(s.refused_commands, 0, "{s:?}");
    assert!(s.host_syncs >= 1 && s.forwarded >= 1, "{s:?}");
    assert!(t.host.violations.lock().unwrap().is_empty());
}

#[test]
fn stage1_dma_through_a_linear_stream_table() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    round_trip(&t, &host, StrtabFormat::Linear);
    let s = t.stats();
    assert!(s.host_events >= 1 && s.ste_updates >= 1, "{s:?}");
    assert!(t.host.violations.lock().unwrap().is_empty());
}

#[test]
fn stage1_dma_through_a_two_level_stream_table_non_coherent() {
    let t = setup(Coherency::NonCoherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::TwoLevel)).unwrap();
    round_trip(&t, &host, StrtabFormat::TwoLevel);
    assert!(t.host.violations.lock().unwrap().is_empty());
}

#[test]
fn substreams_get_their_own_host_contexts() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    let opts = AttachOptions {
        ssid_bits: 4,
        s1dss: S1Dss::Terminate,
        ats: false,
    };
    let a = HostDomain::new_stage1(&host, Granule::K4, 48).unwrap();
    let b = HostDomain::new_stage1(&host, Granule::K4, 48).unwrap();
    host.attach(SID, Some(1), &a, opts).unwrap();
    host.attach(SID, Some(2), &b, opts).unwrap();
    let pa = t.host_ram.alloc(4096).unwrap();
    let pb = t.host_ram.alloc(4096).unwrap();
    a.map(IOVA, pa, 4096, RW).unwrap();
    b.map(IOVA, pb, 4096, RW).unwrap();
    let w = |ssid, data: &[u8]| {
        t.models[0].dma_write(
            &smmuv3_model::DmaRequest::write(SID, IOVA, data.len() as u64).with_ssid(ssid),
            data,
        )
    };
    w(1, b"one").unwrap();
    w(2, b"two").unwrap();
    assert_eq!(t.cpu_read(pa, 3), b"one");
    assert_eq!(t.cpu_read(pb, 3), b"two");
    // No-SSID traffic is terminated (S1DSS as the host asked).
    assert!(t.dma_write(SID, IOVA, b"x").is_err());
    host.detach(SID, Some(2)).unwrap();
    assert!(w(2, b"TWO").is_err());
    assert_eq!(t.cpu_read(pb, 3), b"two");
    w(1, b"ONE").unwrap();
    assert_eq!(t.cpu_read(pa, 3), b"ONE");
}

#[test]
fn host_bypass_is_stage2_on_the_shadow() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    host.set_bypass(SID).unwrap();
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Stage2);
    let buf = t.host_ram.alloc(4096).unwrap();
    t.dma_write(SID, buf, b"host").unwrap();
    assert_eq!(t.cpu_read(buf, 4), b"host");
    // The hypervisor's memory (below host RAM here) is not reachable.
    let hyp_pa = t.ram.base - 4096;
    let before = t.cpu_read(hyp_pa, 4);
    let f = t.dma_write(SID, hyp_pa, b"evil").unwrap_err();
    assert!(is_s2_translation_fault(&f), "{f:?}");
    assert_eq!(t.cpu_read(hyp_pa, 4), before);
    // The stage-2 fault is the hypervisor's, not the host's.
    assert!(host.drain_events().unwrap().events.is_empty());
    let emu = t.emu.lock().unwrap();
    assert!(
        emu.hyp_events(0)
            .iter()
            .any(|e| e.fault.is_some_and(|f| f.stage2))
    );
}

/// What a hypervisor reports at the end of a run: every stream that is not
/// abort with its configuration, and the host's commands by opcode.
#[test]
fn shadowed_streams_and_host_opcodes_are_listed() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    assert_eq!(t.emu.lock().unwrap().streams(0).count(), 0);
    let _dom = attach_stage1(&host);
    host.set_bypass(SID + 1).unwrap();
    let emu = t.emu.lock().unwrap();
    let streams: Vec<_> = emu.streams(0).collect();
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert_eq!(streams[0].0, SID);
    assert!(matches!(streams[0].1, StreamConfig::Nested { .. }));
    assert_eq!(streams[1], (SID + 1, StreamConfig::Stage2));
    assert_eq!(emu.streams(1).count(), 0, "no SMMU 1");
    let ops: Vec<(u8, u32)> = emu.host_opcodes(0).collect();
    let count = |op: u8| ops.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n);
    // Every consumed command has an opcode; CFGI_STE (0x03) for both
    // streams, CMD_SYNC (0x46) after each batch.
    let total: u32 = ops.iter().map(|(_, n)| n).sum();
    assert_eq!(u64::from(total), emu.stats(0).unwrap().commands, "{ops:x?}");
    assert!(count(0x03) >= 2, "{ops:x?}");
    assert_eq!(u64::from(count(0x46)), emu.stats(0).unwrap().host_syncs);
    assert!(ops.windows(2).all(|w| w[0].0 < w[1].0), "{ops:x?}");
    drop(emu);
    host.detach(SID, None).unwrap();
    let emu = t.emu.lock().unwrap();
    assert_eq!(
        emu.streams(0).collect::<Vec<_>>(),
        [(SID + 1, StreamConfig::Stage2)]
    );
}

#[test]
fn donated_pages_fault_at_stage2_for_host_devices_and_nothing_else() {
    let t = setup(Coherency::Coherent);
    let (host, dom) = attached(&t, StrtabFormat::TwoLevel);
    let keep = t.host_ram.alloc(4096).unwrap();
    let give = t.host_ram.alloc(4096).unwrap();
    dom.map(IOVA, keep, 4096, RW).unwrap();
    dom.map(IOVA + 4096, give, 4096, RW).unwrap();
    t.dma_write(SID, IOVA + 4096, b"before").unwrap();

    t.donate(give, 4096).unwrap();
    // The host mapping still exists; stage 2 stops the device.
    let f = t.dma_write(SID, IOVA + 4096, b"after!").unwrap_err();
    assert!(is_s2_translation_fault(&f), "{f:?}");
    assert_eq!(t.cpu_read(give, 6), b"before");
    assert!(t.dma_read(SID, IOVA + 4096, 6).is_err());
    // The neighbour still works.
    t.dma_write(SID, IOVA, b"fine").unwrap();
    assert_eq!(t.cpu_read(keep, 4), b"fine");
    // The host learns nothing of the stage-2 fault (no hypervisor address).
    assert!(host.drain_events().unwrap().events.is_empty());
    let emu = t.emu.lock().unwrap();
    let s2: Vec<_> = emu
        .hyp_events(0)
        .iter()
        .filter(|e| e.fault.is_some_and(|f| f.stage2))
        .collect();
    assert!(!s2.is_empty());
    assert_eq!(
        emu.stats(0).unwrap().hyp_events as usize,
        emu.hyp_events(0).len()
    );
    drop(emu);
    assert!(t.host.violations.lock().unwrap().is_empty());
}

#[test]
fn a_host_stream_table_in_donated_memory_is_not_read() {
    let t = setup(Coherency::Coherent);
    let (host, _dom) = attached(&t, StrtabFormat::Linear);
    // Find the host's stream table from its registers and give its page
    // away: the next CFGI_STE must not read it.
    let ste_page = (t.host_strtab() + u64::from(SID) * 64) & !0xfff;
    t.donate(ste_page, 4096).unwrap();
    let before = t.stats().refused_pointers;
    host.set_bypass(SID).unwrap();
    let s = t.stats();
    assert!(s.refused_pointers > before, "{s:?}");
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Abort);
    assert!(t.host.violations.lock().unwrap().is_empty());
}

#[test]
fn refused_accesses_are_counted_and_change_nothing() {
    let t = setup(Coherency::Coherent);
    let mut e = t.emu.lock().unwrap();
    let idr0 = e.read(0, 0, 4).unwrap();
    assert!(e.read(0, 2, 4).is_err(), "misaligned");
    assert!(e.read(0, 0, 2).is_err(), "16-bit");
    assert!(e.read(0, 0, 8).is_err(), "64-bit read of a 32-bit register");
    assert!(e.read(0, 0x18, 8).is_err(), "64-bit read of IIDR and AIDR");
    assert!(e.write(0, 0x2_0000, 4, 1).is_err(), "outside the frame");
    assert!(e.read(5, 0, 4).is_err(), "no such SMMU");
    assert_eq!(e.stats(0).unwrap().refused_accesses, 5);
    assert_eq!(e.read(0, 0, 4).unwrap(), idr0);
    // GBPA reads as abort, and writes are ignored.
    e.write(0, smmuv3::regs::GBPA as u64, 4, 0).unwrap();
    assert_eq!(
        e.read(0, smmuv3::regs::GBPA as u64, 4).unwrap(),
        smmuv3::regs::gbpa::ABORT.mask()
    );
    // The 64-bit base registers take 32-bit halves.
    let cb = smmuv3::regs::CMDQ_BASE as u64;
    e.write(0, cb, 4, 0x8000_0007).unwrap();
    e.write(0, cb + 4, 4, 0x1).unwrap();
    assert_eq!(e.read(0, cb, 8).unwrap(), 0x1_8000_0007);
    assert_eq!(e.read(0, cb + 4, 4).unwrap(), 1);
}

#[test]
fn an_illegal_host_command_stops_the_queue_like_hardware() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    // TLBI_S2_IPA does not exist on the stage-1-only SMMU the host sees;
    // the driver reports the rejection and skips the command.
    let at = smmuv3::command::TlbiAddr::default();
    let r = host.issue(&[smmuv3::command::Command::TlbiS2Ipa { vmid: 0, at }], true);
    assert!(
        matches!(r, Err(smmuv3::Error::CommandRejected { .. })),
        "{r:?}"
    );
    let s = t.stats();
    assert_eq!(s.refused_commands, 1, "{s:?}");
    // The queue goes on after the host acknowledged the error.
    host.issue(
        &[smmuv3::command::Command::TlbiNhAsid { vmid: 0, asid: 1 }],
        true,
    )
    .unwrap();
    let s2 = t.stats();
    assert!(s2.forwarded > s.forwarded, "{s2:?}");
}

#[test]
fn a_host_event_queue_can_be_disabled_and_enabled_again() {
    let t = setup(Coherency::Coherent);
    let (host, _dom) = attached(&t, StrtabFormat::Linear);
    let cr0 = smmuv3::regs::CR0 as u64;
    let evtqen = smmuv3::regs::cr0::EVENTQEN.mask();
    let on = t.emu.lock().unwrap().read(0, cr0, 4).unwrap();
    assert_ne!(on & evtqen, 0);
    t.emu
        .lock()
        .unwrap()
        .write(0, cr0, 4, on & !evtqen)
        .unwrap();
    assert!(t.dma_write(SID, IOVA, b"x").is_err());
    t.emu.lock().unwrap().poll_events();
    assert_eq!(t.stats().dropped_events, 1);
    t.emu.lock().unwrap().write(0, cr0, 4, on).unwrap();
    assert!(t.dma_write(SID, IOVA + 0x1000, b"y").is_err());
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].fault.unwrap().addr, IOVA + 0x1000);
}

/// A host STE the virtual SMMU refuses (stage 2 is hidden: ILLEGAL) makes
/// its stream abort, and is reported as hardware reports an ILLEGAL STE:
/// C_BAD_STE for each transaction, nothing before one arrives (IHI 0070
/// 7.2: configuration errors are recorded only on receipt of a
/// transaction, not on a CFGI).
#[test]
fn stage2_and_nested_host_stes_are_refused_and_reported_on_traffic() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    host.set_bypass(SID).unwrap();
    // The host writes a stage-2 STE by hand (V=1, Config=0b110) and
    // invalidates it.
    let ste = t.host_strtab() + u64::from(SID) * 64;
    let w0: u64 = 1 | (0b110 << 1);
    host_store(&t, ste, &w0.to_le_bytes());
    host_cfgi_ste(&host, SID);
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Abort);
    let events = host.drain_events().unwrap().events;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(t.stats().bad_stes, 1);
    // The device is cut off, and its traffic is reported as on hardware
    // that found the STE illegal: C_BAD_STE, for the transaction.
    let f = t.dma_write(SID, t.ram.base, b"x").unwrap_err();
    assert!(common::is_invalid_ste_abort(&f), "{f:?}");
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ty, events[0].sid), (EventType::BadSte, SID));
    assert_eq!(t.stats().traffic_events, 1);
}

#[test]
fn a_stream_the_hypervisor_attached_before_emulation_aborts_until_the_host_says_otherwise() {
    // The hypervisor put the stream on the shadow (as at boot, before the
    // host has an SMMU driver); the emulator then promises abort until the
    // host's own stream table says otherwise.
    let mut f = common::Fixture::new(Setup::default());
    f.hyp.attach_host_stream(0, SID).unwrap();
    let t = Trapped::over(f);
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Abort);
    let buf = t.host_ram.alloc(4096).unwrap();
    assert!(
        t.dma_write(SID, buf, b"early").is_err(),
        "no host SMMU yet: GBPA abort"
    );
    // The host's driver comes up and leaves the stream alone (its STE
    // aborts): terminated, and silent for the host.
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Abort);
    assert!(t.dma_write(SID, buf, b"stray").is_err());
    assert_eq!(t.cpu_read(buf, 5), [0; 5]);
    assert!(host.drain_events().unwrap().events.is_empty());
    // What the host asks is what the device gets.
    host.set_bypass(SID).unwrap();
    t.dma_write(SID, buf, b"asked").unwrap();
    assert_eq!(t.cpu_read(buf, 5), b"asked");
    host.set_abort(SID).unwrap();
    assert!(t.dma_write(SID, buf, b"after").is_err());
    assert_eq!(t.cpu_read(buf, 5), b"asked");
}

#[test]
fn host_streams_survive_a_power_cycle_of_the_real_smmu() {
    let t = setup(Coherency::Coherent);
    let (host, mut dom) = attached(&t, StrtabFormat::Linear);
    let buf = t.host_ram.alloc(4096).unwrap();
    dom.map(IOVA, buf, 4096, RW).unwrap();
    t.dma_write(SID, IOVA, b"before").unwrap();
    let cfg = t.emu.lock().unwrap().stream(0, SID);
    t.emu.lock().unwrap().hyp_mut().power_off(0).unwrap();
    let fresh = common::smmu_on(&t.mem, &t.models[0]);
    t.emu.lock().unwrap().power_on(0, fresh).unwrap();
    // The host changed nothing: its device reaches its mapping again.
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), cfg);
    t.dma_write(SID, IOVA, b"after!").unwrap();
    assert_eq!(t.cpu_read(buf, 6), b"after!");
    // The fresh SMMU's unconfigured STEs are invalid too (its traffic is
    // recorded; the host aborts 0x11 silently), and a StreamID past the
    // host's table is still C_BAD_STREAMID to the host.
    let f = t.dma_write(SID + 1, buf, b"near").unwrap_err();
    assert!(common::is_invalid_ste_abort(&f), "{f:?}");
    assert!(t.dma_write(0x2345, buf, b"far").is_err());
    let events = host.drain_events().unwrap().events;
    let seen: Vec<_> = events.iter().map(|e| (e.ty, e.sid)).collect();
    assert_eq!(seen, [(EventType::BadStreamId, 0x2345)]);
    // And the host's unmap still reaches the fresh SMMU's TLB.
    dom.unmap(IOVA, 4096).unwrap();
    let f = t.dma_write(SID, IOVA, b"stale!").unwrap_err();
    assert!(!is_s2_translation_fault(&f), "{f:?}");
    assert_eq!(t.cpu_read(buf, 6), b"after!");
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].fault.unwrap().addr, IOVA);
}

#[test]
fn stalls_of_a_stall_forced_smmu_are_terminated_by_the_hypervisor() {
    let t = Trapped::new(Setup {
        stall: Some(smmuv3_model::StallModel::StallForced),
        ..Setup::default()
    });
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    // The host is shown the forced stalls, so that its CDs select them
    // (CD.S = 0 is ILLEGAL on this SMMU, which walks the host's CDs); it
    // still cannot resume anything.
    assert_eq!(
        host.features().stall,
        smmuv3::probe::StallModel::StallForced
    );
    let _dom = attach_stage1(&host);
    let f = t.dma_write(SID, IOVA, b"x").unwrap_err();
    assert!(matches!(f, DmaFault::Stalled { .. }), "{f:?}");
    assert_eq!(t.models[0].stalled().len(), 1);
    t.emu.lock().unwrap().poll_events();
    assert!(
        t.models[0].stalled().is_empty(),
        "the stall was not terminated"
    );
    // The host still learns of its fault, without a stall tag.
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].ty, EventType::Translation);
    assert_eq!(events[0].fault.unwrap().stall_tag, None);
}

/// Returns how many host-memory reads `issue` cost the emulator, and in
/// how many doorbells (one real CMD_SYNC each) it came.
fn host_reads_and_doorbells(t: &Trapped, issue: impl FnOnce()) -> (u64, u64) {
    let reads = || t.host.reads.load(std::sync::atomic::Ordering::Relaxed);
    let (before, syncs) = (reads(), t.stats().real_syncs);
    issue();
    (reads() - before, t.stats().real_syncs - syncs)
}

/// A host cannot make one doorbell cost the hypervisor one pass over its
/// stream table per command: a queue of CFGI_ALLs reads each STE once.
#[test]
fn a_queue_of_cfgi_alls_reads_the_host_table_once() {
    let t = setup(Coherency::Coherent);
    let (host, _dom) = attached(&t, StrtabFormat::Linear);
    let cfg = t
        .emu
        .lock()
        .unwrap()
        .read(0, smmuv3::regs::STRTAB_BASE_CFG as u64, 4)
        .unwrap();
    let entries = 1u64 << smmuv3::regs::strtab_base_cfg::LOG2SIZE.get(cfg);
    let cmds = vec![smmuv3::command::Command::CFGI_ALL; 200];
    // Each doorbell the driver rings reads its commands and the table once
    // (one real CMD_SYNC per doorbell).
    let (spent, doorbells) = host_reads_and_doorbells(&t, || host.issue(&cmds, true).unwrap());
    assert!(doorbells >= 1);
    assert!(
        spent <= 201 + doorbells * entries,
        "{spent} host reads for 200 CFGI_ALLs over {entries} STEs"
    );
    assert!(spent < 200 * entries, "{spent}");
    // And the stream is still what the host configured.
    assert!(matches!(
        t.emu.lock().unwrap().stream(0, SID),
        StreamConfig::Nested { .. }
    ));
}

/// A host that turns its SMMU off gets GBPA's abort (it reads as abort),
/// not bypass: its devices stop reaching the memory they had mapped.
#[test]
fn a_host_smmu_disable_aborts_every_stream() {
    let t = setup(Coherency::Coherent);
    let (_host, dom) = attached(&t, StrtabFormat::Linear);
    let buf = t.host_ram.alloc(4096).unwrap();
    dom.map(IOVA, buf, 4096, RW).unwrap();
    t.dma_write(SID, IOVA, b"on").unwrap();
    let cr0 = smmuv3::regs::CR0 as u64;
    let on = t.emu.lock().unwrap().read(0, cr0, 4).unwrap();
    let smmuen = smmuv3::regs::cr0::SMMUEN.mask();
    t.emu
        .lock()
        .unwrap()
        .write(0, cr0, 4, on & !smmuen)
        .unwrap();
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Abort);
    let f = t.dma_write(SID, IOVA, b"XX").unwrap_err();
    assert!(common::is_invalid_ste_abort(&f), "{f:?}");
    // GBPA's abort records nothing: the host hears nothing, and the real
    // stream is made silent too once its traffic was seen.
    assert_eq!(t.emu.lock().unwrap().poll_events(), 1);
    assert_eq!(
        t.emu.lock().unwrap().stream(0, SID),
        StreamConfig::SilentAbort
    );
    assert_eq!(t.stats().silenced_streams, 1);
    // Nor does the physical address bypass.
    assert!(matches!(
        t.dma_write(SID, buf, b"XX"),
        Err(DmaFault::StreamAbort)
    ));
    assert_eq!(t.emu.lock().unwrap().poll_events(), 0);
    assert_eq!(t.cpu_read(buf, 2), b"on");
    assert_eq!(t.stats().traffic_events, 0);
    // Enabled again, the host's table applies again.
    t.emu.lock().unwrap().write(0, cr0, 4, on).unwrap();
    assert!(matches!(
        t.emu.lock().unwrap().stream(0, SID),
        StreamConfig::Nested { .. }
    ));
    t.dma_write(SID, IOVA, b"ok").unwrap();
    assert_eq!(t.cpu_read(buf, 2), b"ok");
}

/// Writes `data` to host memory as the host CPU does for its SMMU.
fn host_store(t: &Trapped, pa: u64, data: &[u8]) {
    t.mem.cpu_write(pa, data).unwrap();
    t.mem.clean(pa, data.len() as u64).unwrap();
}

/// The host driver invalidates its STE of `sid` (CFGI_STE + CMD_SYNC).
fn host_cfgi_ste(host: &HostSmmu, sid: u32) {
    host.issue(
        &[smmuv3::command::Command::CfgiSte { sid, leaf: true }],
        true,
    )
    .unwrap();
}

/// Traffic from a StreamID the host's stream table does not hold is
/// C_BAD_STREAMID in the host's event queue, each time, as on hardware:
/// not a stage-2 fault, not silence, and it reaches no memory.
#[test]
fn traffic_past_a_linear_host_table_is_c_bad_streamid_for_the_host() {
    let t = setup(Coherency::Coherent);
    let host = t
        .host_smmu(
            0,
            SmmuConfig {
                linear_max_log2: 4,
                ..host_cfg(StrtabFormat::Linear)
            },
        )
        .unwrap();
    let cfg = t
        .emu
        .lock()
        .unwrap()
        .read(0, smmuv3::regs::STRTAB_BASE_CFG as u64, 4)
        .unwrap();
    assert_eq!(smmuv3::regs::strtab_base_cfg::LOG2SIZE.get(cfg), 4);
    let buf = t.host_ram.alloc(4096).unwrap();
    // A stream inside the table puts a level-2 table under 0x10 in the
    // real (2-level) stream table: 0x10 has an invalid real STE (C_BAD_STE
    // on the real SMMU), 0x2345 no real STE at all (C_BAD_STREAMID there).
    host.set_bypass(2).unwrap();
    for (sid, times, real) in [
        (0x10u32, 1, smmuv3_model::EventType::CBadSte),
        (0x2345, 2, smmuv3_model::EventType::CBadStreamId),
    ] {
        for _ in 0..times {
            let f = t.dma_write(sid, buf, b"stray").unwrap_err();
            assert_eq!(f.event_type(), Some(real), "{f:?}");
            let f = t.dma_read(sid, buf, 4).unwrap_err();
            assert_eq!(f.event_type(), Some(real), "{f:?}");
        }
        assert_eq!(t.cpu_read(buf, 5), [0; 5]);
        let events = host.drain_events().unwrap().events;
        assert_eq!(events.len(), 2 * times, "{events:?}");
        for e in &events {
            assert_eq!((e.ty, e.sid, e.ssid), (EventType::BadStreamId, sid, None));
            assert_eq!(e.raw[2..], [0, 0], "nothing of the real record");
        }
        assert_eq!(t.emu.lock().unwrap().stream(0, sid), StreamConfig::Abort);
    }
    let s = t.stats();
    assert_eq!((s.traffic_events, s.hyp_events), (6, 0), "{s:?}");
    // With CR2.RECINVSID clear, the host asked not to hear of them (CR2
    // changes only while SMMUEN = 0).
    let (cr0, cr2) = (smmuv3::regs::CR0 as u64, smmuv3::regs::CR2 as u64);
    let mut emu = t.emu.lock().unwrap();
    let on = emu.read(0, cr2, 4).unwrap();
    assert_ne!(on & smmuv3::regs::cr2::RECINVSID.mask(), 0);
    let enabled = emu.read(0, cr0, 4).unwrap();
    let smmuen = smmuv3::regs::cr0::SMMUEN.mask();
    emu.write(0, cr0, 4, enabled & !smmuen).unwrap();
    emu.write(0, cr2, 4, on & !smmuv3::regs::cr2::RECINVSID.mask())
        .unwrap();
    emu.write(0, cr0, 4, enabled).unwrap();
    drop(emu);
    assert!(t.dma_write(0x10, buf, b"quiet").is_err());
    assert!(host.drain_events().unwrap().events.is_empty());
    assert_eq!(t.cpu_read(buf, 5), [0; 5]);
    // A stream inside the table that the host aborts stays silent too,
    // and stops costing the real event queue after its first transaction.
    assert!(t.dma_write(3, buf, b"abort").is_err());
    assert!(host.drain_events().unwrap().events.is_empty());
    assert_eq!(
        t.emu.lock().unwrap().stream(0, 3),
        StreamConfig::SilentAbort
    );
    assert!(matches!(
        t.dma_write(3, buf, b"abort"),
        Err(DmaFault::StreamAbort)
    ));
    assert_eq!(t.cpu_read(buf, 5), [0; 5]);
    assert!(t.host.violations.lock().unwrap().is_empty());
}

/// In a 2-level host table, a StreamID under an invalid level-1
/// descriptor (Span 0, or a Span past SPLIT + 1) is not in the table:
/// C_BAD_STREAMID.
#[test]
fn traffic_under_an_invalid_host_level1_descriptor_is_c_bad_streamid() {
    let t = setup(Coherency::NonCoherent);
    let (host, dom) = attached(&t, StrtabFormat::TwoLevel);
    let buf = t.host_ram.alloc(4096).unwrap();
    dom.map(IOVA, buf, 4096, RW).unwrap();
    // The host driver's split is 8: 0x345 is under descriptor 3, which it
    // never filled (Span 0).
    let far = 0x345;
    let l1 = t.host_strtab() + 3 * 8;
    assert_eq!(t.read_u64(l1), 0);
    let f = t.dma_write(far, IOVA, b"far").unwrap_err();
    assert!(!is_s2_translation_fault(&f), "{f:?}");
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ty, events[0].sid), (EventType::BadStreamId, far));
    // A Span too large for the split is no table either.
    host_store(&t, l1, &(ste_span(10) | buf).to_le_bytes());
    host.issue(&[smmuv3::command::Command::CFGI_ALL], true)
        .unwrap();
    assert_eq!(t.emu.lock().unwrap().stream(0, far), StreamConfig::Abort);
    assert!(t.dma_write(far, buf, b"far").is_err());
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ty, events[0].sid), (EventType::BadStreamId, far));
    assert_eq!(t.cpu_read(buf, 3), [0; 3]);
    // The stream the host configured is unaffected.
    t.dma_write(SID, IOVA, b"near").unwrap();
    assert_eq!(t.cpu_read(buf, 4), b"near");
    assert_eq!(t.stats().traffic_events, 2);
}

fn ste_span(span: u64) -> u64 {
    smmuv3::layout::ste::L1_SPAN.make(span)
}

/// A host STE with V = 0 is C_BAD_STE for its traffic (the architecture
/// records it on every transaction; nothing before one arrives).
#[test]
fn traffic_on_an_invalid_host_ste_is_c_bad_ste() {
    let t = setup(Coherency::Coherent);
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    host.set_bypass(SID).unwrap();
    let buf = t.host_ram.alloc(4096).unwrap();
    t.dma_write(SID, buf, b"open").unwrap();
    let ste = t.host_strtab() + u64::from(SID) * 64;
    host_store(&t, ste, &[0u8; 64]);
    host_cfgi_ste(&host, SID);
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Abort);
    assert!(host.drain_events().unwrap().events.is_empty());
    assert!(t.dma_write(SID, buf, b"shut").is_err());
    assert_eq!(t.cpu_read(buf, 4), b"open");
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ty, events[0].sid), (EventType::BadSte, SID));
    assert_eq!(t.stats().bad_stes, 0, "an invalid STE is not a refused one");
}

/// Returns host CD `ssid` of a 2-level CD table with 4 KiB leaves at `l1`.
fn cd_4k(t: &Trapped, l1: u64, ssid: u64) -> Vec<u8> {
    let d = t.read_u64(l1 + (ssid >> 6) * 8);
    assert_eq!(smmuv3::layout::cd::L1_V.get(d), 1);
    let l2 = d & smmuv3::layout::cd::L1_L2PTR.mask();
    t.cpu_read(l2 + (ssid & 63) * 64, 64)
}

fn l1_cd(l2: u64) -> [u8; 8] {
    (smmuv3::layout::cd::L1_V.make(1) | l2).to_le_bytes()
}

/// A host CD table with 64 KiB level-2 tables (STE.S1Fmt = 2) is nested
/// as it is: the real SMMU walks it through the shadow, so substreams in
/// different leaves translate, and a leaf pointer into memory the host
/// does not own faults at stage 2 without being read.
#[test]
fn a_host_cd_table_with_64k_leaves_serves_its_substreams() {
    use smmuv3::command::Command;
    use smmuv3::config::{CdFormat, CdTableRef};
    use smmuv3::layout::ste;
    let t = Trapped::new(Setup {
        ssid_bits: 12,
        ..Setup::default()
    });
    let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
    let opts = AttachOptions {
        ssid_bits: 12,
        s1dss: S1Dss::Terminate,
        ats: false,
    };
    // Our driver builds 4 KiB leaves; the host then lays the same CDs out
    // in 64 KiB leaves by hand, as another driver would.
    let (lo, hi) = (1u64, 1100u64);
    let a = HostDomain::new_stage1(&host, Granule::K4, 48).unwrap();
    let b = HostDomain::new_stage1(&host, Granule::K4, 48).unwrap();
    host.attach(SID, Some(lo as u32), &a, opts).unwrap();
    host.attach(SID, Some(hi as u32), &b, opts).unwrap();
    let (pa, pb) = (
        t.host_ram.alloc(4096).unwrap(),
        t.host_ram.alloc(4096).unwrap(),
    );
    a.map(IOVA, pa, 4096, RW).unwrap();
    b.map(IOVA, pb, 4096, RW).unwrap();
    let ste_pa = t.host_strtab() + u64::from(SID) * 64;
    let w0 = t.read_u64(ste_pa);
    assert_eq!(ste::S1FMT.get(w0), ste::S1FMT_4K_L2);
    let old_l1 = w0 & ste::S1CTXPTR.mask();
    let (cd_lo, cd_hi) = (cd_4k(&t, old_l1, lo), cd_4k(&t, old_l1, hi));

    let l1 = t.host_ram.alloc(4 * 8).unwrap();
    let leaf = [
        t.host_ram.alloc(64 << 10).unwrap(),
        t.host_ram.alloc(64 << 10).unwrap(),
    ];
    assert_eq!(leaf[0] % (64 << 10), 0);
    host_store(&t, leaf[0] + lo * 64, &cd_lo);
    host_store(&t, leaf[1] + (hi - 1024) * 64, &cd_hi);
    host_store(&t, l1, &l1_cd(leaf[0]));
    host_store(&t, l1 + 8, &l1_cd(leaf[1]));
    // The old table is gone: only the new one can translate.
    host_store(&t, old_l1, &[0u8; 64 * 8]);
    let new_w0 = (w0 & !(ste::S1FMT.mask() | ste::S1CTXPTR.mask()))
        | ste::S1FMT.make(ste::S1FMT_64K_L2)
        | l1;
    host_store(&t, ste_pa, &new_w0.to_le_bytes());
    let cfgi = [
        Command::CfgiSte {
            sid: SID,
            leaf: true,
        },
        Command::CfgiCdAll { sid: SID },
    ];
    host.issue(&cfgi, true).unwrap();
    let cfg = t.emu.lock().unwrap().stream(0, SID);
    let want = CdTableRef {
        ptr: l1,
        format: CdFormat::TwoLevel64K,
        cdmax_log2: 12,
    };
    assert!(
        matches!(cfg, StreamConfig::Nested { cd, .. } if cd == want),
        "{cfg:?}"
    );
    let w = |ssid: u64, data: &[u8]| {
        t.models[0].dma_write(
            &smmuv3_model::DmaRequest::write(SID, IOVA, data.len() as u64).with_ssid(ssid as u32),
            data,
        )
    };
    w(lo, b"low").unwrap();
    w(hi, b"high").unwrap();
    assert_eq!(t.cpu_read(pa, 3), b"low");
    assert_eq!(t.cpu_read(pb, 4), b"high");
    // Next to a CD: an invalid one (C_BAD_CD); under descriptor 2, which
    // is invalid (C_BAD_SUBSTREAMID); both the host's to hear.
    assert!(w(hi + 1, b"x").is_err());
    assert!(w(2100, b"x").is_err());
    let events = host.drain_events().unwrap().events;
    let seen: Vec<_> = events.iter().map(|e| (e.ty, e.ssid)).collect();
    assert_eq!(
        seen,
        [
            (EventType::BadCd, Some(hi as u32 + 1)),
            (EventType::BadSubstreamId, Some(2100))
        ]
    );

    // The host points a leaf at a page it gave away: the SMMU's fetch
    // faults at stage 2 (the hypervisor's event), nothing is read.
    let gone = t.host_ram.alloc(64 << 10).unwrap();
    host_store(&t, gone + (hi - 1024) * 64, &cd_hi);
    t.donate(gone, 64 << 10).unwrap();
    host_store(&t, l1 + 8, &l1_cd(gone));
    host.issue(&cfgi, true).unwrap();
    let f = w(hi, b"HIGH").unwrap_err();
    assert!(f.event().is_some_and(|e| e.s2), "{f:?}");
    assert_eq!(t.cpu_read(pb, 4), b"high");
    w(lo, b"LOW").unwrap();
    assert_eq!(t.cpu_read(pa, 3), b"LOW");
    assert!(host.drain_events().unwrap().events.is_empty());
    let hyp = t.emu.lock().unwrap().hyp_events(0).to_vec();
    assert!(
        hyp.iter()
            .any(|e| e.ty == EventType::Translation && e.ssid == Some(hi as u32)),
        "{hyp:?}"
    );

    // And a level-1 table in a page it gave away is refused outright.
    let refused = t.stats().refused_pointers;
    let moved = (new_w0 & !ste::S1CTXPTR.mask()) | gone;
    host_store(&t, ste_pa, &moved.to_le_bytes());
    host.issue(&cfgi, true).unwrap();
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Abort);
    assert_eq!(t.stats().refused_pointers, refused + 1);
    assert!(w(lo, b"gone").is_err());
    assert_eq!(t.cpu_read(pa, 3), b"LOW");
    let events = host.drain_events().unwrap().events;
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(
            (e.ty, e.fetch_addr),
            (EventType::SteFetch, Some(gone)),
            "{e:?}"
        );
    }
    assert!(t.host.violations.lock().unwrap().is_empty());
}

/// The event queue interrupt is raised when the host's queue goes from
/// empty to non-empty (IHI 0070 3.18.2), not for every record: a record
/// written behind one the host has not consumed does not interrupt.
#[test]
fn the_host_event_interrupt_fires_when_its_queue_becomes_non_empty() {
    let t = setup(Coherency::Coherent);
    let (host, _dom) = attached(&t, StrtabFormat::Linear);
    let irq_ctrl = smmuv3::regs::IRQ_CTRL as u64;
    let en = smmuv3::regs::irq_ctrl::EVENTQ_IRQEN.mask();
    let fault = |iova: u64| {
        assert!(t.dma_write(SID, iova, b"x").is_err());
        let mut e = t.emu.lock().unwrap();
        e.poll_events();
        e.take_irqs(0).eventq
    };
    {
        let mut e = t.emu.lock().unwrap();
        e.write(0, irq_ctrl, 4, en).unwrap();
        assert_eq!(e.read(0, smmuv3::regs::IRQ_CTRLACK as u64, 4).unwrap(), en);
        e.take_irqs(0);
    }
    assert!(fault(IOVA), "empty -> non-empty");
    assert!(!fault(IOVA + 0x1000), "the queue was not empty");
    assert_eq!(host.drain_events().unwrap().events.len(), 2);
    assert!(fault(IOVA + 0x2000), "consumed, so empty again");
    assert_eq!(t.stats().host_events, 3);
}

/// The indexes the SMMU writes (CMDQ_CONS.RD, EVENTQ_PROD.WR) have no
/// bits above the wrap bit of the queue's size: they read as zero
/// (IHI 0070 6.3.28), also when the queue is made smaller.
#[test]
fn index_bits_above_the_wrap_bit_read_as_zero() {
    use smmuv3::regs as r;
    let t = setup(Coherency::Coherent);
    let mut e = t.emu.lock().unwrap();
    let base = t.ram.base;
    // 16-entry queues: the index is bits [3:0], the wrap bit bit 4.
    e.write(0, r::CMDQ_BASE as u64, 8, base | 4).unwrap();
    e.write(0, r::EVENTQ_BASE as u64, 8, (base + 0x1000) | 4)
        .unwrap();
    e.write(0, r::CMDQ_CONS as u64, 4, 0xf_ffe3).unwrap();
    assert_eq!(e.read(0, r::CMDQ_CONS as u64, 4).unwrap(), 0x03);
    e.write(0, r::EVENTQ_PROD as u64, 4, 0x8fff_fff5).unwrap();
    assert_eq!(e.read(0, r::EVENTQ_PROD as u64, 4).unwrap(), 0x8000_0015);
    assert_eq!(e.read(0, r::EVENTQ_PROD_P0 as u64, 4).unwrap(), 0x8000_0015);
    // A queue made smaller shows the truncated index.
    e.write(0, r::EVENTQ_PROD as u64, 4, 0x1c).unwrap();
    e.write(0, r::EVENTQ_BASE as u64, 8, (base + 0x1000) | 2)
        .unwrap();
    assert_eq!(e.read(0, r::EVENTQ_PROD as u64, 4).unwrap(), 0x4);
    // LOG2SIZE above IDR1's queue size is used as that size.
    let idr1 = e.read(0, r::IDR1 as u64, 4).unwrap();
    let cmdqs = r::idr1::CMDQS.get(idr1);
    assert!(cmdqs < 19, "bits above IDR1's wrap bit exist to clear");
    e.write(0, r::CMDQ_BASE as u64, 8, base | 31).unwrap();
    e.write(0, r::CMDQ_CONS as u64, 4, 0xf_ffff).unwrap();
    assert_eq!(e.read(0, r::CMDQ_CONS as u64, 4).unwrap(), (2 << cmdqs) - 1);
}

/// A bypassing host STE (stage 2 on the shadow once shadowed).
fn ste_bypass() -> Vec<u8> {
    use smmuv3::layout::ste;
    let mut b = (ste::V.make(1) | ste::CONFIG.make(ste::CONFIG_BYPASS))
        .to_le_bytes()
        .to_vec();
    b.resize(64, 0);
    b
}

/// Programs the host's stream table registers raw (`base`, `cfg`) and
/// enables its SMMU, which shadows every stream of the table.
fn enable_with_strtab(t: &Trapped, base: u64, cfg: u64) {
    use smmuv3::regs as r;
    let mut e = t.emu.lock().unwrap();
    e.write(0, r::STRTAB_BASE as u64, 8, base).unwrap();
    e.write(0, r::STRTAB_BASE_CFG as u64, 4, cfg).unwrap();
    e.write(0, r::CR0 as u64, 4, r::cr0::SMMUEN.mask()).unwrap();
}

/// Reserved STRTAB_BASE_CFG values behave as the architecture says
/// (IHI 0070 6.3.25): a SPLIT other than 6, 8 or 10 as 6, an FMT other
/// than linear or 2-level as linear. They read back as written.
#[test]
fn reserved_strtab_split_and_fmt_values_behave_as_the_architecture_says() {
    use smmuv3::regs::{STRTAB_BASE_CFG, strtab_base_cfg as cfg};
    let t = setup(Coherency::Coherent);
    let idr0 = t.emu.lock().unwrap().read(0, 0, 4).unwrap();
    assert_ne!(smmuv3::regs::idr0::ST_LEVEL.get(idr0), 0, "2-level tables");
    // SPLIT = 9: StreamID 0x45 is STE 5 of the level-2 table under
    // level-1 descriptor 1 (as SPLIT 6; under SPLIT 8 it is descriptor 0).
    let l1 = t.host_ram.alloc(8 << 10).unwrap();
    let l2 = t.host_ram.alloc(64 * 64).unwrap();
    host_store(&t, l1 + 8, &(ste_span(7) | l2).to_le_bytes());
    host_store(&t, l2 + 5 * 64, &ste_bypass());
    let split9 = cfg::FMT.make(cfg::FMT_2LVL) | cfg::SPLIT.make(9) | cfg::LOG2SIZE.make(16);
    enable_with_strtab(&t, l1, split9);
    {
        let mut e = t.emu.lock().unwrap();
        assert_eq!(e.read(0, STRTAB_BASE_CFG as u64, 4).unwrap(), split9);
        assert_eq!(e.stream(0, 0x45), StreamConfig::Stage2);
        assert_eq!(e.stream(0, 0x05), StreamConfig::Abort);
        assert_eq!(e.stats(0).unwrap().bad_stes, 0);
    }
    let t = setup(Coherency::Coherent);
    // FMT = 0b10: a linear table of 16 STEs, STE 3 bypasses.
    let table = t.host_ram.alloc(16 * 64).unwrap();
    host_store(&t, table + 3 * 64, &ste_bypass());
    let fmt2 = cfg::FMT.make(0b10) | cfg::LOG2SIZE.make(4);
    enable_with_strtab(&t, table, fmt2);
    let e = t.emu.lock().unwrap();
    assert_eq!(e.stream(0, 3), StreamConfig::Stage2);
    assert_eq!(e.stats(0).unwrap().bad_stes, 0);
    drop(e);
    let buf = t.host_ram.alloc(4096).unwrap();
    t.dma_write(3, buf, b"linear").unwrap();
    assert_eq!(t.cpu_read(buf, 6), b"linear");
}

/// Without 2-level stream tables (IDR0.ST_LEVEL = 0, as the real SMMU
/// says), STRTAB_BASE_CFG.FMT and SPLIT are RES0 (IHI 0070 6.3.25): they
/// read as zero, and a table the host calls 2-level is linear.
#[test]
fn strtab_fmt_and_split_are_res0_without_two_level_tables() {
    use smmuv3::regs::{STRTAB_BASE_CFG, strtab_base_cfg as cfg};
    let t = Trapped::new(Setup {
        two_level_strtab: false,
        ..Setup::default()
    });
    let idr0 = t.emu.lock().unwrap().read(0, 0, 4).unwrap();
    assert_eq!(smmuv3::regs::idr0::ST_LEVEL.get(idr0), 0);
    let table = t.host_ram.alloc(16 * 64).unwrap();
    host_store(&t, table + 3 * 64, &ste_bypass());
    let two_level = cfg::FMT.make(cfg::FMT_2LVL) | cfg::SPLIT.make(8) | cfg::LOG2SIZE.make(4);
    enable_with_strtab(&t, table, two_level);
    let mut e = t.emu.lock().unwrap();
    assert_eq!(
        e.read(0, STRTAB_BASE_CFG as u64, 4).unwrap(),
        cfg::LOG2SIZE.make(4)
    );
    assert_eq!(e.stream(0, 3), StreamConfig::Stage2);
}

/// The SMMU aligns the stream table base to the table: a linear one to
/// its size, a 2-level one to the larger of 64 bytes and its level-1
/// table, from the literal LOG2SIZE (IHI 0070 6.3.24). The register reads
/// back as written.
#[test]
fn the_host_stream_table_base_is_aligned_to_its_table() {
    use smmuv3::regs::{STRTAB_BASE, strtab_base_cfg as cfg};
    let ste_abort = || {
        use smmuv3::layout::ste;
        let mut b = (ste::V.make(1) | ste::CONFIG.make(ste::CONFIG_ABORT))
            .to_le_bytes()
            .to_vec();
        b.resize(64, 0);
        b
    };
    // Linear, 16 STEs (1 KiB), programmed 0x100 bytes into a 2 KiB block.
    let t = setup(Coherency::Coherent);
    let block = t.host_ram.alloc(2048).unwrap();
    host_store(&t, block + 3 * 64, &ste_bypass());
    host_store(&t, block + 0x100 + 3 * 64, &ste_abort());
    enable_with_strtab(&t, block + 0x100, cfg::LOG2SIZE.make(4));
    {
        let mut e = t.emu.lock().unwrap();
        assert_eq!(e.read(0, STRTAB_BASE as u64, 8).unwrap(), block + 0x100);
        assert_eq!(e.stream(0, 3), StreamConfig::Stage2);
    }
    let buf = t.host_ram.alloc(4096).unwrap();
    t.dma_write(3, buf, b"aligned").unwrap();
    assert_eq!(t.cpu_read(buf, 7), b"aligned");
    // The largest LOG2SIZE (63) aligns the base to 0, which the host does
    // not own: every STE of the table (SIDSIZE caps it) is unreadable.
    {
        let mut e = t.emu.lock().unwrap();
        e.write(0, smmuv3::regs::CR0 as u64, 4, 0).unwrap();
        let before = e.stats(0).unwrap().refused_pointers;
        drop(e);
        enable_with_strtab(&t, block + 0x100, cfg::LOG2SIZE.make(63));
        let mut e = t.emu.lock().unwrap();
        assert_eq!(e.stream(0, 3), StreamConfig::Abort);
        let idr1 = e.read(0, smmuv3::regs::IDR1 as u64, 4).unwrap();
        let sids = 1 << smmuv3::regs::idr1::SIDSIZE.get(idr1);
        assert_eq!(e.stats(0).unwrap().refused_pointers - before, sids);
    }
    // 2-level, SPLIT 8, LOG2SIZE 16: 256 level-1 descriptors (2 KiB).
    let t = setup(Coherency::Coherent);
    let l1 = t.host_ram.alloc(4096).unwrap();
    let l2 = t.host_ram.alloc(4 * 64).unwrap();
    host_store(&t, l1 + 8, &(ste_span(3) | l2).to_le_bytes());
    host_store(&t, l2 + 64, &ste_bypass());
    let two_level = cfg::FMT.make(cfg::FMT_2LVL) | cfg::SPLIT.make(8) | cfg::LOG2SIZE.make(16);
    enable_with_strtab(&t, l1 + 0x440, two_level);
    assert_eq!(t.emu.lock().unwrap().stream(0, 0x101), StreamConfig::Stage2);
    assert!(t.host.violations.lock().unwrap().is_empty());
}

/// Fields of features the virtual SMMU does not show read as zero:
/// CR2.PTM without IDR0.BTM, CR2.E2H without IDR0.HYP (6.3.12), and
/// GERRORN's PRI and MSI abort errors without PRI or MSIs (6.3.20).
#[test]
fn fields_of_hidden_features_are_res0() {
    use smmuv3::regs::{self as r, cr2, gerror};
    let t = setup(Coherency::Coherent);
    let mut e = t.emu.lock().unwrap();
    let idr0 = e.read(0, r::IDR0 as u64, 4).unwrap();
    assert_eq!(r::idr0::BTM.get(idr0) | r::idr0::MSI.get(idr0), 0);
    e.write(0, r::CR2 as u64, 4, 0xffff_ffff).unwrap();
    assert_eq!(e.read(0, r::CR2 as u64, 4).unwrap(), cr2::RECINVSID.mask());
    e.write(0, r::GERRORN as u64, 4, 0xffff_ffff).unwrap();
    let implemented =
        gerror::CMDQ_ERR.mask() | gerror::EVTQ_ABT_ERR.mask() | gerror::SFM_ERR.mask();
    assert_eq!(e.read(0, r::GERRORN as u64, 4).unwrap(), implemented);
}

/// CR1's table attributes and CR2 are read-only while SMMUEN is set, CR1's
/// queue attributes while a queue is enabled (6.3.11, 6.3.12).
#[test]
fn cr1_and_cr2_are_read_only_while_their_guards_are_set() {
    use smmuv3::regs::{self as r, cr0, cr2};
    let t = setup(Coherency::Coherent);
    let table = t.host_ram.alloc(16 * 64).unwrap();
    let mut e = t.emu.lock().unwrap();
    let (cr1, cr2_off) = (r::CR1 as u64, r::CR2 as u64);
    e.write(0, cr1, 4, 0xfff).unwrap();
    e.write(0, cr2_off, 4, cr2::RECINVSID.mask()).unwrap();
    assert_eq!(e.read(0, cr1, 4).unwrap(), 0xfff);
    // A queue enabled: QUEUE_* (bits [5:0]) hold, TABLE_* still change.
    e.write(0, r::CR0 as u64, 4, cr0::CMDQEN.mask()).unwrap();
    e.write(0, cr1, 4, 0).unwrap();
    assert_eq!(e.read(0, cr1, 4).unwrap(), 0x3f);
    // SMMUEN set: nothing of CR1 or CR2 changes.
    e.write(0, r::STRTAB_BASE as u64, 8, table).unwrap();
    e.write(0, r::STRTAB_BASE_CFG as u64, 4, 4).unwrap();
    e.write(0, r::CR0 as u64, 4, cr0::SMMUEN.mask() | cr0::CMDQEN.mask())
        .unwrap();
    let ignored = e.stats(0).unwrap().ignored_writes;
    e.write(0, cr1, 4, 0xfff).unwrap();
    e.write(0, cr2_off, 4, 0).unwrap();
    assert_eq!(e.read(0, cr1, 4).unwrap(), 0x3f);
    assert_eq!(e.read(0, cr2_off, 4).unwrap(), cr2::RECINVSID.mask());
    assert_eq!(e.stats(0).unwrap().ignored_writes, ignored + 2);
    // Off again, they take writes.
    e.write(0, r::CR0 as u64, 4, 0).unwrap();
    e.write(0, cr2_off, 4, 0).unwrap();
    e.write(0, cr1, 4, 0xfff).unwrap();
    assert_eq!(e.read(0, cr2_off, 4).unwrap(), 0);
    assert_eq!(e.read(0, cr1, 4).unwrap(), 0xfff);
}

/// A host CMD_SYNC signals its completion as its CS says (IHI 0070
/// 4.7.3): SIG_IRQ the wired CMD_SYNC interrupt (MSIs are hidden, so
/// whatever its MSI address), SIG_SEV an event only on an SMMU with
/// IDR0.SEV, SIG_NONE nothing.
#[test]
fn a_host_cmd_sync_signals_as_its_cs_says() {
    use smmuv3::command::{Command, SyncSignal};
    for sev in [true, false] {
        let t = Trapped::new(Setup {
            sev,
            ..Setup::default()
        });
        let host = t.host_smmu(0, host_cfg(StrtabFormat::Linear)).unwrap();
        let idr0 = t.emu.lock().unwrap().read(0, 0, 4).unwrap();
        assert_eq!(smmuv3::regs::idr0::SEV.get(idr0), u64::from(sev));
        let sync = |signal| {
            let sevs = t.host.sevs.load(std::sync::atomic::Ordering::Relaxed);
            t.emu.lock().unwrap().take_irqs(0);
            host.issue(&[Command::Sync { signal }], false).unwrap();
            let irqs = t.emu.lock().unwrap().take_irqs(0);
            let sent = t.host.sevs.load(std::sync::atomic::Ordering::Relaxed) - sevs;
            (irqs.cmd_sync, sent)
        };
        let target = t.host_ram.alloc(64).unwrap();
        let msi = SyncSignal::Msi {
            addr: target,
            data: 7,
        };
        assert_eq!(sync(msi), (true, 0), "SIG_IRQ");
        assert_eq!(sync(SyncSignal::Msi { addr: 0, data: 0 }), (true, 0));
        assert_eq!(sync(SyncSignal::Sev), (false, u64::from(sev)), "SIG_SEV");
        assert_eq!(sync(SyncSignal::None), (false, 0), "SIG_NONE");
        assert_eq!(t.cpu_read(target, 4), [0; 4], "no MSI written");
    }
}

/// While EVTQ_ABT_ERR is active the host's event queue is not writable:
/// events are discarded, not written, until the host acknowledges the
/// error in GERRORN (IHI 0070 7.2.1), whatever it does to EVENTQEN.
#[test]
fn an_event_queue_abort_stops_event_writes_until_acknowledged() {
    use smmuv3::regs::{self as r, cr0, gerror};
    let t = setup(Coherency::Coherent);
    let (_host, _dom) = attached(&t, StrtabFormat::Linear);
    let reg = |off: usize| t.emu.lock().unwrap().read(0, off as u64, 4).unwrap();
    let set =
        |off: usize, size: u8, v: u64| t.emu.lock().unwrap().write(0, off as u64, size, v).unwrap();
    let fault = |iova: u64| {
        assert!(t.dma_write(SID, iova, b"x").is_err());
        t.emu.lock().unwrap().poll_events();
    };
    let on = reg(r::CR0);
    let base = t
        .emu
        .lock()
        .unwrap()
        .read(0, r::EVENTQ_BASE as u64, 8)
        .unwrap();
    let with_base = |b: u64| {
        set(r::CR0, 4, on & !cr0::EVENTQEN.mask());
        set(r::EVENTQ_BASE, 8, b);
        set(r::CR0, 4, on);
    };
    // The queue in memory the host does not own: the write aborts.
    let hyp_page = t.ram.end();
    with_base(hyp_page | (base & r::q_base::LOG2SIZE.mask()));
    fault(IOVA);
    let abt = gerror::EVTQ_ABT_ERR.mask();
    assert_eq!((reg(r::GERROR) ^ reg(r::GERRORN)) & abt, abt);
    // Back in host memory, but the error is not acknowledged.
    with_base(base);
    let prod = reg(r::EVENTQ_PROD);
    let written = t.stats().host_events;
    fault(IOVA + 0x1000);
    assert_eq!(reg(r::EVENTQ_PROD), prod, "not writable");
    assert_eq!(t.stats().host_events, written);
    assert_eq!(t.stats().dropped_events, 2);
    // Acknowledged: writable again.
    set(r::GERRORN, 4, reg(r::GERROR));
    fault(IOVA + 0x2000);
    assert_ne!(reg(r::EVENTQ_PROD), prod);
    assert_eq!(t.stats().host_events, written + 1);
    assert!(t.host.violations.lock().unwrap().is_empty());
}

/// Locations of the frame where no register is defined are RES0 (IHI
/// 0070 6.2): they read as zero and ignore writes, on both pages, as 32-
/// or 64-bit accesses; an access outside the frame, or 64 bits over an
/// undefined location and a register, is refused.
#[test]
fn undefined_register_locations_read_as_zero_and_ignore_writes() {
    let t = setup(Coherency::Coherent);
    let mut e = t.emu.lock().unwrap();
    // SMMU_IDR6, GATOS, the ECMDQ control page base, the Secure page, the
    // IMPLEMENTATION DEFINED space, and page 1 outside its queue registers.
    for (off, size) in [
        (0x190, 4),
        (0x100, 4),
        (0x108, 8),
        (0x4000, 8),
        (0x8000, 4),
        (0x1000, 4),
        (0x1_0000, 4),
        (0x1_fff8, 8),
    ] {
        let ignored = e.stats(0).unwrap().ignored_writes;
        e.write(0, off, size, u64::MAX).unwrap();
        assert_eq!(e.read(0, off, size).unwrap(), 0, "{off:#x}");
        assert_eq!(e.stats(0).unwrap().ignored_writes, ignored + 1);
    }
    assert_eq!(e.stats(0).unwrap().refused_accesses, 0);
    // 8 bytes over 0x3c (undefined) and STATUSR are misaligned; over
    // 0x58 (undefined) and 0x5c (undefined): RES0; over 0x48 (AGBPA) and
    // 0x4c (undefined): refused as a 64-bit access to a 32-bit register.
    assert_eq!(e.read(0, 0x58, 8).unwrap(), 0);
    assert!(e.read(0, 0x48, 8).is_err());
    assert!(e.read(0, 0x1_fffc, 8).is_err());
    assert!(e.read(0, 0x2_0000, 4).is_err());
    assert_eq!(e.stats(0).unwrap().refused_accesses, 3);
}

/// A host doorbell full of CFGI_STE_RANGEs over the same spans costs one
/// pass over each span, not one per command: the work a hostile host can
/// make the hypervisor do per doorbell is bounded by its stream table,
/// not by its queue size times the table (here, level-1 descriptor reads
/// of a 2-level table).
#[test]
fn repeated_range_invalidations_walk_each_span_once() {
    use smmuv3::command::Command;
    let t = setup(Coherency::Coherent);
    let (host, _dom) = attached(&t, StrtabFormat::TwoLevel);
    let idr1 = t
        .emu
        .lock()
        .unwrap()
        .read(0, smmuv3::regs::IDR1 as u64, 4)
        .unwrap();
    let sid_bits = smmuv3::regs::idr1::SIDSIZE.get(idr1) as u32;
    // Two halves of the StreamID space, alternately, 200 times.
    let range = (sid_bits - 2) as u8;
    let cmds: Vec<_> = (0..200u32)
        .map(|k| Command::CfgiSteRange {
            sid: (k % 2) << (sid_bits - 1),
            range,
        })
        .collect();
    let (spent, doorbells) = host_reads_and_doorbells(&t, || host.issue(&cmds, true).unwrap());
    // The whole table, at most: 2^(sid_bits - split) level-1 descriptors
    // and the STEs of the level-2 tables there are (one, 2^split), each
    // STE read with its descriptor.
    let table = (1u64 << (sid_bits - 8)) + 2 * 256;
    assert!(
        spent <= 201 + doorbells * table,
        "{spent} host reads for 200 range invalidations in {doorbells} doorbells"
    );
    assert!(matches!(
        t.emu.lock().unwrap().stream(0, SID),
        StreamConfig::Nested { .. }
    ));
}

/// The SMMU aligns a level-2 stream table to its size, ignoring the low
/// bits of L1STD.L2Ptr (IHI 0070 5.1): a misaligned pointer is not an
/// invalid descriptor.
#[test]
fn a_level2_pointer_is_aligned_to_its_table() {
    use smmuv3::regs::strtab_base_cfg as cfg;
    let t = setup(Coherency::Coherent);
    let l1 = t.host_ram.alloc(8 << 10).unwrap();
    // Four STEs (Span 3, 256 bytes), the pointer 64 bytes in.
    let l2 = t.host_ram.alloc(512).unwrap();
    host_store(&t, l1 + 8, &(ste_span(3) | (l2 + 0x40)).to_le_bytes());
    host_store(&t, l2 + 64, &ste_bypass());
    let split6 = cfg::FMT.make(cfg::FMT_2LVL) | cfg::SPLIT.make(6) | cfg::LOG2SIZE.make(16);
    enable_with_strtab(&t, l1, split6);
    // StreamID 0x41: descriptor 1, STE 1 of the aligned table.
    assert_eq!(t.emu.lock().unwrap().stream(0, 0x41), StreamConfig::Stage2);
    let buf = t.host_ram.alloc(4096).unwrap();
    t.dma_write(0x41, buf, b"level2").unwrap();
    assert_eq!(t.cpu_read(buf, 6), b"level2");
}
