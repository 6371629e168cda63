//! End-to-end: the driver brings up the model, attaches simulated devices
//! in every mode, maps with io-pgtable, DMA goes through the model, data is
//! checked, unmaps make the device fault, and events are decoded. Every
//! scenario runs on coherent memory and on the non-coherent, stale-TLB
//! keeping configuration.

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::event::EventType;
use smmuv3::{AttachOptions, Error, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaFault, DmaRequest, ModelConfig};

const MEM: u64 = 16 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

fn system(coh: Coherency) -> System {
    System::new(MEM, coh, ModelConfig::default(), SmmuConfig::default()).unwrap()
}

fn both(f: impl Fn(Coherency)) {
    f(Coherency::Coherent);
    f(Coherency::NonCoherent);
}

/// Writes `data` through the SMMU as device `sid` and reads it back from
/// physical memory at `pa`.
fn dma_roundtrip(sys: &System, req: DmaRequest, pa: u64, data: &[u8]) -> Result<(), DmaFault> {
    sys.model.dma_write(&req, data)?;
    let mut back = vec![0u8; data.len()];
    // The device wrote memory: make the CPU see it before comparing.
    sys.mem.invalidate(pa, data.len() as u64).unwrap();
    sys.mem.cpu_read(pa, &mut back).unwrap();
    assert_eq!(back, data, "data written by DMA not found at {pa:#x}");
    Ok(())
}

#[test]
fn bring_up_reports_features_and_enables() {
    both(|coh| {
        let sys = system(coh);
        assert!(sys.smmu.is_enabled());
        let f = sys.smmu.features();
        assert!(f.stage1 && f.stage2 && f.nesting && f.ril);
        assert_eq!(f.coherent, coh == Coherency::Coherent);
        assert!(
            sys.smmu.strtab_two_level(),
            "16-bit SIDs use a 2-level table"
        );
        // The global invalidations went through the queue and completed.
        let st = sys.smmu.stats();
        assert_eq!(st.by_opcode[0x04], 1, "CFGI_ALL");
        assert_eq!(st.by_opcode[0x30], 1, "TLBI_NSNH_ALL");
        assert_eq!(st.syncs, 1);
        // A stream whose level-2 table was never installed is an invalid
        // stream ID (level-1 descriptor with Span 0).
        let err = sys
            .model
            .dma_write(&DmaRequest::write(5, 0x1000, 4), &[1; 4])
            .unwrap_err();
        assert_eq!(
            err.event_type(),
            Some(smmuv3_model::EventType::CBadStreamId)
        );
        let evs = sys.smmu.drain_events().unwrap().events;
        assert_eq!(evs.len(), 1);
        assert_eq!((evs[0].ty, evs[0].sid), (EventType::BadStreamId, 5));
        // Once a neighbour is attached, the span's STEs abort silently.
        let up = sys.smmu.set_bypass(6).unwrap();
        assert_eq!(
            up.setup_syncs, 1,
            "level-2 table installed and its span invalidated"
        );
        let err = sys
            .model
            .dma_write(&DmaRequest::write(5, 0x1000, 4), &[1; 4])
            .unwrap_err();
        assert_eq!(err, DmaFault::StreamAbort);
        assert!(sys.smmu.drain_events().unwrap().events.is_empty());
        sys.smmu.shutdown().unwrap();
        assert!(!sys.smmu.is_enabled());
    });
}

#[test]
fn bypass_stream_reaches_physical_memory() {
    both(|coh| {
        let sys = system(coh);
        let pa = sys.mem.alloc(4096).unwrap();
        let up = sys.smmu.set_bypass(3).unwrap();
        assert_eq!(
            up.ste_syncs, 2,
            "abort -> bypass: unused SHCFG, then word 0"
        );
        dma_roundtrip(&sys, DmaRequest::write(3, pa, 8), pa, &[7; 8]).unwrap();
    });
}

fn check_fault(sys: &System, req: DmaRequest, ty: EventType) {
    let err = sys.model.dma_write(&req, &[0; 4]).unwrap_err();
    assert!(
        matches!(err, DmaFault::Terminated { recorded: true, .. }),
        "{err}"
    );
    let batch = sys.smmu.drain_events().unwrap();
    assert!(!batch.overflowed);
    assert_eq!(batch.events.len(), 1, "{:?}", batch.events);
    let ev = &batch.events[0];
    assert_eq!(ev.ty, ty, "{ev}");
    assert_eq!(ev.sid, req.sid);
    assert_eq!(ev.ssid, req.ssid);
    if let Some(f) = ev.fault {
        assert_eq!(f.addr, req.iova);
        assert!(!f.read);
    }
    assert!(!ev.to_string().is_empty());
}

