//! The driver proper: bring-up and teardown, the command queue producer,
//! the event queue consumer, GERROR handling, stream and CD tables, and
//! attaching streams to domains with hitless updates.

mod cmdq;
mod domain;
mod evtq;
mod external;
mod streams;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use cmdq::SyncMethod;
pub use domain::{Domain, DomainKind};
pub use evtq::EventBatch;
pub use external::ExternalStage2;
pub use streams::{AttachOptions, Update};

use crate::command::Command;
use crate::env::{DmaMemory, RegisterFrame, SmmuEnv, poll};
use crate::probe::{self, Features};
use crate::regs::{self, cr0, cr1, cr2, gbpa, gerror};
use crate::sync::SpinLock;
use crate::{Error, config::EntryEnv};
use io_pgtable::env::CacheMaintenance;

/// Stream table format choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrtabFormat {
    /// Two-level when supported and the stream ID space is larger than one
    /// level-2 table; linear otherwise.
    Auto,
    /// Linear (capped at `linear_max_log2` stream IDs).
    Linear,
    /// Two-level (refused when IDR0.ST_LEVEL does not allow it).
    TwoLevel,
}

/// Driver configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuConfig {
    /// log2 of command queue entries (capped by IDR1.CMDQS).
    pub cmdq_log2: u8,
    /// log2 of event queue entries (capped by IDR1.EVENTQS).
    pub evtq_log2: u8,
    /// Stream table format.
    pub strtab: StrtabFormat,
    /// Largest linear stream table, log2 of STEs.
    pub linear_max_log2: u8,
    /// How CMD_SYNC completion is awaited.
    pub sync: SyncMethod,
    /// Bound of every wait on the device, in [`crate::env::Clock`] microseconds.
    pub timeout_us: u64,
    /// Without RIL: invalidate the whole ASID/VMID above this many commands.
    pub tlbi_max_ops: u64,
    /// Use range invalidation when the SMMU has it.
    pub use_ril: bool,
    /// Abort (rather than bypass) traffic while the SMMU is disabled.
    pub gbpa_abort: bool,
    /// Whether the platform makes the SMMU's accesses coherent (firmware's
    /// `dma-coherent`); `None` trusts IDR0.COHACC.
    pub coherent: Option<bool>,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        Self {
            cmdq_log2: 8,
            evtq_log2: 7,
            strtab: StrtabFormat::Auto,
            linear_max_log2: 10,
            sync: SyncMethod::Auto,
            timeout_us: 1_000_000,
            tlbi_max_ops: 512,
            use_ril: true,
            gbpa_abort: true,
            coherent: None,
        }
    }
}

/// Counters of driver activity.
pub(crate) struct Stats {
    by_opcode: [AtomicU64; 256],
    syncs: AtomicU64,
    ste_updates: AtomicU64,
    cd_updates: AtomicU64,
    update_syncs: AtomicU64,
    rejected: AtomicU64,
    gerrors: AtomicU64,
    events: AtomicU64,
    overflows: AtomicU64,
}

impl Stats {
    fn new() -> Self {
        Self {
            by_opcode: core::array::from_fn(|_| AtomicU64::new(0)),
            syncs: AtomicU64::new(0),
            ste_updates: AtomicU64::new(0),
            cd_updates: AtomicU64::new(0),
            update_syncs: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            gerrors: AtomicU64::new(0),
            events: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
        }
    }

    fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of the driver's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverStats {
    /// Commands issued, by opcode.
    pub by_opcode: [u64; 256],
    /// CMD_SYNCs completed.
    pub syncs: u64,
    /// STE updates done.
    pub ste_updates: u64,
    /// CD updates done.
    pub cd_updates: u64,
    /// Syncs spent on STE/CD updates.
    pub update_syncs: u64,
    /// Commands the SMMU rejected (reported and skipped).
    pub rejected: u64,
    /// Global errors handled.
    pub gerrors: u64,
    /// Events drained.
    pub events: u64,
    /// Event queue overflows seen.
    pub overflows: u64,
}

