//! The environment the driver runs in: a register frame and a clock for
//! bounded waits. Table memory and cache maintenance come from
//! `io_pgtable::env` so page tables, stream tables, CD tables and queues all
//! go through one seam.

use core::ptr::NonNull;

use io_pgtable::env::{CacheError, CacheMaintenance, TableMemory};

/// Invalidation of CPU cache lines, so the CPU reads what a non-coherent
/// device wrote (event records, CMD_SYNC MSI words).
///
/// io-pgtable's environment only needs the clean direction; the driver adds
/// this one for the memory the SMMU writes. A no-op for coherent SMMUs.
pub trait CacheInvalidate {
    /// Invalidates every cache line overlapping `[phys, phys + len)` (CPU
    /// pointer `cpu`), discarding the CPU's copy.
    ///
    /// # Errors
    ///
    /// [`CacheError`] when the environment does not manage the range.
    fn invalidate(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError>;
}

/// Everything the driver needs of memory: io-pgtable's table memory and
/// clean, plus [`CacheInvalidate`].
pub trait DmaMemory: TableMemory + CacheMaintenance + CacheInvalidate {}

impl<T: TableMemory + CacheMaintenance + CacheInvalidate> DmaMemory for T {}

/// The environment one SMMU instance runs in: its register frame, the
/// memory its structures live in, and a clock for bounded waits.
///
/// The driver's types are generic over this one trait (`Smmu<E>`,
/// `Domain<E>`) rather than over three parameters. A platform names its
/// parts once; `(R, M, C)` tuples implement it for quick assembly.
pub trait SmmuEnv {
    /// The SMMU's register frame.
    type Regs: RegisterFrame;
    /// Memory for stream tables, CD tables, queues and page tables.
    type Mem: DmaMemory;
    /// The clock of bounded waits.
    type Clock: Clock;
}

impl<R: RegisterFrame, M: DmaMemory, C: Clock> SmmuEnv for (R, M, C) {
    type Regs = R;
    type Mem = M;
    type Clock = C;
}

/// A 32/64-bit register frame (the SMMU's 128 KiB MMIO window).
///
/// Offsets are byte offsets from the frame base. Implementations must not
/// reorder accesses: a write followed by a read of another register is
/// observed by the device in that order (device memory semantics).
pub trait RegisterFrame {
    /// Returns the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Returns the 64-bit register at `offset`.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&self, offset: usize, value: u64);
}

/// A monotonic time source for bounded waits.
///
/// The driver never waits without a deadline: a device that stops
/// responding yields [`crate::Error::Timeout`].
pub trait Clock {
    /// Returns the current time in microseconds (any epoch, monotonic).
    fn now_us(&self) -> u64;

    /// Lets the device make progress between two polls (a spin hint, a
    /// yield, or a simulated device step).
    fn relax(&self) {
        core::hint::spin_loop();
    }

    /// Waits for an event (WFE) when the SMMU signals with SEV; by default
    /// the same as [`Clock::relax`]. Must return after a bounded time even
    /// if no event arrives, so polling continues.
    fn wait_for_event(&self) {
        self.relax();
    }
}

/// The deadline of a bounded wait passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

/// Polls `cond` until it returns `Some`, or until `timeout_us` elapses.
///
/// Returns the value `cond` produced.
///
/// # Errors
///
/// [`TimedOut`] when the deadline passes first.
pub fn poll<T>(
    clock: &impl Clock,
    timeout_us: u64,
    use_wfe: bool,
    mut cond: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let start = clock.now_us();
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if clock.now_us().wrapping_sub(start) > timeout_us {
            // One last look: the device may have finished while we read the clock.
            return cond().ok_or(TimedOut);
        }
        if use_wfe {
            clock.wait_for_event();
        } else {
            clock.relax();
        }
    }
}

/// A register frame reached by volatile loads and stores, for real hardware
/// (and QEMU).
pub struct MmioFrame {
    base: NonNull<u8>,
}

// SAFETY: the frame is device memory; accesses are single volatile loads and
// stores that the device serialises, so sharing the pointer between threads
// cannot create a data race in the Rust sense.
unsafe impl Send for MmioFrame {}
// SAFETY: as for `Send`; `&MmioFrame` only allows volatile register accesses.
unsafe impl Sync for MmioFrame {}

impl MmioFrame {
    /// Returns a frame over the SMMU registers mapped at `base`.
    ///
    /// # Safety
    ///
    /// `base` must point to [`crate::regs::FRAME_SIZE`] bytes of SMMUv3
    /// registers, mapped as device memory for the life of the returned
    /// value, and no other code may use the frame in a way that breaks the
    /// driver's invariants (e.g. reprogram the queues).
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base }
    }

    fn ptr<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + core::mem::size_of::<T>() <= crate::regs::FRAME_SIZE
                && offset % core::mem::size_of::<T>() == 0,
            "register offset {offset:#x} out of frame or misaligned"
        );
        self.base.as_ptr().wrapping_add(offset).cast()
    }
}

impl RegisterFrame for MmioFrame {
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract makes the frame valid device memory;
        // `ptr` checked the access is aligned and inside it.
        unsafe { self.ptr::<u32>(offset).read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { self.ptr::<u32>(offset).write_volatile(value) }
    }

    fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as in `read32`; SMMUv3 permits 64-bit single-copy atomic
        // accesses to its 64-bit registers.
        unsafe { self.ptr::<u64>(offset).read_volatile() }
    }

    fn write64(&self, offset: usize, value: u64) {
        // SAFETY: as in `read64`.
        unsafe { self.ptr::<u64>(offset).write_volatile(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    struct Ticks(Cell<u64>);
    impl Clock for Ticks {
        fn now_us(&self) -> u64 {
            let t = self.0.get();
            self.0.set(t + 1);
            t
        }
    }

    #[test]
    fn poll_times_out_and_succeeds() {
        let c = Ticks(Cell::new(0));
        assert_eq!(poll(&c, 10, false, || None::<()>), Err(TimedOut));
        let mut n = 0;
        assert_eq!(
            poll(&c, 100, false, || {
                n += 1;
                (n == 5).then_some(n)
            }),
            Ok(5)
        );
    }

    #[test]
    fn volatile_frame_reads_and_writes_memory() {
        let mut mem = alloc::vec![0u64; crate::regs::FRAME_SIZE / 8];
        // SAFETY: `mem` is a live, aligned buffer of FRAME_SIZE bytes that
        // outlives `frame`, standing in for device memory.
        let frame = unsafe { MmioFrame::new(NonNull::new(mem.as_mut_ptr().cast()).unwrap()) };
        frame.write64(0x80, 0x1234_5678_9abc_def0);
        frame.write32(0x20, 0xd);
        assert_eq!(frame.read32(0x80), 0x9abc_def0);
        assert_eq!(frame.read64(0x80), 0x1234_5678_9abc_def0);
        assert_eq!(frame.read32(0x20), 0xd);
        assert_eq!(mem[4], 0xd);
    }
}
