//! The scenarios, in the order a run executes them, and what they share.

mod blocks;
mod bypass;
mod faults;
mod granules;
mod hyp;
mod inflight;
mod overflow;
mod probe;
mod tlb;
mod transitions;
mod translate;
mod trap;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Display;

use smmuv3::driver::StrtabFormat;
use smmuv3::env::{Clock, DmaMemory, SmmuEnv};
use smmuv3::event::{Event, EventType};
use smmuv3::{Domain, Smmu, SmmuConfig};

use crate::{DmaBuffer, DmaDevice, Platform, Problem, Scenario};

/// Names of all scenarios, in run order (the host-side tests list them too).
pub const SCENARIOS: &[&str] = &[
    "probe",
    "bypass-dma",
    "abort-dma",
    "linear-stream-table",
    "stage1-dma",
    "stage2-dma",
    "nested-dma",
    "nested-s2-unmap",
    "two-level-stream-table",
    "fault-translation",
    "fault-permission",
    "stale-tlb-range-tlbi",
    "unmap-then-fault",
    "scatter-gather-blocks",
    "granules-dma",
    "event-overflow",
    "ste-transitions",
    "ste-switch-under-dma",
    "hyp-shadow",
    "hyp-trap",
];

/// Returns every scenario for platform `P`, in run order.
pub(crate) fn all<P: Platform>() -> Vec<Scenario<P>> {
    let list: Vec<Scenario<P>> = vec![
        Scenario {
            name: "probe",
            run: probe::run,
        },
        Scenario {
            name: "bypass-dma",
            run: bypass::bypass,
        },
        Scenario {
            name: "abort-dma",
            run: bypass::abort,
        },
        // First of the driver scenarios: QEMU 10 keeps walking a 2-level
        // table once one was configured, even after STRTAB_BASE_CFG is
        // rewritten with FMT = linear (see baremetal/README.md).
        Scenario {
            name: "linear-stream-table",
            run: translate::linear_table,
        },
        Scenario {
            name: "stage1-dma",
            run: translate::stage1,
        },
        Scenario {
            name: "stage2-dma",
            run: translate::stage2,
        },
        Scenario {
            name: "nested-dma",
            run: translate::nested,
        },
        Scenario {
            name: "nested-s2-unmap",
            run: translate::nested_s2_unmap,
        },
        Scenario {
            name: "two-level-stream-table",
            run: translate::two_level_table,
        },
        Scenario {
            name: "fault-translation",
            run: faults::translation,
        },
        Scenario {
            name: "fault-permission",
            run: faults::permission,
        },
        Scenario {
            name: "stale-tlb-range-tlbi",
            run: tlb::stale_then_range_tlbi,
        },
        Scenario {
            name: "unmap-then-fault",
            run: faults::unmap_then_fault,
        },
        Scenario {
            name: "scatter-gather-blocks",
            run: blocks::scatter_gather,
        },
        Scenario {
            name: "granules-dma",
            run: granules::run,
        },
        Scenario {
            name: "event-overflow",
            run: overflow::run,
        },
        Scenario {
            name: "ste-transitions",
            run: transitions::run,
        },
        Scenario {
            name: "ste-switch-under-dma",
            run: inflight::run,
        },
        Scenario {
            name: "hyp-shadow",
            run: hyp::shadow,
        },
        Scenario {
            name: "hyp-trap",
            run: trap::run,
        },
    ];
    debug_assert!(list.iter().map(|s| s.name).eq(SCENARIOS.iter().copied()));
    list
}

/// The driver instance of a platform.
pub(crate) type Drv<P> = Smmu<Parts<P>>;
/// A translation domain of a platform's driver.
pub(crate) type Dom<P> = Domain<Parts<P>>;
/// The driver environment of a platform: its register frame, memory and
/// clock.
pub(crate) type Parts<P> = (
    <P as Platform>::Regs,
    <P as Platform>::Mem,
    <P as Platform>::Clock,
);
/// A DMA buffer from the platform's memory.
pub(crate) type Buf<P> = DmaBuffer<<P as Platform>::Mem>;

