//! Translation domains: an io-pgtable page table, an ASID or VMID, and the
//! streams attached to it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use io_pgtable::config::{Config, Granule, Regs, WalkCoherency};
use io_pgtable::env::{
    AllocError, CacheError, CacheMaintenance, Gather, TableBlock, TableMemory, TlbError, TlbHooks,
};
use io_pgtable::{PageTable, Prot};

use super::{Inner, Smmu};
use crate::Error;
use crate::command::{Command, atc_inv};
use crate::env::SmmuEnv;
use crate::sync::SpinLock;
use crate::tlbi::{TlbiPolicy, TlbiRequest, TlbiTarget, plan};

/// Which translation a domain provides, and its TLB tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// Stage 1 (VA -> PA, or VA -> IPA when nested).
    Stage1 {
        /// ASID.
        asid: u16,
        /// VMID of the stage-2 domain it is nested under; `None` when not
        /// nested. (VMID 0 is a valid parent: a hypervisor's host stage 2.)
        parent_vmid: Option<u16>,
    },
    /// Stage 2 (IPA -> PA).
    Stage2 {
        /// VMID.
        vmid: u16,
    },
}

/// What the stream table and the TLB hooks need to know of a domain.
pub(crate) struct DomainShared {
    kind: DomainKind,
    attached: SpinLock<Vec<(u32, Option<u32>)>>,
    ats: SpinLock<Vec<(u32, Option<u32>)>>,
    /// Stage 2 only: stage-1 contexts may be nested on it, so the TLBs may
    /// hold combined stage 1+2 entries that IPA invalidation need not
    /// remove.
    nest_parent: AtomicBool,
}

impl DomainShared {
    pub(crate) fn new(kind: DomainKind) -> Self {
        Self {
            kind,
            attached: SpinLock::new(Vec::new()),
            ats: SpinLock::new(Vec::new()),
            nest_parent: AtomicBool::new(false),
        }
    }

    pub(crate) fn kind(&self) -> DomainKind {
        self.kind
    }

    /// Returns the VMID the domain's TLB entries are tagged with (0 for a
    /// stage-1 domain that is not nested, as the SMMU tags them).
    pub(crate) fn tlb_vmid(&self) -> u16 {
        match self.kind {
            DomainKind::Stage1 { parent_vmid, .. } => parent_vmid.unwrap_or(0),
            DomainKind::Stage2 { vmid } => vmid,
        }
    }

    /// Returns the VMID of the stage 2 a stage-1 domain is nested under.
    pub(crate) fn parent_vmid(&self) -> Option<u16> {
        match self.kind {
            DomainKind::Stage1 { parent_vmid, .. } => parent_vmid,
            DomainKind::Stage2 { .. } => None,
        }
    }

    pub(crate) fn add(&self, sid: u32, ssid: Option<u32>) {
        let mut a = self.attached.lock();
        if !a.contains(&(sid, ssid)) {
            a.push((sid, ssid));
        }
    }

    /// Returns the streams attached without a substream.
    pub(crate) fn attached_sids(&self) -> Vec<u32> {
        let a = self.attached.lock();
        a.iter()
            .filter(|(_, ssid)| ssid.is_none())
            .map(|(sid, _)| *sid)
            .collect()
    }

    pub(crate) fn add_ats(&self, sid: u32, ssid: Option<u32>) {
        let mut a = self.ats.lock();
        if !a.contains(&(sid, ssid)) {
            a.push((sid, ssid));
        }
    }

    pub(crate) fn remove(&self, sid: u32, ssid: Option<u32>) {
        self.attached.lock().retain(|x| *x != (sid, ssid));
        self.ats.lock().retain(|x| *x != (sid, ssid));
    }

    fn target(&self) -> TlbiTarget {
        match self.kind {
            DomainKind::Stage1 { asid, .. } => TlbiTarget::Stage1 {
                vmid: self.tlb_vmid(),
                asid,
            },
            DomainKind::Stage2 { vmid } => TlbiTarget::Stage2 { vmid },
        }
    }
}

/// The environment io-pgtable sees for a domain: the SMMU's memory, and TLB
/// hooks that invalidate through the SMMU's command queue. It remembers
/// nothing between calls: every hook is synchronous and returns its error.
pub struct DomainEnv<E: SmmuEnv> {
    inner: Arc<Inner<E>>,
    shared: Arc<DomainShared>,
    granule_log2: u8,
}

