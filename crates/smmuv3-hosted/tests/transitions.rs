//! Every STE transition between abort, bypass, stage 1 (S1DSS variants),
//! stage 2 and nested. Before each CMD_SYNC of an update, a device with cold
//! configuration caches (a fresh model over the same memory: an SMMU may
//! evict and refetch at any time) translates a probe DMA: it must only ever
//! see the old or the new configuration (or, during a breaking update, an
//! invalid STE). Word-by-word intermediate states are covered by the unit
//! tests of `smmuv3::entry`. The driver must report exactly the syncs it
//! issued, which must be the minimum for the transition.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::config::S1Dss;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaFault, DmaRequest, EventType, ModelConfig, SmmuModel, regs};

const MEM: u64 = 16 << 20;
const SID: u32 = 0x77;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cfg {
    Abort,
    Bypass,
    S1,
    S1Ssid(S1Dss),
    S2,
    Nested,
}

/// What a read of 16 bytes at the probe address returns under a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Data(u8),
    Aborted,
    BadSte,
    Disabled,
}

struct Rig {
    sys: System,
    iova: u64,
    s1: HostedDomain,
    s1b: HostedDomain,
    s2: HostedDomain,
    s2n: HostedDomain,
    s1n: HostedDomain,
}

fn fill(sys: &System, pa: u64, byte: u8) {
    sys.mem.cpu_write(pa, &[byte; 4096]).unwrap();
    sys.mem.clean(pa, 4096).unwrap();
}

fn rig(coh: Coherency) -> Rig {
    let sys = System::new(MEM, coh, ModelConfig::default(), SmmuConfig::default()).unwrap();
    // Bypass reads the probe address itself: make it a buffer.
    let iova = sys.mem.alloc(4096).unwrap();
    fill(&sys, iova, 0xb0);
    let (b1, b1b, b2, bn) = (
        sys.mem.alloc(4096).unwrap(),
        sys.mem.alloc(4096).unwrap(),
        sys.mem.alloc(4096).unwrap(),
        sys.mem.alloc(4096).unwrap(),
    );
    fill(&sys, b1, 0x11);
    fill(&sys, b1b, 0x1b);
    fill(&sys, b2, 0x22);
    fill(&sys, bn, 0x33);
    let s1 = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    s1.map(iova, b1, 4096, RW).unwrap();
    let s1b = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    s1b.map(iova, b1b, 4096, RW).unwrap();
    let s2 = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
    s2.map(iova, b2, 4096, RW).unwrap();
    let s2n = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
    s2n.map(sys.mem.base(), sys.mem.base(), MEM, RW).unwrap();
    let s1n = HostedDomain::new_nested_stage1(&s2n, Granule::K4, 48).unwrap();
    s1n.map(iova, bn, 4096, RW).unwrap();
    Rig {
        sys,
        iova,
        s1,
        s1b,
        s2,
        s2n,
        s1n,
    }
}

impl Rig {
    fn apply(&self, c: Cfg) -> smmuv3::Update {
        let smmu = &self.sys.smmu;
        let plain = AttachOptions::default();
        match c {
            Cfg::Abort => smmu.set_abort(SID),
            Cfg::Bypass => smmu.set_bypass(SID),
            Cfg::S1 => smmu.attach(SID, None, &self.s1, plain),
            Cfg::S1Ssid(dss) => {
                let opts = AttachOptions {
                    ssid_bits: 4,
                    s1dss: dss,
                    ats: false,
                };
                // No-SSID traffic: CD 0 (Ssid0), bypass or terminate.
                if dss == S1Dss::Ssid0 {
                    smmu.attach(SID, None, &self.s1b, opts)
                } else {
                    smmu.attach(SID, Some(3), &self.s1b, opts)
                }
            }
            Cfg::S2 => smmu.attach(SID, None, &self.s2, plain),
            Cfg::Nested => smmu.attach_nested(SID, None, &self.s2n, &self.s1n, plain),
        }
        .unwrap()
    }

    fn expect(c: Cfg) -> Seen {
        match c {
            Cfg::Abort => Seen::Aborted,
            Cfg::Bypass | Cfg::S1Ssid(S1Dss::Bypass) => Seen::Data(0xb0),
            Cfg::S1 => Seen::Data(0x11),
            Cfg::S1Ssid(S1Dss::Ssid0) => Seen::Data(0x1b),
            Cfg::S1Ssid(S1Dss::Terminate) => Seen::Disabled,
            Cfg::S2 => Seen::Data(0x22),
            Cfg::Nested => Seen::Data(0x33),
        }
    }
}

