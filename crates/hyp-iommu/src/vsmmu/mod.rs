//! Trap-and-emulate of the host's SMMUs: the host keeps an ordinary SMMUv3
//! driver, pointed at a virtual register frame, while the hypervisor owns
//! the real SMMUs.
//!
//! The host sees a stage-1-only SMMU (no stage 2, VMID16, MSI, HYP, ATS,
//! PRI or stalls) whose command queue, stream table and event queue live
//! in host memory. The emulator:
//!
//! * answers every register access ([`Emulator::read`], [`Emulator::write`];
//!   `frame.rs`), refusing misaligned, mis-sized and out-of-frame ones;
//! * on a host `CMDQ_PROD` write, reads the host's new commands from host
//!   memory and validates and translates each (`cmdq.rs`): TLBIs forwarded
//!   at VMID 0, `CFGI_STE`/`CFGI_ALL` re-shadowing the streams they name,
//!   stage-2 and hypervisor commands refused with `CERROR_ILL`, the whole
//!   batch completed by one real `CMD_SYNC`;
//! * turns each host STE into one of its own (`streams.rs`): abort stays
//!   abort, bypass becomes stage 2 on the shadow, stage 1 becomes nested
//!   over the shadow, anything else is refused (`C_BAD_STE` for its
//!   traffic);
//! * sorts the real SMMUs' events (`events.rs`): stage-1 faults and bad
//!   contexts of the host's making go to the host's event queue, rebuilt
//!   from their decoded fields; stage-2 faults are the hypervisor's;
//!   traffic on a stream it aborts (with an invalid real STE, which the
//!   real SMMU records) becomes the event the host's configuration calls
//!   for: C_BAD_STREAMID outside the host's stream table, C_BAD_STE,
//!   F_STE_FETCH, or nothing for a host abort (then silenced);
//! * enables each real SMMU's event interrupt, whose handler calls
//!   [`Emulator::event_irq`]: the host's events reach its queue and its
//!   event interrupt without the host polling (the hypervisor injects
//!   what [`Emulator::event_irq`] and [`Emulator::take_irqs`] return).
//!
//! Every host address the emulator reads or writes (queues, stream table,
//! level-1 descriptors) is checked page by page to be host-owned RAM at
//! the moment of the access; the emulator holds the hypervisor state by
//! `&mut`, so no donation can run while it reads. CD tables and stage-1
//! tables are never read by the hypervisor: the SMMU fetches them as IPAs
//! through the shadow stage 2, which does not map what the host does not
//! own.

mod cmdq;
mod events;
mod frame;
mod streams;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use io_pgtable::env::{CacheMaintenance, TableMemory};
use smmuv3::Smmu;
use smmuv3::command::Command;
use smmuv3::env::{RegisterFrame, SmmuEnv};
use smmuv3::event::Event;

use crate::error::Error;
use crate::hyp::HypIommu;
use crate::scrub::Scrub;

pub use events::EventIrq;
pub use frame::AccessError;
pub use streams::StreamConfig;

/// The hypervisor's access to host physical memory.
///
/// The emulator calls it only for ranges it checked are host-owned RAM.
pub trait HostMemory {
    /// Reads `buf.len()` bytes of host memory at `pa`, as the CPU sees
    /// them (the host cleaned what a non-coherent SMMU must see; the
    /// hypervisor reads through the CPU's coherent view).
    ///
    /// # Errors
    ///
    /// [`HostMemoryError`] when the range cannot be read.
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), HostMemoryError>;

    /// Writes `data` to host memory at `pa` as a device would: visible to
    /// the host CPU even if it invalidates its caches first (cleaned to the
    /// point of coherency), since a host driver for a non-coherent SMMU
    /// invalidates event records before it reads them.
    ///
    /// # Errors
    ///
    /// [`HostMemoryError`] when the range cannot be written.
    fn write(&self, pa: u64, data: &[u8]) -> Result<(), HostMemoryError>;

    /// Wakes host CPUs waiting for a `CMD_SYNC` that asked for a SEV.
    fn send_event(&self) {}
}

