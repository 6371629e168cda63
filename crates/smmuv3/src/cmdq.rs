//! A command-queue producer over borrowed queue memory, usable without the
//! [`crate::Smmu`] object: a hypervisor that owns the real queue (and
//! shadows a host's) drives it with exactly the code the driver uses.
//!
//! It encodes, writes, publishes (clean, device write barrier, `CMDQ_PROD`),
//! waits for `CMDQ_CONS` with a bound, and reports `CMDQ_CONS.ERR`. It
//! allocates nothing and takes no lock: its owner serialises producers.
//! The [`Producer`] holds only the pointers; the memory is a
//! [`QueueMemory`] borrowed for each call.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use io_pgtable::env::CacheMaintenance;

use crate::Error;
use crate::command::{Command, SyncSignal};
use crate::env::{Clock, RegisterFrame, poll};
use crate::error::CmdqErrorKind;
use crate::layout::cmd::CMD_BYTES;
use crate::queue::QueueIndex;
use crate::regs::{self, cmdq_cons, gerror};

/// The memory of a command queue: 2 words per entry, and where the SMMU
/// reads it.
#[derive(Clone, Copy, Debug)]
pub struct QueueMemory<'a> {
    words: &'a [AtomicU64],
    phys: u64,
}

impl<'a> QueueMemory<'a> {
    /// Returns queue memory over `words` (two per entry), which the SMMU
    /// reads at physical address `phys`.
    pub const fn new(words: &'a [AtomicU64], phys: u64) -> Self {
        Self { words, phys }
    }

    /// Returns the physical address of the queue.
    pub const fn phys(&self) -> u64 {
        self.phys
    }

    fn clean(&self, cache: &impl CacheMaintenance, entry: usize, n: usize) -> Result<(), Error> {
        let at = entry * 2;
        let Some(w) = self.words.get(at..at + n * 2) else {
            return Err(Error::BadPointer("command queue entry"));
        };
        let cpu = NonNull::from(w).cast::<u8>();
        cache.clean(cpu, self.phys + (entry * CMD_BYTES) as u64, n * CMD_BYTES)?;
        Ok(())
    }

    fn store(&self, entry: usize, cmd: [u64; 2]) -> Result<(), Error> {
        let w = self
            .words
            .get(entry * 2..entry * 2 + 2)
            .ok_or(Error::BadPointer("command queue entry"))?;
        w[0].store(cmd[0], Ordering::Relaxed);
        w[1].store(cmd[1], Ordering::Relaxed);
        Ok(())
    }

    fn load(&self, entry: usize) -> Result<[u64; 2], Error> {
        let w = self
            .words
            .get(entry * 2..entry * 2 + 2)
            .ok_or(Error::BadPointer("command queue entry"))?;
        Ok([w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed)])
    }
}

/// What `CMDQ_CONS` said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cons {
    /// The read pointer (index and wrap bit).
    pub ptr: u32,
    /// The error of the command at `ptr`, when the SMMU stopped there.
    pub error: Option<CmdqErrorKind>,
}

/// A command the SMMU rejected and [`Producer::skip_rejected`] replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Why the SMMU stopped at it.
    pub kind: CmdqErrorKind,
    /// Its raw words.
    pub raw: [u64; 2],
}

/// The producer side of one command queue: its PROD, the last CONS read,
/// and the entries written but not yet published.
#[derive(Clone, Copy, Debug)]
pub struct Producer {
    q: QueueIndex,
    prod: u32,
    cons: u32,
    unpublished: u32,
}

impl Producer {
    /// Returns the producer of an empty queue of `2^log2` entries (PROD =
    /// CONS = 0, as after programming `CMDQ_BASE`).
    pub const fn new(log2: u8) -> Self {
        Self {
            q: QueueIndex::new(log2),
            prod: 0,
            cons: 0,
            unpublished: 0,
        }
    }

    /// Returns the queue's index arithmetic.
    pub const fn queue(&self) -> QueueIndex {
        self.q
    }

    /// Returns PROD as the producer knows it (written entries included).
    pub const fn prod(&self) -> u32 {
        self.prod
    }

