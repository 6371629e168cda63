//! The virtual SMMU behind the trapped frame (issue 13): the hypervisor
//! brings the real SMMU up with its own `smmuv3` driver (its structures on
//! the hypervisor's heap, outside host RAM), builds the host stage-2 shadow
//! over it (`hyp_iommu::HypIommu`), and answers every host access with
//! `hyp_iommu::Emulator`, the trap-and-emulate SMMU that shows the host a
//! stage-1-only SMMU. The host's stage-1 domains then run nested on the
//! shadow, so its DMA reaches only what it owns.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::vec;
use alloc::vec::Vec;
use core::alloc::Layout;

use hyp_host::dtb::Bank;
use hyp_host::mmio::{MmioError, TrappedMmio};
use hyp_host::s1walk::{self, Leaf};
use hyp_iommu::{
    AccessError, EmulationOptions, Emulator, HostMemory, HostMemoryError, HypIommu, MemoryMap,
    Options, Owner, Range, Scrub, ScrubError, StreamConfig,
};
use io_pgtable::env::{AllocError, CacheError, CacheMaintenance, TableBlock, TableMemory};
use smmuv3::config::CdTableRef;
use smmuv3::env::{CacheInvalidate, Clock, MmioFrame};
use smmuv3::layout::cd as cdl;
use smmuv3::{Smmu, SmmuConfig};

use crate::{arch, layout, timer};

/// QEMU virt's MMIO a host device may reach by DMA, identity-mapped in the
/// shadow: the GICv2m MSI frame (a virtio-pci device's MSI-X writes land
/// there, translated like any other DMA) and the two PCIe MMIO windows
/// (peer-to-peer). Nothing else of the machine is a DMA target.
const DMA_MMIO: [Range; 3] = [
    Range::new(0x0802_0000, 0x1000),
    Range::new(
        layout::PCIE_MMIO32,
        layout::PCIE_MMIO32_END - layout::PCIE_MMIO32,
    ),
    Range::new(0x80_0000_0000, 0x80_0000_0000),
];

/// Largest block of hypervisor memory handed to the driver or the shadow.
const MAX_BLOCK: usize = 4 << 20;

/// Memory and clock of the hypervisor's SMMU driver and shadow: blocks of
/// the hypervisor's heap (identity mapped, so physical == virtual, and
/// outside everything the host's stage 2 or the shadow maps).
#[derive(Clone, Copy, Debug, Default)]
pub struct HypMem;

/// Returns whether `[phys, phys + len)` lies in the RAM the EL2 map covers.
fn in_ram(phys: u64, len: u64) -> bool {
    phys >= layout::RAM && phys.saturating_add(len) <= layout::RAM + layout::RAM_SIZE
}

// SAFETY: blocks come from the global allocator (the hypervisor's heap) with
// size == alignment, zeroed and cleaned before they are returned, live until
// `free_table`, and the heap is identity mapped, so `phys` is the CPU and the
// bus address and `phys_to_cpu` maps every byte of a live block to itself.
unsafe impl TableMemory for HypMem {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        if !size.is_power_of_two() || size < io_pgtable::env::MIN_TABLE_SIZE || size > MAX_BLOCK {
            return Err(AllocError::BadSize { size });
        }
        let layout =
            Layout::from_size_align(size, size).map_err(|_| AllocError::BadSize { size })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let cpu = NonNull::new(ptr).ok_or(AllocError::NoMemory { size })?;
        // A non-coherent walker must see the zeroes, not stale memory.
        arch::clean_dcache(ptr as u64, size as u64);
        Ok(TableBlock {
            cpu,
            phys: ptr as u64,
        })
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        if let Ok(layout) = Layout::from_size_align(size, size) {
            // SAFETY: the caller passes a block of `alloc_table(size)`,
            // which allocated it with exactly this layout.
            unsafe { dealloc(block.cpu.as_ptr(), layout) };
        }
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        NonNull::new(phys as *mut u8).unwrap_or(NonNull::dangling())
    }
}

impl CacheMaintenance for HypMem {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        if !in_ram(phys, len as u64) {
            return Err(CacheError { phys, len });
        }
        arch::clean_dcache(cpu.as_ptr() as u64, len as u64);
        Ok(())
    }

    fn device_write_barrier(&self) {
        io_pgtable::env::barrier::device_write();
    }

    fn full_barrier(&self) {
        io_pgtable::env::barrier::full();
    }
}

impl CacheInvalidate for HypMem {
    fn invalidate(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        if !in_ram(phys, len as u64) {
            return Err(CacheError { phys, len });
        }
        arch::clean_invalidate_dcache(cpu.as_ptr() as u64, len as u64);
        Ok(())
    }
}

impl Clock for HypMem {
    fn now_us(&self) -> u64 {
        timer::now_ns() / 1000
    }
}

