//! The linter and the running model agree: a structure the linter rejects
//! is the one the model reports (C_BAD_STE, C_BAD_CD, CERROR_ILL), and one
//! it accepts translates.

mod common;

use common::*;
use smmuv3_model::{DmaRequest, EventType, ModelConfig};

#[test]
fn rejected_ste_is_c_bad_ste_and_accepted_one_translates() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s2(&h, 12, 40, 1);
    let page = h.alloc(4096);
    pt.map(&h, 0x1000, page, 3, S2_RW | 3);
    let good = S2::ipa40(1, pt.root);
    let ok = ste_s2(&good);
    assert_eq!(h.smmu.check_ste(ok), Ok(()));
    h.set_ste(1, ok);
    assert!(h.smmu.translate(&DmaRequest::read(1, 0x1000, 4)).is_ok());
    for (bad, rule) in [
        (S2 { tg: 3, ..good }, "S2TG"),
        (S2 { sl0: 3, ..good }, "S2SL0"),
        (S2 { t0sz: 10, ..good }, "S2T0SZ"),
    ] {
        let w = ste_s2(&bad);
        let v = h.smmu.check_ste(w).unwrap_err();
        assert!(v.0.contains(rule), "{v}");
        h.set_ste(2, w);
        let f = h
            .smmu
            .translate(&DmaRequest::read(2, 0x1000, 4))
            .unwrap_err();
        assert_eq!(f.event_type(), Some(EventType::CBadSte), "{rule}");
    }
}

#[test]
fn rejected_cd_is_c_bad_cd_and_rejected_command_is_cerror_ill() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let mut bad = cd(16, 0, 5, pt.root, 1);
    bad[0] = bad[0] & !0x3f | 8; // T0SZ 8: a 56-bit VA
    let v = h.smmu.check_cd(bad, None).unwrap_err();
    assert!(v.0.contains("T0SZ"), "{v}");
    assert_eq!(h.smmu.check_cd(cd(16, 0, 5, pt.root, 1), None), Ok(()));
    let cdp = h.alloc(64);
    h.write_words(cdp, &bad);
    h.set_ste(3, ste_s1(cdp, 0, 0, 0));
    let f = h.smmu.translate(&DmaRequest::read(3, 0, 4)).unwrap_err();
    assert_eq!(f.event_type(), Some(EventType::CBadCd));
    // A reserved range TLBI: the linter names the rule, the queue stops.
    let (w0, w1) = tlbi_nh_va_range(1, 0x1000, 0, 0, 1, 0, true);
    let v = h.smmu.check_command([w0, w1]).unwrap_err();
    assert!(v.0.contains("NUM = SCALE = TTL = 0"), "{v}");
    assert_ne!(h.cmd(w0, w1), 0, "CMDQ_CONS.ERR set");
    let (w0, w1) = tlbi_nh_va_range(1, 0x1000, 1, 0, 1, 0, true);
    assert_eq!(h.smmu.check_command([w0, w1]), Ok(()));
}

#[test]
fn reserved_s2ps_is_capped_and_s1stalld_needs_a_configurable_stall_model() {
    // STE.S2PS = 0b111 behaves as 0b110 (v3.1 to v3.3), capped to the OAS:
    // the STE is legal and translates.
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s2(&h, 12, 40, 1);
    let page = h.alloc(4096);
    pt.map(&h, 0x1000, page, 3, S2_RW | 3);
    let s2 = S2 {
        vmid: 1,
        t0sz: 24,
        sl0: 1,
        tg: 0,
        ps: 7,
        ttb: pt.root,
    };
    assert_eq!(h.smmu.check_ste(ste_s2(&s2)), Ok(()));
    h.set_ste(1, ste_s2(&s2));
    assert!(h.smmu.translate(&DmaRequest::read(1, 0x1000, 4)).is_ok());
    // STE.S1STALLD = 1 is ILLEGAL unless IDR0.STALL_MODEL == 0b00.
    let mut q = H::new(ModelConfig::qemu_like());
    q.enable_linear(4);
    let cdp = q.alloc(64);
    let mut s = ste_s1(cdp, 0, 0, 0);
    s[1] |= 1 << 27;
    let v = q.smmu.check_ste(s).unwrap_err();
    assert!(v.0.contains("S1STALLD"), "{v}");
    q.set_ste(2, s);
    let f = q.smmu.translate(&DmaRequest::read(2, 0, 4)).unwrap_err();
    assert_eq!(f.event_type(), Some(EventType::CBadSte));
    assert_eq!(h.smmu.check_ste(s), Ok(()), "stall model configurable");
}