fn probe(sys: &System, iova: u64) -> Seen {
    let mut buf = [0u8; 16];
    match sys
        .model
        .dma_read(&DmaRequest::read(SID, iova, 16), &mut buf)
    {
        Ok(()) => {
            assert!(buf.iter().all(|&b| b == buf[0]), "torn data {buf:x?}");
            Seen::Data(buf[0])
        }
        Err(DmaFault::StreamAbort) => Seen::Aborted,
        Err(e) if e.event_type() == Some(EventType::CBadSte) => Seen::BadSte,
        Err(e) if e.event_type() == Some(EventType::FStreamDisabled) => Seen::Disabled,
        Err(e) => panic!("unexpected DMA outcome {e}"),
    }
}

/// Minimal syncs for each transition (see `smmuv3::entry`): 2 when one
/// used word changes plus unused bits elsewhere, 1 when only one word
/// changes, 3 when the update must break.
fn expected_syncs(from: Cfg, to: Cfg) -> u32 {
    use Cfg::*;
    match (from, to) {
        (a, b) if a == b => 0,
        (Abort, _) | (_, Abort) => 2,
        // Bypass only uses word 0 and SHCFG (kept): every other word is
        // written while unused, then word 0 switches.
        (Bypass, S2) | (S2, Bypass) | (Bypass, Nested) | (Nested, Bypass) => 2,
        // S1DSS = bypass keeps SHCFG in use, and bypass ignores S1DSS.
        (Bypass, S1Ssid(S1Dss::Bypass)) | (S1Ssid(S1Dss::Bypass), Bypass) => 2,
        // Bypass -> S1 with S1DSS 0/2: SHCFG must clear and word 0 switch.
        (Bypass, _) | (_, Bypass) => 3,
        // A single CD has S1DSS = 0 (terminate encoding): swapping the CD
        // table pointer and size is one store to word 0.
        (S1, S1Ssid(S1Dss::Terminate)) | (S1Ssid(S1Dss::Terminate), S1) => 1,
        // Same CD table pointer and size: only word 1 (S1DSS) changes.
        (S1Ssid(_), S1Ssid(_)) => 1,
        _ => 3,
    }
}

fn all() -> Vec<Cfg> {
    vec![
        Cfg::Abort,
        Cfg::Bypass,
        Cfg::S1,
        Cfg::S1Ssid(S1Dss::Ssid0),
        Cfg::S1Ssid(S1Dss::Bypass),
        Cfg::S1Ssid(S1Dss::Terminate),
        Cfg::S2,
        Cfg::Nested,
    ]
}

/// Returns what a device would see right now if the SMMU had no cached
/// configuration: a fresh model over the same memory, pointed at the
/// driver's stream table, with empty caches, fetches everything anew.
fn fresh_probe(sys: &System, iova: u64) -> Seen {
    let m = SmmuModel::new(ModelConfig::default(), sys.mem.clone()).unwrap();
    m.write64(regs::STRTAB_BASE, sys.model.read64(regs::STRTAB_BASE));
    m.write32(
        regs::STRTAB_BASE_CFG,
        sys.model.read32(regs::STRTAB_BASE_CFG),
    );
    m.write32(regs::CR1, sys.model.read32(regs::CR1));
    m.write32(regs::CR2, sys.model.read32(regs::CR2));
    m.write32(regs::CR0, 1);
    let mut buf = [0u8; 16];
    match m.dma_read(&DmaRequest::read(SID, iova, 16), &mut buf) {
        Ok(()) => {
            assert!(buf.iter().all(|&b| b == buf[0]), "torn data {buf:x?}");
            Seen::Data(buf[0])
        }
        Err(DmaFault::StreamAbort) => Seen::Aborted,
        Err(e) if e.event_type() == Some(EventType::CBadSte) => Seen::BadSte,
        Err(e) if e.event_type() == Some(EventType::FStreamDisabled) => Seen::Disabled,
        Err(e) => panic!("unexpected DMA outcome {e}"),
    }
}

