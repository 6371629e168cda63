//! vm-memory's `Iotlb` stays exactly as fresh as the model's caches: after
//! every invalidation the driver makes the model honour (range and ASID
//! TLBIs from unmaps, CFGI from attach/detach/bypass, disabling the SMMU),
//! each `Iotlb` entry is present if and only if the model would still serve
//! that translation from its caches, and maps to the same address. So no
//! stale `Iotlb` entry survives, and no live one is dropped.

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{ModelConfig, StreamIommu};
use vm_memory::iommu::Iommu;
use vm_memory::{GuestAddress, Permissions};

const SID: u32 = 5;
const IOVA: u64 = 0x1000_0000;
const CHUNK: u64 = 0x4000;
const CHUNKS: u64 = 16;
const PAGE: u64 = 4096;

fn pages() -> impl Iterator<Item = u64> {
    (0..CHUNKS * CHUNK / PAGE).map(|i| IOVA + i * PAGE)
}

/// Translates every page through the `Iommu` (misses walk and fill).
fn fill(io: &StreamIommu) {
    for p in pages() {
        let _ = io.translate(GuestAddress(p), PAGE as usize, Permissions::ReadWrite);
    }
}

/// The invariant; returns how many pages the `Iotlb` holds.
fn check(sys: &System, dom: Option<&HostedDomain>, io: &StreamIommu, what: &str) -> usize {
    let mut held = 0;
    for p in pages() {
        let got = io.iotlb_lookup(p, Permissions::Read);
        let model = sys
            .model
            .cached_translation(SID, None, p)
            .filter(|u| u.read)
            .map(|u| u.pa_base + (p - u.iova_base));
        assert_eq!(got, model, "{what}: iova {p:#x}: Iotlb vs model cache");
        if let (Some(pa), Some(d)) = (got, dom) {
            // And what is cached is what the page table says now.
            assert_eq!(d.translate(p), Some(pa), "{what}: iova {p:#x} stale");
        }
        held += usize::from(got.is_some());
    }
    // Whatever else the model caches agrees with memory too.
    let audit = sys.model.audit_caches();
    assert!(audit.is_clean(), "{what}: {audit:?}");
    held
}

