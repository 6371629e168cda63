//! Power and errors: an SMMU that was off is re-programmed from the
//! hypervisor's state alone and invalidated before it translates again;
//! invalidations skip it while it is off; an SMMU that stops answering
//! fails a donation cleanly (the page stays the host's, reachable as
//! before) and is reported.

mod common;

use common::{Fixture, Setup, is_s2_translation_fault, smmu_on};
use hyp_iommu::{Error, Mode, Owner};
use smmuv3_hosted::HostedSmmu;
use smmuv3_model::{DmaFault, SmmuModel};
use std::sync::Arc;

const SID: u32 = 0x10;
const P: u64 = 4096;

fn two_smmus() -> Fixture {
    let mut fx = Fixture::new(Setup {
        smmus: 2,
        ..Setup::default()
    });
    for s in 0..2 {
        fx.hyp.attach_host_stream(s, SID).unwrap();
    }
    fx
}

#[test]
fn a_powered_off_smmu_is_skipped_and_fully_invalidated_when_back() {
    let mut fx = two_smmus();
    let t = fx.page(100);
    fx.cpu_write(t, &[9; 8]);
    // SMMU 1 caches the page's translation.
    assert_eq!(fx.dma_read(1, SID, t, 8).unwrap(), [9; 8]);
    fx.hyp.power_off(1).unwrap();
    assert!(!fx.hyp.is_on(1));
    assert_eq!(
        fx.dma_read(1, SID, t, 8),
        Err(DmaFault::GlobalAbort),
        "GBPA aborts"
    );
    let cmds = fx.models[1].stats().total_commands();
    let skipped = fx.hyp.stats().skipped_off;
    fx.hyp.donate_to_guest(t, P, 3).unwrap();
    assert_eq!(
        fx.models[1].stats().total_commands(),
        cmds,
        "no command to an SMMU that is off"
    );
    assert_eq!(fx.hyp.stats().skipped_off, skipped + 1);
    assert!(is_s2_translation_fault(
        &fx.dma_read(0, SID, t, 8).unwrap_err()
    ));
    // The stale entry is still in SMMU 1's TLB: only the bring-up's
    // invalidation may remove it.
    assert!(fx.models[1].tlb_entries() > 0);
    let fresh = smmu_on(&fx.mem, &fx.models[1]);
    fx.hyp.power_on(1, fresh).unwrap();
    let f = fx.dma_read(1, SID, t, 8).unwrap_err();
    assert!(is_s2_translation_fault(&f), "{f:?}");
    // The host stream is back on the shadow.
    let n = fx.page(101);
    fx.cpu_write(n, &[4; 8]);
    assert_eq!(fx.dma_read(1, SID, n, 8).unwrap(), [4; 8]);
    let hyp_page = fx.map.hyp()[0].base;
    assert!(is_s2_translation_fault(
        &fx.dma_read(1, SID, hyp_page, 8).unwrap_err()
    ));
}

#[test]
fn power_requests_are_checked() {
    let mut fx = two_smmus();
    assert_eq!(fx.hyp.power_off(2), Err(Error::NoSmmu(2)));
    fx.hyp.power_off(1).unwrap();
    assert_eq!(fx.hyp.power_off(1), Err(Error::SmmuOff(1)));
    assert_eq!(fx.hyp.attach_host_stream(1, 0x30), Err(Error::SmmuOff(1)));
    let again = smmu_on(&fx.mem, &fx.models[0]);
    assert_eq!(fx.hyp.power_on(0, again), Err(Error::SmmuOn(0)));
    // A block-mode shadow refuses an SMMU without BBML2.
    assert_eq!(fx.hyp.mode(), Mode::Block);
    let weak = Arc::new(
        SmmuModel::new(
            common::model_config(&Setup {
                bbml: 1,
                ..Setup::default()
            }),
            fx.mem.clone(),
        )
        .unwrap(),
    );
    let weak = smmu_on(&fx.mem, &weak);
    assert!(matches!(
        fx.hyp.power_on(1, weak),
        Err(Error::Unsuitable(_))
    ));
    assert!(!fx.hyp.is_on(1));
}

