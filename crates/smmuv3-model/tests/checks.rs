//! Field checks that make an STE or CD illegal (C_BAD_STE / C_BAD_CD), and
//! STE attribute overrides.

mod common;

use common::*;
use smmuv3_model::{DmaFault, DmaRequest, EventType, Httu, ModelConfig, regs};

const SID: u32 = 1;

fn kind(h: &H, req: DmaRequest) -> Option<EventType> {
    h.smmu.translate(&req).unwrap_err().event_type()
}

/// A 4 MiB coherent model with a linear stream table of 16 STEs, enabled.
fn linear(cfg: ModelConfig) -> H {
    let mut h = H::with(cfg, smmuv3_model::Coherency::Coherent, 4 << 20);
    h.enable_linear(4);
    h
}

#[test]
fn illegal_ste_fields() {
    let mut h = linear(ModelConfig::default());
    let cdp = h.alloc(64 * 256);
    let req = DmaRequest::read(SID, 0, 4).with_ssid(1);
    let cases: Vec<([u64; 8], &str)> = vec![
        (ste_s1(cdp, 9, 0, 0), "S1CDMax above SSIDSIZE"),
        (ste_s1(1 << 48, 0, 0, 0), "context pointer beyond OAS"),
        (
            {
                let mut s = ste_s1(cdp, 8, 0, 0);
                s[1] |= 0b10 << 30;
                s
            },
            "STRW = EL2 without HYP",
        ),
        (
            {
                let mut s = ste_s2(&S2::ipa40(1, cdp));
                s[2] &= !(1 << 51);
                s
            },
            "S2AA64 = 0",
        ),
    ];
    for (ste, why) in cases {
        h.set_ste(SID, ste);
        assert_eq!(kind(&h, req), Some(EventType::CBadSte), "{why}");
    }
    let evs = h.events();
    assert!(
        evs.iter()
            .all(|e| e.kind == EventType::CBadSte && e.sid == SID)
    );
    // Stage 2 on a stage-1-only SMMU.
    let mut s1 = linear(ModelConfig::stage1_only());
    let ttb = s1.alloc(8192);
    s1.set_ste(
        SID,
        ste_s2(&S2 {
            vmid: 1,
            t0sz: 24,
            sl0: 1,
            tg: 0,
            ps: 2,
            ttb,
        }),
    );
    assert_eq!(
        kind(&s1, DmaRequest::read(SID, 0, 4)),
        Some(EventType::CBadSte)
    );
}

#[test]
fn illegal_cd_fields() {
    let mut h = linear(ModelConfig::default());
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    let good = cd(16, 0, 5, pt.root, 1);
    let cases: Vec<(u64, u64, &str)> = vec![
        (0, 1 << 31, "V = 0"),
        (0, 1 << 41, "AA64 = 0"),
        (1 << 15, 0, "big-endian tables"),
        (0, 0x3f, "T0SZ = 0"),
        (40, 0x3f, "T0SZ = 40 (too small a space)"),
        (3 << 6, 0, "TG0 reserved"),
        (1 << 43, 0, "HA without HTTU"),
        (1 << 42, 0, "HD without HTTU"),
    ];
    for (set, clear, why) in cases {
        let mut c = good;
        c[0] = (c[0] & !clear) | set;
        h.write_words(cdp, &c);
        h.cmd(
            smmuv3_model::layout::op::CFGI_CD as u64 | u64::from(SID) << 32,
            0,
        );
        h.sync();
        assert_eq!(
            kind(&h, DmaRequest::read(SID, 0, 4)),
            Some(EventType::CBadCd),
            "{why}"
        );
    }
    // TTB beyond the effective IPS (44 bits here).
    for (ttb, why) in [
        (1u64 << 44, "TTB beyond IPS 44"),
        (1u64 << 47, "TTB far beyond IPS"),
    ] {
        h.write_words(cdp, &cd(16, 0, 4, ttb, 1));
        h.cmd(
            smmuv3_model::layout::op::CFGI_CD as u64 | u64::from(SID) << 32,
            0,
        );
        h.sync();
        assert_eq!(
            kind(&h, DmaRequest::read(SID, 0, 4)),
            Some(EventType::CBadCd),
            "{why}"
        );
    }
    // CD.S = 1 under STE.S1STALLD = 1.
    let mut c = good;
    c[0] |= 1 << 44;
    h.write_words(cdp, &c);
    let mut s = ste_s1(cdp, 0, 0, 0);
    s[1] |= 1 << 27;
    h.set_ste(SID, s);
    assert_eq!(
        kind(&h, DmaRequest::read(SID, 0, 4)),
        Some(EventType::CBadCd),
        "stall disabled"
    );
    // QEMU-like: CD.A = 0 is not supported (TERM_MODEL = 1).
    let mut q = linear(ModelConfig::qemu_like());
    let cdq = q.alloc(64);
    let mut c = cd(16, 0, 4, pt.root & 0xffff_ffff, 1);
    c[0] &= !(1 << 46);
    q.write_words(cdq, &c);
    q.set_ste(SID, ste_s1(cdq, 0, 0, 0));
    assert_eq!(
        kind(&q, DmaRequest::read(SID, 0, 4)),
        Some(EventType::CBadCd)
    );
}