fn map_use_unmap(sys: &System, dom: &mut HostedDomain, sid: u32, ssid: Option<u32>, iova: u64) {
    let pa = sys.mem.alloc(0x4000).unwrap();
    let cleans = sys.mem.cache_stats().lines_cleaned;
    dom.map(iova, pa, 0x4000, RW).unwrap();
    assert_eq!(dom.translate(iova + 0x1234), Some(pa + 0x1234));
    // Non-coherent: the tables were cleaned (the model reads only the
    // device view, so the DMA below would fail otherwise).
    if sys.mem.coherency() == Coherency::NonCoherent {
        assert!(sys.mem.cache_stats().lines_cleaned > cleans);
    } else {
        assert_eq!(
            sys.mem.cache_stats().lines_cleaned,
            cleans,
            "a coherent SMMU needs no cleans"
        );
    }
    let req = |off: u64| {
        let r = DmaRequest::write(sid, iova + off, 16);
        match ssid {
            Some(s) => r.with_ssid(s),
            None => r,
        }
    };
    let data: Vec<u8> = (0..16).collect();
    dma_roundtrip(sys, req(0x2000), pa + 0x2000, &data).unwrap();
    let before = sys.smmu.stats().tlbi_commands();
    assert_eq!(dom.unmap(iova, 0x4000).unwrap(), 0x4000);
    assert!(
        sys.smmu.stats().tlbi_commands() > before,
        "unmap invalidated"
    );
    // Nothing cached for any stream disagrees with memory now.
    let audit = sys.model.audit_caches();
    assert!(audit.is_clean(), "{audit:?}");
    // The TLB held the translation: only the invalidation makes this fault.
    check_fault(sys, req(0x2000), EventType::Translation);
    sys.mem.free(pa);
}

#[test]
fn stage1_map_dma_unmap_fault() {
    both(|coh| {
        let sys = system(coh);
        let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        let up = sys
            .smmu
            .attach(0x10, None, &dom, AttachOptions::default())
            .unwrap();
        assert_eq!(up.ste_syncs, 2);
        assert_eq!(up.cd_syncs, 0, "the CD is written before the STE uses it");
        map_use_unmap(&sys, &mut dom, 0x10, None, 0x1000_0000);
    });
}

#[test]
fn stage2_map_dma_unmap_fault() {
    both(|coh| {
        let sys = system(coh);
        let mut dom = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
        sys.smmu
            .attach(0x20, None, &dom, AttachOptions::default())
            .unwrap();
        map_use_unmap(&sys, &mut dom, 0x20, None, 0x8000_0000);
    });
}

