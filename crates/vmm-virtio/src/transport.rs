//! An in-process virtio transport: virtio-drivers' `Transport` trait
//! implemented directly over the VMM-side [`BlkDevice`], plus
//! [`AccessPlatform`], the wrapper that accepts VIRTIO_F_ACCESS_PLATFORM
//! on the driver's behalf (virtio-drivers never negotiates it).

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error as VirtioError, PhysAddr};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vm_memory::iommu::IommuMemory;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::blk::{BlkDevice, F_ACCESS_PLATFORM, F_FLUSH, F_VERSION_1};
use smmuv3_model::StreamIommu;

/// The memory a device behind the SMMU accesses.
pub type DeviceMemory = IommuMemory<GuestMemoryMmap, StreamIommu>;

/// The block device as the transport and the test share it.
pub type SharedBlk = Arc<Mutex<BlkState>>;

/// The device and its transport-visible state.
#[derive(Debug)]
pub struct BlkState {
    /// The device.
    pub dev: BlkDevice<DeviceMemory>,
    status: DeviceStatus,
    driver_features: u64,
    isr: u32,
    /// Requests were made available but not yet served (deferred mode).
    pub kicked: bool,
    /// Serve requests inside `notify` (true) or only in
    /// [`InProcessTransport::process`] (false).
    pub serve_on_notify: bool,
}

impl BlkState {
    /// Returns the features the device offers.
    pub fn device_features() -> u64 {
        F_VERSION_1 | F_ACCESS_PLATFORM | F_FLUSH
    }

    /// Returns whether the driver set DRIVER_OK after a successful
    /// feature negotiation.
    pub fn live(&self) -> bool {
        self.status
            .contains(DeviceStatus::FEATURES_OK | DeviceStatus::DRIVER_OK)
    }

    /// Returns the features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Returns the status the driver sees.
    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    fn serve(&mut self) -> usize {
        self.kicked = false;
        if !self.live() {
            return 0;
        }
        let n = self.dev.process();
        if n > 0 {
            self.isr |= InterruptStatus::QUEUE_INTERRUPT.bits();
        }
        n
    }
}

/// virtio-drivers' `Transport` over a [`BlkState`] in the same process.
#[derive(Clone, Debug)]
pub struct InProcessTransport {
    blk: SharedBlk,
}

fn lock(b: &SharedBlk) -> MutexGuard<'_, BlkState> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

impl InProcessTransport {
    /// Returns a transport to `dev`, serving requests on notify.
    pub fn new(dev: BlkDevice<DeviceMemory>) -> Self {
        Self {
            blk: Arc::new(Mutex::new(BlkState {
                dev,
                status: DeviceStatus::empty(),
                driver_features: 0,
                isr: 0,
                kicked: false,
                serve_on_notify: true,
            })),
        }
    }

    /// Returns the shared device state (the VMM's handle).
    pub fn handle(&self) -> SharedBlk {
        self.blk.clone()
    }

    /// Serves available requests now (the VMM's I/O thread, in deferred
    /// mode); returns how many completed.
    pub fn process(blk: &SharedBlk) -> usize {
        lock(blk).serve()
    }

    fn config(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[..8].copy_from_slice(&lock(&self.blk).dev.sectors().to_le_bytes());
        c[12..16].copy_from_slice(&1u32.to_le_bytes()); // seg_max
        c[20..24].copy_from_slice(&512u32.to_le_bytes()); // blk_size
        c
    }
}

impl Transport for InProcessTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn read_device_features(&mut self) -> u64 {
        BlkState::device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        lock(&self.blk).driver_features = driver_features & BlkState::device_features();
    }

    fn max_queue_size(&mut self, _queue: u16) -> u32 {
        u32::from(lock(&self.blk).dev.queue_mut().max_size())
    }

    fn notify(&mut self, _queue: u16) {
        let mut b = lock(&self.blk);
        b.kicked = true;
        if b.serve_on_notify {
            b.serve();
        }
    }

    fn get_status(&self) -> DeviceStatus {
        lock(&self.blk).status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut b = lock(&self.blk);
        if status.is_empty() {
            // Reset.
            b.driver_features = 0;
            b.isr = 0;
            b.dev.queue_mut().reset();
            b.dev.mem_mut().set_iommu_enabled(false);
            b.status = status;
            return;
        }
        let mut status = status;
        if status.contains(DeviceStatus::FEATURES_OK) {
            // This device only works behind the platform's IOMMU: it
            // refuses a driver that did not accept ACCESS_PLATFORM
            // (FEATURES_OK then does not stick).
            if b.driver_features & F_ACCESS_PLATFORM == 0 {
                status.remove(DeviceStatus::FEATURES_OK);
            } else {
                b.dev.mem_mut().set_iommu_enabled(true);
            }
        }
        b.status = status;
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        _queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let mut b = lock(&self.blk);
        let q = b.dev.queue_mut();
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        q.set_size(size as u16);
        let (lo, hi) = split(descriptors);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(driver_area);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(device_area);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
    }

    fn queue_unset(&mut self, _queue: u16) {
        lock(&self.blk).dev.queue_mut().reset();
    }

    fn queue_used(&mut self, _queue: u16) -> bool {
        lock(&self.blk).dev.queue_mut().ready()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut b = lock(&self.blk);
        InterruptStatus::from_bits_truncate(std::mem::take(&mut b.isr))
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        let c = self.config();
        let bytes = c.get(offset..).ok_or(VirtioError::ConfigSpaceTooSmall)?;
        T::read_from_prefix(bytes)
            .map(|(v, _)| v)
            .map_err(|_| VirtioError::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> Result<(), VirtioError> {
        // virtio-blk's configuration is read-only here.
        Err(VirtioError::Unsupported)
    }
}

/// A transport wrapper that accepts VIRTIO_F_ACCESS_PLATFORM whenever the
/// device offers it: the driver's DMA then goes through the platform
/// IOMMU (our `Hal` maps every buffer), which is what the feature means.
#[derive(Debug)]
pub struct AccessPlatform<T>(pub T);

impl<T: Transport> Transport for AccessPlatform<T> {
    fn device_type(&self) -> DeviceType {
        self.0.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.0.read_device_features()
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let offered = self.0.read_device_features() & F_ACCESS_PLATFORM;
        self.0.write_driver_features(driver_features | offered);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.0.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.0.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.0.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.0.set_status(status)
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.0.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.0.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.0
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.0.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.0.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.0.read_config_generation()
    }

    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V, VirtioError> {
        self.0.read_config_space(offset)
    }

    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> Result<(), VirtioError> {
        self.0.write_config_space(offset, value)
    }
}
