//! Real events reach the host by interrupt, as a Linux host needs: its
//! driver reads EVENTQ_PROD only from its event interrupt handler. The
//! host here does only what such a driver does (program its event queue,
//! enable EVENTQEN and EVENTQ_IRQEN, then wait for the interrupt); the
//! hypervisor is a thread that takes the real SMMU's wired event
//! interrupt, calls the emulator and injects what it returns.

mod common;

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::Setup;
use common::host::{Emu, HostDomain, HostSmmu, Trapped};
use hyp_iommu::HostIrqs;
use io_pgtable::{Granule, Prot};
use smmuv3::command::Command;
use smmuv3::driver::StrtabFormat;
use smmuv3::env::RegisterFrame;
use smmuv3::event::EventType;
use smmuv3::regs::{self as r, irq_ctrl};
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_model::{IrqLine, SmmuModel};

const SID: u32 = 0x10;
const IOVA: u64 = 0x4000_0000;

/// How long the host waits for an interrupt before calling it lost. Only
/// a bound on a hang: an interrupt that comes arrives at once.
const IRQ_WAIT: Duration = Duration::from_secs(10);

/// The hypervisor's interrupt plumbing: the real SMMU's event line goes
/// to a hypervisor thread, which calls the emulator and injects the host
/// interrupts it returns; each real interrupt handled is reported, with
/// what was injected, on `handled`.
struct Wired {
    model: Arc<SmmuModel>,
    hyp: Option<JoinHandle<()>>,
    handled: Receiver<HostIrqs>,
}

impl Wired {
    fn new(t: &Trapped) -> Self {
        let model = t.models[0].clone();
        let (real_tx, real_rx) = mpsc::channel::<IrqLine>();
        model.set_irq_handler(Some(Arc::new(move |line| {
            let _ = real_tx.send(line);
        })));
        let (done, handled) = mpsc::channel();
        let emu: Arc<Mutex<Emu>> = t.emu.clone();
        let hyp = std::thread::spawn(move || {
            for line in real_rx {
                if line != IrqLine::EventQ {
                    continue;
                }
                let irq = emu.lock().unwrap().event_irq(0);
                assert!(!irq.more, "nothing records during the drain");
                let _ = done.send(irq.host);
            }
        });
        Self {
            model,
            hyp: Some(hyp),
            handled,
        }
    }

    /// Waits for the hypervisor to handle the real SMMU's next event
    /// interrupt; returns what it injected into the host, or `None` when
    /// no real interrupt came.
    fn next(&self) -> Option<HostIrqs> {
        self.handled.recv_timeout(IRQ_WAIT).ok()
    }

    /// Returns whether the host's event interrupt came (for the next
    /// real interrupt).
    fn host_interrupted(&self) -> bool {
        self.next().is_some_and(|irqs| irqs.eventq)
    }
}

impl Drop for Wired {
    fn drop(&mut self) {
        // Dropping the handler closes the hypervisor's channel.
        self.model.set_irq_handler(None);
        if let Some(h) = self.hyp.take() {
            let _ = h.join();
        }
    }
}

fn host_cfg(evtq_log2: u8) -> SmmuConfig {
    SmmuConfig {
        strtab: StrtabFormat::Linear,
        evtq_log2,
        timeout_us: 20_000,
        ..SmmuConfig::default()
    }
}

/// The host enables its event and global error interrupts, as Linux does
/// after its queues are on.
fn host_enables_irqs(t: &Trapped) {
    let en = irq_ctrl::EVENTQ_IRQEN.mask() | irq_ctrl::GERROR_IRQEN.mask();
    let mut e = t.emu.lock().unwrap();
    e.write(0, r::IRQ_CTRL as u64, 4, en).unwrap();
    assert_eq!(e.read(0, r::IRQ_CTRLACK as u64, 4).unwrap(), en);
}

