//! Regressions of the io-pgtable/driver seam, on the model: after every
//! unmap the device cannot reach the old memory, whatever happened in the
//! calls before; stage-2 changes under nested streams drop combined
//! entries; VMID 0 is a stage 2 like any other; every doorbell and every
//! map is ordered by a device barrier.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use io_pgtable::env::{AllocError, CacheError, CacheMaintenance, TableBlock, TableMemory};
use io_pgtable::{Granule, Prot};
use sim_memory::{Coherency, SimMemory};
use smmuv3::env::CacheInvalidate;
use smmuv3::{AttachOptions, Domain, Smmu, SmmuConfig};
use smmuv3_hosted::{HostedDomain, MEM_BASE, ModelFrame, PollClock, SimDmaMemory, System};
use smmuv3_model::{DmaFault, DmaRequest, ModelConfig, SmmuModel};

const MEM: u64 = 32 << 20;
const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

fn system(coh: Coherency) -> System {
    System::new(MEM, coh, ModelConfig::default(), SmmuConfig::default()).unwrap()
}

fn both(f: impl Fn(Coherency)) {
    f(Coherency::Coherent);
    f(Coherency::NonCoherent);
}

fn reaches(model: &SmmuModel, sid: u32, iova: u64) -> Result<(), DmaFault> {
    let mut b = [0u8; 8];
    model.dma_read(&DmaRequest::read(sid, iova, 8), &mut b)
}

/// Defect 1: the driver used to remember, across calls, ranges it had
/// flushed as walk caches, and skipped later invalidations inside them.
#[test]
fn unmap_shared_does_not_trust_flushes_of_earlier_calls() {
    both(|coh| {
        let sys = system(coh);
        let dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(3, None, &dom, AttachOptions::default())
            .unwrap();
        let pa = sys.mem.alloc(2 * M2).unwrap();
        let x = 0x4000_0000;
        // 512 pages under one level-3 table, then the whole 2 MiB goes (the
        // table is disconnected and flushed).
        for k in 0..512 {
            dom.map(x + k * K4, pa + k * K4, K4, RW).unwrap();
        }
        assert_eq!(dom.unmap_shared(x, M2).unwrap(), M2);
        // New pages over the top of it, and a 2 MiB block beside.
        let top = x + M2 - 16 * K4;
        dom.map(top, pa, 16 * K4, RW).unwrap();
        dom.map(x + M2, pa, M2, RW).unwrap();
        reaches(&sys.model, 3, top).unwrap();
        reaches(&sys.model, 3, x + M2).unwrap();
        // One unmap covering both: 4K pages, then a block (the page size
        // changes, so the pages are invalidated first). The flush of
        // [x, x + 2M) an earlier call made says nothing about the pages
        // mapped since.
        assert_eq!(dom.unmap_shared(top, 16 * K4 + M2).unwrap(), 16 * K4 + M2);
        assert!(reaches(&sys.model, 3, top).is_err(), "{coh:?}: stale page");
        assert!(
            reaches(&sys.model, 3, x + M2).is_err(),
            "{coh:?}: stale block"
        );
        sys.smmu.drain_events().unwrap();
    });
}

/// Memory that lets the device walk after every clean: the walker may
/// cache what it sees at any of those moments, as the architecture allows.
struct WalkingMem {
    inner: SimDmaMemory,
    probe: Probe,
}

/// What the device does after each clean (shared with the test).
type Probe = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

// SAFETY: forwards every memory operation to SimDmaMemory.
unsafe impl TableMemory for WalkingMem {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        self.inner.alloc_table(size)
    }
    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        // SAFETY: forwarded caller guarantee.
        unsafe { self.inner.free_table(block, size) }
    }
    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.inner.phys_to_cpu(phys)
    }
}