#[test]
fn privcfg_and_instcfg_override_the_incoming_attributes() {
    let mut h = linear(ModelConfig::default());
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    let page = h.alloc(4096);
    pt.map(&h, 0x1000, page, 3, S1_RW | 1 << 53); // EL1 only, PXN
    let mut s = ste_s1(cdp, 0, 0, 0);
    s[1] |= 0b11 << 48; // PRIVCFG: privileged
    h.set_ste(SID, s);
    assert!(h.smmu.translate(&DmaRequest::read(SID, 0x1000, 4)).is_ok());
    s[1] |= 0b11 << 50; // INSTCFG: instruction → PXN faults
    h.set_ste(SID, s);
    assert_eq!(
        kind(&h, DmaRequest::read(SID, 0x1000, 4)),
        Some(EventType::FPermission)
    );
    let e = h.events();
    assert!(e[0].instruction && e[0].privileged);
}

#[test]
fn ats_translated_traffic_needs_eats() {
    let cfg = ModelConfig {
        ats: true,
        ..ModelConfig::default()
    };
    let mut h = linear(cfg);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    let mut req = DmaRequest::read(SID, 0x1000, 4);
    req.ats_translated = true;
    // SMMU_CR0.ATSCHK = 0: translated traffic bypasses the SMMU, EATS = 0
    // or an aborting STE notwithstanding (no event either).
    assert_eq!(h.smmu.translate(&req).unwrap().pa, 0x1000);
    h.set_ste(SID + 1, ste_abort());
    let other = DmaRequest {
        sid: SID + 1,
        ..req
    };
    assert_eq!(h.smmu.translate(&other).unwrap().pa, 0x1000);
    assert!(h.events().is_empty());
    // With the check on, the STE decides.
    let checked = h.smmu.read32(regs::CR0) | regs::cr0::ATSCHK;
    h.smmu.write32(regs::CR0, checked);
    assert_eq!(h.smmu.read32(regs::CR0ACK), checked);
    assert_eq!(kind(&h, req), Some(EventType::FTranslForbidden));
    assert_eq!(h.smmu.translate(&other), Err(DmaFault::StreamAbort));
    let mut s = ste_s1(cdp, 0, 0, 0);
    s[1] |= 1 << 28; // EATS = full ATS
    h.set_ste(SID, s);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, 0x1000);
}

#[test]
fn stage2_hardware_dirty_update_and_multi_page_dma() {
    let cfg = ModelConfig {
        httu: Httu::AccessAndDirty,
        ..ModelConfig::default()
    };
    let mut h = linear(cfg);
    let pt = Pt::new_s2(&h, 12, 40, 1);
    let mut s = ste_s2(&S2::ipa40(2, pt.root));
    s[2] |= 1 << 55 | 1 << 56; // S2HD, S2HA
    h.set_ste(SID, s);
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    // Writable-clean at stage 2: S2AP read-only + DBM.
    pt.map(&h, 0x10_0000, a, 3, S2_RO | 1 << 51);
    pt.map(&h, 0x10_1000, b, 3, S2_RW);
    let data: Vec<u8> = (0..64).collect();
    h.smmu
        .dma_write(&DmaRequest::write(SID, 0x10_0fe0, 64), &data)
        .unwrap();
    let slot = pt.slot(&h, 0x10_0000, 3);
    assert_ne!(
        h.mem.dev_read_u64(slot).unwrap() & 1 << 7,
        0,
        "S2AP[1] set: dirty"
    );
    let mut got = [0u8; 64];
    h.mem.cpu_read(a + 0xfe0, &mut got[..32]).unwrap();
    h.mem.cpu_read(b, &mut got[32..]).unwrap();
    assert_eq!(&got[..], &data[..], "split across two non-contiguous pages");
    let mut back = [0u8; 64];
    h.smmu
        .dma_read(&DmaRequest::read(SID, 0x10_0fe0, 64), &mut back)
        .unwrap();
    assert_eq!(&back[..], &data[..]);
}

