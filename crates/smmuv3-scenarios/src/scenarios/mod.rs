//! The scenarios, in the order a run executes them.

mod bypass;
mod probe;

use alloc::vec;
use alloc::vec::Vec;

use crate::{DmaBuffer, DmaDevice, Platform, Problem, Scenario};

/// Names of all scenarios, in run order (the host-side QEMU tests use it).
pub const SCENARIOS: &[&str] = &["probe", "bypass-dma", "abort-dma"];

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
    ];
    debug_assert!(list.iter().map(|s| s.name).eq(SCENARIOS.iter().copied()));
    list
}

/// Byte the CPU leaves in destination buffers, to tell "not written" apart.
pub(crate) const SENTINEL: u8 = 0x5a;

/// Returns the test pattern byte at `i` for `seed` (never the sentinel run).
pub(crate) fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add(seed) ^ ((i >> 8) as u8)
}

/// Fills `[off, off + len)` of `buf` with the pattern of `seed`.
pub(crate) fn fill_pattern<P: Platform>(
    p: &P,
    buf: &DmaBuffer,
    off: usize,
    len: usize,
    seed: u8,
) -> Result<(), Problem> {
    let data: Vec<u8> = (0..len).map(|i| pattern(seed, i)).collect();
    buf.write(p.env(), off, &data)
}

/// Checks that `[off, off + len)` of `buf` holds the pattern of `seed`.
pub(crate) fn check_pattern<P: Platform>(
    p: &P,
    buf: &DmaBuffer,
    off: usize,
    len: usize,
    seed: u8,
) -> Result<(), Problem> {
    let mut got = vec![0u8; len];
    buf.read(p, off, &mut got)?;
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
pub(crate) fn untouched<P: Platform>(
    p: &P,
    buf: &DmaBuffer,
    off: usize,
    len: usize,
) -> Result<bool, Problem> {
    let mut got = vec![0u8; len];
    buf.read(p, off, &mut got)?;
    Ok(got.iter().all(|&b| b == SENTINEL))
}

/// Makes the device read `len` bytes at `src_iova` and write them back to
/// `dst_iova`: one DMA read and one DMA write through the SMMU.
pub(crate) fn copy_through_device<P: Platform>(
    p: &mut P,
    src_iova: u64,
    dst_iova: u64,
    len: usize,
) -> Result<(), Problem> {
    let dev = p.device();
    dev.read_from_bus(src_iova, 0, len).map_err(|e| {
        Problem::fail(format_args!(
            "device read of {len} bytes at iova {src_iova:#x}: {e}"
        ))
    })?;
    dev.write_to_bus(0, dst_iova, len).map_err(|e| {
        Problem::fail(format_args!(
            "device write of {len} bytes at iova {dst_iova:#x}: {e}"
        ))
    })
}

/// The full data check: pattern in `src`, sentinel in `dst`, copy through the
/// device at the given IOVAs, pattern expected in `dst`.
pub(crate) fn round_trip<P: Platform>(
    p: &mut P,
    (src, src_off, src_iova): (&DmaBuffer, usize, u64),
    (dst, dst_off, dst_iova): (&DmaBuffer, usize, u64),
    len: usize,
    seed: u8,
) -> Result<(), Problem> {
    fill_pattern(p, src, src_off, len, seed)?;
    dst.fill(p.env(), dst_off, len, SENTINEL)?;
    copy_through_device(p, src_iova, dst_iova, len)?;
    check_pattern(p, dst, dst_off, len, seed)
}

/// Returns the device's largest transfer, capped at one 4 KiB page.
pub(crate) fn page_transfer<P: Platform>(p: &mut P) -> usize {
    p.device().buffer_size().min(4096)
}