/// Turns any displayable error into a scenario failure saying what failed.
pub(crate) trait Context<T> {
    /// Returns the value, or a failure "`what`: error".
    fn ctx(self, what: &str) -> Result<T, Problem>;
}

impl<T, E: Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, Problem> {
        self.map_err(|e| Problem::Fail(format!("{what}: {e}")))
    }
}

/// Prefixes a failure message with where it happened (skips pass through).
pub(crate) fn within(what: &str) -> impl Fn(Problem) -> Problem + '_ {
    move |e| match e {
        Problem::Fail(m) => Problem::Fail(format!("{what}: {m}")),
        skip => skip,
    }
}

/// Byte the CPU leaves in destination buffers, to tell "not written" apart.
pub(crate) const SENTINEL: u8 = 0x5a;

/// Brings up our driver on the platform's SMMU with a stream table format.
pub(crate) fn bring_up<P: Platform>(p: &P, strtab: StrtabFormat) -> Result<Drv<P>, Problem> {
    let cfg = SmmuConfig {
        strtab,
        ..SmmuConfig::default()
    };
    Smmu::new(p.regs(), p.mem(), p.clock(), cfg).ctx("driver bring-up")
}

/// Returns a zeroed DMA buffer of `size` bytes.
pub(crate) fn buffer<P: Platform>(p: &P, size: usize) -> Result<Buf<P>, Problem> {
    DmaBuffer::new(p.mem(), size)
}

/// Returns the test pattern byte at `i` for `seed`.
pub(crate) fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add(seed) ^ ((i >> 8) as u8)
}

/// Fills `[off, off + len)` of `buf` with the pattern of `seed`.
pub(crate) fn fill_pattern<M: DmaMemory>(
    buf: &DmaBuffer<M>,
    off: usize,
    len: usize,
    seed: u8,
) -> Result<(), Problem> {
    let data: Vec<u8> = (0..len).map(|i| pattern(seed, i)).collect();
    buf.write(off, &data)
}

