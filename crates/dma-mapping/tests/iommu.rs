//! The IOMMU path end to end on the SMMUv3 model: data moves, directions
//! are enforced, partial granules behave as Linux's, bad input changes
//! nothing, and after every unmap the device cannot reach the old memory.

mod common;

use common::*;
use dma_mapping::{Attrs, DeviceConfig, Direction, DmaAddr, DmaError, Invalidation, IommuDomain};
use sim_memory::Coherency;

#[test]
fn to_device_is_readable_read_only_and_gone_after_unmap() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = f.device(DeviceConfig::new(1));
        let pa = f.buffer(4096, 0x5a);
        // SAFETY: `pa` is a buffer this test owns.
        let dma = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(dma.0 & 0xfff, 0);
        // The device sees what the CPU wrote: on non-coherent memory only
        // because map cleaned the caches.
        assert_eq!(f.dev_read(dma.0, 4096).unwrap(), vec![0x5a; 4096]);
        // To-device mappings are read-only to the device.
        assert!(!f.dev_write(dma.0 + 8, &[1, 2, 3]));
        assert_eq!(f.cpu_read(pa + 8, 3), vec![0x5a; 3]);
        // SAFETY: the mapping above, DMA finished.
        unsafe { dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.assert_unreachable(dma.0, 4096);
        assert_eq!(dev.dma_domain().unwrap().domain().translate(dma.0), None);
    });
}

#[test]
fn from_device_data_reaches_the_cpu_after_unmap() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = f.device(DeviceConfig::new(1));
        let pa = f.buffer(8192, 0);
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(pa, 8192, Direction::FromDevice, Attrs::empty()) }.unwrap();
        assert!(f.dev_write(dma.0 + 4000, &[7; 200]));
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 8192, Direction::FromDevice, Attrs::empty()) }.unwrap();
        // Non-coherent: unmap invalidated the CPU's lines, so it sees the
        // device's data.
        assert_eq!(f.cpu_read(pa + 4000, 200), vec![7; 200]);
        f.assert_unreachable(dma.0, 8192);
    });
}

#[test]
fn skip_cpu_sync_leaves_cache_maintenance_to_the_caller() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 0x11);
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::SKIP_CPU_SYNC) }.unwrap();
    // Nothing was cleaned: the device reads the allocator's poison, not
    // the CPU's data.
    assert_ne!(f.dev_read(dma.0, 16).unwrap(), vec![0x11; 16]);
    // SAFETY: the mapping above.
    unsafe { dev.sync_for_device(dma, 4096, Direction::ToDevice) }.unwrap();
    assert_eq!(f.dev_read(dma.0, 16).unwrap(), vec![0x11; 16]);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::SKIP_CPU_SYNC) }.unwrap();
    f.assert_unreachable(dma.0, 4096);
}

#[test]
fn sync_for_cpu_shows_device_writes_without_unmapping() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 0);
    // SAFETY: test-owned buffer.
    let dma = unsafe { dev.map_phys(pa, 4096, Direction::Bidirectional, Attrs::empty()) }.unwrap();
    assert!(f.dev_write(dma.0 + 64, &[9; 64]));
    assert_eq!(
        f.cpu_read(pa + 64, 64),
        vec![0; 64],
        "stale CPU view before the sync"
    );
    // SAFETY: live mapping.
    unsafe { dev.sync_for_cpu(DmaAddr(dma.0 + 64), 64, Direction::Bidirectional) }.unwrap();
    assert_eq!(f.cpu_read(pa + 64, 64), vec![9; 64]);
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 4096, Direction::Bidirectional, Attrs::empty()) }.unwrap();
    f.assert_unreachable(dma.0, 4096);
    // A sync of an unmapped address is refused.
    // SAFETY: refused before touching memory.
    let e = unsafe { dev.sync_for_cpu(dma, 4096, Direction::Bidirectional) }.unwrap_err();
    assert_eq!(e, DmaError::NotMapped(dma));
}

