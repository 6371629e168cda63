//! Command queue producer.

use super::{Inner, Stats};
use crate::cmdq::{Producer, QueueMemory};
use crate::command::{Command, SyncSignal};
use crate::env::{DmaMemory, SmmuEnv, poll};
use crate::layout::cmd::CMD_BYTES;
use crate::mem::DevBlock;
use crate::probe::Features;
use crate::regs::q_base;
use crate::{Error, layout};

/// How CMD_SYNC completion is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMethod {
    /// SEV when advertised (and not disabled by errata), else polling.
    Auto,
    /// Poll CMDQ_CONS.
    Poll,
    /// Wait for events (WFE) woken by the SMMU's SEV, re-reading CMDQ_CONS;
    /// polling when SEV is not usable.
    Sev,
    /// The CMD_SYNC writes a sequence number to memory; poll that word.
    /// Polling CMDQ_CONS when MSIs are not supported.
    Msi,
}

/// Returns the completion method to use: the one asked for when the SMMU
/// supports it, else polling (SEV and MSI are optimisations, never needed
/// for correctness).
pub(super) fn resolve_sync(want: SyncMethod, f: &Features) -> SyncMethod {
    match want {
        SyncMethod::Auto | SyncMethod::Sev if f.sev => SyncMethod::Sev,
        SyncMethod::Msi if f.msi => SyncMethod::Msi,
        _ => SyncMethod::Poll,
    }
}

/// Commands per batch before a CMD_SYNC is forced (MMU-700 erratum).
const FORCED_SYNC_BATCH: usize = 63;

pub(crate) struct Cmdq {
    blk: DevBlock,
    prod: Producer,
    sync: SyncMethod,
    msi: Option<DevBlock>,
    msi_seq: u32,
    rejection: Option<Error>,
}

impl Cmdq {
    pub(super) fn new(mem: &impl DmaMemory, log2: u8, sync: SyncMethod) -> Result<Self, Error> {
        let blk = DevBlock::alloc(mem, (1usize << log2) * CMD_BYTES)?;
        blk.clean(mem, 0, blk.size())?;
        let msi = match sync {
            SyncMethod::Msi => {
                let m = DevBlock::alloc(mem, 64)?;
                // Written by the SMMU: no dirty CPU line may shadow it.
                m.clean(mem, 0, 64)?;
                Some(m)
            }
            _ => None,
        };
        Ok(Self {
            blk,
            prod: Producer::new(log2),
            sync,
            msi,
            msi_seq: 0,
            rejection: None,
        })
    }

    pub(super) fn base_reg(&self) -> u64 {
        q_base::ALLOC.make(1)
            | (self.blk.phys() & q_base::ADDR.mask())
            | q_base::LOG2SIZE.make(self.prod.queue().log2().into())
    }

    pub(super) fn reset_ptrs(&mut self) {
        self.prod.reset();
    }

    pub(super) fn sync_method(&self) -> SyncMethod {
        self.sync
    }

    pub(super) fn take_rejection(&mut self) -> Option<Error> {
        self.rejection.take()
    }

    /// Frees the queue memory.
    ///
    /// # Safety
    ///
    /// The SMMU no longer reads the queue (CMDQEN acknowledged clear).
    pub(super) unsafe fn free(&mut self, mem: &impl DmaMemory) {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.blk.take().free(mem);
            if let Some(mut m) = self.msi.take() {
                m.take().free(mem);
            }
        }
    }

    /// Replaces the command at CONS, which the SMMU rejected, by a CMD_SYNC
    /// so the queue can resume, and records the rejection.
    pub(super) fn skip_bad_command<E: SmmuEnv>(&mut self, inner: &Inner<E>) -> Result<(), Error> {
        let mem = QueueMemory::new(self.blk.words(), self.blk.phys());
        let r = self.prod.skip_rejected(&mem, &inner.mem, &inner.regs)?;
        if self.rejection.is_none() {
            self.rejection = Some(Error::CommandRejected {
                kind: r.kind,
                raw: r.raw,
                decoded: Command::decode(r.raw).ok(),
            });
        }
        Ok(())
    }
}

impl<E: SmmuEnv> Inner<E> {
    fn read_cons(&self, q: &mut Cmdq) -> Result<u32, Error> {
        Ok(q.prod.read_cons(&self.regs)?.ptr)
    }

    /// Makes the queued commands (and every earlier store the device must
    /// see: STEs, CDs, page tables) visible, then rings the doorbell.
    fn publish(&self, q: &mut Cmdq) -> Result<(), Error> {
        let mem = QueueMemory::new(q.blk.words(), q.blk.phys());
        q.prod.publish(&mem, &self.mem, &self.regs)
    }