impl DriverStats {
    /// Returns the number of TLB invalidation commands issued.
    pub fn tlbi_commands(&self) -> u64 {
        self.by_opcode[0x10..0x40].iter().sum()
    }

    /// Returns the total number of commands issued (CMD_SYNC included).
    pub fn commands(&self) -> u64 {
        self.by_opcode.iter().sum()
    }

    /// Returns `(name, count)` for every opcode issued at least once.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        self.by_opcode
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(op, n)| (crate::command::opcode_name(op as u8).unwrap_or("?"), *n))
            .collect()
    }
}

/// Allocator of ASIDs or VMIDs that never hands out an id whose TLB
/// entries may remain: ids are returned only after their invalidation
/// completed, and ids whose invalidation failed are quarantined for good.
pub(crate) struct IdAlloc {
    name: &'static str,
    max: u32,
    used: alloc::collections::BTreeSet<u32>,
    quarantined: alloc::collections::BTreeSet<u32>,
    next: u32,
}

impl IdAlloc {
    fn new(name: &'static str, bits: u8) -> Self {
        Self {
            name,
            max: (1u32 << bits) - 1,
            used: Default::default(),
            quarantined: Default::default(),
            next: 1,
        }
    }

    /// Returns a free id (never 0), cycling so recently freed ids are reused
    /// last.
    fn alloc(&mut self) -> Result<u16, Error> {
        for _ in 0..self.max {
            let id = self.next;
            self.next = if self.next >= self.max {
                1
            } else {
                self.next + 1
            };
            if !self.used.contains(&id) && !self.quarantined.contains(&id) {
                self.used.insert(id);
                return Ok(id as u16);
            }
        }
        Err(Error::IdsExhausted(self.name))
    }

    /// Takes a specific id (0 included), if free.
    fn claim(&mut self, id: u16) -> Result<u16, Error> {
        let i = u32::from(id);
        if i > self.max || self.used.contains(&i) || self.quarantined.contains(&i) {
            return Err(Error::IdsExhausted(self.name));
        }
        self.used.insert(i);
        Ok(id)
    }

    fn free(&mut self, id: u16, invalidated: bool) {
        self.used.remove(&u32::from(id));
        if !invalidated {
            self.quarantined.insert(id.into());
        }
    }
}

/// The environment's memory, with cache maintenance skipped when the SMMU
/// is coherent: cleans and invalidates are then pure cost. The barriers are
/// never skipped. `coherent` is the one decision [`Smmu::with_features`]
/// made from the probed features and the platform's word.
pub(crate) struct Mem<M> {
    inner: M,
    coherent: bool,
}

// SAFETY: forwards allocation to `M`, which upholds the contract.
unsafe impl<M: DmaMemory> io_pgtable::env::TableMemory for Mem<M> {
    fn alloc_table(
        &self,
        size: usize,
    ) -> Result<io_pgtable::env::TableBlock, io_pgtable::env::AllocError> {
        self.inner.alloc_table(size)
    }

    unsafe fn free_table(&self, block: io_pgtable::env::TableBlock, size: usize) {
        // SAFETY: forwarded from our caller; the block came from `inner`.
        unsafe { self.inner.free_table(block, size) }
    }

    fn phys_to_cpu(&self, phys: u64) -> core::ptr::NonNull<u8> {
        self.inner.phys_to_cpu(phys)
    }
}

impl<M: DmaMemory> io_pgtable::env::CacheMaintenance for Mem<M> {
    fn clean(
        &self,
        cpu: core::ptr::NonNull<u8>,
        phys: u64,
        len: usize,
    ) -> Result<(), io_pgtable::env::CacheError> {
        if self.coherent {
            return Ok(());
        }
        self.inner.clean(cpu, phys, len)
    }

    fn device_write_barrier(&self) {
        self.inner.device_write_barrier()
    }

    fn full_barrier(&self) {
        self.inner.full_barrier()
    }
}

impl<M: DmaMemory> crate::env::CacheInvalidate for Mem<M> {
    fn invalidate(
        &self,
        cpu: core::ptr::NonNull<u8>,
        phys: u64,
        len: usize,
    ) -> Result<(), io_pgtable::env::CacheError> {
        if self.coherent {
            return Ok(());
        }
        self.inner.invalidate(cpu, phys, len)
    }
}