impl CacheMaintenance for WalkingMem {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        let r = self.inner.clean(cpu, phys, len);
        if let Ok(p) = self.probe.try_lock() {
            if let Some(p) = &*p {
                p();
            }
        }
        r
    }
    fn device_write_barrier(&self) {
        self.inner.device_write_barrier()
    }
    fn full_barrier(&self) {
        self.inner.full_barrier()
    }
}

impl CacheInvalidate for WalkingMem {
    fn invalidate(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.inner.invalidate(cpu, phys, len)
    }
}

type WalkingEnv = (ModelFrame, WalkingMem, PollClock);

/// Defect 2: a partial unmap of a block splits it; the walker may cache the
/// new 4K leaf between the table link and the leaf clear, so the page taken
/// out must be invalidated after the clear even though the split already
/// flushed the block's range.
#[test]
fn partial_unmap_of_a_block_invalidates_the_page_taken_out() {
    let mem = Arc::new(SimMemory::new(MEM_BASE, MEM, Coherency::NonCoherent).unwrap());
    let model = Arc::new(SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap());
    let probe: Probe = Arc::default();
    let wmem = WalkingMem {
        inner: SimDmaMemory::new(mem.clone()),
        probe: probe.clone(),
    };
    let smmu: Smmu<WalkingEnv> = Smmu::new(
        ModelFrame::new(model.clone()),
        wmem,
        PollClock::default(),
        SmmuConfig::default(),
    )
    .unwrap();
    let mut dom = Domain::new_stage1(&smmu, Granule::K4, 48).unwrap();
    smmu.attach(9, None, &dom, AttachOptions::default())
        .unwrap();
    // The buddy allocator aligns blocks to their size.
    let pa = mem.alloc(M2).unwrap();
    let x = 0x8000_0000;
    dom.map(x, pa, M2, RW).unwrap();
    reaches(&model, 9, x).unwrap();
    let walks = Arc::new(AtomicU64::new(0));
    {
        let (model, walks) = (model.clone(), walks.clone());
        *probe.lock().unwrap() = Some(Box::new(move || {
            let _ = model.translate(&DmaRequest::read(9, x, 8));
            walks.fetch_add(1, Ordering::Relaxed);
        }));
    }
    assert_eq!(dom.unmap(x, K4).unwrap(), K4);
    *probe.lock().unwrap() = None;
    assert!(walks.load(Ordering::Relaxed) > 0, "the device walked");
    assert!(
        reaches(&model, 9, x).is_err(),
        "the page taken out of the block still translates"
    );
    reaches(&model, 9, x + K4).unwrap();
    smmu.drain_events().unwrap();
}

/// Defect 3: TLBI_S2_IPA need not remove combined stage 1+2 entries, so a
/// stage-2 unmap under a live nested stream must also drop the VMID's
/// stage-1 entries, and only then.
#[test]
fn stage2_unmap_under_a_nested_stream_drops_combined_entries() {
    both(|coh| {
        let sys = system(coh);
        let mut s2 = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
        s2.map(sys.mem.base(), sys.mem.base(), MEM, RW).unwrap();
        let s1 = HostedDomain::new_nested_stage1(&s2, Granule::K4, 48).unwrap();
        sys.smmu
            .attach_nested(0x40, None, &s2, &s1, AttachOptions::default())
            .unwrap();
        let ipa = sys.mem.alloc(K4).unwrap();
        s1.map(0x1000_0000, ipa, K4, RW).unwrap();
        sys.model
            .dma_write(&DmaRequest::write(0x40, 0x1000_0000, 4), &[7; 4])
            .unwrap();
        let before = sys.smmu.stats();
        // The hypervisor takes the page away at stage 2.
        assert_eq!(s2.unmap(ipa, K4).unwrap(), K4);
        let after = sys.smmu.stats();
        // The page sat in a 2 MiB block: the split's walk flush and the
        // final leaf invalidation each drop the combined entries (a stale
        // 2 MiB combined entry beside new 4K ones could conflict).
        let nh_all = after.by_opcode[0x10] - before.by_opcode[0x10];
        assert_eq!(nh_all, 2, "split flush + leaf invalidation");
        // Its neighbour, now under a table: exactly one of each.
        let next = ipa + K4;
        let before = sys.smmu.stats();
        assert_eq!(s2.unmap(next, K4).unwrap(), K4);
        let after = sys.smmu.stats();
        let nh_all = after.by_opcode[0x10] - before.by_opcode[0x10];
        assert_eq!(nh_all, 1, "one TLBI_NH_ALL for the nest parent");
        assert_eq!(after.syncs - before.syncs, 2, "S2_IPA+SYNC, NH_ALL+SYNC");
        s2.map(next, next, K4, RW).unwrap();
        let err = sys
            .model
            .dma_write(&DmaRequest::write(0x40, 0x1000_0000, 4), &[9; 4])
            .unwrap_err();
        assert!(matches!(err, DmaFault::Terminated { .. }), "{coh:?}: {err}");
        let mut back = [0u8; 4];
        sys.mem.invalidate(ipa, 4).unwrap();
        sys.mem.cpu_read(ipa, &mut back).unwrap();
        assert_eq!(back, [7; 4], "the page is unchanged");
        sys.smmu.drain_events().unwrap();
    });
}

