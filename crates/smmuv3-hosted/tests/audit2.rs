//! Regressions of the second adversarial audit of the driver core and
//! io-pgtable, on the model: translations an endpoint keeps in its ATC
//! across a change of its stream's configuration and across the recovery
//! flush, a leaf-level hint that did not cover what a widened gather held,
//! queue memory freed while the SMMU could still read it, a domain
//! attached to another SMMU's stream, and a context descriptor live
//! before its domain knew the stream.

use std::sync::Arc;

use io_pgtable::{Granule, Prot};
use sim_memory::{Coherency, SimMemory};
use smmuv3::command::{Command, SyncSignal};
use smmuv3::regs;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{
    HostedDomain, HostedSmmu, MEM_BASE, ModelFrame, PollClock, SimDmaMemory, System,
};
use smmuv3_model::{DmaRequest, ModelConfig, SmmuModel, TraceEntry};

const MEM: u64 = 16 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);
const IOVA: u64 = 0x10_0000;
const ATS: AttachOptions = AttachOptions {
    s1dss: smmuv3::config::S1Dss::Ssid0,
    ssid_bits: 0,
    ats: true,
};

fn ats_system() -> System {
    System::new(
        MEM,
        Coherency::Coherent,
        ModelConfig {
            ats: true,
            ..ModelConfig::default()
        },
        SmmuConfig::default(),
    )
    .unwrap()
}

/// A PCIe endpoint's ATC of one entry, kept as a real device keeps it: it
/// translates once through the SMMU (an ATS translation request), then
/// sends translated traffic until the SMMU forwards an ATC invalidation
/// covering the entry.
struct Atc {
    sid: u32,
    entry: Option<(u64, u64)>,
}

impl Atc {
    fn new(sid: u32) -> Self {
        Self { sid, entry: None }
    }

    /// Drops the entry if one of the commands the model consumed since the
    /// last call is an ATC_INV of this stream covering it.
    fn snoop(&mut self, model: &SmmuModel) {
        for t in model.take_trace() {
            let TraceEntry::Command {
                words, error: None, ..
            } = t
            else {
                continue;
            };
            let Ok(Command::AtcInv {
                sid,
                addr,
                size_log2,
                ..
            }) = Command::decode(words)
            else {
                continue;
            };
            let covers = |iova: u64| {
                size_log2 >= 52 || (iova >= addr && iova - addr < 1u64 << (size_log2 + 12))
            };
            if sid == self.sid && self.entry.is_some_and(|(iova, _)| covers(iova)) {
                self.entry = None;
            }
        }
    }

    /// Reads 8 bytes at `iova` as the device does: translated traffic from
    /// its ATC, or a translation request first.
    fn read(&mut self, model: &SmmuModel, iova: u64) -> [u8; 8] {
        self.snoop(model);
        let pa = match self.entry {
            Some((i, pa)) if i == iova => pa,
            _ => {
                let t = model
                    .translate(&DmaRequest::read(self.sid, iova, 8))
                    .unwrap();
                self.entry = Some((iova, t.pa));
                t.pa
            }
        };
        let mut b = [0u8; 8];
        let req = DmaRequest {
            ats_translated: true,
            ..DmaRequest::read(self.sid, pa, 8)
        };
        model.dma_read(&req, &mut b).unwrap();
        b
    }
}

/// Returns a domain mapping `IOVA` to a fresh page holding `tag`.
fn domain_with(sys: &System, tag: &[u8; 8]) -> HostedDomain {
    let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let pa = sys.mem.alloc(4096).unwrap();
    sys.mem.cpu_write(pa, tag).unwrap();
    d.map(IOVA, pa, 4096, RW).unwrap();
    d
}

/// Defect: an ATS stream moved to another domain (or detached and attached
/// again) kept what its endpoint's ATC had cached from the old domain: the
/// driver sent ATC invalidations only for unmaps, never when a stream's
/// configuration changed, so the device went on reading the old domain's
/// memory by translated traffic the new STE lets through.
#[test]
fn an_ats_streams_atc_is_invalidated_when_its_domain_changes() {
    let sys = ats_system();
    sys.model.set_trace(4096);
    let a = domain_with(&sys, b"domain-A");
    let b = domain_with(&sys, b"domain-B");
    let mut atc = Atc::new(7);
    sys.smmu.attach(7, None, &a, ATS).unwrap();
    assert_eq!(&atc.read(&sys.model, IOVA), b"domain-A");
    // Moved to another domain: the device must see B's page now.
    sys.smmu.attach(7, None, &b, ATS).unwrap();
    assert_eq!(&atc.read(&sys.model, IOVA), b"domain-B");
    // Detached (aborting), then attached to A again.
    sys.smmu.detach(7, None).unwrap();
    sys.smmu.attach(7, None, &a, ATS).unwrap();
    assert_eq!(&atc.read(&sys.model, IOVA), b"domain-A");
    // Attached without ATS, then with ATS again: nothing from A survives.
    sys.smmu
        .attach(7, None, &b, AttachOptions::default())
        .unwrap();
    sys.smmu.attach(7, None, &b, ATS).unwrap();
    assert_eq!(&atc.read(&sys.model, IOVA), b"domain-B");
}