/// Returns the host driver with a stage-1 domain (nothing mapped) on
/// `SID`, its interrupts enabled.
fn host_with_domain(t: &Trapped, evtq_log2: u8) -> (HostSmmu, HostDomain) {
    let host = t.host_smmu(0, host_cfg(evtq_log2)).unwrap();
    let dom = HostDomain::new_stage1(&host, Granule::K4, 48).unwrap();
    host.attach(SID, None, &dom, AttachOptions::default())
        .unwrap();
    host_enables_irqs(t);
    (host, dom)
}

/// A device's stage-1 translation fault interrupts the host, and the
/// host's handler finds the fault (its StreamID and address, nothing of
/// the hypervisor's) in its queue: no host register read in between.
#[test]
fn a_device_fault_interrupts_the_host() {
    let t = Trapped::new(Setup::default());
    let (host, _dom) = host_with_domain(&t, 7);
    let wired = Wired::new(&t);
    let reads = t.stats().reads;

    assert!(t.dma_write(SID, IOVA + 0x40, b"x").is_err());
    assert!(
        wired.host_interrupted(),
        "the host's event interrupt never came"
    );
    assert_eq!(t.stats().reads, reads, "the host did not poll");

    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e.ty, e.sid), (EventType::Translation, SID));
    let f = e.fault.unwrap();
    assert_eq!(f.addr, IOVA + 0x40);
    assert!(!f.stage2);
    assert_eq!(
        e.raw[3], 0,
        "no IPA (a hypervisor address) reaches the host"
    );

    // Consumed, the queue is empty: the next fault interrupts again.
    assert!(t.dma_write(SID, IOVA + 0x80, b"y").is_err());
    assert!(wired.host_interrupted(), "the second interrupt never came");
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].fault.unwrap().addr, IOVA + 0x80);
    assert!(t.host.violations.lock().unwrap().is_empty());
}

/// Traffic on a stream the host left invalid (V = 0) is C_BAD_STE for
/// the host, and interrupts it like any other event.
#[test]
fn a_bad_ste_of_the_hosts_making_interrupts_the_host() {
    const OTHER: u32 = 0x11;
    let t = Trapped::new(Setup::default());
    let (host, _dom) = host_with_domain(&t, 7);
    // The host's driver writes an abort STE (silent); the host makes it
    // invalid.
    let ste = t.host_strtab() + u64::from(OTHER) * 64;
    t.mem.cpu_write(ste, &[0u8; 64]).unwrap();
    t.mem.clean(ste, 64).unwrap();
    host.issue(
        &[Command::CfgiSte {
            sid: OTHER,
            leaf: true,
        }],
        true,
    )
    .unwrap();
    let wired = Wired::new(&t);

    assert!(t.dma_write(OTHER, IOVA, b"x").is_err());
    assert!(
        wired.host_interrupted(),
        "the host's event interrupt never came"
    );
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].ty, events[0].sid), (EventType::BadSte, OTHER));
}

/// A stage-2 fault (a page the hypervisor took) is the hypervisor's: no
/// host interrupt, nothing in the host's queue, but the next host fault
/// still interrupts.
#[test]
fn a_stage2_fault_does_not_interrupt_the_host() {
    let t = Trapped::new(Setup::default());
    let (host, dom) = host_with_domain(&t, 7);
    let buf = t.host_ram.alloc(4096).unwrap();
    dom.map(IOVA, buf, 4096, Prot::READ | Prot::WRITE).unwrap();
    t.donate(buf, 4096).unwrap();
    let wired = Wired::new(&t);

    assert!(t.dma_write(SID, IOVA, b"x").is_err());
    let irqs = wired.next().expect("the real event interrupt never came");
    assert!(!irqs.eventq, "{irqs:?}");
    let hyp = t.emu.lock().unwrap().hyp_events(0).to_vec();
    assert_eq!(hyp.len(), 1, "{hyp:?}");
    assert!(host.drain_events().unwrap().events.is_empty());

    assert!(t.dma_write(SID, IOVA + 0x1000, b"y").is_err());
    assert!(
        wired.host_interrupted(),
        "the host's event interrupt never came"
    );
    let events = host.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].fault.unwrap().addr, IOVA + 0x1000);
}

