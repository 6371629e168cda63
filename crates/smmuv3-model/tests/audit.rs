//! An independent audit of the model's VMM-facing claims (snapshots,
//! `Iotlb` upkeep, hostile guests): each test here either guards a defect
//! the audit found (named in its comment) or covers a case the other test
//! files left out.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use common::fixed::*;
use serde_json::{Value, json};
use smmuv3_model::{
    DeviceMemory, DmaRequest, GuestRam, ModelConfig, ModelSnapshot, SmmuModel, SnapshotError,
};
use vm_memory::GuestMemoryMmap;

/// A model with both fixed streams (stage 1 and nested) translated once,
/// so its snapshot holds STEs, CDs, contexts, TLB and walk-cache entries.
fn warm_model() -> (Arc<SmmuModel>, GuestRam<GuestMemoryMmap>) {
    let (m, ram) = guest_model(ModelConfig::default());
    setup(&m, &writer(&ram));
    let mut b = [0u8; 8];
    for sid in [1u32, 2] {
        m.dma_read(&DmaRequest::read(sid, VA, 8), &mut b).unwrap();
        let _ = m.dma_read(&DmaRequest::read(sid, VA + 0x10_0000, 8), &mut b);
    }
    (m, ram)
}

/// Everything a restored model is then asked to do: translations on every
/// kind of stream and address, register reads, a command, a snapshot.
fn exercise(m: &SmmuModel) {
    let mut b = [0u8; 8];
    for sid in [0u32, 1, 2, 3] {
        for va in [VA, VA + 4096, VA + 8192, VA + 0x20_0000, 0, u64::MAX - 7] {
            let _ = m.dma_read(&DmaRequest::read(sid, va, 8), &mut b);
            let _ = m.dma_write(&DmaRequest::write(sid, va, 8), &b);
            let _ = m.cached_translation(sid, None, va);
        }
    }
    for off in (0..0x100u64).step_by(4) {
        let _ = m.read32(off);
    }
    m.write32(smmuv3_model::regs::CMDQ_PROD, 3);
    let _ = m.snapshot();
}

fn forged(snap: &Value, pointer: &str, value: Value) -> ModelSnapshot {
    let mut v = snap.clone();
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the snapshot")) = value;
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{pointer}: {e}"))
}

/// Defect: `restore` checked the format version and the configuration
/// only, and installed the snapshot's registers, decoded STEs/CDs,
/// contexts and TLB entries as they were; a forged or corrupted snapshot
/// (a migration stream is input) then panicked the model on its next
/// translation (shift overflows on a context's `ias` or a TLB entry's
/// size, an out-of-range `nsizes` slice, an address overflow on
/// `out_base`, a statistic or TLB counter at u64::MAX on its next
/// increment) or silently ran with register bits its writes never set.
/// Each of these must be refused as `SnapshotError::Corrupt` and leave
/// the model as it was.
#[test]
fn forged_snapshots_are_refused_as_corrupt_and_change_nothing() {
    let (a, _ram) = warm_model();
    let snap = serde_json::to_value(a.snapshot()).unwrap();
    // (JSON pointer, forged value); contexts 0 and 1 are the stage-1 and
    // the nested stream, TLB leaf 0 is a 4K stage-1 page.
    let forgeries: &[(&str, Value)] = &[
        ("/ctx_cache/0/1/cd/tt/0/ias", json!(64)),
        ("/ctx_cache/0/1/cd/tt/0/shift", json!(64)),
        ("/ctx_cache/0/1/cd/tt/0/start_level", json!(64)),
        ("/ctx_cache/0/1/nsizes", json!(u64::MAX)),
        ("/ctx_cache/0/1/sizes/0", json!(70)),
        ("/ctx_cache/0/1/tag/asid", json!(8)),
        ("/ctx_cache/0/1/mode", json!("Bypass")),
        ("/ctx_cache/0/1/mode", json!("Nested")),
        ("/ctx_cache/1/1/ste/s2/tt/ias", json!(64)),
        ("/ctx_cache/1/1/ste/s2/tt/start_level", json!(9)),
        ("/ste_cache/0/1/s1/cdmax", json!(40)),
        ("/ste_cache/0/1/config", json!(3)),
        ("/cd_cache/0/1/tt/0/shift", json!(13)),
        ("/tlb/leaves/0/2/size_log2", json!(64)),
        ("/tlb/leaves/0/2/out_base", json!(u64::MAX)),
        ("/tlb/leaves/0/2/granule_shift", json!(0)),
        ("/tlb/capacity", json!(1)),
        ("/regs/cmdq_base", json!(1u64 << 63 | 0x8000_1004)),
        ("/regs/cr0", json!(0xffff_ffffu32)),
        ("/regs/cmdq_prod", json!(u32::MAX)),
        ("/regs/strtab_base_cfg", json!(u32::MAX)),
        ("/stats/translations", json!(u64::MAX)),
        ("/stats/events/16", json!(u64::MAX)),
        ("/tlb/evictions", json!(u64::MAX)),
    ];
    for (pointer, value) in forgeries {
        let bad = forged(&snap, pointer, value.clone());
        let (b, ram_b) = guest_model(ModelConfig::default());
        setup(&b, &writer(&ram_b));
        let before = b.snapshot();
        let r = catch_unwind(AssertUnwindSafe(|| b.restore(&bad)));
        match r {
            Ok(Err(SnapshotError::Corrupt { .. })) => {}
            other => panic!("{pointer} = {value}: restore gave {other:?}, not Corrupt"),
        }
        assert_eq!(
            b.snapshot(),
            before,
            "{pointer} = {value} changed the model"
        );
    }
    // The genuine snapshot still restores, and translates as the original.
    let (b, ram_b) = guest_model(ModelConfig::default());
    setup(&b, &writer(&ram_b));
    b.restore(&serde_json::from_value(snap).unwrap()).unwrap();
    assert_eq!(b.snapshot(), a.snapshot());
    let t = |m: &SmmuModel| m.translate(&DmaRequest::read(2, VA, 8)).map(|t| t.pa);
    assert_eq!(t(&b), t(&a));
    assert_eq!(t(&b), Ok(DATA[0]));
}