#[test]
fn event_queue_interrupt_is_raised_when_enabled() {
    let mut h = linear(ModelConfig::default());
    let _ = h.smmu.translate(&DmaRequest::read(SID, 0, 4));
    assert!(!h.smmu.take_interrupts().eventq);
    // Drained, so that the next record makes the queue non-empty (the
    // interrupt's trigger).
    assert_eq!(h.events().len(), 1);
    h.smmu.write32(
        smmuv3_model::regs::IRQ_CTRL,
        smmuv3_model::regs::irq_ctrl::EVENTQ_IRQEN,
    );
    assert_eq!(
        h.smmu.read32(smmuv3_model::regs::IRQ_CTRLACK),
        smmuv3_model::regs::irq_ctrl::EVENTQ_IRQEN
    );
    let _ = h.smmu.translate(&DmaRequest::read(SID, 0, 4));
    assert!(h.smmu.take_interrupts().eventq);
    assert_eq!(h.events().len(), 1);
}

#[test]
fn asid_shared_by_different_tables_is_a_config_conflict() {
    let mut h = linear(ModelConfig::default());
    let pa = Pt::new_s1(&h, 12, 48);
    let pb = Pt::new_s1(&h, 12, 48);
    let page = h.alloc(4096);
    pa.map(&h, 0x1000, page, 3, S1_RW);
    pb.map(&h, 0x1000, page, 3, S1_RW);
    let (ca, cb) = (h.alloc(64), h.alloc(64));
    h.write_words(ca, &cd(16, 0, 5, pa.root, 5));
    h.write_words(cb, &cd(16, 0, 5, pb.root, 5));
    h.set_ste(1, ste_s1(ca, 0, 0, 0));
    h.set_ste(2, ste_s1(cb, 0, 0, 0));
    let r = |sid| DmaRequest::read(sid, 0x1000, 4).privileged();
    assert!(h.smmu.translate(&r(1)).is_ok());
    assert_eq!(kind(&h, r(2)), Some(EventType::FCfgConflict));
    // Sharing the ASID with the same tables is fine (one domain, two devices).
    h.write_words(cb, &cd(16, 0, 5, pa.root, 5));
    h.cfgi_ste(2);
    assert!(h.smmu.translate(&r(2)).is_ok());
    // So is a different ASID.
    h.write_words(cb, &cd(16, 0, 5, pb.root, 6));
    h.cfgi_ste(2);
    assert!(h.smmu.translate(&r(2)).is_ok());
}

#[test]
fn cd_fetch_faults_and_substream_errors() {
    let mut h = linear(ModelConfig::default());
    // CD fetch abort: F_CD_FETCH with the fetch address.
    let cdp = h.alloc(64 * 4);
    h.set_ste(SID, ste_s1(cdp, 2, 0, 0));
    h.mem.inject_abort(cdp + 64, 64);
    let e = *h
        .smmu
        .translate(&DmaRequest::read(SID, 0, 4).with_ssid(1))
        .unwrap_err()
        .event()
        .unwrap();
    assert_eq!(
        (e.kind, e.addr2, e.ssid),
        (EventType::FCdFetch, cdp + 64, Some(1))
    );
    h.mem.clear_aborts();
    // SubstreamID on a stream without stage 1.
    let pt = Pt::new_s2(&h, 12, 40, 1);
    h.set_ste(2, ste_s2(&S2::ipa40(1, pt.root)));
    assert_eq!(
        kind(&h, DmaRequest::read(2, 0, 4).with_ssid(0)),
        Some(EventType::CBadSubstreamId)
    );
    // Nested: a CD table pointer at an IPA stage 2 does not map: S2 fault,
    // class CD, recorded because S2R is set.
    h.set_ste(3, ste_nested(0x1000, &S2::ipa40(1, pt.root)));
    let e = *h
        .smmu
        .translate(&DmaRequest::read(3, 0, 4))
        .unwrap_err()
        .event()
        .unwrap();
    assert_eq!(
        (e.kind, e.s2, e.class, e.addr2),
        (
            EventType::FTranslation,
            true,
            smmuv3_model::FaultClass::Cd,
            0x1000
        )
    );
    assert_eq!(h.events().len(), 3);
}