pub(crate) struct Inner<E: SmmuEnv> {
    regs: E::Regs,
    mem: Mem<E::Mem>,
    clock: E::Clock,
    features: Features,
    cfg: SmmuConfig,
    entry_env: EntryEnv,
    cmdq: SpinLock<cmdq::Cmdq>,
    evtq: SpinLock<evtq::Evtq>,
    streams: SpinLock<streams::Streams>,
    asids: SpinLock<IdAlloc>,
    vmids: SpinLock<IdAlloc>,
    stats: Stats,
    enabled: AtomicBool,
    /// CMDQEN is acknowledged set: commands can be consumed.
    cmdq_on: AtomicBool,
    /// Terminate stalled transactions when their events are drained.
    abort_stalls: AtomicBool,
    next_domain: AtomicU64,
}

/// An SMMUv3 instance: owns its register frame, queues and stream table.
///
/// Cheap to clone (shared); every method takes `&self`.
pub struct Smmu<E: SmmuEnv> {
    inner: Arc<Inner<E>>,
}

impl<E: SmmuEnv> Clone for Smmu<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<E: SmmuEnv> Inner<E> {
    fn timeout(&self) -> u64 {
        self.cfg.timeout_us
    }

    fn write_cr0(&self, val: u32) -> Result<(), Error> {
        // Enabling the queues or translation makes the SMMU read what we
        // wrote: order it first.
        self.mem.device_write_barrier();
        self.regs.write32(regs::CR0, val);
        poll(&self.clock, self.timeout(), false, || {
            (self.regs.read32(regs::CR0ACK) == val).then_some(())
        })
        .map_err(|_| Error::Timeout("CR0ACK"))
    }

    fn write_gbpa(&self, abort: bool) -> Result<(), Error> {
        let wait = || {
            poll(&self.clock, self.timeout(), false, || {
                (gbpa::UPDATE.get(self.regs.read32(regs::GBPA).into()) == 0).then_some(())
            })
            .map_err(|_| Error::Timeout("GBPA.UPDATE"))
        };
        wait()?;
        let cur = u64::from(self.regs.read32(regs::GBPA));
        let val = gbpa::UPDATE.set(gbpa::ABORT.set(cur, abort.into()), 1);
        self.regs.write32(regs::GBPA, val as u32);
        wait()
    }

    fn disable(&self) -> Result<(), Error> {
        if self.cfg.gbpa_abort {
            self.write_gbpa(true)?;
        }
        self.cmdq_on.store(false, Ordering::Release);
        self.write_cr0(0)?;
        self.enabled.store(false, Ordering::Release);
        Ok(())
    }
}

/// Calls `make` with `log2`, then smaller sizes down to
/// [`probe::MIN_QUEUE_LOG2`], while it fails for lack of memory.
fn shrinking<T>(log2: u8, mut make: impl FnMut(u8) -> Result<T, Error>) -> Result<T, Error> {
    let mut l = log2.max(probe::MIN_QUEUE_LOG2);
    loop {
        match make(l) {
            Err(Error::Alloc(_)) if l > probe::MIN_QUEUE_LOG2 => l -= 1,
            other => return other,
        }
    }
}

impl<E: SmmuEnv> Smmu<E> {
    /// Probes and brings up the SMMU: disables it, programs GBPA, CR1/CR2,
    /// the stream table (every STE aborting), the command and event queues,
    /// issues the global invalidations and enables translation.
    ///
    /// # Errors
    ///
    /// [`Error::Probe`] for unusable hardware, [`Error::Alloc`] when the
    /// structures do not fit, [`Error::Timeout`] when the device does not
    /// acknowledge, [`Error::Unsupported`] for a configuration the hardware
    /// does not allow.
    pub fn new(
        regs: E::Regs,
        mem: E::Mem,
        clock: E::Clock,
        cfg: SmmuConfig,
    ) -> Result<Self, Error> {
        let features = probe::probe(&regs)?;
        Self::with_features(regs, mem, clock, cfg, features)
    }

