//! A strict software model of the Arm SMMUv3 (IHI 0070) that a driver can
//! be run against through MMIO register reads and writes and a shared
//! [`SimMemory`].
//!
//! The model is a sanitizer more than an emulator: it is at least as strict
//! as QEMU's SMMUv3 about structure contents, and it catches what hardware
//! hides:
//!
//! * **missing TLB invalidations**: leaf translations and table descriptors
//!   stay cached until a matching `CMD_TLBI_*` removes them (range
//!   invalidations honour TG/SCALE/NUM/TTL and Leaf exactly), and
//!   STEs/CDs stay cached until `CMD_CFGI_*`; [`SmmuModel::audit_caches`]
//!   lists every cached translation and configuration memory no longer
//!   gives, without changing anything;
//! * **missing cache cleans**: every structure, queue and table is read
//!   through the *device view* of [`SimMemory`]; on non-coherent memory a
//!   CPU store that was not cleaned is invisible (IDR0.COHACC then reads 0);
//! * **malformed input**: any register write, queue content or memory
//!   content produces the architected error (CMDQ_CONS.ERR + GERROR,
//!   C_BAD_STE, C_BAD_CD, F_* events...), never a panic or a hang.
//!
//! # Using it
//!
//! ```
//! use std::sync::Arc;
//! use sim_memory::{Coherency, SimMemory};
//! use smmuv3_model::{DmaRequest, ModelConfig, SmmuModel, regs};
//!
//! let mem = Arc::new(SimMemory::new(0x8000_0000, 1 << 20, Coherency::Coherent).unwrap());
//! let smmu = SmmuModel::new(ModelConfig::default(), mem.clone()).unwrap();
//! assert_eq!(smmu.read32(regs::IDR0) & 0b11, 0b11); // S1P and S2P
//! // Out of reset the SMMU is disabled and GBPA aborts: DMA fails.
//! let buf = mem.alloc(4096).unwrap();
//! assert!(smmu.dma_read(&DmaRequest::read(0, buf, 4), &mut [0; 4]).is_err());
//! // Program GBPA for bypass through the update handshake.
//! smmu.write32(regs::GBPA, regs::gbpa::UPDATE);
//! smmu.dma_write(&DmaRequest::write(0, buf, 4), &[1, 2, 3, 4]).unwrap();
//! ```
//!
//! A driver programs the stream table, queues and CR0 exactly as on
//! hardware. Commands are consumed synchronously inside the write to
//! SMMU_CMDQ_PROD (unless fault injection pauses or delays consumption), so
//! tests are deterministic. Devices issue DMA with [`SmmuModel::dma_read`] /
//! [`SmmuModel::dma_write`]; [`SmmuModel::translate`] returns the output
//! address without moving data.
//!
//! # Modelled architecture
//!
//! Register frame pages 0 and 1 (IDR0-5, IIDR, AIDR, CR0/CR0ACK, CR1, CR2,
//! STATUSR, GBPA with its update handshake, IRQ_CTRL/ACK, GERROR/GERRORN,
//! STRTAB_BASE(_CFG), CMDQ and EVENTQ base/prod/cons with their page-1
//! aliases); linear and 2-level stream tables (Span checked exactly); STE
//! configurations abort, bypass, stage 1, stage 2 and nested; linear and
//! 2-level CD tables with substreams and S1DSS; 4K/16K/64K granules,
//! concatenated stage-2 start tables, 52-bit output with 64K pages,
//! permissions (AP, APTable, XN/PXN/UXN, WXN, PAN, S2AP, XNX), access flag,
//! hardware AF/dirty updates (HTTU), address size checks; TLB and walk
//! cache tagged by regime/VMID/ASID; every command of the non-secure
//! command queue; the event queue with overflow; CMD_SYNC completion by
//! MSI write, wired interrupt or SEV; stall and resume.
//!
//! Not modelled: PRI queue, ATS translation requests and the ATC (ATC_INV
//! is accepted when ATS is advertised), secure and realm state, PRI MSIs
//! (event queue, GERROR and CMD_SYNC MSIs are sent), event merging,
//! VMID wildcards, the E2H distinction of EL2 entries, DS (52-bit with 4K or
//! 16K granules), 128-bit descriptors, hardware table-AF updates, memory
//! attributes (MemAttr/SH/alloc hints are parsed but only validated; an
//! MSI's are passed to the VMM's callback, see [`msi`]),
//! big-endian and AArch32 tables. A stalled transaction is released by
//! CMD_RESUME / CMD_STALL_TERM but not replayed: the device sees
//! [`DmaFault::Stalled`] and retries itself.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod config;
pub mod device;
pub mod event;
#[cfg(feature = "fdt")]
pub mod fdt;
pub mod layout;
pub mod memory;
mod model;
pub mod msi;
pub mod regs;
mod set_cache;
pub mod stats;
mod tlb;
mod walk;