#[test]
fn nested_map_dma_unmap_fault() {
    both(|coh| {
        let sys = system(coh);
        let s2 = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
        // The guest's view: IPA == PA for all of RAM (2 MiB blocks), so the
        // CD table and stage-1 tables are reachable at their addresses.
        s2.map(sys.mem.base(), sys.mem.base(), MEM, RW).unwrap();
        let mut s1 = HostedDomain::new_nested_stage1(&s2, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(0x30, None, &s2, AttachOptions::default())
            .unwrap();
        sys.smmu
            .attach(0x30, None, &s1, AttachOptions::default())
            .unwrap();
        map_use_unmap(&sys, &mut s1, 0x30, None, 0x2000_0000);
    });
}

#[test]
fn substreams_with_linear_and_two_level_cd_tables() {
    both(|coh| {
        let sys = system(coh);
        for (sid, bits) in [(0x40, 4u8), (0x41, 8)] {
            let opts = AttachOptions {
                ssid_bits: bits,
                ..Default::default()
            };
            let mut a = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
            let mut b = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
            sys.smmu.attach(sid, Some(1), &a, opts).unwrap();
            sys.smmu
                .attach(sid, Some((1 << bits) - 1), &b, opts)
                .unwrap();
            map_use_unmap(&sys, &mut a, sid, Some(1), 0x10_0000);
            map_use_unmap(&sys, &mut b, sid, Some((1 << bits) - 1), 0x10_0000);
            // SSID 0 is reserved for no-SSID traffic with S1DSS = Ssid0.
            assert!(matches!(
                sys.smmu.attach(sid, Some(0), &a, opts),
                Err(Error::BadSubstreamId(0))
            ));
        }
    });
}

#[test]
fn remap_never_shows_a_stale_translation() {
    both(|coh| {
        let sys = system(coh);
        let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(0x50, None, &dom, AttachOptions::default())
            .unwrap();
        let bufs: Vec<u64> = (0..4).map(|_| sys.mem.alloc(0x20_0000).unwrap()).collect();
        for (i, &b) in bufs.iter().enumerate() {
            sys.mem.cpu_write(b, &[i as u8 + 1; 64]).unwrap();
            sys.mem.clean(b, 64).unwrap();
        }
        let tlbi_before = sys.smmu.stats().tlbi_commands();
        let mut unmaps = 0;
        // Alternate 4K pages and a 2M block over the same IOVA, reading
        // through the TLB each time: the model keeps stale entries until
        // they are invalidated, so a missing TLBI would show old data.
        for round in 0..8 {
            let b = bufs[round % 4];
            let len = if round % 2 == 0 { 0x1000 } else { 0x20_0000 };
            dom.map(0x20_0000, b, len, RW).unwrap();
            let mut got = [0u8; 16];
            sys.model
                .dma_read(&DmaRequest::read(0x50, 0x20_0000, 16), &mut got)
                .unwrap();
            assert_eq!(got, [round as u8 % 4 + 1; 16], "round {round}");
            assert_eq!(dom.unmap(0x20_0000, len).unwrap(), len);
            let audit = sys.model.audit_caches();
            assert!(audit.is_clean(), "round {round}: {audit:?}");
            unmaps += 1;
        }
        let tlbis = sys.smmu.stats().tlbi_commands() - tlbi_before;
        // RIL: one range command per unmap (leaf-only, exact range), plus
        // one walk-cache flush each time a 2 MiB block replaces the emptied
        // level-3 table left by the previous 4K round.
        assert_eq!(tlbis, unmaps + 4);
    });
}

#[test]
fn hypervisor_stage2_at_vmid0() {
    both(|coh| {
        let sys = system(coh);
        // The host's stage 2 as a hypervisor keeps it: VMID 0, identity.
        let mut host = HostedDomain::new_stage2_with_vmid(&sys.smmu, Granule::K4, 40, 0).unwrap();
        assert_eq!(host.kind(), smmuv3::DomainKind::Stage2 { vmid: 0 });
        assert!(
            HostedDomain::new_stage2_with_vmid(&sys.smmu, Granule::K4, 40, 0).is_err(),
            "VMID 0 taken"
        );
        host.map(sys.mem.base(), sys.mem.base(), MEM, RW).unwrap();
        sys.smmu
            .attach(0x60, None, &host, AttachOptions::default())
            .unwrap();
        let pa = sys.mem.alloc(0x2000).unwrap();
        dma_roundtrip(&sys, DmaRequest::write(0x60, pa, 8), pa, &[5; 8]).unwrap();
        // Donating the page to the hypervisor: unmap it from the shadow
        // (the 2 MiB block splits) and the device can no longer reach it.
        assert_eq!(host.unmap(pa, 0x1000).unwrap(), 0x1000);
        let audit = sys.model.audit_caches();
        assert!(audit.is_clean(), "{coh:?}: {audit:?}");
        check_fault(&sys, DmaRequest::write(0x60, pa, 4), EventType::Translation);
        // Its neighbour in the same former block still works.
        let next = pa + 0x1000;
        dma_roundtrip(&sys, DmaRequest::write(0x60, next, 8), next, &[6; 8]).unwrap();
        // With the split table now cached too, nothing cached is stale.
        let audit = sys.model.audit_caches();
        assert!(audit.is_clean(), "{coh:?}: {audit:?}");
        assert!(audit.checked > 0, "{audit:?}");
    });
}

/// Cache-line cleans and TLBI commands of one map and one unmap of 16
/// pages, counted: the page table cleans each dirty line of leaves once,
/// the driver cleans only the queue line(s) its commands occupy, and the
/// unmap costs one range TLBI and one CMD_SYNC.
#[test]
fn cleans_and_tlbis_are_counted_and_minimal() {
    both(|coh| {
        let sys = system(coh);
        let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(0x70, None, &dom, AttachOptions::default())
            .unwrap();
        let pa = sys.mem.alloc(16 * 4096).unwrap();
        // Build the table levels first, so only leaves change below.
        dom.map(0x50_0000 + 0x1_0000, pa, 4096, RW).unwrap();
        let lines = |s: &System| s.mem.cache_stats().lines_cleaned;
        let (l0, c0) = (lines(&sys), sys.smmu.stats());
        dom.map(0x50_0000, pa, 16 * 4096, RW).unwrap();
        let (l1, c1) = (lines(&sys), sys.smmu.stats());
        assert_eq!(c1.commands(), c0.commands(), "a map needs no command");
        dom.unmap(0x50_0000, 16 * 4096).unwrap();
        let (l2, c2) = (lines(&sys), sys.smmu.stats());
        assert_eq!(c2.tlbi_commands() - c1.tlbi_commands(), 1);
        assert_eq!(c2.syncs - c1.syncs, 1);
        if coh == Coherency::Coherent {
            assert_eq!((l1 - l0, l2 - l1), (0, 0));
        } else {
            // 16 leaves = 128 bytes = 2 lines, written by map and cleared by
            // unmap; the two commands occupy 1 or 2 queue lines.
            assert_eq!(l1 - l0, 2, "map cleans");
            assert!((3..=4).contains(&(l2 - l1)), "unmap cleans {}", l2 - l1);
        }
        eprintln!(
            "{coh:?}: map 16 pages: {} lines cleaned, 0 commands; unmap: {} lines cleaned, {} TLBI, {} CMD_SYNC",
            l1 - l0,
            l2 - l1,
            c2.tlbi_commands() - c1.tlbi_commands(),
            c2.syncs - c1.syncs
        );
    });
}

#[test]
fn every_granule_on_both_stages() {
    let sys = system(Coherency::NonCoherent);
    let mut sid = 0x80;
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        let size = g.size();
        for stage2 in [false, true] {
            let mut dom = if stage2 {
                HostedDomain::new_stage2(&sys.smmu, g, 40).unwrap()
            } else {
                HostedDomain::new_stage1(&sys.smmu, g, 48).unwrap()
            };
            sys.smmu
                .attach(sid, None, &dom, AttachOptions::default())
                .unwrap();
            let pa = sys.mem.alloc(2 * size).unwrap();
            let iova = 0x4000_0000;
            dom.map(iova, pa, 2 * size, RW).unwrap();
            dma_roundtrip(
                &sys,
                DmaRequest::write(sid, iova + size + 8, 8),
                pa + size + 8,
                &[3; 8],
            )
            .unwrap();
            let tlbis = sys.smmu.stats().tlbi_commands();
            dom.unmap(iova, 2 * size).unwrap();
            assert_eq!(
                sys.smmu.stats().tlbi_commands() - tlbis,
                1,
                "{g:?} stage2={stage2}"
            );
            let audit = sys.model.audit_caches();
            assert!(audit.is_clean(), "{g:?} stage2={stage2}: {audit:?}");
            check_fault(
                &sys,
                DmaRequest::write(sid, iova + size + 8, 4),
                EventType::Translation,
            );
            sid += 1;
        }
    }
}