/// Every numeric or boolean field of a snapshot set to 64 or to all ones
/// (a statistic at u64::MAX overflowed, a debug-build panic, on its next
/// increment before the fix) either restores, after which
/// translations, register reads and commands still work without a panic,
/// or is refused and changes nothing.
#[test]
fn any_single_field_forgery_restores_cleanly_or_is_refused() {
    fn leaves(v: &Value, path: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m
                .iter()
                .for_each(|(k, x)| leaves(x, format!("{path}/{k}"), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| leaves(x, format!("{path}/{i}"), out)),
            Value::Number(_) | Value::Bool(_) => out.push(path),
            _ => {}
        }
    }
    let (a, _ram) = warm_model();
    let snap = serde_json::to_value(a.snapshot()).unwrap();
    let mut paths = Vec::new();
    leaves(&snap, String::new(), &mut paths);
    assert!(paths.len() > 500, "only {} fields", paths.len());
    let (b, ram_b) = guest_model(ModelConfig::default());
    setup(&b, &writer(&ram_b));
    let fresh = b.snapshot();
    let mut refused = 0;
    // One in 16 of the 256-entry counter arrays is enough (and cheaper).
    let sampled = |p: &&String| {
        let array = p.starts_with("/stats/commands/") || p.starts_with("/stats/events/");
        !array
            || p.rsplit('/')
                .next()
                .and_then(|i| i.parse::<u32>().ok())
                .is_some_and(|i| i % 16 == 0)
    };
    for p in paths.iter().filter(sampled) {
        for value in [json!(64), json!(u64::MAX)] {
            let mut v = snap.clone();
            *v.pointer_mut(p).unwrap() = value.clone();
            let Ok(s) = serde_json::from_value::<ModelSnapshot>(v) else {
                continue;
            };
            b.restore(&fresh).unwrap();
            let r = catch_unwind(AssertUnwindSafe(|| match b.restore(&s) {
                Ok(()) => {
                    exercise(&b);
                    true
                }
                Err(_) => false,
            }));
            match r {
                Ok(true) => {}
                Ok(false) => {
                    refused += 1;
                    assert_eq!(b.snapshot(), fresh, "{p} = {value}: refused but changed");
                }
                Err(_) => panic!("{p} = {value}: the model panicked"),
            }
        }
    }
    assert!(refused > 50, "only {refused} forgeries refused");
}

/// Runs `f` on a thread; fails (instead of hanging the suite) when it does
/// not finish within `secs`.
fn finishes_within(secs: u64, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: deadlock"),
    }
}

/// A stage-1 stream `SID` of `pages` 4K pages at IOVA 0.., each RW.
fn iotlb_rig(pages: u64) -> (common::H, common::Pt, Vec<u64>) {
    use common::*;
    let rig::Rig { h, pt, .. } = rig::rig_on(H::new(ModelConfig::default()), false);
    let pas: Vec<u64> = (0..pages).map(|_| h.alloc(4096)).collect();
    for (i, pa) in pas.iter().enumerate() {
        pt.map(&h, (i as u64) << 12, *pa, 3, S1_USER_RW);
    }
    (h, pt, pas)
}

/// Defect: a translation vm-memory still holds (its `IotlbIterator`, e.g.
/// inside the slice iterator `IommuMemory::get_slices` returns, keeps the
/// stream's `Iotlb` read-locked) made the next `Iotlb` miss on the same
/// stream and thread deadlock: filling the `Iotlb` took its write lock
/// and waited for the read lock its own thread held. A device model that
/// keeps a buffer's slices while reading its next descriptor hung.
#[test]
fn a_miss_while_a_translation_is_held_does_not_deadlock() {
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let (h, _pt, pas) = iotlb_rig(4);
    let io = h.smmu.iommu(1, None);
    let pas2 = pas.clone();
    finishes_within(20, "a miss under a held translation", move || {
        let held = io.translate(GuestAddress(0), 8, Permissions::Read).unwrap();
        // Page 1 is not in the Iotlb yet: a miss while `held` lives.
        let next: Vec<u64> = io
            .translate(GuestAddress(0x1000), 8, Permissions::Read)
            .unwrap()
            .map(|m| m.base.0)
            .collect();
        assert_eq!(next, [pas2[1]]);
        let first: Vec<u64> = held.map(|m| m.base.0).collect();
        assert_eq!(first, [pas2[0]]);
        // Once nothing is held, misses fill the shared Iotlb again.
        io.translate(GuestAddress(0x2000), 8, Permissions::Read)
            .unwrap();
        assert_eq!(io.iotlb_lookup(0x2000, Permissions::Read), Some(pas2[2]));
    });
}

