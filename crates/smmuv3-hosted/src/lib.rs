//! Runs the `smmuv3` driver core against `smmuv3-model` in process.
//!
//! * [`ModelFrame`]: the driver's register frame over an [`SmmuModel`];
//! * [`SimDmaMemory`]: table memory, cleans and invalidates over
//!   [`SimMemory`] (io-pgtable's `SimEnv` plus the invalidate direction);
//! * [`PollClock`]: a clock that advances one tick per reading, so every
//!   bounded wait of the driver is bounded by an iteration count;
//! * [`System`]: memory, model and driver brought up together, the fixture
//!   of the end-to-end tests, benchmarks and the command-line tool.
//!
//! ```
//! use io_pgtable::{Granule, Prot};
//! use sim_memory::Coherency;
//! use smmuv3::{AttachOptions, SmmuConfig};
//! use smmuv3_hosted::{HostedDomain, System};
//! use smmuv3_model::{DmaRequest, ModelConfig};
//!
//! let sys = System::new(8 << 20, Coherency::NonCoherent, ModelConfig::default(), SmmuConfig::default()).unwrap();
//! let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
//! sys.smmu.attach(7, None, &dom, AttachOptions::default()).unwrap();
//! let buf = sys.mem.alloc(4096).unwrap();
//! dom.map(0x1000_0000, buf, 4096, Prot::READ | Prot::WRITE).unwrap();
//! sys.model.dma_write(&DmaRequest::write(7, 0x1000_0008, 4), &[1, 2, 3, 4]).unwrap();
//! dom.unmap(0x1000_0000, 4096).unwrap();
//! // The device now faults, and the driver decodes the event.
//! assert!(sys.model.dma_write(&DmaRequest::write(7, 0x1000_0008, 4), &[0; 4]).is_err());
//! let events = sys.smmu.drain_events().unwrap().events;
//! assert_eq!(events[0].ty, smmuv3::event::EventType::Translation);
//! println!("{}", events[0]);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use io_pgtable::env::{AllocError, CacheError, CacheMaintenance, SimEnv, TableBlock, TableMemory};
use sim_memory::{Coherency, SimMemory};
use smmuv3::env::{CacheInvalidate, Clock, RegisterFrame};
use smmuv3_model::{ModelConfig, SmmuModel};

pub use smmuv3;
pub use smmuv3_model;

/// A function called with (offset, value) before each register write.
pub type WriteHook = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// The driver's register frame over a model, with an optional hook that
/// sees every register write first (tests use it to observe the device's
/// view of memory at each step of the driver, e.g. before each CMD_SYNC).
#[derive(Clone)]
pub struct ModelFrame {
    model: Arc<SmmuModel>,
    hook: Arc<std::sync::RwLock<Option<WriteHook>>>,
}

impl ModelFrame {
    /// Returns a frame over `model` without a hook.
    pub fn new(model: Arc<SmmuModel>) -> Self {
        Self {
            model,
            hook: Default::default(),
        }
    }

    /// Installs (or with `None` removes) the write hook.
    pub fn set_hook(&self, hook: Option<WriteHook>) {
        *self.hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    fn before_write(&self, offset: usize, value: u64) {
        let hook = self.hook.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = hook {
            h(offset, value);
        }
    }
}

impl RegisterFrame for ModelFrame {
    fn read32(&self, offset: usize) -> u32 {
        self.model.read32(offset as u64)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.before_write(offset, value.into());
        self.model.write32(offset as u64, value)
    }

    fn read64(&self, offset: usize) -> u64 {
        self.model.read64(offset as u64)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.before_write(offset, value);
        self.model.write64(offset as u64, value)
    }
}

/// Table memory over [`SimMemory`]: io-pgtable's [`SimEnv`] plus CPU
/// invalidation for what the model writes (events, MSIs).
pub struct SimDmaMemory {
    env: SimEnv,
    /// Barriers asked for (device-write and full), for ordering checks.
    barriers: Arc<AtomicU64>,
}

impl SimDmaMemory {
    /// Returns the environment allocating from `mem`.
    pub fn new(mem: Arc<SimMemory>) -> Self {
        Self {
            env: SimEnv::new(mem),
            barriers: Arc::default(),
        }
    }

