//! The SMMU state machine: register frame, queues, caches, translation.

mod audit;
mod cmdq;
mod context;
mod decode;
mod hot;
mod iotlb;
mod lint;
mod msi;
mod signal;
mod snapshot;
pub mod sync_gate;
mod xlate;

pub use audit::{CacheAudit, StaleStage2, StaleTranslation, StaleWalk};
pub use decode::Violation;
pub use iotlb::{CachedUnit, IotlbGuard, SharedIotlb, StreamIommu};
pub use signal::{IrqHandler, IrqLine, MsiHandler, MsiWriteHandler};
pub use snapshot::{ModelSnapshot, SNAPSHOT_VERSION, SnapshotError};

use std::sync::{Arc, Mutex, MutexGuard};

use sim_memory::SimMemory;

use crate::memory::DeviceMemory;

use crate::config::{ConfigError, ModelConfig};
use crate::event::Event;
use crate::regs::{self, IdRegs, cr0, gbpa, gerror, irq_cfg, irq_ctrl, queue, strtab};
use crate::stats::{Stats, TraceEntry};
use crate::tlb::{FastMap, Tlb};
use crate::{DmaFault, DmaRequest, Interrupts, Termination, Translation};

use context::Ctx;
use decode::{Cd, Ste};
use msi::write_msi_cfg;

/// Registers software can program.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Regs {
    cr0: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    gerror_irq_cfg0: u64,
    gerror_irq_cfg1: u32,
    gerror_irq_cfg2: u32,
    strtab_base: u64,
    strtab_base_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    eventq_base: u64,
    eventq_prod: u32,
    eventq_cons: u32,
    eventq_irq_cfg0: u64,
    eventq_irq_cfg1: u32,
    eventq_irq_cfg2: u32,
}

/// What became of an event record offered to the event queue.
enum Put {
    Written,
    /// EVENTQEN = 0, or an event queue abort is active.
    Unwritable,
    Full,
    /// The write aborted (EVENTQ_ABT_ERR raised).
    Aborted,
}

/// Fault injection state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Inject {
    paused: bool,
    drop: u64,
    delay_polls: u32,
}

/// A stalled transaction waiting for CMD_RESUME / CMD_STALL_TERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stalled {
    sid: u32,
    stag: u16,
}

/// Copy of the TLB entry used by the last translation (hot-path cache).
#[derive(Clone, Copy, Debug)]
struct LastHit {
    sid: u32,
    ssid: u32,
    page: u64,
    size_log2: u32,
    out_base: u64,
    perms: crate::walk::Perms,
}

pub(crate) struct State {
    last: Option<LastHit>,
    /// The lock-free copies of TLB entries that served locked hits.
    hot: Arc<hot::Hot>,
    /// A copy was published in `hot` since it was last cleared.
    hot_live: bool,
    cfg: ModelConfig,
    ids: IdRegs,
    mem: Arc<dyn DeviceMemory>,
    regs: Regs,
    ste_cache: FastMap<u32, Ste>,
    l1std_cache: FastMap<u32, u64>,
    cd_cache: FastMap<(u32, u32), Cd>,
    l1cd_cache: FastMap<(u32, u32), u64>,
    ctx_cache: FastMap<u64, Ctx>,
    tlb: Tlb,
    stats: Stats,
    trace: Option<(usize, Vec<TraceEntry>)>,
    inject: Inject,
    irq: Interrupts,
    stalled: Vec<Stalled>,
    /// Records of stalled transactions that found the event queue full or
    /// unwritable: they are not discarded but written, in order, when the
    /// queue is next writable (IHI 0070 7.4).
    stall_records: Vec<Event>,
    next_stag: u16,
    /// Work done by the queue run in progress (see `cmdq.rs`).
    cmd_work: u64,
    /// The `Iotlb`s of [`StreamIommu`]s, kept coherent with the caches.
    iotlbs: Vec<std::sync::Weak<iotlb::IotlbSlot>>,
    /// Interrupts and MSIs for the callbacks, delivered after unlocking.
    outbox: signal::Outbox,
    /// A CMD_SYNC waits at CMDQ_CONS for accesses using dropped `Iotlb`
    /// entries (shared with [`SmmuModel::sync_wait`]).
    sync_wait: Arc<sync_gate::AtomicBool>,
}

/// A software SMMUv3; see the crate documentation.
///
/// All methods take `&self`: the model is `Send + Sync` and serialises
/// register accesses, commands and translations internally, like the
/// single ordered interface of a real SMMU.
pub struct SmmuModel {
    state: Mutex<State>,
    mem: Arc<dyn DeviceMemory>,
    /// Set when the outbox holds signals for the callbacks.
    pending: Arc<std::sync::atomic::AtomicBool>,
    handlers: std::sync::RwLock<signal::Handlers>,
    hot: Arc<hot::Hot>,
    /// Set while a CMD_SYNC waits for accesses using dropped `Iotlb`
    /// entries; whoever ends the last of them resumes the queue.
    sync_wait: Arc<sync_gate::AtomicBool>,
}

impl core::fmt::Debug for SmmuModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmmuModel")
            .field("memory", &self.mem)
            .finish_non_exhaustive()
    }
}

/// The data side of a DMA.
enum Buf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Buf<'_> {
    fn len(&self) -> usize {
        match self {
            Buf::Read(b) => b.len(),
            Buf::Write(b) => b.len(),
        }
    }
}