/// Zeroes reclaimed pages through the identity map, cleaned to the point of
/// coherency so no device reads the old contents either.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroScrub;

impl Scrub for ZeroScrub {
    fn scrub(&self, addr: u64, len: u64) -> Result<(), ScrubError> {
        if !in_ram(addr, len) {
            return Err(ScrubError);
        }
        // SAFETY: the range is RAM (checked), identity mapped at EL2, and
        // the caller reclaims it: nobody else uses its contents any more.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, len as usize) };
        arch::clean_dcache(addr, len);
        Ok(())
    }
}

/// Host physical memory as the emulator reaches it: the hypervisor's
/// identity map of RAM (the emulator checks ownership before each call).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostRam;

impl HostMemory for HostRam {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), HostMemoryError> {
        if !in_ram(pa, buf.len() as u64) {
            return Err(HostMemoryError(pa));
        }
        // SAFETY: the range is RAM (checked), identity mapped as Normal
        // write-back at EL2, the same cacheable view the host's CPU writes
        // through; the host is stopped in the trap, so nothing writes it
        // concurrently and `buf` cannot overlap it (it is on the EL2 stack
        // or heap, which the emulator never names as host memory).
        unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, pa: u64, data: &[u8]) -> Result<(), HostMemoryError> {
        if !in_ram(pa, data.len() as u64) {
            return Err(HostMemoryError(pa));
        }
        // SAFETY: as in `read`; the emulator writes only host-owned RAM it
        // checked (event records), which the host set aside for the SMMU.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), pa as *mut u8, data.len()) };
        // A device's write: visible even to a host that invalidates first.
        arch::clean_dcache(pa, data.len() as u64);
        Ok(())
    }

    fn send_event(&self) {
        arch::send_event();
    }
}

/// The real SMMU's driver environment.
pub type Env = (MmioFrame, HypMem, HypMem);
/// The emulator the hypervisor runs.
pub type Emu = Emulator<HypMem, Env, ZeroScrub, HostRam>;

/// Why the virtual SMMU could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// The SMMU frame has no address.
    Frame,
    /// The memory map was refused.
    Map(hyp_iommu::Error),
    /// The hypervisor's driver could not bring the real SMMU up.
    Driver(smmuv3::Error),
    /// The shadow or the emulator could not be built.
    Hyp(hyp_iommu::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame => write!(f, "the SMMU frame is at address 0"),
            Self::Map(e) => write!(f, "memory map: {e}"),
            Self::Driver(e) => write!(f, "real SMMU bring-up: {e}"),
            Self::Hyp(e) => write!(f, "shadow/emulator: {e}"),
        }
    }
}

/// The emulator behind the trapped frame.
pub struct VirtualSmmu {
    emu: Emu,
    /// Every (stream, configuration) the shadow held after some host write,
    /// in order of first sight: a host that disables its SMMU at power-off
    /// leaves no stream configured by the time the run is reported.
    seen: Vec<(u32, &'static str)>,
    /// Host accesses to the frame so far.
    accesses: u64,
    /// The donation test hook, when asked for (`donate-after=N`).
    hook: Option<DonationHook>,
    /// The hypervisor's own memory, which the shadow must never map.
    hyp: Bank,
}

/// The test hook: from the `after`-th host access on, at the first access
/// where a nested host stream maps a page of host RAM, the hypervisor
/// donates that page (the highest mapped IOVA) to a guest; the device's
/// next DMA to it must fault at stage 2, as the hypervisor's event.
#[derive(Clone, Copy, Debug)]
pub struct DonationHook {
    /// Host accesses before the hook may fire.
    pub after: u64,
    /// What was donated: stream, the page and the access it happened at.
    done: Option<(u32, Leaf, u64)>,
}

impl DonationHook {
    /// Returns a hook that fires from host access `after` on.
    pub const fn new(after: u64) -> Self {
        Self { after, done: None }
    }
}

/// The guest the test hook donates to.
const HOOK_GUEST: u16 = 1;

/// Returns the name a configuration is reported by.
fn kind(config: StreamConfig) -> &'static str {
    match config {
        StreamConfig::Abort => "Abort",
        StreamConfig::SilentAbort => "SilentAbort",
        StreamConfig::Stage2 => "Stage2",
        StreamConfig::Nested { .. } => "Nested",
    }
}