// SAFETY: every method forwards to the SMMU's memory, which upholds the
// `TableMemory` contract itself.
unsafe impl<E: SmmuEnv> TableMemory for DomainEnv<E> {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        self.inner.mem.alloc_table(size)
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        // SAFETY: forwarded from our caller, and the block came from the same
        // memory (`alloc_table` above).
        unsafe { self.inner.mem.free_table(block, size) }
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.inner.mem.phys_to_cpu(phys)
    }
}

impl<E: SmmuEnv> CacheMaintenance for DomainEnv<E> {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.inner.mem.clean(cpu, phys, len)
    }

    fn device_write_barrier(&self) {
        self.inner.mem.device_write_barrier()
    }

    fn full_barrier(&self) {
        self.inner.mem.full_barrier()
    }
}

/// Returns the io-pgtable view of a driver error met while invalidating.
fn tlb_error(e: Error) -> TlbError {
    match e {
        Error::Timeout(_) => TlbError::Timeout,
        Error::CommandRejected { raw, .. } => TlbError::Rejected(raw),
        Error::QueueDisabled => TlbError::NotIssued("command queue disabled"),
        Error::Command(_) => TlbError::NotIssued("invalidation not encodable"),
        Error::BadPointer(_) => TlbError::NotIssued("impossible CMDQ_CONS"),
        Error::Global(_) => TlbError::NotIssued("SMMU global error"),
        _ => TlbError::NotIssued("command queue error"),
    }
}

impl<E: SmmuEnv> DomainEnv<E> {
    /// Invalidates `[iova, iova + size)` (leaf entries of `leaf_log2` only,
    /// or everything), the combined entries of a nesting parent, and the
    /// ATCs of ATS streams, and waits. Allocates nothing.
    fn invalidate(&self, iova: u64, size: u64, leaf_log2: Option<u8>) -> Result<(), Error> {
        let i = &self.inner;
        let req = TlbiRequest {
            target: self.shared.target(),
            iova,
            size,
            granule_log2: self.granule_log2,
            leaf_log2,
        };
        let policy = TlbiPolicy {
            ril: i.features.ril && i.cfg.use_ril,
            max_ops: i.cfg.tlbi_max_ops,
        };
        let cmds = plan(&req, &policy)?;
        let whole_vmid = cmds.is_whole_target();
        i.issue_encodable(cmds, true)?;
        if self.shared.nest_parent.load(Ordering::Acquire) && !whole_vmid {
            // IPA invalidation need not remove combined stage 1+2 entries;
            // only after it completed (so no walk refills them from stale
            // stage-2 entries) are the VMID's stage-1 entries dropped.
            i.issue_encodable(
                core::iter::once(Command::TlbiNhAll {
                    vmid: self.shared.tlb_vmid(),
                }),
                true,
            )?;
        }
        // ATCs only after the TLB invalidation completed: otherwise a
        // device could refill its ATC from a stale TLB entry in between.
        let ats = self.shared.ats.lock();
        if ats.is_empty() {
            return Ok(());
        }
        i.issue_iter(
            ats.iter()
                .map(|&(sid, ssid)| atc_inv(sid, ssid, iova, size)),
            true,
        )
    }

    /// Invalidates the leaves of `gather` (nothing when it is empty), with
    /// their level as a hint only when they all have one size: a gather a
    /// failed sync widened holds larger leaves too, which an invalidation
    /// hinted at the smallest level would leave in the TLB.
    fn invalidate_gather(&self, gather: &Gather) -> Result<(), Error> {
        if gather.is_empty() {
            return Ok(());
        }
        let leaf = gather.leaf_size().map(|s| s.trailing_zeros() as u8);
        self.invalidate(gather.start(), gather.len(), leaf)
    }
}

impl<E: SmmuEnv> TlbHooks for DomainEnv<E> {
    fn flush_walk(&self, iova: u64, size: u64, _granule: u64) -> Result<(), TlbError> {
        self.invalidate(iova, size, None).map_err(tlb_error)
    }

    fn sync_gather(&self, gather: &Gather) -> Result<(), TlbError> {
        self.invalidate_gather(gather).map_err(tlb_error)
    }
}

/// Returns the input size to build a table with: what was asked, at most
/// what the SMMU walks, and at most 48 bits unless the granule is 64 KiB.
fn clamp_ias(granule: Granule, want: u8, smmu_max: u8) -> u32 {
    let arch_max = if granule == Granule::K64 { 52 } else { 48 };
    u32::from(want.min(smmu_max).min(arch_max))
}

/// Returns the output size to build a table with: 52-bit output needs the
/// 64 KiB granule, other granules stop at 48 bits.
fn clamp_oas(granule: Granule, oas: u32) -> u32 {
    if granule == Granule::K64 {
        oas
    } else {
        oas.min(48)
    }
}