/// Queue geometry decoded from a base register.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Queue {
    base: u64,
    log2: u32,
}

impl Queue {
    fn new(base_reg: u64, max_log2: u8) -> Self {
        let log2 = ((base_reg & queue::LOG2SIZE_MASK) as u32).min(u32::from(max_log2));
        Self {
            base: base_reg & queue::ADDR_MASK,
            log2,
        }
    }
    fn idx_mask(&self) -> u32 {
        (1 << self.log2) - 1
    }
    fn ptr_mask(&self) -> u32 {
        (2 << self.log2) - 1
    }
    fn idx(&self, p: u32) -> u32 {
        p & self.idx_mask()
    }
    fn wrap(&self, p: u32) -> u32 {
        (p >> self.log2) & 1
    }
    fn empty(&self, prod: u32, cons: u32) -> bool {
        prod & self.ptr_mask() == cons & self.ptr_mask()
    }
    fn full(&self, prod: u32, cons: u32) -> bool {
        self.idx(prod) == self.idx(cons) && self.wrap(prod) != self.wrap(cons)
    }
    fn inc(&self, p: u32) -> u32 {
        (p & !self.ptr_mask()) | ((p & self.ptr_mask()) + 1) & self.ptr_mask()
    }
}

impl State {
    /// Returns a state with these registers and TLB and nothing else yet:
    /// empty configuration caches, no events, stalls or statistics. The
    /// lock-free copies, the signal flag and the CMD_SYNC hand-off flag
    /// are the model's (`shared`).
    fn fresh(
        cfg: ModelConfig,
        ids: IdRegs,
        mem: Arc<dyn DeviceMemory>,
        regs: Regs,
        tlb: Tlb,
        shared: (
            Arc<hot::Hot>,
            Arc<std::sync::atomic::AtomicBool>,
            Arc<sync_gate::AtomicBool>,
        ),
    ) -> Self {
        let (hot, pending, sync_wait) = shared;
        State {
            last: None,
            hot,
            hot_live: false,
            cfg,
            ids,
            mem,
            regs,
            ste_cache: FastMap::default(),
            l1std_cache: FastMap::default(),
            cd_cache: FastMap::default(),
            l1cd_cache: FastMap::default(),
            ctx_cache: FastMap::default(),
            tlb,
            stats: Stats::default(),
            trace: None,
            inject: Inject::default(),
            irq: Interrupts::default(),
            stalled: Vec::new(),
            stall_records: Vec::new(),
            next_stag: 0,
            cmd_work: 0,
            iotlbs: Vec::new(),
            outbox: signal::Outbox::new(pending),
            sync_wait,
        }
    }
}

impl SmmuModel {
    /// Returns a model of the SMMU described by `config` over `memory`.
    ///
    /// IDR0.COHACC follows the memory's coherency unless
    /// [`ModelConfig::coherent`] forces it (to a matching value).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the configuration is invalid or contradicts the
    /// memory.
    pub fn new(config: ModelConfig, memory: Arc<SimMemory>) -> Result<Self, ConfigError> {
        Self::with_memory(config, memory)
    }

