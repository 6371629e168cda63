//! Interrupt and MSI delivery to a VMM through callbacks.
//!
//! Signals raised while the model's state is locked wait in an outbox and
//! are delivered once the lock is released, so a callback may call back
//! into the model (read the event queue pointers, acknowledge...).
//! What such a call raises is delivered by the delivery in progress, in
//! its next round, not nested (see `DELIVERY_ROUNDS`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::SmmuModel;
use crate::msi::MsiWrite;

/// A wired interrupt line of the SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqLine {
    /// Event queue interrupt (the queue went from empty to non-empty,
    /// IRQ_CTRL.EVENTQ_IRQEN).
    EventQ,
    /// Global error interrupt (IRQ_CTRL.GERROR_IRQEN).
    Gerror,
    /// CMD_SYNC completion with CS = SIG_IRQ (whatever its MSI address).
    CmdSync,
}

/// Called with each wired interrupt the SMMU asserts (edge semantics:
/// once per assertion).
pub type IrqHandler = Arc<dyn Fn(IrqLine) + Send + Sync>;

/// Called with (address, data) of each MSI the SMMU sends (event queue,
/// GERROR and CMD_SYNC completion MSIs). Returns whether it consumed the MSI
/// (e.g. injected it through the interrupt controller); when it returns
/// false the model performs the 32-bit write to memory itself.
pub type MsiHandler = Arc<dyn Fn(u64, u32) -> bool + Send + Sync>;

/// As [`MsiHandler`], called with the whole [`MsiWrite`]: address, data
/// and the memory type and Shareability it is written with.
pub type MsiWriteHandler = Arc<dyn Fn(&MsiWrite) -> bool + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct Handlers {
    irq: Option<IrqHandler>,
    msi: Option<MsiWriteHandler>,
}

#[derive(Clone, Copy, Debug)]
enum Signal {
    Irq(IrqLine),
    /// An MSI, with the GERROR bit its abort activates.
    Msi {
        write: MsiWrite,
        abort: u32,
    },
}

/// Signals waiting for delivery, queued only while a callback is
/// installed (so an unmounted model never accumulates them).
pub(crate) struct Outbox {
    signals: Vec<Signal>,
    irq_hooked: bool,
    msi_hooked: bool,
    pending: Arc<AtomicBool>,
}

impl Outbox {
    pub fn new(pending: Arc<AtomicBool>) -> Self {
        Self {
            signals: Vec::new(),
            irq_hooked: false,
            msi_hooked: false,
            pending,
        }
    }

    pub fn irq(&mut self, line: IrqLine) {
        if self.irq_hooked {
            self.signals.push(Signal::Irq(line));
            self.pending.store(true, Ordering::Release);
        }
    }

    /// Queues an MSI for the callback; returns false when none is
    /// installed (the caller writes memory). `abort` is the GERROR bit
    /// (MSI_*_ABT_ERR) to activate if the model ends up writing it to
    /// memory and the write aborts.
    pub fn msi(&mut self, write: MsiWrite, abort: u32) -> bool {
        if !self.msi_hooked {
            return false;
        }
        self.signals.push(Signal::Msi { write, abort });
        self.pending.store(true, Ordering::Release);
        true
    }
}

impl SmmuModel {
    /// Installs (or with `None` removes) the wired-interrupt callback.
    /// [`SmmuModel::interrupts`] keeps reporting the level view as well.
    pub fn set_irq_handler(&self, handler: Option<IrqHandler>) {
        let on = handler.is_some();
        self.handlers.write().unwrap_or_else(|e| e.into_inner()).irq = handler;
        self.lock().outbox.irq_hooked = on;
    }

    /// Installs (or with `None` removes) the MSI callback; without one,
    /// MSIs are 32-bit writes to memory. It replaces a callback installed
    /// by [`SmmuModel::set_msi_write_handler`].
    pub fn set_msi_handler(&self, handler: Option<MsiHandler>) {
        self.set_msi_write_handler(
            handler.map(|f| -> MsiWriteHandler { Arc::new(move |w: &MsiWrite| f(w.addr, w.data)) }),
        );
    }

