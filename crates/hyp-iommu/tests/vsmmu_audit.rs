//! Findings of an adversarial audit of the virtual SMMU: host commands
//! whose architected response the emulation did not give, each proven
//! against the real SMMU (the model) it runs on.

mod common;

use common::Setup;
use common::host::Trapped;
use smmuv3::command::{Command, TlbiAddr};
use smmuv3::driver::StrtabFormat;
use smmuv3::{AttachOptions, SmmuConfig};

const SID: u32 = 0x10;
const IOVA: u64 = 0x4000_0000;

fn host_cfg() -> SmmuConfig {
    SmmuConfig {
        strtab: StrtabFormat::Linear,
        timeout_us: 20_000,
        ..SmmuConfig::default()
    }
}

/// Commands the real SMMU rejected (its driver reported and skipped them).
fn real_rejections(t: &Trapped) -> u64 {
    let emu = t.emu.lock().unwrap();
    emu.hyp().smmu(0).unwrap().stats().rejected
}

/// A range TLBI whose NUM, SCALE and TTL are all zero is a reserved
/// encoding (IHI 0070 4.4.1.1: CERROR_ILL), and so, without IDR5.DS (which
/// the host is not shown), is a 16 KiB one with TTL = 0b01 (treated as
/// 0b00). The virtual SMMU must refuse them itself: forwarded, they stop
/// the real command queue with an error of the host's making, every time
/// the host rings, and the host's queue never moves (it is not told what
/// hardware would have told it).
#[test]
fn reserved_range_tlbis_are_cerror_ill_on_the_virtual_smmu() {
    let t = Trapped::new(Setup::default());
    let host = t.host_smmu(0, host_cfg()).unwrap();
    let idr3 = t
        .emu
        .lock()
        .unwrap()
        .read(0, smmuv3::regs::IDR3 as u64, 4)
        .unwrap();
    assert_eq!(
        smmuv3::regs::idr3::RIL.get(idr3),
        1,
        "the host is shown RIL"
    );
    let reserved = [
        TlbiAddr {
            addr: IOVA,
            tg: 1,
            ..TlbiAddr::default()
        },
        TlbiAddr {
            addr: IOVA,
            tg: 3,
            ..TlbiAddr::default()
        },
        TlbiAddr {
            addr: IOVA,
            tg: 2,
            ttl: 1,
            ..TlbiAddr::default()
        },
    ];
    let mut refused = 0;
    for at in reserved {
        for cmd in [
            Command::TlbiNhVa {
                vmid: 0,
                asid: 1,
                at,
            },
            Command::TlbiNhVaa { vmid: 0, at },
        ] {
            let r = host.issue(&[cmd], true);
            assert!(
                matches!(r, Err(smmuv3::Error::CommandRejected { .. })),
                "{cmd:?}: {r:?}"
            );
            refused += 1;
            let s = t.stats();
            assert_eq!(s.refused_commands, refused, "{cmd:?}: {s:?}");
            assert_eq!(s.real_failures, 0, "{cmd:?}: {s:?}");
            assert_eq!(real_rejections(&t), 0, "{cmd:?} reached the real SMMU");
        }
    }
    assert_eq!(t.models[0].stats().illegal_commands, 0);
    // Legal range and level-hinted forms are forwarded.
    let before = t.stats().forwarded;
    for at in [
        TlbiAddr {
            addr: IOVA,
            tg: 1,
            num: 1,
            ..TlbiAddr::default()
        },
        TlbiAddr {
            addr: IOVA,
            tg: 1,
            ttl: 3,
            ..TlbiAddr::default()
        },
        TlbiAddr {
            addr: IOVA,
            tg: 2,
            ttl: 2,
            ..TlbiAddr::default()
        },
    ] {
        host.issue(
            &[Command::TlbiNhVa {
                vmid: 0,
                asid: 1,
                at,
            }],
            true,
        )
        .unwrap();
    }
    assert_eq!(t.stats().forwarded, before + 3);
    assert_eq!(real_rejections(&t), 0);
    assert_eq!(t.models[0].stats().illegal_commands, 0);
}