    /// As [`Smmu::new`] with features already probed (and possibly
    /// restricted by the caller, e.g. to test the non-RIL path).
    ///
    /// # Errors
    ///
    /// As [`Smmu::new`].
    pub fn with_features(
        regs: E::Regs,
        mem: E::Mem,
        clock: E::Clock,
        cfg: SmmuConfig,
        features: Features,
    ) -> Result<Self, Error> {
        // Coherency is decided here, once: the platform's word (firmware's
        // "dma-coherent") wins over IDR0.COHACC, as on Linux. Memory
        // maintenance, STE/CD fetch attributes, CR1 and page-table walkers
        // all follow `features.coherent` from now on.
        let mut features = features;
        if let Some(c) = cfg.coherent {
            features.coherent = c;
        }
        let mem = Mem {
            inner: mem,
            coherent: features.coherent,
        };
        let sync = cmdq::resolve_sync(cfg.sync, &features);
        // Queues shrink (down to the usable minimum) when memory is short.
        let cmdq = shrinking(cfg.cmdq_log2.min(features.cmdq_log2), |l| {
            cmdq::Cmdq::new(&mem, l, sync)
        })?;
        let evtq = shrinking(cfg.evtq_log2.min(features.evtq_log2), |l| {
            evtq::Evtq::new(&mem, l)
        })?;
        let streams = streams::Streams::new(&mem, &cfg, &features)?;
        let inner = Inner {
            entry_env: EntryEnv::from(&features),
            asids: SpinLock::new(IdAlloc::new("ASID", features.asid_bits)),
            vmids: SpinLock::new(IdAlloc::new("VMID", features.vmid_bits)),
            regs,
            mem,
            clock,
            features,
            cfg,
            cmdq: SpinLock::new(cmdq),
            evtq: SpinLock::new(evtq),
            streams: SpinLock::new(streams),
            stats: Stats::new(),
            enabled: AtomicBool::new(false),
            cmdq_on: AtomicBool::new(false),
            abort_stalls: AtomicBool::new(true),
            next_domain: AtomicU64::new(1),
        };
        let smmu = Self {
            inner: Arc::new(inner),
        };
        smmu.reset()?;
        Ok(smmu)
    }

    fn reset(&self) -> Result<(), Error> {
        let i = &*self.inner;
        let r = &i.regs;
        // 1. Quiesce: whatever firmware left running stops here.
        i.disable()?;
        // 2. Memory attributes of the SMMU's own structure accesses.
        let (cache, sh) = if i.features.coherent {
            (cr1::CACHE_WB, cr1::SH_ISH)
        } else {
            (cr1::CACHE_NC, cr1::SH_OSH)
        };
        let v = cr1::QUEUE_IC.make(cache)
            | cr1::QUEUE_OC.make(cache)
            | cr1::QUEUE_SH.make(sh)
            | cr1::TABLE_IC.make(cache)
            | cr1::TABLE_OC.make(cache)
            | cr1::TABLE_SH.make(sh);
        r.write32(regs::CR1, v as u32);
        // Broadcast TLB maintenance is not used: keep our TLB private.
        r.write32(
            regs::CR2,
            (cr2::RECINVSID.make(1) | cr2::PTM.make(1)) as u32,
        );
        // 3. Stream table.
        {
            let st = i.streams.lock();
            let (base, cfg) = st.base_regs();
            r.write64(regs::STRTAB_BASE, base);
            r.write32(regs::STRTAB_BASE_CFG, cfg);
        }
        // 4. Command queue, then the global invalidations through it.
        {
            let mut q = i.cmdq.lock();
            r.write64(regs::CMDQ_BASE, q.base_reg());
            r.write32(regs::CMDQ_PROD, 0);
            r.write32(regs::CMDQ_CONS, 0);
            q.reset_ptrs();
        }
        // Acknowledge stale global errors before the queue can raise new ones.
        let g = r.read32(regs::GERROR);
        r.write32(regs::GERRORN, g);
        i.write_cr0(cr0::CMDQEN.make(1) as u32)?;
        i.cmdq_on.store(true, Ordering::Release);
        let mut inval = Vec::new();
        inval.push(Command::CFGI_ALL);
        if i.features.hyp {
            inval.push(Command::TlbiEl2All);
        }
        inval.push(Command::TlbiNsnhAll);
        self.issue(&inval, true)?;
        // 5. Event queue.
        {
            let mut q = i.evtq.lock();
            r.write64(regs::EVENTQ_BASE, q.base_reg());
            r.write32(regs::EVENTQ_PROD, 0);
            r.write32(regs::EVENTQ_CONS, 0);
            q.reset_ptrs();
        }
        let en = cr0::CMDQEN.make(1) | cr0::EVENTQEN.make(1);
        i.write_cr0(en as u32)?;
        // 6. Interrupts stay off: the driver polls (`set_interrupts` enables
        // them).
        r.write32(regs::IRQ_CTRL, 0);
        poll(&i.clock, i.timeout(), false, || {
            (r.read32(regs::IRQ_CTRLACK) == 0).then_some(())
        })
        .map_err(|_| Error::Timeout("IRQ_CTRLACK"))?;
        // 7. Translate. With ATS, traffic an endpoint marks as translated
        // would bypass the SMMU unless ATSCHK is set: with it, only
        // streams whose STE enables ATS (EATS) may send it, and everything
        // else is refused (F_TRANSL_FORBIDDEN).
        let atschk = if i.features.ats {
            cr0::ATSCHK.make(1)
        } else {
            0
        };
        i.write_cr0((en | atschk | cr0::SMMUEN.make(1)) as u32)?;
        i.enabled.store(true, Ordering::Release);
        Ok(())
    }