fn run(coh: Coherency) {
    let rig = Arc::new(rig(coh));
    // Before every CMD_SYNC the driver publishes (each step of an update),
    // look at the tables as a device with cold caches would.
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let armed = Arc::new(AtomicBool::new(false));
    {
        let (weak, seen, armed) = (Arc::downgrade(&rig), seen.clone(), armed.clone());
        rig.sys.smmu.regs().set_hook(Some(Arc::new(move |off, _| {
            if off == regs::CMDQ_PROD as usize && armed.load(Ordering::SeqCst) {
                if let Some(rig) = weak.upgrade() {
                    seen.lock().unwrap().push(fresh_probe(&rig.sys, rig.iova));
                }
            }
        })));
    }
    let cfgs = all();
    let mut mismatches = Vec::new();
    let mut observed = 0;
    for &from in &cfgs {
        for &to in &cfgs {
            if from == to {
                continue;
            }
            rig.apply(from);
            assert_eq!(probe(&rig.sys, rig.iova), Rig::expect(from), "{from:?}");
            assert_eq!(
                fresh_probe(&rig.sys, rig.iova),
                Rig::expect(from),
                "{from:?}"
            );
            let syncs_before = rig.sys.model.stats().command(0x46);
            armed.store(true, Ordering::SeqCst);
            let up = rig.apply(to);
            armed.store(false, Ordering::SeqCst);
            let syncs = rig.sys.model.stats().command(0x46) - syncs_before;
            assert_eq!(
                u64::from(up.syncs()),
                syncs,
                "{from:?} -> {to:?}: reported syncs differ from CMD_SYNCs executed"
            );
            if up.ste_syncs != expected_syncs(from, to) {
                mismatches.push((from, to, up.ste_syncs, expected_syncs(from, to)));
            }
            assert_eq!(
                probe(&rig.sys, rig.iova),
                Rig::expect(to),
                "{from:?} -> {to:?}"
            );
            // The update left no cached STE, CD or translation of the old
            // configuration behind.
            let audit = rig.sys.model.audit_caches();
            assert!(audit.is_clean(), "{from:?} -> {to:?}: {audit:?}");
            let steps: Vec<Seen> = seen.lock().unwrap().drain(..).collect();
            assert_eq!(steps.len() as u64, syncs, "one look per sync");
            observed += steps.len();
            for s in steps {
                let ok = s == Rig::expect(from)
                    || s == Rig::expect(to)
                    || (up.breaking && s == Seen::BadSte);
                assert!(
                    ok,
                    "{from:?} -> {to:?}: device saw {s:?} mid-update (breaking: {})",
                    up.breaking
                );
            }
            // Events of the Terminate configuration are expected.
            rig.sys.smmu.drain_events().unwrap();
        }
    }
    rig.sys.smmu.regs().set_hook(None);
    assert!(
        mismatches.is_empty(),
        "sync counts (from, to, got, want): {mismatches:?}"
    );
    assert!(observed > 56, "the device was looked at during updates");
}

#[test]
fn transitions_are_hitless_and_minimal_coherent() {
    run(Coherency::Coherent);
}

#[test]
fn transitions_are_hitless_and_minimal_non_coherent() {
    run(Coherency::NonCoherent);
}

/// Moving a substream between stage-1 domains rewrites its CD only: ASID
/// and TTB0 both change, so the CD must break (3 syncs) while the STE and
/// the other substreams stay untouched.
#[test]
fn substream_switch_rewrites_only_its_cd() {
    let sys = System::new(
        MEM,
        Coherency::NonCoherent,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    let opts = AttachOptions {
        ssid_bits: 4,
        ..Default::default()
    };
    let doms: Vec<HostedDomain> = (0..3)
        .map(|_| HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap())
        .collect();
    let bufs: Vec<u64> = (0..3u8)
        .map(|i| {
            let b = sys.mem.alloc(4096).unwrap();
            fill(&sys, b, 0x40 + i);
            doms[usize::from(i)].map(0x8000, b, 4096, RW).unwrap();
            b
        })
        .collect();
    assert_eq!(bufs.len(), 3);
    sys.smmu.attach(SID, Some(1), &doms[0], opts).unwrap();
    sys.smmu.attach(SID, Some(2), &doms[1], opts).unwrap();
    let read = |ssid| {
        let mut b = [0u8; 4];
        sys.model
            .dma_read(&DmaRequest::read(SID, 0x8000, 4).with_ssid(ssid), &mut b)
            .map(|()| b[0])
    };
    assert_eq!((read(1), read(2)), (Ok(0x40), Ok(0x41)));
    let before = sys.model.stats().command(0x46);
    let up = sys.smmu.attach(SID, Some(2), &doms[2], opts).unwrap();
    assert_eq!((up.ste_syncs, up.cd_syncs), (0, 3), "{up:?}");
    assert_eq!(sys.model.stats().command(0x46) - before, 3);
    assert_eq!((read(1), read(2)), (Ok(0x40), Ok(0x42)));
    // Detaching one substream clears V (sync), then the now unused words
    // (sync), as the reference algorithm does.
    let up = sys.smmu.detach(SID, Some(2)).unwrap();
    assert_eq!((up.ste_syncs, up.cd_syncs), (0, 2));
    assert_eq!(read(1), Ok(0x40));
    assert_eq!(read(2).unwrap_err().event_type(), Some(EventType::CBadCd));
    assert_eq!(doms[2].attached(), vec![]);
    assert_eq!(doms[0].attached(), vec![(SID, Some(1))]);
}
