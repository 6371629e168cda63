//! Command queue semantics: every command, errors, wrap, CMD_SYNC signals,
//! exact range invalidation, event queue overflow.

mod common;

use common::*;
use smmuv3_model::layout::op;
use smmuv3_model::regs::{self, cerror, cr0, gerror, irq_ctrl};
use smmuv3_model::{DmaFault, DmaRequest, EventType, ModelConfig, StallModel};

const SID: u32 = 2;

fn s1_model(cfg: ModelConfig, shift: u32) -> (H, Pt) {
    let mut h = H::with(cfg, smmuv3_model::Coherency::Coherent, 4 << 20);
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, shift, 48);
    let tg0 = match shift {
        12 => 0,
        16 => 1,
        _ => 2,
    };
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, tg0, 5, pt.root, 1));
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    (h, pt)
}

#[test]
fn illegal_command_stops_queue_until_acknowledged() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.smmu.write32(regs::IRQ_CTRL, irq_ctrl::GERROR_IRQEN);
    let before = h.smmu.read32(regs::CMDQ_CONS);
    assert_eq!(h.cmd(0x7f, 0), cerror::ILL);
    let cons = h.smmu.read32(regs::CMDQ_CONS);
    assert_eq!(
        cons & 0xfffff,
        before & 0xfffff,
        "CONS points at the bad command"
    );
    assert_eq!(h.gerror_active(), gerror::CMDQ_ERR);
    assert!(h.smmu.take_interrupts().gerror);
    // Commands behind it are not consumed.
    h.cmd(op::SYNC as u64, 0);
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS) & 0xfffff, before & 0xfffff);
    // Software replaces the bad command with a CMD_SYNC and acknowledges.
    let bad = h.cmdq + u64::from(before & 0xff) * 16;
    h.write_words(bad, &[op::SYNC as u64, 0]);
    h.ack_gerror();
    assert_eq!(h.gerror_active(), 0);
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS) & 0xfffff, h.prod);
    assert_eq!(h.smmu.stats().illegal_commands, 1);
}

#[test]
fn malformed_commands_are_illegal() {
    let cfg = ModelConfig {
        stall_model: StallModel::TerminateOnly,
        ..ModelConfig::stage1_only()
    };
    let mut h = H::new(cfg);
    h.enable_linear(4);
    let cases: [(u64, u64, &str); 9] = [
        (op::TLBI_S2_IPA as u64, 0, "stage 2 not implemented"),
        (op::TLBI_S12_VMALL as u64, 0, "stage 2 not implemented"),
        (op::TLBI_EL2_ALL as u64, 0, "no HYP"),
        (op::TLBI_EL3_ALL as u64, 0, "no EL3"),
        (op::ATC_INV as u64, 0, "no ATS"),
        (op::RESUME as u64, 0, "terminate-only stall model"),
        (op::SYNC as u64 | 3 << 12, 0, "reserved CS"),
        (
            op::CFGI_STE as u64 | 1 << 10,
            0,
            "SSec on the non-secure queue",
        ),
        (op::PRI_RESP as u64, 0, "no PRI"),
    ];
    for (w0, w1, why) in cases {
        assert_eq!(h.cmd(w0, w1), cerror::ILL, "{why}");
        let cons = h.smmu.read32(regs::CMDQ_CONS) & 0xfffff;
        let bad = h.cmdq + u64::from(cons & 0xff) * 16;
        h.write_words(bad, &[op::SYNC as u64, 0]);
        h.ack_gerror();
        assert_eq!(h.smmu.read32(regs::CMDQ_CONS) & 0xfffff, h.prod, "{why}");
    }
}

#[test]
fn command_fetch_abort_reports_cerror_abt() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let idx = h.prod & 0xff;
    h.mem.inject_abort(h.cmdq + u64::from(idx) * 16, 16);
    assert_eq!(h.cmd(op::SYNC as u64, 0), cerror::ABT);
    assert_eq!(h.gerror_active(), gerror::CMDQ_ERR);
    h.mem.clear_aborts();
    h.ack_gerror();
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS) & 0xfffff, h.prod);
}

