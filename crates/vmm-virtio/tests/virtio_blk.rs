//! The real data path in one process: virtio-drivers' block driver (the
//! guest side, written by others) talks to a virtio-blk device built on
//! rust-vmm's virtio-queue (the VMM side) through an in-process transport;
//! every device access goes through vm-memory's `IommuMemory` and the
//! model, and every guest buffer is mapped by our `smmuv3` driver, which
//! itself runs against the model through the mounted device's MMIO
//! handlers, with its tables in the VMM's `GuestMemoryMmap`.

use io_pgtable::Granule;
use smmuv3::AttachOptions;
use smmuv3::event::EventType;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use smmuv3_model::{IrqLine, ModelConfig, pci_rid, regs};
use virtio_drivers::Error as VirtioError;
use virtio_drivers::device::blk::{BlkReq, BlkResp, SECTOR_SIZE, VirtIOBlk};
use vm_memory::iommu::IommuMemory;
use vm_memory::{Bytes, GuestAddress};
use vmm_virtio::blk::F_ACCESS_PLATFORM;
use vmm_virtio::{
    AccessPlatform, BlkDevice, GuestDomain, HalGuard, InProcessTransport, SharedBlk, SmmuHal, Vm,
};

const SECTORS: usize = 64;

fn disk_image() -> Vec<u8> {
    (0..SECTORS * SECTOR_SIZE)
        .map(|i| (i / SECTOR_SIZE) as u8 ^ (i as u8).wrapping_mul(7))
        .collect()
}

struct Setup {
    vm: Vm,
    sid: u32,
    blk: VirtIOBlk<SmmuHal, AccessPlatform<InProcessTransport>>,
    handle: SharedBlk,
    _hal: HalGuard,
}

fn setup() -> Setup {
    let vm = Vm::new(0x4000_0000, 32 << 20, ModelConfig::default()).unwrap();
    let rid = pci_rid(0, 3, 0);
    let sid = vm.device.stream_id(rid).unwrap();
    let dom = GuestDomain::new_stage1(&vm.smmu, Granule::K4, 48).unwrap();
    vm.smmu
        .attach(sid, None, &dom, AttachOptions::default())
        .unwrap();
    let mem = IommuMemory::new(
        vm.ram.guest().clone(),
        vm.device.iommu_for(rid).unwrap(),
        false,
        (),
    );
    let transport = InProcessTransport::new(BlkDevice::new(mem, disk_image(), 16).unwrap());
    let handle = transport.handle();
    let hal = SmmuHal::install(dom, vm.ram.clone());
    let blk = VirtIOBlk::<SmmuHal, _>::new(AccessPlatform(transport)).unwrap();
    Setup {
        vm,
        sid,
        blk,
        handle,
        _hal: hal,
    }
}

/// After every unmap the device cannot reach the old memory: neither the
/// model nor the device's IommuMemory translates any released IOVA.
fn assert_released_unreachable(s: &Setup) {
    let released = SmmuHal::with(|c| c.released().to_vec()).unwrap();
    assert!(!released.is_empty());
    let dev = s.handle.lock().unwrap();
    for m in released {
        for page in (m.iova..m.iova + m.len).step_by(4096) {
            assert!(!dev.dev.can_read(page, 1), "iova {page:#x} still reachable");
            assert_eq!(s.vm.model.cached_translation(s.sid, None, page), None);
        }
    }
    // Nor does anything else the model caches disagree with the tables.
    let audit = s.vm.model.audit_caches();
    assert!(audit.is_clean(), "{audit:?}");
}

#[test]
fn virtio_blk_reads_and_writes_a_disk_through_the_smmu() {
    let mut s = setup();
    let image = disk_image();
    {
        let b = s.handle.lock().unwrap();
        assert_ne!(b.driver_features() & F_ACCESS_PLATFORM, 0);
        assert!(b.live());
        assert!(b.dev.mem().get_iommu_enabled());
    }
    assert_eq!(s.blk.capacity(), SECTORS as u64);

    // Read into a buffer outside guest RAM (bounced through guest RAM).
    let mut buf = vec![0u8; 4 * SECTOR_SIZE];
    s.blk.read_blocks(3, &mut buf).unwrap();
    assert_eq!(buf, image[3 * SECTOR_SIZE..7 * SECTOR_SIZE]);

    // Write two sectors, read them back, and check the image itself.
    let data: Vec<u8> = (0..2 * SECTOR_SIZE).map(|i| (i * 13 + 1) as u8).collect();
    s.blk.write_blocks(10, &data).unwrap();
    assert_eq!(
        s.handle.lock().unwrap().dev.disk()[10 * SECTOR_SIZE..12 * SECTOR_SIZE],
        data[..]
    );
    let mut back = vec![0u8; 2 * SECTOR_SIZE];
    s.blk.read_blocks(10, &mut back).unwrap();
    assert_eq!(back, data);

    // Read into guest RAM directly (mapped in place, no bounce).
    let gpa = s.vm.ram.alloc(SECTOR_SIZE as u64 * 2).unwrap();
    let host = s.vm.ram.host_ptr(gpa).unwrap();
    // SAFETY: a fresh guest-RAM allocation of two sectors that nothing
    // else uses while this slice lives (the device writes it only while
    // the driver call below runs, which is what the slice is lent for).
    let in_ram = unsafe { core::slice::from_raw_parts_mut(host.as_ptr(), 2 * SECTOR_SIZE) };
    s.blk.read_blocks(0, in_ram).unwrap();
    assert_eq!(in_ram[..], image[..2 * SECTOR_SIZE]);
    let mut id = [0u8; 20];
    assert_eq!(s.blk.device_id(&mut id).unwrap(), 20);
    assert_eq!(&id, vmm_virtio::blk::DEVICE_ID);

    let st = s.handle.lock().unwrap().dev.stats().clone();
    assert_eq!(st.dma_faults, 0, "{:?}", st.last_fault);
    assert_eq!(st.requests, 5);
    // The device's DMA went through the model and its Iotlb.
    let ms = s.vm.model.stats();
    assert!(ms.translations > 0 && ms.walks > 0, "{ms:?}");
    assert_released_unreachable(&s);
    s.vm.ram.free(gpa, SECTOR_SIZE as u64 * 2);
}