impl VirtualSmmu {
    /// Brings up the real SMMU, builds the shadow of `ram` without `hyp`
    /// (plus [`DMA_MMIO`]), and returns the emulator over it.
    ///
    /// # Errors
    ///
    /// [`SetupError`] when any step fails.
    pub fn new(ram: &[Bank], hyp: Bank, hook: Option<DonationHook>) -> Result<Self, SetupError> {
        let banks: Vec<Range> = ram.iter().map(|b| Range::new(b.base, b.size)).collect();
        let map = MemoryMap::new(&banks, &DMA_MMIO, &[Range::new(hyp.base, hyp.size)])
            .map_err(SetupError::Map)?;
        let base = NonNull::new(layout::SMMU as *mut u8).ok_or(SetupError::Frame)?;
        // SAFETY: QEMU virt's SMMUv3 frame (128 KiB) is at this address,
        // identity mapped as Device memory at EL2 for the whole run, and
        // unmapped in the host's stage 2: this driver is its only user.
        let frame = unsafe { MmioFrame::new(base) };
        let smmu =
            Smmu::new(frame, HypMem, HypMem, SmmuConfig::default()).map_err(SetupError::Driver)?;
        let hyp_iommu = HypIommu::new(&map, vec![smmu], HypMem, ZeroScrub, Options::default())
            .map_err(SetupError::Hyp)?;
        let emu = Emulator::new(hyp_iommu, HostRam, EmulationOptions::default())
            .map_err(SetupError::Hyp)?;
        Ok(Self {
            emu,
            seen: Vec::new(),
            accesses: 0,
            hook,
            hyp,
        })
    }

    /// Returns how many 4 KiB pages of the hypervisor's own memory the
    /// shadow stage 2 translates (a device of the host's, in bypass or
    /// nested, can reach exactly those: must be 0), and how many of
    /// `samples` pages of host RAM spread over `ram` it translates to
    /// themselves.
    fn shadow_audit(&self, ram: &[Range], samples: u64) -> (u64, u64, u64) {
        let pt = self.emu.hyp().shadow().page_table();
        let page = hyp_iommu::PAGE;
        let hyp_mapped = (self.hyp.base..self.hyp.base + self.hyp.size)
            .step_by(page as usize)
            .filter(|&a| pt.translate(a).is_some())
            .count() as u64;
        let host_ram =
            hyp_iommu::MemoryMap::new(ram, &[], &[Range::new(self.hyp.base, self.hyp.size)])
                .map(|m| m.host_ram())
                .unwrap_or_default();
        let total: u64 = host_ram.iter().map(|r| r.len / page).sum();
        let stride = (total / samples.max(1)).max(1);
        let (mut tried, mut identity) = (0, 0);
        for r in &host_ram {
            let mut a = r.base;
            while a < r.end() {
                tried += 1;
                identity += u64::from(pt.translate(a) == Some(a));
                a += stride * page;
            }
        }
        (hyp_mapped, tried, identity)
    }

    /// Returns the shadow's shape (input size, page sizes, coherency, mode).
    pub fn geometry(&self) -> hyp_iommu::Geometry {
        self.emu.hyp().shadow().geometry()
    }

