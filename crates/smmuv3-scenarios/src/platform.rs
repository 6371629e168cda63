//! What a scenario needs from the machine it runs on: the SMMU's registers,
//! the driver's environment, DMA memory the CPU can fill and inspect, and one
//! PCI-like device that performs DMA.

use core::fmt;
use core::ptr::NonNull;

use io_pgtable::env::TableBlock;
use smmuv3::env::{Clock, DmaMemory, RegisterFrame};

/// A device that copies between its own small buffer and bus addresses, the
/// way QEMU's `edu` does. Every bus access goes through the SMMU with the
/// device's stream ID.
pub trait DmaDevice {
    /// Returns the stream ID its transactions carry.
    fn stream_id(&self) -> u32;

    /// Returns the size of the device's internal buffer (the largest transfer).
    fn buffer_size(&self) -> usize;

    /// Copies `len` bytes from bus address `iova` into the device buffer at
    /// `offset` (a DMA read).
    ///
    /// # Errors
    ///
    /// [`DeviceError`] when the request is refused or never completes. A
    /// transfer the SMMU blocks still completes: the evidence of a fault is
    /// the event queue and the data, as with real devices.
    fn read_from_bus(&mut self, iova: u64, offset: usize, len: usize) -> Result<(), DeviceError>;

    /// Copies `len` bytes from the device buffer at `offset` to bus address
    /// `iova` (a DMA write).
    ///
    /// # Errors
    ///
    /// As for [`DmaDevice::read_from_bus`].
    fn write_to_bus(&mut self, offset: usize, iova: u64, len: usize) -> Result<(), DeviceError>;

    /// Starts a DMA write like [`DmaDevice::write_to_bus`] without waiting
    /// for it; [`DmaDevice::finish`] waits. A device whose transfers are
    /// instantaneous (the default) completes it here.
    ///
    /// # Errors
    ///
    /// As for [`DmaDevice::read_from_bus`].
    fn start_write_to_bus(
        &mut self,
        offset: usize,
        iova: u64,
        len: usize,
    ) -> Result<(), DeviceError> {
        self.write_to_bus(offset, iova, len)
    }

    /// Waits for the transfer started by [`DmaDevice::start_write_to_bus`].
    ///
    /// # Errors
    ///
    /// [`DeviceError::Timeout`] when it does not complete in time.
    fn finish(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Returns whether transfers really run in the background (so a
    /// configuration change can race with one in flight).
    fn is_asynchronous(&self) -> bool {
        false
    }
}

/// A DMA request that did not run or finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The range is outside the device buffer.
    OutOfBuffer,
    /// The device did not finish within its bound.
    Timeout,
    /// The device is busy with an earlier request.
    Busy,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfBuffer => "transfer outside the device buffer",
            Self::Timeout => "DMA did not complete in time",
            Self::Busy => "device busy",
        })
    }
}

/// The SMMU's identification registers a machine is known to present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdProfile {
    /// Name of the configuration (e.g. the QEMU machine type).
    pub name: &'static str,
    /// Expected IDR0.
    pub idr0: u32,
    /// Expected IDR1.
    pub idr1: u32,
    /// Expected IDR3.
    pub idr3: u32,
    /// Expected IDR5.
    pub idr5: u32,
    /// Expected IIDR.
    pub iidr: u32,
    /// Expected AIDR.
    pub aidr: u32,
}

/// QEMU 10 `-M virt,iommu=smmuv3`: stage 1 and stage 2, range invalidation.
pub const QEMU_VIRT: IdProfile = IdProfile {
    name: "virt",
    idr0: 0x0d44_101b,
    idr1: 0x0273_0010,
    idr3: 0x1414,
    idr5: 0x74,
    iidr: 0,
    aidr: 1,
};

/// QEMU 10 `-M virt-9.1,iommu=smmuv3`: stage 1 only.
pub const QEMU_VIRT_9_1: IdProfile = IdProfile {
    name: "virt-9.1",
    idr0: 0x0d44_101a,
    idr1: 0x0273_0010,
    idr3: 0x1404,
    idr5: 0x74,
    iidr: 0,
    aidr: 1,
};

/// Known, documented ways an SMMU implementation departs from the
/// architecture, which scenarios tolerate (and report) rather than fail on.
/// Each one is listed with its evidence in `baremetal/README.md`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leniency {
    /// A full event queue drops events without toggling EVENTQ_PROD.OVFLG
    /// (QEMU 10).
    pub no_eventq_overflow_flag: bool,
}