/// Claim 1 in one randomized run: six streams (stage 1 with two ASIDs,
/// nested, bypass, stage 2 only, two substreams; two handles on one
/// stream) whose
/// `Iotlb`s are filled by translations while page tables change without
/// invalidation, every TLBI/CFGI kind (by address with and without Leaf,
/// by range, by ASID, by VMID, everything) is issued, and GBPA and
/// CR0.SMMUEN are rewritten. After every step each `Iotlb` holds nothing
/// the model would not serve from its caches (no stale entry), and keeps
/// every unit the model still serves unchanged (never more dropped than
/// needed). Covers nested, stage-2-only, bypass and GBPA streams and
/// commands that `tests/iotlb_upkeep.rs` (stage 1 only) does not.
#[test]
fn every_iotlb_matches_the_model_caches_after_every_step() {
    use common::*;
    use smmuv3_model::layout::op;
    use smmuv3_model::regs::{self, cr0, gbpa};
    use vm_memory::Permissions;

    const IOVA: u64 = 0x4000_0000;
    let mut h = H::with(
        ModelConfig::default(),
        smmuv3_model::Coherency::Coherent,
        4 << 20,
    );
    h.enable_linear(3);
    let buf = h.alloc(16 << 12);
    // Identity stage 2 over all memory (2M blocks), VMID 1.
    let s2 = Pt::new_s2(&h, 12, 40, 1);
    for i in 0..2u64 {
        let a = MEM_BASE + (i << 21);
        s2.map(&h, a, a, 2, S2_RW);
    }
    let s2p = S2::ipa40(1, s2.root);
    let s1a = Pt::new_s1(&h, 12, 48);
    let s1b = Pt::new_s1(&h, 12, 48);
    for k in 0..8u64 {
        s1a.map(&h, IOVA + k * 4096, buf + k * 4096, 3, S1_USER_RW);
        s1b.map(&h, IOVA + k * 4096, buf + k * 4096, 3, S1_USER_RW);
    }
    let cda = h.alloc(64);
    h.write_words(cda, &cd(16, 0, 5, s1a.root, 1));
    let cdb = h.alloc(64);
    h.write_words(cdb, &cd(16, 0, 5, s1b.root, 2));
    h.set_ste(0, ste_s1(cda, 0, 0, 0));
    h.set_ste(1, ste_s1(cdb, 0, 0, 0));
    h.set_ste(2, ste_nested(cda, &s2p));
    h.set_ste(3, ste_bypass());
    h.set_ste(4, ste_s2(&s2p));
    // Stream 5: two substreams (linear CD table), ASIDs 3 and 4.
    let cds = h.alloc(128);
    h.write_words(cds, &cd(16, 0, 5, s1a.root, 3));
    h.write_words(cds + 64, &cd(16, 0, 5, s1b.root, 4));
    h.set_ste(5, ste_s1(cds, 1, 0, 0));

    let streams = [0u32, 0, 1, 2, 3, 4, 5, 5];
    let ssids = [None, None, None, None, None, None, Some(0), Some(1)];
    let ios: Vec<_> = streams
        .iter()
        .zip(ssids)
        .map(|(&s, ss)| h.smmu.iommu(s, ss))
        .collect();
    let probes = |sid: u32| -> Vec<u64> {
        let base = if sid == 3 || sid == 4 { buf } else { IOVA };
        (0..10).map(|k| base + k * 4096).collect()
    };
    let accesses = [Permissions::Read, Permissions::Write];
    // (handle, probe, access) -> what the Iotlb gave, what the model
    // would serve from its caches, and the model's cached unit.
    type Seen = Vec<(Option<u64>, Option<u64>, Option<smmuv3_model::CachedUnit>)>;
    let observe = |h: &H| -> Seen {
        let mut out = Vec::new();
        for ((io, &sid), ssid) in ios.iter().zip(&streams).zip(ssids) {
            for va in probes(sid) {
                for acc in accesses {
                    let unit = h.smmu.cached_translation(sid, ssid, va);
                    let cached = unit
                        .filter(|u| {
                            if acc == Permissions::Read {
                                u.read
                            } else {
                                u.write
                            }
                        })
                        .map(|u| u.pa_base + (va - u.iova_base));
                    out.push((io.iotlb_lookup(va, acc), cached, unit));
                }
            }
        }
        out
    };
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut before = observe(&h);
    let mut filled = 0usize;
    let mut ever = vec![false; ios.len()];
    for step in 0..600 {
        let what = match next(10) {
            0..=3 => {
                let i = next(ios.len() as u64) as usize;
                let va = probes(streams[i])[next(10) as usize];
                let acc = accesses[next(2) as usize];
                let _ = vm_memory::iommu::Iommu::translate(
                    &ios[i],
                    vm_memory::GuestAddress(va),
                    8,
                    acc,
                );
                format!("translate {i} {va:#x} {acc:?}")
            }
            4 => {
                let k = next(8);
                let table = if next(2) == 0 { &s1a } else { &s1b };
                if next(3) == 0 {
                    table.unmap(&h, IOVA + k * 4096, 3);
                } else {
                    let to = buf + next(8) * 4096;
                    table.map(&h, IOVA + k * 4096, to, 3, S1_USER_RW);
                }
                format!("table change {k}")
            }
            5..=7 => {
                let va = IOVA + next(10) * 4096;
                let asid = 1 + next(4);
                let vmid = next(2);
                let sid = next(6);
                let ssid = next(2);
                let (w0, w1) = match next(13) {
                    0 => tlbi_nh_va(asid as u16, va, next(2) == 0),
                    1 => (op::TLBI_NH_VAA as u64, va | next(2)),
                    2 => (op::TLBI_NH_ASID as u64 | asid << 48, 0),
                    3 => (op::TLBI_NH_ALL as u64, 0),
                    4 => (op::TLBI_S12_VMALL as u64 | vmid << 32, 0),
                    5 => (
                        op::TLBI_S2_IPA as u64 | vmid << 32,
                        (buf + next(8) * 4096) | next(2),
                    ),
                    6 => (op::TLBI_NSNH_ALL as u64, 0),
                    7 => (op::CFGI_STE as u64 | sid << 32, 1),
                    8 => (op::CFGI_STE_RANGE as u64, 31),
                    9 => (op::CFGI_CD as u64 | sid << 32 | ssid << 12, next(2)),
                    10 => (op::CFGI_CD_ALL as u64 | sid << 32, 0),
                    _ => tlbi_nh_va_range(asid as u16, va, next(4), 0, 1, 3, next(2) == 0),
                };
                h.cmd(w0, w1);
                h.sync();
                format!("command {w0:#x} {w1:#x}")
            }
            8 => {
                let v = gbpa::UPDATE | if next(2) == 0 { gbpa::ABORT } else { 0 };
                h.smmu.write32(regs::GBPA, v);
                format!("GBPA {v:#x}")
            }
            _ => {
                let on = next(3) != 0;
                let v = cr0::CMDQEN | cr0::EVENTQEN | if on { cr0::SMMUEN } else { 0 };
                h.smmu.write32(regs::CR0, v);
                format!("CR0 {v:#x}")
            }
        };
        let after = observe(&h);
        for (i, ((io_a, m_a, u_a), (io_b, m_b, u_b))) in after.iter().zip(&before).enumerate() {
            assert!(
                io_a.is_none() || io_a == m_a,
                "step {step} ({what}): entry {i}: Iotlb {io_a:x?}, model {m_a:x?} (stale)"
            );
            // The same unit still cached: its copy must stay.
            if io_b.is_some() && io_b == m_b && u_a == u_b && !what.starts_with("translate") {
                assert_eq!(
                    io_a, io_b,
                    "step {step} ({what}): entry {i}: dropped though the model still serves it"
                );
            }
        }
        filled += after.iter().filter(|(io, _, _)| io.is_some()).count();
        for (i, (io, _, _)) in after.iter().enumerate() {
            ever[i / 20] |= io.is_some();
        }
        before = after;
        // Drain events so the queue never stops recording.
        h.events();
    }
    assert!(filled > 1000, "the Iotlbs were rarely filled ({filled})");
    assert_eq!(ever, vec![true; ios.len()], "an Iotlb was never filled");
}