/// Checks that `[off, off + len)` of `buf` holds the pattern of `seed`.
pub(crate) fn check_pattern<M: DmaMemory>(
    buf: &DmaBuffer<M>,
    off: usize,
    len: usize,
    seed: u8,
) -> Result<(), Problem> {
    let mut got = vec![0u8; len];
    buf.read(off, &mut got)?;
    if let Some(i) = (0..len).find(|&i| got[i] != pattern(seed, i)) {
        return Err(Problem::fail(format_args!(
            "data mismatch at byte {i} of {len} (pa {:#x}): got {:#04x}, want {:#04x}{}",
            buf.phys() + (off + i) as u64,
            got[i],
            pattern(seed, i),
            if got[i] == SENTINEL {
                " (never written)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Returns whether `[off, off + len)` of `buf` still holds only the sentinel.
pub(crate) fn untouched<M: DmaMemory>(
    buf: &DmaBuffer<M>,
    off: usize,
    len: usize,
) -> Result<bool, Problem> {
    let mut got = vec![0u8; len];
    buf.read(off, &mut got)?;
    Ok(got.iter().all(|&b| b == SENTINEL))
}

/// Makes the device read `len` bytes at `src_iova` into its buffer.
pub(crate) fn dev_read<P: Platform>(p: &mut P, src_iova: u64, len: usize) -> Result<(), Problem> {
    p.device().read_from_bus(src_iova, 0, len).map_err(|e| {
        Problem::fail(format_args!(
            "device read of {len} bytes at iova {src_iova:#x}: {e}"
        ))
    })
}

/// Makes the device write `len` bytes of its buffer to `dst_iova`.
pub(crate) fn dev_write<P: Platform>(p: &mut P, dst_iova: u64, len: usize) -> Result<(), Problem> {
    p.device().write_to_bus(0, dst_iova, len).map_err(|e| {
        Problem::fail(format_args!(
            "device write of {len} bytes at iova {dst_iova:#x}: {e}"
        ))
    })
}

/// The full data check: pattern in `src`, sentinel in `dst`, copy through the
/// device at the given IOVAs (one DMA read, one DMA write), pattern expected
/// in `dst`.
pub(crate) fn round_trip<P: Platform>(
    p: &mut P,
    (src, src_off, src_iova): (&Buf<P>, usize, u64),
    (dst, dst_off, dst_iova): (&Buf<P>, usize, u64),
    len: usize,
    seed: u8,
) -> Result<(), Problem> {
    fill_pattern(src, src_off, len, seed)?;
    dst.fill(dst_off, len, SENTINEL)?;
    dev_read(p, src_iova, len)?;
    dev_write(p, dst_iova, len)?;
    check_pattern(dst, dst_off, len, seed)
}

/// Returns the device's largest transfer, capped at one 4 KiB page.
pub(crate) fn page_transfer<P: Platform>(p: &mut P) -> usize {
    p.device().buffer_size().min(4096)
}

/// How long to wait for events to appear after the transfer that raised them.
const EVENT_WAIT_US: u64 = 200_000;

/// Drains the event queue of driver `smmu` (ours on the SMMU, or the host's
/// on a virtual one), waiting (bounded) until at least `want` events
/// arrived. Returns everything drained.
pub(crate) fn events<P: Platform, E: SmmuEnv>(
    p: &P,
    smmu: &Smmu<E>,
    want: usize,
) -> Result<Vec<Event>, Problem> {
    let clock = p.clock();
    let start = clock.now_us();
    let mut all = Vec::new();
    loop {
        let batch = smmu.drain_events().ctx("draining the event queue")?;
        if batch.overflowed {
            return Err(Problem::fail(format_args!("event queue overflowed")));
        }
        all.extend(batch.events);
        if all.len() >= want || clock.now_us().wrapping_sub(start) > EVENT_WAIT_US {
            return Ok(all);
        }
        clock.relax();
    }
}

/// Formats events for a failure message.
pub(crate) fn list(events: &[Event]) -> String {
    if events.is_empty() {
        return String::from("none");
    }
    let mut s = String::new();
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            s.push_str(" | ");
        }
        s.push_str(&format!("{e}"));
    }
    s
}

/// Fails unless the event queue is empty (a clean scenario raises nothing).
pub(crate) fn no_events<P: Platform, E: SmmuEnv>(
    p: &P,
    smmu: &Smmu<E>,
    when: &str,
) -> Result<(), Problem> {
    let ev = events(p, smmu, 0)?;
    if !ev.is_empty() {
        return Err(Problem::fail(format_args!(
            "unexpected events {when}: {}",
            list(&ev)
        )));
    }
    Ok(())
}

/// Fails unless exactly one event arrived and it is a stage-1 or stage-2 fault
/// of type `ty` for `sid` at input address `addr`, with the access direction.
pub(crate) fn expect_fault<P: Platform, E: SmmuEnv>(
    p: &P,
    smmu: &Smmu<E>,
    ty: EventType,
    sid: u32,
    addr: u64,
    read: bool,
) -> Result<Event, Problem> {
    let ev = events(p, smmu, 1)?;
    let [e] = ev.as_slice() else {
        return Err(Problem::fail(format_args!(
            "want exactly one {} event, got {}: {}",
            ty.name(),
            ev.len(),
            list(&ev)
        )));
    };
    let ok =
        e.ty == ty && e.sid == sid && e.fault.is_some_and(|f| f.addr == addr && f.read == read);
    if !ok {
        return Err(Problem::fail(format_args!(
            "want {} sid={sid:#x} addr={addr:#x} {}, got {e} (raw {:x?})",
            ty.name(),
            if read { "read" } else { "write" },
            e.raw
        )));
    }
    Ok(*e)
}

/// Returns `Skip` unless the SMMU has stage 2 (the virt-9.1 machine has not).
pub(crate) fn need_stage2<P: Platform>(smmu: &Drv<P>) -> Result<(), Problem> {
    if !smmu.features().stage2 {
        return Err(Problem::skip(format_args!(
            "SMMU has no stage 2 (IDR0.S2P=0)"
        )));
    }
    Ok(())
}
