//! vm-memory's `Iommu` over the model: one [`StreamIommu`] per stream (and
//! substream) fills a vm-memory `Iotlb` from the model's translations, and
//! the model drops exactly the `Iotlb` entries whose backing model cache
//! entry an invalidation (or eviction, or disabling the SMMU) removed.
//!
//! The rule that makes "never more, never fewer" checkable: an `Iotlb`
//! entry is a copy of one model TLB entry (or of a bypassing
//! configuration), and it lives exactly as long as that entry is still what
//! the model would serve from its caches.

use super::sync_gate::{self as gate, AtomicBool};
use std::collections::{BTreeMap, HashMap};
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::{
    Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError, Weak,
};

use vm_memory::iommu::{Error as IommuError, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};

use super::State;
use super::context::{Mode, NO_SSID, ctx_key};
use crate::regs::{cr0, gbpa};
use crate::set_cache::key_tag;
use crate::tlb::Tlb;
use crate::walk::Access;
use crate::{DmaRequest, SmmuModel};

/// A translation unit the model would serve from its caches without a
/// walk: `[iova_base, iova_base + 2^size_log2)` to `pa_base`, for an
/// unprivileged data access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CachedUnit {
    /// First input address of the unit.
    pub iova_base: u64,
    /// Output address of `iova_base`.
    pub pa_base: u64,
    /// log2 of the unit's size.
    pub size_log2: u32,
    /// Reads are allowed.
    pub read: bool,
    /// Writes are allowed.
    pub write: bool,
}

impl CachedUnit {
    fn len(&self) -> u64 {
        1u64 << self.size_log2
    }

    fn perms(&self) -> Permissions {
        match (self.read, self.write) {
            (true, true) => Permissions::ReadWrite,
            (true, false) => Permissions::Read,
            (false, true) => Permissions::Write,
            (false, false) => Permissions::No,
        }
    }
}

/// The key of the model TLB entry a unit copies (none for a bypassing
/// configuration, which depends on the configuration alone).
type TlbKey = (u64, u64);

/// The units copied into one `Iotlb`, indexed both by address (to find
/// the survivors a dropped range overlapped) and by the TLB entry they copy
/// (so an invalidation finds its units without a pass over all of them).
#[derive(Debug, Default)]
struct Units {
    /// By (first input address, log2 size).
    all: BTreeMap<(u64, u32), (CachedUnit, Option<TlbKey>)>,
    by_key: HashMap<TlbKey, Vec<(u64, u32)>>,
    /// The largest unit (log2), for overlap searches.
    max_size_log2: u32,
}

impl Units {
    /// Forgets the unit at `at`; returns it.
    fn take(&mut self, at: (u64, u32)) -> Option<CachedUnit> {
        let (u, key) = self.all.remove(&at)?;
        if let Some(k) = key {
            if let Some(v) = self.by_key.get_mut(&k) {
                v.retain(|x| *x != at);
                if v.is_empty() {
                    self.by_key.remove(&k);
                }
            }
        }
        Some(u)
    }

    /// Returns the units overlapping `u`.
    fn overlapping(&self, u: &CachedUnit) -> Vec<CachedUnit> {
        let reach = (1u64 << self.max_size_log2) - 1;
        let lo = u.iova_base.saturating_sub(reach);
        let end = u.iova_base.saturating_add(u.len());
        self.all
            .range((lo, 0)..(end, 0))
            .map(|(_, (x, _))| *x)
            .filter(|x| x.iova_base.saturating_add(x.len()) > u.iova_base)
            .collect()
    }
}

