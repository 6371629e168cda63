//! The public command-queue producer, driven without the `Smmu` object as
//! a hypervisor that owns the queue would: over queue memory it allocated,
//! against the model's registers.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use io_pgtable::env::{CacheMaintenance, TableBlock, TableMemory};

use sim_memory::{Coherency, SimMemory};
use smmuv3::cmdq::{Producer, QueueMemory};
use smmuv3::command::{Command, TlbiAddr};
use smmuv3::env::RegisterFrame;
use smmuv3::regs::{self, cr0, q_base};
use smmuv3::{CmdqErrorKind, Error};
use smmuv3_hosted::{MEM_BASE, ModelFrame, PollClock, SimDmaMemory};
use smmuv3_model::{ModelConfig, SmmuModel};

const LOG2: u8 = 3;

struct Rig {
    model: Arc<SmmuModel>,
    frame: ModelFrame,
    mem: SimDmaMemory,
    blk: TableBlock,
    clock: PollClock,
}

const QUEUE_BYTES: usize = 16 << LOG2;

fn rig(coh: Coherency) -> Rig {
    let sim = Arc::new(SimMemory::new(MEM_BASE, 4 << 20, coh).unwrap());
    let model = Arc::new(SmmuModel::new(ModelConfig::default(), sim.clone()).unwrap());
    let frame = ModelFrame::new(model.clone());
    let mem = SimDmaMemory::new(sim);
    let blk = mem.alloc_table(QUEUE_BYTES).unwrap();
    mem.clean(blk.cpu, blk.phys, QUEUE_BYTES).unwrap();
    let base = q_base::ALLOC.make(1) | blk.phys | q_base::LOG2SIZE.make(LOG2.into());
    frame.write64(regs::CMDQ_BASE, base);
    frame.write32(regs::CMDQ_PROD, 0);
    frame.write32(regs::CMDQ_CONS, 0);
    frame.write32(regs::CR0, cr0::CMDQEN.make(1) as u32);
    assert_eq!(frame.read32(regs::CR0ACK), cr0::CMDQEN.make(1) as u32);
    Rig {
        model,
        frame,
        mem,
        blk,
        clock: PollClock::default(),
    }
}

impl Rig {
    /// The queue memory, as a hypervisor holding it would borrow it.
    fn queue(&self) -> QueueMemory<'_> {
        // SAFETY: the block is `QUEUE_BYTES` of table memory from
        // `self.mem`, 64-byte aligned, never freed while `self` lives (the
        // memory is kept alive by `self.mem`), and only ever accessed
        // atomically (by us and by the model).
        let words = unsafe {
            std::slice::from_raw_parts(self.blk.cpu.as_ptr().cast::<AtomicU64>(), QUEUE_BYTES / 8)
        };
        QueueMemory::new(words, self.blk.phys)
    }

    fn submit(&self, p: &mut Producer, cmds: &[Command]) -> Result<(), Error> {
        let q = self.queue();
        p.submit(
            &q,
            &self.mem,
            &self.frame,
            &self.clock,
            1000,
            cmds.iter().copied(),
        )
    }
}

fn tlbi(asid: u16) -> Command {
    Command::TlbiNhVa {
        vmid: 0,
        asid,
        at: TlbiAddr {
            addr: 0x1000,
            leaf: true,
            ..Default::default()
        },
    }
}

#[test]
fn submits_commands_and_waits_for_their_sync() {
    for coh in [Coherency::Coherent, Coherency::NonCoherent] {
        let r = rig(coh);
        let mut p = Producer::new(LOG2);
        r.submit(&mut p, &[tlbi(1), Command::TlbiNsnhAll]).unwrap();
        let st = r.model.stats();
        assert_eq!(st.commands[0x12], 1, "{coh:?}: TLBI_NH_VA executed");
        assert_eq!(st.commands[0x30], 1);
        assert_eq!(st.commands[0x46], 1, "one CMD_SYNC");
        assert_eq!(r.frame.read32(regs::CMDQ_CONS) & 0xf, p.prod());
    }
}

#[test]
fn wraps_a_small_queue_waiting_for_space() {
    let r = rig(Coherency::NonCoherent);
    let mut p = Producer::new(LOG2);
    // Three times the queue's 8 entries in one submission.
    let cmds: Vec<Command> = (0..24).map(|k| tlbi(k as u16)).collect();
    r.submit(&mut p, &cmds).unwrap();
    r.submit(&mut p, &cmds[..5]).unwrap();
    assert_eq!(r.model.stats().commands[0x12], 29);
    assert_eq!(r.model.stats().illegal_commands, 0);
}

#[test]
fn a_rejected_command_is_skipped_and_reported() {
    let r = rig(Coherency::Coherent);
    let mut p = Producer::new(LOG2);
    // Write an illegal command by hand (opcode 0x7f), then submit more.
    let q = r.queue();
    p.write(&q, [0x7f, 0]).unwrap();
    let e = r.submit(&mut p, &[tlbi(3)]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::CommandRejected {
                kind: CmdqErrorKind::Illegal,
                raw: [0x7f, 0],
                ..
            }
        ),
        "{e:?}"
    );
    // The rest ran, GERROR.CMDQ_ERR is acknowledged, and the queue works.
    assert_eq!(r.model.stats().commands[0x12], 1);
    let g = r.frame.read32(regs::GERROR) ^ r.frame.read32(regs::GERRORN);
    assert_eq!(g & 1, 0);
    r.submit(&mut p, &[tlbi(4)]).unwrap();
}

#[test]
fn a_bad_operand_issues_nothing_and_a_stopped_queue_times_out() {
    let r = rig(Coherency::Coherent);
    let mut p = Producer::new(LOG2);
    let bad = Command::TlbiNhVa {
        vmid: 0,
        asid: 0,
        at: TlbiAddr {
            addr: 0x123,
            ..Default::default()
        },
    };
    assert!(matches!(
        r.submit(&mut p, &[tlbi(1), bad]),
        Err(Error::Command(_))
    ));
    assert_eq!(p.prod(), 0, "nothing written");
    r.model.pause_commands();
    assert_eq!(
        r.submit(&mut p, &[tlbi(1)]),
        Err(Error::Timeout("command queue"))
    );
    r.model.resume_commands();
    r.submit(&mut p, &[tlbi(2)]).unwrap();
}

/// A frame whose CMDQ_CONS lies (a broken device, or a host forging it).
struct LyingCons<'a>(&'a ModelFrame, u32);

impl RegisterFrame for LyingCons<'_> {
    fn read32(&self, offset: usize) -> u32 {
        if offset == regs::CMDQ_CONS {
            self.1
        } else {
            self.0.read32(offset)
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        self.0.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.0.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.0.write64(offset, value)
    }
}

#[test]
fn an_impossible_cons_is_refused() {
    let r = rig(Coherency::Coherent);
    let mut p = Producer::new(LOG2);
    let q = r.queue();
    p.write(&q, tlbi(1).encode().unwrap()).unwrap();
    // PROD is 1: a CONS of 5 (ahead of it) is no state a queue can be in.
    assert_eq!(
        p.read_cons(&LyingCons(&r.frame, 5)),
        Err(Error::BadPointer("CMDQ_CONS"))
    );
    // A CONS within [0, PROD] is taken.
    assert_eq!(p.read_cons(&LyingCons(&r.frame, 1)).map(|c| c.ptr), Ok(1));
    assert_eq!(p.space(), 8);
}
