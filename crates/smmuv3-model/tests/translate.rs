//! Translation modes, granules, stages and the faults they raise.

mod common;

use common::*;
use smmuv3_model::layout::op;
use smmuv3_model::regs;
use smmuv3_model::{
    Coherency, DmaFault, DmaRequest, EventType, FaultClass, Httu, ModelConfig, Termination,
};

const SID: u32 = 3;

fn s1_setup(h: &mut H, shift: u32, ias: u32) -> Pt {
    h.enable_linear(4);
    let tg0 = match shift {
        12 => 0,
        16 => 1,
        _ => 2,
    };
    let pt = Pt::new_s1(h, shift, ias);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(64 - u64::from(ias), tg0, 5, pt.root, 7));
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    pt
}

#[test]
fn gbpa_controls_traffic_while_disabled() {
    let h = H::new(ModelConfig::default());
    let buf = h.alloc(4096);
    let r = h.smmu.dma_read(&DmaRequest::read(0, buf, 4), &mut [0; 4]);
    assert_eq!(r, Err(DmaFault::GlobalAbort));
    // Without UPDATE the write is ignored.
    h.smmu.write32(regs::GBPA, 0);
    assert_ne!(h.smmu.read32(regs::GBPA) & regs::gbpa::ABORT, 0);
    h.smmu.write32(regs::GBPA, regs::gbpa::UPDATE);
    assert_eq!(h.smmu.read32(regs::GBPA) & regs::gbpa::UPDATE, 0);
    h.smmu
        .dma_write(&DmaRequest::write(0, buf, 4), &[9, 8, 7, 6])
        .unwrap();
    let mut b = [0; 4];
    h.mem.cpu_read(buf, &mut b).unwrap();
    assert_eq!(b, [9, 8, 7, 6]);
}

#[test]
fn ste_abort_and_bypass() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.set_ste(1, ste_abort());
    h.set_ste(2, ste_bypass());
    let buf = h.alloc(4096);
    let t = h.smmu.translate(&DmaRequest::read(2, buf + 5, 1)).unwrap();
    assert!(t.bypass);
    assert_eq!(t.pa, buf + 5);
    assert_eq!(
        h.smmu.translate(&DmaRequest::read(1, buf, 1)),
        Err(DmaFault::StreamAbort)
    );
    assert!(h.events().is_empty(), "abort STEs record nothing");
}