#[test]
fn queue_wraps_many_times() {
    let mut h = H::new(ModelConfig::default());
    h.strtab = h.alloc(64 * 16);
    h.smmu.write64(regs::STRTAB_BASE, h.strtab);
    h.smmu.write32(regs::STRTAB_BASE_CFG, 4);
    h.enable_queues(2, 2); // 4 entries
    for i in 0..37 {
        assert_eq!(h.cmd(op::CFGI_STE as u64 | (i % 16) << 32, 0), 0);
        assert_eq!(h.smmu.read32(regs::CMDQ_CONS), h.prod, "after {i}");
    }
    assert_eq!(h.smmu.stats().command(op::CFGI_STE), 37);
}

#[test]
fn cmd_sync_signals_by_msi_irq_and_sev() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let flag = h.alloc(64);
    let (w0, w1) = (op::SYNC as u64 | 1 << 12 | 0x1234_5678 << 32, flag);
    assert_eq!(h.cmd(w0, w1), 0);
    let mut b = [0u8; 4];
    h.mem.cpu_read(flag, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    assert_eq!(h.cmd(op::SYNC as u64 | 1 << 12, 0), 0);
    assert!(h.smmu.take_interrupts().cmd_sync);
    assert_eq!(h.cmd(op::SYNC as u64 | 2 << 12, 0), 0);
    let s = h.smmu.stats();
    assert_eq!((s.sync_msi_writes, s.sync_sevs), (1, 1));
    // Without SEV support, CS = SEV completes silently; CS = 3 is reserved.
    let mut q = H::new(ModelConfig::qemu_like());
    q.enable_linear(4);
    assert_eq!(q.cmd(op::SYNC as u64 | 2 << 12, 0), 0);
    assert_eq!(q.smmu.stats().sync_sevs, 0);
    assert_eq!(q.cmd(op::SYNC as u64 | 3 << 12, 0), cerror::ILL);
}

#[test]
fn fault_injection_pause_drop_delay() {
    let (mut h, pt) = s1_model(ModelConfig::default(), 12);
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    pt.map(&h, 0x1000, a, 3, S1_RW);
    let req = DmaRequest::read(SID, 0x1000, 4).privileged();
    h.smmu.translate(&req).unwrap();
    pt.map(&h, 0x1000, b, 3, S1_RW);
    h.smmu.pause_commands();
    h.cmd(op::TLBI_NH_ALL as u64, 0);
    assert_ne!(h.smmu.read32(regs::CMDQ_CONS), h.prod, "paused");
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    h.smmu.resume_commands();
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS), h.prod);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, b);
    // Dropped commands are consumed without effect.
    pt.map(&h, 0x1000, a, 3, S1_RW);
    h.smmu.drop_commands(1);
    h.cmd(op::TLBI_NH_ALL as u64, 0);
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS), h.prod);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, b, "TLBI was dropped");
    assert_eq!(h.smmu.stats().dropped_commands, 1);
    // Delayed: CONS moves after three polls.
    h.smmu.delay_commands(3);
    let p = {
        let n = 1u32 << h.cmdq_log2;
        let idx = h.prod & (n - 1);
        h.write_words(h.cmdq + u64::from(idx) * 16, &[op::SYNC as u64, 0]);
        h.prod = (h.prod + 1) & ((n << 1) - 1);
        h.smmu.write32(regs::CMDQ_PROD, h.prod);
        h.prod
    };
    assert_ne!(h.smmu.read32(regs::CMDQ_CONS), p);
    assert_ne!(h.smmu.read32(regs::CMDQ_CONS), p);
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS), p);
}