/// Returns a model whose streams `sids` share one stalling CD (CD.S = 1)
/// over an empty stage-1 table: every access stalls.
fn stalling_rig(sids: &[u32]) -> common::H {
    use common::*;
    let mut h = H::new(ModelConfig::default());
    h.enable_linear(4);
    let pt = Pt::new_s1(&h, 12, 48);
    let mut c = cd(16, 0, 5, pt.root, 1);
    c[0] |= 1 << 44; // CD.S: faults stall
    let cdp = h.alloc(64);
    h.write_words(cdp, &c);
    for &sid in sids {
        h.set_ste(sid, ste_s1(cdp, 0, 0, 0));
    }
    h
}

/// Defect: STAGs were handed out by a wrapping 16-bit counter without
/// looking at the stalls still outstanding, so after 65,536 stalls a new
/// one could get the STAG of one still waiting on the same stream, and one
/// CMD_RESUME then retired both (the second transaction's fault handler
/// never got to answer it). A STAG must name one outstanding stall.
#[test]
fn a_stag_is_never_reused_while_its_stall_is_outstanding() {
    use common::*;
    use smmuv3_model::DmaFault;
    use smmuv3_model::layout::op;
    // Streams 1 and 2 share the CD; nothing is mapped, every access stalls.
    let mut h = stalling_rig(&[1, 2]);
    let stall = |h: &H, sid: u32| match h.smmu.translate(&DmaRequest::read(sid, 0x1000, 4)) {
        Err(DmaFault::Stalled { event }) => event.stag,
        other => panic!("expected a stall, got {other:?}"),
    };
    let kept = stall(&h, 1);
    // Stream 2 goes through every other STAG (65,535 stalls); they are
    // terminated in batches (and the events drained) so only stream 1's
    // stays outstanding.
    let mut seen = std::collections::HashSet::new();
    for i in 0..u16::MAX {
        seen.insert(stall(&h, 2));
        if i % 128 == 127 || i == u16::MAX - 1 {
            h.cmd(op::STALL_TERM as u64 | 2 << 32, 0);
            h.sync();
            h.events();
        }
    }
    assert_eq!(seen.len(), usize::from(u16::MAX));
    assert!(!seen.contains(&kept));
    assert_eq!(h.smmu.stalled(), [(1, kept)]);
    let again = stall(&h, 1);
    assert_ne!(again, kept, "an outstanding STAG was handed out again");
    // Resuming the first stall leaves the second waiting.
    h.cmd(op::RESUME as u64 | 1 << 32 | 1 << 12, u64::from(kept));
    h.sync();
    assert_eq!(h.smmu.stalled(), [(1, again)]);
}