    /// Waits until the queue has room for one more entry.
    fn wait_space(&self, q: &mut Cmdq) -> Result<(), Error> {
        if q.prod.space() > 0 {
            return Ok(());
        }
        self.read_cons(q)?;
        if q.prod.space() > 0 {
            return Ok(());
        }
        // Let the SMMU see what is queued, then wait for it to make room.
        self.publish(q)?;
        let use_wfe = q.sync == SyncMethod::Sev;
        poll(&self.clock, self.timeout(), use_wfe, || {
            if Producer::error_active(&self.regs) {
                if let Err(e) = self.service_gerror(q) {
                    return Some(Err(e));
                }
            }
            if let Err(e) = self.read_cons(q) {
                return Some(Err(e));
            }
            (q.prod.space() > 0).then_some(Ok(()))
        })
        .map_err(|_| Error::Timeout("command queue space"))?
    }

    fn push(&self, q: &mut Cmdq, words: [u64; 2], opcode: u8) -> Result<u32, Error> {
        self.wait_space(q)?;
        let mem = QueueMemory::new(q.blk.words(), q.blk.phys());
        let at = q.prod.write(&mem, words)?;
        Stats::bump(&self.stats.by_opcode[opcode as usize], 1);
        Ok(at)
    }

    fn sync_and_wait(&self, q: &mut Cmdq) -> Result<(), Error> {
        let signal = match (&q.msi, q.sync) {
            (Some(m), SyncMethod::Msi) => {
                q.msi_seq = q.msi_seq.wrapping_add(1);
                SyncSignal::Msi {
                    addr: m.phys(),
                    data: q.msi_seq,
                }
            }
            (_, SyncMethod::Sev) => SyncSignal::Sev,
            _ => SyncSignal::None,
        };
        let cmd = Command::Sync { signal };
        let at = self.push(q, cmd.encode()?, layout::cmd::op::SYNC)?;
        self.publish(q)?;
        let use_wfe = q.sync == SyncMethod::Sev;
        let seq = q.msi_seq;
        let res = poll(&self.clock, self.timeout(), use_wfe, || {
            // Completion first: the SMMU stops consuming at a command error
            // until it is acknowledged, so a consumed CMD_SYNC means every
            // command before it was handled, and the error registers need
            // reading only while waiting.
            let done = match (&q.msi, q.sync) {
                (Some(m), SyncMethod::Msi) => {
                    if let Err(e) = m.invalidate(&self.mem, 0, 8) {
                        return Some(Err(e));
                    }
                    m.read(0) as u32 == seq
                }
                _ => match self.read_cons(q) {
                    Ok(_) => q.prod.is_consumed(at),
                    Err(e) => return Some(Err(e)),
                },
            };
            if done {
                return Some(Ok(()));
            }
            if Producer::error_active(&self.regs) {
                if let Err(e) = self.service_gerror(q) {
                    return Some(Err(e));
                }
            }
            None
        });
        res.map_err(|_| Error::Timeout("CMD_SYNC completion"))??;
        Stats::bump(&self.stats.syncs, 1);
        if q.sync == SyncMethod::Msi {
            self.read_cons(q)?;
        }
        Ok(())
    }

    /// Issues `cmds` and, when `sync`, a CMD_SYNC, waiting for completion.
    pub(crate) fn issue(&self, cmds: &[Command], sync: bool) -> Result<(), Error> {
        self.issue_iter(cmds.iter().copied(), sync)
    }

    /// As [`Inner::issue`] for commands from an iterator (a TLBI plan),
    /// without allocating: every command is encoded once to check it (a bad
    /// operand issues nothing), then again as it is written to the queue.
    pub(crate) fn issue_iter<I>(&self, cmds: I, sync: bool) -> Result<(), Error>
    where
        I: IntoIterator<Item = Command>,
        I::IntoIter: Clone,
    {
        let cmds = cmds.into_iter();
        for c in cmds.clone() {
            c.encode()?;
        }
        self.issue_encodable(cmds, sync)
    }

    /// As [`Inner::issue_iter`] for commands known to encode (a TLBI plan:
    /// the planner emits only encodable commands), so they are encoded
    /// once. A command that does not encode after all stops the batch
    /// there with its error.
    pub(crate) fn issue_encodable<I>(&self, cmds: I, sync: bool) -> Result<(), Error>
    where
        I: Iterator<Item = Command>,
    {
        if !self.cmdq_on.load(core::sync::atomic::Ordering::Acquire) {
            return Err(Error::QueueDisabled);
        }
        let mut q = self.cmdq.lock();
        let chunk = if self.features.errata.force_sync {
            FORCED_SYNC_BATCH
        } else {
            usize::MAX
        };
        let mut since_sync = 0;
        for c in cmds {
            if since_sync == chunk {
                self.sync_and_wait(&mut q)?;
                since_sync = 0;
            }
            self.push(&mut q, c.encode()?, c.opcode())?;
            since_sync += 1;
        }
        if sync {
            self.sync_and_wait(&mut q)?;
        } else {
            self.publish(&mut q)?;
        }
        match q.take_rejection() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