#[test]
fn event_queue_overflow_sets_and_acks_ovflg() {
    let mut h = H::new(ModelConfig::default());
    h.strtab = h.alloc(64 * 16);
    h.smmu.write64(regs::STRTAB_BASE, h.strtab);
    h.smmu.write32(regs::STRTAB_BASE_CFG, 4);
    h.enable_queues(4, 1); // 2 events
    h.enable_smmu();
    for _ in 0..4 {
        let _ = h.smmu.translate(&DmaRequest::read(100, 0, 1));
    }
    let prod = h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD);
    assert_ne!(prod & 1 << 31, 0, "OVFLG");
    assert_eq!(h.smmu.stats().events_overflowed, 2);
    let evs = h.events();
    assert_eq!(evs.len(), 2);
    assert!(
        evs.iter()
            .all(|e| e.kind == EventType::CBadStreamId && e.sid == 100)
    );
    // Acknowledge the overflow: CONS.OVACKFLG = PROD.OVFLG.
    let cons = h.smmu.read32(regs::PAGE1 + regs::EVENTQ_CONS);
    h.smmu
        .write32(regs::PAGE1 + regs::EVENTQ_CONS, cons | 1 << 31);
    let _ = h.smmu.translate(&DmaRequest::read(100, 0, 1));
    assert_eq!(h.events().len(), 1);
}

#[test]
fn event_queue_write_abort_raises_gerror() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.mem.inject_abort(h.evtq, 32 << 8);
    let _ = h.smmu.translate(&DmaRequest::read(100, 0, 1));
    assert_eq!(h.gerror_active(), gerror::EVENTQ_ABT_ERR);
    assert_eq!(h.smmu.stats().events_discarded, 1);
}

#[test]
fn cfgi_variants_drop_exactly_their_configuration() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    for sid in 0..8 {
        h.set_ste(sid, ste_bypass());
    }
    let t = |h: &H, sid| h.smmu.translate(&DmaRequest::read(sid, 0x1000, 1));
    for sid in 0..8 {
        t(&h, sid).unwrap();
        h.write_words(h.ste_at(sid), &ste_abort());
    }
    // CFGI_STE_RANGE with Range 1 covers 4 STEs, aligned: 4..7.
    h.cmd(op::CFGI_STE_RANGE as u64 | 5 << 32, 1);
    h.sync();
    for sid in 0..8 {
        let aborted = t(&h, sid) == Err(DmaFault::StreamAbort);
        assert_eq!(aborted, sid >= 4, "sid {sid}");
    }
    // CFGI_ALL.
    h.cmd(op::CFGI_STE_RANGE as u64, 31);
    h.sync();
    assert!((0..8).all(|sid| t(&h, sid) == Err(DmaFault::StreamAbort)));
}

#[test]
fn cfgi_cd_refreshes_context_descriptor() {
    let (mut h, pt) = s1_model(ModelConfig::default(), 12);
    let a = h.alloc(4096);
    pt.map(&h, 0x1000, a, 3, S1_RW);
    let req = DmaRequest::read(SID, 0x1000, 4).privileged();
    h.smmu.translate(&req).unwrap();
    let ste = h.r64(h.ste_at(SID));
    let cdp = ste & 0x000f_ffff_ffff_ffc0;
    let mut c = cd(16, 0, 5, pt.root, 1);
    c[0] &= !(1 << 31); // invalid
    h.write_words(cdp, &c);
    h.cmd(op::TLBI_NH_ALL as u64, 0);
    h.sync();
    assert!(h.smmu.translate(&req).is_ok(), "stale CD still cached");
    h.cmd(op::CFGI_CD as u64 | u64::from(SID) << 32, 0);
    h.sync();
    assert_eq!(
        h.smmu.translate(&req).unwrap_err().event_type(),
        Some(EventType::CBadCd)
    );
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    h.cmd(op::CFGI_CD_ALL as u64 | u64::from(SID) << 32, 0);
    h.sync();
    assert!(h.smmu.translate(&req).is_ok());
}