/// With IDR5.STALL_MAX (65,535) stalls outstanding, a further stalling
/// fault is terminated (event recorded with Stall = 0) instead of growing
/// the model's list of stalls without bound (a guest that never resumes).
/// The stalls come from a snapshot (filling them one by one costs
/// seconds); one more real stall first checks the snapshot's stream stalls.
#[test]
fn stalls_are_bounded_by_the_stag_space() {
    use smmuv3_model::{DmaFault, EventType};
    let h = stalling_rig(&[1]);
    let req = DmaRequest::read(1, 0x1000, 4);
    assert!(matches!(
        h.smmu.translate(&req),
        Err(DmaFault::Stalled { .. })
    ));
    let mut snap = serde_json::to_value(h.smmu.snapshot()).unwrap();
    let all: Vec<Value> = (0..=u16::MAX)
        .map(|stag| json!({ "sid": 1, "stag": stag }))
        .collect();
    // One more than STALL_MAX is not a state the model can be in.
    snap["stalled"] = Value::Array(all.clone());
    assert!(matches!(
        h.smmu
            .restore(&serde_json::from_value(snap.clone()).unwrap()),
        Err(SnapshotError::Corrupt { .. })
    ));
    snap["stalled"] = Value::Array(all[1..].to_vec());
    h.smmu
        .restore(&serde_json::from_value(snap.clone()).unwrap())
        .unwrap();
    assert_eq!(h.smmu.stalled().len(), 0xffff);
    match h.smmu.translate(&req) {
        Err(DmaFault::Terminated { event, .. }) => {
            assert_eq!(event.kind, EventType::FTranslation);
            assert!(!event.stall);
        }
        other => panic!("expected a termination, got {other:?}"),
    }
    assert_eq!(h.smmu.stalled().len(), 0xffff);
    // A snapshot naming one STAG twice is not a state the model can be in.
    let before = h.smmu.snapshot();
    snap["stalled"][1]["stag"] = snap["stalled"][0]["stag"].clone();
    assert!(matches!(
        h.smmu.restore(&serde_json::from_value(snap).unwrap()),
        Err(SnapshotError::Corrupt { .. })
    ));
    assert_eq!(h.smmu.snapshot(), before);
}