    /// Returns the probed features.
    pub fn features(&self) -> &Features {
        &self.inner.features
    }

    /// Returns the driver configuration.
    pub fn config(&self) -> &SmmuConfig {
        &self.inner.cfg
    }

    /// Returns the register frame.
    pub fn regs(&self) -> &E::Regs {
        &self.inner.regs
    }

    /// Returns the memory environment.
    pub fn mem(&self) -> &E::Mem {
        &self.inner.mem.inner
    }

    /// Returns how CMD_SYNC completion is awaited.
    pub fn sync_method(&self) -> SyncMethod {
        self.inner.cmdq.lock().sync_method()
    }

    /// Returns a snapshot of the driver's counters.
    pub fn stats(&self) -> DriverStats {
        let s = &self.inner.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DriverStats {
            by_opcode: core::array::from_fn(|i| l(&s.by_opcode[i])),
            syncs: l(&s.syncs),
            ste_updates: l(&s.ste_updates),
            cd_updates: l(&s.cd_updates),
            update_syncs: l(&s.update_syncs),
            rejected: l(&s.rejected),
            gerrors: l(&s.gerrors),
            events: l(&s.events),
            overflows: l(&s.overflows),
        }
    }

    /// Issues `cmds`, then (when `sync`) a CMD_SYNC, and waits for it.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] for an unencodable command (nothing issued),
    /// [`Error::Timeout`] when the SMMU stops consuming,
    /// [`Error::CommandRejected`] when it rejected one of them (it was
    /// skipped and the queue resumed).
    pub fn issue(&self, cmds: &[Command], sync: bool) -> Result<(), Error> {
        self.inner.issue(cmds, sync)
    }

    /// Disables translation (traffic then follows GBPA) and the queues.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the SMMU does not acknowledge.
    pub fn shutdown(&self) -> Result<(), Error> {
        self.inner.disable()
    }

