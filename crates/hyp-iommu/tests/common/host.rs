//! The host side of trap-and-emulate on the model: host RAM as the host
//! driver's memory, the hypervisor's checked view of host memory, and the
//! host driver's register frame that traps into the emulator.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use hyp_iommu::{EmulationOptions, Emulator, HostMemory, HostMemoryError, Range};
use io_pgtable::env::{AllocError, CacheError, CacheMaintenance, TableBlock, TableMemory};
use sim_memory::SimMemory;
use smmuv3::SmmuConfig;
use smmuv3::env::{CacheInvalidate, RegisterFrame};
use smmuv3_hosted::{PollClock, SimDmaMemory};

use super::{Env, Fixture, Setup, SimScrub};

/// The emulator of the fixture.
pub type Emu = Emulator<SimDmaMemory, Env, SimScrub, SimHost>;
/// The host driver's environment.
pub type HostEnv = (HostFrame, HostRam, PollClock);
/// The host's driver.
pub type HostSmmu = smmuv3::Smmu<HostEnv>;
/// A host domain.
pub type HostDomain = smmuv3::Domain<HostEnv>;

/// Allocations from host RAM only (power-of-two, naturally aligned), so
/// everything the host driver builds is host-owned memory, as on a real
/// machine.
#[derive(Clone)]
pub struct HostRam {
    mem: Arc<SimMemory>,
    ram: Range,
    state: Arc<Mutex<RamState>>,
    /// CPU pointers for addresses outside the memory (a hostile host's
    /// page tables may point anywhere; io-pgtable may follow them).
    outside: Arc<io_pgtable::env::SimEnv>,
}

#[derive(Default)]
struct RamState {
    next: u64,
    free: BTreeMap<u64, Vec<u64>>,
}

impl HostRam {
    pub fn new(mem: Arc<SimMemory>, ram: Range) -> Self {
        Self {
            ram,
            state: Arc::new(Mutex::new(RamState {
                next: ram.base,
                ..RamState::default()
            })),
            outside: Arc::new(io_pgtable::env::SimEnv::new(mem.clone())),
            mem,
        }
    }

    /// Returns `size` bytes of zeroed host RAM (cleaned), or `None`.
    pub fn alloc(&self, size: u64) -> Option<u64> {
        let size = size.max(64).next_power_of_two();
        let mut s = self.state.lock().unwrap();
        let pa = match s.free.get_mut(&size).and_then(Vec::pop) {
            Some(pa) => pa,
            None => {
                let pa = s.next.next_multiple_of(size);
                if pa + size > self.ram.end() {
                    return None;
                }
                s.next = pa + size;
                pa
            }
        };
        drop(s);
        self.mem.cpu_write(pa, &vec![0u8; size as usize]).ok()?;
        self.mem.clean(pa, size).ok()?;
        Some(pa)
    }

    pub fn free(&self, pa: u64, size: u64) {
        let size = size.max(64).next_power_of_two();
        // Only blocks this allocator can have handed out.
        if pa % size != 0 || pa < self.ram.base || pa + size > self.ram.end() {
            return;
        }
        self.state
            .lock()
            .unwrap()
            .free
            .entry(size)
            .or_default()
            .push(pa);
    }
}

// SAFETY: blocks come from the host RAM range inside the simulated memory,
// naturally aligned (each is aligned to its power-of-two size), handed out
// once until freed, and zeroed; the CPU view behind `cpu_ptr` is atomic
// words that live as long as the memory, which the Arc keeps alive.
unsafe impl TableMemory for HostRam {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        if size < io_pgtable::env::MIN_TABLE_SIZE || !size.is_power_of_two() {
            return Err(AllocError::BadSize { size });
        }
        let phys = self
            .alloc(size as u64)
            .ok_or(AllocError::NoMemory { size })?;
        let cpu = self
            .mem
            .cpu_ptr(phys)
            .and_then(NonNull::new)
            .ok_or(AllocError::NoMemory { size })?;
        Ok(TableBlock { cpu, phys })
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        self.free(block.phys, size as u64);
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        self.outside.phys_to_cpu(phys)
    }
}

impl CacheMaintenance for HostRam {
    fn clean(&self, _cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.mem
            .clean(phys, len as u64)
            .map_err(|_| CacheError { phys, len })
    }

    fn device_write_barrier(&self) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    fn full_barrier(&self) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl CacheInvalidate for HostRam {
    fn invalidate(&self, _cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        self.mem
            .invalidate(phys, len as u64)
            .map_err(|_| CacheError { phys, len })
    }
}

/// The hypervisor's view of host memory, with an oracle: every access is
/// recorded, and one outside the pages the test says the host owns is a
/// violation.
#[derive(Clone)]
pub struct SimHost {
    pub mem: Arc<SimMemory>,
    pub ram: Range,
    /// Pages the test took from the host (donated).
    pub taken: Arc<Mutex<BTreeSet<u64>>>,
    /// Accesses outside host-owned RAM (must stay empty).
    pub violations: Arc<Mutex<Vec<(u64, usize)>>>,
    pub reads: Arc<std::sync::atomic::AtomicU64>,
    pub writes: Arc<std::sync::atomic::AtomicU64>,
    pub sevs: Arc<std::sync::atomic::AtomicU64>,
}

impl SimHost {
    pub fn new(mem: Arc<SimMemory>, ram: Range) -> Self {
        Self {
            mem,
            ram,
            taken: Default::default(),
            violations: Default::default(),
            reads: Default::default(),
            writes: Default::default(),
            sevs: Default::default(),
        }
    }