/// Defect: detaching one substream of an ATS stream left the PASID's ATC
/// entries in place; the next domain attached there inherited them.
#[test]
fn an_ats_substreams_atc_is_invalidated_when_it_is_detached() {
    let sys = ats_system();
    sys.model.set_trace(4096);
    let a = domain_with(&sys, b"domain-A");
    let b = domain_with(&sys, b"domain-B");
    let opts = AttachOptions {
        ssid_bits: 4,
        ..ATS
    };
    sys.smmu.attach(7, Some(3), &a, opts).unwrap();
    // The endpoint's PASID-3 entry, as a translation request made it.
    let t = sys
        .model
        .translate(&DmaRequest::read(7, IOVA, 8).with_ssid(3))
        .unwrap();
    sys.model.take_trace();
    sys.smmu.detach(7, Some(3)).unwrap();
    let invalidated = sys.model.take_trace().into_iter().any(|e| {
        matches!(e, TraceEntry::Command { words, error: None, .. }
            if matches!(Command::decode(words),
                Ok(Command::AtcInv { sid: 7, addr, size_log2, .. })
                    if size_log2 >= 52 || (IOVA >= addr && IOVA - addr < 1u64 << (size_log2 + 12))))
    });
    assert!(
        invalidated,
        "no ATC_INV of stream 7 covering {IOVA:#x} (cached as {:#x})",
        t.pa
    );
    // The next domain on PASID 3 is reached afresh.
    sys.smmu.attach(7, Some(3), &b, opts).unwrap();
    let t = sys
        .model
        .translate(&DmaRequest::read(7, IOVA, 8).with_ssid(3))
        .unwrap();
    let mut tag = [0u8; 8];
    sys.mem.cpu_read(t.pa, &mut tag).unwrap();
    assert_eq!(&tag, b"domain-B");
}