    /// Returns whether translation is enabled.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Acquire)
    }

    /// Returns whether the SMMU was shut down (queues and translation off):
    /// nothing walks the tables any more.
    pub(crate) fn is_quiescent(&self) -> bool {
        !self.inner.cmdq_on.load(Ordering::Acquire) && !self.is_enabled()
    }

    /// Handles active global errors: a command error is reported, the bad
    /// command skipped and the queue resumed; other errors are acknowledged.
    ///
    /// Returns the GERROR bits that were active (0: none).
    ///
    /// # Errors
    ///
    /// [`Error::CommandRejected`] describing a skipped command;
    /// [`Error::Global`] when the SMMU entered service failure mode.
    pub fn handle_gerror(&self) -> Result<u32, Error> {
        let mut q = self.inner.cmdq.lock();
        let active = self.inner.service_gerror(&mut q)?;
        match q.take_rejection() {
            Some(e) => Err(e),
            None => Ok(active),
        }
    }

    /// Enables exactly the interrupt sources of `sources` (IRQ_CTRL bits:
    /// [`regs::irq_ctrl::EVENTQ_IRQEN`], `GERROR_IRQEN`; others are
    /// dropped) and waits for IRQ_CTRLACK to say so. The driver brings
    /// the SMMU up with every source off; how each one signals (wired or
    /// MSI: the `*_IRQ_CFG*` registers, writable only while the source is
    /// off) is the platform's, set before this.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the SMMU does not acknowledge.
    pub fn set_interrupts(&self, sources: u32) -> Result<(), Error> {
        let known = regs::irq_ctrl::EVENTQ_IRQEN.mask() | regs::irq_ctrl::GERROR_IRQEN.mask();
        let want = sources & known as u32;
        let r = &self.inner.regs;
        r.write32(regs::IRQ_CTRL, want);
        poll(&self.inner.clock, self.inner.timeout(), false, || {
            (r.read32(regs::IRQ_CTRLACK) == want).then_some(())
        })
        .map_err(|_| Error::Timeout("IRQ_CTRLACK"))
    }

    /// Sets whether [`Smmu::drain_events`] terminates stalled transactions
    /// (CMD_RESUME with abort) whose fault events it drains; on by default,
    /// since the driver has no page-fault handler and a stall-forced SMMU
    /// would otherwise leave the device waiting. A host that resolves
    /// faults itself turns it off and sends CMD_RESUME.
    pub fn set_abort_stalls(&self, on: bool) {
        self.inner.abort_stalls.store(on, Ordering::Relaxed);
    }

    /// Drains the event queue.
    ///
    /// # Errors
    ///
    /// [`Error::Cache`] from the environment.
    pub fn drain_events(&self) -> Result<EventBatch, Error> {
        self.inner.drain_events()
    }
}

impl<E: SmmuEnv> Inner<E> {
    fn service_gerror(&self, q: &mut cmdq::Cmdq) -> Result<u32, Error> {
        let g = self.regs.read32(regs::GERROR);
        let n = self.regs.read32(regs::GERRORN);
        let active = (g ^ n) & gerror::ALL;
        if active == 0 {
            return Ok(0);
        }
        Stats::bump(&self.stats.gerrors, 1);
        if active & gerror::CMDQ_ERR.mask() as u32 != 0 {
            q.skip_bad_command(self)?;
            Stats::bump(&self.stats.rejected, 1);
        }
        // Acknowledge by making GERRORN equal GERROR for the handled bits.
        self.regs.write32(regs::GERRORN, n ^ active);
        if active & gerror::SFM_ERR.mask() as u32 != 0 {
            // Service failure mode: the SMMU stopped; only a reset helps.
            return Err(Error::Global(active));
        }
        Ok(active)
    }
}

impl<E: SmmuEnv> Drop for Inner<E> {
    fn drop(&mut self) {
        // Free the structures only when the SMMU provably stopped using them:
        // what the registers say, not `enabled`, which a bring-up that failed
        // after enabling the queues (a CMD_SYNC that never completed) left
        // clear with CMDQEN set.
        let off = self.regs.read32(regs::CR0) == 0 && self.regs.read32(regs::CR0ACK) == 0;
        let stopped = off || self.disable().is_ok();
        if !stopped {
            return;
        }
        let mem = &self.mem;
        // SAFETY: translation and both queues are disabled (CR0 = 0 was
        // acknowledged), so the SMMU no longer reads these blocks; they were
        // allocated from `mem`.
        unsafe {
            self.cmdq.get_mut().free(mem);
            self.evtq.get_mut().free(mem);
            self.streams.get_mut().free(mem);
        }
    }
}