    fn check(&self, pa: u64, len: usize) {
        let end = pa + len as u64;
        let taken = self.taken.lock().unwrap();
        let inside = pa >= self.ram.base && end <= self.ram.end();
        let mut page = pa & !0xfff;
        let mut ok = inside;
        while ok && page < end {
            ok &= !taken.contains(&page);
            page += 0x1000;
        }
        if !ok {
            self.violations.lock().unwrap().push((pa, len));
        }
    }
}

impl HostMemory for SimHost {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), HostMemoryError> {
        self.check(pa, buf.len());
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.mem.cpu_read(pa, buf).map_err(|_| HostMemoryError(pa))
    }

    fn write(&self, pa: u64, data: &[u8]) -> Result<(), HostMemoryError> {
        self.check(pa, data.len());
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.mem
            .cpu_write(pa, data)
            .map_err(|_| HostMemoryError(pa))?;
        self.mem
            .clean(pa, data.len() as u64)
            .map_err(|_| HostMemoryError(pa))
    }

    fn send_event(&self) {
        self.sevs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The host driver's register frame: every access traps into the
/// emulator (as a data abort on the unmapped frame would).
#[derive(Clone)]
pub struct HostFrame {
    pub emu: Arc<Mutex<Emu>>,
    pub smmu: usize,
}

impl RegisterFrame for HostFrame {
    fn read32(&self, offset: usize) -> u32 {
        let mut e = self.emu.lock().unwrap();
        e.read(self.smmu, offset as u64, 4).unwrap_or(0) as u32
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut e = self.emu.lock().unwrap();
        let _ = e.write(self.smmu, offset as u64, 4, value.into());
    }

    fn read64(&self, offset: usize) -> u64 {
        let mut e = self.emu.lock().unwrap();
        e.read(self.smmu, offset as u64, 8).unwrap_or(0)
    }

    fn write64(&self, offset: usize, value: u64) {
        let mut e = self.emu.lock().unwrap();
        let _ = e.write(self.smmu, offset as u64, 8, value);
    }
}

/// The fixture with the emulator in front of its SMMUs, and what the host
/// needs to bring its own driver up.
pub struct Trapped {
    pub mem: Arc<SimMemory>,
    pub models: Vec<Arc<smmuv3_model::SmmuModel>>,
    pub emu: Arc<Mutex<Emu>>,
    pub ram: Range,
    pub host_ram: HostRam,
    pub host: SimHost,
}

impl Trapped {
    pub fn new(setup: Setup) -> Self {
        Self::over(Fixture::new(setup))
    }

    /// Returns the emulator over a fixture the hypervisor already used.
    pub fn over(f: Fixture) -> Self {
        let host = SimHost::new(f.mem.clone(), f.ram);
        let emu = Emulator::new(f.hyp, host.clone(), EmulationOptions::default()).unwrap();
        Self {
            host_ram: HostRam::new(f.mem.clone(), f.ram),
            mem: f.mem,
            models: f.models,
            emu: Arc::new(Mutex::new(emu)),
            ram: f.ram,
            host,
        }
    }

    /// Returns the host's driver brought up on virtual SMMU `smmu`.
    pub fn host_smmu(&self, smmu: usize, cfg: SmmuConfig) -> Result<HostSmmu, smmuv3::Error> {
        HostSmmu::new(
            HostFrame {
                emu: self.emu.clone(),
                smmu,
            },
            self.host_ram.clone(),
            PollClock::default(),
            cfg,
        )
    }

    /// Donates `[pa, pa + len)` to guest 1, telling the oracle.
    pub fn donate(&self, pa: u64, len: u64) -> Result<(), hyp_iommu::Error> {
        self.emu
            .lock()
            .unwrap()
            .hyp_mut()
            .donate_to_guest(pa, len, 1)?;
        let mut t = self.host.taken.lock().unwrap();
        for p in (pa..pa + len).step_by(4096) {
            t.insert(p);
        }
        Ok(())
    }

    pub fn dma_write(
        &self,
        sid: u32,
        iova: u64,
        data: &[u8],
    ) -> Result<(), smmuv3_model::DmaFault> {
        self.models[0].dma_write(
            &smmuv3_model::DmaRequest::write(sid, iova, data.len() as u64),
            data,
        )
    }

    pub fn dma_read(
        &self,
        sid: u32,
        iova: u64,
        len: usize,
    ) -> Result<Vec<u8>, smmuv3_model::DmaFault> {
        let mut buf = vec![0u8; len];
        self.models[0].dma_read(
            &smmuv3_model::DmaRequest::read(sid, iova, len as u64),
            &mut buf,
        )?;
        Ok(buf)
    }

    pub fn cpu_read(&self, pa: u64, len: usize) -> Vec<u8> {
        self.mem.invalidate(pa, len as u64).unwrap();
        let mut buf = vec![0u8; len];
        self.mem.cpu_read(pa, &mut buf).unwrap();
        buf
    }

    /// Returns the 8 bytes at `pa` as the CPU sees them.
    pub fn read_u64(&self, pa: u64) -> u64 {
        u64::from_le_bytes(self.cpu_read(pa, 8).try_into().unwrap())
    }

    /// Writes `v` at `pa` and cleans it to where the SMMU reads.
    pub fn write_u64(&self, pa: u64, v: u64) {
        self.mem.cpu_write(pa, &v.to_le_bytes()).unwrap();
        self.mem.clean(pa, 8).unwrap();
    }

    /// Returns the host's stream table base on SMMU 0 (what its driver
    /// programmed).
    pub fn host_strtab(&self) -> u64 {
        let base = self
            .emu
            .lock()
            .unwrap()
            .read(0, smmuv3::regs::STRTAB_BASE as u64, 8)
            .unwrap();
        base & smmuv3::regs::strtab_base::ADDR.mask()
    }

    pub fn stats(&self) -> hyp_iommu::EmulationStats {
        self.emu.lock().unwrap().stats(0).unwrap()
    }
}