#[test]
fn stage2_invalidations_by_ipa_and_vmall() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s2(&h, 12, 40, 1);
    let s2 = S2::ipa40(4, pt.root);
    h.set_ste(SID, ste_s2(&s2));
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    pt.map(&h, 0x3000, a, 3, S2_RW);
    let req = DmaRequest::read(SID, 0x3000, 4);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    pt.map(&h, 0x3000, b, 3, S2_RW);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    // Wrong VMID: nothing.
    h.cmd(op::TLBI_S2_IPA as u64 | 5 << 32, 0x3000 | 1);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    h.cmd(op::TLBI_S2_IPA as u64 | 4 << 32, 0x3000 | 1);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, b);
    pt.map(&h, 0x3000, a, 3, S2_RW);
    h.cmd(op::TLBI_S12_VMALL as u64 | 4 << 32, 0);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    let s = h.smmu.stats();
    assert_eq!(s.command(op::TLBI_S2_IPA), 2);
    assert_eq!(s.command(op::TLBI_S12_VMALL), 1);
}

/// Maps `n` pages of granule `shift` starting at VA 0 to page `a`, caches
/// them, remaps to `b` without invalidation, runs the command and returns
/// which pages now translate to `b` (were invalidated).
fn invalidated(shift: u32, level: u32, n: u64, w0: u64, w1: u64) -> Vec<bool> {
    let (mut h, pt) = s1_model(ModelConfig::default(), shift);
    let size = 1u64 << pt.lsb(level);
    // Two output regions of the leaf size, if memory allows; else translate only.
    let a = MEM_BASE;
    let b = MEM_BASE + size.max(1 << 20);
    for i in 0..n {
        pt.map(&h, i * size, a, level, S1_RW);
    }
    for i in 0..n {
        let r = DmaRequest::read(SID, i * size, 1).privileged();
        assert_eq!(h.smmu.translate(&r).unwrap().pa, a);
    }
    for i in 0..n {
        pt.map(&h, i * size, b, level, S1_RW);
    }
    assert_eq!(h.cmd(w0, w1), 0);
    h.sync();
    (0..n)
        .map(|i| {
            let r = DmaRequest::read(SID, i * size, 1).privileged();
            h.smmu.translate(&r).unwrap().pa == b
        })
        .collect()
}

#[test]
fn range_invalidation_covers_exactly_num_scale_tg() {
    const N: u64 = 80;
    for (scale, num) in [
        (0u64, 0u64),
        (0, 1),
        (0, 7),
        (1, 0),
        (1, 3),
        (2, 4),
        (3, 1),
        (4, 2),
        (0, 31),
        (1, 31),
        (5, 0),
    ] {
        for start in [0u64, 3, 16] {
            // NUM = SCALE = 0 needs a level hint (TTL 0 would be reserved).
            let ttl = u64::from(num == 0 && scale == 0) * 3;
            let (w0, w1) = tlbi_nh_va_range(1, start << 12, num, scale, 1, ttl, true);
            let got = invalidated(12, 3, N, w0, w1);
            let pages = (num + 1) << scale;
            for (i, g) in got.iter().enumerate() {
                let i = i as u64;
                let want = i >= start && i < start + pages;
                assert_eq!(*g, want, "scale {scale} num {num} start {start} page {i}");
            }
        }
    }
}

