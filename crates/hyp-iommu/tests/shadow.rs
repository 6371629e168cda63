//! The shadow stage 2 on the model: host devices reach host pages only;
//! a donated page is out of reach when the call returns while its
//! neighbours in the same former block never fault (checked by a DMA
//! thread running through the split); a reclaimed page is reachable again
//! and reads as scrubbed; one invalidation per operation and SMMU.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Fixture, Setup, is_s2_translation_fault};
use hyp_iommu::{Mode, Owner};
use io_pgtable::layout::s2;
use sim_memory::Coherency;

const P: u64 = 4096;
const SID: u32 = 0x10;

fn pattern(pa: u64) -> [u8; 8] {
    (pa ^ 0x5a5a_0000_0000_0000).to_le_bytes()
}

fn fill(fx: &Fixture) {
    for k in 0..fx.ram.len / P {
        let pa = fx.page(k);
        fx.cpu_write(pa, &pattern(pa));
    }
}

fn attach_all(fx: &mut Fixture) {
    for s in 0..fx.setup.smmus {
        fx.hyp.attach_host_stream(s, SID).unwrap();
    }
}

/// Returns the level of the leaf mapping `pa` in the shadow.
fn leaf_level(fx: &Fixture, pa: u64) -> u8 {
    let w = fx.hyp.shadow().page_table().walk(pa);
    w.steps().last().unwrap().level
}

#[test]
fn host_streams_go_from_bypass_to_the_shadow() {
    for coherency in [Coherency::Coherent, Coherency::NonCoherent] {
        let mut fx = Fixture::new(Setup {
            coherency,
            ..Setup::default()
        });
        fill(&fx);
        let hyp_page = fx.map.hyp()[0].base;
        let smmu = fx.hyp.smmu(0).unwrap();
        smmu.set_bypass(SID).unwrap();
        // In bypass the device reaches everything, the hypervisor too.
        assert!(fx.dma_read(0, SID, hyp_page, 8).is_ok());
        fx.hyp.attach_host_stream(0, SID).unwrap();
        let pa = fx.page(3);
        assert_eq!(fx.dma_read(0, SID, pa, 8).unwrap(), pattern(pa));
        fx.dma_write(0, SID, pa, &[7; 8]).unwrap();
        assert_eq!(fx.cpu_read(pa, 8), [7; 8]);
        // Through the shadow the hypervisor's memory faults at stage 2.
        let f = fx.dma_read(0, SID, hyp_page, 8).unwrap_err();
        assert!(is_s2_translation_fault(&f), "{f:?}");
        // MMIO is mapped with device attributes; RAM cacheable.
        let pt = fx.hyp.shadow().page_table();
        assert_eq!(
            pt.translate(common::MMIO.base + 0x40),
            Some(common::MMIO.base + 0x40)
        );
        assert_eq!(pt.translate(hyp_page), None);
        let memattr = |pa: u64| {
            let leaf = pt.walk(pa).steps().last().unwrap().desc;
            (leaf >> s2::MEMATTR_SHIFT) & 0xf
        };
        assert_eq!(memattr(common::MMIO.base), s2::MEMATTR_DEVICE_NGNRE);
        assert_eq!(memattr(pa), s2::MEMATTR_WB);
        let rw = s2::S2AP_READ | s2::S2AP_WRITE;
        for at in [pa, common::MMIO.base] {
            assert_eq!(
                pt.walk(at).steps().last().unwrap().desc & rw,
                rw,
                "{at:#x} read/write"
            );
        }
    }
}

