//! Counters and trace records.

use crate::event::{Event, EventType};

/// Counters of everything the model did since creation or
/// [`crate::SmmuModel::reset_stats`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Commands executed, indexed by opcode (illegal ones included).
    #[serde(with = "wide")]
    pub commands: [u64; 256],
    /// Commands rejected with CERROR_ILL.
    pub illegal_commands: u64,
    /// Command fetches that aborted (CERROR_ABT).
    pub command_aborts: u64,
    /// Commands consumed but not executed because of fault injection.
    pub dropped_commands: u64,
    /// CMD_SYNC completions signalled by MSI write.
    pub sync_msi_writes: u64,
    /// CMD_SYNC completions signalled by SEV.
    pub sync_sevs: u64,
    /// Event queue MSIs written (or attempted).
    pub msi_writes: u64,
    /// Translations requested (one per translated unit of a DMA).
    pub translations: u64,
    /// Translations served by the TLB.
    pub tlb_hits: u64,
    /// Translations that needed a table walk.
    pub tlb_misses: u64,
    /// Table walks started (stage 1 and stage 2 counted separately).
    pub walks: u64,
    /// Descriptors read by walks.
    pub descriptor_reads: u64,
    /// Walks that started below the top level thanks to the walk cache.
    pub walk_cache_hits: u64,
    /// Hardware access-flag / dirty-state descriptor updates.
    pub httu_updates: u64,
    /// STE lookups served by the configuration cache.
    pub ste_hits: u64,
    /// STE fetches from memory.
    pub ste_misses: u64,
    /// CD lookups served by the configuration cache.
    pub cd_hits: u64,
    /// CD fetches from memory.
    pub cd_misses: u64,
    /// TLB/walk-cache entries removed by invalidations.
    pub tlb_entries_invalidated: u64,
    /// TLB and walk-cache entries evicted to make room (one per insert into
    /// a full set).
    pub tlb_evictions: u64,
    /// Range invalidations whose TG did not match a cached entry's granule
    /// (architecturally unpredictable; the model keeps the entry).
    pub tlbi_granule_mismatches: u64,
    /// Walks refused as TLB conflicts (a block/table change without
    /// break-before-make on an SMMU with IDR3.BBML < 2).
    pub tlb_conflicts: u64,
    /// Events generated, indexed by event type code.
    #[serde(with = "wide")]
    pub events: [u64; 256],
    /// Events written to the event queue.
    pub events_recorded: u64,
    /// Translation faults not recorded because CD.R / STE.S2R was clear.
    pub events_suppressed: u64,
    /// Events lost because the event queue was full (overflow).
    pub events_overflowed: u64,
    /// Events discarded because the event queue was disabled or broken
    /// (or, for a stall record that waited for room, because its stall
    /// was retired first).
    pub events_discarded: u64,
    /// Stall event records waiting for room in the event queue: a level,
    /// not a counter. A waiting record is counted in `events` (and as
    /// recorded or discarded) when it leaves the wait.
    pub events_waiting: u64,
    /// Global errors raised, indexed by GERROR bit.
    pub gerrors: [u64; 16],
    /// Transactions stalled.
    pub stalls: u64,
    /// Bytes moved by DMA.
    pub dma_bytes: u64,
    /// MMIO register accesses.
    pub mmio_accesses: u64,
    /// vm-memory `Iotlb` units dropped because the model entry they copy
    /// was invalidated or evicted (see `SmmuModel::iommu`).
    pub iotlb_invalidations: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            commands: [0; 256],
            illegal_commands: 0,
            command_aborts: 0,
            dropped_commands: 0,
            sync_msi_writes: 0,
            sync_sevs: 0,
            msi_writes: 0,
            translations: 0,
            tlb_hits: 0,
            tlb_misses: 0,
            walks: 0,
            descriptor_reads: 0,
            walk_cache_hits: 0,
            httu_updates: 0,
            ste_hits: 0,
            ste_misses: 0,
            cd_hits: 0,
            cd_misses: 0,
            tlb_entries_invalidated: 0,
            tlb_evictions: 0,
            tlbi_granule_mismatches: 0,
            tlb_conflicts: 0,
            events: [0; 256],
            events_recorded: 0,
            events_suppressed: 0,
            events_overflowed: 0,
            events_discarded: 0,
            events_waiting: 0,
            gerrors: [0; 16],
            stalls: 0,
            dma_bytes: 0,
            mmio_accesses: 0,
            iotlb_invalidations: 0,
        }
    }
}