#[test]
fn stall_term_releases_every_stalled_transaction_of_a_stream() {
    let mut h = linear(ModelConfig::default());
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    let mut c = cd(16, 0, 5, pt.root, 1);
    c[0] |= 1 << 44;
    h.write_words(cdp, &c);
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    for va in [0x1000, 0x2000, 0x3000] {
        assert!(matches!(
            h.smmu.translate(&DmaRequest::read(SID, va, 4)),
            Err(smmuv3_model::DmaFault::Stalled { .. })
        ));
    }
    assert_eq!(h.smmu.stalled().len(), 3);
    let tags: Vec<u16> = h.events().iter().map(|e| e.stag).collect();
    assert_eq!(tags.len(), 3);
    assert!(tags[0] != tags[1] && tags[1] != tags[2]);
    h.cmd(
        smmuv3_model::layout::op::STALL_TERM as u64 | u64::from(SID) << 32,
        0,
    );
    h.sync();
    assert!(h.smmu.stalled().is_empty());
    assert_eq!(h.smmu.stats().stalls, 3);
}

#[test]
fn misaligned_table_bases_are_aligned_by_the_smmu() {
    let mut h = linear(ModelConfig::default());
    let pt = Pt::new_s1(&h, 12, 48);
    let page = h.alloc(4096);
    pt.map(&h, 0x1000, page, 3, S1_RW);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root + 0x10, 1));
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    let t = h
        .smmu
        .translate(&DmaRequest::read(SID, 0x1000, 4).privileged());
    assert_eq!(t.unwrap().pa, page);
}

#[test]
fn ste_contiguous_span_must_hold_identical_entries() {
    let mut h = linear(ModelConfig::default());
    let mut ste = ste_bypass();
    ste[1] |= 2 << 13; // CONT = 2: StreamIDs 4..7 share one STE
    for sid in 4..8 {
        h.write_words(h.ste_at(sid), &ste);
    }
    h.cmd(smmuv3_model::layout::op::CFGI_STE_RANGE as u64, 31);
    h.sync();
    assert!(h.smmu.translate(&DmaRequest::read(5, 0, 4)).unwrap().bypass);
    // One member differs (abort instead of bypass): the promise is broken.
    let mut other = ste;
    other[0] = 1;
    h.write_words(h.ste_at(7), &other);
    h.cmd(smmuv3_model::layout::op::CFGI_STE_RANGE as u64, 31);
    h.sync();
    assert_eq!(
        kind(&h, DmaRequest::read(5, 0, 4)),
        Some(EventType::FCfgConflict)
    );
    // CONT values themselves may differ while software updates the span.
    let mut c3 = ste;
    c3[1] = (c3[1] & !(0xf << 13)) | 1 << 13;
    h.write_words(h.ste_at(7), &c3);
    h.cmd(smmuv3_model::layout::op::CFGI_STE_RANGE as u64, 31);
    h.sync();
    assert!(h.smmu.translate(&DmaRequest::read(5, 0, 4)).is_ok());
}