/// Claim 2 for the awkward moments (no defect found; `tests/device.rs`
/// snapshots a quiet model only): a snapshot taken with the event queue
/// overflowed, GERROR.CMDQ_ERR active with commands queued behind the
/// illegal one, and interrupts pending restores into a fresh model that
/// then behaves identically: the same registers, interrupts, statistics
/// and events after acknowledging the error (the queued commands run) and
/// draining the queue (new faults are recorded again).
#[test]
fn a_snapshot_mid_error_and_overflow_restores_identically() {
    use smmuv3_model::layout::op;
    use smmuv3_model::regs::{self, irq_ctrl};
    let (a, ram_a) = guest_model(ModelConfig::default());
    setup(&a, &writer(&ram_a));
    a.write32(
        regs::IRQ_CTRL,
        irq_ctrl::EVENTQ_IRQEN | irq_ctrl::GERROR_IRQEN,
    );
    let mut b8 = [0u8; 8];
    a.dma_read(&DmaRequest::read(1, VA, 8), &mut b8).unwrap();
    // 20 faults into a 16-entry queue: overflow.
    for i in 0..20u64 {
        let _ = a.dma_read(&DmaRequest::read(1, VA + 0x10_0000 + i * 4096, 8), &mut b8);
    }
    // An illegal command with a TLBI and a SYNC queued behind it.
    let w = writer(&ram_a);
    w(
        CMDQ,
        &[
            0xff,
            0,
            u64::from(op::TLBI_NH_ALL),
            0,
            u64::from(op::SYNC),
            0,
        ],
    );
    a.write32(regs::CMDQ_PROD, 3);
    let regs_of = |m: &SmmuModel| -> Vec<u32> {
        [
            regs::GERROR,
            regs::GERRORN,
            regs::CMDQ_CONS,
            regs::CMDQ_PROD,
            regs::PAGE1 + regs::EVENTQ_PROD,
            regs::PAGE1 + regs::EVENTQ_CONS,
            regs::CR0,
        ]
        .iter()
        .map(|&o| m.read32(o))
        .collect()
    };
    let ra = regs_of(&a);
    assert_eq!(ra[0] & 1, 1, "CMDQ_ERR is active");
    assert_eq!(ra[2] >> 24 & 0x7f, 1, "CONS.ERR is CERROR_ILL");
    assert_eq!(ra[4] >> 31, 1, "the event queue overflowed");
    assert!(a.interrupts().eventq && a.interrupts().gerror);

    let snap: ModelSnapshot =
        serde_json::from_str(&serde_json::to_string(&a.snapshot()).unwrap()).unwrap();
    let (b, ram_b) = guest_model(ModelConfig::default());
    let mut image = vec![0u8; SIZE as usize];
    ram_a.read(BASE, &mut image).unwrap();
    ram_b.write(BASE, &image).unwrap();
    b.restore(&snap).unwrap();
    // Both read their registers (reads are counted in the statistics).
    let rb = regs_of(&b);
    assert_eq!(rb, regs_of(&a));
    assert_eq!(rb, ra);
    assert_eq!(b.interrupts(), a.interrupts());

    // Unmap VA: only the TLBI behind the illegal command drops the entry.
    let leaf = S1_L[3] + ((VA >> 12) & 0x1ff) * 8;
    for (m, ram) in [(&a, &ram_a), (&b, &ram_b)] {
        writer(ram)(leaf, &[0]);
        assert!(m.dma_read(&DmaRequest::read(1, VA, 8), &mut b8).is_ok());
        // Skip the illegal command, acknowledge: TLBI and SYNC run.
        writer(ram)(CMDQ, &[u64::from(op::SYNC), 0]);
        m.write32(regs::GERRORN, m.read32(regs::GERROR));
        // Drain the queue and acknowledge the overflow.
        let prod = m.read32(regs::PAGE1 + regs::EVENTQ_PROD);
        m.write32(regs::PAGE1 + regs::EVENTQ_CONS, prod);
        let e = m.dma_read(&DmaRequest::read(1, VA, 8), &mut b8);
        assert_eq!(
            e.unwrap_err().event_type(),
            Some(smmuv3_model::EventType::FTranslation)
        );
    }
    assert_eq!(regs_of(&a), regs_of(&b));
    assert_eq!(a.interrupts(), b.interrupts());
    assert_eq!(a.stats(), b.stats());
    let mut ea = vec![0u8; 32 * 16];
    let mut eb = vec![0u8; 32 * 16];
    ram_a.read(EVTQ, &mut ea).unwrap();
    ram_b.read(EVTQ, &mut eb).unwrap();
    assert_eq!(ea, eb);
    // The fault after the drain was recorded, at the entry after the
    // drained ones.
    let prod = a.read32(regs::PAGE1 + regs::EVENTQ_PROD) & 0x1f;
    let cons = a.read32(regs::PAGE1 + regs::EVENTQ_CONS) & 0x1f;
    assert_eq!((prod.wrapping_sub(cons)) & 0x1f, 1);
}

/// A handle made before the stream is configured (no defect found): while
/// the SMMU is disabled with GBPA bypassing it fills identity units; the
/// guest then enables the SMMU with the stream translating through stage
/// 1, and the handle serves the stage-1 translation, not a stale identity
/// one; disabling again with GBPA aborting leaves it nothing to serve.
#[test]
fn a_handle_made_before_its_stream_is_configured_follows_the_configuration() {
    use common::*;
    use smmuv3_model::regs::{self, cr0, gbpa};
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let mut h = H::new(ModelConfig::default());
    let page = h.alloc(4096);
    let other = h.alloc(4096);
    let io = h.smmu.iommu(1, None);
    h.smmu.write32(regs::GBPA, gbpa::UPDATE);
    let first = |io: &smmuv3_model::StreamIommu, va: u64| {
        io.translate(GuestAddress(va), 8, Permissions::Read)
            .map(|mut it| it.next().unwrap().base.0)
    };
    // Bypass: the device reaches `page` at its own address.
    assert_eq!(first(&io, page).unwrap(), page);
    assert_eq!(io.iotlb_lookup(page, Permissions::Read), Some(page));
    // The guest maps IOVA `page` to `other` and enables the SMMU.
    h.enable_queues(8, 8);
    h.strtab = h.alloc(64 << 4);
    let pt = Pt::new_s1(&h, 12, 48);
    pt.map(&h, page, other, 3, S1_USER_RW);
    let cdp = h.alloc(64);
    h.write_words(cdp, &cd(16, 0, 5, pt.root, 1));
    h.write_words(h.ste_at(1), &ste_s1(cdp, 0, 0, 0));
    h.smmu.write64(regs::STRTAB_BASE, h.strtab);
    h.smmu.write32(regs::STRTAB_BASE_CFG, 4);
    h.enable_smmu();
    assert_eq!(io.iotlb_lookup(page, Permissions::Read), None);
    assert_eq!(first(&io, page).unwrap(), other);
    assert_eq!(io.iotlb_lookup(page, Permissions::Read), Some(other));
    // Disabled with GBPA aborting: nothing is served any more.
    h.smmu.write32(regs::GBPA, gbpa::UPDATE | gbpa::ABORT);
    h.smmu.write32(regs::CR0, cr0::CMDQEN | cr0::EVENTQEN);
    assert_eq!(io.iotlb_lookup(page, Permissions::Read), None);
    assert!(first(&io, page).is_err());
    assert_eq!(io.iotlb_units(), 0);
}

