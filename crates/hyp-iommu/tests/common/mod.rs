//! The fixture: SMMU models sharing one simulated memory, the driver on
//! each, and a hypervisor IOMMU over them with part of the memory as host
//! RAM. Shared by the tests and the benchmarks.
#![allow(dead_code)]

pub mod host;
pub mod hostile;

use std::sync::Arc;

use hyp_iommu::{HypIommu, MemoryMap, Options, Range, Scrub, ScrubError};
use sim_memory::{Coherency, SimMemory};
use smmuv3::SmmuConfig;
use smmuv3_hosted::{HostedSmmu, MEM_BASE, ModelFrame, PollClock, SimDmaMemory};
use smmuv3_model::{DmaFault, DmaRequest, ModelConfig, SmmuModel};

/// The hosted environment.
pub type Env = (ModelFrame, SimDmaMemory, PollClock);
/// The hypervisor IOMMU of the fixture.
pub type Hyp = HypIommu<SimDmaMemory, Env, SimScrub>;

/// Scrubs simulated memory: zeroes for the CPU, cleaned for devices.
pub struct SimScrub(pub Arc<SimMemory>);

impl Scrub for SimScrub {
    fn scrub(&self, addr: u64, len: u64) -> Result<(), ScrubError> {
        let zeros = vec![0u8; len as usize];
        self.0.cpu_write(addr, &zeros).map_err(|_| ScrubError)?;
        self.0.clean(addr, len).map_err(|_| ScrubError)
    }
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub smmus: usize,
    pub bbml: u8,
    pub coherency: Coherency,
    pub host_ram: u64,
    pub force_leaf: bool,
    /// Extra RAM beyond the simulated memory (translate-only), bytes.
    pub extra_ram: u64,
    /// Model TLB entries.
    pub tlb_capacity: usize,
    /// Simulated memory size (0: derived from `host_ram`).
    pub sim_size: u64,
    /// The models' stall model (`None`: the model's default).
    pub stall: Option<smmuv3_model::StallModel>,
    /// The models' substream ID bits (IDR1.SSIDSIZE).
    pub ssid_bits: u8,
    /// The models support ATS (IDR0.ATS): devices may mark traffic as
    /// translated.
    pub ats: bool,
    /// The models have 2-level stream tables (IDR0.ST_LEVEL).
    pub two_level_strtab: bool,
    /// The models send SEV events (IDR0.SEV).
    pub sev: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            smmus: 1,
            bbml: 2,
            coherency: Coherency::Coherent,
            host_ram: 8 << 20,
            force_leaf: false,
            extra_ram: 0,
            tlb_capacity: 1 << 16,
            sim_size: 0,
            stall: None,
            ssid_bits: ModelConfig::default().ssid_bits,
            ats: false,
            two_level_strtab: true,
            sev: ModelConfig::default().sev,
        }
    }
}

/// Base of the translate-only extra RAM.
pub const EXTRA_BASE: u64 = 0x1_0000_0000;
/// A host MMIO range of the map.
pub const MMIO: Range = Range::new(0x0900_0000, 0x20_0000);

pub struct Fixture {
    pub mem: Arc<SimMemory>,
    pub models: Vec<Arc<SmmuModel>>,
    pub hyp: Hyp,
    /// Host RAM inside the simulated memory.
    pub ram: Range,
    pub map: MemoryMap,
    pub setup: Setup,
}

pub fn model_config(setup: &Setup) -> ModelConfig {
    ModelConfig {
        bbml: setup.bbml,
        tlb_capacity: setup.tlb_capacity,
        stall_model: setup.stall.unwrap_or(ModelConfig::default().stall_model),
        ssid_bits: setup.ssid_bits,
        ats: setup.ats,
        two_level_strtab: setup.two_level_strtab,
        sev: setup.sev,
        ..ModelConfig::default()
    }
}

pub fn smmu_on(mem: &Arc<SimMemory>, model: &Arc<SmmuModel>) -> HostedSmmu {
    HostedSmmu::new(
        ModelFrame::new(model.clone()),
        SimDmaMemory::new(mem.clone()),
        PollClock::default(),
        SmmuConfig {
            timeout_us: 20_000,
            ..SmmuConfig::default()
        },
    )
    .unwrap()
}

/// Everything but the hypervisor IOMMU: memory, models, drivers, the map.
pub struct Parts {
    pub mem: Arc<SimMemory>,
    pub models: Vec<Arc<SmmuModel>>,
    pub smmus: Vec<HostedSmmu>,
    pub ram: Range,
    pub map: MemoryMap,
}

