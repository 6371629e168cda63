//! hyp-trap: trap-and-emulate of the SMMU (`hyp_iommu::Emulator`) on the
//! real SMMU. The hypervisor half owns the SMMU (our driver, the host
//! stage-2 shadow, the emulator); the host half is a second, unchanged
//! `smmuv3` driver whose register frame reaches only the emulator. The host
//! maps, unmaps and drains its own stage-1 faults; a page the hypervisor
//! donates faults at stage 2 for the host's device, and only the hypervisor
//! hears of it.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

use hyp_iommu::{
    EmulationOptions, Emulator, HostMemory, HostMemoryError, HypIommu, MemoryMap, Options, Range,
    Scrub, StreamConfig,
};
use io_pgtable::Granule;
use io_pgtable::env::{CacheMaintenance, TableMemory};
use smmuv3::driver::StrtabFormat;
use smmuv3::env::{Clock, DmaMemory, RegisterFrame, SmmuEnv};
use smmuv3::event::{Event, EventType};
use smmuv3::sync::SpinLock;
use smmuv3::{AttachOptions, Domain, Smmu, SmmuConfig};

use super::hyp::BufScrub;
use super::translate::{IOVA_DST, IOVA_SRC, VA_BITS, rw};
use super::{
    Buf, Context, Parts, SENTINEL, bring_up, buffer, dev_write, expect_fault, list, need_stage2,
    no_events, page_transfer, round_trip, untouched,
};
use crate::{DmaDevice, Outcome, Platform, Problem, ensure};

const PAGE: u64 = 4096;
/// Bytes of a faulting transfer: one bus beat, so one event.
const SMALL: usize = 4;
/// The guest the page is donated to.
const GUEST: u16 = 1;
/// How long to wait for the hypervisor's events after a faulting transfer.
const HYP_EVENT_WAIT_US: u64 = 200_000;

/// The hypervisor's view of host memory: the CPU's, through the platform's
/// DMA memory, limited to RAM.
struct CpuView<M> {
    mem: M,
    ram: Range,
}

impl<M: DmaMemory> CpuView<M> {
    /// Returns the CPU pointer of `[pa, pa + len)`, refused outside RAM.
    fn cpu(&self, pa: u64, len: usize) -> Result<NonNull<u8>, HostMemoryError> {
        let inside = pa >= self.ram.base
            && pa
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.ram.end());
        if !inside {
            return Err(HostMemoryError(pa));
        }
        Ok(self.mem.phys_to_cpu(pa))
    }
}

impl<M: DmaMemory> HostMemory for CpuView<M> {
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), HostMemoryError> {
        let src = self.cpu(pa, buf.len())?;
        // SAFETY: the range is inside RAM (checked), which the platform's
        // memory maps for the CPU in one piece (identity on bare metal, one
        // window on the model). The emulator reads only what the host driver
        // of this scenario points it at: its queues and stream table, live
        // blocks of this same memory. Nothing else runs meanwhile (DMA runs
        // only inside the device calls of this thread), and `buf` is a
        // distinct Rust buffer.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write(&self, pa: u64, data: &[u8]) -> Result<(), HostMemoryError> {
        let dst = self.cpu(pa, data.len())?;
        // SAFETY: as in `read`; the emulator writes only event records into
        // the host driver's event queue, a live block of this memory that no
        // Rust reference aliases (the driver reads it through raw pointers).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst.as_ptr(), data.len()) };
        // The host driver invalidates a record before reading it: it must
        // already be in memory.
        self.mem
            .clean(dst, pa, data.len())
            .map_err(|_| HostMemoryError(pa))
    }
}

/// The emulator of a platform.
type Emu<'a, P> = Emulator<
    <P as Platform>::Mem,
    Parts<P>,
    BufScrub<'a, <P as Platform>::Mem>,
    CpuView<<P as Platform>::Mem>,
>;

/// The host driver's register frame: every access traps into the emulator
/// (a data abort on the unmapped frame, in a real hypervisor). A refused
/// access reads as zero and writes nothing; the scenario checks that none
/// was refused.
struct TrapFrame<'e, T> {
    emu: &'e SpinLock<T>,
    smmu: usize,
}