    /// Installs (or with `None` removes) the MSI callback that also gets
    /// each MSI's memory type and Shareability (SMMU_*_IRQ_CFG2.MemAttr
    /// and SH, CMD_SYNC's MSIAttr and MSH). It replaces a callback
    /// installed by [`SmmuModel::set_msi_handler`]. The attributes do not
    /// change the write the model makes when the callback declines it:
    /// the memory's coherency (IDR0.COHACC) decides what CPUs see.
    pub fn set_msi_write_handler(&self, handler: Option<MsiWriteHandler>) {
        let on = handler.is_some();
        self.handlers.write().unwrap_or_else(|e| e.into_inner()).msi = handler;
        self.lock().outbox.msi_hooked = on;
    }

    /// Delivers queued signals to the callbacks (outside the state lock).
    #[inline]
    pub(crate) fn deliver(&self) {
        if !self.pending.load(Ordering::Acquire) {
            return;
        }
        self.deliver_slow();
    }

    #[cold]
    fn deliver_slow(&self) {
        // Identifies the model for the delivery guard (never dereferenced).
        let me = self as *const Self as usize;
        let Some(_guard) = Delivering::enter(me) else {
            // A callback of this delivery accessed the model: its signals
            // stay pending for the delivery in progress (nesting here
            // would let a guest recurse once per command, see
            // `DELIVERY_ROUNDS`).
            return;
        };
        let h = self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Bounded: at most `DELIVERY_ROUNDS` rounds; what later rounds
        // would deliver stays pending for the next register access.
        for _ in 0..DELIVERY_ROUNDS {
            let signals = {
                let mut s = self.lock();
                self.pending.store(false, Ordering::Release);
                std::mem::take(&mut s.outbox.signals)
            };
            if signals.is_empty() {
                return;
            }
            let mut aborted = 0u32;
            for sig in signals {
                match sig {
                    Signal::Irq(line) => {
                        if let Some(f) = &h.irq {
                            f(line);
                        }
                    }
                    Signal::Msi { write, abort } => {
                        let taken = h.msi.as_ref().is_some_and(|f| f(&write));
                        // Declined: written as without a callback, and an
                        // abort reported as without one.
                        let (addr, data) = (write.addr, write.data.to_le_bytes());
                        if !taken && self.mem.write(addr, &data).is_err() {
                            aborted |= abort;
                        }
                    }
                }
            }
            if aborted != 0 {
                let mut s = self.lock();
                for bit in (0..32).map(|b| 1u32 << b).filter(|b| aborted & b != 0) {
                    s.raise_gerror(bit);
                }
            }
        }
    }
}

/// Rounds of signals one delivery hands to the callbacks: a callback that
/// accesses the model (e.g. an MSI the VMM routes to its MMIO bus, which
/// the guest aimed at CMDQ_PROD) raises more signals, delivered in the
/// next round, not nested in the callback; a guest can chain such rounds
/// without end, so each register access delivers a bounded number.
const DELIVERY_ROUNDS: usize = 64;

std::thread_local! {
    /// The models (by address) whose signals this thread is delivering.
    static DELIVERING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A delivery in progress on this thread, ended on drop (a callback's
/// panic included).
struct Delivering(usize);

impl Delivering {
    /// Returns the guard of a new delivery for model `me`, or None if this
    /// thread is already delivering for it.
    fn enter(me: usize) -> Option<Self> {
        DELIVERING.with(|d| {
            let mut d = d.borrow_mut();
            if d.contains(&me) {
                return None;
            }
            d.push(me);
            Some(Self(me))
        })
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        DELIVERING.with(|d| d.borrow_mut().retain(|&m| m != self.0));
    }
}