#[test]
fn event_interrupts_are_delivered_by_msi() {
    use smmuv3_model::regs;
    let mut h = linear(ModelConfig::default());
    let doorbell = h.alloc(64);
    h.smmu.write64(regs::EVENTQ_IRQ_CFG0, doorbell);
    h.smmu.write32(regs::EVENTQ_IRQ_CFG1, 0xe0e0);
    h.smmu.write64(regs::GERROR_IRQ_CFG0, doorbell + 8);
    h.smmu.write32(regs::GERROR_IRQ_CFG1, 0x6e6e);
    h.smmu.write32(
        regs::IRQ_CTRL,
        regs::irq_ctrl::EVENTQ_IRQEN | regs::irq_ctrl::GERROR_IRQEN,
    );
    let _ = h.smmu.translate(&DmaRequest::read(SID, 0, 4));
    assert_eq!(h.r64(doorbell) as u32, 0xe0e0);
    // GERROR sends its MSI too, and is on the wired view.
    h.cmd(0xff, 0);
    assert_eq!(h.r64(doorbell + 8) as u32, 0x6e6e);
    assert!(h.smmu.take_interrupts().gerror);
    assert_eq!(h.smmu.stats().msi_writes, 2);
    // An aborting event MSI raises MSI_EVENTQ_ABT_ERR (and its GERROR
    // MSI). The acknowledgement refetches the bad command first: CMDQ_ERR
    // is raised again, with an MSI.
    h.ack_gerror();
    assert_eq!(h.smmu.stats().msi_writes, 3);
    h.w64(doorbell + 8, 0);
    h.mem.inject_abort(doorbell, 8);
    // The event interrupt fires when the queue becomes non-empty.
    assert_eq!(h.events().len(), 1);
    let _ = h.smmu.translate(&DmaRequest::read(SID, 0, 4));
    assert_ne!(h.gerror_active() & regs::gerror::MSI_EVENTQ_ABT_ERR, 0);
    assert_eq!(h.r64(doorbell + 8) as u32, 0x6e6e);
    assert_eq!(h.smmu.stats().msi_writes, 5);
}

#[test]
fn translated_traffic_follows_the_effective_eats() {
    let cfg = ModelConfig {
        ats: true,
        ..ModelConfig::default()
    };
    let mut h = linear(cfg);
    let checked = h.smmu.read32(regs::CR0) | regs::cr0::ATSCHK;
    h.smmu.write32(regs::CR0, checked);
    let s2pt = Pt::new_s2(&h, 12, 40, 1);
    let page = h.alloc(4096);
    s2pt.map(&h, 0x4000_0000, page, 3, S2_RW | 3);
    let s2 = S2::ipa40(1, s2pt.root);
    let with_eats = |mut s: [u64; 8], eats: u64| {
        s[1] |= eats << 28;
        s
    };
    // The CD and stage-1 root at IPA = PA, so that the context decodes.
    let (cdp, root) = (h.alloc(64), h.alloc(4096));
    for p in [cdp & !0xfff, root] {
        s2pt.map(&h, p, p, 3, S2_RW | 3);
    }
    h.write_words(cdp, &cd(16, 0, 5, root, 1));
    let mut req = DmaRequest::read(SID, 0x4000_0010, 4);
    req.ats_translated = true;
    // Split-stage ATS on a nested STE: translated traffic is an IPA, which
    // stage 2 translates (and faults on where it maps nothing).
    h.set_ste(SID, with_eats(ste_nested(cdp, &s2), 2));
    assert_eq!(h.smmu.translate(&req).unwrap().pa, page + 0x10);
    let unmapped = DmaRequest {
        iova: 0x5000_0000,
        ..req
    };
    let f = h.smmu.translate(&unmapped).unwrap_err();
    assert_eq!(f.event_type(), Some(EventType::FTranslation));
    // Full ATS bypasses, EATS 0b11 without DPT behaves as 0b00.
    h.set_ste(SID, with_eats(ste_nested(cdp, &s2), 1));
    assert_eq!(h.smmu.translate(&req).unwrap().pa, 0x4000_0010);
    h.set_ste(SID, with_eats(ste_nested(cdp, &s2), 3));
    assert_eq!(kind(&h, req), Some(EventType::FTranslForbidden));
    // A bypassing STE refuses translated traffic (its EATS is IGNORED).
    h.set_ste(SID, with_eats(ste_bypass(), 1));
    assert_eq!(kind(&h, req), Some(EventType::FTranslForbidden));
    // ILLEGAL: split-stage without both stages, or with S2S; full ATS
    // with stage 2 and S2S.
    assert!(h.smmu.check_ste(with_eats(ste_s2(&s2), 2)).is_err());
    let mut stalling = ste_nested(cdp, &s2);
    stalling[2] |= 1 << 57;
    assert_eq!(h.smmu.check_ste(stalling), Ok(()));
    assert!(h.smmu.check_ste(with_eats(stalling, 2)).is_err());
    assert!(h.smmu.check_ste(with_eats(stalling, 1)).is_err());
    assert_eq!(h.smmu.check_ste(with_eats(ste_nested(cdp, &s2), 2)), Ok(()));
}
