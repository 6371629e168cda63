//! Snapshot and restore of the whole model state (registers, queues'
//! pointers, configuration caches, TLB and walk cache, statistics, stalls,
//! fault injection), so a VM with a vSMMU can be migrated: restoring into a
//! fresh model over the same memory content gives identical translations,
//! events and statistics, stale cache entries included.

use serde::{Deserialize, Serialize};

use super::context::Ctx;
use super::decode::{Cd, Ste};
use super::{Inject, Regs, Stalled, State};
use crate::config::ModelConfig;
use crate::event::Event;
use crate::stats::Stats;
use crate::tlb::{FastMap, Tlb, TlbSnapshot};
use crate::{Interrupts, SmmuModel};

/// Version of the snapshot format (2: TLB and walk-cache entries are
/// stored with their set-associative slots and eviction state; 3: their
/// permissions are one bit mask; 4: stall records waiting for room in the
/// event queue).
pub const SNAPSHOT_VERSION: u32 = 4;

/// The serialisable state of a [`SmmuModel`] (not the memory behind it,
/// which the VMM migrates as guest RAM, and not the trace or the
/// interrupt/MSI callbacks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSnapshot {
    version: u32,
    config: ModelConfig,
    regs: Regs,
    ste_cache: Vec<(u32, Ste)>,
    l1std_cache: Vec<(u32, u64)>,
    cd_cache: Vec<((u32, u32), Cd)>,
    l1cd_cache: Vec<((u32, u32), u64)>,
    ctx_cache: Vec<(u64, Ctx)>,
    tlb: TlbSnapshot,
    stats: Stats,
    inject: Inject,
    irq: Interrupts,
    stalled: Vec<Stalled>,
    /// Stall records waiting for room, as event queue entries.
    stall_records: Vec<[u8; 32]>,
    next_stag: u16,
}

impl ModelSnapshot {
    /// Returns the configuration of the model the snapshot was taken from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
}

/// Why a snapshot cannot be restored; the model is left unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot was written by another format version.
    #[error("snapshot format version {found}, expected {SNAPSHOT_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The model is not configured like the one the snapshot came from (its
    /// ID registers, and so what its caches may hold, would differ).
    #[error("snapshot of a differently configured SMMU")]
    ConfigMismatch,
    /// The snapshot holds state the model could not have been in (a
    /// register value its writes mask off, a cached structure its decoders
    /// never produce, a TLB entry its walker never fills): it was corrupted
    /// or forged, and restoring it could make translations misbehave.
    #[error("corrupt snapshot: {what}")]
    Corrupt {
        /// The part of the state found inconsistent.
        what: &'static str,
    },
}

fn sorted<K: Ord + Copy, V: Copy>(m: &FastMap<K, V>) -> Vec<(K, V)> {
    let mut v: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
    v.sort_unstable_by_key(|(k, _)| *k);
    v
}

impl SmmuModel {
    /// Returns a snapshot of the whole model state.
    pub fn snapshot(&self) -> ModelSnapshot {
        let mut s = self.lock();
        s.fold_hot_hits();
        ModelSnapshot {
            version: SNAPSHOT_VERSION,
            config: s.cfg.clone(),
            regs: s.regs.clone(),
            ste_cache: sorted(&s.ste_cache),
            l1std_cache: sorted(&s.l1std_cache),
            cd_cache: sorted(&s.cd_cache),
            l1cd_cache: sorted(&s.l1cd_cache),
            ctx_cache: sorted(&s.ctx_cache),
            tlb: s.tlb.snapshot(),
            stats: s.stats.clone(),
            inject: s.inject,
            irq: s.irq,
            stalled: s.stalled.clone(),
            stall_records: s.stall_records.iter().map(Event::to_bytes).collect(),
            next_stag: s.next_stag,
        }
    }

