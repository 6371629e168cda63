//! virtio-drivers' own `VirtQueue` over `VirtioHal` on the SMMUv3 model:
//! the queue's rings come from `dma_alloc`, its buffers from `share`; a
//! device emulated here follows the rings and buffers **by IOVA through the
//! model's DMA**, as a real device behind the SMMU does. After the driver
//! pops the request, the buffers' IOVAs fault.
#![cfg(feature = "virtio")]

mod common;

use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use dma_mapping::hal::{VirtioHal, VirtioPlatform};
use dma_mapping::{DeviceConfig, IommuDomain};
use sim_memory::Coherency;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

struct State {
    f: Fixture,
    dev: Dev,
}

fn state() -> &'static State {
    static CELL: OnceLock<State> = OnceLock::new();
    CELL.get_or_init(|| {
        // Coherent: virtio-drivers writes its rings through the CPU pointer
        // of `dma_alloc` memory, which the model cannot map uncached.
        let f = fixture(Coherency::Coherent, dma_mapping::Invalidation::Strict);
        let dev = f.device(DeviceConfig {
            pci: true,
            ..DeviceConfig::new(1)
        });
        State { f, dev }
    })
}

struct Platform;

impl VirtioPlatform for Platform {
    type Env = SimEnv;
    type Domain = Smmu;
    fn device() -> &'static Dev {
        &state().dev
    }
    fn virt_to_phys(vaddr: NonNull<u8>) -> u64 {
        state().f.sys.mem.phys_of(vaddr.as_ptr()).unwrap()
    }
    unsafe fn mmio_phys_to_virt(_paddr: u64, _size: usize) -> NonNull<u8> {
        unreachable!("no MMIO in this test")
    }
}

type Hal = VirtioHal<Platform>;

/// A transport with one queue whose addresses it records.
#[derive(Default)]
struct Recorder {
    status: u32,
    queue: Option<(u32, u64, u64, u64)>,
    notified: AtomicU32,
}

impl Transport for Recorder {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        0
    }
    fn write_driver_features(&mut self, _: u64) {}
    fn max_queue_size(&mut self, _: u16) -> u32 {
        16
    }
    fn notify(&mut self, _: u16) {
        self.notified.fetch_add(1, Ordering::Relaxed);
    }
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.status)
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.status = status.bits();
    }
    fn set_guest_page_size(&mut self, _: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, _: u16, size: u32, desc: PhysAddr, driver: PhysAddr, device: PhysAddr) {
        self.queue = Some((size, desc, driver, device));
    }
    fn queue_unset(&mut self, _: u16) {
        self.queue = None;
    }
    fn queue_used(&mut self, _: u16) -> bool {
        self.queue.is_some()
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

/// The device side, by IOVA through the model.
struct Device<'a>(&'a Fixture);

impl Device<'_> {
    fn read(&self, iova: u64, len: usize) -> Vec<u8> {
        self.0
            .dev_read(iova, len)
            .unwrap_or_else(|| panic!("device read of {iova:#x} faulted"))
    }
    fn u16(&self, iova: u64) -> u16 {
        u16::from_le_bytes(self.read(iova, 2).try_into().unwrap())
    }
    fn write(&self, iova: u64, data: &[u8]) {
        assert!(
            self.0.dev_write(iova, data),
            "device write of {iova:#x} faulted"
        );
    }

    /// Serves one request: uppercases the driver's bytes into the
    /// device-writable buffer. Returns the IOVAs it used.
    fn serve(&self, desc: u64, avail: u64, used: u64) -> Vec<u64> {
        assert_eq!(self.u16(avail + 2), 1, "one buffer made available");
        let mut id = self.u16(avail + 4);
        let head = id;
        let (mut input, mut touched, mut written) = (Vec::new(), Vec::new(), 0u32);
        loop {
            let d = self.read(desc + 16 * u64::from(id), 16);
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            let next = u16::from_le_bytes(d[14..16].try_into().unwrap());
            touched.push(addr);
            if flags & 2 == 0 {
                input.extend(self.read(addr, len as usize));
            } else {
                let out: Vec<u8> = input.iter().map(u8::to_ascii_uppercase).collect();
                self.write(addr, &out[..len as usize]);
                written += len;
            }
            if flags & 1 == 0 {
                break;
            }
            id = next;
        }
        // Used ring: flags u16, idx u16, then { id u32, len u32 }.
        self.write(used + 4, &u32::from(head).to_le_bytes());
        self.write(used + 8, &written.to_le_bytes());
        self.write(used + 2, &1u16.to_le_bytes());
        touched
    }
}

/// Returns a slice of `len` bytes of simulated memory filled with `data`.
fn sim_slice(f: &Fixture, data: &[u8]) -> &'static mut [u8] {
    let pa = f.buffer(data.len() as u64, 0);
    f.sys.mem.cpu_write(pa, data).unwrap();
    // SAFETY: a fresh allocation of the simulated memory, used only through
    // this slice (and, while shared, by the simulated device).
    unsafe { std::slice::from_raw_parts_mut(f.sys.mem.cpu_ptr(pa).unwrap(), data.len()) }
}

#[test]
fn a_virtio_drivers_queue_works_by_iova_and_its_buffers_fault_after_pop() {
    let f = &state().f;
    let mut t = Recorder::default();
    let mut q = VirtQueue::<Hal, 4>::new(&mut t, 0, false, false).unwrap();
    let (_, desc, avail, used) = t.queue.unwrap();
    // The rings are IOVAs (PCI: below 4 GiB), not physical addresses.
    for a in [desc, avail, used] {
        assert!(
            a < 1 << 32 && f.dom.domain().translate(a).is_some(),
            "{a:#x}"
        );
        assert_ne!(f.dom.domain().translate(a), Some(a));
    }
    let request = sim_slice(f, b"hello, smmu");
    let response = sim_slice(f, &[0; 11]);
    // SAFETY: the buffers stay untouched until pop_used below.
    let token = unsafe { q.add(&[request], &mut [response]) }.unwrap();
    if q.should_notify() {
        t.notify(0);
    }
    assert_eq!(t.notified.load(Ordering::Relaxed), 1);
    let touched = Device(f).serve(desc, avail, used);
    assert!(q.can_pop());
    // SAFETY: the same buffers as `add`.
    let len = unsafe { q.pop_used(token, &[request], &mut [response]) }.unwrap();
    assert_eq!(len, 11);
    assert_eq!(response, b"HELLO, SMMU");
    // Unshared: the device can no longer reach either buffer.
    for a in touched {
        f.assert_unreachable(a, 11);
    }
    // The rings stay mapped while the queue lives, and go with it.
    drop(q);
    for a in [desc, used] {
        f.assert_unreachable(a, 4096);
    }
}
