//! Translation domains: an io-pgtable page table, an ASID or VMID, and the
//! streams attached to it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use io_pgtable::config::{Config, Granule, Regs, WalkCoherency};
use io_pgtable::env::{
    AllocError, CacheError, CacheMaintenance, Gather, TableBlock, TableMemory, TlbHooks,
};
use io_pgtable::{PageTable, Prot};

use super::{Inner, Smmu};
use crate::Error;
use crate::command::{Command, atc_inv};
use crate::env::{Clock, DmaMemory, RegisterFrame};
use crate::sync::SpinLock;
use crate::tlbi::{TlbiPolicy, TlbiRequest, TlbiTarget, plan};

/// Which translation a domain provides, and its TLB tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// Stage 1 (VA -> PA, or VA -> IPA when nested under VMID `vmid`).
    Stage1 {
        /// ASID.
        asid: u16,
        /// VMID of the stage 2 it is nested under (0: not nested).
        vmid: u16,
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
}

impl DomainShared {
    pub(crate) fn kind(&self) -> DomainKind {
        self.kind
    }

    pub(crate) fn vmid(&self) -> u16 {
        match self.kind {
            DomainKind::Stage1 { vmid, .. } | DomainKind::Stage2 { vmid } => vmid,
        }
    }

    pub(crate) fn add(&self, sid: u32, ssid: Option<u32>) {
        let mut a = self.attached.lock();
        if !a.contains(&(sid, ssid)) {
            a.push((sid, ssid));
        }
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
            DomainKind::Stage1 { asid, vmid } => TlbiTarget::Stage1 { vmid, asid },
            DomainKind::Stage2 { vmid } => TlbiTarget::Stage2 { vmid },
        }
    }
}

/// The environment io-pgtable sees for a domain: the SMMU's memory, and TLB
/// hooks that invalidate through the SMMU's command queue.
pub struct DomainEnv<R: RegisterFrame, M: DmaMemory, C: Clock> {
    inner: Arc<Inner<R, M, C>>,
    shared: Arc<DomainShared>,
    granule_log2: u8,
    /// First invalidation failure inside a hook (hooks cannot return errors).
    failed: SpinLock<Option<Error>>,
    /// Ranges whose walk caches and TLB entries were flushed during the
    /// current unmap (a disconnected table): leaves gathered inside them
    /// are unreachable and already invalidated.
    walked: SpinLock<Vec<(u64, u64)>>,
}

// SAFETY: every method forwards to the SMMU's memory `M`, which upholds the
// `TableMemory` contract itself.
unsafe impl<R: RegisterFrame, M: DmaMemory, C: Clock> TableMemory for DomainEnv<R, M, C> {
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

impl<R: RegisterFrame, M: DmaMemory, C: Clock> CacheMaintenance for DomainEnv<R, M, C> {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.inner.mem.clean(cpu, phys, len)
    }
}

impl<R: RegisterFrame, M: DmaMemory, C: Clock> DomainEnv<R, M, C> {
    /// Invalidates `[iova, iova + size)` (leaf entries of `leaf_log2` only,
    /// or everything) plus the ATCs of ATS streams, and waits.
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
        let cmds: Vec<Command> = plan(&req, &policy)?.collect();
        i.issue(&cmds, true)?;
        // ATCs only after the TLB invalidation completed: otherwise a
        // device could refill its ATC from a stale TLB entry in between.
        let atc: Vec<Command> = self
            .shared
            .ats
            .lock()
            .iter()
            .map(|&(sid, ssid)| atc_inv(sid, ssid, iova, size))
            .collect();
        if atc.is_empty() {
            return Ok(());
        }
        i.issue(&atc, true)
    }

    /// Returns whether `[start, end)` lies inside one flushed walk range.
    fn already_flushed(&self, start: u64, end: u64) -> bool {
        self.walked
            .lock()
            .iter()
            .any(|&(s, e)| s <= start && end <= e)
    }

    fn record(&self, r: Result<(), Error>) {
        if let Err(e) = r {
            let mut f = self.failed.lock();
            if f.is_none() {
                *f = Some(e);
            }
        }
    }
}

impl<R: RegisterFrame, M: DmaMemory, C: Clock> TlbHooks for DomainEnv<R, M, C> {
    fn flush_walk(&self, iova: u64, size: u64, _granule: u64) {
        let r = self.invalidate(iova, size, None);
        if r.is_ok() {
            self.walked.lock().push((iova, iova.saturating_add(size)));
        }
        self.record(r);
    }