#[test]
fn range_invalidation_ttl_and_granule_must_match() {
    // TTL = 3 matches 4K pages; TTL = 2 does not.
    let (w0, w1) = tlbi_nh_va_range(1, 0, 3, 0, 1, 3, true);
    assert_eq!(
        invalidated(12, 3, 6, w0, w1),
        [true, true, true, true, false, false]
    );
    let (w0, w1) = tlbi_nh_va_range(1, 0, 3, 0, 1, 2, true);
    assert_eq!(invalidated(12, 3, 6, w0, w1), [false; 6]);
    // 2 MiB blocks: TTL = 2, the range is in 4K pages: 512 pages = 1 block.
    let (w0, w1) = tlbi_nh_va_range(1, 2 << 20, 0, 9, 1, 2, true);
    assert_eq!(invalidated(12, 2, 4, w0, w1), [false, true, false, false]);
    // A range touching one byte of a block invalidates the whole block.
    let (w0, w1) = tlbi_nh_va_range(1, (4 << 20) - 0x1000, 1, 0, 1, 0, true);
    assert_eq!(invalidated(12, 2, 4, w0, w1), [false, true, true, false]);
    // 16K granule, TG = 2: NUM 2 → 3 pages of 16K.
    let (w0, w1) = tlbi_nh_va_range(1, 0x4000, 2, 0, 2, 3, true);
    assert_eq!(
        invalidated(14, 3, 6, w0, w1),
        [false, true, true, true, false, false]
    );
    // 64K granule, TG = 3, SCALE 1: 2 pages.
    let (w0, w1) = tlbi_nh_va_range(1, 0, 0, 1, 3, 0, true);
    assert_eq!(invalidated(16, 3, 4, w0, w1), [true, true, false, false]);
    // TG for 16K on 4K entries: architecturally unpredictable, kept.
    let (w0, w1) = tlbi_nh_va_range(1, 0, 31, 4, 2, 0, true);
    assert_eq!(invalidated(12, 3, 4, w0, w1), [false; 4]);
    // Non-range form (TG = 0) invalidates the one page containing VA.
    let (w0, w1) = tlbi_nh_va(1, 0x2000, true);
    assert_eq!(invalidated(12, 3, 4, w0, w1), [false, false, true, false]);
}

#[test]
fn every_command_is_counted() {
    let cfg = ModelConfig {
        ats: true,
        hyp: true,
        ..ModelConfig::default()
    };
    let mut h = H::new(cfg);
    h.enable_linear(4);
    h.smmu.reset_stats();
    let cmds = [
        op::PREFETCH_CONFIG,
        op::PREFETCH_ADDR,
        op::CFGI_STE,
        op::CFGI_STE_RANGE,
        op::CFGI_CD,
        op::CFGI_CD_ALL,
        op::TLBI_NH_ALL,
        op::TLBI_NH_ASID,
        op::TLBI_NH_VA,
        op::TLBI_NH_VAA,
        op::TLBI_EL2_ALL,
        op::TLBI_EL2_ASID,
        op::TLBI_EL2_VA,
        op::TLBI_EL2_VAA,
        op::TLBI_S12_VMALL,
        op::TLBI_S2_IPA,
        op::TLBI_NSNH_ALL,
        op::ATC_INV,
        op::RESUME,
        op::STALL_TERM,
        op::SYNC,
    ];
    for c in cmds {
        assert_eq!(
            h.cmd(u64::from(c), 0),
            0,
            "{:?}",
            smmuv3_model::layout::opcode_name(c)
        );
    }
    let s = h.smmu.stats();
    for c in cmds {
        assert_eq!(
            s.command(c),
            1,
            "{:?}",
            smmuv3_model::layout::opcode_name(c)
        );
    }
    assert_eq!(s.illegal_commands, 0);
    assert_eq!(h.smmu.read32(regs::CR0) & cr0::CMDQEN, cr0::CMDQEN);
}

#[test]
fn stalled_fault_waits_for_resume() {
    let (mut h, _pt) = s1_model(ModelConfig::default(), 12);
    let cdp = h.r64(h.ste_at(SID)) & 0x000f_ffff_ffff_ffc0;
    let mut c = cd(16, 0, 5, _pt.root, 1);
    c[0] |= 1 << 44; // CD.S
    h.write_words(cdp, &c);
    h.cmd(op::CFGI_CD as u64 | u64::from(SID) << 32, 0);
    h.sync();
    let r = h.smmu.translate(&DmaRequest::read(SID, 0x1000, 4));
    let Err(DmaFault::Stalled { event }) = r else {
        panic!("expected stall, got {r:?}");
    };
    assert!(event.stall);
    let evs = h.events();
    assert_eq!(evs.len(), 1);
    assert!(evs[0].stall);
    assert_eq!(h.smmu.stalled(), vec![(SID, event.stag)]);
    h.cmd(
        op::RESUME as u64 | u64::from(SID) << 32 | 1 << 12,
        u64::from(event.stag),
    );
    h.sync();
    assert!(h.smmu.stalled().is_empty());
}

