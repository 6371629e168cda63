//! The shadow's environment: table memory from the platform, and TLB
//! hooks that invalidate on every SMMU sharing the shadow.
//!
//! Per SMMU and invalidation: the planned `TLBI_S2_IPA` commands at VMID 0
//! and a `CMD_SYNC`, then `TLBI_NH_ALL` at VMID 0 and a `CMD_SYNC` (host
//! stage-1 entries nested on the shadow are combined entries that IPA
//! invalidation need not remove; dropping them only after the IPA
//! invalidation completed keeps a walk from refilling them from stale
//! stage-2 entries). SMMUs that are off are skipped: their next bring-up
//! invalidates everything.
//!
//! During a batched operation the hooks only record what to invalidate,
//! and the operation's end sends one invalidation for all of it. That
//! is sound because nothing they cover is handed out before `finish`
//! returns: a block replaced in one store (BBML2) translates as before,
//! and a disconnected table is retired, not freed, until the shadow's
//! owner reclaims it after `finish`.

use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use io_pgtable::env::{
    AllocError, CacheError, CacheMaintenance, Gather, TableBlock, TableMemory, TlbError, TlbHooks,
};
use smmuv3::command::Command;
use smmuv3::env::SmmuEnv;
use smmuv3::sync::SpinLock;
use smmuv3::tlbi::{TlbiPolicy, TlbiRequest, TlbiTarget, plan};
use smmuv3::{ExternalStage2, Smmu};

/// The shadow's VMID on every SMMU.
pub const HOST_VMID: u16 = 0;

/// One SMMU sharing the shadow.
pub(crate) struct Slot<E: SmmuEnv> {
    /// `None` while powered off.
    pub(crate) smmu: Option<Smmu<E>>,
    /// The shadow bound to it (VMID 0), while on.
    pub(crate) binding: Option<ExternalStage2<E>>,
    /// Host streams attached to the shadow (kept across power cycles).
    pub(crate) streams: Vec<u32>,
}

/// What the hooks deferred during a batched operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pending {
    start: u64,
    end: u64,
    /// `None`: nothing; `Some(Some(l))`: only leaves of 2^l bytes;
    /// `Some(None)`: tables or mixed sizes (no level hint).
    leaf: Option<Option<u8>>,
}

impl Pending {
    fn widen(&mut self, start: u64, end: u64, leaf: Option<u8>) {
        match self.leaf {
            None => {
                *self = Self {
                    start,
                    end,
                    leaf: Some(leaf),
                }
            }
            Some(l) => {
                self.start = self.start.min(start);
                self.end = self.end.max(end);
                if l != leaf {
                    self.leaf = Some(None);
                }
            }
        }
    }
}

/// Counters of the invalidations sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Invalidations (each: one plan per SMMU that is on).
    pub invalidations: u64,
    /// Invalidations skipped on SMMUs that were off.
    pub skipped_off: u64,
    /// Bytes of shadow table memory in use.
    pub table_bytes: u64,
    /// Shadow tables in use.
    pub tables: u64,
}

/// The shadow page table's environment (see the module docs).
pub struct ShadowEnv<M, E: SmmuEnv> {
    mem: M,
    pub(crate) slots: SpinLock<Vec<Slot<E>>>,
    deferring: AtomicBool,
    pending: SpinLock<Pending>,
    invalidations: AtomicU64,
    skipped_off: AtomicU64,
    table_bytes: AtomicU64,
    tables: AtomicU64,
}

impl<M, E: SmmuEnv> ShadowEnv<M, E> {
    pub(crate) fn new(mem: M, slots: Vec<Slot<E>>) -> Self {
        Self {
            mem,
            slots: SpinLock::new(slots),
            deferring: AtomicBool::new(false),
            pending: SpinLock::new(Pending::default()),
            invalidations: AtomicU64::new(0),
            skipped_off: AtomicU64::new(0),
            table_bytes: AtomicU64::new(0),
            tables: AtomicU64::new(0),
        }
    }

    /// Returns the table memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Returns the counters.
    pub fn stats(&self) -> ShadowStats {
        ShadowStats {
            invalidations: self.invalidations.load(Ordering::Relaxed),
            skipped_off: self.skipped_off.load(Ordering::Relaxed),
            table_bytes: self.table_bytes.load(Ordering::Relaxed),
            tables: self.tables.load(Ordering::Relaxed),
        }
    }

    /// Starts a batched operation: hooks record instead of invalidating.
    pub(crate) fn begin(&self) {
        *self.pending.lock() = Pending::default();
        self.deferring.store(true, Ordering::Release);
    }

    /// Ends a batched operation: one invalidation on every SMMU that is on
    /// for what the hooks recorded plus what `gather` holds.
    ///
    /// # Errors
    ///
    /// The first SMMU that failed and its error (the others were still
    /// invalidated).
    pub(crate) fn finish(&self, gather: &Gather) -> Result<(), (usize, smmuv3::Error)> {
        self.deferring.store(false, Ordering::Release);
        let mut p = core::mem::take(&mut *self.pending.lock());
        if !gather.is_empty() {
            p.widen(gather.start(), gather.end(), leaf_hint(gather));
        }
        match p.leaf {
            None => Ok(()),
            Some(leaf) => self.invalidate(p.start, p.end - p.start, leaf),
        }
    }

    /// Adds `[start, end)` (tables included) to the batched operation's
    /// invalidation.
    pub(crate) fn defer_walk(&self, start: u64, end: u64) {
        self.pending.lock().widen(start, end, None);
    }