#[test]
fn an_unresponsive_smmu_fails_the_donation_cleanly() {
    let mut fx = two_smmus();
    let t = fx.page(200);
    fx.cpu_write(t, &[5; 8]);
    for s in 0..2 {
        assert_eq!(fx.dma_read(s, SID, t, 8).unwrap(), [5; 8]);
    }
    let owners = fx.hyp.ownership().clone();
    fx.models[1].pause_commands();
    let r = fx.hyp.donate_to_guest(t, P, 1);
    match r {
        Err(Error::Unresponsive {
            smmu: 1,
            error: smmuv3::Error::Timeout(_),
        }) => {}
        other => panic!("{other:?}"),
    }
    // Nothing half-changed: the host still owns it, the shadow maps it,
    // both SMMUs still translate it.
    assert_eq!(fx.hyp.ownership(), &owners);
    assert_eq!(fx.hyp.owner(t), Some(Owner::Host));
    assert_eq!(fx.hyp.shadow().page_table().translate(t), Some(t));
    for s in 0..2 {
        assert_eq!(fx.dma_read(s, SID, t, 8).unwrap(), [5; 8]);
        fx.dma_write(s, SID, t + 8, &[6; 8]).unwrap();
    }
    fx.models[1].resume_commands();
    // Once it answers again the donation goes through on both.
    let r = fx.hyp.donate_to_guest(t, P, 1);
    assert_eq!(r, Ok(()), "after resume");
    for s in 0..2 {
        assert!(is_s2_translation_fault(
            &fx.dma_read(s, SID, t, 8).unwrap_err()
        ));
    }
}

#[test]
fn dropping_the_hypervisor_iommu_detaches_before_freeing_the_shadow() {
    let fx = two_smmus();
    let t = fx.page(7);
    fx.cpu_write(t, &[1; 8]);
    assert_eq!(fx.dma_read(0, SID, t, 8).unwrap(), [1; 8]);
    let blocks = fx.mem.blocks_allocated();
    let Fixture {
        hyp, models, mem, ..
    } = fx;
    let smmu = hyp.smmu(0).unwrap();
    // The first register write of the teardown (the detach's command)
    // must still see the shadow's tables allocated.
    let first = Arc::new(std::sync::Mutex::new(None));
    let (f, m) = (first.clone(), mem.clone());
    smmu.regs().set_hook(Some(Arc::new(move |_, _| {
        f.lock().unwrap().get_or_insert(m.blocks_allocated());
    })));
    drop(hyp);
    smmu.regs().set_hook(None);
    assert_eq!(
        *first.lock().unwrap(),
        Some(blocks),
        "tables freed before the streams were detached"
    );
    assert!(mem.blocks_allocated() < blocks, "shadow tables freed");
    // Nothing walks the freed tables: SMMU 0 (its driver kept alive)
    // aborts the stream, SMMU 1 (its driver gone) is disabled.
    let mut buf = [0u8; 8];
    let read = |m: &Arc<SmmuModel>, buf: &mut [u8]| {
        m.dma_read(&smmuv3_model::DmaRequest::read(SID, t, 8), buf)
    };
    assert_eq!(read(&models[0], &mut buf), Err(DmaFault::StreamAbort));
    assert_eq!(read(&models[1], &mut buf), Err(DmaFault::GlobalAbort));
    drop(smmu);
}

/// A register frame over a model that, once deaf, drops writes to CR0: an
/// SMMU that no longer acknowledges a disable and keeps translating.
#[derive(Clone)]
struct DeafFrame {
    inner: smmuv3_hosted::ModelFrame,
    deaf: Arc<std::sync::atomic::AtomicBool>,
}