#[test]
fn stage1_4k_walk_moves_data_and_caches() {
    let mut h = H::new(ModelConfig::default());
    let pt = s1_setup(&mut h, 12, 48);
    let page = h.alloc(4096);
    let va = 0x0000_7f12_3456_7000;
    pt.map(&h, va, page, 3, S1_RW);
    h.smmu
        .dma_write(
            &DmaRequest::write(SID, va + 16, 4).privileged(),
            &[1, 2, 3, 4],
        )
        .unwrap();
    let mut b = [0; 4];
    h.mem.cpu_read(page + 16, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    let s = h.smmu.stats();
    assert_eq!(s.tlb_misses, 1);
    assert_eq!(s.descriptor_reads, 4, "4-level walk");
    let t = h
        .smmu
        .translate(&DmaRequest::read(SID, va + 0x10, 1).privileged())
        .unwrap();
    assert!(t.tlb_hit);
    assert_eq!(t.pa, page + 0x10);
    assert_eq!(t.bytes_left, 0x1000 - 0x10);
}

#[test]
fn every_granule_and_block_level_translates() {
    // (granule shift, ias, leaf level)
    for (shift, ias, level) in [
        (12, 48, 3),
        (12, 48, 2),
        (12, 39, 1),
        (14, 47, 3),
        (14, 36, 2),
        (16, 48, 3),
        (16, 42, 2),
    ] {
        let mut h = H::new(ModelConfig::default());
        let pt = s1_setup(&mut h, shift, ias);
        let size = 1u64 << pt.lsb(level);
        let va = size * 3;
        // Block outputs must be aligned to the block size.
        let pa = MEM_BASE.next_multiple_of(size).max(MEM_BASE)
            + if size <= 1 << 21 { size * 4 } else { 0 };
        if pa + size > MEM_BASE + (16 << 20) {
            // Translate only (no data moved) when the block exceeds memory.
            pt.map(&h, va, pa, level, S1_RW);
            let t = h
                .smmu
                .translate(&DmaRequest::read(SID, va + 0x1238, 1).privileged())
                .unwrap();
            assert_eq!(t.pa, pa + 0x1238, "shift {shift} level {level}");
            continue;
        }
        pt.map(&h, va, pa, level, S1_RW);
        let t = h
            .smmu
            .translate(&DmaRequest::read(SID, va + size - 8, 1).privileged())
            .unwrap();
        assert_eq!(t.pa, pa + size - 8, "shift {shift} level {level}");
        assert_eq!(t.bytes_left, 8);
    }
}

#[test]
fn translation_fault_is_recorded_with_fields() {
    let mut h = H::new(ModelConfig::default());
    let _pt = s1_setup(&mut h, 12, 48);
    let r = h
        .smmu
        .dma_write(&DmaRequest::write(SID, 0x5000, 4), &[0; 4]);
    let Err(DmaFault::Terminated {
        event,
        recorded,
        termination,
    }) = r
    else {
        panic!("expected termination, got {r:?}");
    };
    assert!(recorded);
    assert_eq!(termination, Termination::Abort);
    assert_eq!(event.kind, EventType::FTranslation);
    let evs = h.events();
    assert_eq!(evs.len(), 1);
    let e = evs[0];
    assert_eq!(
        (e.kind, e.sid, e.input_addr, e.read, e.s2),
        (EventType::FTranslation, SID, 0x5000, false, false)
    );
    assert_eq!(e.class, FaultClass::Input);
    assert_eq!(h.smmu.stats().event(EventType::FTranslation), 1);
}

#[test]
fn unrecorded_faults_when_cd_r_clear_and_raz_wi_when_a_clear() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    let mut c = cd(16, 0, 5, pt.root, 1);
    c[0] &= !(1 << 45 | 1 << 46); // R = 0, A = 0
    h.write_words(cdp, &c);
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    let mut b = [0xaa; 8];
    let r = h.smmu.dma_read(&DmaRequest::read(SID, 0x1000, 8), &mut b);
    assert!(matches!(
        r,
        Err(DmaFault::Terminated {
            recorded: false,
            termination: Termination::RazWi,
            ..
        })
    ));
    assert_eq!(b, [0; 8], "RAZ");
    assert!(h.events().is_empty());
    assert_eq!(h.smmu.stats().events_suppressed, 1);
}

#[test]
fn permission_access_flag_and_address_size_faults() {
    let mut h = H::new(ModelConfig::default());
    let pt = s1_setup(&mut h, 12, 48);
    // IPS = 40 bits.
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 2, pt.root, 7));
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    let page = h.alloc(4096);
    pt.map(&h, 0x1000, page, 3, S1_RO);
    pt.map(&h, 0x2000, page, 3, S1_RW & !(1 << 10)); // AF clear
    pt.map(&h, 0x3000, 1 << 40, 3, S1_RW); // beyond IPS = 40 bits
    pt.map(&h, 0x4000, page, 3, S1_RW); // EL1 only
    pt.map(&h, 0x5000, page, 3, S1_RW | 1 << 53); // PXN
    let w = |va| DmaRequest::write(SID, va, 4).privileged();
    let kind = |r: Result<(), DmaFault>| r.unwrap_err().event_type();
    assert_eq!(
        kind(h.smmu.dma_write(&w(0x1000), &[0; 4])),
        Some(EventType::FPermission)
    );
    assert!(
        h.smmu
            .dma_read(&DmaRequest::read(SID, 0x1000, 4).privileged(), &mut [0; 4])
            .is_ok()
    );
    assert_eq!(
        kind(h.smmu.dma_write(&w(0x2000), &[0; 4])),
        Some(EventType::FAccess)
    );
    assert_eq!(
        kind(h.smmu.dma_write(&w(0x3000), &[0; 4])),
        Some(EventType::FAddrSize)
    );
    let user = DmaRequest::read(SID, 0x4000, 4);
    assert_eq!(
        kind(h.smmu.dma_read(&user, &mut [0; 4])),
        Some(EventType::FPermission)
    );
    let ifetch = DmaRequest::read(SID, 0x5000, 4).privileged().instruction();
    assert_eq!(
        kind(h.smmu.dma_read(&ifetch, &mut [0; 4])),
        Some(EventType::FPermission)
    );
    let evs = h.events();
    assert_eq!(evs.len(), 5);
    assert!(evs[3].read && !evs[3].privileged);
    assert!(evs[4].instruction && evs[4].privileged);
}