    /// Returns the host word at `pa` if it is host-owned RAM.
    fn host_word(&self, pa: u64) -> Option<u64> {
        if self.emu.hyp().owner(pa) != Some(Owner::Host) || pa % 8 != 0 {
            return None;
        }
        let mut b = [0u8; 8];
        HostRam.read(pa, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Returns the highest host-RAM page the stage 1 of context 0 of the
    /// host CD table `cd` maps (4 KiB granule only), or `None`.
    fn target(&self, cd: CdTableRef) -> Option<Leaf> {
        // CD 0 starts the first level-2 table whatever its size.
        let cd_pa = if cd.format.two_level() {
            let l1 = self.host_word(cd.ptr)?;
            if cdl::L1_V.get(l1) == 0 {
                return None;
            }
            cdl::L1_L2PTR.get(l1) << 12
        } else {
            cd.ptr
        };
        let w0 = self.host_word(cd_pa)?;
        let w1 = self.host_word(cd_pa + 8)?;
        if cdl::V.get(w0) == 0 || cdl::EPD0.get(w0) != 0 || cdl::TG0.get(w0) != 0 {
            return None;
        }
        s1walk::highest_leaf(
            &mut |pa| self.host_word(pa),
            cdl::TTB0.get(w1) << 4,
            cdl::T0SZ.get(w0) as u32,
            &mut |pa| self.emu.hyp().owner(pa) == Some(Owner::Host),
        )
    }

    /// Runs the donation test hook after a host access.
    fn run_hook(&mut self) {
        self.accesses += 1;
        let Some(hook) = self.hook else { return };
        if hook.done.is_some() || self.accesses < hook.after {
            return;
        }
        let nested = self.emu.streams(0).find_map(|(sid, c)| match c {
            StreamConfig::Nested { cd, .. } => Some((sid, cd)),
            _ => None,
        });
        let Some((sid, cd)) = nested else { return };
        let Some(leaf) = self.target(cd) else { return };
        match self
            .emu
            .hyp_mut()
            .donate_to_guest(leaf.pa, hyp_iommu::PAGE, HOOK_GUEST)
        {
            Ok(()) => {
                crate::println!(
                    "HYP: test hook: donated host page {:#x} (IOVA {:#x} of stream {sid:#x}) to guest {HOOK_GUEST} at host access {}",
                    leaf.pa,
                    leaf.iova,
                    self.accesses
                );
                self.hook = Some(DonationHook {
                    done: Some((sid, leaf, self.accesses)),
                    ..hook
                });
            }
            Err(e) => {
                crate::println!("HYP: test hook: donating {:#x} failed: {e}", leaf.pa);
                self.hook = None;
            }
        }
    }
}

/// The reason an emulator refusal is reported with.
fn reason(e: AccessError) -> &'static str {
    match e {
        AccessError::NoSmmu(_) => "no such SMMU",
        AccessError::BadSize { .. } => "bad access size for the register",
        AccessError::Misaligned(_) => "misaligned",
        AccessError::Unknown(_) => "no register there",
    }
}

impl TrappedMmio for VirtualSmmu {
    fn read(&mut self, offset: u64, size: u8) -> Result<u64, MmioError> {
        let value = self
            .emu
            .read(0, offset, size)
            .map_err(|e| MmioError::Device {
                offset,
                size,
                reason: reason(e),
            })?;
        self.run_hook();
        Ok(value)
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> Result<(), MmioError> {
        self.emu
            .write(0, offset, size, value)
            .map_err(|e| MmioError::Device {
                offset,
                size,
                reason: reason(e),
            })?;
        // Only writes re-shadow streams (CMDQ_PROD, CR0); a handful of
        // streams, so the scan is cheap.
        for (sid, config) in self.emu.streams(0) {
            let k = kind(config);
            if !self.seen.contains(&(sid, k)) {
                self.seen.push((sid, k));
            }
        }
        self.run_hook();
        Ok(())
    }

    fn report(&mut self, out: &mut dyn Write) -> fmt::Result {
        // Events still in the real queue are sorted before they are counted.
        self.emu.poll_events();
        let hyp_events = self.emu.hyp_events(0).len();
        if let Some(s) = self.emu.stats(0) {
            writeln!(
                out,
                "HYP-STATS vsmmu reads={} writes={} refused_accesses={} ignored_writes={} commands={} forwarded={} refused_commands={} aborted_commands={} host_syncs={} real_syncs={} real_failures={} ste_updates={} bad_stes={} refused_pointers={} host_events={} dropped_events={} overflows={} hyp_events={}",
                s.reads,
                s.writes,
                s.refused_accesses,
                s.ignored_writes,
                s.commands,
                s.forwarded,
                s.refused_commands,
                s.aborted_commands,
                s.host_syncs,
                s.real_syncs,
                s.real_failures,
                s.ste_updates,
                s.bad_stes,
                s.refused_pointers,
                s.host_events,
                s.dropped_events,
                s.overflows,
                s.hyp_events
            )?;
        }
        let ram = [Range::new(layout::RAM, layout::RAM_SIZE)];
        let (hyp_mapped, tried, identity) = self.shadow_audit(&ram, 4096);
        writeln!(
            out,
            "HYP-STATS shadow hyp-pages-mapped={hyp_mapped} of {} host-ram-sampled={tried} identity={identity}",
            self.hyp.size / hyp_iommu::PAGE
        )?;
        write!(out, "HYP-STATS vsmmu streams-seen")?;
        for (sid, k) in &self.seen {
            write!(out, " {sid:#x}={k}")?;
        }
        write!(out, " streams-now")?;
        for (sid, config) in self.emu.streams(0) {
            write!(out, " {sid:#x}={}", kind(config))?;
        }
        write!(out, " host-opcodes")?;
        for (op, n) in self.emu.host_opcodes(0) {
            write!(out, " {op:#04x}:{n}")?;
        }
        writeln!(out)?;
        if let Some(DonationHook {
            done: Some((sid, leaf, at)),
            ..
        }) = self.hook
        {
            let page = leaf.pa..leaf.pa + hyp_iommu::PAGE;
            let in_page = self
                .emu
                .hyp_events(0)
                .iter()
                .filter(|e| {
                    e.sid == sid
                        && e.fault.is_some_and(|f| {
                            f.stage2 && f.ipa.or(e.fetch_addr).is_some_and(|a| page.contains(&a))
                        })
                })
                .count();
            writeln!(
                out,
                "HYP-STATS vsmmu donation sid={sid:#x} iova={:#x} pa={:#x} at-access={at} stage2-faults-in-page={in_page} kept-hyp-events={hyp_events}",
                leaf.iova, leaf.pa
            )?;
        }
        // The first few are enough to read; the counts above cover all.
        for (k, e) in self.emu.hyp_events(0).iter().enumerate().take(4) {
            writeln!(out, "HYP-STATS vsmmu hyp-event {k}: {e:?}")?;
        }
        Ok(())
    }
}