#[test]
fn strw_is_ignored_when_stage_2_translates() {
    // STE.STRW is IGNORED with Config = 0b11x on a Non-secure STE (the
    // StreamWorld is NS-EL1); it was ILLEGAL on an SMMU with IDR0.HYP.
    let h = H::new(ModelConfig {
        hyp: true,
        ..ModelConfig::default()
    });
    let s2 = S2::ipa40(1, 0x8000_0000);
    for strw in 0..4u64 {
        let mut n = ste_nested(0x8000_1000, &s2);
        n[1] |= strw << 30;
        assert_eq!(h.smmu.check_ste(n), Ok(()), "nested, STRW {strw:#b}");
        // Stage 1 only: 0b10 selects EL2, 0b01 and 0b11 are ILLEGAL.
        let mut s1 = ste_s1(0x8000_1000, 0, 0, 0);
        s1[1] |= strw << 30;
        let v = h.smmu.check_ste(s1);
        assert_eq!(v.is_ok(), strw & 1 == 0, "stage 1, STRW {strw:#b}: {v:?}");
    }
    // Without IDR0.HYP the field is RES0, which this SMMU checks.
    let plain = H::new(ModelConfig::default());
    let mut n = ste_nested(0x8000_1000, &s2);
    n[1] |= 2 << 30;
    assert!(plain.smmu.check_ste(n).unwrap_err().0.contains("STRW"));
}

#[test]
fn a_stall_forced_smmu_needs_stalling_cds_and_stage_2_stes() {
    // IDR0.STALL_MODEL = 0b10: CD.S = 0 and, with stage 2 on, STE.S2S = 0
    // are ILLEGAL (ARS = 0bxx0 cannot be honoured); S = 1 is what works.
    let mut h = H::new(ModelConfig {
        stall_model: smmuv3_model::StallModel::StallForced,
        ..ModelConfig::default()
    });
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let page = h.alloc(4096);
    pt.map(&h, 0x1000, page, 3, S1_RW);
    let cdp = h.alloc(64);
    let terminating = cd(16, 0, 5, pt.root, 1);
    let mut stalling = terminating;
    stalling[0] |= 1 << 44;
    let v = h.smmu.check_cd(terminating, None).unwrap_err();
    assert!(v.0.contains("CD.S = 0"), "{v}");
    assert_eq!(h.smmu.check_cd(stalling, None), Ok(()));
    // Through the SMMU: the terminating CD is C_BAD_CD, the stalling one
    // translates.
    h.write_words(cdp, &terminating);
    h.set_ste(1, ste_s1(cdp, 0, 0, 0));
    let f = h
        .smmu
        .translate(&DmaRequest::read(1, 0x1000, 4).privileged())
        .unwrap_err();
    assert_eq!(f.event_type(), Some(EventType::CBadCd));
    h.write_words(cdp, &stalling);
    h.cfgi_ste(1);
    let t = h
        .smmu
        .translate(&DmaRequest::read(1, 0x1000, 4).privileged())
        .unwrap();
    assert_eq!(t.pa, page);
    // Stage 2: S2S = 0 is ILLEGAL, S2S = 1 legal.
    let s2 = S2::ipa40(1, 0x8000_0000);
    let plain = ste_s2(&s2);
    let v = h.smmu.check_ste(plain).unwrap_err();
    assert!(v.0.contains("S2S = 0"), "{v}");
    let mut stalls = plain;
    stalls[2] |= 1 << 57;
    assert_eq!(h.smmu.check_ste(stalls), Ok(()));
    // Stage 1 only: S2S is IGNORED.
    assert_eq!(h.smmu.check_ste(ste_s1(cdp, 0, 0, 0)), Ok(()));
}