    /// Returns the entries free according to the last CONS read.
    pub const fn space(&self) -> u32 {
        self.q.space(self.prod, self.cons)
    }

    /// Forgets everything: the queue registers were reprogrammed.
    pub fn reset(&mut self) {
        self.prod = 0;
        self.cons = 0;
        self.unpublished = 0;
    }

    /// Writes an encoded command at PROD, not yet visible to the SMMU.
    ///
    /// Returns the command's queue pointer (for [`Producer::is_consumed`]).
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`] when the last CONS read leaves no room (read
    /// CONS again or wait); [`Error::BadPointer`] when `mem` is smaller
    /// than the queue.
    pub fn write(&mut self, mem: &QueueMemory<'_>, cmd: [u64; 2]) -> Result<u32, Error> {
        if self.space() == 0 {
            return Err(Error::QueueFull);
        }
        let at = self.prod;
        mem.store(self.q.index(at) as usize, cmd)?;
        self.prod = self.q.advance(at, 1);
        Ok(at)
    }

    /// Makes the entries written since the last call visible to the SMMU:
    /// cleans them (non-coherent queue), orders every earlier store the
    /// device must see before the doorbell (`device_write_barrier`), and
    /// writes `CMDQ_PROD`.
    ///
    /// # Errors
    ///
    /// [`Error::Cache`] from a clean; nothing is published then.
    pub fn publish(
        &mut self,
        mem: &QueueMemory<'_>,
        cache: &impl CacheMaintenance,
        regs: &impl RegisterFrame,
    ) -> Result<(), Error> {
        let n = self.q.used(self.prod, self.unpublished) as usize;
        if n > 0 {
            let first = self.q.index(self.unpublished) as usize;
            let till_end = (self.q.entries() as usize - first).min(n);
            mem.clean(cache, first, till_end)?;
            if n > till_end {
                mem.clean(cache, 0, n - till_end)?;
            }
            self.unpublished = self.prod;
        }
        cache.device_write_barrier();
        regs.write32(regs::CMDQ_PROD, self.prod);
        Ok(())
    }

    /// Reads `CMDQ_CONS`, refusing a value no queue can have (ahead of
    /// PROD: trusting it would overwrite commands the SMMU has not read).
    ///
    /// # Errors
    ///
    /// [`Error::BadPointer`] for an impossible read pointer.
    pub fn read_cons(&mut self, regs: &impl RegisterFrame) -> Result<Cons, Error> {
        let raw = regs.read32(regs::CMDQ_CONS);
        let ptr = raw & self.q.ptr_mask();
        if self.q.used(self.prod, ptr) > self.q.entries() {
            return Err(Error::BadPointer("CMDQ_CONS"));
        }
        self.cons = ptr;
        let error = match cmdq_cons::ERR.get(raw.into()) {
            cmdq_cons::CERROR_NONE => None,
            cmdq_cons::CERROR_ILL => Some(CmdqErrorKind::Illegal),
            cmdq_cons::CERROR_ABT => Some(CmdqErrorKind::Abort),
            cmdq_cons::CERROR_ATC_INV_SYNC => Some(CmdqErrorKind::AtcInvSync),
            other => Some(CmdqErrorKind::Other(other as u8)),
        };
        Ok(Cons { ptr, error })
    }

    /// Returns whether the entry at pointer `at` was consumed, per the last
    /// CONS read.
    pub const fn is_consumed(&self, at: u32) -> bool {
        self.q.consumed(at, self.prod, self.cons)
    }

    /// Returns whether `GERROR.CMDQ_ERR` is active (the SMMU stopped at a
    /// command and waits for it to be handled).
    pub fn error_active(regs: &impl RegisterFrame) -> bool {
        let g = regs.read32(regs::GERROR) ^ regs.read32(regs::GERRORN);
        g & gerror::CMDQ_ERR.mask() as u32 != 0
    }

    /// Replaces the command at CONS, which the SMMU rejected, by a CMD_SYNC
    /// (no signal) so the queue can resume once `GERROR.CMDQ_ERR` is
    /// acknowledged (the caller acknowledges: it may handle other GERROR
    /// bits at the same time).
    ///
    /// Returns what was rejected.
    ///
    /// # Errors
    ///
    /// [`Error::BadPointer`], [`Error::Cache`].
    pub fn skip_rejected(
        &mut self,
        mem: &QueueMemory<'_>,
        cache: &impl CacheMaintenance,
        regs: &impl RegisterFrame,
    ) -> Result<Rejected, Error> {
        let cons = self.read_cons(regs)?;
        let entry = self.q.index(cons.ptr) as usize;
        let raw = mem.load(entry)?;
        let nop = Command::Sync {
            signal: SyncSignal::None,
        }
        .encode()?;
        mem.store(entry, nop)?;
        mem.clean(cache, entry, 1)?;
        cache.device_write_barrier();
        Ok(Rejected {
            kind: cons.error.unwrap_or(CmdqErrorKind::Other(0)),
            raw,
        })
    }

    /// Issues `cmds` and a CMD_SYNC, and waits (at most `timeout_us` per
    /// wait) for the SMMU to consume them, for a caller that owns the queue
    /// and no `Smmu`. A rejected command is skipped (replaced by a
    /// CMD_SYNC, `GERROR.CMDQ_ERR` acknowledged) and reported after the
    /// rest completed. Every command is encoded before any is written, so
    /// a bad operand issues nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Command`] (nothing issued), [`Error::Timeout`],
    /// [`Error::BadPointer`], [`Error::Cache`], [`Error::CommandRejected`].
    pub fn submit<I>(
        &mut self,
        mem: &QueueMemory<'_>,
        cache: &impl CacheMaintenance,
        regs: &impl RegisterFrame,
        clock: &impl Clock,
        timeout_us: u64,
        cmds: I,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = Command>,
        I::IntoIter: Clone,
    {
        let cmds = cmds.into_iter();
        for c in cmds.clone() {
            c.encode()?;
        }
        let mut rejected = None;
        let sync = Command::Sync {
            signal: SyncSignal::None,
        };
        let mut last = 0;
        for c in cmds.chain(core::iter::once(sync)) {
            let words = c.encode()?;
            loop {
                match self.write(mem, words) {
                    Ok(at) => {
                        last = at;
                        break;
                    }
                    Err(Error::QueueFull) => {
                        self.publish(mem, cache, regs)?;
                        let r =
                            self.wait(mem, cache, regs, clock, timeout_us, |p| p.space() > 0)?;
                        rejected = rejected.or(r);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.publish(mem, cache, regs)?;
        let r = self.wait(mem, cache, regs, clock, timeout_us, |p| p.is_consumed(last))?;
        match rejected.or(r) {
            Some(r) => Err(Error::CommandRejected {
                kind: r.kind,
                raw: r.raw,
                decoded: Command::decode(r.raw).ok(),
            }),
            None => Ok(()),
        }
    }

    /// Polls CONS until `done`, skipping rejected commands on the way;
    /// returns the first rejection.
    fn wait(
        &mut self,
        mem: &QueueMemory<'_>,
        cache: &impl CacheMaintenance,
        regs: &impl RegisterFrame,
        clock: &impl Clock,
        timeout_us: u64,
        done: impl Fn(&Self) -> bool,
    ) -> Result<Option<Rejected>, Error> {
        let mut rejected = None;
        poll(clock, timeout_us, false, || {
            if let Err(e) = self.read_cons(regs) {
                return Some(Err(e));
            }
            if done(self) {
                return Some(Ok(()));
            }
            if Self::error_active(regs) {
                match self.skip_rejected(mem, cache, regs) {
                    Ok(r) => {
                        rejected = rejected.or(Some(r));
                        let g = regs.read32(regs::GERROR);
                        let n = regs.read32(regs::GERRORN);
                        let ack = (g ^ n) & gerror::CMDQ_ERR.mask() as u32;
                        regs.write32(regs::GERRORN, n ^ ack);
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            None
        })
        .map_err(|_| Error::Timeout("command queue"))??;
        Ok(rejected)
    }
}