/// The `Iotlb` of one stream and the model units it copies.
///
/// Readers hold the `Iotlb` read-locked for as long as vm-memory uses a
/// translation (the guard lives in its `IotlbIterator`). Nothing under the
/// model lock waits for them: the holder of a guard may itself be waiting
/// for the model (a translation on the same stream while its guard lives).
/// An invalidation that cannot write-lock the `Iotlb` keeps its drops in
/// `pending` and marks it `stale`: lookups stop trusting it at once, and
/// the next CMD_SYNC stays unexecuted (CMDQ_CONS does not pass it) until
/// the last guard is gone and the drops are applied; that guard's release
/// resumes the command queue. So a CMD_SYNC completes after every access
/// that used an entry it invalidates, as on hardware, without a thread
/// waiting under a lock.
#[derive(Debug)]
pub(crate) struct IotlbSlot {
    sid: u32,
    ssid: Option<u32>,
    iotlb: RwLock<Iotlb>,
    units: Mutex<Units>,
    /// Units dropped from `units` but still mapped in `iotlb`.
    pending: Mutex<Vec<CachedUnit>>,
    /// `pending` may be non-empty: lookups must not trust `iotlb`.
    /// Sequentially consistent with `SmmuModel::sync_wait` (a Dekker pair:
    /// a releasing reader and a waiting CMD_SYNC each set their flag, then
    /// read the other's; one of them resumes the queue).
    stale: AtomicBool,
    /// The model, whose command queue a guard's release may resume.
    model: Weak<SmmuModel>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A read guard of a stream's shared `Iotlb` (see [`IotlbGuard::Shared`]).
#[derive(Debug)]
pub struct SharedIotlb<'a> {
    /// Released in `drop`, before the pending drops are applied.
    guard: ManuallyDrop<RwLockReadGuard<'a, Iotlb>>,
    slot: &'a IotlbSlot,
}

impl Deref for SharedIotlb<'_> {
    type Target = Iotlb;

    fn deref(&self) -> &Iotlb {
        &self.guard
    }
}

impl Drop for SharedIotlb<'_> {
    fn drop(&mut self) {
        // SAFETY: `guard` is not used after this; it is dropped once, here.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        // The last access using dropped entries may have ended: a CMD_SYNC
        // waiting for it can complete. (No lock of the model is held here:
        // guards are only released outside the model.)
        if gate::is_stale(&self.slot.stale) && self.slot.apply_pending() {
            self.slot.resume_queue();
        }
    }
}

impl IotlbSlot {
    /// Returns a read guard when the `Iotlb` can be trusted (nothing
    /// pending, or the pending drops could be applied now).
    fn shared(&self) -> Option<SharedIotlb<'_>> {
        if gate::is_stale(&self.stale) {
            if !self.apply_pending() {
                return None;
            }
            self.resume_queue();
        }
        let guard = self.iotlb.read().unwrap_or_else(|e| e.into_inner());
        // A deferral between the check and the lock: not trusted either.
        if gate::is_stale(&self.stale) {
            return None;
        }
        Some(SharedIotlb {
            guard: ManuallyDrop::new(guard),
            slot: self,
        })
    }

    /// Lets a CMD_SYNC that waited for this `Iotlb` complete. Called
    /// without any lock of the model held.
    fn resume_queue(&self) {
        if let Some(m) = self.model.upgrade() {
            m.resume_sync();
        }
    }

    /// Returns whether a CMD_SYNC may complete as far as this `Iotlb` goes:
    /// nothing pending, or the pending drops applied now. (Whichever
    /// thread asks, its own accesses count: the CMD_SYNC does not block
    /// the thread that queued it, which ends its accesses in its time.)
    pub(super) fn settled(&self) -> bool {
        !gate::is_stale(&self.stale) || self.apply_pending()
    }

    /// Applies the deferred drops if nobody holds the `Iotlb`; returns
    /// whether nothing is pending any more. Never waits.
    fn apply_pending(&self) -> bool {
        let Ok(units) = self.units.try_lock() else {
            return false;
        };
        let Some(mut iotlb) = self.try_write() else {
            return false;
        };
        self.flush(&units, &mut iotlb);
        true
    }

    fn try_write(&self) -> Option<RwLockWriteGuard<'_, Iotlb>> {
        match self.iotlb.try_write() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Removes `gone` (already out of `units`) from the write-locked
    /// `iotlb`, with the pending drops, and installs again the survivors
    /// their ranges overlapped (vm-memory drops whole overlapping
    /// mappings).
    fn remove(&self, units: &Units, iotlb: &mut Iotlb, gone: &[CachedUnit]) {
        let mut pending = lock(&self.pending);
        let all: Vec<CachedUnit> = pending.drain(..).chain(gone.iter().copied()).collect();
        gate::clear_stale(&self.stale);
        drop(pending);
        for u in &all {
            iotlb.invalidate_mapping(GuestAddress(u.iova_base), u.len() as usize);
        }
        for u in &all {
            for x in units.overlapping(u) {
                let _ = iotlb.set_mapping(
                    GuestAddress(x.iova_base),
                    GuestAddress(x.pa_base),
                    x.len() as usize,
                    x.perms(),
                );
            }
        }
    }

    fn flush(&self, units: &Units, iotlb: &mut Iotlb) {
        if gate::is_stale(&self.stale) {
            self.remove(units, iotlb, &[]);
        }
    }

    /// Copies `u` into the `Iotlb`; returns false when it is not there
    /// (the `Iotlb` was read-locked).
    fn install(&self, u: CachedUnit, key: Option<TlbKey>) -> bool {
        let mut units = lock(&self.units);
        let at = (u.iova_base, u.size_log2);
        if units.all.get(&at) == Some(&(u, key)) {
            return true;
        }
        // vm-memory keeps a translation's guard (our read lock) for as long
        // as the access uses it, across further translations of the same
        // thread: waiting here for the write lock could wait for ourselves.
        // The caller then serves this translation from a private Iotlb.
        let Some(mut iotlb) = self.try_write() else {
            return false;
        };
        self.flush(&units, &mut iotlb);
        units.take(at);
        // Installing cannot fail for an in-range, non-empty unit.
        let _ = iotlb.set_mapping(
            GuestAddress(u.iova_base),
            GuestAddress(u.pa_base),
            u.len() as usize,
            u.perms(),
        );
        units.all.insert(at, (u, key));
        if let Some(k) = key {
            units.by_key.entry(k).or_default().push(at);
        }
        units.max_size_log2 = units.max_size_log2.max(u.size_log2);
        true
    }

    /// Drops the units at `drop` from the `Iotlb`, now if no access holds
    /// it, else when the last one ends (see [`IotlbSlot`]). Returns the
    /// number dropped.
    fn drop_units(&self, units: &mut Units, drop: &[(u64, u32)]) -> usize {
        let gone: Vec<CachedUnit> = drop.iter().filter_map(|at| units.take(*at)).collect();
        if gone.is_empty() {
            return 0;
        }
        match self.try_write() {
            Some(mut iotlb) => self.remove(units, &mut iotlb, &gone),
            None => {
                lock(&self.pending).extend_from_slice(&gone);
                gate::set_stale(&self.stale);
            }
        }
        gone.len()
    }
}