/// TLBI_S2_IPA and a nested stream's `Iotlb` (no defect found; the claim
/// needs the architecture's reading): the command need not remove combined
/// stage 1+2 entries (software follows it with TLBI_NH_ALL or
/// TLBI_S12_VMALL, as Linux does for nesting parents), the model keeps
/// them, and so does the `Iotlb`, exactly: it holds what the model still
/// serves. After TLBI_S12_VMALL of the VMID both are gone.
#[test]
fn stage2_invalidation_of_a_nested_stream_keeps_iotlb_and_model_in_step() {
    use smmuv3_model::layout::op;
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let (m, ram) = guest_model(ModelConfig::default());
    setup(&m, &writer(&ram));
    let io = m.iommu(2, None);
    let it = io
        .translate(GuestAddress(VA), 8, Permissions::Read)
        .unwrap();
    assert_eq!(it.map(|x| x.base.0).collect::<Vec<_>>(), [DATA[0]]);
    let held = |io: &smmuv3_model::StreamIommu| io.iotlb_lookup(VA, Permissions::Read);
    let cached = |m: &SmmuModel| m.cached_translation(2, None, VA).map(|u| u.pa_base);
    assert_eq!((held(&io), cached(&m)), (Some(DATA[0]), Some(DATA[0])));
    let mut prod = 0u32;
    let mut cmd = |m: &SmmuModel, w0: u64, w1: u64| {
        writer(&ram)(
            CMDQ + u64::from(prod & 15) * 16,
            &[w0, w1, u64::from(op::SYNC), 0],
        );
        prod = (prod + 2) & 31;
        m.write32(smmuv3_model::regs::CMDQ_PROD, prod);
        assert_eq!(m.read32(smmuv3_model::regs::CMDQ_CONS), prod);
    };
    // Stage 2 of VMID 3 maps DATA[0]'s 2M block identically.
    cmd(&m, u64::from(op::TLBI_S2_IPA) | 3 << 32, DATA[0] & !0xfff);
    assert_eq!((held(&io), cached(&m)), (Some(DATA[0]), Some(DATA[0])));
    cmd(&m, u64::from(op::TLBI_S12_VMALL) | 3 << 32, 0);
    assert_eq!((held(&io), cached(&m)), (None, None));
}

/// A translation held (vm-memory keeps its guard for the whole access)
/// while the same thread translates again on the stream, and another
/// thread's TLBI + CMD_SYNC of the held page, deadlocked: the invalidation
/// held the model lock and waited for the `Iotlb` write lock, which also
/// held back the second translation's read lock (or its model lock on a
/// miss). Now nothing under the model lock waits: the second translation
/// is served, and the CMD_SYNC stays at CMDQ_CONS until the held access
/// ends (the release of its guard resumes the queue), not a moment before.
#[test]
fn a_held_translation_and_a_concurrent_invalidation_do_not_deadlock() {
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let (h, _pt, pas) = iotlb_rig(4);
    let io = Arc::new(h.smmu.iommu(1, None));
    let model = h.smmu.clone();
    let h = Arc::new(std::sync::Mutex::new(h));
    for (second, name) in [(0x1000, "a hit"), (0x3000, "a miss")] {
        let (io2, h2, pas2, model2) = (io.clone(), h.clone(), pas.clone(), model.clone());
        finishes_within(20, name, move || {
            // Page 1 is in the Iotlb from the previous round (or not).
            let _ = io2.translate(GuestAddress(0x1000), 8, Permissions::Read);
            let held = io2
                .translate(GuestAddress(0), 8, Permissions::Read)
                .unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let inv = std::thread::spawn(move || {
                let mut h = h2.lock().unwrap();
                let (w0, w1) = common::tlbi_nh_va(1, 0, true);
                h.cmd(w0, w1);
                tx.send(h.prod + 1).unwrap();
                h.sync_polled(std::time::Duration::from_secs(15))
            });
            let sync_done = rx.recv().unwrap();
            // Let the CMD_SYNC reach the queue and wait for `held`.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let next: Vec<u64> = io2
                .translate(GuestAddress(second), 8, Permissions::Read)
                .unwrap()
                .map(|m| m.base.0)
                .collect();
            assert_eq!(next, [pas2[(second >> 12) as usize]]);
            let cons = model2.read32(smmuv3_model::regs::CMDQ_CONS) & 0xfffff;
            assert_ne!(
                cons,
                sync_done & 0xfffff,
                "the CMD_SYNC completed during the access"
            );
            drop(held);
            assert!(inv.join().unwrap(), "the CMD_SYNC never completed");
            // Page 0's TLBI is done: the Iotlb no longer serves it.
            assert_eq!(io2.iotlb_lookup(0, Permissions::Read), None);
        });
    }
}

