//! Implementation choices of the modelled SMMU: what its ID registers
//! advertise and therefore which STE/CD/command values it accepts.

use crate::regs::{iidr, oas_bits_to_field};

/// Hardware translation table update support (SMMU_IDR0.HTTU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Httu {
    /// No hardware updates: a clear access flag always faults.
    None,
    /// Hardware access-flag updates only.
    AccessFlag,
    /// Hardware access-flag and dirty-state updates.
    AccessAndDirty,
}

/// Stall support (SMMU_IDR0.STALL_MODEL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StallModel {
    /// Stall and terminate models both supported (encoding 0b00).
    StallAndTerminate,
    /// Only the terminate model (0b01): CD.S / STE.S2S = 1 is illegal.
    TerminateOnly,
    /// Stall forced (0b10): faults of stall-capable streams always stall.
    StallForced,
}

impl StallModel {
    pub(crate) fn field(self) -> u32 {
        match self {
            Self::StallAndTerminate => 0,
            Self::TerminateOnly => 1,
            Self::StallForced => 2,
        }
    }
}

/// Errors from [`ModelConfig::validate`] and [`crate::SmmuModel::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither stage 1 nor stage 2 is implemented.
    #[error("at least one translation stage must be implemented")]
    NoStage,
    /// No translation granule is advertised.
    #[error("at least one translation granule must be implemented")]
    NoGranule,
    /// The output address size is not one of 32, 36, 40, 42, 44, 48, 52.
    #[error("unsupported output address size {0} bits")]
    BadOas(u8),
    /// A 52-bit output address size needs the 64 KiB granule.
    #[error("a 52-bit OAS needs the 64 KiB granule")]
    Oas52Without64k,
    /// SIDSIZE above 32 or SSIDSIZE above 20.
    #[error("stream ID size {sid} / substream ID size {ssid} out of range")]
    BadIdSize {
        /// Requested StreamID bits.
        sid: u8,
        /// Requested SubstreamID bits.
        ssid: u8,
    },
    /// A queue size (log2 entries) outside 0..=19.
    #[error("queue size 2^{0} entries is out of range")]
    BadQueueSize(u8),
    /// Two-level CD tables advertised without substreams.
    #[error("CD2L needs a non-zero SSIDSIZE")]
    Cd2lWithoutSubstreams,
    /// Stream IDs wider than 7 bits need 2-level stream table support
    /// in this model (a linear table of 2^SIDSIZE STEs would be absurd).
    #[error("SIDSIZE {0} needs 2-level stream table support")]
    NeedTwoLevel(u8),
    /// IDR0.COHACC was forced to a value that contradicts the memory's
    /// coherency.
    #[error("coherent access forced to {forced} but the simulated memory is {actual:?}")]
    CoherencyMismatch {
        /// The forced value of COHACC.
        forced: bool,
        /// The memory's coherency.
        actual: sim_memory::Coherency,
    },
    /// A TLB or config cache capacity of zero.
    #[error("cache capacities must be non-zero")]
    ZeroCapacity,
}

