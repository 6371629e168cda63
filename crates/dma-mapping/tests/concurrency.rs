//! Two threads (two CPUs of the per-CPU caches and flush queues) map, DMA
//! and unmap through one domain on the model at once; every IOVA is
//! exclusive while live and unreachable after its unmap.

mod common;

use std::collections::HashSet;
use std::sync::Mutex;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, Invalidation};
use sim_memory::Coherency;

#[test]
fn concurrent_mappings_never_share_an_iova_and_end_unreachable() {
    for inv in [
        Invalidation::Strict,
        Invalidation::Lazy { timeout_ticks: 50 },
    ] {
        let f = fixture_with(Coherency::Coherent, inv, 2);
        let dev = f.device(DeviceConfig::new(1));
        let live = Mutex::new(HashSet::new());
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..2u8 {
                let (f, dev, live, seen) = (&f, &dev, &live, &seen);
                s.spawn(move || {
                    set_cpu(t as usize);
                    let pa = f.buffer(4096, 0x10 + t);
                    for i in 0..300 {
                        // SAFETY: this thread's buffer.
                        let a =
                            unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }
                                .unwrap();
                        assert!(
                            live.lock().unwrap().insert(a.0),
                            "IOVA {a} handed out twice"
                        );
                        if i % 16 == 0 {
                            assert_eq!(f.dev_read(a.0, 4).unwrap(), vec![0x10 + t; 4]);
                        }
                        live.lock().unwrap().remove(&a.0);
                        // SAFETY: the mapping above.
                        unsafe { dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty()) }
                            .unwrap();
                        f.env.advance(1);
                        seen.lock().unwrap().push(a.0);
                    }
                });
            }
        });
        f.dom.flush_pending().unwrap();
        let seen = seen.into_inner().unwrap();
        let distinct: HashSet<_> = seen.iter().collect();
        for a in distinct {
            f.assert_unreachable(*a, 4096);
        }
    }
}
