//! Driver for QEMU's `edu` teaching device: a DMA engine that copies between a
//! 4 KiB buffer inside the device and a bus address (which goes through the SMMU).

use crate::pci::Function;
use crate::timer;

/// PCI vendor ID of QEMU's edu device.
pub const VENDOR: u16 = 0x1234;
/// PCI device ID of QEMU's edu device.
pub const DEVICE: u16 = 0x11e8;

/// Register offsets in BAR0.
mod reg {
    /// Identification: 0xRRrr00ed (major, minor, 0x00, 0xed).
    pub const ID: u64 = 0x00;
    /// Liveness check: reads back the bitwise inverse of what was written.
    pub const LIVENESS: u64 = 0x04;
    /// DMA source address (64-bit).
    pub const DMA_SRC: u64 = 0x80;
    /// DMA destination address (64-bit).
    pub const DMA_DST: u64 = 0x88;
    /// DMA byte count (64-bit).
    pub const DMA_COUNT: u64 = 0x90;
    /// DMA command: bit 0 start (reads 1 while running), bit 1 direction.
    pub const DMA_CMD: u64 = 0x98;
    pub const CMD_RUN: u64 = 1 << 0;
    /// Direction bit: set = device buffer to bus address, clear = bus to device.
    pub const CMD_TO_BUS: u64 = 1 << 1;
}

/// Device-side address of the DMA buffer (the device's own address space).
const BUFFER_BASE: u64 = 0x4_0000;
/// Size of the device's DMA buffer; QEMU aborts on transfers outside it.
pub const BUFFER_SIZE: usize = 4096;
/// Upper bound on one transfer: QEMU completes it ~100 ms of virtual time after
/// the command, so 2 s means the device is wedged.
const DMA_TIMEOUT_US: u64 = 2_000_000;

/// Why a DMA request was refused or did not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The range does not fit the device's 4 KiB buffer (QEMU would abort).
    OutOfBuffer {
        /// Requested buffer offset.
        offset: usize,
        /// Requested length.
        len: usize,
    },
    /// The previous transfer is still running.
    Busy,
    /// The transfer did not complete in time.
    Timeout,
    /// BAR0 is missing or the ID/liveness check failed.
    NotEdu,
}

impl core::fmt::Display for EduError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfBuffer { offset, len } => {
                write!(
                    f,
                    "edu transfer of {len} bytes at buffer offset {offset} is outside its 4 KiB buffer"
                )
            }
            Self::Busy => write!(f, "edu DMA engine busy"),
            Self::Timeout => write!(
                f,
                "edu DMA did not complete within {} ms",
                DMA_TIMEOUT_US / 1000
            ),
            Self::NotEdu => write!(f, "not a working edu device"),
        }
    }
}

/// An enumerated edu device.
pub struct Edu {
    bar: u64,
    stream_id: u32,
}

impl Edu {
    /// Takes an enumerated function and checks that it answers as an edu.
    ///
    /// # Errors
    ///
    /// `NotEdu` when the IDs, BAR0 or the liveness register are wrong.
    pub fn new(f: &Function) -> Result<Self, EduError> {
        if f.vendor != VENDOR || f.device != DEVICE {
            return Err(EduError::NotEdu);
        }
        let bar = f.bars[0].ok_or(EduError::NotEdu)?;
        let edu = Self {
            bar: bar.addr,
            stream_id: f.bdf.requester_id(),
        };
        if edu.read32(reg::ID) & 0xff != 0xed {
            return Err(EduError::NotEdu);
        }
        edu.write32(reg::LIVENESS, 0x1234_5678);
        if edu.read32(reg::LIVENESS) != !0x1234_5678 {
            return Err(EduError::NotEdu);
        }
        Ok(edu)
    }

    /// Returns the stream ID its DMA carries (its PCI requester ID).
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    fn read32(&self, off: u64) -> u32 {
        // SAFETY: BAR0 (1 MiB) is identity mapped as Device memory; `off` is a
        // register offset inside it; edu only answers 4-byte reads below 0x80.
        unsafe { core::ptr::read_volatile((self.bar + off) as *const u32) }
    }

    fn write32(&self, off: u64, val: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.bar + off) as *mut u32, val) }
    }

    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as in `read32`; registers from 0x80 take 8-byte accesses.
        unsafe { core::ptr::read_volatile((self.bar + off) as *const u64) }
    }

    fn write64(&self, off: u64, val: u64) {
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile((self.bar + off) as *mut u64, val) }
    }

    /// Copies `len` bytes from bus address `bus` into the device buffer at `offset`.
    ///
    /// # Errors
    ///
    /// See [`EduError`]. A transfer the SMMU blocks still completes: the
    /// evidence of a fault is the event queue and the data.
    pub fn bus_to_device(&mut self, bus: u64, offset: usize, len: usize) -> Result<(), EduError> {
        self.transfer(bus, BUFFER_BASE + offset as u64, offset, len, 0)
    }

    /// Copies `len` bytes from the device buffer at `offset` to bus address `bus`.
    ///
    /// # Errors
    ///
    /// See [`EduError`].
    pub fn device_to_bus(&mut self, offset: usize, bus: u64, len: usize) -> Result<(), EduError> {
        self.transfer(
            BUFFER_BASE + offset as u64,
            bus,
            offset,
            len,
            reg::CMD_TO_BUS,
        )
    }

    /// Starts copying `len` bytes from the device buffer at `offset` to bus
    /// address `bus`; [`Edu::wait`] waits for it.
    ///
    /// # Errors
    ///
    /// See [`EduError`].
    pub fn start_device_to_bus(
        &mut self,
        offset: usize,
        bus: u64,
        len: usize,
    ) -> Result<(), EduError> {
        self.start(
            BUFFER_BASE + offset as u64,
            bus,
            offset,
            len,
            reg::CMD_TO_BUS,
        )
    }

    /// Waits (bounded) for the running transfer to complete.
    ///
    /// # Errors
    ///
    /// [`EduError::Timeout`].
    pub fn wait(&mut self) -> Result<(), EduError> {
        if !timer::wait_until(DMA_TIMEOUT_US, || {
            self.read64(reg::DMA_CMD) & reg::CMD_RUN == 0
        }) {
            return Err(EduError::Timeout);
        }
        crate::arch::dsb_sy();
        Ok(())
    }

    fn start(
        &mut self,
        src: u64,
        dst: u64,
        offset: usize,
        len: usize,
        dir: u64,
    ) -> Result<(), EduError> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > BUFFER_SIZE) {
            return Err(EduError::OutOfBuffer { offset, len });
        }
        if self.read64(reg::DMA_CMD) & reg::CMD_RUN != 0 {
            return Err(EduError::Busy);
        }
        // Whatever the CPU wrote for the device must be visible before it starts.
        crate::arch::dsb_sy();
        self.write64(reg::DMA_SRC, src);
        self.write64(reg::DMA_DST, dst);
        self.write64(reg::DMA_COUNT, len as u64);
        self.write64(reg::DMA_CMD, reg::CMD_RUN | dir);
        Ok(())
    }

    fn transfer(
        &mut self,
        src: u64,
        dst: u64,
        offset: usize,
        len: usize,
        dir: u64,
    ) -> Result<(), EduError> {
        self.start(src, dst, offset, len, dir)?;
        self.wait()
    }
}