#[test]
fn hardware_access_flag_and_dirty_updates() {
    let cfg = ModelConfig {
        httu: Httu::AccessAndDirty,
        ..ModelConfig::default()
    };
    let mut h = H::new(cfg);
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    let mut c = cd(16, 0, 5, pt.root, 1);
    c[0] |= 1 << 42 | 1 << 43; // HD, HA
    h.write_words(cdp, &c);
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    let page = h.alloc(4096);
    // Writable-clean: read-only with DBM, AF clear.
    pt.map(&h, 0x1000, page, 3, (S1_RO & !(1 << 10)) | 1 << 51);
    let slot = pt.slot(&h, 0x1000, 3);
    h.smmu
        .dma_read(&DmaRequest::read(SID, 0x1000, 4).privileged(), &mut [0; 4])
        .unwrap();
    let d = h.mem.dev_read_u64(slot).unwrap();
    assert_ne!(d & 1 << 10, 0, "AF set by hardware");
    assert_ne!(d & 1 << 7, 0, "still clean after a read");
    h.smmu
        .dma_write(&DmaRequest::write(SID, 0x1000, 4).privileged(), &[1; 4])
        .unwrap();
    let d = h.mem.dev_read_u64(slot).unwrap();
    assert_eq!(d & 1 << 7, 0, "dirty: AP[2] cleared");
    assert_eq!(h.smmu.stats().httu_updates, 2);
}

#[test]
fn stale_tlb_entry_until_tlbi() {
    let mut h = H::new(ModelConfig::default());
    let pt = s1_setup(&mut h, 12, 48);
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    let va = 0x40_0000;
    pt.map(&h, va, a, 3, S1_RW);
    let req = DmaRequest::read(SID, va, 4).privileged();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    // Remap without invalidation: the model keeps using the old page.
    pt.map(&h, va, b, 3, S1_RW);
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    // A TLBI for another ASID changes nothing.
    let (w0, w1) = tlbi_nh_va(8, va, true);
    h.cmd(w0, w1);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, a);
    let (w0, w1) = tlbi_nh_va(7, va, true);
    h.cmd(w0, w1);
    h.sync();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, b);
    // Read-only -> read-write without TLBI keeps faulting (stale perms).
    pt.map(&h, va, b, 3, S1_RO);
    h.cmd(op::TLBI_NH_ASID as u64 | 7 << 48, 0);
    h.sync();
    let w = DmaRequest::write(SID, va, 4).privileged();
    // A read caches the read-only translation; faults themselves are
    // never cached.
    assert!(h.smmu.translate(&req).is_ok());
    assert!(h.smmu.dma_write(&w, &[0; 4]).is_err());
    pt.map(&h, va, b, 3, S1_RW);
    assert!(h.smmu.dma_write(&w, &[0; 4]).is_err());
    h.cmd(op::TLBI_NH_ALL as u64, 0);
    h.sync();
    assert!(h.smmu.dma_write(&w, &[0; 4]).is_ok());
}

#[test]
fn stale_table_pointer_until_non_leaf_tlbi() {
    let mut h = H::new(ModelConfig::default());
    let pt = s1_setup(&mut h, 12, 48);
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    pt.map(&h, 0x20_0000, a, 3, S1_RW);
    let req = |va| DmaRequest::read(SID, va, 4).privileged();
    h.smmu.translate(&req(0x20_0000)).unwrap();
    // Replace the level-3 table (as when a table is freed and reused).
    let l2slot = pt.slot(&h, 0x20_0000, 2);
    let new_l3 = h.alloc(4096);
    h.w64(new_l3 + 8, b | S1_RW | 3);
    h.w64(l2slot, new_l3 | 3);
    // Leaf-only invalidation of the first page keeps the walk cache.
    let (w0, w1) = tlbi_nh_va(7, 0x20_1000, true);
    h.cmd(w0, w1);
    h.sync();
    assert!(
        h.smmu.translate(&req(0x20_1000)).is_err(),
        "walk used the stale table"
    );
    let (w0, w1) = tlbi_nh_va(7, 0x20_1000, false);
    h.cmd(w0, w1);
    h.sync();
    assert_eq!(h.smmu.translate(&req(0x20_1000)).unwrap().pa, b);
}