/// The `Iotlb` a translation was served from: the stream's shared one, or a
/// private one holding only this translation (when the model could not
/// serve it again from its caches, e.g. with its TLB disabled).
#[derive(Debug)]
pub enum IotlbGuard<'a> {
    /// The stream's `Iotlb`, read-locked.
    Shared(SharedIotlb<'a>),
    /// A one-off `Iotlb`.
    Private(Box<Iotlb>),
}

impl Deref for IotlbGuard<'_> {
    type Target = Iotlb;

    fn deref(&self) -> &Iotlb {
        match self {
            Self::Shared(g) => g,
            Self::Private(b) => b,
        }
    }
}

/// vm-memory's [`vm_memory::iommu::Iommu`] for one stream of a
/// [`SmmuModel`]: give it to `IommuMemory::new` and every `vm-memory` based
/// device model does DMA through the SMMU.
///
/// Accesses are unprivileged data accesses of StreamID `sid` (and
/// SubstreamID `ssid`). A failed translation records the architected event
/// in the model's event queue and returns
/// [`IommuError::CannotResolve`].
#[derive(Debug)]
pub struct StreamIommu {
    model: Arc<SmmuModel>,
    sid: u32,
    ssid: Option<u32>,
    /// `None`: no `Iotlb` kept (every access translates through the model,
    /// the design of IOMMU emulators without an IOTLB).
    slot: Option<Arc<IotlbSlot>>,
}

impl StreamIommu {
    /// Returns the StreamID.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// Returns the SubstreamID.
    pub fn ssid(&self) -> Option<u32> {
        self.ssid
    }

    /// Returns the model.
    pub fn model(&self) -> &Arc<SmmuModel> {
        &self.model
    }

    /// Returns the `Iotlb` translation of `iova` for `access` without
    /// consulting the model, or `None` on an `Iotlb` miss (always `None`
    /// without an `Iotlb`).
    pub fn iotlb_lookup(&self, iova: u64, access: Permissions) -> Option<u64> {
        let slot = self.slot.as_ref()?;
        let mut it = Iotlb::lookup(slot.shared()?, GuestAddress(iova), 1, access).ok()?;
        it.next().map(|m| m.base.0)
    }

    /// Returns the number of model units copied into the `Iotlb`.
    pub fn iotlb_units(&self) -> usize {
        self.slot.as_ref().map_or(0, |s| lock(&s.units).all.len())
    }
}

