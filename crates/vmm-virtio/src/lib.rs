//! The software SMMUv3 mounted the way a Rust VMM mounts it, with a
//! virtio data path none of us wrote:
//!
//! * [`Vm`]: guest RAM as a `GuestMemoryMmap`, `smmuv3-model` mounted on it
//!   ([`smmuv3_model::SmmuDevice`]), and our `smmuv3` driver running as the
//!   guest's driver through the device's MMIO handlers ([`MmioFrame`]),
//!   with its tables in guest RAM ([`GuestDmaMemory`]);
//! * [`BlkDevice`]: a virtio-blk device on rust-vmm's `virtio-queue` whose
//!   every access goes through `IommuMemory` and the model;
//! * [`SmmuHal`]: virtio-drivers' `Hal` mapping every buffer through the
//!   guest's driver;
//! * [`InProcessTransport`] and [`AccessPlatform`]: virtio-drivers'
//!   `Transport` in process, negotiating VIRTIO_F_ACCESS_PLATFORM.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod blk;
pub mod frame;
pub mod hal;
pub mod ram;
pub mod transport;
pub mod vm;

pub use blk::{BlkDevice, BlkStats};
pub use frame::MmioFrame;
pub use hal::{HalContext, HalGuard, HalMapping, SmmuHal};
pub use ram::{GuestDmaMemory, RamError};
pub use transport::{AccessPlatform, DeviceMemory, InProcessTransport, SharedBlk};
pub use vm::{GuestDomain, GuestSmmu, Vm, VmError};