impl Stats {
    /// Returns how many commands of `opcode` were executed.
    pub fn command(&self, opcode: u8) -> u64 {
        self.commands[usize::from(opcode)]
    }

    /// Returns how many events of `kind` were generated.
    pub fn event(&self, kind: EventType) -> u64 {
        self.events[usize::from(kind.code())]
    }

    /// Returns the total number of commands executed.
    pub fn total_commands(&self) -> u64 {
        self.commands.iter().sum()
    }

    /// Returns the total number of global errors raised.
    pub fn total_gerrors(&self) -> u64 {
        self.gerrors.iter().sum()
    }

    /// Returns the largest counter. Counters grow by one per event (by the
    /// bytes moved for `dma_bytes`), so no run reaches 2^63: a restored
    /// snapshot with a larger one is corrupt (and its next increment would
    /// overflow).
    pub(crate) fn max_counter(&self) -> u64 {
        // Destructured, so that a new counter cannot be left out.
        let Self {
            commands,
            illegal_commands,
            command_aborts,
            dropped_commands,
            sync_msi_writes,
            sync_sevs,
            msi_writes,
            translations,
            tlb_hits,
            tlb_misses,
            walks,
            descriptor_reads,
            walk_cache_hits,
            httu_updates,
            ste_hits,
            ste_misses,
            cd_hits,
            cd_misses,
            tlb_entries_invalidated,
            tlb_evictions,
            tlbi_granule_mismatches,
            tlb_conflicts,
            events,
            events_recorded,
            events_suppressed,
            events_overflowed,
            events_discarded,
            events_waiting,
            gerrors,
            stalls,
            dma_bytes,
            mmio_accesses,
            iotlb_invalidations,
        } = self;
        let single = [
            illegal_commands,
            command_aborts,
            dropped_commands,
            sync_msi_writes,
            sync_sevs,
            msi_writes,
            translations,
            tlb_hits,
            tlb_misses,
            walks,
            descriptor_reads,
            walk_cache_hits,
            httu_updates,
            ste_hits,
            ste_misses,
            cd_hits,
            cd_misses,
            tlb_entries_invalidated,
            tlb_evictions,
            tlbi_granule_mismatches,
            tlb_conflicts,
            events_recorded,
            events_suppressed,
            events_overflowed,
            events_discarded,
            events_waiting,
            stalls,
            dma_bytes,
            mmio_accesses,
            iotlb_invalidations,
        ];
        let arrays = commands.iter().chain(events.iter()).chain(gerrors.iter());
        single.into_iter().chain(arrays).copied().max().unwrap_or(0)
    }
}

/// One step recorded by the optional trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEntry {
    /// A register write.
    MmioWrite {
        /// Frame offset.
        offset: u64,
        /// Value written (32 or 64 bits).
        value: u64,
    },
    /// A command consumed.
    Command {
        /// Queue index it was read from.
        index: u32,
        /// The two command words.
        words: [u64; 2],
        /// CMDQ_CONS.ERR code when it was rejected.
        error: Option<u32>,
    },
    /// A translation table descriptor read.
    Walk {
        /// Stage 2 walk.
        stage2: bool,
        /// Input address walked.
        ia: u64,
        /// Result: output address or the fault.
        result: Result<u64, EventType>,
    },
    /// An event generated (recorded or not).
    Event(Event),
    /// A TLB hit.
    TlbHit {
        /// StreamID.
        sid: u32,
        /// Input address.
        iova: u64,
    },
}

/// Serde for the 256-entry counter arrays (serde derives stop at 32).
mod wide {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u64; 256], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; 256], D::Error> {
        let v = Vec::<u64>::deserialize(d)?;
        let n = v.len();
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(n, &"256 counters"))
    }
}