impl vm_memory::iommu::Iommu for StreamIommu {
    type IotlbGuard<'a> = IotlbGuard<'a>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<IotlbGuard<'_>>, IommuError> {
        // A device-chosen range that wraps the address space is refused
        // here: vm-memory's `Iotlb` adds base and length unchecked.
        if iova.0.checked_add(length as u64).is_none() {
            return Err(IommuError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "the range wraps the 64-bit address space".into(),
            });
        }
        if let Some(g) = self.slot.as_ref().and_then(|s| s.shared()) {
            if let Ok(it) = Iotlb::lookup(IotlbGuard::Shared(g), iova, length, access) {
                return Ok(it);
            }
        }
        let private = self.model.resolve(self, iova.0, length as u64, access);
        self.model.deliver();
        // Filling the Iotlb may have applied drops a CMD_SYNC waits for.
        self.model.resume_sync();
        let private = private?;
        if let (Some(slot), None) = (&self.slot, &private) {
            if let Some(g) = slot.shared() {
                if let Ok(it) = Iotlb::lookup(IotlbGuard::Shared(g), iova, length, access) {
                    return Ok(it);
                }
            }
            // An invalidation raced with the fill: translate once more
            // into a private Iotlb.
        }
        let iotlb = match private {
            Some(i) => i,
            None => {
                let p = self
                    .model
                    .resolve_private(self, iova.0, length as u64, access);
                self.model.deliver();
                p?
            }
        };
        Iotlb::lookup(IotlbGuard::Private(Box::new(iotlb)), iova, length, access).map_err(|_| {
            IommuError::CannotResolve {
                iova_range: IovaRange { base: iova, length },
                reason: "translation changed while being resolved".into(),
            }
        })
    }
}

impl SmmuModel {
    /// Returns vm-memory's `Iommu` for StreamID `sid` (and SubstreamID
    /// `ssid`), with an `Iotlb` the model keeps coherent with its caches.
    pub fn iommu(self: &Arc<Self>, sid: u32, ssid: Option<u32>) -> StreamIommu {
        let slot = Arc::new(IotlbSlot {
            sid,
            ssid,
            iotlb: RwLock::new(Iotlb::new()),
            units: Mutex::new(Units::default()),
            pending: Mutex::new(Vec::new()),
            stale: AtomicBool::new(false),
            model: Arc::downgrade(self),
        });
        let mut s = self.lock();
        s.iotlbs.retain(|w| w.strong_count() > 0);
        s.iotlbs.push(Arc::downgrade(&slot));
        s.tlb.log_removals = true;
        StreamIommu {
            model: self.clone(),
            sid,
            ssid,
            slot: Some(slot),
        }
    }

    /// Returns vm-memory's `Iommu` for a stream without an `Iotlb`: every
    /// access translates through the model (its TLB and walker), as IOMMU
    /// emulators without an IOTLB do. For comparison and for streams whose
    /// accesses must all be seen by the model.
    pub fn iommu_uncached(self: &Arc<Self>, sid: u32, ssid: Option<u32>) -> StreamIommu {
        StreamIommu {
            model: self.clone(),
            sid,
            ssid,
            slot: None,
        }
    }

    /// Returns the unit of `iova` the model would serve from its caches for
    /// an unprivileged data access, without walking or counting anything;
    /// `None` when it would walk, fault, or cannot serve it from a cache.
    pub fn cached_translation(&self, sid: u32, ssid: Option<u32>, iova: u64) -> Option<CachedUnit> {
        self.lock().probe(sid, ssid, iova, None).map(|(u, _)| u)
    }

    /// Translates every unit of `[iova, iova + len)` for `access`, filling
    /// the stream's `Iotlb`; returns a private `Iotlb` with the whole range
    /// instead when a unit cannot be kept (no `Iotlb`, or a unit the model
    /// would not serve again from its caches).
    fn resolve(
        &self,
        io: &StreamIommu,
        iova: u64,
        len: u64,
        access: Permissions,
    ) -> Result<Option<Iotlb>, IommuError> {
        let mut s = self.lock();
        let mut steps = Vec::new();
        let mut all_kept = io.slot.is_some();
        let mut addr = iova;
        let end = iova.saturating_add(len);
        while addr < end {
            let r = s.translate_unit(io, addr, end, access);
            // Whatever the model now caches is a valid copy, even when the
            // other direction of a read-write access faulted.
            let unit = s.probe(io.sid, io.ssid, addr, None);
            if let (Some(slot), Some((u, key))) = (&io.slot, unit) {
                if !slot.install(u, key) {
                    all_kept = false;
                }
            }
            let unit = unit.map(|(u, _)| u);
            let (pa, n) = r?;
            if !unit.is_some_and(|u| u.perms().allow(access)) {
                all_kept = false;
            }
            steps.push((addr, pa, n));
            addr = addr.saturating_add(n);
        }
        if all_kept {
            return Ok(None);
        }
        let mut p = Iotlb::new();
        for (a, pa, n) in steps {
            let _ = p.set_mapping(GuestAddress(a), GuestAddress(pa), n as usize, access);
        }
        Ok(Some(p))
    }

