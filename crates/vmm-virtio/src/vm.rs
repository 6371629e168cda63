//! A VMM in miniature: guest RAM (`GuestMemoryMmap`), the model mounted on
//! it, and the guest's `smmuv3` driver talking to the model through the
//! device's MMIO handlers.

use std::sync::Arc;

use smmuv3::SmmuConfig;
use smmuv3_hosted::PollClock;
use smmuv3_model::{GuestRam, ModelConfig, RidMapping, SmmuDevice, SmmuModel};

use crate::frame::MmioFrame;
use crate::ram::{GuestDmaMemory, RamError};

/// The guest's SMMU driver (over MMIO exits and guest RAM).
pub type GuestSmmu = smmuv3::Smmu<(MmioFrame, GuestDmaMemory, PollClock)>;
/// A domain of the guest's driver.
pub type GuestDomain = smmuv3::Domain<(MmioFrame, GuestDmaMemory, PollClock)>;

/// Errors bringing a [`Vm`] up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Guest RAM could not be mapped.
    #[error("guest RAM: {0}")]
    Ram(#[from] RamError),
    /// The model refused its configuration.
    #[error("model: {0}")]
    Model(#[from] smmuv3_model::ConfigError),
    /// The guest driver failed.
    #[error("driver: {0}")]
    Driver(smmuv3::Error),
}

/// Guest RAM, the mounted SMMU and the guest driver.
pub struct Vm {
    /// Guest RAM and its allocator.
    pub ram: GuestDmaMemory,
    /// The model.
    pub model: Arc<SmmuModel>,
    /// The model as a mounted device.
    pub device: SmmuDevice,
    /// The guest's driver.
    pub smmu: GuestSmmu,
}

impl Vm {
    /// Returns a VM with `ram_size` bytes of guest RAM near `ram_base`, an
    /// SMMU of `model_cfg` (requester IDs map to StreamIDs one to one) and
    /// the guest driver brought up through MMIO.
    ///
    /// # Errors
    ///
    /// [`VmError`] naming the part that failed.
    pub fn new(ram_base: u64, ram_size: u64, model_cfg: ModelConfig) -> Result<Self, VmError> {
        let ram = GuestDmaMemory::create(ram_base, ram_size)?;
        let backend = Arc::new(GuestRam(ram.guest().clone()));
        let model = Arc::new(SmmuModel::with_memory(model_cfg, backend)?);
        let device = SmmuDevice::new(model.clone(), vec![RidMapping::identity()]);
        let smmu = GuestSmmu::new(
            MmioFrame::new(device.clone()),
            ram.clone(),
            PollClock::default(),
            SmmuConfig::default(),
        )
        .map_err(VmError::Driver)?;
        Ok(Self {
            ram,
            model,
            device,
            smmu,
        })
    }
}