/// Defect: when the sync that separates two page sizes in a gather failed,
/// io-pgtable widened the gather to both ranges but kept the smaller page
/// size, and the driver sent it as the leaf-level hint (TTL) of the
/// recovery invalidation: a level-3 hint over a range that also held a
/// 2 MiB block, whose TLB entry a level-hinted range TLBI need not (and
/// the model does not) remove. Here the first sync cannot even be queued
/// (the SMMU is slow and the queue full), the recovery one succeeds, and
/// the device still wrote through the unmapped block.
#[test]
fn a_recovered_gather_of_two_page_sizes_is_invalidated_at_every_level() {
    const M2: u64 = 2 << 20;
    const X: u64 = 0x4000_0000;
    let sys = System::new(
        MEM,
        Coherency::Coherent,
        ModelConfig::default(),
        SmmuConfig {
            cmdq_log2: 7,
            timeout_us: 200,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    assert!(sys.smmu.features().ril, "the level hint needs range TLBIs");
    let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(3, None, &d, AttachOptions::default())
        .unwrap();
    let pa = sys.mem.alloc(2 * M2).unwrap();
    // A 2 MiB block and a 4 KiB page after it, both cached by DMA.
    d.map(X, pa, M2 + 4096, RW).unwrap();
    assert_eq!(d.page_table().walk(X).steps().len(), 3, "a level-2 block");
    for iova in [X, X + M2] {
        sys.model
            .dma_write(&DmaRequest::write(3, iova, 4), &[1; 4])
            .unwrap();
    }
    // A slow SMMU: it consumes nothing until CMDQ_CONS was read 300
    // times, and the queue is full of unrelated work.
    sys.model.delay_commands(u32::MAX);
    let fill = vec![
        Command::TlbiNhAsid {
            vmid: 0,
            asid: 0xff
        };
        128
    ];
    sys.smmu.issue(&fill, false).unwrap();
    sys.model.delay_commands(300);
    // The block goes to the gather; the page's different size needs a
    // sync of the block first, which times out waiting for queue space;
    // the recovery invalidation of both then goes through.
    let r = d.unmap(X, M2 + 4096);
    assert!(
        matches!(&r, Err(smmuv3::Error::Partial(p)) if p.done as u64 == M2 + 4096),
        "{r:?}"
    );
    let audit = sys.model.audit_caches();
    assert!(audit.is_clean(), "{audit:?}");
    for iova in [X, X + M2] {
        assert!(
            sys.model
                .dma_write(&DmaRequest::write(3, iova, 4), &[2; 4])
                .is_err(),
            "{iova:#x} still reachable"
        );
    }
    let mut b = [0u8; 4];
    sys.mem.cpu_read(pa, &mut b).unwrap();
    assert_eq!(b, [1; 4]);
}

/// Defect: a bring-up that failed after the command queue was enabled (here
/// the CMD_SYNC of the global invalidations never completes) freed the
/// queue memory on drop without disabling the queue: the driver took
/// `enabled == false` for "stopped". Whoever got that memory next wrote
/// commands the SMMU then executed, such as a CMD_SYNC whose MSI writes
/// anywhere.
#[test]
fn a_failed_bring_up_frees_no_queue_the_smmu_still_reads() {
    let mem = Arc::new(SimMemory::new(MEM_BASE, MEM, Coherency::Coherent).unwrap());
    let model = Arc::new(SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap());
    model.pause_commands();
    let r = HostedSmmu::new(
        ModelFrame::new(model.clone()),
        SimDmaMemory::new(mem.clone()),
        PollClock::default(),
        SmmuConfig {
            timeout_us: 200,
            ..SmmuConfig::default()
        },
    );
    assert_eq!(r.err(), Some(smmuv3::Error::Timeout("CMD_SYNC completion")));
    // Someone else allocates the memory the queue was in (if it was freed)
    // and fills it with commands of their own.
    let q = model.read64(regs::CMDQ_BASE as u64) & 0x000f_ffff_ffff_ffe0;
    let mut got = Vec::new();
    let mut victim = None;
    while let Ok(pa) = mem.alloc(4096) {
        got.push(pa);
        if pa == q {
            let v = mem.alloc(4096).unwrap();
            mem.cpu_write(v, &[0x5a; 8]).unwrap();
            victim = Some(v);
            let sync = Command::Sync {
                signal: SyncSignal::Msi {
                    addr: v,
                    data: 0xdead,
                },
            }
            .encode()
            .unwrap();
            for e in 0..256u64 {
                mem.cpu_write(pa + 16 * e, &sync[0].to_le_bytes()).unwrap();
                mem.cpu_write(pa + 16 * e + 8, &sync[1].to_le_bytes())
                    .unwrap();
            }
            break;
        }
    }
    model.resume_commands();
    if let Some(v) = victim {
        let mut b = [0u8; 8];
        mem.cpu_read(v, &mut b).unwrap();
        assert_eq!(b, [0x5a; 8], "the SMMU ran commands from freed memory");
    }
    let cmdqen = regs::cr0::CMDQEN.mask() as u32;
    assert_eq!(
        model.read32(regs::CR0ACK as u64) & cmdqen,
        0,
        "the queue was left enabled"
    );
}

/// Brings up a second SMMU over the memory of `sys`.
fn second_smmu(sys: &System) -> (Arc<SmmuModel>, HostedSmmu) {
    let model = Arc::new(SmmuModel::new(ModelConfig::default(), sys.mem.clone()).unwrap());
    let smmu = HostedSmmu::new(
        ModelFrame::new(model.clone()),
        SimDmaMemory::new(sys.mem.clone()),
        PollClock::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    (model, smmu)
}

/// Defect: a domain of one SMMU could be attached to a stream of another
/// (same environment type, so it compiled). Its invalidations go to its
/// own SMMU only, and its ASID is allocated there only, so the other
/// SMMU's TLB kept the unmapped page, and dropping the domain detached
/// the stream on the wrong SMMU before freeing the tables the other one
/// still walked.
#[test]
fn a_domain_attaches_only_to_streams_of_its_own_smmu() {
    let sys = System::new(
        MEM,
        Coherency::Coherent,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    let (model_b, smmu_b) = second_smmu(&sys);
    let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let pa = sys.mem.alloc(4096).unwrap();
    d.map(IOVA, pa, 4096, RW).unwrap();
    let probe = || model_b.dma_write(&DmaRequest::write(5, IOVA, 4), &[7; 4]);
    let before = probe().unwrap_err();
    let r = smmu_b.attach(5, None, &d, AttachOptions::default());
    if r.is_ok() {
        probe().unwrap();
        d.unmap(IOVA, 4096).unwrap();
        let audit = model_b.audit_caches();
        panic!(
            "attached to another SMMU; after unmap it still writes: {:?}, stale {:?}",
            probe(),
            audit.stale
        );
    }
    assert!(matches!(r, Err(smmuv3::Error::Unsupported(_))), "{r:?}");
    // Nothing changed on the other SMMU: the stream aborts as before.
    assert_eq!(probe().unwrap_err(), before);
    assert!(d.attached().is_empty());
    // Nested and external stage 2 are refused the same way.
    let s2 = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
    let s1 = HostedDomain::new_nested_stage1(&s2, Granule::K4, 48).unwrap();
    let r = smmu_b.attach_nested(5, None, &s2, &s1, AttachOptions::default());
    assert!(matches!(r, Err(smmuv3::Error::Unsupported(_))), "{r:?}");
    let io_pgtable::Regs::Stage2(regs) = s2.page_table().regs() else {
        panic!("a stage-2 table has stage-2 registers");
    };
    let ext = smmuv3::ExternalStage2::new(&sys.smmu, 9, regs).unwrap();
    let r = smmu_b.attach_external(5, &ext);
    assert!(matches!(r, Err(smmuv3::Error::Unsupported(_))), "{r:?}");
    assert_eq!(probe().unwrap_err(), before);
}

/// Defect: `Domain::flush_all`, the recovery after an unmap whose
/// invalidation failed, invalidated the SMMU's TLB but not the ATCs of the
/// domain's ATS streams, which the failed unmap never reached either: the
/// endpoint kept reading the unmapped page by translated traffic.
#[test]
fn flush_all_also_invalidates_the_atcs_of_ats_streams() {
    let sys = System::new(
        MEM,
        Coherency::Coherent,
        ModelConfig {
            ats: true,
            ..ModelConfig::default()
        },
        SmmuConfig {
            timeout_us: 200,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    sys.model.set_trace(4096);
    let mut d = domain_with(&sys, b"unmapped");
    sys.smmu.attach(7, None, &d, ATS).unwrap();
    let mut atc = Atc::new(7);
    assert_eq!(&atc.read(&sys.model, IOVA), b"unmapped");
    // The SMMU stalls: the unmap's TLBI never completes in time, so the
    // unmap reports it and sends nothing more.
    sys.model.pause_commands();
    assert!(d.unmap(IOVA, 4096).is_err());
    sys.model.resume_commands();
    // The documented recovery.
    d.flush_all().unwrap();
    let mut b = [0u8; 8];
    let req = DmaRequest::read(7, IOVA, 8);
    assert!(sys.model.dma_read(&req, &mut b).is_err(), "the TLB forgot");
    atc.snoop(&sys.model);
    assert_eq!(atc.entry, None, "the endpoint's ATC still maps {IOVA:#x}");
}

/// Defect: attaching a stage-1 domain wrote its context descriptor into
/// the live CD table before the domain recorded the stream. When a later
/// step of the attach failed (a CMD_SYNC that did not complete in time)
/// the device could already translate through the domain's tables, yet
/// the domain did not know the stream: dropping it freed the tables
/// without detaching, and the device kept walking them.
#[test]
fn a_failed_attach_leaves_no_context_its_domain_does_not_know() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let mut failed = 0;
    for k in 1u32.. {
        let sys = System::new(
            MEM,
            Coherency::Coherent,
            ModelConfig::default(),
            SmmuConfig {
                timeout_us: 200,
                ..SmmuConfig::default()
            },
        )
        .unwrap();
        let a = domain_with(&sys, b"domain-A");
        let b = domain_with(&sys, b"domain-B");
        let opts = AttachOptions {
            ssid_bits: 4,
            ..AttachOptions::default()
        };
        sys.smmu.attach(7, Some(1), &a, opts).unwrap();
        // The SMMU stops consuming at the k-th doorbell of the attach.
        let rings = Arc::new(AtomicU32::new(0));
        let model = sys.model.clone();
        let hook_rings = rings.clone();
        sys.smmu.regs().set_hook(Some(Arc::new(move |off, _| {
            if off == regs::CMDQ_PROD && hook_rings.fetch_add(1, Ordering::Relaxed) + 1 == k {
                model.pause_commands();
            }
        })));
        let r = sys.smmu.attach(7, Some(2), &b, opts);
        sys.smmu.regs().set_hook(None);
        sys.model.resume_commands();
        if r.is_ok() {
            break;
        }
        failed += 1;
        let read = || {
            let mut tag = [0u8; 8];
            let req = DmaRequest::read(7, IOVA, 8).with_ssid(2);
            sys.model.dma_read(&req, &mut tag).map(|()| tag)
        };
        if read() == Ok(*b"domain-B") {
            assert!(
                b.attached().contains(&(7, Some(2))),
                "doorbell {k}: the device reaches the domain, which does not know it"
            );
        }
        drop(b);
        assert_ne!(
            read(),
            Ok(*b"domain-B"),
            "doorbell {k}: the device walks the dropped domain's tables"
        );
    }
    assert!(failed > 0);
}
