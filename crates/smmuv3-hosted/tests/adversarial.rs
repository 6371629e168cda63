//! Adversarial tests: the driver against misconfigured and hostile
//! devices. Random (validated) model configurations with random driver
//! configurations; a register frame that lies (random ID registers, a
//! CR0ACK that never acknowledges, garbage queue pointers and GERROR); a
//! command queue stopped at any point; garbage arguments to every driver
//! entry point. The driver must come up and translate, or return a typed
//! error, within its bounded waits: never panic, never hang (a watchdog
//! turns a hang into a failure).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use io_pgtable::{Granule, Prot};
use sim_memory::{Coherency, SimMemory};
use smmuv3::command::{Command, TlbiAddr};
use smmuv3::driver::{StrtabFormat, SyncMethod};
use smmuv3::env::RegisterFrame;
use smmuv3::{AttachOptions, Error, SmmuConfig};
use smmuv3_hosted::{HostedDomain, MEM_BASE, ModelFrame, PollClock, SimDmaMemory, System};
use smmuv3_model::{DmaRequest, Httu, ModelConfig, SmmuModel, StallModel};

const MEM: u64 = 8 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);

/// Deterministic xorshift64*: failures name their seed and replay.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn flip(&mut self) -> bool {
        self.next() & 1 != 0
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Runs `f` on its own thread; fails if it does not return in `secs`.
fn watchdog(name: &str, secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: no return in {secs} s (hang)"),
    }
}

fn random_model(r: &mut Rng) -> ModelConfig {
    let mut c = ModelConfig {
        stage1: r.flip(),
        stage2: r.flip(),
        asid16: r.flip(),
        vmid16: r.flip(),
        sid_bits: r.pick(&[0, 1, 5, 8, 16, 24, 32]),
        ssid_bits: r.pick(&[0, 0, 1, 8, 20]),
        two_level_strtab: r.flip(),
        cd2l: r.flip(),
        ril: r.flip(),
        bbml: r.below(3) as u8,
        oas_bits: r.pick(&[32, 36, 40, 42, 44, 48, 52]),
        gran4k: r.flip(),
        gran16k: r.flip(),
        gran64k: r.flip(),
        vax52: r.flip(),
        cmdq_log2: r.pick(&[1, 7, 8, 10, 19]),
        evtq_log2: r.pick(&[1, 7, 8, 10, 19]),
        arch_minor: r.below(4) as u8,
        httu: r.pick(&[Httu::None, Httu::AccessFlag, Httu::AccessAndDirty]),
        ats: r.flip(),
        sev: r.flip(),
        msi: r.flip(),
        hyp: r.flip(),
        btm: r.flip(),
        stall_model: r.pick(&[
            StallModel::StallAndTerminate,
            StallModel::TerminateOnly,
            StallModel::StallForced,
        ]),
        coherent: r.pick(&[None, Some(true), Some(false)]),
        ..ModelConfig::default()
    };
    if r.below(4) == 0 {
        c = ModelConfig::qemu_like();
    }
    c
}

fn random_driver(r: &mut Rng) -> SmmuConfig {
    SmmuConfig {
        cmdq_log2: r.pick(&[0, 1, 7, 8, 12, 19, 31, 255]),
        evtq_log2: r.pick(&[0, 1, 7, 8, 12, 19, 31, 255]),
        strtab: r.pick(&[
            StrtabFormat::Auto,
            StrtabFormat::Linear,
            StrtabFormat::TwoLevel,
        ]),
        linear_max_log2: r.pick(&[0, 1, 6, 10, 16, 32, 255]),
        sync: r.pick(&[
            SyncMethod::Auto,
            SyncMethod::Poll,
            SyncMethod::Sev,
            SyncMethod::Msi,
        ]),
        timeout_us: r.pick(&[0, 1, 100, 10_000]),
        tlbi_max_ops: r.pick(&[0, 1, 512, u64::MAX]),
        use_ril: r.flip(),
        gbpa_abort: r.flip(),
        coherent: None,
    }
}