#[test]
fn stale_ste_until_cfgi() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.set_ste(1, ste_bypass());
    assert!(h.smmu.translate(&DmaRequest::read(1, 0x1000, 1)).is_ok());
    h.write_words(h.ste_at(1), &ste_abort());
    assert!(
        h.smmu.translate(&DmaRequest::read(1, 0x1000, 1)).is_ok(),
        "cached STE"
    );
    h.cfgi_ste(1);
    assert_eq!(
        h.smmu.translate(&DmaRequest::read(1, 0x1000, 1)),
        Err(DmaFault::StreamAbort)
    );
}

#[test]
fn non_coherent_walker_misses_uncleaned_pte() {
    let mut h = H::with(ModelConfig::default(), Coherency::NonCoherent, 16 << 20);
    assert_eq!(h.smmu.read32(regs::IDR0) & 1 << 4, 0, "COHACC = 0");
    let pt = s1_setup(&mut h, 12, 48);
    let page = h.alloc(4096);
    let slot = pt.slot(&h, 0x7000, 3);
    // CPU store without the clean.
    h.mem.cpu_write_u64(slot, page | S1_RW | 3).unwrap();
    let req = DmaRequest::read(SID, 0x7000, 4).privileged();
    assert_eq!(
        h.smmu.translate(&req).unwrap_err().event_type(),
        Some(EventType::FTranslation)
    );
    h.mem.clean(slot, 8).unwrap();
    assert_eq!(h.smmu.translate(&req).unwrap().pa, page);
}

#[test]
fn uncleaned_new_table_is_poison_to_non_coherent_walker() {
    let mut h = H::with(ModelConfig::default(), Coherency::NonCoherent, 16 << 20);
    let pt = s1_setup(&mut h, 12, 48);
    // A table allocated but never cleaned reads as all ones to the device.
    let l1 = h.mem.alloc(4096).unwrap();
    h.w64(pt.root, l1 | 3);
    let r = h
        .smmu
        .translate(&DmaRequest::read(SID, 0x1000, 4).privileged());
    // 0xffff.. is a table descriptor pointing at 0xffff_ffff_f000, which
    // is outside memory: the next fetch aborts.
    assert_eq!(r.unwrap_err().event_type(), Some(EventType::FWalkEabt));
}

#[test]
fn walk_external_abort_is_reported_with_fetch_address() {
    let mut h = H::new(ModelConfig::default());
    let pt = s1_setup(&mut h, 12, 48);
    let page = h.alloc(4096);
    pt.map(&h, 0x9000, page, 3, S1_RW);
    let slot = pt.slot(&h, 0x9000, 3);
    h.mem.inject_abort(slot, 8);
    let r = h
        .smmu
        .translate(&DmaRequest::read(SID, 0x9000, 4).privileged());
    let ev = *r.unwrap_err().event().unwrap();
    assert_eq!((ev.kind, ev.addr2), (EventType::FWalkEabt, slot));
    h.mem.clear_aborts();
}

#[test]
fn stream_table_errors() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let k = |h: &H, sid| {
        h.smmu
            .translate(&DmaRequest::read(sid, 0, 1))
            .unwrap_err()
            .event_type()
    };
    assert_eq!(k(&h, 16), Some(EventType::CBadStreamId));
    assert_eq!(k(&h, 5), Some(EventType::CBadSte), "V = 0");
    h.set_ste(6, [1 | 0b010 << 1, 0, 0, 0, 0, 0, 0, 0]);
    // Reserved configurations behave as abort: no event.
    assert_eq!(k(&h, 6), None, "reserved config");
    h.mem.inject_abort(h.ste_at(7), 64);
    assert_eq!(k(&h, 7), Some(EventType::FSteFetch));
    let evs = h.events();
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[2].addr2, h.ste_at(7));
}