/// Donates one page per 2 MiB block while a DMA thread reads every other
/// page of the host RAM and checks its data; no read may fault.
fn donate_under_concurrent_dma(setup: Setup) {
    let mut fx = Fixture::new(setup);
    fill(&fx);
    attach_all(&mut fx);
    let blocks = fx.ram.len >> 21;
    let targets: Vec<u64> = (0..blocks)
        .map(|b| fx.ram.base + (b << 21) + (b * 37 % 510 + 1) * P)
        .collect();
    if fx.hyp.mode() == Mode::Block {
        for &t in &targets {
            assert_eq!(leaf_level(&fx, t), 2, "RAM mapped with 2 MiB blocks");
        }
    } else {
        assert_eq!(leaf_level(&fx, targets[0]), 3);
    }
    // Every SMMU caches the translation of each target first, so only the
    // invalidation can make it fault afterwards.
    for s in 0..fx.setup.smmus {
        for &t in &targets {
            assert_eq!(fx.dma_read(s, SID, t, 8).unwrap(), pattern(t));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let models = fx.models.clone();
    let (base, pages) = (fx.ram.base, fx.ram.len / P);
    let skip = targets.clone();
    let reader = {
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let (mut reads, mut faults, mut wrong) = (0u64, 0u64, 0u64);
            let mut k = 0;
            while !stop.load(Ordering::Acquire) || reads < pages {
                let pa = base + (k % pages) * P;
                k += 7;
                if skip.contains(&pa) {
                    continue;
                }
                let m = &models[(k as usize) % models.len()];
                let mut buf = [0u8; 8];
                match m.dma_read(&smmuv3_model::DmaRequest::read(SID, pa, 8), &mut buf) {
                    Ok(()) if buf == pattern(pa) => {}
                    Ok(()) => wrong += 1,
                    Err(_) => faults += 1,
                }
                reads += 1;
                progress.fetch_add(1, Ordering::Release);
            }
            (reads, faults, wrong)
        })
    };
    let before: Vec<_> = (0..fx.setup.smmus)
        .map(|s| fx.hyp.smmu(s).unwrap().stats())
        .collect();
    // And at every register write the driver makes during a donation (the
    // doorbells of its TLBI and CMD_SYNC commands), the device reads both
    // neighbours of the page being donated: the split is never visible.
    let current = Arc::new(AtomicU64::new(0));
    let in_window = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    for s in 0..fx.setup.smmus {
        let (model, current, in_window) =
            (fx.models[s].clone(), current.clone(), in_window.clone());
        let hook: smmuv3_hosted::WriteHook = Arc::new(move |_, _| {
            let t = current.load(Ordering::Acquire);
            if t == 0 {
                return;
            }
            for pa in [t - P, t + P] {
                let mut buf = [0u8; 8];
                let ok = model
                    .dma_read(&smmuv3_model::DmaRequest::read(SID, pa, 8), &mut buf)
                    .is_ok_and(|()| buf == pattern(pa));
                let mut w = in_window.lock().unwrap();
                w.0 += 1;
                w.1 += u64::from(!ok);
            }
        });
        fx.hyp.smmu(s).unwrap().regs().set_hook(Some(hook));
    }
    let mut during = 0;
    for (g, &t) in targets.iter().enumerate() {
        // The reader is running (and keeps running between donations).
        let seen = progress.load(Ordering::Acquire);
        while progress.load(Ordering::Acquire) < seen + 64 {
            std::thread::yield_now();
        }
        let p0 = progress.load(Ordering::Acquire);
        current.store(t, Ordering::Release);
        fx.hyp.donate_to_guest(t, P, g as u16).unwrap();
        current.store(0, Ordering::Release);
        during += progress.load(Ordering::Acquire) - p0;
        // Out of reach the moment the call returns, on every SMMU.
        for s in 0..fx.setup.smmus {
            let f = fx.dma_read(s, SID, t, 8).unwrap_err();
            assert!(is_s2_translation_fault(&f), "{f:?}");
            let f = fx.dma_write(s, SID, t, &[0xee; 8]).unwrap_err();
            assert!(is_s2_translation_fault(&f), "{f:?}");
        }
        assert_eq!(
            fx.cpu_read(t, 8),
            pattern(t),
            "a faulting DMA changed memory"
        );
    }
    for (s, b) in before.iter().enumerate() {
        let a = fx.hyp.smmu(s).unwrap().stats();
        let n = targets.len() as u64;
        assert_eq!(
            a.syncs - b.syncs,
            2 * n,
            "SMMU {s}: S2 sync + NH_ALL sync per donation"
        );
        assert_eq!(
            a.by_opcode[0x10] - b.by_opcode[0x10],
            n,
            "SMMU {s}: one TLBI_NH_ALL per donation"
        );
    }
    stop.store(true, Ordering::Release);
    let (reads, faults, wrong) = reader.join().unwrap();
    let (window_dmas, window_bad) = *in_window.lock().unwrap();
    eprintln!(
        "{:?}: {reads} neighbour DMAs, {during} of them while a donation was in progress; {window_dmas} at the driver's doorbells",
        fx.hyp.mode()
    );
    // Each donation rings at least 2 doorbells per SMMU (TLBI + sync, twice).
    assert!(
        window_dmas >= 2 * 2 * targets.len() as u64,
        "{window_dmas} window DMAs"
    );
    assert_eq!(
        window_bad, 0,
        "a neighbour faulted or read wrong data inside a donation"
    );
    for s in 0..fx.setup.smmus {
        fx.hyp.smmu(s).unwrap().regs().set_hook(None);
    }
    assert!(reads >= pages, "the DMA thread ran ({reads} reads)");
    assert_eq!(
        (faults, wrong),
        (0, 0),
        "neighbours of donated pages faulted or read wrong data"
    );
    if fx.hyp.mode() == Mode::Block {
        let t = targets[0];
        assert_eq!(leaf_level(&fx, t + P), 3, "the block was split into pages");
    }
    // Reclaim: reachable again, scrubbed.
    for (g, &t) in targets.iter().enumerate() {
        fx.hyp.reclaim_from_guest(t, P, g as u16).unwrap();
        assert_eq!(fx.hyp.owner(t), Some(Owner::Host));
        for s in 0..fx.setup.smmus {
            assert_eq!(
                fx.dma_read(s, SID, t, 8).unwrap(),
                [0; 8],
                "reclaimed page not scrubbed"
            );
        }
        assert_eq!(fx.cpu_read(t, 8), [0; 8]);
        fx.dma_write(0, SID, t, &[3; 8]).unwrap();
        assert_eq!(fx.cpu_read(t, 8), [3; 8]);
    }
}