#[test]
fn el2_entries_need_el2_invalidation_and_vaa_ignores_asid() {
    let cfg = ModelConfig {
        hyp: true,
        ..ModelConfig::default()
    };
    let mut h = H::with(cfg, smmuv3_model::Coherency::Coherent, 4 << 20);
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    let mut s = ste_s1(cdp, 0, 0, 0);
    s[1] |= 0b10 << 30; // STRW = EL2
    h.set_ste(SID, s);
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    pt.map(&h, 0x1000, a, 3, S1_RW);
    let req = DmaRequest::read(SID, 0x1000, 4).privileged();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    pt.map(&h, 0x1000, b, 3, S1_RW);
    h.cmd(op::TLBI_NH_ALL as u64, 0);
    h.cmd(op::TLBI_NSNH_ALL as u64, 0);
    h.sync();
    assert_eq!(
        h.smmu.translate(&req).unwrap().pa,
        a,
        "EL2 entries survive NH/NSNH"
    );
    h.cmd(op::TLBI_EL2_ALL as u64, 0);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, b);

    // TLBI_NH_VAA: any ASID at that address.
    let (mut h, pt) = s1_model(ModelConfig::default(), 12);
    pt.map(&h, 0x1000, a, 3, S1_RW);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    pt.map(&h, 0x1000, b, 3, S1_RW);
    h.cmd(op::TLBI_NH_VAA as u64, 0x2000);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a, "other address");
    h.cmd(op::TLBI_NH_VAA as u64, 0x1000);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, b);
}

#[test]
fn reserved_range_encodings_and_wide_ids_on_narrow_smmus() {
    let (mut h, _) = s1_model(ModelConfig::default(), 12);
    // TG set, NUM = SCALE = 0 and no level hint: reserved.
    let (w0, w1) = tlbi_nh_va_range(1, 0x1000, 0, 0, 1, 0, true);
    assert_eq!(h.cmd(w0, w1), cerror::ILL);
    let cons = h.smmu.read32(regs::CMDQ_CONS) & 0xfffff;
    h.write_words(h.cmdq + u64::from(cons & 0xff) * 16, &[op::SYNC as u64, 0]);
    h.ack_gerror();
    // 16K TTL = 1 is treated as 0: reserved again for a single granule.
    let (w0, w1) = tlbi_nh_va_range(1, 0x4000, 0, 0, 2, 1, true);
    assert_eq!(h.cmd(w0, w1), cerror::ILL);
    let cons = h.smmu.read32(regs::CMDQ_CONS) & 0xfffff;
    h.write_words(h.cmdq + u64::from(cons & 0xff) * 16, &[op::SYNC as u64, 0]);
    h.ack_gerror();

    // 8-bit ASIDs: a TLBI with ASID[15:8] set affects nothing.
    let cfg = ModelConfig {
        asid16: false,
        ..ModelConfig::default()
    };
    let (mut h, pt) = s1_model(cfg, 12);
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    pt.map(&h, 0x1000, a, 3, S1_RW);
    let req = DmaRequest::read(SID, 0x1000, 4).privileged();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    pt.map(&h, 0x1000, b, 3, S1_RW);
    h.cmd(op::TLBI_NH_ASID as u64 | 0x101 << 48, 0);
    h.sync();
    assert_eq!(
        h.smmu.translate(&req).unwrap().pa,
        a,
        "ASID 0x101 is not ASID 1"
    );
    h.cmd(op::TLBI_NH_ASID as u64 | 1 << 48, 0);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, b);
}

