//! The virtio-blk scenarios: virtio-drivers' `VirtIOBlk` (a driver none of
//! us wrote) drives QEMU's `virtio-blk-pci,iommu_platform=on` through our
//! `Hal`, `dma-mapping`, `smmuv3` and `io-pgtable`, one IOMMU domain per
//! disk.
//!
//! The host (`scripts/qemu-test.sh`) gives two disks with random content:
//! serial `smmu-disk-a` (1 MiB, strict invalidation) and `smmu-disk-b`
//! (256 KiB, lazy invalidation). The kernel prints the POSIX `cksum` of what
//! it read and writes a text pattern into disk A; the host compares both
//! with the image files after the run.

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use dma_mapping::access_platform::{ACCESS_PLATFORM, AccessPlatform};
use dma_mapping::{
    Attrs, DeviceConfig, Direction, DmaAddr, DmaDebug, DmaDevice, DmaDomain, DomainConfig,
    Invalidation, IommuDomain,
};
use io_pgtable::Granule;
use smmuv3::event::{Event, EventType};
use smmuv3::{AttachOptions, Domain, Smmu, SmmuConfig};
use smmuv3_scenarios::{Outcome, Problem, ensure};
use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{Cam, DeviceFunction, MmioCam, PciRoot};
use virtio_drivers::transport::{DeviceStatus, Transport};

use crate::cksum::Cksum;
use crate::dma::{self, Inject, Parts, TracedHal};
use crate::pci::Function;
use crate::platform::{self, Env};
use crate::{layout, timer};

/// PCI vendor of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// PCI device ID of a modern (non-transitional) virtio-blk.
pub const VIRTIO_BLK: u16 = 0x1042;

/// Serials and sizes the host gives the disks (scripts/qemu-test.sh).
const SERIAL: [&str; 2] = ["smmu-disk-a", "smmu-disk-b"];
const SECTORS: [u64; 2] = [2048, 512];
/// Bytes per read request when reading a whole disk.
const CHUNK: usize = 64 * 1024;
/// Where disk A gets the text pattern, and how many sectors.
const WRITE_SECTOR: usize = 1024;
const WRITE_SECTORS: usize = 16;
/// A request finishes well within this on QEMU; a faulted one never does.
const REQUEST_TIMEOUT_US: u64 = 2_000_000;
/// How long a request whose DMA faults is given to (not) complete.
const FAULT_WAIT_US: u64 = 200_000;
/// Byte left in buffers the device must not write.
const SENTINEL: u8 = 0x5a;
/// Size of the page range of A's domain disk B is pointed at (above what
/// the per-CPU IOVA caches hold, so it comes from the tree).
const VICTIM: usize = 64 * 4096;
/// Lazy flush timeout of disk B's domain, in microseconds.
const LAZY_TIMEOUT_US: u64 = 10_000;

type Blk<const N: usize> = VirtIOBlk<TracedHal<N>, AccessPlatform<PciTransport>>;
type Drv = Smmu<Parts>;