    /// Returns how many barriers the driver asked for so far.
    pub fn barriers(&self) -> u64 {
        self.barriers.load(Ordering::Relaxed)
    }

    /// Returns the barrier counter itself, for hooks that check ordering
    /// while the driver runs (e.g. at every doorbell).
    pub fn barrier_counter(&self) -> Arc<AtomicU64> {
        self.barriers.clone()
    }

    /// Returns the memory.
    pub fn mem(&self) -> &Arc<SimMemory> {
        self.env.mem()
    }
}

// SAFETY: forwards to `SimEnv`, whose `TableMemory` implementation upholds
// the contract (buddy-allocated, naturally aligned, zeroed, atomic CPU view).
unsafe impl TableMemory for SimDmaMemory {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        self.env.alloc_table(size)
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        // SAFETY: forwarded from our caller; the block came from `self.env`.
        unsafe { self.env.free_table(block, size) }
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.env.phys_to_cpu(phys)
    }
}

impl CacheMaintenance for SimDmaMemory {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.env.clean(cpu, phys, len)
    }

    fn device_write_barrier(&self) {
        self.barriers.fetch_add(1, Ordering::Relaxed);
        self.env.device_write_barrier()
    }

    fn full_barrier(&self) {
        self.barriers.fetch_add(1, Ordering::Relaxed);
        self.env.full_barrier()
    }
}

impl CacheInvalidate for SimDmaMemory {
    fn invalidate(&self, _cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.mem()
            .invalidate(phys, len as u64)
            .map_err(|_| CacheError { phys, len })
    }
}

/// A clock advancing one microsecond per reading: with the model consuming
/// commands synchronously, a timeout of N microseconds is N polls.
#[derive(Default)]
pub struct PollClock {
    ticks: AtomicU64,
}

impl Clock for PollClock {
    fn now_us(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::Relaxed)
    }

    fn relax(&self) {
        std::thread::yield_now();
    }
}

/// The driver type of a hosted system.
pub type HostedSmmu = smmuv3::Smmu<(ModelFrame, SimDmaMemory, PollClock)>;
/// The domain type of a hosted system.
pub type HostedDomain = smmuv3::Domain<(ModelFrame, SimDmaMemory, PollClock)>;

/// Simulated memory, the model on it, and the driver brought up on both.
pub struct System {
    /// The simulated physical memory.
    pub mem: Arc<SimMemory>,
    /// The software SMMU.
    pub model: Arc<SmmuModel>,
    /// The driver.
    pub smmu: HostedSmmu,
}

/// Errors bringing a [`System`] up.
#[derive(Debug)]
pub enum SystemError {
    /// Simulated memory could not be created.
    Memory(sim_memory::MemError),
    /// The model refused its configuration.
    Model(smmuv3_model::ConfigError),
    /// The driver failed.
    Driver(smmuv3::Error),
}

impl std::fmt::Display for SystemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(e) => write!(f, "simulated memory: {e}"),
            Self::Model(e) => write!(f, "model: {e}"),
            Self::Driver(e) => write!(f, "driver: {e}"),
        }
    }
}

impl std::error::Error for SystemError {}

/// Base physical address of the simulated memory.
pub const MEM_BASE: u64 = 0x4000_0000;

impl System {
    /// Returns a system with `mem_size` bytes of memory of the given
    /// coherency, a model of `model_cfg` and the driver configured by
    /// `drv_cfg`, brought up.
    ///
    /// # Errors
    ///
    /// [`SystemError`] naming the part that failed.
    pub fn new(
        mem_size: u64,
        coherency: Coherency,
        model_cfg: ModelConfig,
        drv_cfg: smmuv3::SmmuConfig,
    ) -> Result<Self, SystemError> {
        let mem =
            Arc::new(SimMemory::new(MEM_BASE, mem_size, coherency).map_err(SystemError::Memory)?);
        let model = Arc::new(SmmuModel::new(model_cfg, mem.clone()).map_err(SystemError::Model)?);
        let smmu = HostedSmmu::new(
            ModelFrame::new(model.clone()),
            SimDmaMemory::new(mem.clone()),
            PollClock::default(),
            drv_cfg,
        )
        .map_err(SystemError::Driver)?;
        Ok(Self { mem, model, smmu })
    }
}