/// Implementation choices of the model. [`Default`] is a rich SMMU (an
/// MMU-700-like part with stage 1, stage 2, nesting, 2-level tables, range
/// invalidation and all granules); see also the presets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Stage 1 translation (IDR0.S1P).
    pub stage1: bool,
    /// Stage 2 translation (IDR0.S2P). With `stage1`, nesting is available.
    pub stage2: bool,
    /// 16-bit ASIDs (IDR0.ASID16).
    pub asid16: bool,
    /// 16-bit VMIDs (IDR0.VMID16).
    pub vmid16: bool,
    /// StreamID bits (IDR1.SIDSIZE), 0..=32.
    pub sid_bits: u8,
    /// SubstreamID bits (IDR1.SSIDSIZE), 0..=20.
    pub ssid_bits: u8,
    /// 2-level stream tables (IDR0.ST_LEVEL = 0b01).
    pub two_level_strtab: bool,
    /// 2-level CD tables (IDR0.CD2L).
    pub cd2l: bool,
    /// Range invalidation (IDR3.RIL).
    pub ril: bool,
    /// Break-before-make level (IDR3.BBML), 0..=2.
    pub bbml: u8,
    /// Output address size in bits: 32, 36, 40, 42, 44, 48 or 52 (IDR5.OAS).
    pub oas_bits: u8,
    /// 4 KiB granule (IDR5.GRAN4K).
    pub gran4k: bool,
    /// 16 KiB granule (IDR5.GRAN16K).
    pub gran16k: bool,
    /// 64 KiB granule (IDR5.GRAN64K).
    pub gran64k: bool,
    /// 52-bit virtual addresses with 64 KiB granule (IDR5.VAX = 0b01).
    pub vax52: bool,
    /// log2 of the maximum command queue entries (IDR1.CMDQS), <= 19.
    pub cmdq_log2: u8,
    /// log2 of the maximum event queue entries (IDR1.EVENTQS), <= 19.
    pub evtq_log2: u8,
    /// Implementation identification register value (SMMU_IIDR).
    pub iidr: u32,
    /// Architecture minor revision (SMMU_AIDR.ArchMinorRev): 0 = v3.0,
    /// 1 = v3.1, 2 = v3.2 ...
    pub arch_minor: u8,
    /// Hardware access flag / dirty updates (IDR0.HTTU).
    pub httu: Httu,
    /// ATS (IDR0.ATS): ATC_INV is legal and translated transactions may be
    /// allowed by STE.EATS.
    pub ats: bool,
    /// Event-based completion of CMD_SYNC (IDR0.SEV).
    pub sev: bool,
    /// MSIs (IDR0.MSI): CMD_SYNC can complete by an MSI write to memory.
    pub msi: bool,
    /// EL2 translation regime (IDR0.HYP): STE.STRW = EL2 and TLBI_EL2_*.
    pub hyp: bool,
    /// Broadcast TLB maintenance (IDR0.BTM); advertised only.
    pub btm: bool,
    /// Stall support (IDR0.STALL_MODEL).
    pub stall_model: StallModel,
    /// Terminate model (IDR0.TERM_MODEL): `true` means CD.A = 0 (RAZ/WI
    /// termination) is not supported and always aborts.
    pub term_model_abort_only: bool,
    /// STE.PRIVCFG/INSTCFG overrides (IDR1.ATTR_PERMS_OVR); without it the
    /// incoming privilege and instruction attributes are always used.
    pub attr_perms_ovr: bool,
    /// Hierarchical attribute disables (IDR3.HAD).
    pub had: bool,
    /// Extended XN encodings at stage 2 (IDR3.XNX).
    pub xnx: bool,
    /// Force IDR0.COHACC; `None` derives it from the memory (coherent memory
    /// means COHACC = 1). A forced value must match the memory.
    pub coherent: Option<bool>,
    /// SMMU_GBPA.ABORT out of reset: `true` aborts all traffic while the SMMU
    /// is disabled until software sets bypass through the GBPA handshake.
    pub gbpa_abort_at_reset: bool,
    /// Maximum TLB entries before the model evicts (all entries are dropped
    /// at once, which a correct driver can never observe).
    pub tlb_capacity: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            stage1: true,
            stage2: true,
            asid16: true,
            vmid16: true,
            sid_bits: 16,
            ssid_bits: 8,
            two_level_strtab: true,
            cd2l: true,
            ril: true,
            bbml: 2,
            oas_bits: 48,
            gran4k: true,
            gran16k: true,
            gran64k: true,
            vax52: false,
            cmdq_log2: 10,
            evtq_log2: 10,
            iidr: iidr(iidr::PRODUCT_MMU700, 1, 1),
            arch_minor: 2,
            httu: Httu::None,
            ats: false,
            sev: true,
            msi: true,
            hyp: false,
            btm: false,
            stall_model: StallModel::StallAndTerminate,
            term_model_abort_only: false,
            attr_perms_ovr: true,
            had: true,
            xnx: true,
            coherent: None,
            gbpa_abort_at_reset: true,
            tlb_capacity: 1 << 16,
        }
    }
}