    /// Translates `[iova, iova + len)` into a private `Iotlb`.
    fn resolve_private(
        &self,
        io: &StreamIommu,
        iova: u64,
        len: u64,
        access: Permissions,
    ) -> Result<Iotlb, IommuError> {
        let mut s = self.lock();
        let mut p = Iotlb::new();
        let mut addr = iova;
        let end = iova.saturating_add(len);
        while addr < end {
            let (pa, n) = s.translate_unit(io, addr, end, access)?;
            let _ = p.set_mapping(GuestAddress(addr), GuestAddress(pa), n as usize, access);
            addr = addr.saturating_add(n);
        }
        Ok(p)
    }
}

impl SmmuModel {
    /// Runs the command queue again if a CMD_SYNC waits at CMDQ_CONS for
    /// accesses using dropped `Iotlb` entries (it completes once they are
    /// all done). The releasing side of the hand-off: called, with no lock
    /// of the model held, after this thread applied pending drops.
    pub(super) fn resume_sync(&self) {
        if gate::waiting(&self.sync_wait) {
            self.run_queue();
        }
    }

    /// As [`SmmuModel::resume_sync`] for a register access, which applied
    /// nothing: a plain look at the flag, without the hand-off's fence.
    pub(super) fn poll_sync(&self) {
        if gate::armed(&self.sync_wait) {
            self.run_queue();
        }
    }

    fn run_queue(&self) {
        self.lock().process_cmdq();
        self.deliver();
    }
}

impl State {
    /// Returns whether the CMD_SYNC at CMDQ_CONS may complete: no access
    /// still uses an `Iotlb` entry a command before it dropped. Otherwise
    /// leaves `sync_wait` set, for the end of the last such access to
    /// resume the queue (set before looking, so that one of the two sides
    /// always sees the other).
    pub(super) fn sync_may_complete(&mut self) -> bool {
        if self.iotlbs.is_empty() {
            gate::disarm(&self.sync_wait);
            return true;
        }
        let slots = self.live_iotlbs();
        gate::arm_then_check(&self.sync_wait, || slots.iter().all(|s| s.settled()))
    }

    /// Translates the unit at `addr` for every direction of `access`;
    /// returns its output address and the bytes it covers (capped at
    /// `end`).
    fn translate_unit(
        &mut self,
        io: &StreamIommu,
        addr: u64,
        end: u64,
        access: Permissions,
    ) -> Result<(u64, u64), IommuError> {
        let mut req = DmaRequest::read(io.sid, addr, end - addr);
        req.ssid = io.ssid;
        let mut out = None;
        for write in [false, true] {
            let wanted = if write {
                access.has_write()
            } else {
                access.allow(Permissions::Read) || access == Permissions::No
            };
            if !wanted {
                continue;
            }
            req.write = write;
            match self.translate(&req, addr) {
                Ok(t) => {
                    let n = t.bytes_left.clamp(1, end - addr);
                    out = Some((t.pa, n));
                }
                Err(f) => {
                    return Err(IommuError::CannotResolve {
                        iova_range: IovaRange {
                            base: GuestAddress(addr),
                            length: (end - addr) as usize,
                        },
                        reason: f.to_string(),
                    });
                }
            }
        }
        Ok(out.unwrap_or((addr, 1)))
    }