pub use config::{ConfigError, Httu, ModelConfig, StallModel};
pub use device::{MmioError, RidMapping, SmmuDevice, pci_rid};
pub use event::{Event, EventType, FaultClass};
pub use memory::{DeviceMemory, GuestRam};
/// The CMD_SYNC hand-off's flags and steps, for the loom model check
/// (`tests/loom.rs`) only.
#[cfg(loom)]
#[doc(hidden)]
pub use model::sync_gate as sync_gate_for_loom;
pub use model::{
    CacheAudit, CachedUnit, IotlbGuard, IrqHandler, IrqLine, ModelSnapshot, MsiHandler,
    MsiWriteHandler, SNAPSHOT_VERSION, SharedIotlb, SmmuModel, SnapshotError, StaleStage2,
    StaleTranslation, StaleWalk, StreamIommu, Violation,
};
pub use msi::{MsiAttr, MsiWrite};
pub use sim_memory::{Coherency, MemError, SimMemory};
pub use stats::{Stats, TraceEntry};

/// A transaction issued by a simulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaRequest {
    /// StreamID of the device.
    pub sid: u32,
    /// SubstreamID (PASID), if the transaction carries one.
    pub ssid: Option<u32>,
    /// Input (I/O virtual) address.
    pub iova: u64,
    /// Length in bytes.
    pub len: u64,
    /// Write (true) or read (false).
    pub write: bool,
    /// Privileged (PnU = 1) access.
    pub privileged: bool,
    /// Instruction fetch (InD = 1); only meaningful for reads.
    pub instruction: bool,
    /// Already translated by ATS (PCIe AT = translated).
    pub ats_translated: bool,
}

impl DmaRequest {
    /// Returns an unprivileged data read of `len` bytes at `iova`.
    pub fn read(sid: u32, iova: u64, len: u64) -> Self {
        Self {
            sid,
            ssid: None,
            iova,
            len,
            write: false,
            privileged: false,
            instruction: false,
            ats_translated: false,
        }
    }

    /// Returns an unprivileged data write of `len` bytes at `iova`.
    pub fn write(sid: u32, iova: u64, len: u64) -> Self {
        Self {
            write: true,
            ..Self::read(sid, iova, len)
        }
    }

    /// Returns the request with a SubstreamID.
    pub fn with_ssid(self, ssid: u32) -> Self {
        Self {
            ssid: Some(ssid),
            ..self
        }
    }

    /// Returns the request marked privileged.
    pub fn privileged(self) -> Self {
        Self {
            privileged: true,
            ..self
        }
    }

    /// Returns the request marked as an instruction fetch.
    pub fn instruction(self) -> Self {
        Self {
            instruction: true,
            ..self
        }
    }
}

/// How a terminated transaction completes towards the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Termination {
    /// Abort (the device sees an error).
    Abort,
    /// Reads return zero, writes are ignored (CD.A = 0).
    RazWi,
}

/// Why a DMA or translation did not complete normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaFault {
    /// The SMMU is disabled and SMMU_GBPA.ABORT is set.
    GlobalAbort,
    /// The stream's STE says abort (STE.Config = 0b000); no event.
    StreamAbort,
    /// The transaction was terminated by a fault or configuration error.
    Terminated {
        /// The event raised (it may not have been recorded).
        event: Event,
        /// Whether it was written to the event queue.
        recorded: bool,
        /// How the device sees the termination.
        termination: Termination,
    },
    /// The transaction is stalled until CMD_RESUME / CMD_STALL_TERM; the
    /// event (with Stall = 1 and its STAG) was recorded when possible.
    Stalled {
        /// The stall event.
        event: Event,
    },
    /// The translated output address hit a memory error.
    Bus {
        /// Output (physical) address.
        pa: u64,
        /// The memory error.
        error: MemError,
    },
}

impl DmaFault {
    /// Returns the event of a terminated or stalled transaction.
    pub fn event(&self) -> Option<&Event> {
        match self {
            Self::Terminated { event, .. } | Self::Stalled { event } => Some(event),
            _ => None,
        }
    }

    /// Returns the event type of a terminated or stalled transaction.
    pub fn event_type(&self) -> Option<EventType> {
        self.event().map(|e| e.kind)
    }
}

impl core::fmt::Display for DmaFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::GlobalAbort => write!(f, "SMMU disabled with GBPA.ABORT set"),
            Self::StreamAbort => write!(f, "stream configured to abort"),
            Self::Terminated {
                event, recorded, ..
            } => write!(
                f,
                "terminated by {:?} (sid {:#x}, addr {:#x}, recorded: {recorded})",
                event.kind, event.sid, event.input_addr
            ),
            Self::Stalled { event } => {
                write!(f, "stalled by {:?} (stag {:#x})", event.kind, event.stag)
            }
            Self::Bus { pa, error } => write!(f, "bus error at {pa:#x}: {error}"),
        }
    }
}

impl std::error::Error for DmaFault {}

/// The result of a successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// Output (physical) address of the input address.
    pub pa: u64,
    /// Bytes from the input address to the end of the translated unit
    /// (page/block, or the smaller of both stages' units when nested).
    pub bytes_left: u64,
    /// Both stages bypassed (STE bypass or SMMU disabled with GBPA bypass).
    pub bypass: bool,
    /// Served by the TLB without a walk.
    pub tlb_hit: bool,
}

/// Pending interrupt flags (wired-interrupt view).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Interrupts {
    /// An event was written into an empty event queue while
    /// IRQ_CTRL.EVENTQ_IRQEN was set.
    pub eventq: bool,
    /// A global error was raised while IRQ_CTRL.GERROR_IRQEN was set.
    pub gerror: bool,
    /// A CMD_SYNC with CS = SIG_IRQ completed (with or without an MSI).
    pub cmd_sync: bool,
}