#[test]
fn block_mode_donation_splits_without_faulting_neighbours() {
    for coherency in [Coherency::Coherent, Coherency::NonCoherent] {
        donate_under_concurrent_dma(Setup {
            coherency,
            smmus: 2,
            host_ram: 32 << 20,
            ..Setup::default()
        });
    }
}

#[test]
fn leaf_mode_donation_never_faults_neighbours() {
    donate_under_concurrent_dma(Setup {
        smmus: 2,
        bbml: 1,
        ..Setup::default()
    });
}

#[test]
fn one_smmu_without_bbml2_makes_the_shadow_leaf_granular() {
    let fx = Fixture::new(Setup {
        bbml: 1,
        ..Setup::default()
    });
    assert_eq!(fx.hyp.mode(), Mode::Leaf);
    assert!((0..fx.ram.len / P).all(|k| leaf_level(&fx, fx.page(k)) == 3));
    let forced = Fixture::new(Setup {
        force_leaf: true,
        ..Setup::default()
    });
    assert_eq!(forced.hyp.mode(), Mode::Leaf);
    let block = Fixture::new(Setup::default());
    assert_eq!(block.hyp.mode(), Mode::Block);
    assert!(block.hyp.stats().table_bytes < forced.hyp.stats().table_bytes);
}

