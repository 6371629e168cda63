//! A virtio `Transport` that also negotiates `VIRTIO_F_ACCESS_PLATFORM`.
//!
//! virtio-drivers' device drivers accept only the features they know, and
//! none of them knows feature bit 33. QEMU's `iommu_platform=on` devices
//! offer it and refuse FEATURES_OK when the driver declines it (the device
//! would otherwise have to bypass the IOMMU). Accepting it promises that
//! the driver hands the device only addresses from the platform's DMA API,
//! which is what [`crate::hal::VirtioHal`] does. So instead of patching
//! the crate this wrapper adds the bit to what the driver writes, when the
//! device offered it, and passes everything else through:
//! `VirtIOBlk::<VirtioHal<P>, _>::new(AccessPlatform::new(pci_transport))`.

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Feature bit 33: the device accesses memory through the platform's
/// IOMMU (virtio 1.2, 6 "Reserved Feature Bits").
pub const ACCESS_PLATFORM: u64 = 1 << 33;

/// `inner` with `ACCESS_PLATFORM` accepted whenever the device offers it.
pub struct AccessPlatform<T> {
    inner: T,
    offered: bool,
}

impl<T: Transport> AccessPlatform<T> {
    /// Returns `inner` wrapped.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            offered: false,
        }
    }

    /// Returns the wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: Transport> Transport for AccessPlatform<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        let f = self.inner.read_device_features();
        self.offered = f & ACCESS_PLATFORM != 0;
        f
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        // A driver must not accept what was not offered.
        let extra = if self.offered { ACCESS_PLATFORM } else { 0 };
        self.inner.write_driver_features(driver_features | extra);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue);
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size);
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
