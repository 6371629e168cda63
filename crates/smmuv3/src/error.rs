//! The driver's error type.

use io_pgtable::env::{AllocError, CacheError};

use crate::command::{Command, CommandError};
use crate::probe::ProbeError;

/// Why the command queue stopped at a command (CMDQ_CONS.ERR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdqErrorKind {
    /// The command is illegal (bad opcode or operand).
    Illegal,
    /// Fetching the command aborted.
    Abort,
    /// An ATC invalidation did not complete before a CMD_SYNC.
    AtcInvSync,
    /// An encoding the driver does not know.
    Other(u8),
}

impl core::fmt::Display for CmdqErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Illegal => f.write_str("CERROR_ILL (illegal command)"),
            Self::Abort => f.write_str("CERROR_ABT (abort fetching the command)"),
            Self::AtcInvSync => f.write_str("CERROR_ATC_INV_SYNC (ATC invalidation timeout)"),
            Self::Other(c) => write!(f, "error code {c:#x}"),
        }
    }
}

/// Errors of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The hardware cannot be driven.
    #[error("probe: {0}")]
    Probe(#[from] ProbeError),
    /// Table or queue memory could not be allocated.
    #[error("memory: {0}")]
    Alloc(#[from] AllocError),
    /// Cache maintenance failed.
    #[error("cache maintenance: {0}")]
    Cache(#[from] CacheError),
    /// A command could not be built.
    #[error("command: {0}")]
    Command(#[from] CommandError),
    /// The command queue has no free entry (per the last CONS read).
    #[error("command queue full")]
    QueueFull,
    /// The command queue is disabled (the SMMU was shut down).
    #[error("command queue disabled (SMMU shut down)")]
    QueueDisabled,
    /// The SMMU reported a queue pointer no queue can have.
    #[error("impossible queue pointer in {0}")]
    BadPointer(&'static str),
    /// The device did not respond in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The SMMU rejected a command; it was skipped and the queue resumed.
    #[error("command queue rejected {raw:x?} ({decoded:?}): {kind}")]
    CommandRejected {
        /// Why.
        kind: CmdqErrorKind,
        /// The raw command words.
        raw: [u64; 2],
        /// The command, when it decodes.
        decoded: Option<Command>,
    },
    /// A global error other than a command error is active (GERROR bits).
    #[error("global error {0:#x} (GERROR)")]
    Global(u32),
    /// The stream ID is outside the stream table.
    #[error("stream ID {0:#x} out of range")]
    BadStreamId(u32),
    /// The substream ID is outside the stream's CD table or not supported.
    #[error("substream ID {0:#x} out of range")]
    BadSubstreamId(u32),
    /// The SMMU (or its errata) does not support what was asked.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// All ASIDs or VMIDs are in use (or quarantined).
    #[error("no free {0}")]
    IdsExhausted(&'static str),
    /// The stream or substream is not attached to the domain.
    #[error("stream {sid:#x} is not attached as asked")]
    NotAttached {
        /// Stream ID.
        sid: u32,
    },
    /// The page table refused the operation.
    #[error("page table: {0}")]
    PageTable(#[from] io_pgtable::Error),
    /// The page table stopped part way.
    #[error("page table: {0}")]
    Partial(#[from] io_pgtable::Partial),
}