#[test]
fn no_stale_iotlb_entry_survives_an_invalidation() {
    let sys = System::new(
        32 << 20,
        Coherency::NonCoherent,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    let bufs: Vec<u64> = (0..CHUNKS).map(|_| sys.mem.alloc(CHUNK).unwrap()).collect();
    for (i, b) in bufs.iter().enumerate() {
        dom.map(IOVA + i as u64 * CHUNK, *b, CHUNK, Prot::READ | Prot::WRITE)
            .unwrap();
    }
    let io = sys.model.iommu(SID, None);
    let all = (CHUNKS * CHUNK / PAGE) as usize;
    fill(&io);
    assert_eq!(check(&sys, Some(&dom), &io, "filled"), all);

    // A narrow unmap drops exactly its pages.
    dom.unmap(IOVA + 3 * CHUNK, CHUNK).unwrap();
    let per_chunk = (CHUNK / PAGE) as usize;
    assert_eq!(
        check(&sys, Some(&dom), &io, "unmap chunk 3"),
        all - per_chunk
    );
    assert!(
        io.translate(GuestAddress(IOVA + 3 * CHUNK), 8, Permissions::Read)
            .is_err()
    );
    // Remapped elsewhere: the Iotlb learns the new address on the next miss.
    let fresh = sys.mem.alloc(CHUNK).unwrap();
    dom.map(IOVA + 3 * CHUNK, fresh, CHUNK, Prot::READ).unwrap();
    fill(&io);
    assert_eq!(check(&sys, Some(&dom), &io, "remap read-only"), all);
    assert_eq!(
        io.iotlb_lookup(IOVA + 3 * CHUNK, Permissions::Read),
        Some(fresh)
    );
    assert_eq!(io.iotlb_lookup(IOVA + 3 * CHUNK, Permissions::Write), None);

    // Unmapping across chunks (one range, several leaves).
    dom.unmap(IOVA + 5 * CHUNK, 3 * CHUNK).unwrap();
    assert_eq!(
        check(&sys, Some(&dom), &io, "unmap chunks 5-7"),
        all - 3 * per_chunk
    );

    // A whole-domain flush (ASID invalidation) drops everything.
    dom.flush_all().unwrap();
    assert_eq!(check(&sys, Some(&dom), &io, "flush_all"), 0);
    fill(&io);
    assert_eq!(check(&sys, Some(&dom), &io, "refill"), all - 3 * per_chunk);

    // Bypass (CFGI_STE): the old translations go, identity ones come.
    sys.smmu.set_bypass(SID).unwrap();
    assert_eq!(check(&sys, None, &io, "bypass"), 0);
    fill(&io);
    assert_eq!(check(&sys, None, &io, "bypass filled"), all);
    assert_eq!(io.iotlb_lookup(IOVA + 8, Permissions::Read), Some(IOVA + 8));

    // Attach again, then detach (the stream aborts).
    sys.smmu
        .attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    assert_eq!(check(&sys, Some(&dom), &io, "attach"), 0);
    fill(&io);
    assert_eq!(
        check(&sys, Some(&dom), &io, "attach filled"),
        all - 3 * per_chunk
    );
    sys.smmu.detach(SID, None).unwrap();
    assert_eq!(check(&sys, None, &io, "detach"), 0);
    assert!(
        io.translate(GuestAddress(IOVA), 8, Permissions::Read)
            .is_err()
    );

    // Attach, fill, and disable the SMMU.
    sys.smmu
        .attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    fill(&io);
    assert!(check(&sys, Some(&dom), &io, "before shutdown") > 0);
    sys.smmu.shutdown().unwrap();
    check(&sys, None, &io, "shutdown");
    assert!(sys.model.stats().iotlb_invalidations > 0);
}

#[test]
fn failed_translation_records_the_event_and_fills_nothing() {
    let sys = System::new(
        8 << 20,
        Coherency::Coherent,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    let dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    let buf = sys.mem.alloc(PAGE).unwrap();
    dom.map(IOVA, buf, PAGE, Prot::READ).unwrap();
    let io = sys.model.iommu(SID, None);
    // Read-only: a write fails with F_PERMISSION, a read past it with
    // F_TRANSLATION, each recorded by the model.
    let e = io
        .translate(GuestAddress(IOVA), 8, Permissions::Write)
        .unwrap_err();
    assert!(e.to_string().contains("FPermission"), "{e}");
    let e = io
        .translate(GuestAddress(IOVA + PAGE - 4), 8, Permissions::Read)
        .unwrap_err();
    assert!(e.to_string().contains("FTranslation"), "{e}");
    let events = sys.smmu.drain_events().unwrap().events;
    let kinds: Vec<_> = events.iter().map(|e| e.ty).collect();
    assert_eq!(
        kinds,
        [
            smmuv3::event::EventType::Permission,
            smmuv3::event::EventType::Translation
        ]
    );
    // The read that did resolve is the only Iotlb content.
    assert_eq!(io.iotlb_units(), 1);
    let mut it = io
        .translate(GuestAddress(IOVA + 16), 8, Permissions::Read)
        .unwrap();
    assert_eq!(it.next().unwrap().base, GuestAddress(buf + 16));
    // Without an Iotlb the same request is served privately each time.
    let uncached = sys.model.iommu_uncached(SID, None);
    let before = sys.model.stats().translations;
    for _ in 0..3 {
        let mut it = uncached
            .translate(GuestAddress(IOVA + 16), 8, Permissions::Read)
            .unwrap();
        assert_eq!(it.next().unwrap().base, GuestAddress(buf + 16));
    }
    assert_eq!(sys.model.stats().translations - before, 3);
    // A range that wraps the address space is a typed error, not a panic.
    for io in [&io, &uncached] {
        let e = io
            .translate(GuestAddress(u64::MAX - 0xfff), 0x2000, Permissions::Read)
            .unwrap_err();
        assert!(e.to_string().contains("wraps"), "{e}");
    }
}