#[test]
fn out_of_range_parameters_do_nothing_and_cd_commands_need_stage1() {
    let mut h = H::with(
        ModelConfig::default(),
        smmuv3_model::Coherency::Coherent,
        4 << 20,
    );
    h.enable_linear(4);
    // SIDSIZE is 16: StreamID 0x10000 is out of range; SSID 1 << 8 too.
    assert_eq!(h.cmd(op::CFGI_STE as u64 | 0x1_0000 << 32, 0), 0);
    assert_eq!(h.cmd(op::CFGI_CD as u64 | 1 << 20, 0), 0);
    assert_eq!(h.cmd(op::CFGI_CD_ALL as u64 | 0x1_0000 << 32, 0), 0);
    let mut s2 = H::with(
        ModelConfig::stage2_only(),
        smmuv3_model::Coherency::Coherent,
        4 << 20,
    );
    s2.enable_linear(4);
    assert_eq!(s2.cmd(op::CFGI_CD as u64, 0), cerror::ILL);
}

#[test]
fn non_coherent_queue_needs_cleans_for_commands_and_structures() {
    let mut h = H::with(
        ModelConfig::default(),
        smmuv3_model::Coherency::NonCoherent,
        4 << 20,
    );
    h.enable_linear(4);
    // A command stored without a clean: the SMMU reads the old (zero)
    // entry, opcode 0, which is illegal.
    let idx = h.prod & 0xff;
    h.mem
        .cpu_write_u64(h.cmdq + u64::from(idx) * 16, op::SYNC as u64)
        .unwrap();
    h.prod += 1;
    h.smmu.write32(regs::CMDQ_PROD, h.prod);
    assert_eq!((h.smmu.read32(regs::CMDQ_CONS) >> 24) & 0x7f, cerror::ILL);
    // Cleaning and acknowledging lets it through.
    h.mem.clean(h.cmdq + u64::from(idx) * 16, 16).unwrap();
    h.ack_gerror();
    assert_eq!(h.smmu.read32(regs::CMDQ_CONS) & 0xfffff, h.prod);
    // An STE stored without a clean is invisible too (the SMMU sees V = 0).
    for (i, w) in ste_bypass().iter().enumerate() {
        h.mem.cpu_write_u64(h.ste_at(1) + i as u64 * 8, *w).unwrap();
    }
    h.cfgi_ste(1);
    let r = h.smmu.translate(&DmaRequest::read(1, 0x1000, 4));
    assert_eq!(r.unwrap_err().event_type(), Some(EventType::CBadSte));
    h.mem.clean(h.ste_at(1), 64).unwrap();
    h.cfgi_ste(1);
    assert!(
        h.smmu
            .translate(&DmaRequest::read(1, 0x1000, 4))
            .unwrap()
            .bypass
    );
}

#[test]
fn event_queue_wraps_with_a_draining_consumer() {
    let mut h = H::with(
        ModelConfig::default(),
        smmuv3_model::Coherency::Coherent,
        4 << 20,
    );
    h.strtab = h.alloc(64 * 16);
    h.smmu.write64(regs::STRTAB_BASE, h.strtab);
    h.smmu.write32(regs::STRTAB_BASE_CFG, 4);
    h.enable_queues(4, 2); // 4 events
    h.enable_smmu();
    let mut seen = Vec::new();
    for round in 0..7u32 {
        for k in 0..3u32 {
            let _ = h
                .smmu
                .translate(&DmaRequest::read(0x100 + round * 3 + k, 0, 1));
        }
        seen.extend(h.events().iter().map(|e| e.sid));
    }
    let want: Vec<u32> = (0..21).map(|i| 0x100 + i).collect();
    assert_eq!(seen, want, "every event, in order, across five wraps");
    assert_eq!(h.smmu.stats().events_overflowed, 0);
    // PROD carries the wrap bit: 21 records into a 4-entry queue.
    assert_eq!(
        h.smmu.read32(regs::PAGE1 + regs::EVENTQ_PROD) & 0x7,
        21 & 0x7
    );
}
