//! Random map/unmap/remap sequences against a shadow of the expected
//! mappings, with DMA through the model after every step, on coherent and
//! non-coherent memory: the model keeps stale TLB entries and reads tables
//! only through the device view, so a missing invalidation or clean shows
//! up as wrong data or a wrong fault.

use std::collections::BTreeMap;

use io_pgtable::{Granule, Prot};
use proptest::prelude::*;
use sim_memory::Coherency;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, EventType, ModelConfig};

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);
const SLOTS: u64 = 8;
const PAGE: u64 = 4096;

#[derive(Clone, Debug)]
enum Op {
    /// Map slot `s` (4K) to buffer `b`.
    Map(u64, u64),
    /// Unmap slot `s`.
    Unmap(u64),
    /// Change nothing (every slot is read again, now through the TLB).
    Reread,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..SLOTS, 0..4u64).prop_map(|(s, b)| Op::Map(s, b)),
        (0..SLOTS).prop_map(Op::Unmap),
        Just(Op::Reread),
    ]
}

fn run(coh: Coherency, ril: bool, ops: &[Op]) {
    let model = ModelConfig {
        ril,
        ..ModelConfig::default()
    };
    let sys = System::new(8 << 20, coh, model, SmmuConfig::default()).unwrap();
    let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(3, None, &d, AttachOptions::default())
        .unwrap();
    let bufs: Vec<u64> = (0..4u8)
        .map(|i| {
            let b = sys.mem.alloc(PAGE).unwrap();
            sys.mem.cpu_write(b, &[0x10 + i; PAGE as usize]).unwrap();
            sys.mem.clean(b, PAGE).unwrap();
            b
        })
        .collect();
    let base = 0x3000_0000u64;
    let mut shadow: BTreeMap<u64, u64> = BTreeMap::new();
    for op in ops {
        match *op {
            Op::Map(s, b) => {
                if shadow.contains_key(&s) {
                    continue;
                }
                d.map(base + s * PAGE, bufs[b as usize], PAGE, RW).unwrap();
                shadow.insert(s, b);
            }
            Op::Unmap(s) => {
                if shadow.remove(&s).is_some() {
                    assert_eq!(d.unmap(base + s * PAGE, PAGE).unwrap(), PAGE);
                }
            }
            Op::Reread => {}
        }
        // Nothing the model caches disagrees with the tables: every
        // cached translation, not only the slots read below.
        let audit = sys.model.audit_caches();
        assert!(audit.is_clean(), "after {op:?}: {audit:?}");
        // After every step, every slot reads as the shadow says.
        for s in 0..SLOTS {
            let mut got = [0u8; 8];
            let r = sys
                .model
                .dma_read(&DmaRequest::read(3, base + s * PAGE + 64, 8), &mut got);
            match shadow.get(&s) {
                Some(&b) => {
                    r.unwrap();
                    assert_eq!(got, [0x10 + b as u8; 8], "slot {s} after {op:?}");
                }
                None => {
                    let e = r.unwrap_err();
                    assert_eq!(
                        e.event_type(),
                        Some(EventType::FTranslation),
                        "slot {s} after {op:?}"
                    );
                }
            }
        }
        sys.smmu.drain_events().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn random_ops_coherent(ops in prop::collection::vec(op(), 1..24), ril in any::<bool>()) {
        run(Coherency::Coherent, ril, &ops);
    }

    #[test]
    fn random_ops_non_coherent(ops in prop::collection::vec(op(), 1..24), ril in any::<bool>()) {
        run(Coherency::NonCoherent, ril, &ops);
    }
}