    /// Invalidates `[iova, iova + size)` at VMID 0 (leaves of `leaf_log2`
    /// only, or everything) and the stage-1 entries nested on it, on every
    /// SMMU that is on, and waits for each.
    ///
    /// # Errors
    ///
    /// The first SMMU that failed, with its error.
    pub(crate) fn invalidate(
        &self,
        iova: u64,
        size: u64,
        leaf_log2: Option<u8>,
    ) -> Result<(), (usize, smmuv3::Error)> {
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        let req = TlbiRequest {
            target: TlbiTarget::Stage2 { vmid: HOST_VMID },
            iova,
            size,
            granule_log2: 12,
            leaf_log2,
        };
        let slots = self.slots.lock();
        let mut first_err = None;
        for (k, slot) in slots.iter().enumerate() {
            let Some(smmu) = &slot.smmu else {
                self.skipped_off.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if let Err(e) = invalidate_one(smmu, &req) {
                first_err.get_or_insert((k, e));
            }
        }
        match first_err {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }
}

/// One SMMU's share of an invalidation.
fn invalidate_one<E: SmmuEnv>(smmu: &Smmu<E>, req: &TlbiRequest) -> Result<(), smmuv3::Error> {
    let f = smmu.features();
    let c = smmu.config();
    let policy = TlbiPolicy {
        ril: f.ril && c.use_ril,
        max_ops: c.tlbi_max_ops,
    };
    let cmds = plan(req, &policy)?;
    let whole = cmds.is_whole_target();
    let cmds: Vec<Command> = cmds.collect();
    smmu.issue(&cmds, true)?;
    if !whole {
        smmu.issue(&[Command::TlbiNhAll { vmid: HOST_VMID }], true)?;
    }
    Ok(())
}

/// Returns io-pgtable's view of a driver error.
fn tlb_error(e: smmuv3::Error) -> TlbError {
    match e {
        smmuv3::Error::Timeout(_) => TlbError::Timeout,
        smmuv3::Error::CommandRejected { raw, .. } => TlbError::Rejected(raw),
        _ => TlbError::NotIssued("SMMU command error"),
    }
}

// SAFETY: every method forwards to `M`, which upholds the contract; the
// counters do not touch the memory.
unsafe impl<M: TableMemory, E: SmmuEnv> TableMemory for ShadowEnv<M, E> {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        let b = self.mem.alloc_table(size)?;
        self.table_bytes.fetch_add(size as u64, Ordering::Relaxed);
        self.tables.fetch_add(1, Ordering::Relaxed);
        Ok(b)
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        self.table_bytes.fetch_sub(size as u64, Ordering::Relaxed);
        self.tables.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: forwarded from our caller; the block came from `self.mem`.
        unsafe { self.mem.free_table(block, size) }
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.mem.phys_to_cpu(phys)
    }
}

impl<M: CacheMaintenance, E: SmmuEnv> CacheMaintenance for ShadowEnv<M, E> {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.mem.clean(cpu, phys, len)
    }

    fn device_write_barrier(&self) {
        self.mem.device_write_barrier()
    }

    fn full_barrier(&self) {
        self.mem.full_barrier()
    }
}

impl<M, E: SmmuEnv> TlbHooks for ShadowEnv<M, E> {
    fn flush_walk(&self, iova: u64, size: u64, _granule: u64) -> Result<(), TlbError> {
        if self.deferring.load(Ordering::Acquire) {
            self.pending
                .lock()
                .widen(iova, iova.saturating_add(size), None);
            return Ok(());
        }
        self.invalidate(iova, size, None)
            .map_err(|(_, e)| tlb_error(e))
    }

    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError> {
        if gather.is_empty() {
            return Ok(());
        }
        let leaf = leaf_hint(gather);
        if self.deferring.load(Ordering::Acquire) {
            self.pending
                .lock()
                .widen(gather.start(), gather.end(), leaf);
            return Ok(());
        }
        self.invalidate(gather.start(), gather.len(), leaf)
            .map_err(|(_, e)| tlb_error(e))
    }
}

/// Returns the leaf level hint for invalidating `gather`: none when a
/// failed sync widened it over leaves of several sizes, since a hint of
/// the smallest would leave the larger leaves in the TLB. (The shadow's
/// unmaps run batched, where a sync records instead of failing, so today
/// every gather here has one size; the hint follows the contract anyway.)
fn leaf_hint(gather: &Gather) -> Option<u8> {
    gather.leaf_size().map(|s| s.trailing_zeros() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_widens_and_loses_the_hint_when_kinds_mix() {
        let mut p = Pending::default();
        p.widen(0x2000, 0x3000, Some(12));
        p.widen(0x8000, 0x9000, Some(12));
        assert_eq!(
            p,
            Pending {
                start: 0x2000,
                end: 0x9000,
                leaf: Some(Some(12))
            }
        );
        p.widen(0, 0x20_0000, None);
        assert_eq!(
            p,
            Pending {
                start: 0,
                end: 0x20_0000,
                leaf: Some(None)
            }
        );
    }

    #[test]
    fn a_gather_widened_over_two_sizes_gives_no_leaf_hint() {
        let mut g = Gather::new();
        g.add(0, 0x1000, 1);
        assert_eq!(leaf_hint(&g), Some(12));
        // What io-pgtable does when the sync between the two sizes failed:
        // a hint of level 3 would leave the 2 MiB block cached.
        g.widen(0x20_0000, 0x20_0000, 1);
        assert_eq!(leaf_hint(&g), None);
        assert_eq!(leaf_hint(&Gather::new()), None);
    }
}
