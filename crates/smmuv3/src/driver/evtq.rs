//! Event queue consumer.

use alloc::vec::Vec;

use super::{Inner, Stats};
use crate::Error;
use crate::command::Command;
use crate::env::{DmaMemory, RegisterFrame, SmmuEnv};
use crate::event::Event;
use crate::layout::event::EVENT_BYTES;
use crate::mem::DevBlock;
use crate::queue::QueueIndex;
use crate::regs::{self, evtq, q_base};
use io_pgtable::env::CacheMaintenance;

/// Events drained from the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// Decoded events, oldest first.
    pub events: Vec<Event>,
    /// The SMMU overflowed the queue since the last drain: events were lost.
    pub overflowed: bool,
}

pub(crate) struct Evtq {
    blk: DevBlock,
    q: QueueIndex,
    cons: u32,
    /// Overflow flag value last acknowledged.
    ovack: bool,
}

impl Evtq {
    pub(super) fn new(mem: &impl DmaMemory, log2: u8) -> Result<Self, Error> {
        let blk = DevBlock::alloc(mem, (1usize << log2) * EVENT_BYTES)?;
        // The CPU zeroed the queue: write that back now, so no dirty line can
        // later be evicted over records the SMMU wrote.
        blk.clean(mem, 0, blk.size())?;
        Ok(Self {
            blk,
            q: QueueIndex::new(log2),
            cons: 0,
            ovack: false,
        })
    }

    pub(super) fn base_reg(&self) -> u64 {
        q_base::ALLOC.make(1)
            | (self.blk.phys() & q_base::ADDR.mask())
            | q_base::LOG2SIZE.make(self.q.log2().into())
    }

    pub(super) fn reset_ptrs(&mut self) {
        self.cons = 0;
        self.ovack = false;
    }

    /// Frees the queue memory.
    ///
    /// # Safety
    ///
    /// The SMMU no longer writes the queue (EVENTQEN acknowledged clear).
    pub(super) unsafe fn free(&mut self, mem: &impl DmaMemory) {
        // SAFETY: forwarded from the caller.
        unsafe { self.blk.take().free(mem) }
    }
}

impl<E: SmmuEnv> Inner<E> {
    pub(super) fn drain_events(&self) -> Result<EventBatch, Error> {
        let mut q = self.evtq.lock();
        let mut batch = EventBatch::default();
        // Bounded: a device that keeps producing cannot keep us here.
        for _ in 0..4 {
            let prod_reg = self.regs.read32(regs::EVENTQ_PROD);
            let prod = prod_reg & q.q.ptr_mask();
            let ovf = evtq::OVFLG.get(prod_reg.into()) != 0;
            if ovf != q.ovack {
                batch.overflowed = true;
                q.ovack = ovf;
                Stats::bump(&self.stats.overflows, 1);
            }
            if prod == q.cons {
                break;
            }
            // The records the SMMU wrote before advancing PROD are read
            // only after that register read.
            self.mem.full_barrier();
            if q.q.used(prod, q.cons) > q.q.entries() {
                // A producer more than a queue ahead is impossible: the
                // records cannot be trusted. Resynchronise and report them
                // as lost.
                batch.overflowed = true;
                Stats::bump(&self.stats.overflows, 1);
                q.cons = prod;
                break;
            }
            while q.cons != prod {
                let idx = q.q.index(q.cons) as usize;
                q.blk
                    .invalidate(&self.mem, idx * EVENT_BYTES, EVENT_BYTES)?;
                let w = core::array::from_fn(|i| q.blk.read(idx * 4 + i));
                batch.events.push(Event::decode(w));
                q.cons = q.q.advance(q.cons, 1);
            }
            // Free the slots (and acknowledge an overflow) before looking
            // again, once every read of them completed.
            self.mem.full_barrier();
            let ack = evtq::OVFLG.set(q.cons.into(), q.ovack.into()) as u32;
            self.regs.write32(regs::EVENTQ_CONS, ack);
        }
        let ack = evtq::OVFLG.set(q.cons.into(), q.ovack.into()) as u32;
        self.regs.write32(regs::EVENTQ_CONS, ack);
        Stats::bump(&self.stats.events, batch.events.len() as u64);
        drop(q);
        if self
            .abort_stalls
            .load(core::sync::atomic::Ordering::Relaxed)
        {
            let resumes: Vec<Command> = batch
                .events
                .iter()
                .filter_map(|e| {
                    let stag = e.fault?.stall_tag?;
                    Some(Command::Resume {
                        sid: e.sid,
                        stag,
                        abort: true,
                    })
                })
                .collect();
            if !resumes.is_empty() {
                self.issue_iter(resumes, true)?;
            }
        }
        Ok(batch)
    }
}