impl Parts {
    pub fn new(setup: &Setup) -> Self {
        let total = if setup.sim_size > 0 {
            setup.sim_size
        } else {
            (setup.host_ram * 2).max(32 << 20).next_power_of_two()
        };
        let mem = Arc::new(SimMemory::new(MEM_BASE, total, setup.coherency).unwrap());
        let models: Vec<_> = (0..setup.smmus)
            .map(|_| Arc::new(SmmuModel::new(model_config(setup), mem.clone()).unwrap()))
            .collect();
        let smmus: Vec<HostedSmmu> = models.iter().map(|m| smmu_on(&mem, m)).collect();
        let base = mem.alloc(setup.host_ram).unwrap();
        let ram = Range::new(base, setup.host_ram);
        // The rest of the simulated memory (queues, stream tables, shadow
        // tables) is the hypervisor's.
        let mut hyp_ranges = Vec::new();
        if base > MEM_BASE {
            hyp_ranges.push(Range::new(MEM_BASE, base - MEM_BASE));
        }
        if ram.end() < MEM_BASE + total {
            hyp_ranges.push(Range::new(ram.end(), MEM_BASE + total - ram.end()));
        }
        let mut rams = vec![Range::new(MEM_BASE, total)];
        if setup.extra_ram > 0 {
            rams.push(Range::new(EXTRA_BASE, setup.extra_ram));
        }
        let map = MemoryMap::new(&rams, &[MMIO], &hyp_ranges).unwrap();
        Self {
            mem,
            models,
            smmus,
            ram,
            map,
        }
    }

    /// Returns a hypervisor IOMMU over these parts.
    pub fn hyp(&self, force_leaf: bool) -> Hyp {
        HypIommu::new(
            &self.map,
            self.smmus.clone(),
            SimDmaMemory::new(self.mem.clone()),
            SimScrub(self.mem.clone()),
            Options { force_leaf },
        )
        .unwrap()
    }
}

impl Fixture {
    pub fn new(setup: Setup) -> Self {
        let parts = Parts::new(&setup);
        let hyp = parts.hyp(setup.force_leaf);
        let Parts {
            mem,
            models,
            ram,
            map,
            ..
        } = parts;
        Self {
            mem,
            models,
            hyp,
            ram,
            map,
            setup,
        }
    }

    /// Page `k` of host RAM.
    pub fn page(&self, k: u64) -> u64 {
        self.ram.base + k * 4096
    }

    /// DMA-writes `data` at `pa` as stream `sid` of SMMU `smmu`.
    pub fn dma_write(&self, smmu: usize, sid: u32, pa: u64, data: &[u8]) -> Result<(), DmaFault> {
        self.models[smmu].dma_write(&DmaRequest::write(sid, pa, data.len() as u64), data)
    }

    /// DMA-reads `len` bytes at `pa` as stream `sid` of SMMU `smmu`.
    pub fn dma_read(
        &self,
        smmu: usize,
        sid: u32,
        pa: u64,
        len: usize,
    ) -> Result<Vec<u8>, DmaFault> {
        let mut buf = vec![0u8; len];
        self.models[smmu].dma_read(&DmaRequest::read(sid, pa, len as u64), &mut buf)?;
        Ok(buf)
    }

    /// What the CPU reads at `pa` (after invalidating its cache view).
    pub fn cpu_read(&self, pa: u64, len: usize) -> Vec<u8> {
        self.mem.invalidate(pa, len as u64).unwrap();
        let mut buf = vec![0u8; len];
        self.mem.cpu_read(pa, &mut buf).unwrap();
        buf
    }

    /// Writes `data` at `pa` as the CPU and cleans it for devices.
    pub fn cpu_write(&self, pa: u64, data: &[u8]) {
        self.mem.cpu_write(pa, data).unwrap();
        self.mem.clean(pa, data.len() as u64).unwrap();
    }
}

/// Whether a DMA fault is a stage-2 translation fault.
pub fn is_s2_translation_fault(f: &DmaFault) -> bool {
    match f.event() {
        Some(ev) => ev.kind == smmuv3_model::EventType::FTranslation && ev.s2,
        None => false,
    }
}

/// Whether a DMA fault is the abort of a stream the emulator gave an
/// invalid real STE: terminated before any translation, recorded by the
/// real SMMU as C_BAD_STE for the hypervisor to sort.
pub fn is_invalid_ste_abort(f: &DmaFault) -> bool {
    f.event()
        .is_some_and(|ev| ev.kind == smmuv3_model::EventType::CBadSte)
}