/// Returns the addresses of `events` (all stage-1 faults), oldest first.
fn addrs(events: &[smmuv3::event::Event]) -> Vec<u64> {
    events.iter().map(|e| e.fault.unwrap().addr).collect()
}

/// A full host queue overflows as IHI 0070 7.4 says: the record is
/// discarded, EVENTQ_PROD.OVFLG toggles once until the host acknowledges
/// it, no interrupt (the queue was not empty); the records kept are the
/// oldest, in order, and once the host consumed them the next fault
/// interrupts again.
#[test]
fn a_full_host_queue_overflows_without_interrupting() {
    // The host driver's smallest queue.
    const ENTRIES: u64 = 1 << 7;
    let t = Trapped::new(Setup::default());
    let (host, _dom) = host_with_domain(&t, 7);
    let wired = Wired::new(&t);
    let fault = |k: u64| {
        assert!(t.dma_write(SID, IOVA + k * 0x1000, b"x").is_err());
        wired.next().expect("the real event interrupt never came")
    };
    let ovflg = || {
        let v = t.emu.lock().unwrap().read(0, r::EVENTQ_PROD as u64, 4);
        smmuv3::regs::evtq::OVFLG.get(v.unwrap()) != 0
    };
    assert!(fault(0).eventq, "empty -> non-empty");
    for k in 1..ENTRIES {
        assert!(!fault(k).eventq, "{k}: not empty");
    }
    assert!(!ovflg());
    assert_eq!(t.stats().overflows, 0);
    assert!(!fault(ENTRIES).eventq, "full");
    assert!(ovflg(), "OVFLG toggled");
    assert!(!fault(ENTRIES + 1).eventq);
    assert!(ovflg(), "toggled once, not twice");
    assert_eq!(t.stats().overflows, 2);

    let batch = host.drain_events().unwrap();
    assert!(batch.overflowed);
    let kept: Vec<u64> = (0..ENTRIES).map(|k| IOVA + k * 0x1000).collect();
    assert_eq!(addrs(&batch.events), kept, "the oldest, in order");
    assert!(fault(0x200).eventq, "consumed, so empty again");
    let batch = host.drain_events().unwrap();
    assert!(!batch.overflowed, "the host acknowledged the overflow");
    assert_eq!(addrs(&batch.events), [IOVA + 0x20_0000]);
}

/// With EVENTQEN = 0 the host's events are discarded (counted), with no
/// interrupt; enabled again, the next fault interrupts, and the host
/// finds only that one.
#[test]
fn a_disabled_host_queue_discards_events_without_interrupting() {
    let t = Trapped::new(Setup::default());
    let (host, _dom) = host_with_domain(&t, 7);
    let wired = Wired::new(&t);
    let cr0 = |v: u64| {
        let mut e = t.emu.lock().unwrap();
        e.write(0, r::CR0 as u64, 4, v).unwrap();
        assert_eq!(e.read(0, r::CR0ACK as u64, 4).unwrap(), v);
    };
    let on = t.emu.lock().unwrap().read(0, r::CR0 as u64, 4).unwrap();
    cr0(on & !r::cr0::EVENTQEN.mask());
    let dropped = t.stats().dropped_events;
    assert!(t.dma_write(SID, IOVA, b"x").is_err());
    let irqs = wired.next().expect("the real event interrupt never came");
    assert!(!irqs.eventq, "{irqs:?}");
    assert_eq!(t.stats().dropped_events, dropped + 1);

    cr0(on);
    assert!(t.dma_write(SID, IOVA + 0x1000, b"y").is_err());
    assert!(
        wired.host_interrupted(),
        "the host's event interrupt never came"
    );
    let events = host.drain_events().unwrap().events;
    assert_eq!(addrs(&events), [IOVA + 0x1000]);
}

