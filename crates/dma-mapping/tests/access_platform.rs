//! `AccessPlatform` against a transport that negotiates as QEMU's
//! `iommu_platform=on` devices do: ACCESS_PLATFORM offered, FEATURES_OK
//! refused unless the driver accepted it.
#![cfg(feature = "virtio")]

use dma_mapping::access_platform::{ACCESS_PLATFORM, AccessPlatform};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

bitflags::bitflags! {
    /// What a virtio-drivers device driver supports: no bit 33.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct DriverFeatures: u64 {
        const FLUSH = 1 << 9;
        const VERSION_1 = 1 << 32;
    }
}

/// A device offering `offered`, refusing FEATURES_OK without ACCESS_PLATFORM
/// when it offered it (QEMU's `virtio_validate_features`).
struct Device {
    offered: u64,
    accepted: Option<u64>,
    status: DeviceStatus,
}

impl Device {
    fn new(offered: u64) -> Self {
        Self {
            offered,
            accepted: None,
            status: DeviceStatus::empty(),
        }
    }
}

impl Transport for Device {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        self.offered
    }
    fn write_driver_features(&mut self, f: u64) {
        self.accepted = Some(f);
    }
    fn max_queue_size(&mut self, _: u16) -> u32 {
        16
    }
    fn notify(&mut self, _: u16) {}
    fn get_status(&self) -> DeviceStatus {
        self.status
    }
    fn set_status(&mut self, status: DeviceStatus) {
        let wants_ok = status.contains(DeviceStatus::FEATURES_OK);
        let accepted = self.accepted.unwrap_or(0);
        if wants_ok && self.offered & ACCESS_PLATFORM != 0 && accepted & ACCESS_PLATFORM == 0 {
            return; // refused: the status stays as it was
        }
        self.status = status;
    }
    fn set_guest_page_size(&mut self, _: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, _: u16, _: u32, _: PhysAddr, _: PhysAddr, _: PhysAddr) {}
    fn queue_unset(&mut self, _: u16) {}
    fn queue_used(&mut self, _: u16) -> bool {
        false
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, _: usize) -> Result<T, Error> {
        Err(Error::ConfigSpaceMissing)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _: usize,
        _: T,
    ) -> Result<(), Error> {
        Err(Error::ConfigSpaceMissing)
    }
}

const IOMMU_DEVICE: u64 = ACCESS_PLATFORM | (1 << 32) | (1 << 9);

#[test]
fn without_the_wrapper_the_device_refuses_features_ok() {
    let mut t = Device::new(IOMMU_DEVICE);
    let negotiated = t.begin_init(DriverFeatures::all());
    assert_eq!(negotiated, DriverFeatures::all());
    assert_eq!(t.accepted, Some((1 << 32) | (1 << 9)));
    assert!(!t.get_status().contains(DeviceStatus::FEATURES_OK));
}

#[test]
fn the_wrapper_accepts_access_platform_when_offered() {
    let mut t = AccessPlatform::new(Device::new(IOMMU_DEVICE));
    let negotiated = t.begin_init(DriverFeatures::VERSION_1);
    // The driver's own view is unchanged; the device sees bit 33 accepted.
    assert_eq!(negotiated, DriverFeatures::VERSION_1);
    assert_eq!(t.inner().accepted, Some(ACCESS_PLATFORM | (1 << 32)));
    assert!(t.get_status().contains(DeviceStatus::FEATURES_OK));
}

#[test]
fn the_wrapper_adds_nothing_the_device_did_not_offer() {
    let mut t = AccessPlatform::new(Device::new((1 << 32) | (1 << 9)));
    t.begin_init(DriverFeatures::all());
    assert_eq!(t.inner().accepted, Some((1 << 32) | (1 << 9)));
    assert!(t.get_status().contains(DeviceStatus::FEATURES_OK));
}