/// Host memory could not be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("host memory access at {0:#x} failed")]
pub struct HostMemoryError(pub u64);

/// Emulation options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulationOptions {
    /// Largest stream ID width shown to the host (IDR1.SIDSIZE is the
    /// smaller of this and the real one). It bounds the work of a host
    /// `CFGI_ALL` or SMMU enable: every STE of the host's table is read.
    pub max_sid_bits: u8,
}

impl Default for EmulationOptions {
    fn default() -> Self {
        Self { max_sid_bits: 16 }
    }
}

/// Interrupts the emulation raised for the host since the last
/// [`Emulator::take_irqs`]: the hypervisor injects them (wired, since MSIs
/// are hidden).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostIrqs {
    /// A global error was raised with IRQ_CTRL.GERROR_IRQEN set.
    pub gerror: bool,
    /// The host's event queue went from empty to non-empty with
    /// IRQ_CTRL.EVENTQ_IRQEN set.
    pub eventq: bool,
    /// A host CMD_SYNC with CS = SIG_IRQ completed (the wired CMD_SYNC
    /// interrupt, which IRQ_CTRL does not gate).
    pub cmd_sync: bool,
}

/// Counters of one virtual SMMU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmulationStats {
    /// Register reads emulated.
    pub reads: u64,
    /// Register writes emulated.
    pub writes: u64,
    /// Accesses refused (misaligned, mis-sized, unknown, outside the frame).
    pub refused_accesses: u64,
    /// Writes ignored as the architecture says (read-only registers, GBPA,
    /// base registers while their queue or the SMMU is enabled).
    pub ignored_writes: u64,
    /// Host commands consumed.
    pub commands: u64,
    /// Host commands forwarded to the real SMMU (after translation).
    pub forwarded: u64,
    /// Host commands refused with CERROR_ILL.
    pub refused_commands: u64,
    /// Host commands that could not be read (CERROR_ABT).
    pub aborted_commands: u64,
    /// Host CMD_SYNCs completed.
    pub host_syncs: u64,
    /// Real CMD_SYNCs issued for them (batched).
    pub real_syncs: u64,
    /// Real command submissions that failed (the host's CONS stays put,
    /// or, after a power cycle, the fresh SMMU's unconfigured streams
    /// abort without recording their traffic or its event interrupt
    /// could not be enabled).
    pub real_failures: u64,
    /// STE re-shadows that changed the real STE.
    pub ste_updates: u64,
    /// Host STEs refused (C_BAD_STE to the host).
    pub bad_stes: u64,
    /// Host pointers refused: not host-owned RAM when they were used.
    pub refused_pointers: u64,
    /// Events written to the host's event queue.
    pub host_events: u64,
    /// Host events made from the real SMMU's record of traffic on a stream
    /// it aborts with an invalid STE: the C_BAD_STREAMID, C_BAD_STE or
    /// F_STE_FETCH the host's configuration calls for.
    pub traffic_events: u64,
    /// Streams the host aborts silently that were made silent on the real
    /// SMMU too, after traffic on them was recorded.
    pub silenced_streams: u64,
    /// Host events dropped: its event queue disabled or unwritable.
    pub dropped_events: u64,
    /// Host event queue overflows.
    pub overflows: u64,
    /// Overflows of the real event queue seen by a drain (records lost
    /// before the hypervisor sorted them; the host is not told, since its
    /// own queue did not overflow).
    pub real_overflows: u64,
    /// Events kept by the hypervisor (stage-2 faults and its own
    /// configuration's).
    pub hyp_events: u64,
}

/// Most recent hypervisor-side events kept per SMMU.
pub const HYP_EVENT_LOG: usize = 64;

/// A host queue as its registers describe it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HostQueue {
    /// The base register (address, LOG2SIZE, RA).
    base: u64,
    prod: u32,
    cons: u32,
}

