//! The bare-metal side of `smmuv3_scenarios::Platform`: table memory from the
//! heap (identity mapped, so physical == virtual), cache maintenance by VA,
//! the generic timer, QEMU's SMMU register frame, and the edu device.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use io_pgtable::env::{AllocError, CacheError, CacheMaintenance, TableBlock, TableMemory};
use smmuv3::env::{CacheInvalidate, Clock, MmioFrame};
use smmuv3_scenarios::{DeviceError, DmaDevice, IdProfile, Leniency, Platform};

use crate::arch::{self, CacheOp};
use crate::edu::{self, Edu, EduError};
use crate::{layout, println, timer};

/// The driver's environment on this machine (a handle: all state is global).
#[derive(Clone, Copy, Debug, Default)]
pub struct Env;

/// Largest block handed out (io-pgtable asks for up to 16 x 64 KiB; scenario
/// buffers for block mappings are 2 MiB).
const MAX_BLOCK: usize = 4 << 20;

// SAFETY: blocks come from the global allocator with size == alignment, are
// zeroed and cleaned before being returned, stay valid until `free_table`,
// and RAM is identity mapped, so `phys` is both the CPU and the bus address
// and `phys_to_cpu` maps every byte of a live block to itself.
unsafe impl TableMemory for Env {
    fn alloc_table(&self, size: usize) -> Result<TableBlock, AllocError> {
        if !size.is_power_of_two() || size < io_pgtable::env::MIN_TABLE_SIZE || size > MAX_BLOCK {
            return Err(AllocError::BadSize { size });
        }
        let layout =
            Layout::from_size_align(size, size).map_err(|_| AllocError::BadSize { size })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let cpu = NonNull::new(ptr).ok_or(AllocError::NoMemory { size })?;
        // The zeroes must reach memory before a (possibly non-coherent)
        // walker reads the block.
        arch::dcache_range(CacheOp::Clean, ptr as u64, size as u64);
        Ok(TableBlock {
            cpu,
            phys: ptr as u64,
        })
    }

    unsafe fn free_table(&self, block: TableBlock, size: usize) {
        if let Ok(layout) = Layout::from_size_align(size, size) {
            // SAFETY: the caller passes a block from `alloc_table(size)`,
            // which used exactly this layout.
            unsafe { alloc::alloc::dealloc(block.cpu.as_ptr(), layout) };
        }
    }

    fn phys_to_cpu(&self, phys: u64) -> NonNull<u8> {
        NonNull::new(phys as *mut u8).unwrap_or(NonNull::dangling())
    }
}

impl CacheMaintenance for Env {
    fn clean(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        if phys < layout::RAM || phys.saturating_add(len as u64) > layout::RAM + layout::RAM_SIZE {
            return Err(CacheError { phys, len });
        }
        // Identity map: the VA of the range is its PA.
        arch::dcache_range(CacheOp::Clean, cpu.as_ptr() as u64, len as u64);
        Ok(())
    }

    fn device_write_barrier(&self) {
        io_pgtable::env::barrier::device_write();
    }

    fn full_barrier(&self) {
        io_pgtable::env::barrier::full();
    }
}

impl CacheInvalidate for Env {
    fn invalidate(&self, cpu: NonNull<u8>, phys: u64, len: usize) -> Result<(), CacheError> {
        if phys < layout::RAM || phys.saturating_add(len as u64) > layout::RAM + layout::RAM_SIZE {
            return Err(CacheError { phys, len });
        }
        arch::dcache_range(CacheOp::Invalidate, cpu.as_ptr() as u64, len as u64);
        Ok(())
    }
}

impl Clock for Env {
    fn now_us(&self) -> u64 {
        timer::now_ns() / 1000
    }
}

/// Returns QEMU's SMMUv3 register frame.
pub fn smmu_frame() -> MmioFrame {
    let base = NonNull::new(layout::SMMU as *mut u8).unwrap_or(NonNull::dangling());
    // SAFETY: QEMU virt places the 128 KiB SMMUv3 frame at this address,
    // identity mapped as Device memory for the whole run. Scenarios run one
    // at a time, so only one driver instance programs it at once.
    unsafe { MmioFrame::new(base) }
}

/// The edu device as the scenarios' DMA device.
pub struct EduDevice(pub Edu);

fn device_error(e: EduError) -> DeviceError {
    match e {
        EduError::OutOfBuffer { .. } | EduError::NotEdu => DeviceError::OutOfBuffer,
        EduError::Busy => DeviceError::Busy,
        EduError::Timeout => DeviceError::Timeout,
    }
}

impl DmaDevice for EduDevice {
    fn stream_id(&self) -> u32 {
        self.0.stream_id()
    }

    fn buffer_size(&self) -> usize {
        edu::BUFFER_SIZE
    }

    fn read_from_bus(&mut self, iova: u64, offset: usize, len: usize) -> Result<(), DeviceError> {
        self.0
            .bus_to_device(iova, offset, len)
            .map_err(device_error)
    }

    fn write_to_bus(&mut self, offset: usize, iova: u64, len: usize) -> Result<(), DeviceError> {
        self.0
            .device_to_bus(offset, iova, len)
            .map_err(device_error)
    }

    fn start_write_to_bus(
        &mut self,
        offset: usize,
        iova: u64,
        len: usize,
    ) -> Result<(), DeviceError> {
        self.0
            .start_device_to_bus(offset, iova, len)
            .map_err(device_error)
    }

    fn finish(&mut self) -> Result<(), DeviceError> {
        self.0.wait().map_err(device_error)
    }

    fn is_asynchronous(&self) -> bool {
        // QEMU runs the copy from a timer ~100 ms after the command.
        true
    }
}

/// QEMU `virt` with its SMMUv3 and one edu device.
pub struct Qemu {
    edu: EduDevice,
    profile: Option<IdProfile>,
}

impl Qemu {
    /// Returns the platform for the SMMU at its fixed address.
    pub fn new(edu: Edu, profile: Option<IdProfile>) -> Self {
        Self {
            edu: EduDevice(edu),
            profile,
        }
    }
}

impl Platform for Qemu {
    type Regs = MmioFrame;
    type Mem = Env;
    type Clock = Env;
    type Device = EduDevice;

    fn regs(&self) -> MmioFrame {
        smmu_frame()
    }

    fn mem(&self) -> Env {
        Env
    }

    fn clock(&self) -> Env {
        Env
    }

    fn device(&mut self) -> &mut EduDevice {
        &mut self.edu
    }

    fn expected_ids(&self) -> Option<IdProfile> {
        self.profile
    }

    fn leniency(&self) -> Leniency {
        // QEMU 10 drops events into a full queue without toggling OVFLG
        // (seen by the event-overflow scenario; baremetal/README.md).
        Leniency {
            no_eventq_overflow_flag: true,
        }
    }

    fn ram(&self) -> (u64, u64) {
        (layout::RAM, layout::RAM_SIZE)
    }

    fn log(&self, args: fmt::Arguments<'_>) {
        println!("{args}");
    }
}
