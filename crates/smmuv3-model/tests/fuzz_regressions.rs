//! Regressions found by the coverage-guided fuzz targets in `fuzz/`, each
//! reduced to the smallest sequence that showed it.

mod common;

use common::*;
use smmuv3_model::{DmaFault, DmaRequest, EventType, ModelConfig, Termination, regs};

const SID: u32 = 3;

fn ats() -> H {
    let cfg = ModelConfig {
        ats: true,
        ..ModelConfig::default()
    };
    let mut h = H::with(cfg, smmuv3_model::Coherency::Coherent, 1 << 20);
    h.enable_linear(4);
    // Translated traffic is checked against the STE (else it bypasses).
    let v = h.smmu.read32(regs::CR0) | regs::cr0::ATSCHK;
    h.smmu.write32(regs::CR0, v);
    h
}

/// model_ops: an ATS-translated transaction on an aborting STE raised
/// F_TRANSL_FORBIDDEN (and recorded it) instead of the silent abort that
/// STE.Config = 0b000 gives every transaction.
#[test]
fn translated_traffic_on_an_aborting_ste_aborts_silently() {
    let mut h = ats();
    h.set_ste(SID, ste_abort());
    let mut req = DmaRequest::read(SID, 0x1000, 4);
    req.ats_translated = true;
    assert_eq!(h.smmu.translate(&req), Err(DmaFault::StreamAbort));
    assert_eq!(
        h.smmu.dma_read(&req, &mut [0; 4]),
        Err(DmaFault::StreamAbort)
    );
    assert!(h.events().is_empty(), "no event for an aborting STE");
    assert_eq!(h.smmu.stats().events.iter().sum::<u64>(), 0);
}

/// model_ops: a SubstreamID wider than the architecture's 20 bits reached
/// the aborting-STE path and came back in an event whose SSID the 20-bit
/// record field could not hold (the returned event differed from the one
/// recorded). It is now C_BAD_SUBSTREAMID, recorded and returned alike.
#[test]
fn wide_substream_id_is_bad_substream_and_recorded_as_returned() {
    let mut h = ats();
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64 * 16);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    h.set_ste(SID, ste_s1(cdp, 4, 0, 0));
    let wide = 0x6362_3eff_u32;
    let req = DmaRequest::read(SID, 0x1000, 4).with_ssid(wide);
    let Err(DmaFault::Terminated {
        event,
        recorded,
        termination,
    }) = h.smmu.translate(&req)
    else {
        panic!("a 32-bit SSID must not translate");
    };
    assert_eq!(event.kind, EventType::CBadSubstreamId);
    assert_eq!(event.ssid, Some(wide & 0xf_ffff));
    assert!(recorded);
    assert_eq!(termination, Termination::Abort);
    assert_eq!(
        h.events(),
        vec![event],
        "the record equals the returned event"
    );

    // On an aborting STE the stream's abort still wins, silently.
    h.set_ste(SID, ste_abort());
    assert_eq!(h.smmu.translate(&req), Err(DmaFault::StreamAbort));
    assert!(h.events().is_empty());
}

/// The "no SubstreamID" key of the context caches is u32::MAX: a request
/// carrying SSID 0xffff_ffff must not be served the cached context (or the
/// last TLB hit) of SSID-less traffic on the same stream.
#[test]
fn all_ones_substream_id_does_not_alias_ssid_less_traffic() {
    let mut h = ats();
    h.set_ste(SID, ste_bypass());
    let plain = DmaRequest::read(SID, 0x1000, 4);
    assert_eq!(h.smmu.translate(&plain).unwrap().pa, 0x1000);
    assert_eq!(h.smmu.translate(&plain).unwrap().pa, 0x1000);
    let aliased = plain.with_ssid(u32::MAX);
    let fault = h.smmu.translate(&aliased).unwrap_err();
    assert_eq!(fault.event_type(), Some(EventType::CBadSubstreamId));
    assert_eq!(h.events().len(), 1);
}

/// model_ops: `delay_commands(0)` after a longer delay left the pending
/// commands unconsumed until the next doorbell, although no delay was left.
#[test]
fn ending_a_command_delay_consumes_pending_commands() {
    let mut h = ats();
    h.smmu.delay_commands(5);
    h.cmd(smmuv3_model::layout::op::SYNC as u64, 0);
    let cons = || h.smmu.read32(smmuv3_model::regs::CMDQ_CONS) & 0xfffff;
    let before = h.smmu.stats().total_commands();
    assert_ne!(cons(), h.prod, "delayed");
    h.smmu.delay_commands(0);
    assert_eq!(
        h.smmu.read32(smmuv3_model::regs::CMDQ_CONS) & 0xfffff,
        h.prod,
        "consumed at once"
    );
    assert_eq!(h.smmu.stats().total_commands(), before + 1);
}