/// A machine the scenarios run on.
///
/// Handles are returned by value because the driver owns its register
/// frame, memory and clock: each scenario brings up its own driver instance
/// over fresh handles and tears it down at the end.
pub trait Platform {
    /// The SMMU's register frame.
    type Regs: RegisterFrame;
    /// Table memory and cache maintenance (for the driver and for buffers).
    type Mem: DmaMemory;
    /// Time source for bounded waits.
    type Clock: Clock;
    /// The DMA device.
    type Device: DmaDevice;

    /// Returns a handle to the SMMU's register frame.
    fn regs(&self) -> Self::Regs;

    /// Returns a handle to DMA memory.
    fn mem(&self) -> Self::Mem;

    /// Returns a clock.
    fn clock(&self) -> Self::Clock;

    /// Returns the DMA device.
    fn device(&mut self) -> &mut Self::Device;

    /// Returns the ID registers this machine must present, when known.
    fn expected_ids(&self) -> Option<IdProfile>;

    /// Returns the departures from the architecture this machine is known
    /// for (none by default).
    fn leniency(&self) -> Leniency {
        Leniency::default()
    }

    /// Returns the RAM the device may reach: `(base, size)`. Scenarios that
    /// identity map memory at stage 2 map this range.
    fn ram(&self) -> (u64, u64);

    /// Writes a progress line to the log (not a result line).
    fn log(&self, args: fmt::Arguments<'_>);
}

/// A block of DMA memory (allocated from the platform's table memory, so it
/// is zeroed and naturally aligned), freed on drop.
pub struct DmaBuffer<M: DmaMemory> {
    mem: M,
    block: TableBlock,
    size: usize,
}

impl<M: DmaMemory> DmaBuffer<M> {
    /// Returns a zeroed buffer of `size` bytes (a power of two, at least 64).
    ///
    /// # Errors
    ///
    /// A failure naming the allocator's error.
    pub fn new(mem: M, size: usize) -> Result<Self, crate::Problem> {
        let block = mem.alloc_table(size).map_err(|e| {
            crate::Problem::fail(format_args!("allocating a {size:#x}-byte DMA buffer: {e}"))
        })?;
        Ok(Self { mem, block, size })
    }

    /// Returns the physical (bus, before translation) address.
    pub fn phys(&self) -> u64 {
        self.block.phys
    }

    /// Returns the size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Writes `data` at `offset` and cleans it to the point of coherency.
    ///
    /// # Errors
    ///
    /// A failure when the range is outside the buffer or the clean fails.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), crate::Problem> {
        self.check(offset, data.len())?;
        let dst = self.block.cpu.as_ptr().wrapping_add(offset);
        // SAFETY: the range is inside the live block (checked above); the
        // block is ours until drop and no Rust reference aliases it. Accesses
        // are not concurrent with the device: DMA runs only inside the
        // device calls of the same thread.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        let cpu = NonNull::new(dst).unwrap_or(self.block.cpu);
        self.mem
            .clean(cpu, self.block.phys + offset as u64, data.len())
            .map_err(|e| crate::Problem::fail(format_args!("cache clean: {e}")))
    }

    /// Fills `[offset, offset + len)` with `byte`, cleaned for the device.
    ///
    /// # Errors
    ///
    /// As for [`DmaBuffer::write`].
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), crate::Problem> {
        let chunk = [byte; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(offset + done, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    /// Reads `out.len()` bytes at `offset` after making device writes visible.
    ///
    /// # Errors
    ///
    /// A failure when the range is outside the buffer.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), crate::Problem> {
        self.check(offset, out.len())?;
        let src = self.block.cpu.as_ptr().wrapping_add(offset);
        self.mem
            .invalidate(
                NonNull::new(src).unwrap_or(self.block.cpu),
                self.block.phys + offset as u64,
                out.len(),
            )
            .map_err(|e| crate::Problem::fail(format_args!("cache invalidate: {e}")))?;
        // SAFETY: the range is inside the live block (checked above); see
        // `write` for why the access is not concurrent.
        unsafe { core::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), crate::Problem> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(crate::Problem::fail(format_args!(
                "range {offset:#x}+{len:#x} outside a {:#x}-byte buffer",
                self.size
            )));
        }
        Ok(())
    }
}

impl<M: DmaMemory> Drop for DmaBuffer<M> {
    fn drop(&mut self) {
        // SAFETY: the block came from `alloc_table(self.size)` on this
        // memory. Scenarios declare buffers before the driver instance that
        // maps them, so the mappings are gone (the SMMU disabled) first.
        unsafe { self.mem.free_table(self.block, self.size) };
    }
}