#[test]
fn two_level_stream_table_checks_span_exactly() {
    let mut h = H::new(ModelConfig::default());
    let split = 8;
    let l1 = h.alloc(8 * 256);
    h.smmu.write64(regs::STRTAB_BASE, l1);
    h.smmu
        .write32(regs::STRTAB_BASE_CFG, 1 << 16 | split << 6 | 16);
    h.enable_queues(8, 8);
    h.enable_smmu();
    let l2 = h.alloc(64 * 256);
    // Span 3: four STEs (sids 0x100..0x103 valid).
    h.w64(l1 + 8, l2 | 3);
    h.write_words(l2 + 2 * 64, &ste_bypass());
    h.cfgi_ste(0x102);
    let t = |h: &H, sid| h.smmu.translate(&DmaRequest::read(sid, 0x1000, 1));
    assert!(t(&h, 0x102).unwrap().bypass);
    assert_eq!(
        t(&h, 0x104).unwrap_err().event_type(),
        Some(EventType::CBadStreamId),
        "outside span"
    );
    assert_eq!(
        t(&h, 0x204).unwrap_err().event_type(),
        Some(EventType::CBadStreamId),
        "span 0"
    );
    // Span = SPLIT + 2 is reserved (QEMU accepts it; we do not).
    let l2b = h.alloc(64 * 512);
    h.w64(l1 + 16, l2b | u64::from(split + 2));
    h.write_words(l2b, &ste_bypass());
    assert_eq!(
        t(&h, 0x200).unwrap_err().event_type(),
        Some(EventType::CBadStreamId)
    );
    h.w64(l1 + 16, l2b | u64::from(split + 1));
    assert!(
        t(&h, 0x200).unwrap().bypass,
        "span SPLIT + 1 is the maximum"
    );
}

#[test]
fn stage2_concatenated_start_table() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    // 4K granule, IPA 40 bits, start level 1 with 2 concatenated tables.
    let pt = Pt::new_s2(&h, 12, 40, 1);
    assert_eq!(pt.root_bytes(), 8192);
    let s2 = S2::ipa40(5, pt.root);
    h.set_ste(SID, ste_s2(&s2));
    let page = h.alloc(4096);
    let ipa = (1u64 << 39) + 0x1000; // second concatenated table
    pt.map(&h, ipa, page, 3, S2_RW);
    let t = h
        .smmu
        .translate(&DmaRequest::write(SID, ipa + 4, 4))
        .unwrap();
    assert_eq!(t.pa, page + 4);
    // Beyond the 40-bit IPA space: stage-2 translation fault.
    let e = *h
        .smmu
        .translate(&DmaRequest::read(SID, 1 << 40, 4))
        .unwrap_err()
        .event()
        .unwrap();
    assert!(e.s2);
    assert_eq!(e.kind, EventType::FTranslation);
    // Read-only stage 2 mapping refuses writes with S2 = 1 and the IPA.
    pt.map(&h, 0x5000, page, 3, S2_RO);
    let e = *h
        .smmu
        .translate(&DmaRequest::write(SID, 0x5000, 4))
        .unwrap_err()
        .event()
        .unwrap();
    assert_eq!(
        (e.kind, e.s2, e.addr2),
        (EventType::FPermission, true, 0x5000)
    );
}

#[test]
fn bad_stage2_geometry_is_c_bad_ste() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s2(&h, 12, 40, 1);
    let good = S2::ipa40(1, pt.root);
    let cases = [
        S2 { sl0: 0, ..good },   // level 2 start would need 512 tables
        S2 { sl0: 3, ..good },   // reserved
        S2 { t0sz: 10, ..good }, // IPA wider than the IAS (48 bits)
        S2 { tg: 3, ..good },    // reserved granule
    ];
    for (i, s) in cases.iter().enumerate() {
        h.set_ste(SID, ste_s2(s));
        let r = h.smmu.translate(&DmaRequest::read(SID, 0, 4));
        assert_eq!(
            r.unwrap_err().event_type(),
            Some(EventType::CBadSte),
            "case {i}"
        );
    }
    h.set_ste(SID, ste_s2(&good));
    assert_eq!(
        h.smmu
            .translate(&DmaRequest::read(SID, 0, 4))
            .unwrap_err()
            .event_type(),
        Some(EventType::FTranslation)
    );
}