/// Maps a page in a domain the SMMU supports, attaches `sid`, and checks
/// DMA reaches memory; returns a typed error if any step refuses.
fn smoke(sys: &System, sid: u32) -> Result<(), Error> {
    let f = *sys.smmu.features();
    let d = if f.stage1 {
        HostedDomain::new_stage1(&sys.smmu, Granule::K4, 39)
            .or_else(|_| HostedDomain::new_stage1(&sys.smmu, Granule::K64, 42))
            .or_else(|_| HostedDomain::new_stage1(&sys.smmu, Granule::K16, 36))?
    } else {
        HostedDomain::new_stage2(&sys.smmu, Granule::K4, 32)
            .or_else(|_| HostedDomain::new_stage2(&sys.smmu, Granule::K64, 32))
            .or_else(|_| HostedDomain::new_stage2(&sys.smmu, Granule::K16, 32))?
    };
    sys.smmu.attach(sid, None, &d, AttachOptions::default())?;
    let pa = sys.mem.alloc(64 << 10).unwrap();
    d.map(0x10_0000, pa, 64 << 10, RW)?;
    let dma = sys
        .model
        .dma_write(&DmaRequest::write(sid, 0x10_0040, 4), &[1, 2, 3, 4]);
    assert_eq!(dma, Ok(()), "DMA through a fresh mapping");
    let mut b = [0u8; 4];
    sys.mem.invalidate(pa + 0x40, 4).unwrap();
    sys.mem.cpu_read(pa + 0x40, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
    Ok(())
}

/// Errors a driver may legitimately give for an SMMU or configuration it
/// cannot use: all typed, none of them an internal inconsistency.
fn acceptable(e: &Error) -> bool {
    matches!(
        e,
        Error::Probe(_)
            | Error::Unsupported(_)
            | Error::Alloc(_)
            | Error::Timeout(_)
            | Error::BadStreamId(_)
            | Error::PageTable(_)
            | Error::Partial(_)
    )
}

/// A coherent system with the default model and driver configurations.
fn default_system() -> System {
    System::new(
        MEM,
        Coherency::Coherent,
        ModelConfig::default(),
        SmmuConfig::default(),
    )
    .unwrap()
}

/// Random validated model configurations with random driver
/// configurations: bring-up and a DMA round trip work, or fail typed.
#[test]
fn bring_up_on_random_configurations() {
    watchdog("random bring-up", 90, || {
        let (mut up, mut refused) = (0, 0);
        for seed in 1..=120u64 {
            let mut r = Rng::new(seed);
            let model = random_model(&mut r);
            if model.validate().is_err() {
                continue;
            }
            let drv = if r.flip() {
                random_driver(&mut r)
            } else {
                SmmuConfig::default()
            };
            let what = format!("seed {seed}: {model:?} / {drv:?}");
            let coh = match model.coherent {
                Some(true) => Coherency::Coherent,
                Some(false) => Coherency::NonCoherent,
                None if r.flip() => Coherency::Coherent,
                None => Coherency::NonCoherent,
            };
            match System::new(MEM, coh, model.clone(), drv) {
                Ok(sys) => {
                    up += 1;
                    let sid = if model.sid_bits == 0 {
                        0
                    } else {
                        r.below(1 << model.sid_bits.min(8)) as u32
                    };
                    match smoke(&sys, sid) {
                        Ok(()) => {}
                        Err(e) => assert!(acceptable(&e), "{what}: smoke: {e}"),
                    }
                    let _ = sys.smmu.drain_events();
                    assert_eq!(
                        sys.smmu.handle_gerror(),
                        Ok(0),
                        "{what}: global error left active"
                    );
                }
                Err(smmuv3_hosted::SystemError::Driver(e)) => {
                    refused += 1;
                    assert!(acceptable(&e), "{what}: bring-up: {e}");
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
        assert!(
            up > 20,
            "only {up} configurations came up ({refused} refused)"
        );
    });
}

/// A register frame over the model that lies about some registers.
#[derive(Clone)]
struct HostileFrame {
    inner: ModelFrame,
    rng: Arc<Mutex<Rng>>,
    /// Offsets whose reads return random values.
    lie_about: Vec<usize>,
}

impl RegisterFrame for HostileFrame {
    fn read32(&self, offset: usize) -> u32 {
        if self.lie_about.contains(&offset) {
            return self.rng.lock().unwrap().next() as u32;
        }
        self.inner.read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.inner.write32(offset, value)
    }

    fn read64(&self, offset: usize) -> u64 {
        if self.lie_about.contains(&offset) || self.lie_about.contains(&(offset + 4)) {
            return self.rng.lock().unwrap().next();
        }
        self.inner.read64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
}

type HostileSmmu = smmuv3::Smmu<(HostileFrame, SimDmaMemory, PollClock)>;
type HostileDomain = smmuv3::Domain<(HostileFrame, SimDmaMemory, PollClock)>;

/// Registers a broken or malicious device could report wrongly.
const LIES: [usize; 14] = [
    0x00,     // IDR0
    0x04,     // IDR1
    0x0c,     // IDR3
    0x14,     // IDR5
    0x18,     // IIDR
    0x1c,     // AIDR
    0x24,     // CR0ACK
    0x54,     // IRQ_CTRLACK
    0x60,     // GERROR
    0x9c,     // CMDQ_CONS
    0x98,     // CMDQ_PROD
    0x1_00a8, // EVENTQ_PROD (page 1)
    0x1_00ac, // EVENTQ_CONS (page 1)
    0x44,     // GBPA
];

/// The driver over a device lying about one to three registers: every
/// call returns within the bound with a result or a typed error.
#[test]
fn lying_registers_give_typed_errors_not_hangs() {
    watchdog("lying registers", 90, || {
        let mut outcomes = [0u32; 2];
        for seed in 1..=150u64 {
            let mut r = Rng::new(seed);
            let mem = Arc::new(SimMemory::new(MEM_BASE, MEM, Coherency::Coherent).unwrap());
            let model = Arc::new(SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap());
            let lie_about: Vec<usize> = (0..1 + r.below(3)).map(|_| r.pick(&LIES)).collect();
            let frame = HostileFrame {
                inner: ModelFrame::new(model.clone()),
                rng: Arc::new(Mutex::new(Rng::new(seed ^ 0x5555))),
                lie_about: lie_about.clone(),
            };
            let what = format!("seed {seed}, lying about {lie_about:x?}");
            let cfg = SmmuConfig {
                timeout_us: 2000,
                ..SmmuConfig::default()
            };
            let smmu = match HostileSmmu::new(
                frame,
                SimDmaMemory::new(mem.clone()),
                PollClock::default(),
                cfg,
            ) {
                Ok(s) => s,
                Err(e) => {
                    outcomes[0] += 1;
                    // Whatever it is, it must be a typed error with a message.
                    assert!(!e.to_string().is_empty(), "{what}");
                    continue;
                }
            };
            outcomes[1] += 1;
            // Exercise the paths that read the lying registers.
            let _ = smmu.issue(&[Command::TlbiNsnhAll], true);
            let _ = smmu.handle_gerror();
            if let Ok(batch) = smmu.drain_events() {
                // A lying EVENTQ_PROD can claim at most a full queue.
                assert!(
                    batch.events.len() <= 1 << 19,
                    "{what}: {} events",
                    batch.events.len()
                );
            }
            if let Ok(d) = HostileDomain::new_stage1(&smmu, Granule::K4, 39) {
                let _ = smmu.attach(1, None, &d, AttachOptions::default());
                let pa = mem.alloc(4096).unwrap();
                let _ = d.map(0x20_0000, pa, 4096, RW);
            }
            let _ = smmu.shutdown();
        }
        // Both bring-up outcomes are exercised.
        assert!(
            outcomes[0] > 10 && outcomes[1] > 10,
            "refused/up: {outcomes:?}"
        );
    });
}

/// The command queue stops consuming at a random point of a random
/// sequence of driver operations: each call returns a `Timeout` (or
/// succeeds without needing the queue) within its bound, and once the
/// queue runs again the driver recovers and translates.
#[test]
fn stopped_command_queue_times_out_at_any_point() {
    watchdog("stopped queue", 90, || {
        for seed in 1..=40u64 {
            let mut r = Rng::new(seed);
            let cfg = SmmuConfig {
                timeout_us: 300,
                ..SmmuConfig::default()
            };
            let sys = System::new(MEM, Coherency::Coherent, ModelConfig::default(), cfg).unwrap();
            let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
            let pa = sys.mem.alloc(64 << 10).unwrap();
            let stop_at = r.below(6);
            let mut timed_out = false;
            for step in 0..6 {
                if step == stop_at {
                    sys.model.pause_commands();
                }
                let res = match step {
                    0 => sys
                        .smmu
                        .attach(3, None, &d, AttachOptions::default())
                        .map(|_| ()),
                    1 => d.map(0x40_0000, pa, 64 << 10, RW),
                    2 => d.unmap(0x40_0000, 4096).map(|_| ()),
                    3 => sys.smmu.issue(&[Command::TlbiNsnhAll], true),
                    4 => d.flush_all(),
                    _ => sys.smmu.detach(3, None).map(|_| ()),
                };
                match res {
                    Ok(()) => {}
                    Err(Error::Timeout(_)) => timed_out = true,
                    Err(e) => panic!("seed {seed} step {step} (stopped at {stop_at}): {e}"),
                }
            }
            assert!(
                timed_out,
                "seed {seed}: stopped at {stop_at} but nothing timed out"
            );
            sys.model.resume_commands();
            // Recovered: the queue drains and a new stream translates.
            sys.smmu.issue(&[], true).unwrap();
            assert_eq!(sys.smmu.handle_gerror(), Ok(0));
            let d2 = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
            sys.smmu
                .attach(5, None, &d2, AttachOptions::default())
                .unwrap();
            let pa2 = sys.mem.alloc(4096).unwrap();
            d2.map(0x80_0000, pa2, 4096, RW).unwrap();
            assert_eq!(
                sys.model
                    .translate(&DmaRequest::read(5, 0x80_0123, 1))
                    .map(|t| t.pa),
                Ok(pa2 + 0x123),
                "seed {seed}"
            );
        }
    });
}

/// Garbage arguments to every driver entry point: typed errors, and the
/// driver keeps working afterwards.
#[test]
fn garbage_arguments_are_typed_errors() {
    watchdog("garbage arguments", 60, || {
        let sys = default_system();
        let f = *sys.smmu.features();
        let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        // Stream and substream IDs out of range.
        for sid in [1u32 << f.sid_bits.min(31), u32::MAX] {
            let e = sys
                .smmu
                .attach(sid, None, &d, AttachOptions::default())
                .unwrap_err();
            assert_eq!(e, Error::BadStreamId(sid));
        }
        let e = sys
            .smmu
            .attach(1, Some(u32::MAX), &d, AttachOptions::default())
            .unwrap_err();
        assert!(
            matches!(e, Error::BadSubstreamId(_) | Error::Unsupported(_)),
            "{e}"
        );
        // Domain sizes: below 32 bits is refused, above what the SMMU
        // walks is clamped to its limit (documented), never a panic.
        for bits in [0u8, 1, 20, 31, 32, 39, 48, 53, 64, 255] {
            match HostedDomain::new_stage1(&sys.smmu, Granule::K4, bits) {
                Ok(d) => {
                    assert!(bits >= 32, "va_bits {bits} accepted");
                    assert_eq!(d.page_table().config().ias, u32::from(bits.min(f.va_bits)));
                }
                Err(e) => assert!(bits < 32 && acceptable(&e), "va_bits {bits}: {e}"),
            }
            match HostedDomain::new_stage2(&sys.smmu, Granule::K16, bits) {
                Ok(d) => {
                    assert!(bits >= 32, "ipa_bits {bits} accepted");
                    assert_eq!(
                        d.page_table().config().ias,
                        u32::from(bits.min(f.ipa_bits).min(48))
                    );
                }
                Err(e) => assert!(bits < 32 && acceptable(&e), "ipa_bits {bits}: {e}"),
            }
        }
        // Mappings with bad addresses and sizes.
        let mut d = d;
        sys.smmu
            .attach(1, None, &d, AttachOptions::default())
            .unwrap();
        for (iova, pa, len) in [
            (0x1001u64, 0x4000_0000u64, 4096u64),
            (0x1000, 0x4000_0001, 4096),
            (0x1000, 0x4000_0000, 0),
            (0x1000, 0x4000_0000, 100),
            (!0xfff, 0x4000_0000, 4096),
            (0x1000, !0xfff, 4096),
            (0x1000, 0x4000_0000, !0xfff),
        ] {
            let e = d.map(iova, pa, len, RW).unwrap_err();
            assert!(
                matches!(e, Error::PageTable(_) | Error::Partial(_)),
                "map({iova:#x}, {pa:#x}, {len:#x}): {e}"
            );
            assert_eq!(
                d.translate(iova & !0xfff),
                None,
                "map({iova:#x}) left a mapping"
            );
        }
        // Unmapping what was never mapped removes nothing.
        assert_eq!(d.unmap(0x7000_0000, 4096), Ok(0));
        // Overlapping maps: the second is refused, the first stays.
        let pa = sys.mem.alloc(8192).unwrap();
        d.map(0x30_0000, pa, 8192, RW).unwrap();
        assert!(d.map(0x30_1000, pa, 4096, RW).is_err());
        assert_eq!(d.translate(0x30_1000), Some(pa + 0x1000));
        // Commands that do not encode.
        let bad = Command::TlbiNhVa {
            vmid: 0,
            asid: 1,
            at: TlbiAddr {
                addr: 0x123,
                scale: 99,
                ..TlbiAddr::default()
            },
        };
        assert!(matches!(
            sys.smmu.issue(&[bad], true),
            Err(Error::Command(_))
        ));
        // Still fully working.
        let mut b = [0u8; 4];
        sys.model
            .dma_write(&DmaRequest::write(1, 0x30_1000, 4), &[5, 6, 7, 8])
            .unwrap();
        sys.mem.cpu_read(pa + 0x1000, &mut b).unwrap();
        assert_eq!(b, [5, 6, 7, 8]);
        assert_eq!(sys.smmu.handle_gerror(), Ok(0));
    });
}

/// Events flood queues of every size the model allows: the driver's
/// drain detects the overflow, never returns more than the queue holds,
/// and every event it returns is the fault that was provoked.
#[test]
fn event_floods_of_every_queue_size_are_detected() {
    watchdog("event floods", 60, || {
        for log2 in [0u8, 5, 7, 8] {
            let model = ModelConfig {
                evtq_log2: log2,
                ..ModelConfig::default()
            };
            let drv = SmmuConfig {
                evtq_log2: log2,
                ..SmmuConfig::default()
            };
            let sys = match System::new(MEM, Coherency::NonCoherent, model, drv) {
                Ok(s) => s,
                Err(smmuv3_hosted::SystemError::Driver(e)) => {
                    // Too small a queue for the driver: a typed refusal.
                    assert!(
                        matches!(e, Error::Probe(_) | Error::Unsupported(_)),
                        "log2 {log2}: {e}"
                    );
                    continue;
                }
                Err(e) => panic!("log2 {log2}: {e}"),
            };
            let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
            sys.smmu
                .attach(2, None, &d, AttachOptions::default())
                .unwrap();
            let n = (4u64 << log2) + 3;
            for i in 0..n {
                let _ = sys
                    .model
                    .dma_read(&DmaRequest::read(2, 0x1000 * i, 4), &mut [0; 4]);
            }
            let b = sys.smmu.drain_events().unwrap();
            assert!(
                b.overflowed,
                "log2 {log2}: overflow of {n} faults not detected"
            );
            assert!(
                !b.events.is_empty() && b.events.len() <= 1 << log2.max(7),
                "log2 {log2}: {}",
                b.events.len()
            );
            assert!(
                b.events.iter().all(|e| e.sid == 2 && e.fault.is_some()),
                "log2 {log2}"
            );
        }
    });
}

/// A clock that advances one microsecond per reading and counts them, so a
/// test can bound how long (in polls) a failing wait took.
#[derive(Clone, Default)]
struct CountingClock(Arc<std::sync::atomic::AtomicU64>);

impl smmuv3::env::Clock for CountingClock {
    fn now_us(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// With the command queue stopped, a synchronous command returns
/// `Timeout` after a number of polls proportional to `timeout_us`, for
/// every completion method: bounded, and not given up early.
#[test]
fn stopped_queue_timeout_is_bounded_in_polls() {
    watchdog("bounded timeout", 60, || {
        for sync in [SyncMethod::Poll, SyncMethod::Sev, SyncMethod::Msi] {
            for timeout_us in [0u64, 1, 50, 2000] {
                let mem = Arc::new(SimMemory::new(MEM_BASE, MEM, Coherency::Coherent).unwrap());
                let model = Arc::new(SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap());
                let cfg = SmmuConfig {
                    sync,
                    timeout_us,
                    ..SmmuConfig::default()
                };
                let ticks = CountingClock::default();
                let smmu: smmuv3::Smmu<(_, _, _)> = smmuv3::Smmu::new(
                    ModelFrame::new(model.clone()),
                    SimDmaMemory::new(mem.clone()),
                    ticks.clone(),
                    cfg,
                )
                .unwrap();
                model.pause_commands();
                let clock = || ticks.0.load(std::sync::atomic::Ordering::Relaxed);
                let before = clock();
                let r = smmu.issue(&[Command::TlbiNsnhAll], true);
                let polls = clock() - before;
                let what = format!("{sync:?}, timeout {timeout_us}");
                assert_eq!(r, Err(Error::Timeout("CMD_SYNC completion")), "{what}");
                assert!(polls >= timeout_us, "{what}: gave up after {polls} polls");
                assert!(polls <= 2 * timeout_us + 16, "{what}: {polls} polls");
                model.resume_commands();
                smmu.issue(&[], true).unwrap();
            }
        }
    });
}

/// A register frame that reads one register as a constant.
#[derive(Clone)]
struct StuckFrame {
    inner: ModelFrame,
    offset: usize,
    value: u32,
}

impl RegisterFrame for StuckFrame {
    fn read32(&self, offset: usize) -> u32 {
        if offset == self.offset {
            self.value
        } else {
            self.inner.read32(offset)
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        self.inner.write32(offset, value)
    }

    fn read64(&self, offset: usize) -> u64 {
        let lo = u64::from(self.read32(offset));
        let hi = u64::from(self.read32(offset + 4));
        lo | hi << 32
    }

    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
}

type StuckSmmu = smmuv3::Smmu<(StuckFrame, SimDmaMemory, PollClock)>;

fn stuck(offset: usize, value: u32) -> (Result<StuckSmmu, Error>, Arc<SmmuModel>) {
    let mem = Arc::new(SimMemory::new(MEM_BASE, MEM, Coherency::Coherent).unwrap());
    let model = Arc::new(SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap());
    let frame = StuckFrame {
        inner: ModelFrame::new(model.clone()),
        offset,
        value,
    };
    let cfg = SmmuConfig {
        timeout_us: 500,
        ..SmmuConfig::default()
    };
    (
        StuckSmmu::new(frame, SimDmaMemory::new(mem), PollClock::default(), cfg),
        model,
    )
}

/// Specific lies and the exact typed answer each calls for.
#[test]
fn stuck_registers_give_the_expected_errors() {
    watchdog("stuck registers", 60, || {
        // An SMMU that never acknowledges CR0 writes.
        let (r, _) = stuck(0x24, 0);
        assert!(
            matches!(r, Err(Error::Timeout(_))),
            "CR0ACK stuck at 0: {:?}",
            r.err()
        );
        // No AArch64 tables, not an SMMUv3, no granule.
        let (r, _) = stuck(0x00, 0);
        assert!(matches!(r, Err(Error::Probe(_))), "IDR0 = 0: {:?}", r.err());
        let (r, _) = stuck(0x1c, 0x20);
        assert!(
            matches!(r, Err(Error::Probe(_))),
            "AIDR major 2: {:?}",
            r.err()
        );
        let (r, _) = stuck(0x14, 0x05);
        assert!(
            matches!(r, Err(Error::Probe(_))),
            "IDR5 without granules: {:?}",
            r.err()
        );
        // A command queue whose consumer index never moves.
        let (r, _) = stuck(0x9c, 0);
        match r {
            Err(e) => assert!(matches!(e, Error::Timeout(_)), "CMDQ_CONS stuck: {e}"),
            Ok(s) => assert!(matches!(
                s.issue(&[Command::TlbiNsnhAll], true),
                Err(Error::Timeout(_))
            )),
        }
        // Every global error reported active at once, service failure
        // included: a typed error, not a loop.
        let (r, _) = stuck(0x60, 0x1fd);
        match r {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(s) => assert!(matches!(
                s.handle_gerror(),
                Err(Error::Global(_) | Error::CommandRejected { .. })
            )),
        }
    });
}

/// An event queue producer index more than a full queue ahead of the
/// consumer (wrap bit set, index past the consumer) is impossible: the
/// drain must not read more records than the queue holds.
#[test]
fn impossible_event_producer_index_is_bounded() {
    watchdog("impossible EVENTQ_PROD", 30, || {
        let (r, _model) = stuck(0x1_00a8, 0x7_ffff);
        let s = r.expect("EVENTQ_PROD is not read at bring-up");
        let b = s.drain_events().unwrap();
        assert!(
            b.events.len() <= 1 << 7,
            "{} events from a 128-entry queue",
            b.events.len()
        );
    });
}

/// A frame whose CMDQ_CONS starts lying once `lie` holds a value.
#[derive(Clone)]
struct LateLieFrame {
    inner: ModelFrame,
    lie: Arc<Mutex<Option<u32>>>,
}

impl RegisterFrame for LateLieFrame {
    fn read32(&self, offset: usize) -> u32 {
        match *self.lie.lock().unwrap() {
            Some(v) if offset == 0x9c => v,
            _ => self.inner.read32(offset),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        self.inner.write32(offset, value)
    }

    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | u64::from(self.read32(offset + 4)) << 32
    }

    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
}

/// Returns whether `f` returned (rather than panicked), with its result.
fn returns<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// After bring-up the SMMU reports a CMDQ_CONS no real queue can have
/// (ahead of PROD, or more than a queue behind it). The driver must not
/// trust it into negative free space: every call returns a typed result.
#[test]
fn impossible_command_consumer_index_is_not_trusted() {
    watchdog("impossible CMDQ_CONS", 60, || {
        for lie in [1u32, 0x81, 0x1ff, 0xff, u32::MAX] {
            let mem = Arc::new(SimMemory::new(MEM_BASE, MEM, Coherency::Coherent).unwrap());
            let model = Arc::new(SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap());
            let lie_cell = Arc::new(Mutex::new(None));
            let frame = LateLieFrame {
                inner: ModelFrame::new(model.clone()),
                lie: lie_cell.clone(),
            };
            let cfg = SmmuConfig {
                timeout_us: 300,
                ..SmmuConfig::default()
            };
            let smmu: smmuv3::Smmu<(_, _, _)> =
                smmuv3::Smmu::new(frame, SimDmaMemory::new(mem), PollClock::default(), cfg)
                    .unwrap();
            *lie_cell.lock().unwrap() = Some(lie);
            for round in 0..3 {
                let many = vec![Command::TlbiNsnhAll; 200];
                let r = returns(|| smmu.issue(&many, true));
                assert!(r.is_some(), "CONS {lie:#x}, round {round}: issue panicked");
            }
        }
    });
}

/// Unmapping 16 TiB of 1 GiB blocks (2^32 pages of 4 KiB) with range
/// invalidation: the driver must invalidate all of it (the TLB entry the
/// device cached must go), whatever the size of the range.
/// (The planner alone mis-encodes such ranges, see the smmuv3 adversarial
/// tests; the driver must not depend on it for them.)
#[test]
fn huge_unmap_invalidates_everything() {
    watchdog("huge unmap", 60, || {
        let sys = default_system();
        let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(1, None, &d, AttachOptions::default())
            .unwrap();
        let len = 1u64 << 44;
        d.map(0, 0, len, RW).unwrap();
        let probe = DmaRequest::read(1, (1 << 43) + 0x1234, 4);
        assert_eq!(
            sys.model.translate(&probe).map(|t| t.pa),
            Ok((1 << 43) + 0x1234)
        );
        let r = d.unmap(0, len);
        assert_eq!(r, Ok(len), "unmap of 16 TiB");
        assert!(
            sys.model.translate(&probe).is_err(),
            "stale translation after unmap"
        );
    });
}

/// Far more commands than the queue holds, in one call: the driver
/// batches them through the queue and every one runs.
#[test]
fn more_commands_than_queue_slots() {
    watchdog("long batch", 60, || {
        let drv = SmmuConfig {
            cmdq_log2: 7,
            ..SmmuConfig::default()
        };
        let sys = System::new(MEM, Coherency::NonCoherent, ModelConfig::default(), drv).unwrap();
        let before = sys.model.stats().command(0x30);
        let n = 5000;
        sys.smmu
            .issue(&vec![Command::TlbiNsnhAll; n], true)
            .unwrap();
        assert_eq!(sys.model.stats().command(0x30) - before, n as u64);
        assert_eq!(sys.smmu.handle_gerror(), Ok(0));
    });
}

/// An SMMU with a 52-bit output size (which needs the 64K granule to use
/// all of it) still hosts 4K and 16K domains, limited to 48-bit output as
/// those granules are.
#[test]
fn oas_52_smmu_hosts_4k_and_16k_domains() {
    let model = ModelConfig {
        oas_bits: 52,
        ..ModelConfig::default()
    };
    let sys = System::new(MEM, Coherency::Coherent, model, SmmuConfig::default()).unwrap();
    assert_eq!(sys.smmu.features().oas_bits, 52);
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        let d = HostedDomain::new_stage1(&sys.smmu, g, 48);
        assert!(d.is_ok(), "stage 1 {g:?}: {:?}", d.err());
        let d = HostedDomain::new_stage2(&sys.smmu, g, 40);
        assert!(d.is_ok(), "stage 2 {g:?}: {:?}", d.err());
    }
}

/// Substream table sizes from none to absurd, and substream IDs inside and
/// outside them: typed errors for what the SMMU cannot do, working
/// translation for what it can.
#[test]
fn substream_table_sizes_and_ids() {
    watchdog("substreams", 60, || {
        use smmuv3::config::S1Dss;
        let sys = default_system();
        let max = sys.smmu.features().ssid_bits;
        let pa = sys.mem.alloc(4096).unwrap();
        for (k, bits) in [0u8, 1, 2, max, max + 1, 20, 21, 32, 64, 255]
            .into_iter()
            .enumerate()
        {
            let sid = 10 + k as u32;
            let d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
            d.map(0x5000, pa, 4096, RW).unwrap();
            for ssid in [
                0u32,
                1,
                (1u32 << bits.min(31)) - 1,
                1 << bits.min(31),
                u32::MAX,
            ] {
                let opts = AttachOptions {
                    s1dss: S1Dss::Ssid0,
                    ssid_bits: bits,
                    ats: false,
                };
                let what = format!("ssid_bits {bits} (max {max}), ssid {ssid:#x}");
                let r = returns(|| sys.smmu.attach(sid, Some(ssid), &d, opts));
                let r = r.unwrap_or_else(|| panic!("{what}: attach panicked"));
                if ssid == 0 {
                    // Substream 0 is the stream's own (no-SSID) context;
                    // whether it can be named explicitly is a policy.
                    let _ = r;
                    continue;
                }
                let fits = bits > 0 && bits <= max && u64::from(ssid) < 1u64 << bits;
                match r {
                    Ok(_) => {
                        assert!(fits, "{what}: accepted");
                        let req = DmaRequest::read(sid, 0x5010, 4).with_ssid(ssid);
                        assert_eq!(
                            sys.model.translate(&req).map(|t| t.pa),
                            Ok(pa + 0x10),
                            "{what}"
                        );
                    }
                    Err(e) => assert!(
                        !fits
                            && matches!(
                                e,
                                Error::BadSubstreamId(_) | Error::Unsupported(_) | Error::Alloc(_)
                            ),
                        "{what}: {e}"
                    ),
                }
            }
        }
    });
}

/// Everything after a shutdown (including a second shutdown) is a typed
/// error or a no-op, and dropping domains afterwards does not panic.
#[test]
fn calls_after_shutdown_are_typed() {
    watchdog("after shutdown", 30, || {
        let sys = default_system();
        let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
        sys.smmu
            .attach(1, None, &d, AttachOptions::default())
            .unwrap();
        let pa = sys.mem.alloc(4096).unwrap();
        d.map(0x1000, pa, 4096, RW).unwrap();
        sys.smmu.shutdown().unwrap();
        assert!(!sys.smmu.is_enabled());
        let again = returns(|| sys.smmu.shutdown()).expect("second shutdown panicked");
        assert!(
            matches!(again, Ok(()) | Err(Error::QueueDisabled)),
            "{again:?}"
        );
        assert_eq!(
            sys.smmu.issue(&[Command::TlbiNsnhAll], true),
            Err(Error::QueueDisabled)
        );
        let r = returns(|| sys.smmu.attach(2, None, &d, AttachOptions::default()))
            .expect("attach panicked");
        assert!(r.is_err(), "attach after shutdown: {r:?}");
        let r = returns(|| d.unmap(0x1000, 4096)).expect("unmap panicked");
        assert!(
            matches!(r, Err(Error::QueueDisabled)) || r == Ok(4096),
            "{r:?}"
        );
        // Draining a disabled event queue finds nothing new.
        let r = returns(|| sys.smmu.drain_events()).expect("drain panicked");
        assert!(r.map(|b| b.events.is_empty()).unwrap_or(true));
        // DMA no longer translates through the domain.
        assert!(
            sys.model
                .dma_read(&DmaRequest::read(1, 0x1000, 4), &mut [0; 4])
                .is_err()
        );
        returns(move || drop(d)).expect("dropping a domain after shutdown panicked");
    });
}

/// A table descriptor pointing outside simulated memory, written through
/// `SimMemory`'s safe API: the driver's lookups must see a translation
/// fault (before `SimEnv` gave such addresses a zeroed scratch window, this
/// walked a dangling pointer) and the device must not reach any memory.
#[test]
fn table_descriptor_outside_memory_is_a_fault_for_driver_and_device() {
    let sys = default_system();
    let mut dom = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 39).unwrap();
    sys.smmu
        .attach(3, None, &dom, AttachOptions::default())
        .unwrap();
    // Root entry 0 (level 1) covers IOVA [0, 1 GiB).
    let root = dom.page_table().root_phys();
    sys.mem
        .cpu_write_u64(root, (MEM_BASE + MEM) | 0b11)
        .unwrap();
    for iova in [0, 0x1000, 0x3fff_f000] {
        assert_eq!(dom.translate(iova), None, "iova {iova:#x}");
    }
    let dma = sys
        .model
        .dma_write(&DmaRequest::write(3, 0x1000, 4), &[1; 4]);
    assert!(dma.is_err(), "DMA through a wild table: {dma:?}");
    let unmapped = dom.unmap(0x1000, 0x1000).unwrap_or(0);
    assert_eq!(unmapped, 0);
}