/// A translation domain.
pub struct Domain<E: SmmuEnv> {
    smmu: Smmu<E>,
    pt: ManuallyDrop<PageTable<DomainEnv<E>>>,
    shared: Arc<DomainShared>,
}

impl<E: SmmuEnv> Domain<E> {
    fn build(smmu: &Smmu<E>, kind: DomainKind, cfg: Config) -> Result<Self, Error> {
        let i = &smmu.inner;
        let gsize = cfg.granule.size();
        if i.features.pgsize_bitmap & gsize == 0 {
            return Err(Error::Unsupported(
                "granule not supported by the SMMU (IDR5)",
            ));
        }
        // Decided once, at probe: a non-coherent walker gets deferred
        // cleans, one `sync_map` per map call or batch.
        let cfg = cfg.with_coherency(if i.features.coherent {
            WalkCoherency::Coherent
        } else {
            WalkCoherency::Deferred
        });
        let shared = Arc::new(DomainShared::new(kind));
        let env = DomainEnv {
            inner: i.clone(),
            shared: shared.clone(),
            granule_log2: cfg.granule.shift() as u8,
        };
        let pt = PageTable::new(cfg, env)?;
        i.next_domain.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            smmu: smmu.clone(),
            pt: ManuallyDrop::new(pt),
            shared,
        })
    }

    /// Returns a new stage-1 domain with a fresh ASID, translating
    /// `va_bits` of input to the SMMU's output size.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] without stage 1 or the granule,
    /// [`Error::IdsExhausted`], page-table and allocation errors.
    pub fn new_stage1(smmu: &Smmu<E>, granule: Granule, va_bits: u8) -> Result<Self, Error> {
        let f = smmu.features();
        if !f.stage1 {
            return Err(Error::Unsupported("stage 1 (IDR0.S1P)"));
        }
        Self::stage1_under(smmu, None, granule, va_bits, f.oas_bits.into())
    }

    /// Returns a stage-1 domain with a fresh ASID, nested under stage-2
    /// VMID `parent_vmid` (or not nested), whose output is `out_bits` wide.
    fn stage1_under(
        smmu: &Smmu<E>,
        parent_vmid: Option<u16>,
        granule: Granule,
        va_bits: u8,
        out_bits: u32,
    ) -> Result<Self, Error> {
        let asid = smmu.inner.asids.lock().alloc()?;
        let cfg = Config::stage1(
            granule,
            clamp_ias(granule, va_bits, smmu.features().va_bits),
            clamp_oas(granule, out_bits),
        );
        Self::build(smmu, DomainKind::Stage1 { asid, parent_vmid }, cfg).inspect_err(|_| {
            smmu.inner.asids.lock().free(asid, true);
        })
    }

    /// Returns a new stage-1 domain nested under `parent` (a stage-2
    /// domain): its output addresses are IPAs of `parent`.
    ///
    /// # Errors
    ///
    /// As [`Domain::new_stage1`], and [`Error::Unsupported`] without
    /// nesting or when `parent` is not stage 2.
    pub fn new_nested_stage1(
        parent: &Domain<E>,
        granule: Granule,
        va_bits: u8,
    ) -> Result<Self, Error> {
        let smmu = &parent.smmu;
        let f = smmu.features();
        if !f.nesting {
            return Err(Error::Unsupported("nesting (IDR0.S1P+S2P, errata)"));
        }
        let DomainKind::Stage2 { vmid } = parent.kind() else {
            return Err(Error::Unsupported("nested stage 1 needs a stage-2 parent"));
        };
        let child = Self::stage1_under(smmu, Some(vmid), granule, va_bits, parent.pt.config().ias)?;
        parent.mark_nest_parent();
        Ok(child)
    }

    /// Returns a new stage-2 domain with a fresh VMID, translating
    /// `ipa_bits` of input to the SMMU's output size.
    ///
    /// # Errors
    ///
    /// As [`Domain::new_stage1`] for stage 2.
    pub fn new_stage2(smmu: &Smmu<E>, granule: Granule, ipa_bits: u8) -> Result<Self, Error> {
        let f = smmu.features();
        if !f.stage2 {
            return Err(Error::Unsupported("stage 2 (IDR0.S2P)"));
        }
        let vmid = smmu.inner.vmids.lock().alloc()?;
        let cfg = Config::stage2(
            granule,
            clamp_ias(granule, ipa_bits, f.ipa_bits),
            clamp_oas(granule, f.oas_bits.into()),
        );
        Self::build(smmu, DomainKind::Stage2 { vmid }, cfg).inspect_err(|_| {
            smmu.inner.vmids.lock().free(vmid, true);
        })
    }

    /// Returns a new stage-2 domain with the given VMID, e.g. VMID 0 for a
    /// hypervisor's host stage 2 (as pKVM does). The SMMU also tags the TLB
    /// entries of stage-1-only streams with VMID 0, so invalidating such a
    /// domain as a nesting parent also drops theirs (harmless
    /// over-invalidation); the driver itself never confuses the two.
    ///
    /// # Errors
    ///
    /// As [`Domain::new_stage2`]; [`Error::IdsExhausted`] when the VMID is
    /// in use, quarantined or wider than the SMMU's VMIDs.
    pub fn new_stage2_with_vmid(
        smmu: &Smmu<E>,
        granule: Granule,
        ipa_bits: u8,
        vmid: u16,
    ) -> Result<Self, Error> {
        let f = smmu.features();
        if !f.stage2 {
            return Err(Error::Unsupported("stage 2 (IDR0.S2P)"));
        }
        let vmid = smmu.inner.vmids.lock().claim(vmid)?;
        let cfg = Config::stage2(
            granule,
            clamp_ias(granule, ipa_bits, f.ipa_bits),
            clamp_oas(granule, f.oas_bits.into()),
        );
        Self::build(smmu, DomainKind::Stage2 { vmid }, cfg).inspect_err(|_| {
            smmu.inner.vmids.lock().free(vmid, true);
        })
    }

    pub(crate) fn shared(&self) -> &Arc<DomainShared> {
        &self.shared
    }

    /// Returns whether the domain was made on `smmu` (its ids are allocated
    /// and its invalidations issued there only).
    pub(crate) fn belongs_to(&self, smmu: &Smmu<E>) -> bool {
        Arc::ptr_eq(&self.smmu.inner, &smmu.inner)
    }

    pub(crate) fn table_regs(&self) -> Regs {
        self.pt.regs()
    }

    /// Returns the domain's stage and TLB tag.
    pub fn kind(&self) -> DomainKind {
        self.shared.kind
    }

    /// Returns the page table (for translation queries and walks).
    pub fn page_table(&self) -> &PageTable<DomainEnv<E>> {
        &self.pt
    }

    /// Returns the streams (and substreams) attached to the domain.
    pub fn attached(&self) -> Vec<(u32, Option<u32>)> {
        self.shared.attached.lock().clone()
    }

    /// Declares that stage-1 contexts the driver did not build (a host's,
    /// shadowed by a hypervisor) may be nested on this stage-2 domain: its
    /// invalidations then also drop the VMID's stage-1 entries
    /// (`TLBI_NH_ALL`), which may be combined stage 1+2 entries. Nested
    /// domains made by [`Domain::new_nested_stage1`] set it themselves.
    pub fn mark_nest_parent(&self) {
        if matches!(self.shared.kind, DomainKind::Stage2 { .. }) {
            self.shared.nest_parent.store(true, Ordering::Release);
        }
    }

    /// Maps `[iova, iova + len)` to `[pa, pa + len)` with the largest pages
    /// the alignment allows, and makes the mapping visible to the device
    /// before returning (deferred cleans, then the device write barrier).
    /// New mappings need no invalidation.
    ///
    /// # Errors
    ///
    /// [`Error::Partial`] when the page table stopped part way (what was
    /// mapped stays mapped, and is made visible too); [`Error::PageTable`]
    /// when making it visible failed.
    pub fn map(&self, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Error> {
        let r = self.pt.map_range(iova, pa, len, prot);
        let done = match r {
            Ok(n) => n as u64,
            Err(p) => p.done as u64,
        };
        self.pt.sync_map(iova, done)?;
        r?;
        Ok(())
    }

    /// As [`Domain::map`] but leaves the mapping invisible to a
    /// non-coherent device until [`Domain::sync_map`] covers it: a batch of
    /// maps then cleans each dirty cache line once, not once per call.
    ///
    /// # Errors
    ///
    /// [`Error::Partial`] when the page table stopped part way.
    pub fn map_deferred(&self, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Error> {
        self.pt.map_range(iova, pa, len, prot)?;
        Ok(())
    }

    /// Makes the mappings of earlier [`Domain::map_deferred`] calls in
    /// `[iova, iova + len)` visible to the device (one clean per dirty line,
    /// then the device write barrier).
    ///
    /// # Errors
    ///
    /// [`Error::PageTable`] for a bad range or a failed clean.
    pub fn sync_map(&self, iova: u64, len: u64) -> Result<(), Error> {
        self.pt.sync_map(iova, len)?;
        Ok(())
    }

    /// Unmaps `[iova, iova + len)`, invalidates the TLB (and ATCs) for it,
    /// waits for completion and frees page-table pages that fell empty.
    ///
    /// Returns the bytes unmapped.
    ///
    /// # Errors
    ///
    /// [`Error::Partial`] when the page table stopped part way (its `done`
    /// counts every cleared byte, and those are invalidated before this
    /// returns), or the invalidation's own error. Either way nothing the
    /// call cleared stays reachable unless the invalidation itself failed.
    pub fn unmap(&mut self, iova: u64, len: u64) -> Result<u64, Error> {
        let r = self.unmap_shared(iova, len);
        // Every retired table was flushed from the walk caches before it was
        // retired, and `&mut self` proves no CPU walk is in flight.
        self.pt.reclaim();
        r
    }

    /// As [`Domain::unmap`] but through a shared reference, so threads can
    /// unmap disjoint ranges concurrently: page-table pages that fell empty
    /// are retired, not freed, until [`Domain::reclaim`].
    ///
    /// # Errors
    ///
    /// As [`Domain::unmap`].
    pub fn unmap_shared(&self, iova: u64, len: u64) -> Result<u64, Error> {
        let mut gather = Gather::new();
        let r = self.pt.unmap_range(iova, len, &mut gather);
        // Exactly what the gather holds: leaves only, from this call only.
        self.pt.env().invalidate_gather(&gather)?;
        Ok(r? as u64)
    }

    /// Frees page-table pages retired by [`Domain::unmap_shared`] (their
    /// TLB and walk-cache entries were invalidated before they were retired;
    /// `&mut self` proves no walk by this driver is in flight).
    ///
    /// Returns how many tables were freed.
    pub fn reclaim(&mut self) -> usize {
        self.pt.reclaim()
    }

    /// Frees every page-table page left empty by unmaps smaller than it
    /// (an unmap frees a table only when it covers the table's whole
    /// range), after invalidating its walk-cache entries. Needs `&mut self`:
    /// freeing a table a concurrent mapper is filling would lose its
    /// mapping.
    ///
    /// Returns how many tables were freed.
    ///
    /// # Errors
    ///
    /// [`Error::PageTable`] when an invalidation or clean failed; that
    /// table stays linked.
    pub fn compact(&mut self) -> Result<usize, Error> {
        Ok(self.pt.compact()?)
    }

    /// Returns the output address `iova` maps to, if any.
    pub fn translate(&self, iova: u64) -> Option<u64> {
        self.pt.translate(iova)
    }

    /// Invalidates every TLB entry of the domain and, once that completed,
    /// the whole ATC of each of its ATS streams, and waits: the recovery
    /// after an unmap whose invalidation failed, which may have stopped
    /// before its ATC invalidations.
    ///
    /// # Errors
    ///
    /// Command errors.
    pub fn flush_all(&self) -> Result<(), Error> {
        let i = &self.smmu.inner;
        i.issue(&[self.shared.target().all()], true)?;
        let ats = self.shared.ats.lock();
        if ats.is_empty() {
            return Ok(());
        }
        i.issue_iter(
            ats.iter().map(|&(sid, ssid)| atc_inv(sid, ssid, 0, 0)),
            true,
        )
    }
}

impl<E: SmmuEnv> Drop for Domain<E> {
    fn drop(&mut self) {
        // Streams must stop using the tables before they are freed. A shut
        // down SMMU walks nothing, and a new bring-up invalidates all TLBs.
        let quiescent = self.smmu.is_quiescent();
        let attached = self.attached();
        let mut ok = true;
        for (sid, ssid) in attached {
            ok &= quiescent || self.smmu.detach(sid, ssid).is_ok();
        }
        // Only an id whose TLB entries are provably gone may be reused.
        let invalidated = quiescent || (ok && self.flush_all().is_ok());
        let i = &self.smmu.inner;
        match self.shared.kind {
            DomainKind::Stage1 { asid, .. } => i.asids.lock().free(asid, invalidated),
            DomainKind::Stage2 { vmid } => i.vmids.lock().free(vmid, invalidated),
        }
        if ok {
            // SAFETY: `pt` is never used again (we are in `drop`), and no
            // stream points at its tables any more (every detach synced).
            unsafe { ManuallyDrop::drop(&mut self.pt) };
        }
        // Otherwise a stream may still point at the tables: leak them rather
        // than let the SMMU walk freed memory.
    }
}