impl<M, E, S, H> TrapFrame<'_, Emulator<M, E, S, H>>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
    H: HostMemory,
{
    fn read(&self, offset: usize, size: u8) -> u64 {
        self.emu
            .lock()
            .read(self.smmu, offset as u64, size)
            .unwrap_or(0)
    }

    fn write(&self, offset: usize, size: u8, value: u64) {
        let _ = self.emu.lock().write(self.smmu, offset as u64, size, value);
    }
}

impl<M, E, S, H> RegisterFrame for TrapFrame<'_, Emulator<M, E, S, H>>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
    H: HostMemory,
{
    fn read32(&self, offset: usize) -> u32 {
        self.read(offset, 4) as u32
    }

    fn write32(&self, offset: usize, value: u32) {
        self.write(offset, 4, value.into());
    }

    fn read64(&self, offset: usize) -> u64 {
        self.read(offset, 8)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write(offset, 8, value);
    }
}

/// Drains the real SMMU into the emulator until the hypervisor's log holds
/// more than `seen` events (bounded wait), and returns those after the
/// first `seen`.
fn new_hyp_events<P: Platform>(p: &P, emu: &SpinLock<Emu<'_, P>>, seen: usize) -> Vec<Event> {
    let clock = p.clock();
    let start = clock.now_us();
    loop {
        let mut e = emu.lock();
        e.poll_events();
        let new: Vec<Event> = e.hyp_events(0).iter().skip(seen).copied().collect();
        drop(e);
        if !new.is_empty() || clock.now_us().wrapping_sub(start) > HYP_EVENT_WAIT_US {
            return new;
        }
        clock.relax();
    }
}