#[test]
fn partial_granules_map_the_enclosing_granules_as_linux_does() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = f.device(DeviceConfig::new(1));
        let pa = f.buffer(8192, 0x33);
        let phys = pa + 0xff0;
        // 0x20 bytes straddling a granule boundary: two granules mapped.
        // SAFETY: test-owned buffer.
        let dma = unsafe { dev.map_phys(phys, 0x20, Direction::ToDevice, Attrs::empty()) }.unwrap();
        assert_eq!(dma.0 & 0xfff, 0xff0, "the in-granule offset is kept");
        assert_eq!(f.dev_read(dma.0, 0x20).unwrap(), vec![0x33; 0x20]);
        // A trusted device reaches the rest of both granules.
        assert!(f.dev_read(dma.0 - 0xff0, 1).is_some());
        assert!(f.dev_read(dma.0 + 0x100f, 1).is_some());
        // SAFETY: the mapping above.
        unsafe { dev.unmap_phys(dma, 0x20, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.assert_unreachable(dma.0 - 0xff0, 0x2000);
    });
}

#[test]
fn pci_devices_get_iovas_below_4g_first_unless_forcedac() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let pa = f.buffer(4096, 1);
    let pci = f.device(DeviceConfig {
        pci: true,
        ..DeviceConfig::new(1)
    });
    // SAFETY: test-owned buffer.
    let low = unsafe { pci.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert!(low.0 < 1 << 32, "{low}");
    let dac = f.device(DeviceConfig {
        pci: true,
        forcedac: true,
        ..DeviceConfig::new(2)
    });
    // SAFETY: test-owned buffer.
    let high = unsafe { dac.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert!(high.0 >= 1 << 32, "{high}");
    // Top-down: the first IOVA of a fresh 48-bit space is its last page.
    assert_eq!(high.0, (1 << 48) - 4096);
    let m32 = f.device(DeviceConfig {
        dma_mask: u32::MAX as u64,
        ..DeviceConfig::new(3)
    });
    // SAFETY: test-owned buffer.
    let m = unsafe { m32.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert!(m.0 + 4096 <= 1 << 32);
    for (d, a) in [(&pci, low), (&dac, high), (&m32, m)] {
        // SAFETY: the mappings above.
        unsafe { d.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.assert_unreachable(a.0, 4096);
    }
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(4096, 0x44);
    // SAFETY: test-owned buffer.
    let live = unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let iova_before = f.dom.iova().tree_free_pages();
    let cached_before = f.dom.iova().cached_frames();
    // SAFETY: every call below is refused before touching memory.
    unsafe {
        assert_eq!(
            dev.map_phys(pa, 0, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::ZeroSize)
        );
        assert_eq!(
            dev.map_phys(u64::MAX - 10, 20, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::Overflow {
                addr: u64::MAX - 10,
                size: 20
            })
        );
        assert_eq!(
            dev.map_phys(pa, 64, Direction::ToDevice, Attrs::REQUIRE_COHERENT),
            Err(DmaError::NotCoherent)
        );
        let never = DmaAddr(0x1234_5000);
        assert_eq!(
            dev.unmap_phys(never, 4096, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::NotMapped(never))
        );
        assert_eq!(
            dev.unmap_phys(DmaAddr(u64::MAX), 2, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::Overflow {
                addr: u64::MAX,
                size: 2
            })
        );
        assert_eq!(
            dev.unmap_phys(live, 0, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::ZeroSize)
        );
    }
    // Nothing changed: the live mapping still works, no IOVA moved.
    assert_eq!(f.dev_read(live.0, 8).unwrap(), vec![0x44; 8]);
    assert_eq!(f.dom.iova().tree_free_pages(), iova_before);
    assert_eq!(f.dom.iova().cached_frames(), cached_before);
    // SAFETY: the live mapping.
    unsafe { dev.unmap_phys(live, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
    // A second unmap is refused (the IOMMU holds nothing there).
    // SAFETY: refused before touching memory.
    let e = unsafe { dev.unmap_phys(live, 4096, Direction::ToDevice, Attrs::empty()) };
    assert_eq!(e, Err(DmaError::NotMapped(live)));
    f.assert_unreachable(live.0, 4096);
}

#[test]
fn mmio_mappings_are_never_bounced_or_synced() {
    let f = fixture(Coherency::NonCoherent, Invalidation::Strict);
    let pool = f.pool(64 * 1024);
    let dev = f
        .device(DeviceConfig {
            untrusted: true,
            ..DeviceConfig::new(1)
        })
        .with_bounce(pool.clone());
    let bar = f.buffer(4096, 0x66);
    // An unaligned MMIO range on an untrusted device would need a bounce:
    // refused.
    // SAFETY: refused before anything is mapped.
    let e = unsafe { dev.map_phys(bar + 8, 8, Direction::ToDevice, Attrs::MMIO) };
    assert_eq!(e, Err(DmaError::BounceRefused));
    assert_eq!(pool.used_slots(), 0);
    // A whole-granule MMIO range maps directly and is not cleaned: the
    // device sees the memory's device view (poison), not the CPU's bytes.
    // SAFETY: test-owned memory standing in for a BAR.
    let dma = unsafe { dev.map_phys(bar, 4096, Direction::Bidirectional, Attrs::MMIO) }.unwrap();
    assert_ne!(f.dev_read(dma.0, 8).unwrap(), vec![0x66; 8]);
    assert!(f.dev_write(dma.0, &[1; 8]));
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(dma, 4096, Direction::Bidirectional, Attrs::MMIO) }.unwrap();
    f.assert_unreachable(dma.0, 4096);
}

#[test]
fn iova_exhaustion_is_a_typed_error() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    // A device that can only address 16 pages of IOVA (frame 0 is
    // reserved, so 15 are usable).
    let dev = f.device(DeviceConfig {
        dma_mask: 16 * 4096 - 1,
        ..DeviceConfig::new(1)
    });
    let pa = f.buffer(4096, 2);
    let mut live = Vec::new();
    // SAFETY: test-owned buffer, mapped read-only many times.
    unsafe {
        loop {
            match dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) {
                Ok(a) => live.push(a),
                Err(e) => {
                    assert_eq!(e, DmaError::IovaExhausted { size: 4096 });
                    break;
                }
            }
        }
    }
    assert_eq!(live.len(), 15);
    for a in live {
        // SAFETY: the mappings above.
        unsafe { dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap();
        f.assert_unreachable(a.0, 4096);
    }
}

/// A domain reporting a geometry no IOMMU has.
struct Odd(u64, u32);

impl IommuDomain for Odd {
    type Error = std::convert::Infallible;
    fn pgsize_bitmap(&self) -> u64 {
        self.0
    }
    fn iova_bits(&self) -> u32 {
        self.1
    }
    fn coherent(&self) -> bool {
        true
    }
    fn map(&self, _: u64, _: u64, _: u64, _: dma_mapping::IommuProt) -> Result<(), Self::Error> {
        Ok(())
    }
    fn sync_map(&self, _: u64, _: u64) -> Result<(), Self::Error> {
        Ok(())
    }
    fn unmap(&self, _: u64, l: u64) -> Result<u64, Self::Error> {
        Ok(l)
    }
    fn unmap_deferred(&self, _: u64, l: u64) -> Result<u64, Self::Error> {
        Ok(l)
    }
    fn flush_all(&self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn translate(&self, _: u64) -> Option<u64> {
        None
    }
}

#[test]
fn impossible_domain_geometries_are_refused() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    for (bitmap, bits) in [(0, 48), (1, 48), (0x800, 48), (0x1000, 12), (0x1000, 65)] {
        let r = dma_mapping::DmaDomain::new(Odd(bitmap, bits), f.env.clone(), Default::default());
        assert!(matches!(r, Err(DmaError::BadDomain)), "{bitmap:#x} {bits}");
    }
    assert!(
        dma_mapping::DmaDomain::new(Odd(0x1000, 13), f.env.clone(), Default::default()).is_ok()
    );
}