#[test]
fn nested_translation_and_stage2_fault_on_table_walk() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    // Stage 2: identity map of the first 8 MiB of memory with 2M blocks.
    let s2pt = Pt::new_s2(&h, 12, 40, 1);
    for i in 0..4u64 {
        let a = MEM_BASE + i * (2 << 20);
        s2pt.map(&h, a, a, 2, S2_RW);
    }
    let s2 = S2::ipa40(9, s2pt.root);
    // Stage 1 tables and CD live in that identity-mapped IPA space.
    let s1pt = Pt::new_s1(&h, 12, 48);
    assert!(s1pt.root < MEM_BASE + (8 << 20));
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, s1pt.root, 3));
    h.set_ste(SID, ste_nested(cdp, &s2));
    let page = h.alloc(4096);
    s1pt.map(&h, 0x1000, page, 3, S1_RW);
    let t = h
        .smmu
        .translate(&DmaRequest::read(SID, 0x1008, 4).privileged())
        .unwrap();
    assert_eq!(t.pa, page + 8);
    // A stage-1 output IPA that stage 2 does not map: S2 fault, class IN.
    s1pt.map(&h, 0x2000, 0x1_0000_0000, 3, S1_RW);
    let e = *h
        .smmu
        .translate(&DmaRequest::read(SID, 0x2000, 4).privileged())
        .unwrap_err()
        .event()
        .unwrap();
    assert_eq!(
        (e.kind, e.s2, e.class, e.addr2),
        (
            EventType::FTranslation,
            true,
            FaultClass::Input,
            0x1_0000_0000
        )
    );
    // A stage-1 table at an unmapped IPA: S2 fault, class TT.
    let l3slot = s1pt.slot(&h, 0x40_0000, 2);
    h.w64(l3slot, 0x2_0000_0000 | 3);
    let e = *h
        .smmu
        .translate(&DmaRequest::read(SID, 0x40_0000, 4).privileged())
        .unwrap_err()
        .event()
        .unwrap();
    assert_eq!(
        (e.kind, e.s2, e.class, e.addr2),
        (
            EventType::FTranslation,
            true,
            FaultClass::TableWalk,
            0x2_0000_0000
        )
    );
}

#[test]
fn substreams_linear_and_two_level_cd_tables_with_s1dss() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let a = h.alloc(4096);
    let b = h.alloc(4096);
    let pta = Pt::new_s1(&h, 12, 48);
    let ptb = Pt::new_s1(&h, 12, 48);
    pta.map(&h, 0x1000, a, 3, S1_RW);
    ptb.map(&h, 0x1000, b, 3, S1_RW);
    // 2-level CD table, 4K leaves (64 CDs each), 256 SSIDs.
    let l1 = h.alloc(8 * 4);
    let l2 = h.alloc(64 * 64);
    h.w64(l1 + 8, l2 | 1); // SSIDs 64..127
    h.write_words(l2, &cd(16, 0, 5, pta.root, 10)); // SSID 64
    h.write_words(l2 + 5 * 64, &cd(16, 0, 5, ptb.root, 11)); // SSID 69
    h.set_ste(SID, ste_s1(l1, 8, 1, 0));
    fn r_(h: &H, ssid: Option<u32>) -> Result<smmuv3_model::Translation, DmaFault> {
        let mut q = DmaRequest::read(SID, 0x1000, 4).privileged();
        q.ssid = ssid;
        h.smmu.translate(&q)
    }
    macro_rules! r {
        ($s:expr) => {
            r_(&h, $s)
        };
    }
    assert_eq!(r!(Some(64)).unwrap().pa, a);
    assert_eq!(r!(Some(69)).unwrap().pa, b);
    assert_eq!(
        r!(Some(65)).unwrap_err().event_type(),
        Some(EventType::CBadCd)
    );
    assert_eq!(
        r!(Some(1)).unwrap_err().event_type(),
        Some(EventType::CBadSubstreamId),
        "L1CD invalid"
    );
    assert_eq!(
        r!(Some(256)).unwrap_err().event_type(),
        Some(EventType::CBadSubstreamId)
    );
    assert_eq!(
        r!(None).unwrap_err().event_type(),
        Some(EventType::FStreamDisabled),
        "S1DSS terminate"
    );
    // S1DSS = bypass for traffic without SSID.
    let mut s = ste_s1(l1, 8, 1, 1);
    h.set_ste(SID, s);
    assert!(r!(None).unwrap().bypass);
    // S1DSS = substream 0; then SSID 0 itself is refused.
    let l2z = h.alloc(64 * 64);
    h.w64(l1, l2z | 1);
    h.write_words(l2z, &cd(16, 0, 5, ptb.root, 12));
    s = ste_s1(l1, 8, 1, 2);
    h.set_ste(SID, s);
    assert_eq!(r!(None).unwrap().pa, b);
    let e = *r!(Some(0)).unwrap_err().event().unwrap();
    assert_eq!((e.kind, e.ssid), (EventType::FStreamDisabled, Some(0)));
}