/// The host-visible state of one SMMU.
struct VSmmu {
    idr: [u32; 6],
    iidr: u32,
    aidr: u32,
    cr0: u32,
    cr1: u32,
    cr2: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_cfg: u32,
    cmdq: HostQueue,
    /// CMDQ_CONS.ERR of the last command error.
    cmdq_err: u32,
    evtq: HostQueue,
    /// Streams whose real STE is not the invalid one
    /// ([`StreamConfig::Abort`]), with what it is.
    shadowed: BTreeMap<u32, StreamConfig>,
    /// Streams whose real STE may not be what `shadowed` says: an update
    /// and its fail-closed fallback both failed part way. The next
    /// re-shadow writes them whatever it wants.
    unsure: BTreeSet<u32>,
    irqs: HostIrqs,
    stats: EmulationStats,
    hyp_log: Vec<Event>,
    /// Reused command batch (no allocation per host doorbell once warm).
    batch: Vec<Command>,
    /// Host commands read, by opcode (what the host's driver issues).
    opcodes: [u32; 256],
}

/// The hypervisor's IOMMU state with a virtual SMMU in front of each real
/// one.
pub struct Emulator<M: TableMemory + CacheMaintenance, E: SmmuEnv, S, H> {
    hyp: HypIommu<M, E, S>,
    host: H,
    vs: Vec<VSmmu>,
    opts: EmulationOptions,
}