#[test]
fn a_stage2_domain_without_nested_users_sends_no_stage1_invalidation() {
    let sys = system(Coherency::Coherent);
    let mut s2 = HostedDomain::new_stage2(&sys.smmu, Granule::K4, 40).unwrap();
    let pa = sys.mem.alloc(K4).unwrap();
    s2.map(pa, pa, K4, RW).unwrap();
    sys.smmu
        .attach(0x41, None, &s2, AttachOptions::default())
        .unwrap();
    let before = sys.smmu.stats();
    s2.unmap(pa, K4).unwrap();
    let after = sys.smmu.stats();
    assert_eq!(after.by_opcode[0x10], before.by_opcode[0x10]);
    assert_eq!(after.by_opcode[0x2a] - before.by_opcode[0x2a], 1);
    assert_eq!(after.syncs - before.syncs, 1);
}

/// Defect 4: VMID 0 was also the driver's "not nested" marker, so a plain
/// stage-1 domain attached over a VMID-0 stage 2 left the STE nested.
#[test]
fn a_plain_stage1_replaces_a_vmid0_stage2() {
    both(|coh| {
        let sys = system(coh);
        let host = HostedDomain::new_stage2_with_vmid(&sys.smmu, Granule::K4, 40, 0).unwrap();
        host.map(sys.mem.base(), sys.mem.base(), MEM, RW).unwrap();
        sys.smmu
            .attach(0x50, None, &host, AttachOptions::default())
            .unwrap();
        let pa = sys.mem.alloc(K4).unwrap();
        reaches(&sys.model, 0x50, pa).unwrap();
        let s1 = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        s1.map(0x2000_0000, pa, K4, RW).unwrap();
        sys.smmu
            .attach(0x50, None, &s1, AttachOptions::default())
            .unwrap();
        // Stage 1 only: the IOVA translates, the old IPA does not.
        reaches(&sys.model, 0x50, 0x2000_0000).unwrap();
        assert!(reaches(&sys.model, 0x50, pa).is_err());
        assert_eq!(host.attached(), vec![]);
        sys.smmu.drain_events().unwrap();
    });
}

