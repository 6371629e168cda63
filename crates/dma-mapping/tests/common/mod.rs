//! The fixture of the end-to-end tests: simulated memory, the SMMUv3 model
//! and the driver (smmuv3-hosted), a DMA environment over the same memory,
//! and a device attached to a stage-1 domain.
#![allow(dead_code)]

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dma_mapping::smmu::SmmuDomain;
use dma_mapping::{
    BouncePool, CacheError, DeviceConfig, DmaDevice, DmaDomain, DmaEnv, DomainConfig, Invalidation,
    NoIommu,
};
use io_pgtable::Granule;
use sim_memory::{Coherency, SimMemory};
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, ModelFrame, PollClock, SimDmaMemory, System};
use smmuv3_model::{DmaRequest, ModelConfig};

pub const SID: u32 = 7;
pub const MEM: u64 = 32 << 20;

thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread report CPU `cpu`.
pub fn set_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

/// The DMA environment over simulated memory: copies through the CPU view
/// with its atomic accessors, cleans and invalidates through its cache
/// model, a clock the test advances.
pub struct SimEnv {
    pub mem: Arc<SimMemory>,
    pub ticks: AtomicU64,
    /// Makes every `invalidate` fail (a test's injected cache error).
    pub fail_invalidate: AtomicBool,
}

impl SimEnv {
    pub fn new(mem: Arc<SimMemory>) -> Arc<Self> {
        Arc::new(Self {
            mem,
            ticks: AtomicU64::new(0),
            fail_invalidate: AtomicBool::new(false),
        })
    }

    pub fn advance(&self, n: u64) {
        self.ticks.fetch_add(n, Ordering::Relaxed);
    }
}

// SAFETY: `phys_to_cpu` returns pointers into the simulated memory's CPU
// view, valid for its life; coherent allocations come from its buddy
// allocator, used by nothing else until freed.
unsafe impl DmaEnv for SimEnv {
    fn cpu_id(&self) -> usize {
        CPU.with(|c| c.get())
    }

    fn now_ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    fn clean(&self, phys: u64, len: u64) -> Result<(), CacheError> {
        self.mem
            .clean(phys, len)
            .map_err(|_| CacheError { phys, len })
    }

    fn invalidate(&self, phys: u64, len: u64) -> Result<(), CacheError> {
        if self.fail_invalidate.load(Ordering::Relaxed) {
            return Err(CacheError { phys, len });
        }
        self.mem
            .invalidate(phys, len)
            .map_err(|_| CacheError { phys, len })
    }

    fn phys_to_cpu(&self, phys: u64, len: u64) -> Option<NonNull<u8>> {
        if !self.mem.contains(phys, len) {
            return None;
        }
        NonNull::new(self.mem.cpu_ptr(phys)?)
    }

    unsafe fn copy(&self, dst: u64, src: u64, len: u64) -> bool {
        let mut buf = vec![0u8; len as usize];
        self.mem.cpu_read(src, &mut buf).is_ok() && self.mem.cpu_write(dst, &buf).is_ok()
    }

    unsafe fn zero(&self, dst: u64, len: u64) -> bool {
        self.mem.cpu_write(dst, &vec![0u8; len as usize]).is_ok()
    }

    fn alloc_coherent(&self, size: u64) -> Option<(u64, NonNull<u8>)> {
        let phys = self.mem.alloc(size).ok()?;
        // The model has no uncached CPU mapping: make the zeroes visible to
        // the device instead.
        self.mem.clean(phys, size).ok()?;
        Some((phys, NonNull::new(self.mem.cpu_ptr(phys)?)?))
    }

    unsafe fn free_coherent(&self, phys: u64, _size: u64) {
        self.mem.free(phys);
    }
}

pub type Smmu = SmmuDomain<(ModelFrame, SimDmaMemory, PollClock)>;
pub type Dom = DmaDomain<Smmu, SimEnv>;
pub type Dev = DmaDevice<SimEnv, Smmu>;
pub type DirectDev = DmaDevice<SimEnv, NoIommu>;

pub struct Fixture {
    pub sys: System,
    pub env: Arc<SimEnv>,
    pub dom: Arc<Dom>,
}

pub fn fixture(coh: Coherency, inv: Invalidation) -> Fixture {
    fixture_with(coh, inv, 1)
}

pub fn fixture_with(coh: Coherency, inv: Invalidation, ncpus: usize) -> Fixture {
    fixture_granule(coh, inv, ncpus, Granule::K4)
}