/// On a stall-forced SMMU the host is shown STALL_MODEL = 0b10, where
/// CMD_RESUME and CMD_STALL_TERM are legal (IHI 0070 4.7.1, 4.7.2: only
/// STALL_MODEL = 0b01 makes them CERROR_ILL). The hypervisor terminates
/// every stall and no stall tag reaches the host, so they match nothing:
/// no effect, and the queue goes on.
#[test]
fn resume_and_stall_term_are_legal_on_a_stall_forced_view() {
    let t = Trapped::new(Setup {
        stall: Some(smmuv3_model::StallModel::StallForced),
        ..Setup::default()
    });
    let host = t.host_smmu(0, host_cfg()).unwrap();
    let dom = common::host::HostDomain::new_stage1(&host, io_pgtable::Granule::K4, 48).unwrap();
    host.attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    for cmd in [
        Command::Resume {
            sid: SID,
            stag: 3,
            abort: true,
        },
        Command::Resume {
            sid: SID,
            stag: 0,
            abort: false,
        },
        Command::StallTerm { sid: SID },
        // Out of range: no effect either (4.1.7).
        Command::StallTerm { sid: 1 << 20 },
    ] {
        let r = host.issue(&[cmd], true);
        assert_eq!(r, Ok(()), "{cmd:?}");
    }
    let s = t.stats();
    assert_eq!((s.refused_commands, s.real_failures), (0, 0), "{s:?}");
    assert_eq!(real_rejections(&t), 0);
    // A stall still ends as before: terminated by the hypervisor, the
    // fault told to the host without a tag.
    assert!(t.dma_write(SID, IOVA, b"x").is_err());
    t.emu.lock().unwrap().poll_events();
    assert!(t.models[0].stalled().is_empty());
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].fault.unwrap().stall_tag, None);
}

/// Where the host is shown no stalls (STALL_MODEL = 0b01) the two commands
/// stay CERROR_ILL.
#[test]
fn resume_and_stall_term_stay_illegal_without_stalls() {
    let t = Trapped::new(Setup::default());
    let host = t.host_smmu(0, host_cfg()).unwrap();
    let mut refused = 0;
    for cmd in [
        Command::Resume {
            sid: SID,
            stag: 3,
            abort: true,
        },
        Command::StallTerm { sid: SID },
    ] {
        let r = host.issue(&[cmd], true);
        assert!(
            matches!(r, Err(smmuv3::Error::CommandRejected { .. })),
            "{cmd:?}: {r:?}"
        );
        refused += 1;
        assert_eq!(t.stats().refused_commands, refused);
    }
}

/// The documented limit "a cached STE past a smaller LOG2SIZE until
/// CFGI" cannot arise: STRTAB_BASE_CFG takes writes only while SMMUEN = 0
/// (ignored, and counted, while enabled), and the SMMUEN edge that follows
/// re-reads every stream shadowed before. A bypass stream past the smaller
/// table aborts at once, without a CFGI, and its traffic is C_BAD_STREAMID.
#[test]
fn a_smaller_stream_table_drops_streams_past_it_at_enable() {
    use smmuv3::event::EventType;
    use smmuv3::regs::{self as r, cr0, strtab_base_cfg};
    let t = Trapped::new(Setup::default());
    let host = t.host_smmu(0, host_cfg()).unwrap();
    let far = 0x80;
    host.set_bypass(far).unwrap();
    let buf = t.host_ram.alloc(4096).unwrap();
    t.dma_write(far, buf, b"open").unwrap();
    assert_eq!(t.cpu_read(buf, 4), b"open");
    let mut emu = t.emu.lock().unwrap();
    let cfg = emu.read(0, r::STRTAB_BASE_CFG as u64, 4).unwrap();
    assert!(strtab_base_cfg::LOG2SIZE.get(cfg) > 7, "{cfg:#x}");
    let small = strtab_base_cfg::LOG2SIZE.set(cfg, 4);
    // Enabled: the write is ignored.
    let ignored = emu.stats(0).unwrap().ignored_writes;
    emu.write(0, r::STRTAB_BASE_CFG as u64, 4, small).unwrap();
    assert_eq!(emu.read(0, r::STRTAB_BASE_CFG as u64, 4).unwrap(), cfg);
    assert_eq!(emu.stats(0).unwrap().ignored_writes, ignored + 1);
    assert_eq!(emu.stream(0, far), hyp_iommu::StreamConfig::Stage2);
    let on = emu.read(0, r::CR0 as u64, 4).unwrap();
    let smmuen = cr0::SMMUEN.mask();
    emu.write(0, r::CR0 as u64, 4, on & !smmuen).unwrap();
    emu.write(0, r::STRTAB_BASE_CFG as u64, 4, small).unwrap();
    emu.write(0, r::CR0 as u64, 4, on).unwrap();
    assert_eq!(emu.stream(0, far), hyp_iommu::StreamConfig::Abort);
    drop(emu);
    assert!(t.dma_write(far, buf, b"shut").is_err());
    assert_eq!(t.cpu_read(buf, 4), b"open");
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ty, events[0].sid), (EventType::BadStreamId, far));
}