#[test]
fn pa52_with_64k_granule() {
    let cfg = ModelConfig {
        oas_bits: 52,
        vax52: true,
        ..ModelConfig::default()
    };
    let mut h = H::new(cfg);
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 16, 52);
    assert_eq!(pt.start, 1);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(12, 1, 6, pt.root, 1));
    h.set_ste(SID, ste_s1(cdp, 0, 0, 0));
    // OA[51:48] = 0xa in descriptor bits [15:12].
    let va = 0x000f_0000_0000_0000;
    pt.map(&h, va, 0x0000_1234_0000_0000 | 0xa << 12, 3, S1_RW);
    let t = h
        .smmu
        .translate(&DmaRequest::read(SID, va + 0x10, 1).privileged())
        .unwrap();
    assert_eq!(t.pa, 0x000a_1234_0000_0010);
}

#[test]
fn nested_cached_entry_reports_the_denying_stage() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let s2pt = Pt::new_s2(&h, 12, 40, 1);
    for i in 0..4u64 {
        let a = MEM_BASE + i * (2 << 20);
        s2pt.map(&h, a, a, 2, S2_RW);
    }
    let s1pt = Pt::new_s1(&h, 12, 48);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, s1pt.root, 3));
    let s2 = S2::ipa40(9, s2pt.root);
    h.set_ste(SID, ste_nested(cdp, &s2));
    // Stage 2 maps a page outside the identity blocks read-only.
    let page = h.alloc(4096);
    let ipa = 0x40_0000_0000 - 0x1000;
    s2pt.map(&h, ipa, page, 3, S2_RO);
    s1pt.map(&h, 0x1000, ipa, 3, S1_RW);
    let r = DmaRequest::read(SID, 0x1010, 4).privileged();
    assert_eq!(h.smmu.translate(&r).unwrap().pa, page + 0x10);
    let w = DmaRequest::write(SID, 0x1010, 4).privileged();
    let e = *h.smmu.translate(&w).unwrap_err().event().unwrap();
    assert_eq!((e.kind, e.s2, e.addr2), (EventType::FPermission, true, ipa));
}

/// Maps the 16 pages at `va` to those at `pa` as one contiguous run (4K
/// granule: the Contiguous bit on each of 16 level-3 descriptors).
fn map_run(h: &H, pt: &Pt, va: u64, pa: u64) {
    const CONT: u64 = 1 << 52;
    for i in 0..16u64 {
        pt.map(h, va + i * 0x1000, pa + i * 0x1000, 3, S1_RW | CONT);
    }
}

#[test]
fn contiguous_hint_is_checked() {
    let mut h = H::new(ModelConfig::default());
    let pt = s1_setup(&mut h, 12, 48);
    let block = MEM_BASE + (1 << 20); // 64 KiB aligned
    const CONT: u64 = 1 << 52;
    map_run(&h, &pt, 0x10_0000, block);
    let r = |va| DmaRequest::read(SID, va, 4).privileged();
    assert_eq!(h.smmu.translate(&r(0x10_5008)).unwrap().pa, block + 0x5008);
    // One member pointing elsewhere: the run is misprogrammed.
    map_run(&h, &pt, 0x20_0000, block);
    pt.map(&h, 0x20_7000, block + 0x9000, 3, S1_RW | CONT);
    assert_eq!(
        h.smmu.translate(&r(0x20_3000)).unwrap_err().event_type(),
        Some(EventType::FTlbConflict)
    );
    // A run whose output is not aligned to 64 KiB.
    map_run(&h, &pt, 0x30_0000, block + 0x1000);
    assert_eq!(
        h.smmu.translate(&r(0x30_0000)).unwrap_err().event_type(),
        Some(EventType::FTlbConflict)
    );
    assert_eq!(h.events().len(), 2, "always recorded");
}