    /// Returns the unit of `iova` servable from the caches (of exactly
    /// `size_log2` when given) and the key of the TLB entry it copies,
    /// without side effects.
    pub(super) fn probe(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        size_log2: Option<u32>,
    ) -> Option<(CachedUnit, Option<TlbKey>)> {
        let identity = |size_log2: u32| CachedUnit {
            iova_base: iova & !((1u64 << size_log2) - 1),
            pa_base: iova & !((1u64 << size_log2) - 1),
            size_log2,
            read: true,
            write: true,
        };
        if self.regs.cr0 & cr0::SMMUEN == 0 {
            return (self.regs.gbpa & gbpa::ABORT == 0).then(|| (identity(12), None));
        }
        if ssid.is_some_and(|s| s >> super::context::MAX_SSID_BITS != 0) {
            return None;
        }
        let ctx = self.ctx_cache.get(&ctx_key(sid, ssid.unwrap_or(NO_SSID)))?;
        if ctx.ste.privcfg != 0 || ctx.ste.instcfg != 0 {
            return None;
        }
        let fits = iova >> self.cfg.oas_bits == 0;
        let ia = match ctx.mode {
            Mode::Abort => return None,
            Mode::Bypass => return fits.then(|| (identity(12), None)),
            Mode::S2 if !fits => return None,
            Mode::S2 => iova,
            Mode::S1 | Mode::Nested => ctx.cd.as_ref()?.tlb_input(iova)?,
        };
        let exact;
        let sizes = match size_log2 {
            Some(s) => {
                exact = [s];
                &exact[..]
            }
            None => &ctx.sizes[..ctx.nsizes],
        };
        let e = self.tlb.lookup(ctx.tag, ia, sizes)?;
        let user = |write| Access {
            write,
            privileged: false,
            instruction: false,
        };
        let u = CachedUnit {
            iova_base: iova & !((1u64 << e.size_log2) - 1),
            pa_base: e.out_base,
            size_log2: e.size_log2,
            read: e.perms.allows(user(false)),
            write: e.perms.allows(user(true)),
        };
        Some((u, Some(Tlb::key_of(ctx.tag, ia, e))))
    }

    /// Drops every `Iotlb` unit the model would no longer serve from its
    /// caches, and nothing else, by probing each (after register writes and
    /// restores, which can change what any unit depends on).
    pub(super) fn sync_iotlbs(&mut self) {
        self.tlb.take_removed();
        for slot in self.live_iotlbs() {
            let mut units = lock(&slot.units);
            let drop: Vec<(u64, u32)> = units
                .all
                .iter()
                .filter(|(at, (u, key))| {
                    self.probe(slot.sid, slot.ssid, at.0, Some(at.1)) != Some((*u, *key))
                })
                .map(|(at, _)| *at)
                .collect();
            let n = slot.drop_units(&mut units, &drop);
            self.stats.iotlb_invalidations += n as u64;
        }
    }

    /// Drops the `Iotlb` units whose backing went since the last sync: the
    /// TLB entries the TLB listed as removed, and the units of streams whose
    /// configuration was invalidated. Costs what it removes (plus one look
    /// at each stream's context), not a pass over every unit.
    pub(super) fn sync_iotlbs_removed(&mut self) {
        let removed = self.tlb.take_removed();
        if self.iotlbs.is_empty() {
            return;
        }
        if removed.all {
            self.tlb.log_removals = true;
            return self.sync_iotlbs();
        }
        let enabled = self.regs.cr0 & cr0::SMMUEN != 0;
        for slot in self.live_iotlbs() {
            let mut units = lock(&slot.units);
            if units.all.is_empty() {
                continue;
            }
            let ctx = self
                .ctx_cache
                .get(&ctx_key(slot.sid, slot.ssid.unwrap_or(NO_SSID)));
            let drop: Vec<(u64, u32)> = match ctx {
                // Without its context nothing of the stream is served from
                // the caches (with the SMMU disabled, units are bypass).
                None if enabled => units.all.keys().copied().collect(),
                None => Vec::new(),
                Some(ctx) => {
                    let tag = ctx.tag.packed();
                    removed
                        .keys
                        .iter()
                        .filter(|k| key_tag(k.0) == tag)
                        .filter_map(|k| units.by_key.get(k))
                        .flatten()
                        .copied()
                        .collect()
                }
            };
            let n = slot.drop_units(&mut units, &drop);
            self.stats.iotlb_invalidations += n as u64;
        }
    }

    fn live_iotlbs(&mut self) -> Vec<Arc<IotlbSlot>> {
        self.iotlbs.retain(|w| w.strong_count() > 0);
        self.tlb.log_removals = !self.iotlbs.is_empty();
        self.iotlbs.iter().filter_map(Weak::upgrade).collect()
    }
}