pub(crate) fn run<P: Platform>(p: &mut P) -> Outcome {
    let len = page_transfer(p);
    let src: Buf<P> = buffer(p, PAGE as usize)?;
    // The page the host maps, unmaps, maps again and the hypervisor donates.
    let dst: Buf<P> = buffer(p, PAGE as usize)?;

    // The hypervisor half: the real SMMU, the shadow, the emulator.
    let smmu = bring_up(p, StrtabFormat::Auto)?;
    need_stage2::<P>(&smmu)?;
    if !smmu.features().nesting {
        return Err(Problem::skip(format_args!(
            "SMMU cannot nest stage 1 on stage 2"
        )));
    }
    let sid = p.device().stream_id();
    let (base, size) = p.ram();
    let ram = Range::new(base, size);
    let map = MemoryMap::new(&[ram], &[], &[]).ctx("memory map")?;
    let hyp = HypIommu::new(
        &map,
        vec![smmu.clone()],
        p.mem(),
        BufScrub(&dst),
        Options::default(),
    )
    .ctx("hypervisor IOMMU")?;
    let view = CpuView { mem: p.mem(), ram };
    let emu: SpinLock<Emu<'_, P>> =
        SpinLock::new(Emulator::new(hyp, view, EmulationOptions::default()).ctx("emulator")?);

    // The host half: our driver, unchanged, on the virtual SMMU.
    let frame = TrapFrame { emu: &emu, smmu: 0 };
    let host: Smmu<(_, P::Mem, P::Clock)> =
        Smmu::new(frame, p.mem(), p.clock(), SmmuConfig::default())
            .ctx("host driver bring-up on the virtual SMMU")?;
    let f = host.features();
    ensure!(
        f.stage1 && !f.stage2 && !f.nesting,
        "the virtual SMMU shows stage1 {} stage2 {} nesting {}",
        f.stage1,
        f.stage2,
        f.nesting
    );
    let mut dom = Domain::new_stage1(&host, Granule::K4, VA_BITS).ctx("host stage-1 domain")?;
    dom.map(IOVA_SRC, src.phys(), PAGE, rw())
        .ctx("host map of the source")?;
    dom.map(IOVA_DST, dst.phys(), PAGE, rw())
        .ctx("host map of the destination")?;
    host.attach(sid, None, &dom, AttachOptions::default())
        .ctx("host attach")?;
    let cfg = emu.lock().stream(0, sid);
    ensure!(
        matches!(cfg, StreamConfig::Nested { .. }),
        "the host's stage-1 stream is {cfg:?} on the real SMMU, want nested"
    );

    // Mapped: the device reaches the host's pages at their IOVAs.
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, 0, IOVA_DST), len, 0x71)?;
    no_events(p, &host, "after the host's DMA")?;

    // Unmapped by the host: a stage-1 fault, in the host's event queue.
    dom.unmap(IOVA_DST, PAGE).ctx("host unmap")?;
    dst.fill(0, SMALL, SENTINEL)?;
    dev_write(p, IOVA_DST, SMALL)?;
    let e = expect_fault(p, &host, EventType::Translation, sid, IOVA_DST, false)?;
    ensure!(
        e.fault.is_some_and(|f| !f.stage2),
        "the host's fault after its unmap is reported as stage 2: {e}"
    );
    ensure!(
        untouched(&dst, 0, SMALL)?,
        "the device wrote through the host's unmapped IOVA"
    );

    // Mapped again, then donated: the host's mapping stands, stage 2 stops
    // the device, and the fault is the hypervisor's alone.
    dom.map(IOVA_DST, dst.phys(), PAGE, rw())
        .ctx("host map again")?;
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, 0, IOVA_DST), len, 0x72)?;
    no_events(p, &host, "after the host mapped the page again")?;
    dst.fill(0, len, SENTINEL)?;
    let seen = emu.lock().hyp_events(0).len();
    emu.lock()
        .hyp_mut()
        .donate_to_guest(dst.phys(), PAGE, GUEST)
        .ctx("donating the page")?;
    dev_write(p, IOVA_DST, SMALL)?;
    let s2 = new_hyp_events(p, &emu, seen);
    let page = dst.phys()..dst.phys() + PAGE;
    let blocked = !s2.is_empty()
        && s2.iter().all(|e| {
            e.ty == EventType::Translation
                && e.sid == sid
                && e.fault.is_some_and(|f| {
                    f.stage2
                        && !f.read
                        && f.addr == IOVA_DST
                        && f.ipa.is_some_and(|a| page.contains(&a))
                })
        });
    ensure!(
        blocked,
        "want stage-2 translation faults of sid {sid:#x} at {IOVA_DST:#x} (IPA in {:#x}..{:#x}) for the hypervisor, got {}",
        page.start,
        page.end,
        list(&s2)
    );
    no_events(
        p,
        &host,
        "after the stage-2 fault (the host must not see it)",
    )?;
    ensure!(
        untouched(&dst, 0, len)?,
        "the device wrote a page donated to a guest"
    );
    ensure!(
        emu.lock().stream(0, sid) == cfg,
        "the donation changed the host's stream configuration"
    );

    // Reclaimed: scrubbed, and reachable through the host's mapping again.
    emu.lock()
        .hyp_mut()
        .reclaim_from_guest(dst.phys(), PAGE, GUEST)
        .ctx("reclaiming the page")?;
    let mut got = vec![0u8; len];
    dst.read(0, &mut got)?;
    ensure!(
        got.iter().all(|&b| b == 0),
        "the reclaimed page was not scrubbed"
    );
    round_trip(p, (&src, 0, IOVA_SRC), (&dst, 0, IOVA_DST), len, 0x73)?;
    no_events(p, &host, "after the reclaim")?;

    let s = emu
        .lock()
        .stats(0)
        .ok_or_else(|| Problem::fail(format_args!("the emulator has no virtual SMMU 0")))?;
    ensure!(
        s.forwarded > 0 && s.refused_commands == 0 && s.refused_accesses == 0,
        "emulator stats: {s:?}"
    );
    ensure!(
        s.host_events == 1 && s.hyp_events as usize >= s2.len() && s.bad_stes == 0,
        "emulator event stats: {s:?}"
    );
    Ok(format!(
        "host driver on the virtual SMMU ({} reads, {} writes, {} of {} commands forwarded): stage-1 fault after its unmap drained by the host; donated page faults at stage 2 ({} event(s), hypervisor only), memory untouched; reclaimed page scrubbed and reachable",
        s.reads,
        s.writes,
        s.forwarded,
        s.commands,
        s2.len()
    ))
}