/// Returns the driver over the model with a stage-1 domain of granule
/// `g` attached to stream `SID`.
pub fn attached(coh: Coherency, g: Granule) -> (System, HostedDomain) {
    let sys = System::new(MEM, coh, ModelConfig::default(), SmmuConfig::default()).unwrap();
    let hd = HostedDomain::new_stage1(&sys.smmu, g, 48).unwrap();
    sys.smmu
        .attach(SID, None, &hd, AttachOptions::default())
        .unwrap();
    (sys, hd)
}

pub fn fixture_granule(coh: Coherency, inv: Invalidation, ncpus: usize, g: Granule) -> Fixture {
    let (sys, hd) = attached(coh, g);
    let coherent = sys.smmu.features().coherent;
    let env = SimEnv::new(sys.mem.clone());
    let dom = Arc::new(
        DmaDomain::new(
            SmmuDomain::new(hd, coherent),
            env.clone(),
            DomainConfig {
                invalidation: inv,
                ncpus,
            },
        )
        .unwrap(),
    );
    Fixture { sys, env, dom }
}

impl Fixture {
    pub fn device(&self, cfg: DeviceConfig) -> Dev {
        DmaDevice::behind_iommu(cfg, self.dom.clone())
    }

    /// Returns a bounce pool of `size` bytes carved from the memory.
    /// Returns a device on the direct path (no IOMMU) with `cfg`.
    #[allow(dead_code)]
    pub fn direct(&self, cfg: DeviceConfig) -> DirectDev {
        DmaDevice::direct(cfg, self.env.clone())
    }

    /// Returns a device on the direct path with `cfg`, bouncing through
    /// `pool` what it cannot reach (or everything, with `force_bounce`).
    #[allow(dead_code)]
    pub fn direct_bounced(&self, cfg: DeviceConfig, pool: &Arc<BouncePool>) -> DirectDev {
        self.direct(cfg).with_bounce(pool.clone())
    }

    pub fn pool(&self, size: u64) -> Arc<BouncePool> {
        let base = self.sys.mem.alloc(size).unwrap();
        self.sys.mem.clean(base, size).unwrap();
        Arc::new(BouncePool::new(base, size).unwrap())
    }

    /// Returns a buffer of `size` bytes filled with `fill`, written back.
    pub fn buffer(&self, size: u64, fill: u8) -> u64 {
        let pa = self
            .sys
            .mem
            .alloc(size.next_power_of_two().max(4096))
            .unwrap();
        self.sys
            .mem
            .cpu_write(pa, &vec![fill; size as usize])
            .unwrap();
        pa
    }

    pub fn cpu_read(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.sys.mem.cpu_read(pa, &mut v).unwrap();
        v
    }

    /// Returns what the device reads at `iova`, or `None` if it faults.
    pub fn dev_read(&self, iova: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.sys
            .model
            .dma_read(&DmaRequest::read(SID, iova, len as u64), &mut v)
            .ok()
            .map(|_| v)
    }

    /// Returns whether the device's write at `iova` went through.
    pub fn dev_write(&self, iova: u64, data: &[u8]) -> bool {
        self.sys
            .model
            .dma_write(&DmaRequest::write(SID, iova, data.len() as u64), data)
            .is_ok()
    }

    /// Returns the IOVAs of the translations the model caches that the
    /// page tables no longer give (see `SmmuModel::audit_caches`), after
    /// asserting nothing else is stale (walk-cache entries, configuration).
    #[allow(dead_code)]
    pub fn stale_iovas(&self) -> Vec<u64> {
        let a = self.sys.model.audit_caches();
        assert!(
            a.stale_walks.is_empty() && a.stale_stage2.is_empty() && a.stale_configs.is_empty(),
            "{a:?}"
        );
        a.stale.iter().map(|s| s.iova).collect()
    }

    /// Asserts the device can neither read nor write any byte of
    /// `[iova, iova + len)` (checked at every granule and at both ends).
    pub fn assert_unreachable(&self, iova: u64, len: u64) {
        let mut points: Vec<u64> = (iova & !0xfff..iova + len).step_by(4096).collect();
        points.push(iova + len - 1);
        for p in points {
            assert!(self.dev_read(p, 1).is_none(), "device still reads {p:#x}");
            assert!(!self.dev_write(p, &[0xee]), "device still writes {p:#x}");
        }
        let _ = self.sys.smmu.drain_events();
    }
}

pub fn both(f: impl Fn(Coherency)) {
    f(Coherency::Coherent);
    f(Coherency::NonCoherent);
}
