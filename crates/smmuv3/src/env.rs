//! The environment the driver runs in: a register frame and a clock for
//! bounded waits. Table memory and cache maintenance come from
//! `io_pgtable::env` so page tables, stream tables, CD tables and queues all
//! go through one seam.

use core::ptr::NonNull;

use io_pgtable::env::{CacheError, CacheMaintenance, TableMemory};
use safe_mmio::fields::ReadPureWrite;
use safe_mmio::{SharedMmioPointer, UniqueMmioPointer};

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

/// A register frame for real hardware (and QEMU), accessed through
/// [`safe_mmio`].
///
/// Every register access is exactly one load or store of its width. On
/// aarch64 safe-mmio issues them as inline assembly (`ldr`/`str` with a
/// plain base register), not as compiler-chosen volatile accesses, which
/// may become pre/post-indexed or pair forms. That matters under a
/// hypervisor that traps the SMMU frame (pKVM, KVM, Xen emulating or
/// filtering it): a trapped access is emulated from the syndrome register,
/// and only single loads and stores without writeback report a valid
/// syndrome (ESR_EL2.ISV = 1); anything else cannot be emulated and the
/// guest is killed. On other architectures safe-mmio falls back to one
/// volatile access, which is what the host unit test exercises.
pub struct MmioFrame {
    base: NonNull<u8>,
}

// SAFETY: the frame is device memory; accesses are single MMIO loads and
// stores that the device serialises, so sharing the pointer between threads
// cannot create a data race in the Rust sense (and `new`'s caller promised
// the frame may be accessed from any thread).
unsafe impl Send for MmioFrame {}
// SAFETY: as for `Send`; `&MmioFrame` only allows single register accesses.
unsafe impl Sync for MmioFrame {}

impl MmioFrame {
    /// Returns a frame over the SMMU registers mapped at `base`.
    ///
    /// # Safety
    ///
    /// `base` must point to [`crate::regs::FRAME_SIZE`] bytes of SMMUv3
    /// registers, 8-byte aligned, mapped as device memory for the life of
    /// the returned value and accessible from any thread, and no other code
    /// may access the frame (or use it in a way that breaks the driver's
    /// invariants, e.g. reprogram the queues) while the value lives.
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base }
    }

    /// Returns the register of type `T` at `offset`.
    ///
    /// Panics when it is misaligned or leaves the frame: offsets are the
    /// driver's constants, so that is a driver bug.
    fn reg<T>(&self, offset: usize) -> UniqueMmioPointer<'_, ReadPureWrite<T>> {
        let size = core::mem::size_of::<T>();
        assert!(
            offset
                .checked_add(size)
                .is_some_and(|end| end <= crate::regs::FRAME_SIZE)
                && offset % size == 0,
            "register offset {offset:#x} out of frame or misaligned"
        );
        // SAFETY: `offset + size <= FRAME_SIZE` (checked), so the pointer
        // stays inside the frame `new`'s caller vouched for: device memory,
        // valid for reads and writes from any thread for the life of `self`,
        // aligned (base 8-aligned, offset a multiple of the width). No other
        // code accesses the frame (`new`'s contract), and this pointer lives
        // for one access only. Other accesses through `self` at the same
        // moment (other threads) are single device transactions of their
        // own, never Rust references to the registers, so the uniqueness
        // safe-mmio asks for (no conflicting use of the same registers
        // through another alias while the pointer exists, for its `&mut`
        // API's sake) is not undermined: nothing here keeps the pointer or
        // relies on the register value staying put between accesses. SMMUv3
        // register reads have no side effects (ReadPureWrite), and 32- and
        // 64-bit single-copy atomic accesses are what the architecture
        // permits for its 32- and 64-bit registers.
        unsafe { UniqueMmioPointer::new(self.base.add(offset).cast()) }
    }
}

impl RegisterFrame for MmioFrame {
    fn read32(&self, offset: usize) -> u32 {
        SharedMmioPointer::from(self.reg::<u32>(offset)).read()
    }

    fn write32(&self, offset: usize, value: u32) {
        self.reg::<u32>(offset).write(value)
    }

    fn read64(&self, offset: usize) -> u64 {
        SharedMmioPointer::from(self.reg::<u64>(offset)).read()
    }

    fn write64(&self, offset: usize, value: u64) {
        self.reg::<u64>(offset).write(value)
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
        assert_eq!(mem[0x80 / 8], 0x1234_5678_9abc_def0);
        let last = crate::regs::FRAME_SIZE - 8;
        frame.write64(last, u64::MAX);
        assert_eq!(mem[last / 8], u64::MAX);
        assert_eq!(frame.read32(last + 4), u32::MAX);
    }

    #[test]
    #[should_panic(expected = "out of frame or misaligned")]
    fn volatile_frame_refuses_offsets_past_the_end() {
        let mut mem = alloc::vec![0u64; crate::regs::FRAME_SIZE / 8];
        // SAFETY: as in `volatile_frame_reads_and_writes_memory`.
        let frame = unsafe { MmioFrame::new(NonNull::new(mem.as_mut_ptr().cast()).unwrap()) };
        frame.read32(crate::regs::FRAME_SIZE);
    }

    #[test]
    #[should_panic(expected = "out of frame or misaligned")]
    fn volatile_frame_refuses_misaligned_offsets() {
        let mut mem = alloc::vec![0u64; crate::regs::FRAME_SIZE / 8];
        // SAFETY: as in `volatile_frame_reads_and_writes_memory`.
        let frame = unsafe { MmioFrame::new(NonNull::new(mem.as_mut_ptr().cast()).unwrap()) };
        frame.write64(0x84, 0);
    }
}