/// `Smmu::set_interrupts` enables exactly the event and GERROR sources it
/// is given (others dropped), and the event line then fires; the driver
/// itself leaves every source off.
#[test]
fn set_interrupts_enables_only_the_sources_asked_for() {
    use smmuv3::env::RegisterFrame;
    use smmuv3::regs::{self, irq_ctrl};
    use smmuv3_model::IrqLine;
    use std::sync::{Arc, Mutex};
    let sys = system(Coherency::Coherent);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    sys.model
        .set_irq_handler(Some(Arc::new(move |l| seen.lock().unwrap().push(l))));
    // Stream 5 has no level-2 table: C_BAD_STREAMID on every transaction.
    let fault = || {
        let req = DmaRequest::write(5, 0x1000, 4);
        assert!(sys.model.dma_write(&req, &[1; 4]).is_err());
        sys.smmu.drain_events().unwrap().events.len()
    };
    assert_eq!(fault(), 1);
    assert!(lines.lock().unwrap().is_empty(), "off after bring-up");

    let ev = irq_ctrl::EVENTQ_IRQEN.mask() as u32;
    let priq = irq_ctrl::PRIQ_IRQEN.mask() as u32;
    sys.smmu.set_interrupts(ev | priq).unwrap();
    assert_eq!(sys.smmu.regs().read32(regs::IRQ_CTRL), ev, "PRIQ dropped");
    assert_eq!(sys.smmu.regs().read32(regs::IRQ_CTRLACK), ev);
    assert_eq!(fault(), 1);
    assert_eq!(*lines.lock().unwrap(), [IrqLine::EventQ]);

    sys.smmu.set_interrupts(0).unwrap();
    assert_eq!(fault(), 1);
    assert_eq!(lines.lock().unwrap().len(), 1, "off again");
    sys.model.set_irq_handler(None);
}
