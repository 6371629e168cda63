//! A hostile host against trap-and-emulate (property test; the same
//! interpreter drives the libFuzzer target `hostile_host`): whatever it
//! writes to registers, its queues and its stream table, interleaved with
//! donations and DMA, no device reaches memory the host does not own and
//! the hypervisor touches no memory outside the host's.

mod common;

use common::hostile::World;
use proptest::prelude::*;

fn run(data: &[u8]) -> Result<(), String> {
    let (mut w, data) = World::for_input(data);
    w.check()?;
    let ops = w.decode(data);
    for (i, op) in ops.iter().enumerate() {
        w.apply(op);
        w.check().map_err(|e| format!("after op {i} {op:?}: {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_host_sequence_gives_a_device_foreign_memory(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert_eq!(run(&data), Ok(()));
    }
}

/// Hand-picked attacks that random bytes reach only by luck.
#[test]
fn pointed_attacks_are_contained() {
    let w = World::new();
    let hyp = w.t.ram.base - 4096;
    let past = 1u64 << 47;
    let mut ops = Vec::new();
    // Point every base register into hypervisor memory and past memory,
    // with the SMMU and queues disabled, then enabled.
    for p in [hyp, past, common::MMIO.base] {
        use common::hostile::Op::*;
        use smmuv3::regs as r;
        ops.extend([
            Write {
                off: r::CR0,
                size: 4,
                value: 0,
            },
            Write {
                off: r::STRTAB_BASE,
                size: 8,
                value: p,
            },
            Write {
                off: r::STRTAB_BASE_CFG,
                size: 4,
                value: 16,
            },
            Write {
                off: r::CMDQ_BASE,
                size: 8,
                value: p | 8,
            },
            Write {
                off: r::EVENTQ_BASE,
                size: 8,
                value: p | 8,
            },
            Write {
                off: r::CR0,
                size: 4,
                value: 0xf,
            },
            Write {
                off: r::CMDQ_PROD,
                size: 4,
                value: 5,
            },
            Dma {
                sid: common::hostile::SID,
                iova: p,
                write: true,
            },
            Poll,
        ]);
    }
    let mut w = w;
    for (i, op) in ops.iter().enumerate() {
        w.apply(op);
        assert_eq!(w.check(), Ok(()), "after op {i} {op:?}");
    }
    let s = w.t.stats();
    assert!(s.refused_pointers > 0, "{s:?}");
}

/// The oracle itself can fail: a stream the hypervisor wrongly let bypass
/// reaches hypervisor memory, and `check` says so.
#[test]
fn the_oracle_catches_a_device_reaching_hypervisor_memory() {
    let w = World::new();
    assert_eq!(w.check(), Ok(()));
    let real = w.t.emu.lock().unwrap().hyp().smmu(0).unwrap();
    real.set_bypass(common::hostile::SID).unwrap();
    let e = w.check().unwrap_err();
    assert!(e.contains("not host memory"), "{e}");
}

/// Random inputs do exercise the emulation: commands forwarded and
/// refused, STEs shadowed and refused, pointers refused, events to both
/// sides, traffic on aborted streams reported and silenced, donations.
#[test]
fn random_hostile_inputs_reach_every_part_of_the_emulation() {
    let mut total = hyp_iommu::EmulationStats::default();
    let mut donated = 0;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..24 {
        let data: Vec<u8> = (0..800)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let (mut w, data) = World::for_input(&data);
        for op in w.decode(data) {
            w.apply(&op);
            assert_eq!(w.check(), Ok(()), "{op:?}");
        }
        donated += w.donated.len();
        let s = w.t.stats();
        total.forwarded += s.forwarded;
        total.refused_commands += s.refused_commands;
        total.ste_updates += s.ste_updates;
        total.bad_stes += s.bad_stes;
        total.refused_pointers += s.refused_pointers;
        total.refused_accesses += s.refused_accesses;
        total.host_events += s.host_events;
        total.hyp_events += s.hyp_events;
        total.traffic_events += s.traffic_events;
        total.silenced_streams += s.silenced_streams;
    }
    let t = total;
    eprintln!("hostile totals: {t:?}, pages donated: {donated}");
    assert!(t.forwarded > 0 && t.refused_commands > 0, "{t:?}");
    assert!(t.ste_updates > 0 && t.bad_stes > 0, "{t:?}");
    assert!(t.refused_pointers > 0 && t.refused_accesses > 0, "{t:?}");
    assert!(t.host_events > 0 && t.hyp_events > 0, "{t:?}");
    assert!(t.traffic_events > 0 && t.silenced_streams > 0, "{t:?}");
    assert!(donated > 0);
}