#[test]
fn unmapping_a_buffer_under_a_request_faults_instead_of_touching_memory() {
    let mut s = setup();
    s.handle.lock().unwrap().serve_on_notify = false;
    // The VMM takes the SMMU's event interrupt through the callback; the
    // guest enables it with an MMIO write.
    let irqs = Arc::new(AtomicU32::new(0));
    let seen = irqs.clone();
    s.vm.model.set_irq_handler(Some(Arc::new(move |line| {
        if line == IrqLine::EventQ {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    })));
    s.vm.device
        .mmio_write(regs::IRQ_CTRL, &regs::irq_ctrl::EVENTQ_IRQEN.to_le_bytes())
        .unwrap();
    let gpa = s.vm.ram.alloc(SECTOR_SIZE as u64).unwrap();
    s.vm.ram
        .guest()
        .write_slice(&[0xee; SECTOR_SIZE], GuestAddress(gpa))
        .unwrap();
    let host = s.vm.ram.host_ptr(gpa).unwrap();
    // SAFETY: a fresh guest-RAM sector used only by this request.
    let buf = unsafe { core::slice::from_raw_parts_mut(host.as_ptr(), SECTOR_SIZE) };
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `buf` and `resp` stay valid and untouched until
    // `complete_read_blocks` below.
    let token = unsafe { s.blk.read_blocks_nb(1, &mut req, buf, &mut resp) }.unwrap();
    // The guest unmaps the data buffer (with its TLB invalidation) while
    // the request is in flight.
    let revoked = SmmuHal::with(|c| c.revoke_gpa(gpa)).flatten().unwrap();
    assert_eq!(irqs.load(Ordering::Relaxed), 0);
    assert_eq!(InProcessTransport::process(&s.handle), 1);
    assert_eq!(irqs.load(Ordering::Relaxed), 1, "one event, one interrupt");
    // SAFETY: the same buffers as passed to `read_blocks_nb`.
    let r = unsafe { s.blk.complete_read_blocks(token, &req, buf, &mut resp) };
    assert_eq!(r, Err(VirtioError::IoError));
    // Memory was not touched.
    let mut now = [0u8; SECTOR_SIZE];
    s.vm.ram
        .guest()
        .read_slice(&mut now, GuestAddress(gpa))
        .unwrap();
    assert_eq!(now, [0xee; SECTOR_SIZE]);
    // The device saw a fault, and the SMMU reported it for that IOVA.
    let st = s.handle.lock().unwrap().dev.stats().clone();
    assert_eq!((st.dma_faults, st.io_errors), (1, 1));
    assert!(st.last_fault.unwrap().contains("FTranslation"));
    let events = s.vm.smmu.drain_events().unwrap().events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].ty, EventType::Translation);
    assert_eq!(events[0].sid, s.sid);
    let fault = events[0].fault.unwrap();
    assert_eq!(fault.addr, revoked.iova);
    assert!(!fault.read);
    // The queue keeps working afterwards.
    s.handle.lock().unwrap().serve_on_notify = true;
    let mut ok = vec![0u8; SECTOR_SIZE];
    s.blk.read_blocks(1, &mut ok).unwrap();
    assert_eq!(ok, disk_image()[SECTOR_SIZE..2 * SECTOR_SIZE]);
}

#[test]
fn a_driver_without_access_platform_is_refused() {
    use virtio_drivers::transport::{DeviceStatus, Transport};
    let vm = Vm::new(0x4000_0000, 8 << 20, ModelConfig::default()).unwrap();
    let mem = IommuMemory::new(
        vm.ram.guest().clone(),
        vm.device.iommu_for(pci_rid(0, 4, 0)).unwrap(),
        false,
        (),
    );
    let mut t = InProcessTransport::new(BlkDevice::new(mem, disk_image(), 8).unwrap());
    // Plain virtio-drivers negotiation drops ACCESS_PLATFORM...
    let offered = t.read_device_features();
    t.write_driver_features(offered & !F_ACCESS_PLATFORM);
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    // ...and the device does not accept FEATURES_OK: it never DMAs with
    // untranslated addresses.
    assert!(!t.get_status().contains(DeviceStatus::FEATURES_OK));
    assert!(!t.handle().lock().unwrap().dev.mem().get_iommu_enabled());
    // Through the wrapper it is accepted.
    let mut w = AccessPlatform(t);
    let f = w.read_device_features() & !F_ACCESS_PLATFORM;
    w.write_driver_features(f);
    w.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    assert!(w.get_status().contains(DeviceStatus::FEATURES_OK));
}