/// After a power cycle of the real SMMU (whose driver comes up with its
/// interrupts off) the emulator enables its event interrupt again.
#[test]
fn the_real_event_interrupt_survives_a_power_cycle() {
    let t = Trapped::new(Setup::default());
    let (host, _dom) = host_with_domain(&t, 7);
    t.emu.lock().unwrap().hyp_mut().power_off(0).unwrap();
    let fresh = common::smmu_on(&t.mem, &t.models[0]);
    let irq_ctrl = fresh.regs().read32(r::IRQ_CTRL);
    assert_eq!(irq_ctrl, 0, "the driver leaves interrupts off");
    t.emu.lock().unwrap().power_on(0, fresh).unwrap();
    assert_eq!(t.stats().real_failures, 0);
    let wired = Wired::new(&t);

    assert!(t.dma_write(SID, IOVA, b"x").is_err());
    assert!(
        wired.host_interrupted(),
        "the host's event interrupt never came"
    );
    assert_eq!(addrs(&host.drain_events().unwrap().events), [IOVA]);
}

/// A device that records while the hypervisor drains can leave records
/// in the real queue after the drain's bounded passes; the real
/// interrupt will not fire for them (the queue never went empty), so
/// `event_irq` says `more`, and calling it again delivers them, in
/// order, without a host interrupt (its queue was not empty).
#[test]
fn records_left_by_a_bounded_drain_are_reported_as_more() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const EXTRA: u64 = 32;
    let t = Trapped::new(Setup::default());
    let (host, _dom) = host_with_domain(&t, 7);
    // Each time the hypervisor frees real queue slots, the device faults
    // once more (up to EXTRA times).
    let model = t.models[0].clone();
    let n = Arc::new(AtomicU64::new(0));
    let hook_n = n.clone();
    let hook: smmuv3_hosted::WriteHook = Arc::new(move |off, _| {
        if off != r::EVENTQ_CONS {
            return;
        }
        let k = hook_n.fetch_add(1, Ordering::Relaxed) + 1;
        if k <= EXTRA {
            let req = smmuv3_model::DmaRequest::write(SID, IOVA + k * 0x1000, 1);
            assert!(model.dma_write(&req, b"z").is_err());
        }
    });
    let frame = t.emu.lock().unwrap().hyp().smmu(0).unwrap().regs().clone();
    frame.set_hook(Some(hook));

    assert!(t.dma_write(SID, IOVA, b"x").is_err());
    let first = t.emu.lock().unwrap().event_irq(0);
    assert!(first.host.eventq, "{first:?}");
    assert!(first.more, "{first:?}");
    let mut calls = 1;
    loop {
        let irq = t.emu.lock().unwrap().event_irq(0);
        calls += 1;
        assert!(!irq.host.eventq, "{irq:?}");
        if !irq.more {
            break;
        }
        assert!(calls <= EXTRA + 1, "more never cleared");
    }
    frame.set_hook(None);
    assert!(calls > 1);
    let events = host.drain_events().unwrap().events;
    let want: Vec<u64> = (0..=EXTRA).map(|k| IOVA + k * 0x1000).collect();
    assert_eq!(addrs(&events), want, "every record, in order");
}

/// An overflow of the real event queue is counted for the hypervisor but
/// is not the host's: its OVFLG toggles only when its own queue was full
/// and discarded a record (IHI 0070 7.4). The records the real queue kept
/// reach the host, in order.
#[test]
fn a_real_queue_overflow_is_the_hypervisors() {
    // The real queue's size (the hypervisor's driver default); the host's
    // queue is twice that.
    const REAL: u64 = 1 << 7;
    let t = Trapped::new(Setup::default());
    let (host, _dom) = host_with_domain(&t, 8);
    for k in 0..REAL + 2 {
        assert!(t.dma_write(SID, IOVA + k * 0x1000, b"x").is_err());
    }
    let irq = t.emu.lock().unwrap().event_irq(0);
    assert!(irq.host.eventq && !irq.more, "{irq:?}");
    let s = t.stats();
    assert_eq!((s.real_overflows, s.overflows), (1, 0), "{s:?}");
    let batch = host.drain_events().unwrap();
    assert!(!batch.overflowed, "the host's queue never filled");
    let kept: Vec<u64> = (0..REAL).map(|k| IOVA + k * 0x1000).collect();
    assert_eq!(addrs(&batch.events), kept);
}