/// With substreams disabled (S1CDMax = 0) S1DSS is IGNORED (IHI 0070
/// 5.2), and the driver writes the real STE without it: host STEs that
/// differ only there are one configuration. Recorded as the host wrote
/// it, a host toggling it made the emulator rewrite the real STE at every
/// CFGI and report a substream behaviour the real STE does not have.
#[test]
fn an_ignored_s1dss_is_one_configuration() {
    use hyp_iommu::StreamConfig;
    use smmuv3::config::S1Dss;
    use smmuv3::layout::ste;
    let t = Trapped::new(Setup::default());
    let host = t.host_smmu(0, host_cfg()).unwrap();
    let dom = common::host::HostDomain::new_stage1(&host, io_pgtable::Granule::K4, 48).unwrap();
    host.attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    let at = t.host_strtab() + u64::from(SID) * 64;
    let word = |k: u64| t.read_u64(at + 8 * k);
    let store = |k: u64, v: u64| t.write_u64(at + 8 * k, v);
    store(0, ste::S1CDMAX.set(word(0), 0));
    let mut updates = None;
    for dss in [ste::S1DSS_BYPASS, ste::S1DSS_SSID0, ste::S1DSS_BYPASS] {
        store(1, ste::S1DSS.set(word(1), dss));
        host.issue(
            &[Command::CfgiSte {
                sid: SID,
                leaf: true,
            }],
            true,
        )
        .unwrap();
        let cfg = t.emu.lock().unwrap().stream(0, SID);
        let StreamConfig::Nested { cd, s1dss } = cfg else {
            panic!("{cfg:?}");
        };
        assert_eq!((cd.cdmax_log2, s1dss), (0, S1Dss::Terminate), "S1DSS {dss}");
        let n = t.stats().ste_updates;
        assert_eq!(
            *updates.get_or_insert(n),
            n,
            "S1DSS {dss} rewrote the real STE"
        );
    }
    let buf = t.host_ram.alloc(4096).unwrap();
    dom.map(
        IOVA,
        buf,
        4096,
        io_pgtable::Prot::READ | io_pgtable::Prot::WRITE,
    )
    .unwrap();
    t.dma_write(SID, IOVA, b"one cd").unwrap();
    assert_eq!(t.cpu_read(buf, 6), b"one cd");
}

/// A real SMMU that stops answering while a host STE change is applied
/// fails the update and its fail-closed fallback part way: the real STE
/// may then be neither the old configuration nor the new one (here: the
/// invalid one the fallback began with). The emulator kept the old one as
/// the stream's record, so when the host, once the SMMU answered again,
/// put its STE back and invalidated it, it took the real STE as already
/// right: the host's bypass stream stayed aborted (its traffic C_BAD_STE
/// on the real SMMU, kept as the hypervisor's), until the host changed its
/// STE to something else.
#[test]
fn a_real_smmu_stall_during_an_ste_change_is_repaired_by_the_next_cfgi() {
    use hyp_iommu::StreamConfig;
    use smmuv3::layout::ste;
    let t = Trapped::new(Setup::default());
    let host = t
        .host_smmu(
            0,
            SmmuConfig {
                timeout_us: 2_000,
                ..host_cfg()
            },
        )
        .unwrap();
    host.set_bypass(SID).unwrap();
    let buf = t.host_ram.alloc(4096).unwrap();
    t.dma_write(SID, buf, b"open").unwrap();
    let at = t.host_strtab() + u64::from(SID) * 64;
    let w0 = t.read_u64(at);
    let store = |v: u64| t.write_u64(at, v);
    let cfgi = || {
        host.issue(
            &[Command::CfgiSte {
                sid: SID,
                leaf: true,
            }],
            true,
        )
    };
    store(ste::CONFIG.set(w0, ste::CONFIG_ABORT));
    t.models[0].pause_commands();
    assert!(cfgi().is_err(), "the real SMMU does not answer");
    let failures = t.stats().real_failures;
    assert!(failures >= 2, "the update and its fallback failed");
    t.models[0].resume_commands();
    // Whatever the real STE is now, the device reaches nothing new.
    assert!(t.dma_write(SID, buf, b"shut").is_err());
    assert_eq!(t.cpu_read(buf, 4), b"open");
    store(w0);
    cfgi().unwrap();
    assert_eq!(t.emu.lock().unwrap().stream(0, SID), StreamConfig::Stage2);
    t.dma_write(SID, buf, b"back").unwrap();
    assert_eq!(t.cpu_read(buf, 4), b"back");
    // Repaired once: a further CFGI of the same STE changes nothing.
    let updates = t.stats().ste_updates;
    cfgi().unwrap();
    assert_eq!(t.stats().ste_updates, updates);
}