impl<M, E, S, H> Emulator<M, E, S, H>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
    H: HostMemory,
{
    /// Returns an emulator over `hyp` (every SMMU on), reaching host
    /// memory through `host`. Every host stream aborts until the host
    /// enables its SMMU with a stream table, including those
    /// [`HypIommu::attach_host_stream`] put on the shadow before; every
    /// real STE the hypervisor did not configure becomes invalid, so the
    /// real SMMU records traffic on it ([`StreamConfig::Abort`]). Each
    /// real SMMU's event interrupt is enabled (IRQ_CTRL.EVENTQ_IRQEN, as
    /// its EVENTQ_IRQ_CFG* registers say: wired unless the platform set
    /// an MSI up before) and its handler must call
    /// [`Emulator::event_irq`].
    ///
    /// # Errors
    ///
    /// [`Error::SmmuOff`] when an SMMU is off; [`Error::Unsuitable`] when
    /// one cannot nest (stage 1 + stage 2, no errata in the way);
    /// [`Error::Driver`] when a stream cannot be made to abort or an
    /// SMMU's event interrupt cannot be enabled.
    pub fn new(mut hyp: HypIommu<M, E, S>, host: H, opts: EmulationOptions) -> Result<Self, Error> {
        let ias = hyp.shadow().geometry().ias;
        let mut vs = Vec::new();
        for k in 0..hyp.smmu_count() {
            let smmu = hyp.smmu(k).ok_or(Error::SmmuOff(k))?;
            if !smmu.features().nesting {
                return Err(Error::Unsuitable("an SMMU cannot nest stage 1 on stage 2"));
            }
            vs.push(VSmmu::new(smmu.regs(), ias, &opts));
        }
        for k in 0..vs.len() {
            // `shadowed` starts empty: the real STEs must say the same.
            hyp.release_host_streams(k)?;
        }
        let mut emu = Self {
            hyp,
            host,
            vs,
            opts,
        };
        for k in 0..emu.vs.len() {
            emu.arm_event_irq(k)?;
        }
        Ok(emu)
    }

    /// Returns the hypervisor state (ownership, shadow, real SMMUs).
    pub fn hyp(&self) -> &HypIommu<M, E, S> {
        &self.hyp
    }

    /// Returns the hypervisor state for ownership changes (donate,
    /// reclaim, share, pin); they take effect on every host device as
    /// without emulation. An SMMU powered off through it comes back with
    /// [`Emulator::power_on`], not [`HypIommu::power_on`].
    pub fn hyp_mut(&mut self) -> &mut HypIommu<M, E, S> {
        &mut self.hyp
    }

    /// Brings SMMU `smmu` back on as [`HypIommu::power_on`] does, then
    /// gives it the host's configuration again: every stream as the host's
    /// stream table says now, then the host commands that waited while it
    /// was off.
    ///
    /// # Errors
    ///
    /// As [`HypIommu::power_on`]. Nothing of the host's configuration is
    /// given to the SMMU then; in the one case that leaves it on (it
    /// stopped answering during the bring-up and its shutdown failed too),
    /// the streams re-attached so far translate by the shadow stage 2
    /// alone (host-owned memory only), without the host's stage 1 or its
    /// aborts.
    pub fn power_on(&mut self, smmu: usize, fresh: Smmu<E>) -> Result<(), Error> {
        self.hyp.power_on(smmu, fresh)?;
        // The fresh SMMU's unconfigured streams abort either way; if they
        // cannot be made to record their traffic, the host only hears
        // less of it, which is counted.
        let reporting = self.hyp.release_host_streams(smmu).is_ok();
        if let Some(v) = self.vs.get_mut(smmu) {
            if !reporting {
                v.stats.real_failures += 1;
            }
            // The fresh SMMU's stream table aborts every host stream: what
            // `shadowed` recorded went with the old one.
            v.shadowed.clear();
            v.unsure.clear();
            self.reshadow_all(smmu);
            self.run_cmdq(smmu);
            // The fresh SMMU's interrupts are off: without its event
            // interrupt the host hears of faults only when it polls, which
            // is counted.
            if self.arm_event_irq(smmu).is_err() {
                self.vs[smmu].stats.real_failures += 1;
            }
        }
        Ok(())
    }

    /// Returns the host memory accessor.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// Returns the options.
    pub fn options(&self) -> EmulationOptions {
        self.opts
    }

    /// Returns the counters of virtual SMMU `smmu`.
    pub fn stats(&self, smmu: usize) -> Option<EmulationStats> {
        self.vs.get(smmu).map(|v| v.stats)
    }

    /// Returns how the hypervisor configured host stream `sid` of SMMU
    /// `smmu` (abort when not listed): the last configuration the real
    /// SMMU took (one it failed to take, and failed to abort, is written
    /// again at the stream's next re-shadow).
    pub fn stream(&self, smmu: usize, sid: u32) -> StreamConfig {
        self.vs
            .get(smmu)
            .and_then(|v| v.shadowed.get(&sid).copied())
            .unwrap_or(StreamConfig::Abort)
    }

    /// Returns every host stream of SMMU `smmu` whose real STE is not the
    /// invalid one ([`StreamConfig::Abort`]), in stream ID order, with how
    /// the hypervisor configured it.
    pub fn streams(&self, smmu: usize) -> impl Iterator<Item = (u32, StreamConfig)> + '_ {
        self.vs
            .get(smmu)
            .into_iter()
            .flat_map(|v| v.shadowed.iter().map(|(sid, c)| (*sid, *c)))
    }

    /// Returns how many host commands of each opcode SMMU `smmu` read
    /// (legal or not), for the opcodes it saw, lowest opcode first.
    pub fn host_opcodes(&self, smmu: usize) -> impl Iterator<Item = (u8, u32)> + '_ {
        self.vs.get(smmu).into_iter().flat_map(|v| {
            v.opcodes
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(op, n)| (op as u8, *n))
        })
    }

    /// Returns the most recent hypervisor-side events of SMMU `smmu`
    /// (stage-2 faults and the like), oldest first.
    pub fn hyp_events(&self, smmu: usize) -> &[Event] {
        self.vs.get(smmu).map_or(&[], |v| v.hyp_log.as_slice())
    }

    /// Returns and clears the host interrupts raised on SMMU `smmu`.
    pub fn take_irqs(&mut self, smmu: usize) -> HostIrqs {
        self.vs
            .get_mut(smmu)
            .map(|v| core::mem::take(&mut v.irqs))
            .unwrap_or_default()
    }
}