    /// Replaces the model state with `snap` (taken from a model with the
    /// same configuration, over memory with the same content).
    ///
    /// # Errors
    ///
    /// [`SnapshotError`]; the model is then unchanged.
    pub fn restore(&self, snap: &ModelSnapshot) -> Result<(), SnapshotError> {
        if snap.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version {
                found: snap.version,
            });
        }
        let mut s = self.lock();
        if s.cfg != snap.config {
            return Err(SnapshotError::ConfigMismatch);
        }
        s.check(snap)?;
        s.fold_hot_hits();
        s.restore_from(snap);
        drop(s);
        // A CMD_SYNC the source held at CMDQ_CONS for its `Iotlb` accesses
        // (a fresh model has none) completes at the next register access.
        super::sync_gate::arm(&self.sync_wait);
        self.deliver();
        Ok(())
    }
}

impl State {
    /// Returns why `snap` (of this configuration) holds state this model
    /// could not have been in, if it does.
    fn check(&self, snap: &ModelSnapshot) -> Result<(), SnapshotError> {
        let corrupt = |what| Err(SnapshotError::Corrupt { what });
        if !self.regs_consistent(&snap.regs) {
            return corrupt("a register holds bits its writes never set");
        }
        if !snap.ste_cache.iter().all(|(_, ste)| ste.is_consistent()) {
            return corrupt("a cached STE the decoder never produces");
        }
        if !snap.cd_cache.iter().all(|(_, cd)| cd.is_consistent()) {
            return corrupt("a cached CD the decoder never produces");
        }
        if !snap.ctx_cache.iter().all(|(_, ctx)| ctx.is_consistent()) {
            return corrupt("a stream context its STE and CD do not give");
        }
        let counters = [snap.stats.max_counter(), snap.tlb.max_counter()];
        if counters.iter().any(|&c| c >> 63 != 0) {
            return corrupt("a counter beyond what any run reaches (2^63)");
        }
        if snap.stalled.len() > crate::regs::STALL_MAX as usize {
            return corrupt("more outstanding stalls than IDR5.STALL_MAX");
        }
        let mut stags: Vec<u16> = snap.stalled.iter().map(|s| s.stag).collect();
        stags.sort_unstable();
        if stags.windows(2).any(|w| w[0] == w[1]) {
            return corrupt("two outstanding stalls with one STAG");
        }
        let outstanding = |ev: &Event| {
            ev.stall
                && snap
                    .stalled
                    .iter()
                    .any(|s| s.sid == ev.sid && s.stag == ev.stag)
        };
        if !snap
            .stall_records
            .iter()
            .all(|b| Event::from_bytes(b).is_some_and(|ev| outstanding(&ev)))
        {
            return corrupt("a waiting stall record of no outstanding stall");
        }
        let cfg = &self.cfg;
        if !snap
            .tlb
            .is_consistent(cfg.tlb_capacity, cfg.bbml, cfg.oas_bits)
        {
            return corrupt("a TLB or walk-cache entry the walker never fills");
        }
        Ok(())
    }

    fn restore_from(&mut self, snap: &ModelSnapshot) {
        self.regs = snap.regs.clone();
        self.ste_cache = snap.ste_cache.iter().copied().collect();
        self.l1std_cache = snap.l1std_cache.iter().copied().collect();
        self.cd_cache = snap.cd_cache.iter().copied().collect();
        self.l1cd_cache = snap.l1cd_cache.iter().copied().collect();
        self.ctx_cache = snap.ctx_cache.iter().copied().collect();
        self.tlb = Tlb::from_snapshot(&snap.tlb);
        self.stats = snap.stats.clone();
        self.inject = snap.inject;
        self.irq = snap.irq;
        self.stalled = snap.stalled.clone();
        // Checked to decode.
        self.stall_records = snap
            .stall_records
            .iter()
            .filter_map(Event::from_bytes)
            .collect();
        self.next_stag = snap.next_stag;
        self.set_last(None);
        self.sync_iotlbs();
    }
}