#[test]
fn a_batch_donation_costs_one_invalidation_per_smmu() {
    let mut fx = Fixture::new(Setup {
        smmus: 2,
        ..Setup::default()
    });
    fill(&fx);
    attach_all(&mut fx);
    let before: Vec<_> = (0..2).map(|s| fx.hyp.smmu(s).unwrap().stats()).collect();
    let inv0 = fx.hyp.stats().invalidations;
    // 1000 pages from an unaligned start: splits of several 2 MiB blocks,
    // whole 2 MiB blocks removed, pages cleared.
    let start = fx.page(5);
    fx.hyp.donate_to_hyp(start, 1000 * P).unwrap();
    assert_eq!(fx.hyp.stats().invalidations - inv0, 1);
    for (s, b) in before.iter().enumerate() {
        let a = fx.hyp.smmu(s).unwrap().stats();
        assert_eq!(a.syncs - b.syncs, 2, "SMMU {s}");
        assert_eq!(a.by_opcode[0x10] - b.by_opcode[0x10], 1);
        for k in [0, 1, 511, 512, 999] {
            assert!(fx.dma_read(s, SID, start + k * P, 8).is_err());
        }
        assert_eq!(
            fx.dma_read(s, SID, start - P, 8).unwrap(),
            pattern(start - P)
        );
        let after = start + 1000 * P;
        assert_eq!(fx.dma_read(s, SID, after, 8).unwrap(), pattern(after));
    }
    assert!((0..1000).all(|k| fx.hyp.owner(start + k * P) == Some(Owner::Hyp)));
    assert_eq!(fx.hyp.owner(start - P), Some(Owner::Host));
    assert_eq!(fx.hyp.owner(start + 1000 * P), Some(Owner::Host));
}

/// The table memory target, at build: 1 GiB of host RAM (plus the small
/// simulated part) costs block mode less than a hundredth of leaf mode.
#[test]
fn block_mode_tables_are_under_a_hundredth_of_leaf_mode() {
    let bytes = |force_leaf| {
        let fx = Fixture::new(Setup {
            host_ram: 2 << 20,
            extra_ram: 1 << 30,
            sim_size: 32 << 20,
            force_leaf,
            ..Setup::default()
        });
        // Every extra page is mapped, identity.
        let pt = fx.hyp.shadow().page_table();
        for k in [0u64, 1, 511, 512, (1 << 18) - 1] {
            let pa = common::EXTRA_BASE + k * P;
            assert_eq!(pt.translate(pa), Some(pa));
        }
        fx.hyp.stats().table_bytes
    };
    let (block, leaf) = (bytes(false), bytes(true));
    assert!(block * 100 < leaf, "block {block} bytes, leaf {leaf} bytes");
}

/// The shadow's geometry is what every SMMU can walk: the smallest sizes,
/// the common page sizes, coherent and block mode only if all are.
#[test]
fn geometry_is_the_intersection_of_every_smmu() {
    use std::sync::Arc;

    use hyp_iommu::Geometry;
    use smmuv3_model::{ModelConfig, SmmuModel};

    let mem = Arc::new(
        sim_memory::SimMemory::new(smmuv3_hosted::MEM_BASE, 32 << 20, Coherency::Coherent).unwrap(),
    );
    let rich = Arc::new(SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap());
    let small = Arc::new(
        SmmuModel::new(
            ModelConfig {
                oas_bits: 40,
                bbml: 1,
                gran64k: false,
                ..ModelConfig::default()
            },
            mem.clone(),
        )
        .unwrap(),
    );
    let a = common::smmu_on(&mem, &rich);
    // The platform says this one's accesses are not coherent.
    let b = smmuv3_hosted::HostedSmmu::new(
        smmuv3_hosted::ModelFrame::new(small),
        smmuv3_hosted::SimDmaMemory::new(mem.clone()),
        smmuv3_hosted::PollClock::default(),
        smmuv3::SmmuConfig {
            coherent: Some(false),
            ..smmuv3::SmmuConfig::default()
        },
    )
    .unwrap();
    let both = Geometry::of(&[a.clone(), b.clone()], false).unwrap();
    assert_eq!(both.ias, 40);
    assert_eq!(both.mode, Mode::Leaf);
    assert!(!both.coherent);
    assert_eq!(
        both.pgsizes,
        a.features().pgsize_bitmap & b.features().pgsize_bitmap
    );
    assert_eq!(
        both.pgsizes & (1 << 16),
        0,
        "no 64K pages on the small SMMU"
    );
    let alone = Geometry::of(std::slice::from_ref(&a), false).unwrap();
    assert_eq!(
        (alone.ias, alone.mode, alone.coherent),
        (48, Mode::Block, true)
    );
    assert!(alone.admits(&a) && !alone.admits(&b));
    assert!(both.admits(&a) && both.admits(&b));
    assert!(Geometry::of::<common::Env>(&[], false).is_err());
}