impl ModelConfig {
    /// Returns the configuration whose ID registers match QEMU 10's
    /// `-M virt,iommu=smmuv3` (IDR0 = 0x0d44101b, IDR1 = 0x02730010,
    /// IDR3 = 0x1414, IDR5 = 0x74, IIDR = 0, AIDR = 1) on coherent memory.
    pub fn qemu_like() -> Self {
        Self {
            ssid_bits: 0,
            cd2l: false,
            oas_bits: 44,
            cmdq_log2: 19,
            evtq_log2: 19,
            iidr: 0,
            arch_minor: 1,
            sev: false,
            msi: false,
            stall_model: StallModel::TerminateOnly,
            term_model_abort_only: true,
            attr_perms_ovr: false,
            gbpa_abort_at_reset: false,
            ..Self::default()
        }
    }

    /// Returns QEMU's older stage-1-only configuration (`-M virt-9.1`).
    pub fn qemu_stage1_only() -> Self {
        Self {
            stage2: false,
            // QEMU's virt-9.1 SMMU reports IDR3 = 0x1404: no XNX without
            // stage 2.
            xnx: false,
            ..Self::qemu_like()
        }
    }

    /// Returns the default rich configuration without stage 2.
    pub fn stage1_only() -> Self {
        Self {
            stage2: false,
            ..Self::default()
        }
    }

    /// Returns the default rich configuration without stage 1.
    pub fn stage2_only() -> Self {
        Self {
            stage1: false,
            ssid_bits: 0,
            cd2l: false,
            ..Self::default()
        }
    }

    /// Returns an Arm CoreLink MMU-600-like configuration (SMMUv3.1: no
    /// range invalidation, no BBML) of the given variant and revision.
    pub fn mmu600(variant: u8, revision: u8) -> Self {
        Self {
            ril: false,
            bbml: 0,
            ssid_bits: 20,
            iidr: iidr(iidr::PRODUCT_MMU600, variant, revision),
            arch_minor: 1,
            httu: Httu::AccessAndDirty,
            ..Self::default()
        }
    }

    /// Returns an Arm CoreLink MMU-700-like configuration (SMMUv3.2 with
    /// RIL and BBML2) of the given variant and revision.
    pub fn mmu700(variant: u8, revision: u8) -> Self {
        Self {
            ssid_bits: 20,
            iidr: iidr(iidr::PRODUCT_MMU700, variant, revision),
            httu: Httu::AccessAndDirty,
            ..Self::default()
        }
    }

    /// Checks the configuration for values no implementation could have.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.stage1 && !self.stage2 {
            return Err(ConfigError::NoStage);
        }
        if !(self.gran4k || self.gran16k || self.gran64k) {
            return Err(ConfigError::NoGranule);
        }
        if oas_bits_to_field(self.oas_bits).is_none() {
            return Err(ConfigError::BadOas(self.oas_bits));
        }
        if self.oas_bits == 52 && !self.gran64k {
            return Err(ConfigError::Oas52Without64k);
        }
        if self.sid_bits > 32 || self.ssid_bits > 20 {
            return Err(ConfigError::BadIdSize {
                sid: self.sid_bits,
                ssid: self.ssid_bits,
            });
        }
        for q in [self.cmdq_log2, self.evtq_log2] {
            if q > 19 {
                return Err(ConfigError::BadQueueSize(q));
            }
        }
        if self.cd2l && self.ssid_bits == 0 {
            return Err(ConfigError::Cd2lWithoutSubstreams);
        }
        if self.sid_bits > 24 && !self.two_level_strtab {
            return Err(ConfigError::NeedTwoLevel(self.sid_bits));
        }
        if self.tlb_capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        Ok(())
    }
}