/// What the deferral must not weaken (no defect found): a CMD_SYNC after
/// an invalidation completes only once an access still using an old
/// `Iotlb` entry (a guard held by a thread that does not translate) is
/// done.
#[test]
fn a_sync_waits_for_an_access_using_an_invalidated_entry() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let (h, _pt, _pas) = iotlb_rig(2);
    let io = Arc::new(h.smmu.iommu(1, None));
    let done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (io2, done2) = (io.clone(), done.clone());
    let device = std::thread::spawn(move || {
        let held = io2
            .translate(GuestAddress(0), 8, Permissions::Read)
            .unwrap();
        tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        done2.store(true, Ordering::SeqCst);
        drop(held);
    });
    rx.recv().unwrap();
    let mut h = h;
    let (w0, w1) = common::tlbi_nh_va(1, 0, true);
    h.cmd(w0, w1);
    assert!(h.sync_polled(std::time::Duration::from_secs(15)));
    assert!(
        done.load(Ordering::SeqCst),
        "the sync completed during the access"
    );
    device.join().unwrap();
    assert_eq!(io.iotlb_lookup(0, Permissions::Read), None);
}

/// Queues TLBI_NH_VA of page 0 (ASID 1, leaf) and a CMD_SYNC, which
/// waits at CMDQ_CONS while an access holds that page's `Iotlb` entry.
fn invalidate_page_0_and_sync(h: &mut common::H) {
    let (w0, w1) = common::tlbi_nh_va(1, 0, true);
    h.cmd(w0, w1);
    assert_eq!(h.cmd(u64::from(smmuv3_model::layout::op::SYNC), 0), 0);
}

/// A CMD_SYNC that waits at CMDQ_CONS for an access using a dropped
/// `Iotlb` entry does not block the thread that queued it, completes when
/// that access ends, and, snapshotted while it waits, completes in the
/// restored model (which holds no access) at its first register access.
#[test]
fn a_waiting_sync_completes_when_the_access_ends_and_after_a_restore() {
    use smmuv3_model::regs;
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let (mut h, _pt, _pas) = iotlb_rig(2);
    let io = h.smmu.iommu(1, None);
    let held = io.translate(GuestAddress(0), 8, Permissions::Read).unwrap();
    invalidate_page_0_and_sync(&mut h);
    let cons = |m: &SmmuModel| m.read32(regs::CMDQ_CONS) & 0xfffff;
    // The TLBI ran; the SYNC waits (this very thread holds the access).
    assert_eq!(cons(&h.smmu), h.prod - 1);
    assert_eq!(
        io.iotlb_lookup(0, Permissions::Read),
        None,
        "stale: not consulted"
    );
    let snap = h.smmu.snapshot();
    let fresh = SmmuModel::new(ModelConfig::default(), h.mem.clone()).unwrap();
    fresh.restore(&snap).unwrap();
    // The first access shows the state restored, then the queue resumes.
    assert_eq!(cons(&fresh), h.prod - 1);
    assert_eq!(cons(&fresh), h.prod);
    assert_eq!(cons(&h.smmu), h.prod - 1, "the source still waits");
    drop(held);
    assert_eq!(cons(&h.smmu), h.prod, "the release resumed the queue");
}

/// Defect: `read64` (an 8-byte MMIO read) did not look at a CMD_SYNC
/// waiting at CMDQ_CONS as `read32` does, so a guest polling PROD and
/// CONS with one 64-bit read at 0x98 (two adjacent 32-bit registers:
/// architecturally read as both) never saw a restored model's waiting
/// CMD_SYNC complete.
#[test]
fn a_waiting_sync_completes_under_64_bit_polling_after_a_restore() {
    use smmuv3_model::regs;
    use vm_memory::iommu::Iommu;
    use vm_memory::{GuestAddress, Permissions};
    let (mut h, _pt, _pas) = iotlb_rig(2);
    let io = h.smmu.iommu(1, None);
    let held = io.translate(GuestAddress(0), 8, Permissions::Read).unwrap();
    invalidate_page_0_and_sync(&mut h);
    let snap = h.smmu.snapshot();
    let fresh = SmmuModel::new(ModelConfig::default(), h.mem.clone()).unwrap();
    fresh.restore(&snap).unwrap();
    let cons = |m: &SmmuModel| (m.read64(regs::CMDQ_PROD) >> 32) as u32 & 0xfffff;
    assert_eq!(cons(&fresh), h.prod - 1);
    assert_eq!(cons(&fresh), h.prod, "the 64-bit poll resumed the queue");
    drop(held);
}