/// Whether every page of `[pa, pa + len)` is host-owned RAM.
fn host_owned<M, E, S>(hyp: &HypIommu<M, E, S>, pa: u64, len: u64) -> bool
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
{
    let Some(end) = pa.checked_add(len) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    let mut page = pa & !(crate::PAGE - 1);
    while page < end {
        if hyp.owner(page) != Some(crate::Owner::Host) {
            return false;
        }
        page += crate::PAGE;
    }
    true
}

impl VSmmu {
    fn new(real: &impl RegisterFrame, ias: u32, opts: &EmulationOptions) -> Self {
        Self {
            idr: frame::virtual_idrs(real, ias, opts),
            iidr: real.read32(smmuv3::regs::IIDR),
            aidr: real.read32(smmuv3::regs::AIDR),
            cr0: 0,
            cr1: 0,
            cr2: 0,
            irq_ctrl: 0,
            gerror: 0,
            gerrorn: 0,
            strtab_base: 0,
            strtab_cfg: 0,
            cmdq: HostQueue::default(),
            cmdq_err: 0,
            evtq: HostQueue::default(),
            shadowed: BTreeMap::new(),
            unsure: BTreeSet::new(),
            irqs: HostIrqs::default(),
            stats: EmulationStats::default(),
            hyp_log: Vec::new(),
            batch: Vec::new(),
            opcodes: [0; 256],
        }
    }

    /// Raises global error `bit` if it is not already active.
    fn raise_gerror(&mut self, bit: u32) {
        if (self.gerror ^ self.gerrorn) & bit == 0 {
            self.gerror ^= bit;
            if self.irq_ctrl & (smmuv3::regs::irq_ctrl::GERROR_IRQEN.mask() as u32) != 0 {
                self.irqs.gerror = true;
            }
        }
    }

    /// Returns the host's command queue geometry: LOG2SIZE used as at
    /// most IDR1.CMDQS.
    fn cmdq_ring(&self) -> Ring {
        Ring::of(
            self.cmdq.base,
            smmuv3::regs::idr1::CMDQS.get(self.idr[1].into()),
        )
    }

    /// Returns the host's event queue geometry: LOG2SIZE used as at most
    /// IDR1.EVENTQS.
    fn evtq_ring(&self) -> Ring {
        Ring::of(
            self.evtq.base,
            smmuv3::regs::idr1::EVENTQS.get(self.idr[1].into()),
        )
    }

    /// Whether the command or the event queue is enabled.
    fn queues_enabled(&self) -> bool {
        self.cr0_has(smmuv3::regs::cr0::CMDQEN) || self.cr0_has(smmuv3::regs::cr0::EVENTQEN)
    }

    fn cr0_has(&self, f: smmuv3::bits::Field) -> bool {
        self.cr0 & (f.mask() as u32) != 0
    }
}

/// Queue index arithmetic for a queue of 2^`log2` entries (index bits,
/// then the wrap bit).
#[derive(Clone, Copy)]
struct Ring {
    log2: u32,
}

impl Ring {
    /// Returns the ring a queue base register describes, its LOG2SIZE
    /// capped at `max` (the IDR1 queue size).
    fn of(base: u64, max: u64) -> Self {
        let log2 = smmuv3::regs::q_base::LOG2SIZE.get(base).min(max) as u32;
        Self { log2 }
    }

    fn mask(self) -> u32 {
        (1u32 << self.log2) - 1
    }

    /// Index and wrap bits of a PROD/CONS value.
    fn bits(self, v: u32) -> u32 {
        v & ((2u32 << self.log2) - 1)
    }

    fn index(self, v: u32) -> u32 {
        v & self.mask()
    }

    fn next(self, v: u32) -> u32 {
        self.bits(v.wrapping_add(1))
    }

    fn empty(self, prod: u32, cons: u32) -> bool {
        self.bits(prod) == self.bits(cons)
    }

    fn full(self, prod: u32, cons: u32) -> bool {
        self.bits(prod ^ cons) == 1u32 << self.log2
    }
}