/// Defect 5: on a coherent SMMU nothing ordered the stores the device must
/// see before the doorbell; every CMDQ_PROD write must follow a barrier
/// issued after the previous one, and `map` must issue one before it
/// returns.
#[test]
fn every_doorbell_and_every_map_is_ordered_by_a_barrier() {
    let sys = system(Coherency::Coherent);
    let barriers = sys.smmu.mem().barrier_counter();
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let bad = Arc::new(AtomicU64::new(0));
    let doorbells = Arc::new(AtomicU64::new(0));
    {
        let (barriers, last, bad, doorbells) = (
            barriers.clone(),
            last.clone(),
            bad.clone(),
            doorbells.clone(),
        );
        sys.smmu
            .regs()
            .set_hook(Some(Arc::new(move |off: usize, _v: u64| {
                if off == smmuv3::regs::CMDQ_PROD {
                    let now = barriers.load(Ordering::Relaxed);
                    if last.swap(now, Ordering::Relaxed) == now {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    doorbells.fetch_add(1, Ordering::Relaxed);
                }
            })));
    }
    let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(0x60, None, &dom, AttachOptions::default())
        .unwrap();
    let pa = sys.mem.alloc(16 * K4).unwrap();
    for k in 0..16 {
        let b = barriers.load(Ordering::Relaxed);
        dom.map(0x3000_0000 + k * K4, pa + k * K4, K4, RW).unwrap();
        assert!(
            barriers.load(Ordering::Relaxed) > b,
            "map {k} issued no barrier"
        );
    }
    for k in 0..16 {
        dom.unmap(0x3000_0000 + k * K4, K4).unwrap();
    }
    sys.smmu.regs().set_hook(None);
    assert!(doorbells.load(Ordering::Relaxed) >= 17);
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "doorbells without a barrier"
    );
}

/// Batching: maps deferred and synced once clean each dirty line once.
#[test]
fn a_batch_of_deferred_maps_cleans_each_dirty_line_once() {
    let sys = system(Coherency::NonCoherent);
    let dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    let pa = sys.mem.alloc(256 * K4).unwrap();
    let iova = 0x5000_0000;
    // Build the table path first so only leaves change below.
    dom.map(iova + M2, pa, K4, RW).unwrap();
    let l0 = sys.mem.cache_stats().lines_cleaned;
    for k in 0..256 {
        dom.map_deferred(iova + k * K4, pa + k * K4, K4, RW)
            .unwrap();
    }
    dom.sync_map(iova, 256 * K4).unwrap();
    let lines = sys.mem.cache_stats().lines_cleaned - l0;
    // 256 leaves = 2 KiB = 32 lines, plus the one level-3 table (cleaned
    // whole before it was linked: 64 lines) and its link (1 line).
    assert_eq!(lines, 32 + 64 + 1);
    sys.smmu
        .attach(0x61, None, &dom, AttachOptions::default())
        .unwrap();
    for k in [0, 7, 255] {
        reaches(&sys.model, 0x61, iova + k * K4).unwrap();
    }
}

/// Compaction frees the tables smaller unmaps left empty, after flushing
/// their walk-cache entries: the device reaches nothing of the old range,
/// and a new mapping through fresh tables works.
#[test]
fn compaction_on_the_model_leaves_nothing_reachable() {
    both(|coh| {
        let sys = system(coh);
        let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(0x62, None, &dom, AttachOptions::default())
            .unwrap();
        let pa = sys.mem.alloc(16 * K4).unwrap();
        let iova = 0x7000_0000;
        dom.map(iova, pa, 16 * K4, RW).unwrap();
        reaches(&sys.model, 0x62, iova + 5 * K4).unwrap();
        // Page by page: each unmap is smaller than the table it empties.
        for k in 0..16 {
            assert_eq!(dom.unmap(iova + k * K4, K4).unwrap(), K4);
        }
        let before = sys.smmu.stats().tlbi_commands();
        // The level-3, level-2 and level-1 tables under the range go.
        assert_eq!(dom.compact().unwrap(), 3);
        assert!(
            sys.smmu.stats().tlbi_commands() >= before + 3,
            "walk flushes"
        );
        for k in [0, 5, 15] {
            assert!(reaches(&sys.model, 0x62, iova + k * K4).is_err(), "{coh:?}");
        }
        dom.map(iova + K4, pa, K4, RW).unwrap();
        reaches(&sys.model, 0x62, iova + K4).unwrap();
        sys.smmu.drain_events().unwrap();
    });
}