/// A page-aligned heap buffer (identity mapped: its address is physical).
struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl PageBuf {
    fn new(len: usize, fill: u8) -> Result<Self, Problem> {
        let layout = Layout::from_size_align(len, 4096)
            .map_err(|_| Problem::fail(format_args!("buffer layout of {len} bytes")))?;
        // SAFETY: the layout has a non-zero size (every caller asks for one).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or_else(|| Problem::fail(format_args!("no heap for {len} bytes")))?;
        let mut b = Self { ptr, len };
        b.as_mut().fill(fill);
        Ok(b)
    }

    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of `len` bytes owned by `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`, and `&mut self` makes the access unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn phys(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(self.len, 4096) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// The test bed: our driver on QEMU's SMMU, the two disks' PCI functions,
/// and their drivers once created.
pub struct Disks {
    smmu: Drv,
    root: PciRoot<MmioCam<'static>>,
    df: [DeviceFunction; 2],
    sid: [u32; 2],
    debug: [Arc<DmaDebug>; 2],
    a: Option<Blk<0>>,
    /// The first `CHUNK` bytes of disk A as first read.
    a_head: Vec<u8>,
}

fn fail(args: core::fmt::Arguments<'_>) -> Problem {
    Problem::fail(args)
}

impl Disks {
    /// Brings up the driver on the SMMU and gives each of the first two
    /// virtio-blk functions its own stage-1 domain and DMA device.
    ///
    /// # Errors
    ///
    /// A failure saying what is missing or what the driver refused.
    pub fn new(functions: &[Function]) -> Result<Self, Problem> {
        let blks: Vec<&Function> = functions
            .iter()
            .filter(|f| f.vendor == VIRTIO_VENDOR && f.device == VIRTIO_BLK)
            .collect();
        let [fa, fb] = blks.as_slice() else {
            return Err(fail(format_args!(
                "want 2 virtio-blk-pci functions (scripts/qemu-test.sh adds them), found {}",
                blks.len()
            )));
        };
        let smmu = Smmu::new(platform::smmu_frame(), Env, Env, SmmuConfig::default())
            .map_err(|e| fail(format_args!("driver bring-up: {e}")))?;
        let env = dma::kernel_env();
        let coherent = smmu.features().coherent;
        let mut debug = Vec::new();
        for (slot, f) in [fa, fb].into_iter().enumerate() {
            let sid = f.bdf.requester_id();
            let dom = Domain::new_stage1(&smmu, Granule::K4, 48)
                .map_err(|e| fail(format_args!("stage-1 domain: {e}")))?;
            smmu.attach(sid, None, &dom, AttachOptions::default())
                .map_err(|e| fail(format_args!("attach sid {sid:#x}: {e}")))?;
            let invalidation = if slot == 0 {
                Invalidation::Strict
            } else {
                Invalidation::Lazy {
                    timeout_ticks: LAZY_TIMEOUT_US,
                }
            };
            let ddom = DmaDomain::new(
                dma_mapping::smmu::SmmuDomain::new(dom, coherent),
                env.clone(),
                DomainConfig {
                    invalidation,
                    ncpus: 1,
                },
            )
            .map_err(|e| fail(format_args!("DMA domain: {e}")))?;
            let dbg = Arc::new(DmaDebug::new());
            let dev = DmaDevice::behind_iommu(
                DeviceConfig {
                    pci: true,
                    ..DeviceConfig::new(sid)
                },
                Arc::new(ddom),
            )
            .with_debug(dbg.clone());
            ensure!(dma::install(slot, dev), "DMA slot {slot} installed twice");
            debug.push(dbg);
        }
        let df = [fa, fb].map(|f| DeviceFunction {
            bus: f.bdf.bus,
            device: f.bdf.dev,
            function: f.bdf.func,
        });
        // SAFETY: the ECAM window (256 MiB, all buses) is identity mapped as
        // Device memory for the whole run; besides `pci.rs`, which only
        // uses volatile accesses through raw pointers, nothing else touches it.
        let cam = unsafe { MmioCam::new(layout::PCIE_ECAM as *mut u8, Cam::Ecam) };
        let [da, db]: [Arc<DmaDebug>; 2] = match debug.try_into() {
            Ok(d) => d,
            Err(_) => return Err(fail(format_args!("two DMA devices expected"))),
        };
        Ok(Self {
            smmu,
            root: PciRoot::new(cam),
            df,
            sid: [fa.bdf.requester_id(), fb.bdf.requester_id()],
            debug: [da, db],
            a: None,
            a_head: Vec::new(),
        })
    }

    /// Returns a transport of device `N`. Dropping it resets the device, so
    /// one only lives as long as the driver using it.
    fn transport<const N: usize>(&mut self) -> Result<PciTransport, Problem> {
        PciTransport::new::<TracedHal<N>, _>(&mut self.root, self.df[N])
            .map_err(|e| fail(format_args!("virtio PCI transport of slot {N}: {e}")))
    }

    /// Returns a fresh driver for disk `N`, checking its serial and size.
    fn open<const N: usize>(&mut self) -> Result<Blk<N>, Problem> {
        let t = self.transport::<N>()?;
        let mut blk = Blk::<N>::new(AccessPlatform::new(t))
            .map_err(|e| fail(format_args!("VirtIOBlk::new on slot {N}: {e}")))?;
        let mut id = [0u8; 20];
        let n = blk
            .device_id(&mut id)
            .map_err(|e| fail(format_args!("GET_ID on slot {N}: {e}")))?;
        let serial = core::str::from_utf8(&id[..n]).unwrap_or("?");
        ensure!(
            serial == SERIAL[N],
            "slot {N} serial {serial:?}, want {:?} (device order of the QEMU command line)",
            SERIAL[N]
        );
        ensure!(
            blk.capacity() == SECTORS[N],
            "{serial}: capacity {} sectors, want {}",
            blk.capacity(),
            SECTORS[N]
        );
        Ok(blk)
    }

    /// Returns every event the SMMU recorded, waiting (bounded) for `want`.
    fn events(&self, want: usize) -> Result<Vec<Event>, Problem> {
        let mut all = Vec::new();
        timer::wait_until(FAULT_WAIT_US, || {
            if let Ok(b) = self.smmu.drain_events() {
                all.extend(b.events);
            }
            want > 0 && all.len() >= want
        });
        Ok(all)
    }

    fn no_events(&self, when: &str) -> Result<(), Problem> {
        let ev = self.events(0)?;
        ensure!(
            ev.is_empty(),
            "unexpected SMMU events {when}: {}",
            list(&ev)
        );
        Ok(())
    }

    /// Fails unless the DMA debugging of both devices reported nothing.
    fn debug_clean(&self) -> Result<(), Problem> {
        for (i, d) in self.debug.iter().enumerate() {
            let r = d.take_reports();
            ensure!(r.is_empty(), "DMA debug of {}: {r:?}", SERIAL[i]);
        }
        Ok(())
    }
}

fn list(events: &[Event]) -> String {
    let mut s = String::new();
    for e in events {
        if !s.is_empty() {
            s.push_str(" | ");
        }
        s.push_str(&format!("{e}"));
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

/// Reads `buf.len()` bytes from `sector` and waits (bounded) for them.
fn read<const N: usize>(blk: &mut Blk<N>, sector: usize, buf: &mut [u8]) -> Result<(), Problem> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `buf` and `resp` are not touched until the request
    // completed below; if it never does, the scenario fails and the kernel
    // exits without touching them again.
    let token = unsafe { blk.read_blocks_nb(sector, &mut req, buf, &mut resp) }
        .map_err(|e| fail(format_args!("{}: read at sector {sector}: {e}", SERIAL[N])))?;
    if !timer::wait_until(REQUEST_TIMEOUT_US, || blk.peek_used() == Some(token)) {
        return Err(fail(format_args!(
            "{}: read of {} bytes at sector {sector} did not complete",
            SERIAL[N],
            buf.len()
        )));
    }
    // SAFETY: the same buffers as submitted.
    unsafe { blk.complete_read_blocks(token, &req, buf, &mut resp) }
        .map_err(|e| fail(format_args!("{}: read at sector {sector}: {e}", SERIAL[N])))
}

/// Returns the checksum of the whole disk, read `CHUNK` bytes per request
/// (each sharing exactly its 3 buffers, each data IOVA unmapped in our page
/// table once the request is done), and the data IOVAs the requests used.
fn read_all<const N: usize>(
    blk: &mut Blk<N>,
    head: &mut Vec<u8>,
) -> Result<(Cksum, Vec<u64>), Problem> {
    let mut sum = Cksum::default();
    let mut buf = PageBuf::new(CHUNK, SENTINEL)?;
    let mut iovas = Vec::new();
    let total = SECTORS[N] as usize * SECTOR_SIZE;
    for off in (0..total).step_by(CHUNK) {
        let before = dma::slot(N).trace.lock().shares;
        read(blk, off / SECTOR_SIZE, buf.as_mut())?;
        let t = dma::slot(N).trace.lock();
        ensure!(
            t.shares == before + 3 && t.live.is_empty(),
            "{}: a read shared {} buffers and left {} shared (want 3 and 0)",
            SERIAL[N],
            t.shares - before,
            t.live.len()
        );
        drop(t);
        sum.update(buf.as_ref());
        if off == 0 {
            head.clear();
            head.extend_from_slice(buf.as_ref());
        }
        let iova = dma::slot(N).trace.lock().last_data.map_or(0, |s| s.iova);
        // Lazy or strict, the page table forgets the buffer at unshare.
        ensure!(
            translate::<N>(iova).is_none(),
            "{}: data IOVA {iova:#x} still mapped after its request",
            SERIAL[N]
        );
        iovas.push(iova);
    }
    Ok((sum, iovas))
}

/// Returns the live data buffer of slot `N`'s request in flight.
fn note_data<const N: usize>() -> Option<dma::Share> {
    dma::slot(N).trace.lock().data().last().copied()
}

fn translate<const N: usize>(iova: u64) -> Option<u64> {
    dma::slot(N)
        .dev
        .dma_domain()
        .and_then(|d| d.domain().translate(iova))
}

/// The text disk A gets at `WRITE_SECTOR` (the host script generates the
/// same with printf): each sector is 16 lines of 32 bytes naming it.
fn pattern(sector: usize) -> [u8; SECTOR_SIZE] {
    let mut out = [0u8; SECTOR_SIZE];
    let mut line = [0u8; 32];
    line[..19].copy_from_slice(b"dma-mapping sector ");
    let mut n = sector;
    for i in (19..27).rev() {
        line[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    line[27..].copy_from_slice(b" ok.\n");
    for chunk in out.chunks_mut(32) {
        chunk.copy_from_slice(&line);
    }
    out
}

/// Negotiates disk A's features as virtio-drivers alone would (without
/// ACCESS_PLATFORM) and returns the status the device shows after being
/// asked for FEATURES_OK. The transport resets the device when dropped.
fn negotiate_without_wrapper(d: &mut Disks) -> Result<DeviceStatus, Problem> {
    let mut raw = d.transport::<0>()?;
    raw.set_status(DeviceStatus::empty());
    raw.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = raw.read_device_features();
    ensure!(
        offered & ACCESS_PLATFORM != 0,
        "device offers features {offered:#x} without ACCESS_PLATFORM (iommu_platform=on missing?)"
    );
    raw.write_driver_features(offered & (1 << 32)); // VERSION_1 only
    raw.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    let status = raw.get_status();
    ensure!(
        !status.contains(DeviceStatus::FEATURES_OK),
        "device accepted features without ACCESS_PLATFORM (status {status:?})"
    );
    Ok(status)
}

/// virtio-blk-read: the feature negotiation fails without the
/// ACCESS_PLATFORM wrapper and succeeds with it; then all of disk A is read
/// through the stack and its checksum printed for the host.
pub fn read_disk(d: &mut Disks) -> Outcome {
    let refused = negotiate_without_wrapper(d)?;
    let mut blk = d.open::<0>()?;
    let (sum, iovas) = read_all(&mut blk, &mut d.a_head)?;
    let (crc, len) = sum.finish();
    d.no_events("after reading disk A")?;
    d.debug_clean()?;
    let (lo, hi) = (
        iovas.iter().min().copied().unwrap_or(0),
        iovas.iter().max().copied().unwrap_or(0),
    );
    d.a = Some(blk);
    Ok(format!(
        "cksum={crc} {len} sid={:#x}: FEATURES_OK refused without ACCESS_PLATFORM (status {:#x}), accepted with the wrapper; {len} bytes in {} requests of {} KiB through dma-mapping (strict), data IOVAs {lo:#x}..{hi:#x} unmapped after each",
        d.sid[0],
        refused.bits(),
        iovas.len(),
        CHUNK / 1024
    ))
}

/// virtio-blk-write: the pattern goes to disk A in one request, a flush,
/// and is read back through the stack; the host checks the image.
pub fn write_disk(d: &mut Disks) -> Outcome {
    let mut blk =
        d.a.take()
            .ok_or_else(|| fail(format_args!("disk A not open (virtio-blk-read failed)")))?;
    let r = write_then_read(&mut blk);
    d.a = Some(blk);
    r?;
    d.no_events("after writing disk A")?;
    d.debug_clean()?;
    Ok(format!(
        "sectors {WRITE_SECTOR}..{} written in one {} KiB request, flushed, read back equal",
        WRITE_SECTOR + WRITE_SECTORS,
        WRITE_SECTORS * SECTOR_SIZE / 1024
    ))
}

fn write_then_read(blk: &mut Blk<0>) -> Result<(), Problem> {
    let mut buf = PageBuf::new(WRITE_SECTORS * SECTOR_SIZE, 0)?;
    for (i, s) in buf.as_mut().chunks_mut(SECTOR_SIZE).enumerate() {
        s.copy_from_slice(&pattern(WRITE_SECTOR + i));
    }
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: the buffers stay untouched until completion (or the run ends).
    let token = unsafe { blk.write_blocks_nb(WRITE_SECTOR, &mut req, buf.as_ref(), &mut resp) }
        .map_err(|e| fail(format_args!("write: {e}")))?;
    ensure!(
        timer::wait_until(REQUEST_TIMEOUT_US, || blk.peek_used() == Some(token)),
        "write did not complete"
    );
    // SAFETY: the same buffers as submitted.
    unsafe { blk.complete_write_blocks(token, &req, buf.as_ref(), &mut resp) }
        .map_err(|e| fail(format_args!("write: {e}")))?;
    blk.flush().map_err(|e| fail(format_args!("flush: {e}")))?;
    let mut back = PageBuf::new(WRITE_SECTORS * SECTOR_SIZE, SENTINEL)?;
    read(blk, WRITE_SECTOR, back.as_mut())?;
    ensure!(
        back.as_ref() == buf.as_ref(),
        "read back differs from what was written"
    );
    Ok(())
}

/// What a request whose data buffer faulted left behind.
struct Faulted {
    iova: u64,
    len: usize,
    events: Vec<Event>,
    /// The status the device reported (QEMU reports success, see below).
    status: Result<(), virtio_drivers::Error>,
    untouched: bool,
}

/// Submits a one-sector read on disk `N` with `inject` armed and waits for
/// it. QEMU completes such a request: its virtio-blk maps guest memory
/// through the SMMU, falls back to a bounce buffer when the translation
/// fails, and at completion writes that buffer back 4 bytes at a time,
/// each write faulting (one event each) and dropped. Hardware would abort
/// the write instead; on both, nothing may reach the buffer.
fn faulting_read<const N: usize>(
    d: &Disks,
    blk: &mut Blk<N>,
    inject: Inject,
) -> Result<Faulted, Problem> {
    let mut data = PageBuf::new(SECTOR_SIZE, SENTINEL)?;
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    dma::slot(N).trace.lock().inject = inject;
    // SAFETY: the buffers stay untouched until the request completed (or
    // the run ends).
    let token = unsafe { blk.read_blocks_nb(0, &mut req, data.as_mut(), &mut resp) }
        .map_err(|e| fail(format_args!("{}: faulting read: {e}", SERIAL[N])))?;
    let share = note_data::<N>().ok_or_else(|| fail(format_args!("no data share recorded")))?;
    ensure!(!share.mapped, "the injected data buffer is still mapped");
    ensure!(
        timer::wait_until(REQUEST_TIMEOUT_US, || blk.peek_used() == Some(token)),
        "{}: the request with data IOVA {:#x} never completed (QEMU 10 completes it)",
        SERIAL[N],
        share.iova
    );
    // SAFETY: the same buffers as submitted.
    let status = unsafe { blk.complete_read_blocks(token, &req, data.as_mut(), &mut resp) };
    let events = d.events(1)?;
    let live = dma::slot(N).trace.lock().live.len();
    ensure!(
        live == 0,
        "{}: {live} buffers still shared after the request completed",
        SERIAL[N]
    );
    Ok(Faulted {
        iova: share.iova,
        len: SECTOR_SIZE,
        events,
        status,
        untouched: data.as_ref().iter().all(|&b| b == SENTINEL),
    })
}

/// Fails unless `f` shows only the translation faults the device's writes
/// of the data buffer at `f.iova` on stream `sid` must raise, and the
/// buffer untouched. Returns the first event.
fn check_fault(f: &Faulted, sid: u32) -> Result<Event, Problem> {
    ensure!(
        !f.events.is_empty(),
        "no SMMU event for the write at iova {:#x}",
        f.iova
    );
    let range = f.iova..f.iova + f.len as u64;
    for e in &f.events {
        let ok = e.ty == EventType::Translation
            && e.sid == sid
            && e.fault
                .is_some_and(|x| !x.read && !x.stage2 && range.contains(&x.addr));
        ensure!(
            ok,
            "want only F_TRANSLATION sid={sid:#x} stage-1 writes in iova {:#x}..{:#x}, got {e} (raw {:x?})",
            range.start,
            range.end,
            e.raw
        );
    }
    ensure!(
        f.untouched,
        "the device wrote the data buffer through the removed mapping"
    );
    Ok(f.events[0])
}

fn status(s: &Result<(), virtio_drivers::Error>) -> String {
    match s {
        Ok(()) => String::from("OK"),
        Err(e) => format!("{e}"),
    }
}

/// virtio-blk-unmapped-fault: a read whose data buffer is unmapped (and
/// invalidated) before the device sees the request raises F_TRANSLATION
/// writes inside that IOVA range on disk A's stream and leaves the buffer
/// untouched; the disk then reads correctly.
pub fn unmapped_fault(d: &mut Disks) -> Outcome {
    let mut blk =
        d.a.take()
            .ok_or_else(|| fail(format_args!("disk A not open (virtio-blk-read failed)")))?;
    let r = unmapped_fault_with(d, &mut blk);
    d.a = Some(blk);
    r
}

fn unmapped_fault_with(d: &mut Disks, blk: &mut Blk<0>) -> Outcome {
    let f = faulting_read::<0>(d, blk, Inject::UnmapData)?;
    ensure!(
        translate::<0>(f.iova).is_none(),
        "our page table still maps {:#x}",
        f.iova
    );
    let e = check_fault(&f, d.sid[0])?;
    let mut head = PageBuf::new(CHUNK, SENTINEL)?;
    read(blk, 0, head.as_mut())?;
    ensure!(
        head.as_ref() == d.a_head.as_slice(),
        "after the fault disk A reads different data"
    );
    d.no_events("after the fault")?;
    d.debug_clean()?;
    Ok(format!(
        "{} F_TRANSLATION write events in iova {:#x}+{:#x} on sid {:#x}, first: {e}; buffer untouched; device status {} (QEMU completes the request); the next {} KiB read equal",
        f.events.len(),
        f.iova,
        f.len,
        d.sid[0],
        status(&f.status),
        CHUNK / 1024
    ))
}

/// virtio-blk-two-domains: disk B on its own stream and domain (lazy).
/// Both disks have a read in flight at once; each data IOVA translates to
/// its own buffer only in its own domain; each disk returns its own
/// content; disk B's checksum goes to the host. Then disk B is handed an
/// IOVA live only in disk A's domain: its write faults on B's stream and
/// A's page stays untouched.
pub fn two_domains(d: &mut Disks) -> Outcome {
    let mut a =
        d.a.take()
            .ok_or_else(|| fail(format_args!("disk A not open (virtio-blk-read failed)")))?;
    let r = two_domains_with(d, &mut a);
    d.a = Some(a);
    r
}

fn two_domains_with(d: &mut Disks, a: &mut Blk<0>) -> Outcome {
    let mut b = d.open::<1>()?;
    let (mut buf_a, mut buf_b) = (
        PageBuf::new(CHUNK, SENTINEL)?,
        PageBuf::new(CHUNK, SENTINEL)?,
    );
    let (mut req_a, mut resp_a, mut req_b, mut resp_b) = (
        BlkReq::default(),
        BlkResp::default(),
        BlkReq::default(),
        BlkResp::default(),
    );
    // SAFETY: the buffers stay untouched until both complete (or the run ends).
    let ta = unsafe { a.read_blocks_nb(0, &mut req_a, buf_a.as_mut(), &mut resp_a) }
        .map_err(|e| fail(format_args!("disk A read: {e}")))?;
    // SAFETY: as above.
    let tb = unsafe { b.read_blocks_nb(0, &mut req_b, buf_b.as_mut(), &mut resp_b) }
        .map_err(|e| fail(format_args!("disk B read: {e}")))?;
    let (sa, sb) = (
        note_data::<0>().ok_or_else(|| fail(format_args!("no disk A data share")))?,
        note_data::<1>().ok_or_else(|| fail(format_args!("no disk B data share")))?,
    );
    // Each data IOVA reaches its own buffer in its own domain, and the
    // other domain does not reach that buffer through it.
    ensure!(
        translate::<0>(sa.iova) == Some(buf_a.phys()),
        "A's domain: {:#x} -> {:?}",
        sa.iova,
        translate::<0>(sa.iova)
    );
    ensure!(
        translate::<1>(sb.iova) == Some(buf_b.phys()),
        "B's domain: {:#x} -> {:?}",
        sb.iova,
        translate::<1>(sb.iova)
    );
    ensure!(
        translate::<1>(sa.iova) != Some(buf_a.phys()),
        "B's domain reaches A's buffer at {:#x}",
        sa.iova
    );
    ensure!(
        translate::<0>(sb.iova) != Some(buf_b.phys()),
        "A's domain reaches B's buffer at {:#x}",
        sb.iova
    );
    ensure!(
        timer::wait_until(REQUEST_TIMEOUT_US, || a.peek_used() == Some(ta)
            && b.peek_used() == Some(tb)),
        "the two concurrent reads did not both complete"
    );
    // SAFETY: the same buffers as submitted.
    unsafe { a.complete_read_blocks(ta, &req_a, buf_a.as_mut(), &mut resp_a) }
        .map_err(|e| fail(format_args!("disk A read: {e}")))?;
    // SAFETY: as above.
    unsafe { b.complete_read_blocks(tb, &req_b, buf_b.as_mut(), &mut resp_b) }
        .map_err(|e| fail(format_args!("disk B read: {e}")))?;
    ensure!(
        buf_a.as_ref() == d.a_head.as_slice(),
        "disk A returned other data than before"
    );
    ensure!(
        buf_a.as_ref() != buf_b.as_ref(),
        "disk A and disk B returned the same data"
    );
    let mut b_head = Vec::new();
    let (sum_b, _) = read_all(&mut b, &mut b_head)?;
    ensure!(
        b_head.as_slice() == buf_b.as_ref(),
        "disk B's first read differs from its full read"
    );
    let (crc_b, len_b) = sum_b.finish();
    d.no_events("after the concurrent reads")?;

    // A page live in A's domain only, writable: if B's stream could use A's
    // mappings, B's device would overwrite it. Its IOVA must be one B's own
    // shares cannot take (B is lazy, so which below-4 GiB IOVAs it hands out
    // depends on timing): mapped for a 64-bit user of A's domain
    // (`forcedac`) and larger than the per-CPU caches hold (64 pages), it
    // comes from the tree, top down from the top of the 48-bit space.
    let wide = {
        let dom = dma::slot(0)
            .dev
            .dma_domain()
            .ok_or_else(|| fail(format_args!("disk A has no DMA domain")))?;
        DmaDevice::behind_iommu(
            DeviceConfig {
                pci: true,
                forcedac: true,
                ..DeviceConfig::new(d.sid[0])
            },
            dom.clone(),
        )
    };
    let victim = PageBuf::new(VICTIM, SENTINEL)?;
    // SAFETY: the buffer is ours until the unmap below; nobody else uses it.
    let v = unsafe {
        wide.map_phys(
            victim.phys(),
            VICTIM as u64,
            Direction::Bidirectional,
            Attrs::empty(),
        )
    }
    .map_err(|e| fail(format_args!("map of the victim page in A's domain: {e}")))?;
    let cross = (|| {
        ensure!(
            translate::<0>(v.0) == Some(victim.phys()),
            "A's domain does not map the victim"
        );
        ensure!(
            translate::<1>(v.0).is_none(),
            "B's domain maps {:#x} too: pick another IOVA",
            v.0
        );
        let f = faulting_read::<1>(d, &mut b, Inject::Foreign(v.0))?;
        ensure!(
            v.0 >= 1 << 32,
            "the victim's IOVA {:#x} is below 4 GiB",
            v.0
        );
        ensure!(
            translate::<1>(v.0).is_none(),
            "B's domain mapped {:#x} during the request",
            v.0
        );
        let e = check_fault(&f, d.sid[1])?;
        ensure!(
            victim.as_ref().iter().all(|&x| x == SENTINEL),
            "B's device wrote A's page"
        );
        Ok((e, f.events.len()))
    })();
    // SAFETY: no device was ever given the victim's IOVA in a request of
    // disk A (only B's injected one, which faulted).
    let unmapped = unsafe {
        wide.unmap_phys(
            DmaAddr(v.0),
            VICTIM as u64,
            Direction::Bidirectional,
            Attrs::empty(),
        )
    };
    let (e, nev) = cross?;
    unmapped.map_err(|e| fail(format_args!("unmap of the victim: {e}")))?;
    let mut again = PageBuf::new(CHUNK, SENTINEL)?;
    read(&mut b, 0, again.as_mut())?;
    ensure!(
        again.as_ref() == buf_b.as_ref(),
        "after the fault disk B reads different data"
    );
    let lazy = dma::slot(1)
        .dev
        .dma_domain()
        .map(|dd| (dd.is_lazy(), dd.pending()))
        .unwrap_or((false, 0));
    if let Some(dd) = dma::slot(1).dev.dma_domain() {
        dd.flush_pending()
            .map_err(|e| fail(format_args!("disk B flush queue: {e}")))?;
    }
    ensure!(lazy.0, "disk B's domain is not lazy");
    d.no_events("after the cross-domain fault")?;
    d.debug_clean()?;
    Ok(format!(
        "cksum={crc_b} {len_b} sid={:#x} (A sid={:#x}): concurrent data IOVAs A {:#x} B {:#x}{} each mapped only in its own domain; B given A's live iova {:#x}: {nev} F_TRANSLATION write events on B's stream, first: {e}; A's pages untouched; B lazy ({} IOVAs were queued), re-read equal",
        d.sid[1],
        d.sid[0],
        sa.iova,
        sb.iova,
        if sa.iova == sb.iova {
            " (same number, different pages)"
        } else {
            ""
        },
        v.0,
        lazy.1
    ))
}
