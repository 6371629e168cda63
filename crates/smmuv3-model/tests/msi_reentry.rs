//! A VMM whose MSI callback routes each MSI to its MMIO bus (where the
//! guest may aim it at the SMMU's own registers) must not be driven into
//! unbounded recursion by a guest.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use common::H;
use smmuv3_model::layout::op;
use smmuv3_model::{ModelConfig, MsiWrite, SmmuModel, regs};

/// Where the VMM maps the SMMU's register frame.
const FRAME: u64 = 0x0900_0000;

/// Defect: callbacks ran inside the register access that raised the
/// signal, and a callback's own register access delivered the signals it
/// raised in turn, nested. A guest filling its command queue with
/// CMD_SYNCs whose MSI writes CMDQ_PROD (one slot further each) made one
/// MMIO write recurse once per command: 2^15 of them overflowed the
/// stack and aborted the VMM. Now a nested delivery leaves its signals to
/// the one in progress, which delivers a bounded number of rounds; the
/// rest wait for the next register access.
#[test]
fn msis_aimed_at_cmdq_prod_neither_recurse_nor_stall() {
    let log2 = 15u32;
    let mut h = H::new(ModelConfig {
        cmdq_log2: 19,
        ..ModelConfig::default()
    });
    h.enable_queues(log2, 4);
    let sent = Arc::new(AtomicU64::new(0));
    let (m, n) = (Arc::downgrade(&h.smmu), sent.clone());
    let bus = move |w: &MsiWrite| {
        n.fetch_add(1, Ordering::Relaxed);
        let m: Weak<SmmuModel> = m.clone();
        if let Some(m) = m.upgrade() {
            if w.addr == FRAME + regs::CMDQ_PROD {
                m.write32(regs::CMDQ_PROD, w.data);
            }
        }
        true
    };
    h.smmu.set_msi_write_handler(Some(Arc::new(bus)));
    let slots = 1u32 << log2;
    let total = slots - 1;
    for s in 0..total {
        // Completing slot s queues slot s + 1 (the last one queues none).
        let next = (s + 2).min(total);
        let w0 = u64::from(op::SYNC) | 1 << 12 | u64::from(next) << 32;
        h.write_words(h.cmdq + u64::from(s) * 16, &[w0, FRAME + regs::CMDQ_PROD]);
    }
    h.smmu.write32(regs::CMDQ_PROD, 1);
    let cons = |h: &H| h.smmu.read32(regs::CMDQ_CONS) & 0xfffff;
    let first = cons(&h);
    assert!(first >= 1 && first < total, "one write ran {first} syncs");
    let mut accesses = 0;
    while cons(&h) != total {
        accesses += 1;
        assert!(
            accesses < u64::from(total),
            "the chain stalled at {}",
            cons(&h)
        );
    }
    assert_eq!(sent.load(Ordering::Relaxed), u64::from(total));
    assert_eq!(h.smmu.read32(regs::CMDQ_PROD), total);
    assert_eq!(h.smmu.stats().sync_msi_writes, u64::from(total));
}