    /// Returns a model of the SMMU described by `config` over any
    /// [`DeviceMemory`] backend (e.g. [`crate::GuestRam`] over a VMM's guest
    /// memory).
    ///
    /// # Errors
    ///
    /// As [`SmmuModel::new`].
    pub fn with_memory(
        config: ModelConfig,
        memory: Arc<dyn DeviceMemory>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let coherent = memory.coherent();
        if let Some(forced) = config.coherent {
            if forced != coherent {
                let actual = if coherent {
                    sim_memory::Coherency::Coherent
                } else {
                    sim_memory::Coherency::NonCoherent
                };
                return Err(ConfigError::CoherencyMismatch { forced, actual });
            }
        }
        let ids = IdRegs::new(&config, coherent);
        let mut regs = Regs {
            gbpa: gbpa::RESET_ATTRS,
            ..Regs::default()
        };
        if config.gbpa_abort_at_reset {
            regs.gbpa |= gbpa::ABORT;
        }
        let mut tlb = Tlb::new(config.tlb_capacity);
        tlb.set_bbml(config.bbml);
        let pending = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sync_wait = Arc::new(sync_gate::AtomicBool::new(false));
        let hot = Arc::new(hot::Hot::default());
        let state = State::fresh(
            config,
            ids,
            memory.clone(),
            regs,
            tlb,
            (hot.clone(), pending.clone(), sync_wait.clone()),
        );
        Ok(Self {
            state: Mutex::new(state),
            mem: memory,
            pending,
            handlers: Default::default(),
            hot,
            sync_wait,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state torn in a
        // way that matters more than the panic itself; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the memory the model reads and writes.
    pub fn memory(&self) -> &Arc<dyn DeviceMemory> {
        &self.mem
    }

    /// Returns the configuration the model was built with.
    pub fn config(&self) -> ModelConfig {
        self.lock().cfg.clone()
    }

    /// Returns the ID register values (IDR0..5, IIDR, AIDR).
    pub fn id_regs(&self) -> IdRegs {
        self.lock().ids
    }

    /// Reads a 32-bit register at `offset` in the 128 KiB frame. Unknown,
    /// reserved and misaligned offsets read as zero.
    pub fn read32(&self, offset: u64) -> u32 {
        let v = self.lock().read32(offset);
        self.deliver();
        self.poll_sync();
        v
    }

    /// Writes a 32-bit register. Writes to read-only, reserved or unknown
    /// offsets are ignored, as are writes the architecture forbids in the
    /// current state (e.g. a queue base while the queue is enabled).
    pub fn write32(&self, offset: u64, value: u32) {
        self.lock().write32(offset, value);
        self.deliver();
        // A CMD_SYNC this write reached may wait for `Iotlb` accesses that
        // ended meanwhile (see `iotlb.rs`).
        self.poll_sync();
    }

    /// Reads a 64-bit register (or two consecutive 32-bit registers).
    pub fn read64(&self, offset: u64) -> u64 {
        let mut s = self.lock();
        let v = u64::from(s.read32(offset)) | u64::from(s.read32(offset.wrapping_add(4))) << 32;
        drop(s);
        self.deliver();
        // As `read32`: a poll of CMDQ_CONS (with PROD, at 0x98) lets a
        // waiting CMD_SYNC complete.
        self.poll_sync();
        v
    }

    /// Writes a 64-bit register (low half first, like two 32-bit writes).
    pub fn write64(&self, offset: u64, value: u64) {
        let mut s = self.lock();
        s.trace(|| TraceEntry::MmioWrite { offset, value });
        s.write32_inner(offset, value as u32);
        s.write32_inner(offset.wrapping_add(4), (value >> 32) as u32);
        drop(s);
        self.deliver();
        self.poll_sync();
    }

    /// Translates one address without moving data.
    ///
    /// # Errors
    ///
    /// [`DmaFault`] describing the termination (events are recorded exactly
    /// as for a DMA).
    // Inlined into callers: the lock-free hit is a few dozen instructions,
    // and inline its result stays in registers; everything else is one
    // call away.
    #[inline]
    pub fn translate(&self, req: &DmaRequest) -> Result<Translation, DmaFault> {
        match self.hot.hit(req) {
            Some(t) => Ok(t),
            None => self.translate_locked(req),
        }
    }

    /// Translates `req` under the state lock: everything but a hit of the
    /// lock-free copies. Never inlined, so that callers inline only the hit.
    #[inline(never)]
    fn translate_locked(&self, req: &DmaRequest) -> Result<Translation, DmaFault> {
        let r = self.lock().translate(req, req.iova);
        self.deliver();
        r
    }

    /// Performs a device read: translates every unit of
    /// `[req.iova, req.iova + buf.len())` and copies the device view of
    /// memory into `buf`. `req.len` is ignored in favour of `buf.len()`.
    ///
    /// # Errors
    ///
    /// The first [`DmaFault`]. With [`Termination::RazWi`] the faulting part
    /// of `buf` reads as zero.
    pub fn dma_read(&self, req: &DmaRequest, buf: &mut [u8]) -> Result<(), DmaFault> {
        let req = DmaRequest {
            write: false,
            len: buf.len() as u64,
            ..*req
        };
        self.dma_inner(&req, Buf::Read(buf))
    }

    /// Performs a device write of `data`; see [`SmmuModel::dma_read`].
    ///
    /// # Errors
    ///
    /// The first [`DmaFault`]; bytes before the fault were written.
    pub fn dma_write(&self, req: &DmaRequest, data: &[u8]) -> Result<(), DmaFault> {
        let req = DmaRequest {
            write: true,
            instruction: false,
            len: data.len() as u64,
            ..*req
        };
        self.dma_inner(&req, Buf::Write(data))
    }

    /// Performs `req` with `data` as the source (write) or destination
    /// (read); `req.len` is ignored in favour of `data.len()`.
    ///
    /// # Errors
    ///
    /// As [`SmmuModel::dma_read`] / [`SmmuModel::dma_write`].
    pub fn dma(&self, req: &DmaRequest, data: &mut [u8]) -> Result<(), DmaFault> {
        let req = DmaRequest {
            len: data.len() as u64,
            ..*req
        };
        if req.write {
            self.dma_inner(&req, Buf::Write(data))
        } else {
            self.dma_inner(&req, Buf::Read(data))
        }
    }

    fn dma_inner(&self, req: &DmaRequest, data: Buf<'_>) -> Result<(), DmaFault> {
        let r = self.dma_units(req, data);
        self.deliver();
        r
    }

    fn dma_units(&self, req: &DmaRequest, mut data: Buf<'_>) -> Result<(), DmaFault> {
        let len = data.len();
        let mut done = 0usize;
        while done < len {
            let iova = req.iova.wrapping_add(done as u64);
            // The unit is translated and copied under one lock: a CMD_SYNC
            // completes only after transactions using the old translation
            // (as the architecture requires), and the hot path pays one
            // lock per unit.
            let mut s = self.lock();
            let t = s.translate(req, iova);
            let t = match t {
                Ok(t) => t,
                Err(
                    f @ DmaFault::Terminated {
                        termination: Termination::RazWi,
                        ..
                    },
                ) => {
                    if let Buf::Read(b) = &mut data {
                        b[done..].fill(0);
                    }
                    return Err(f);
                }
                Err(f) => return Err(f),
            };
            let n = (len - done).min(t.bytes_left.clamp(1, usize::MAX as u64) as usize);
            let r = match &mut data {
                Buf::Write(b) => self.mem.write(t.pa, &b[done..done + n]),
                Buf::Read(b) => self.mem.read(t.pa, &mut b[done..done + n]),
            };
            if let Err(error) = r {
                return Err(DmaFault::Bus { pa: t.pa, error });
            }
            s.stats.dma_bytes += n as u64;
            drop(s);
            done += n;
        }
        Ok(())
    }

    /// Returns how many translations were served by the lock-free copies
    /// of TLB entries since the model was made: the TLB hits that took no
    /// lock (they are counted in [`Stats::tlb_hits`] too).
    ///
    /// Not a statistic: a restored model starts without copies, so the
    /// same translations after a restore may take the lock where the
    /// original did not, with the same results.
    pub fn lock_free_hits(&self) -> u64 {
        self.hot.total_hits()
    }

    /// Returns a snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.lock();
        s.fold_hot_hits();
        let mut st = s.stats.clone();
        st.tlb_evictions = s.tlb.evictions();
        st.tlbi_granule_mismatches = s.tlb.granule_mismatch;
        st.tlb_conflicts = s.tlb.conflicts;
        st.events_waiting = s.stall_records.len() as u64;
        st
    }

    /// Resets every counter to zero.
    pub fn reset_stats(&self) {
        let mut s = self.lock();
        s.fold_hot_hits();
        s.stats = Stats::default();
        s.tlb.reset_evictions();
        s.tlb.granule_mismatch = 0;
        s.tlb.conflicts = 0;
    }

    /// Enables or disables the TLB and walk cache (disabling empties them):
    /// with it off every translation walks, as in IOMMU emulators without
    /// a TLB. For comparisons; the default is on.
    pub fn set_tlb_enabled(&self, on: bool) {
        let mut s = self.lock();
        s.tlb.enabled = on;
        s.set_last(None);
        if !on {
            let all = crate::tlb::InvScope::all(&[
                crate::tlb::Regime::Nh,
                crate::tlb::Regime::El2,
                crate::tlb::Regime::S2,
                crate::tlb::Regime::Nested,
            ]);
            s.tlb.invalidate(&all);
            s.sync_iotlbs();
        }
    }

    /// Returns the number of leaf entries in the TLB.
    pub fn tlb_entries(&self) -> usize {
        self.lock().tlb.len()
    }

    /// Starts recording up to `capacity` trace entries (older ones are
    /// dropped first); a capacity of 0 stops tracing.
    pub fn set_trace(&self, capacity: usize) {
        let mut s = self.lock();
        s.trace = (capacity > 0).then(|| (capacity, Vec::new()));
        // Traced translations all take the locked path.
        s.set_last(None);
    }

    /// Returns and clears the recorded trace.
    pub fn take_trace(&self) -> Vec<TraceEntry> {
        match &mut self.lock().trace {
            Some((_, v)) => std::mem::take(v),
            None => Vec::new(),
        }
    }

    /// Returns the pending interrupt flags.
    pub fn interrupts(&self) -> Interrupts {
        self.lock().irq
    }

    /// Returns and clears the pending interrupt flags.
    pub fn take_interrupts(&self) -> Interrupts {
        std::mem::take(&mut self.lock().irq)
    }

    /// Fault injection: stops command consumption until
    /// [`SmmuModel::resume_commands`] (CMDQ_CONS stops moving).
    pub fn pause_commands(&self) {
        self.lock().inject.paused = true;
    }

    /// Resumes command consumption and consumes what is pending.
    pub fn resume_commands(&self) {
        let mut s = self.lock();
        s.inject.paused = false;
        s.process_cmdq();
        drop(s);
        self.deliver();
    }

    /// Fault injection: the next `n` commands are consumed (CONS advances)
    /// without any effect, CMD_SYNC included.
    pub fn drop_commands(&self, n: u64) {
        self.lock().inject.drop = n;
    }

    /// Fault injection: delays consumption of pending and future commands
    /// until software has read SMMU_CMDQ_CONS `polls` times; 0 ends a delay
    /// and consumes what is pending at once.
    pub fn delay_commands(&self, polls: u32) {
        let mut s = self.lock();
        s.inject.delay_polls = polls;
        s.process_cmdq();
        drop(s);
        self.deliver();
    }

    /// Returns the stall tags of transactions waiting for CMD_RESUME.
    pub fn stalled(&self) -> Vec<(u32, u16)> {
        self.lock()
            .stalled
            .iter()
            .map(|s| (s.sid, s.stag))
            .collect()
    }
}

impl State {
    /// Replaces the in-lock copy of the last TLB entry used.
    ///
    /// `None` is what everything that could drop or change a TLB entry
    /// (commands, register writes, TLB misses, restores) does first: it
    /// also drops every lock-free copy. `Some` follows an entry just used,
    /// which leaves the other copies' entries as they were.
    fn set_last(&mut self, last: Option<LastHit>) {
        if last.is_none() && self.hot_live {
            self.hot.clear();
            self.hot_live = false;
        }
        self.last = last;
    }

    /// Publishes `l`, the entry a locked hit on `iova` used, to the
    /// lock-free path (never while tracing, whose translations must all
    /// take the lock).
    fn publish(&mut self, iova: u64, l: &LastHit) {
        if self.trace.is_none() {
            self.hot.publish(iova, l);
            self.hot_live = true;
        }
    }

    /// Moves the lock-free path's hit count into the statistics.
    fn fold_hot_hits(&mut self) {
        let n = self.hot.take_hits();
        self.stats.translations += n;
        self.stats.tlb_hits += n;
    }

    fn trace(&mut self, f: impl FnOnce() -> TraceEntry) {
        if let Some((cap, v)) = &mut self.trace {
            if v.len() >= *cap {
                v.remove(0);
            }
            v.push(f());
        }
    }

    fn cmdq(&self) -> Queue {
        Queue::new(self.regs.cmdq_base, self.cfg.cmdq_log2)
    }

    fn eventq(&self) -> Queue {
        Queue::new(self.regs.eventq_base, self.cfg.evtq_log2)
    }

    /// Returns whether global error `bit` is active (GERROR != GERRORN).
    fn gerror_active(&self, bit: u32) -> bool {
        (self.regs.gerror ^ self.regs.gerrorn) & bit != 0
    }

    /// Raises global error `bit` unless it is already active.
    fn raise_gerror(&mut self, bit: u32) {
        if self.gerror_active(bit) {
            return;
        }
        self.regs.gerror ^= bit;
        self.stats.gerrors[bit.trailing_zeros() as usize] += 1;
        if self.regs.irq_ctrl & irq_ctrl::GERROR_IRQEN != 0 {
            self.irq.gerror = true;
            self.outbox.irq(signal::IrqLine::Gerror);
            // An aborted GERROR MSI is itself a global error; raising it
            // again while active does nothing, so this recurses once.
            let r = &self.regs;
            let cfg = (r.gerror_irq_cfg0, r.gerror_irq_cfg1, r.gerror_irq_cfg2);
            if !self.send_msi(cfg, gerror::MSI_GERROR_ABT_ERR) {
                self.raise_gerror(gerror::MSI_GERROR_ABT_ERR);
            }
        }
    }

    fn read32(&mut self, offset: u64) -> u32 {
        self.stats.mmio_accesses += 1;
        if offset % 4 != 0 || offset >= regs::FRAME_SIZE {
            return 0;
        }
        let r = &self.regs;
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        if offset >= regs::PAGE1 {
            return match offset - regs::PAGE1 {
                regs::EVENTQ_PROD => self.eventq_prod_reg(),
                regs::EVENTQ_CONS => r.eventq_cons,
                _ => 0,
            };
        }
        match offset {
            regs::IDR0..=regs::IDR5 => self.ids.idr[(offset / 4) as usize],
            regs::IIDR => self.ids.iidr,
            regs::AIDR => self.ids.aidr,
            // Updates complete synchronously, so ACK always mirrors.
            regs::CR0 | regs::CR0ACK => r.cr0,
            regs::CR1 => r.cr1,
            regs::CR2 => r.cr2,
            regs::STATUSR => 0,
            regs::GBPA => r.gbpa,
            regs::AGBPA => 0,
            regs::IRQ_CTRL | regs::IRQ_CTRLACK => r.irq_ctrl,
            regs::GERROR => r.gerror,
            regs::GERRORN => r.gerrorn,
            regs::GERROR_IRQ_CFG0 => lo(r.gerror_irq_cfg0),
            0x6c => hi(r.gerror_irq_cfg0),
            regs::GERROR_IRQ_CFG1 => r.gerror_irq_cfg1,
            regs::GERROR_IRQ_CFG2 => r.gerror_irq_cfg2,
            regs::STRTAB_BASE => lo(r.strtab_base),
            0x84 => hi(r.strtab_base),
            regs::STRTAB_BASE_CFG => r.strtab_base_cfg,
            regs::CMDQ_BASE => lo(r.cmdq_base),
            0x94 => hi(r.cmdq_base),
            regs::CMDQ_PROD => r.cmdq_prod,
            regs::CMDQ_CONS => {
                if self.inject.delay_polls > 0 {
                    self.inject.delay_polls -= 1;
                    if self.inject.delay_polls == 0 {
                        self.process_cmdq();
                    }
                }
                let field = queue::CONS_ERR_MASK << queue::CONS_ERR_SHIFT | self.cmdq().ptr_mask();
                self.regs.cmdq_cons & field
            }
            regs::EVENTQ_BASE => lo(r.eventq_base),
            0xa4 => hi(r.eventq_base),
            regs::EVENTQ_PROD => self.eventq_prod_reg(),
            regs::EVENTQ_CONS => r.eventq_cons,
            regs::EVENTQ_IRQ_CFG0 => lo(r.eventq_irq_cfg0),
            0xb4 => hi(r.eventq_irq_cfg0),
            regs::EVENTQ_IRQ_CFG1 => r.eventq_irq_cfg1,
            regs::EVENTQ_IRQ_CFG2 => r.eventq_irq_cfg2,
            _ => 0,
        }
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.trace(|| TraceEntry::MmioWrite {
            offset,
            value: value.into(),
        });
        self.write32_inner(offset, value);
    }

    /// Writes the waiting stall records once a register write may have
    /// made the event queue writable (CONS moved, EVENTQEN set, an event
    /// queue abort acknowledged).
    fn after_write(&mut self, offset: u64) {
        let offset = offset & !regs::PAGE1;
        if !self.stall_records.is_empty()
            && matches!(offset, regs::CR0 | regs::GERRORN | regs::EVENTQ_CONS)
        {
            self.flush_stall_records();
        }
    }

    fn write32_inner(&mut self, offset: u64, value: u32) {
        self.write_reg(offset, value);
        self.after_write(offset);
    }

    // Each arm reads as "register: condition under which the write lands",
    // which guards would hide behind the catch-all arm.
    #[allow(clippy::collapsible_match)]
    fn write_reg(&mut self, offset: u64, value: u32) {
        self.stats.mmio_accesses += 1;
        self.set_last(None);
        if offset % 4 != 0 || offset >= regs::FRAME_SIZE {
            return;
        }
        let set_lo = |r: &mut u64, v: u32| *r = (*r & !0xffff_ffff) | u64::from(v);
        let set_hi = |r: &mut u64, v: u32| *r = (*r & 0xffff_ffff) | u64::from(v) << 32;
        let offset = if offset >= regs::PAGE1 {
            match offset - regs::PAGE1 {
                o @ (regs::EVENTQ_PROD | regs::EVENTQ_CONS) => o,
                _ => return,
            }
        } else {
            offset
        };
        let en = self.regs.cr0;
        match offset {
            regs::CR0 => self.write_cr0(value),
            regs::CR1 => {
                // Table and queue attributes may only change while
                // everything that uses them is disabled.
                if en & (cr0::SMMUEN | cr0::CMDQEN | cr0::EVENTQEN) == 0 {
                    self.regs.cr1 = value & 0xfff;
                }
            }
            regs::CR2 => {
                if en & cr0::SMMUEN == 0 {
                    self.regs.cr2 = value & self.cr2_fields();
                }
            }
            regs::GBPA => {
                if value & gbpa::UPDATE != 0 {
                    // The update completes at once: UPDATE reads 0 again.
                    self.regs.gbpa = value & gbpa::FIELDS;
                    self.sync_iotlbs();
                }
            }
            regs::IRQ_CTRL => self.regs.irq_ctrl = value & 0b101,
            regs::GERRORN => {
                let was_cmdq_err = self.gerror_active(gerror::CMDQ_ERR);
                self.regs.gerrorn = value & self.gerror_fields();
                if was_cmdq_err && !self.gerror_active(gerror::CMDQ_ERR) {
                    // Acknowledged: ERR is UNKNOWN from now on (the model
                    // clears it) and consumption restarts at CONS.
                    self.regs.cmdq_cons &= queue::PTR_MASK;
                    self.process_cmdq();
                }
            }
            // MSI configuration exists only with MSIs (IDR0.MSI), and is
            // read-only while its source is enabled (ignored writes are
            // the SMMUv3.2 behaviour, one of v3.0/v3.1's outcomes).
            regs::GERROR_IRQ_CFG0..=regs::GERROR_IRQ_CFG2 => {
                if self.cfg.msi && self.regs.irq_ctrl & irq_ctrl::GERROR_IRQEN == 0 {
                    let mask = self.msi_addr_mask();
                    let r = &mut self.regs;
                    let cfg = (
                        &mut r.gerror_irq_cfg0,
                        &mut r.gerror_irq_cfg1,
                        &mut r.gerror_irq_cfg2,
                    );
                    write_msi_cfg(cfg, mask, offset - regs::GERROR_IRQ_CFG0, value);
                }
            }
            regs::STRTAB_BASE | 0x84 => {
                if en & cr0::SMMUEN == 0 {
                    let r = &mut self.regs.strtab_base;
                    if offset == regs::STRTAB_BASE {
                        set_lo(r, value);
                    } else {
                        set_hi(r, value);
                    }
                    *r &= strtab::ADDR_MASK | strtab::RA;
                }
            }
            regs::STRTAB_BASE_CFG => {
                if en & cr0::SMMUEN == 0 {
                    self.regs.strtab_base_cfg = value & self.strtab_cfg_fields();
                }
            }
            regs::CMDQ_BASE | 0x94 => {
                if en & cr0::CMDQEN == 0 {
                    let r = &mut self.regs.cmdq_base;
                    if offset == regs::CMDQ_BASE {
                        set_lo(r, value);
                    } else {
                        set_hi(r, value);
                    }
                    *r &= queue::ADDR_MASK | queue::ALLOC_HINT | queue::LOG2SIZE_MASK;
                }
            }
            regs::CMDQ_PROD => {
                self.regs.cmdq_prod = value & queue::PTR_MASK;
                self.process_cmdq();
            }
            regs::CMDQ_CONS => {
                if en & cr0::CMDQEN == 0 {
                    let keep_err =
                        self.regs.cmdq_cons & (queue::CONS_ERR_MASK << queue::CONS_ERR_SHIFT);
                    // RD bits above the wrap bit are RAZ.
                    self.regs.cmdq_cons = (value & self.cmdq().ptr_mask()) | keep_err;
                }
            }
            regs::EVENTQ_BASE | 0xa4 => {
                if en & cr0::EVENTQEN == 0 {
                    let r = &mut self.regs.eventq_base;
                    if offset == regs::EVENTQ_BASE {
                        set_lo(r, value);
                    } else {
                        set_hi(r, value);
                    }
                    *r &= queue::ADDR_MASK | queue::ALLOC_HINT | queue::LOG2SIZE_MASK;
                }
            }
            regs::EVENTQ_PROD => {
                if en & cr0::EVENTQEN == 0 {
                    // WR bits above the wrap bit are RAZ.
                    let ptr = self.eventq().ptr_mask();
                    self.regs.eventq_prod = value & (ptr | queue::OVFLG);
                }
            }
            regs::EVENTQ_CONS => self.regs.eventq_cons = value & (queue::PTR_MASK | queue::OVFLG),
            regs::EVENTQ_IRQ_CFG0..=regs::EVENTQ_IRQ_CFG2 => {
                if self.cfg.msi && self.regs.irq_ctrl & irq_ctrl::EVENTQ_IRQEN == 0 {
                    let mask = self.msi_addr_mask();
                    let r = &mut self.regs;
                    let cfg = (
                        &mut r.eventq_irq_cfg0,
                        &mut r.eventq_irq_cfg1,
                        &mut r.eventq_irq_cfg2,
                    );
                    write_msi_cfg(cfg, mask, offset - regs::EVENTQ_IRQ_CFG0, value);
                }
            }
            _ => {}
        }
    }

    /// Returns whether every register of `r` holds a value the register
    /// writes above can leave in it (a restored snapshot is checked with
    /// it: queue indexing, the stream table walk and GERROR handling rely
    /// on the masks).
    fn regs_consistent(&self, r: &Regs) -> bool {
        let mut cr0_bits = cr0::SMMUEN | cr0::EVENTQEN | cr0::CMDQEN;
        if self.cfg.ats {
            cr0_bits |= cr0::ATSCHK;
        }
        let queue_base = queue::ADDR_MASK | queue::ALLOC_HINT | queue::LOG2SIZE_MASK;
        let irq_addr = self.msi_addr_mask();
        let cons = queue::PTR_MASK | queue::CONS_ERR_MASK << queue::CONS_ERR_SHIFT;
        let event_ptr = queue::PTR_MASK | queue::OVFLG;
        let fits = |v: u64, mask: u64| v & !mask == 0;
        let fits32 = |v: u32, mask: u32| v & !mask == 0;
        fits32(r.cr0, cr0_bits)
            && fits32(r.cr1, 0xfff)
            && fits32(r.cr2, self.cr2_fields())
            && fits32(r.gbpa, gbpa::FIELDS)
            && fits32(r.irq_ctrl, 0b101)
            && fits32(r.gerror, self.gerror_fields())
            && fits32(r.gerrorn, self.gerror_fields())
            && fits(r.gerror_irq_cfg0, irq_addr)
            && fits32(r.gerror_irq_cfg2, irq_cfg::CFG2_FIELDS)
            && (self.cfg.msi
                || r.gerror_irq_cfg0 | u64::from(r.gerror_irq_cfg1 | r.gerror_irq_cfg2) == 0)
            && (self.cfg.msi
                || r.eventq_irq_cfg0 | u64::from(r.eventq_irq_cfg1 | r.eventq_irq_cfg2) == 0)
            && fits(r.strtab_base, strtab::ADDR_MASK | strtab::RA)
            && fits32(r.strtab_base_cfg, self.strtab_cfg_fields())
            && fits(r.cmdq_base, queue_base)
            && fits32(r.cmdq_prod, queue::PTR_MASK)
            && fits32(r.cmdq_cons, cons)
            && fits(r.eventq_base, queue_base)
            && fits32(r.eventq_prod, event_ptr)
            && fits32(r.eventq_cons, event_ptr)
            && fits(r.eventq_irq_cfg0, irq_addr)
            && fits32(r.eventq_irq_cfg2, irq_cfg::CFG2_FIELDS)
    }

    /// Returns the SMMU_GERROR(N) fields this SMMU implements: no PRI
    /// errors (no PRI queue), MSI aborts only with MSIs.
    fn gerror_fields(&self) -> u32 {
        let msi =
            gerror::MSI_CMDQ_ABT_ERR | gerror::MSI_EVENTQ_ABT_ERR | gerror::MSI_GERROR_ABT_ERR;
        let pri = gerror::PRIQ_ABT_ERR | gerror::MSI_PRIQ_ABT_ERR;
        let absent = if self.cfg.msi { pri } else { pri | msi };
        gerror::ALL & !absent
    }

    /// Returns the SMMU_CR2 fields this SMMU implements: RECINVSID,
    /// E2H with Hyp, PTM with BTM (the others are RES0).
    fn cr2_fields(&self) -> u32 {
        let e2h = if self.cfg.hyp { 1 } else { 0 };
        let ptm = if self.cfg.btm { 0b100 } else { 0 };
        e2h | 0b10 | ptm
    }

    /// Returns the SMMU_STRTAB_BASE_CFG fields this SMMU implements: FMT
    /// and SPLIT only with 2-level tables (IDR0.ST_LEVEL), else RES0.
    fn strtab_cfg_fields(&self) -> u32 {
        if self.cfg.two_level_strtab {
            strtab::CFG_MASK
        } else {
            strtab::LOG2SIZE_MASK
        }
    }

    /// Returns SMMU_EVENTQ_PROD as read: WR bits above the wrap bit of
    /// the current queue size are RAZ.
    fn eventq_prod_reg(&self) -> u32 {
        self.regs.eventq_prod & (queue::OVFLG | self.eventq().ptr_mask())
    }

    fn write_cr0(&mut self, value: u32) {
        let mut allowed = cr0::SMMUEN | cr0::EVENTQEN | cr0::CMDQEN;
        if self.cfg.ats {
            allowed |= cr0::ATSCHK;
        }
        let old = self.regs.cr0;
        let new = value & allowed;
        self.regs.cr0 = new;
        if new & cr0::CMDQEN != 0 && old & cr0::CMDQEN == 0 {
            self.process_cmdq();
        }
        if (new ^ old) & cr0::SMMUEN != 0 {
            self.sync_iotlbs();
        }
    }

    /// Writes an event to the event queue; returns whether it was recorded.
    ///
    /// A stall record that finds no room waits (see `stall_records`); it
    /// is counted in [`Stats::events`] when it leaves the wait.
    fn record_event(&mut self, ev: Event) -> bool {
        self.trace(|| TraceEntry::Event(ev));
        if ev.stall && !self.stall_records.is_empty() {
            // Behind earlier stall records still waiting for room.
            self.stall_records.push(ev);
            return false;
        }
        let put = self.put_event(&ev);
        if ev.stall && matches!(put, Put::Unwritable | Put::Full) {
            self.stall_records.push(ev);
            return false;
        }
        self.stats.events[usize::from(ev.kind.code())] += 1;
        match put {
            Put::Written => true,
            Put::Unwritable | Put::Aborted => {
                self.stats.events_discarded += 1;
                false
            }
            Put::Full => {
                // Overflow: flag it once until software acknowledges.
                let (prod, cons) = (self.regs.eventq_prod, self.regs.eventq_cons);
                if (prod ^ cons) & queue::OVFLG == 0 {
                    self.regs.eventq_prod ^= queue::OVFLG;
                }
                self.stats.events_overflowed += 1;
                false
            }
        }
    }

    /// Writes the stall records that waited for room, in order, while the
    /// queue takes them; drops those whose stall was retired meanwhile.
    fn flush_stall_records(&mut self) {
        let mut done = 0;
        while let Some(ev) = self.stall_records.get(done).copied() {
            if self.stall_outstanding(&ev) {
                match self.put_event(&ev) {
                    Put::Written => {}
                    Put::Aborted => self.stats.events_discarded += 1,
                    Put::Unwritable | Put::Full => break,
                }
            } else {
                self.stats.events_discarded += 1;
            }
            self.stats.events[usize::from(ev.kind.code())] += 1;
            done += 1;
        }
        self.stall_records.drain(..done);
    }

    /// Drops the waiting stall records of stalls no longer outstanding
    /// (retired by CMD_RESUME / CMD_STALL_TERM): they are not written.
    pub(super) fn drop_retired_stall_records(&mut self) {
        let records = std::mem::take(&mut self.stall_records);
        for ev in records {
            if self.stall_outstanding(&ev) {
                self.stall_records.push(ev);
            } else {
                self.stats.events[usize::from(ev.kind.code())] += 1;
                self.stats.events_discarded += 1;
            }
        }
    }

    /// Returns whether the stall `ev` reports still waits for an answer.
    fn stall_outstanding(&self, ev: &Event) -> bool {
        self.stalled
            .iter()
            .any(|s| s.sid == ev.sid && s.stag == ev.stag)
    }

    /// Writes `ev` at EVENTQ_PROD and signals it.
    fn put_event(&mut self, ev: &Event) -> Put {
        if self.regs.cr0 & cr0::EVENTQEN == 0 || self.gerror_active(gerror::EVENTQ_ABT_ERR) {
            return Put::Unwritable;
        }
        let q = self.eventq();
        let prod = self.regs.eventq_prod;
        let cons = self.regs.eventq_cons;
        if q.full(prod, cons) {
            return Put::Full;
        }
        let addr = q.base + u64::from(q.idx(prod)) * crate::layout::EVENT_SIZE;
        if self.mem.write(addr, &ev.to_bytes()).is_err() {
            self.raise_gerror(gerror::EVENTQ_ABT_ERR);
            return Put::Aborted;
        }
        self.regs.eventq_prod = (prod & queue::OVFLG) | q.inc(prod & queue::PTR_MASK);
        self.stats.events_recorded += 1;
        // The interrupt's trigger is the queue going from empty to
        // non-empty (IHI 0070 3.18.2), not every record.
        if q.empty(prod, cons) && self.regs.irq_ctrl & irq_ctrl::EVENTQ_IRQEN != 0 {
            self.irq.eventq = true;
            self.outbox.irq(signal::IrqLine::EventQ);
            let r = &self.regs;
            let cfg = (r.eventq_irq_cfg0, r.eventq_irq_cfg1, r.eventq_irq_cfg2);
            if !self.send_msi(cfg, gerror::MSI_EVENTQ_ABT_ERR) {
                self.raise_gerror(gerror::MSI_EVENTQ_ABT_ERR);
            }
        }
        Put::Written
    }

    /// Returns a STAG no outstanding stall holds, or `None` when
    /// IDR5.STALL_MAX stalls are outstanding (the model then terminates
    /// the transaction instead of stalling it, which also bounds the
    /// stalls kept).
    fn alloc_stag(&mut self) -> Option<u16> {
        // CMD_RESUME retires a stall by (StreamID, STAG): a STAG handed out
        // twice would let one resume retire two transactions.
        if self.stalled.len() >= regs::STALL_MAX as usize {
            return None;
        }
        loop {
            self.next_stag = self.next_stag.wrapping_add(1);
            let tag = self.next_stag;
            if !self.stalled.iter().any(|s| s.stag == tag) {
                return Some(tag);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pointer_arithmetic_wraps() {
        let q = Queue::new(0x8000_0000 | 2, 19);
        assert_eq!(q.log2, 2);
        let mut p = 0;
        for _ in 0..4 {
            p = q.inc(p);
        }
        assert_eq!(p, 0b100);
        assert!(q.full(p, 0));
        assert!(!q.empty(p, 0));
        for _ in 0..4 {
            p = q.inc(p);
        }
        assert_eq!(p, 0);
        assert!(q.empty(p, 0));
        // LOG2SIZE above the advertised maximum is capped.
        assert_eq!(Queue::new(0x8000_0000 | 19, 5).log2, 5);
    }
}