impl smmuv3::env::RegisterFrame for DeafFrame {
    fn read32(&self, offset: usize) -> u32 {
        self.inner.read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        let deaf = self.deaf.load(std::sync::atomic::Ordering::SeqCst);
        if !(deaf && offset == smmuv3::regs::CR0) {
            self.inner.write32(offset, value)
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        self.inner.read64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
}

type DeafEnv = (
    DeafFrame,
    smmuv3_hosted::SimDmaMemory,
    smmuv3_hosted::PollClock,
);

/// Returns the driver brought up on `model` behind a frame that drops CR0
/// writes while `deaf` is set.
fn deaf_smmu(
    parts: &common::Parts,
    model: &Arc<SmmuModel>,
    deaf: &Arc<std::sync::atomic::AtomicBool>,
) -> smmuv3::Smmu<DeafEnv> {
    let frame = DeafFrame {
        inner: smmuv3_hosted::ModelFrame::new(model.clone()),
        deaf: deaf.clone(),
    };
    smmuv3::Smmu::new(
        frame,
        smmuv3_hosted::SimDmaMemory::new(parts.mem.clone()),
        smmuv3_hosted::PollClock::default(),
        smmuv3::SmmuConfig {
            timeout_us: 20_000,
            ..smmuv3::SmmuConfig::default()
        },
    )
    .unwrap()
}

/// Two SMMUs behind deaf-able frames, and the hypervisor IOMMU over them.
fn deaf_hyp() -> (
    common::Parts,
    Arc<std::sync::atomic::AtomicBool>,
    hyp_iommu::HypIommu<smmuv3_hosted::SimDmaMemory, DeafEnv, common::SimScrub>,
) {
    let parts = common::Parts::new(&Setup {
        smmus: 2,
        ..Setup::default()
    });
    let deaf = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let smmus = parts
        .models
        .iter()
        .map(|m| deaf_smmu(&parts, m, &deaf))
        .collect();
    let hyp = hyp_iommu::HypIommu::new(
        &parts.map,
        smmus,
        smmuv3_hosted::SimDmaMemory::new(parts.mem.clone()),
        common::SimScrub(parts.mem.clone()),
        hyp_iommu::Options::default(),
    )
    .unwrap();
    (parts, deaf, hyp)
}

/// Donates page `t` while SMMU 1 does not answer: whatever the outcome
/// no SMMU may reach the page once the host lost it, the donation is
/// refused as `Unresponsive`, and SMMU 1 stays on for the shadow (it may
/// still translate from its caches).
fn donate_while_smmu1_is_deaf<E>(
    hyp: &mut hyp_iommu::HypIommu<smmuv3_hosted::SimDmaMemory, DeafEnv, common::SimScrub>,
    read: &dyn Fn(usize, u64) -> Result<[u8; 8], E>,
    t: u64,
) {
    let r = hyp.donate_to_guest(t, P, 3);
    if hyp.owner(t) != Some(Owner::Host) {
        for s in 0..2 {
            assert!(
                read(s, t).is_err(),
                "SMMU {s} reaches donated page {t:#x} ({r:?})"
            );
        }
    }
    assert!(hyp.is_on(1), "forgotten while it may translate");
    assert!(
        matches!(r, Err(Error::Unresponsive { smmu: 1, .. })),
        "{r:?}"
    );
}

#[test]
fn an_smmu_that_does_not_acknowledge_power_off_is_still_invalidated() {
    let (parts, deaf, mut hyp) = deaf_hyp();
    for s in 0..2 {
        hyp.attach_host_stream(s, SID).unwrap();
    }
    let read = |s: usize, pa: u64| {
        let mut buf = [0u8; 8];
        parts.models[s]
            .dma_read(&smmuv3_model::DmaRequest::read(SID, pa, 8), &mut buf)
            .map(|()| buf)
    };
    let t = parts.ram.base + 100 * P;
    parts.mem.cpu_write(t, &[9; 8]).unwrap();
    parts.mem.clean(t, 8).unwrap();
    // SMMU 1 caches the page's translation.
    assert_eq!(read(1, t), Ok([9; 8]));
    deaf.store(true, std::sync::atomic::Ordering::SeqCst);
    match hyp.power_off(1) {
        Err(Error::Driver {
            smmu: 1,
            error: smmuv3::Error::Timeout(_),
        }) => {}
        other => panic!("{other:?}"),
    }
    // It still translates: the hypervisor may not forget it.
    assert_eq!(read(1, t), Ok([9; 8]));
    donate_while_smmu1_is_deaf(&mut hyp, &read, t);
    assert_eq!(hyp.owner(t), Some(Owner::Host));
    assert_eq!(parts.models[1].audit_caches().stale.len(), 0);
    // Once it acknowledges, the power-off goes through and so does the
    // donation.
    deaf.store(false, std::sync::atomic::Ordering::SeqCst);
    hyp.power_off(1).unwrap();
    assert!(!hyp.is_on(1));
    hyp.donate_to_guest(t, P, 3).unwrap();
    assert!(is_s2_translation_fault(&read(0, t).unwrap_err()));
    assert_eq!(read(1, t), Err(DmaFault::GlobalAbort));
}

#[test]
fn an_smmu_that_stops_answering_during_power_on_is_still_invalidated() {
    const SID2: u32 = 0x11;
    let (parts, deaf, mut hyp) = deaf_hyp();
    for s in 0..2 {
        hyp.attach_host_stream(s, SID).unwrap();
        hyp.attach_host_stream(s, SID2).unwrap();
    }
    let t = parts.ram.base + 100 * P;
    parts.mem.cpu_write(t, &[9; 8]).unwrap();
    parts.mem.clean(t, 8).unwrap();
    let read = |s: usize, pa: u64| {
        let mut buf = [0u8; 8];
        parts.models[s]
            .dma_read(&smmuv3_model::DmaRequest::read(SID, pa, 8), &mut buf)
            .map(|()| buf)
    };
    hyp.power_off(1).unwrap();
    let fresh = deaf_smmu(&parts, &parts.models[1], &deaf);
    // As soon as the first host stream is back on the shadow, a device
    // caches the page and the SMMU stops answering (commands and CR0).
    let (m, d) = (parts.models[1].clone(), deaf.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = done.clone();
    fresh.regs().inner.set_hook(Some(Arc::new(move |_, _| {
        let req = smmuv3_model::DmaRequest::read(SID, t, 8);
        if !once.load(std::sync::atomic::Ordering::SeqCst) && m.translate(&req).is_ok() {
            once.store(true, std::sync::atomic::Ordering::SeqCst);
            m.pause_commands();
            d.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })));
    let r = hyp.power_on(1, fresh);
    assert!(done.load(std::sync::atomic::Ordering::SeqCst));
    assert!(matches!(r, Err(Error::Driver { smmu: 1, .. })), "{r:?}");
    // The first stream still translates through the SMMU's caches.
    assert_eq!(read(1, t), Ok([9; 8]));
    donate_while_smmu1_is_deaf(&mut hyp, &read, t);
    // Once it answers, it can be powered off and on again.
    deaf.store(false, std::sync::atomic::Ordering::SeqCst);
    parts.models[1].resume_commands();
    hyp.power_off(1).unwrap();
    let fresh = deaf_smmu(&parts, &parts.models[1], &deaf);
    hyp.power_on(1, fresh).unwrap();
    hyp.donate_to_guest(t, P, 3).unwrap();
    for s in 0..2 {
        assert!(is_s2_translation_fault(&read(s, t).unwrap_err()));
    }
}

/// An SMMU whose driver lets traffic bypass while it is disabled (GBPA)
/// would give every host device all of memory once powered off: the
/// hypervisor refuses it.
#[test]
fn an_smmu_that_would_bypass_when_off_is_refused() {
    let parts = common::Parts::new(&Setup::default());
    // An SMMU that bypasses out of reset, as QEMU's does.
    let cfg = smmuv3_model::ModelConfig {
        gbpa_abort_at_reset: false,
        ..common::model_config(&Setup::default())
    };
    let model = Arc::new(SmmuModel::new(cfg, parts.mem.clone()).unwrap());
    let bypassing = || {
        HostedSmmu::new(
            smmuv3_hosted::ModelFrame::new(model.clone()),
            smmuv3_hosted::SimDmaMemory::new(parts.mem.clone()),
            smmuv3_hosted::PollClock::default(),
            smmuv3::SmmuConfig {
                timeout_us: 20_000,
                gbpa_abort: false,
                ..smmuv3::SmmuConfig::default()
            },
        )
        .unwrap()
    };
    let hyp_page = parts.map.hyp()[0].base;
    let r = hyp_iommu::HypIommu::new(
        &parts.map,
        vec![bypassing()],
        smmuv3_hosted::SimDmaMemory::new(parts.mem.clone()),
        common::SimScrub(parts.mem.clone()),
        hyp_iommu::Options::default(),
    );
    if let Ok(mut hyp) = r {
        hyp.attach_host_stream(0, SID).unwrap();
        hyp.power_off(0).unwrap();
        let mut buf = [0u8; 8];
        let req = smmuv3_model::DmaRequest::read(SID, hyp_page, 8);
        let dma = model.dma_read(&req, &mut buf);
        panic!("accepted; powered off, a device reads hypervisor memory: {dma:?}");
    }
    assert!(matches!(r, Err(Error::Unsuitable(_))));
    // Nor may one come back on that way.
    let mut fx = two_smmus();
    fx.hyp.power_off(1).unwrap();
    let weak = HostedSmmu::new(
        smmuv3_hosted::ModelFrame::new(fx.models[1].clone()),
        smmuv3_hosted::SimDmaMemory::new(fx.mem.clone()),
        smmuv3_hosted::PollClock::default(),
        smmuv3::SmmuConfig {
            timeout_us: 20_000,
            gbpa_abort: false,
            ..smmuv3::SmmuConfig::default()
        },
    )
    .unwrap();
    assert!(matches!(
        fx.hyp.power_on(1, weak),
        Err(Error::Unsuitable(_))
    ));
    assert!(!fx.hyp.is_on(1));
}