#[test]
fn descriptor_reads_count_every_descriptor_a_walk_reads() {
    let mut h = H::new(ModelConfig::default());
    let pt = s1_setup(&mut h, 12, 48);
    let block = MEM_BASE + (1 << 20); // 64 KiB aligned
    pt.map(&h, 0x1000, h.alloc(4096), 3, S1_RW);
    pt.map(&h, 0x2000, h.alloc(4096), 3, S1_RW);
    // A contiguous run in the same level-3 table (the first 2 MiB).
    map_run(&h, &pt, 0x10_0000, block);
    let reads = |h: &H, va| {
        h.smmu
            .translate(&DmaRequest::read(SID, va, 4).privileged())
            .unwrap();
        h.smmu.stats().descriptor_reads
    };
    assert_eq!(
        reads(&h, 0x1000),
        4,
        "a walk from the root reads four levels"
    );
    assert_eq!(
        reads(&h, 0x2000),
        5,
        "the walk cache holds the level-3 table: one more read"
    );
    assert_eq!(
        reads(&h, 0x10_5008),
        5 + 1 + 16,
        "the leaf, then every member of its contiguous run"
    );
    assert_eq!(reads(&h, 0x10_5010), 22, "a TLB hit reads nothing");
}

#[test]
fn bad_streamid_is_recorded_only_with_recinvsid() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(2);
    h.smmu.write32(regs::CR0, 0);
    h.smmu.write32(regs::CR2, 0);
    h.smmu.write32(
        regs::CR0,
        regs::cr0::SMMUEN | regs::cr0::CMDQEN | regs::cr0::EVENTQEN,
    );
    let r = h.smmu.translate(&DmaRequest::read(9, 0, 4));
    assert!(matches!(
        r,
        Err(DmaFault::Terminated {
            recorded: false,
            ..
        })
    ));
    assert!(h.events().is_empty());
    h.smmu.write32(regs::CR0, 0);
    h.smmu.write32(regs::CR2, 0b10);
    h.smmu.write32(
        regs::CR0,
        regs::cr0::SMMUEN | regs::cr0::CMDQEN | regs::cr0::EVENTQEN,
    );
    let _ = h.smmu.translate(&DmaRequest::read(9, 0, 4));
    assert_eq!(h.events().len(), 1);
}

#[test]
fn stage2_input_may_exceed_its_output_size() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    // 48-bit IPA space (T0SZ 16, level 0 start) with a 40-bit S2PS.
    let pt = Pt::new_s2(&h, 12, 48, 0);
    let s2 = S2 {
        vmid: 1,
        t0sz: 16,
        sl0: 2,
        tg: 0,
        ps: 2,
        ttb: pt.root,
    };
    h.set_ste(SID, ste_s2(&s2));
    let page = h.alloc(4096);
    pt.map(&h, 0x8000_0000_0000 - 0x1000, page, 3, S2_RW);
    let t = h
        .smmu
        .translate(&DmaRequest::read(SID, 0x8000_0000_0000 - 0x1000, 4))
        .unwrap();
    assert_eq!(t.pa, page);
    // Output beyond S2PS: stage-2 address size fault.
    pt.map(&h, 0x2000, 1 << 40, 3, S2_RW);
    let e = *h
        .smmu
        .translate(&DmaRequest::read(SID, 0x2000, 4))
        .unwrap_err()
        .event()
        .unwrap();
    assert_eq!((e.kind, e.s2), (EventType::FAddrSize, true));
}

#[test]
fn bypassed_stage1_output_must_fit_the_address_size() {
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    h.set_ste(1, ste_bypass());
    let e = *h
        .smmu
        .translate(&DmaRequest::read(1, 1 << 48, 4))
        .unwrap_err()
        .event()
        .unwrap();
    assert_eq!(
        (e.kind, e.s2, e.class),
        (EventType::FAddrSize, false, FaultClass::Input)
    );
    assert!(
        h.smmu
            .translate(&DmaRequest::read(1, (1 << 48) - 8, 4))
            .is_ok()
    );
}
