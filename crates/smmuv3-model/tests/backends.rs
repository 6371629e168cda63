//! One walker, one TLB, two memory backends: the same structures and the
//! same DMA script over `SimMemory` and over a `vm-memory`
//! `GuestMemoryMmap` give the same data, faults, events and statistics.

mod common;

use std::sync::Arc;

use common::fixed::*;
use smmuv3_model::layout::op;
use smmuv3_model::regs;
use smmuv3_model::{
    Coherency, DeviceMemory, DmaRequest, Event, EventType, GuestRam, ModelConfig, SimMemory,
    SmmuModel, Stats,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// What one run of the script observed.
#[derive(Debug, PartialEq)]
struct Run {
    results: Vec<Result<Vec<u8>, Option<EventType>>>,
    events: Vec<Event>,
    stats: Stats,
}

fn script(m: &SmmuModel, w: &dyn Fn(u64, &[u64]), r: &dyn Fn(u64, &mut [u8])) -> Run {
    let mut results = Vec::new();
    for sid in [1u32, 2] {
        let wr = m.dma_write(&DmaRequest::write(sid, VA + 8, 8), &[sid as u8; 8]);
        results.push(wr.map(|()| Vec::new()).map_err(|f| f.event_type()));
        for (va, len) in [
            (VA, 32u64),
            (VA + 4096, 8),
            (VA + 8192, 8),
            (VA + 0x10_0000, 8),
        ] {
            let mut b = vec![0u8; len as usize];
            let rd = m.dma_read(&DmaRequest::read(sid, va, len), &mut b);
            results.push(rd.map(|()| b).map_err(|f| f.event_type()));
        }
        let ro = m.dma_write(&DmaRequest::write(sid, VA + 4096, 4), &[1; 4]);
        results.push(ro.map(|()| Vec::new()).map_err(|f| f.event_type()));
    }
    // Unmap VA, invalidate it, and check that both streams fault.
    let leaf = S1_L[3] + ((VA >> 12) & 0x1ff) * 8;
    w(leaf, &[0]);
    w(
        CMDQ,
        &[
            u64::from(op::TLBI_NH_ASID) | 7 << 48,
            0,
            u64::from(op::TLBI_NH_ALL) | 3 << 32,
            0,
            u64::from(op::SYNC),
            0,
        ],
    );
    m.write32(regs::CMDQ_PROD, 3);
    assert_eq!(m.read32(regs::CMDQ_CONS), 3);
    for sid in [1u32, 2] {
        let mut b = [0u8; 8];
        let rd = m.dma_read(&DmaRequest::read(sid, VA, 8), &mut b);
        results.push(rd.map(|()| b.to_vec()).map_err(|f| f.event_type()));
    }
    let prod = m.read32(regs::PAGE1 + regs::EVENTQ_PROD) & 0x1f;
    let events = (0..prod)
        .map(|i| {
            let mut b = [0u8; 32];
            r(EVTQ + u64::from(i) * 32, &mut b);
            Event::from_bytes(&b).unwrap()
        })
        .collect();
    Run {
        results,
        events,
        stats: m.stats(),
    }
}

fn sim_run() -> (Run, Arc<SimMemory>) {
    let mem = Arc::new(SimMemory::new(BASE, SIZE, Coherency::Coherent).unwrap());
    let m = SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap();
    let w = |pa: u64, words: &[u64]| {
        for (i, v) in words.iter().enumerate() {
            mem.cpu_write_u64(pa + 8 * i as u64, *v).unwrap();
        }
    };
    let r = |pa: u64, b: &mut [u8]| mem.cpu_read(pa, b).unwrap();
    setup(&m, &w);
    (script(&m, &w, &r), mem)
}

fn guest_run() -> (Run, GuestRam<GuestMemoryMmap>) {
    let ram = GuestRam(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(BASE), SIZE as usize)]).unwrap(),
    );
    let m = SmmuModel::with_memory(ModelConfig::default(), Arc::new(ram.clone())).unwrap();
    let w = |pa: u64, words: &[u64]| {
        let bytes: Vec<u8> = words.iter().flat_map(|v| v.to_le_bytes()).collect();
        ram.write(pa, &bytes).unwrap();
    };
    let r = |pa: u64, b: &mut [u8]| ram.read(pa, b).unwrap();
    setup(&m, &w);
    (script(&m, &w, &r), ram)
}

#[test]
fn sim_memory_and_guest_memory_behave_identically() {
    let (sim, sim_mem) = sim_run();
    let (guest, ram) = guest_run();
    assert_eq!(sim, guest);
    // And the behaviour is the intended one, not merely shared.
    let t = |k| Err(Some(k));
    let mut expect_data = vec![0u8; 32];
    expect_data[8..16].fill(1);
    assert_eq!(sim.results[0], Ok(vec![]));
    assert_eq!(sim.results[1], Ok(expect_data));
    assert_eq!(sim.results[2], Ok(vec![0; 8]));
    assert_eq!(sim.results[3], t(EventType::FAccess));
    assert_eq!(sim.results[4], t(EventType::FTranslation));
    assert_eq!(sim.results[5], t(EventType::FPermission));
    // Stream 2 nests the same stage 1 on an identity stage 2.
    let mut expect2 = vec![0u8; 32];
    expect2[8..16].fill(2);
    assert_eq!(sim.results[7], Ok(expect2));
    assert_eq!(sim.results[11], t(EventType::FPermission));
    // After unmap + TLBI both streams fault.
    assert_eq!(
        sim.results[12..],
        [t(EventType::FTranslation), t(EventType::FTranslation)]
    );
    assert_eq!(sim.events.len(), 8);
    assert!(sim.stats.tlb_hits > 0 && sim.stats.walks > 0);
    // The data landed in each backend's memory.
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    sim_mem.cpu_read(DATA[0] + 8, &mut a).unwrap();
    ram.read(DATA[0] + 8, &mut b).unwrap();
    assert_eq!((a, b), ([2; 8], [2; 8]));
}

#[test]
fn guest_ram_compare_exchange_and_bounds() {
    let ram =
        GuestRam(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(BASE), 0x10000)]).unwrap());
    ram.write(BASE + 8, &5u64.to_le_bytes()).unwrap();
    assert_eq!(ram.cmpxchg_u64(BASE + 8, 5, 9), Ok(Ok(5)));
    assert_eq!(ram.cmpxchg_u64(BASE + 8, 5, 1), Ok(Err(9)));
    assert_eq!(ram.read_u64(BASE + 8), Ok(9));
    assert!(ram.read_u64(BASE + 4).is_err());
    assert!(ram.cmpxchg_u64(BASE + 12, 0, 1).is_err());
    assert!(ram.read(BASE + 0x10000 - 4, &mut [0; 8]).is_err());
    assert!(ram.write(BASE - 8, &[0; 8]).is_err());
    assert!(ram.coherent());
}