    fn sync_gather(&self, gather: &Gather) {
        if gather.is_empty() || self.already_flushed(gather.start(), gather.end()) {
            return;
        }
        let leaf = gather.pgsize().trailing_zeros() as u8;
        self.record(self.invalidate(gather.start(), gather.len(), Some(leaf)));
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
pub struct Domain<R: RegisterFrame, M: DmaMemory, C: Clock> {
    smmu: Smmu<R, M, C>,
    pt: ManuallyDrop<PageTable<DomainEnv<R, M, C>>>,
    shared: Arc<DomainShared>,
}

impl<R: RegisterFrame, M: DmaMemory, C: Clock> Domain<R, M, C> {
    fn build(smmu: &Smmu<R, M, C>, kind: DomainKind, cfg: Config) -> Result<Self, Error> {
        let i = &smmu.inner;
        let gsize = cfg.granule.size();
        if i.features.pgsize_bitmap & gsize == 0 {
            return Err(Error::Unsupported(
                "granule not supported by the SMMU (IDR5)",
            ));
        }
        let cfg = cfg.with_coherency(if i.features.coherent {
            WalkCoherency::Coherent
        } else {
            WalkCoherency::NonCoherent
        });
        let shared = Arc::new(DomainShared {
            kind,
            attached: SpinLock::new(Vec::new()),
            ats: SpinLock::new(Vec::new()),
        });
        let env = DomainEnv {
            inner: i.clone(),
            shared: shared.clone(),
            granule_log2: cfg.granule.shift() as u8,
            failed: SpinLock::new(None),
            walked: SpinLock::new(Vec::new()),
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
    pub fn new_stage1(smmu: &Smmu<R, M, C>, granule: Granule, va_bits: u8) -> Result<Self, Error> {
        let f = smmu.features();
        if !f.stage1 {
            return Err(Error::Unsupported("stage 1 (IDR0.S1P)"));
        }
        Self::stage1_under(smmu, 0, granule, va_bits, f.oas_bits.into())
    }

    /// Returns a stage-1 domain with a fresh ASID, tagged with `vmid` (0 when
    /// not nested), whose output is `out_bits` wide.
    fn stage1_under(
        smmu: &Smmu<R, M, C>,
        vmid: u16,
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
        Self::build(smmu, DomainKind::Stage1 { asid, vmid }, cfg).inspect_err(|_| {
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
        parent: &Domain<R, M, C>,
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
        Self::stage1_under(smmu, vmid, granule, va_bits, parent.pt.config().ias)
    }

    /// Returns a new stage-2 domain with a fresh VMID, translating
    /// `ipa_bits` of input to the SMMU's output size.
    ///
    /// # Errors
    ///
    /// As [`Domain::new_stage1`] for stage 2.
    pub fn new_stage2(smmu: &Smmu<R, M, C>, granule: Granule, ipa_bits: u8) -> Result<Self, Error> {
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
    /// hypervisor's host stage 2 (as pKVM does). VMID 0 is otherwise the tag
    /// of stage-1-only streams: invalidating this domain then also drops
    /// their TLB entries (harmless over-invalidation).
    ///
    /// # Errors
    ///
    /// As [`Domain::new_stage2`]; [`Error::IdsExhausted`] when the VMID is
    /// in use, quarantined or wider than the SMMU's VMIDs.
    pub fn new_stage2_with_vmid(
        smmu: &Smmu<R, M, C>,
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

    pub(crate) fn table_regs(&self) -> Regs {
        self.pt.regs()
    }

    /// Returns the domain's stage and TLB tag.
    pub fn kind(&self) -> DomainKind {
        self.shared.kind
    }

    /// Returns the page table (for translation queries and walks).
    pub fn page_table(&self) -> &PageTable<DomainEnv<R, M, C>> {
        &self.pt
    }

    /// Returns the streams (and substreams) attached to the domain.
    pub fn attached(&self) -> Vec<(u32, Option<u32>)> {
        self.shared.attached.lock().clone()
    }

    fn take_hook_error(&self) -> Result<(), Error> {
        match self.pt.env().failed.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Maps `[iova, iova + len)` to `[pa, pa + len)` with the largest pages
    /// the alignment allows. New mappings need no invalidation.
    ///
    /// # Errors
    ///
    /// [`Error::Partial`] when the page table stopped part way (what was
    /// mapped stays mapped), or an invalidation error from a hook.
    pub fn map(&self, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Error> {
        let r = self.pt.map_range(iova, pa, len, prot);
        self.take_hook_error()?;
        r?;
        Ok(())
    }

    /// Unmaps `[iova, iova + len)`, invalidates the TLB (and ATCs) for it,
    /// waits for completion and frees page-table pages that fell empty.
    ///
    /// Returns the bytes unmapped.
    ///
    /// # Errors
    ///
    /// As [`Domain::map`]; on an error the range unmapped so far is still
    /// invalidated before returning.
    pub fn unmap(&mut self, iova: u64, len: u64) -> Result<u64, Error> {
        let mut gather = Gather::new();
        self.pt.env().walked.lock().clear();
        let r = self.pt.unmap_range(iova, len, &mut gather);
        let env = self.pt.env();
        if !gather.is_empty() && !env.already_flushed(gather.start(), gather.end()) {
            let leaf = gather.pgsize().trailing_zeros() as u8;
            let res = self
                .pt
                .env()
                .invalidate(gather.start(), gather.len(), Some(leaf));
            self.pt.env().record(res);
        }
        self.take_hook_error()?;
        // Invalidation completed: retired tables are unreachable now.
        self.pt.reclaim();
        Ok(r? as u64)
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
        let env = self.pt.env();
        if !gather.is_empty() {
            // Walk flushes of concurrent callers are not tracked per caller:
            // always invalidate the gathered leaves.
            let leaf = gather.pgsize().trailing_zeros() as u8;
            let res = env.invalidate(gather.start(), gather.len(), Some(leaf));
            env.record(res);
        }
        self.take_hook_error()?;
        Ok(r? as u64)
    }

    /// Frees page-table pages retired by [`Domain::unmap_shared`] (their
    /// TLB entries were invalidated before the unmaps returned; `&mut self`
    /// proves no walk by this driver is in flight).
    ///
    /// Returns how many tables were freed.
    pub fn reclaim(&mut self) -> usize {
        self.pt.env().walked.lock().clear();
        self.pt.reclaim()
    }

    /// Returns the output address `iova` maps to, if any.
    pub fn translate(&self, iova: u64) -> Option<u64> {
        self.pt.translate(iova)
    }

    /// Invalidates every TLB entry of the domain and waits.
    ///
    /// # Errors
    ///
    /// Command errors.
    pub fn flush_all(&self) -> Result<(), Error> {
        self.smmu.issue(&[self.shared.target().all()], true)
    }
}

impl<R: RegisterFrame, M: DmaMemory, C: Clock> Drop for Domain<R, M, C> {
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
