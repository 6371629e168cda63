//! The DMA API by physical address, for Rust kernels, firmware and
//! hypervisors: `no_std` + `alloc`, over `smmuv3` domains or any IOMMU
//! behind the small [`IommuDomain`] trait.
//!
//! A [`DmaDevice`] is on one of three paths:
//!
//! * **direct** (no IOMMU): the device address is the physical address
//!   plus the device's offset;
//! * **IOMMU**: an IOVA from a Linux-grade allocator ([`iova`]), mapped
//!   with the direction's permissions (read-only to the device for
//!   to-device buffers), invalidated strictly or lazily ([`Invalidation`]);
//! * **bounce** ([`BouncePool`], a swiotlb): when forced, when a
//!   direct-path address is beyond the DMA mask, and for untrusted devices
//!   behind an IOMMU whose buffer does not fill its granules.
//!
//! On top: scatter-gather in one IOVA range ([`DmaDevice::map_sg`]), syncs,
//! coherent allocations, the link API ([`DmaDevice::iova_try_alloc`]),
//! DMA debugging ([`DmaDebug`]) and, with the `virtio` feature, the
//! `virtio-drivers` `Hal` ([`hal::VirtioHal`]) and a transport wrapper
//! that negotiates `VIRTIO_F_ACCESS_PLATFORM`
//! ([`access_platform::AccessPlatform`]).
//!
//! The environment ([`DmaEnv`]) supplies the CPU id, a clock, CPU cache
//! maintenance and CPU access to physical memory.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

#[cfg(feature = "virtio")]
pub mod access_platform;
pub mod bounce;
pub mod debug;
mod device;
mod dma_domain;
mod domain;
mod env;
mod error;
pub mod flush_queue;
#[cfg(feature = "virtio")]
pub mod hal;
pub mod iova;
mod link;
mod sg;
pub mod smmu;
mod types;

pub use bounce::{BounceError, BouncePool};
pub use debug::{DebugReport, DmaDebug};
pub use device::{CoherentBuffer, DeviceConfig, DmaDevice};
pub use dma_domain::{DmaDomain, DomainConfig, Invalidation};
pub use domain::{IommuDomain, NoIommu, NoIommuError};
pub use env::DmaEnv;
pub use error::{CacheError, DmaError};
pub use link::IovaRange;
pub use sg::SgMapping;
pub use types::{Attrs, Direction, DmaAddr, DmaSegment, IommuProt, PhysAddr, PhysSegment};
