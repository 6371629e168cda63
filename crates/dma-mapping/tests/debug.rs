//! DMA debugging: misuse is reported and refused without changing
//! anything; leaks are reported at teardown.

mod common;

use std::sync::Arc;

use common::*;
use dma_mapping::{
    Attrs, CoherentBuffer, DebugReport, DeviceConfig, Direction, DmaAddr, DmaDebug, DmaDevice,
    DmaError, Invalidation,
};
use sim_memory::Coherency;

#[test]
fn misuse_is_reported_and_refused() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dbg = Arc::new(DmaDebug::new());
    let dev = f.device(DeviceConfig::new(9)).with_debug(dbg.clone());
    let pa = f.buffer(8192, 1);
    // SAFETY: test-owned buffer; refused calls touch nothing.
    unsafe {
        let dma = dev
            .map_phys(pa, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert_eq!(dbg.live(), 1);
        let wrong_size = dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty());
        assert_eq!(
            wrong_size,
            Err(DmaError::Debug(DebugReport::WrongSize {
                dev: 9,
                addr: dma,
                map_size: 8192,
                unmap_size: 4096
            }))
        );
        let wrong_dir = dev.unmap_phys(dma, 8192, Direction::FromDevice, Attrs::empty());
        assert!(matches!(
            wrong_dir,
            Err(DmaError::Debug(DebugReport::WrongDirection { .. }))
        ));
        // Refused: the whole mapping is still there.
        assert!(f.dev_read(dma.0 + 4096, 4).is_some());
        dev.sync_for_cpu(DmaAddr(dma.0 + 4096), 4096, Direction::ToDevice)
            .unwrap();
        let outside = dev.sync_for_cpu(DmaAddr(dma.0 + 4096), 8192, Direction::ToDevice);
        assert!(matches!(
            outside,
            Err(DmaError::Debug(DebugReport::SyncUnmapped { .. }))
        ));
        dev.unmap_phys(dma, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert_eq!(
            dev.unmap_phys(dma, 8192, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::Debug(DebugReport::DoubleUnmap {
                dev: 9,
                addr: dma
            }))
        );
        f.assert_unreachable(dma.0, 8192);
    }
    assert_eq!(dbg.take_reports().len(), 4);
}

#[test]
fn the_direct_path_detects_double_unmaps_only_with_debugging() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dbg = Arc::new(DmaDebug::new());
    let dev: DirectDev =
        dma_mapping::DmaDevice::direct(DeviceConfig::new(3), f.env.clone()).with_debug(dbg.clone());
    let pa = f.buffer(4096, 1);
    // SAFETY: test-owned buffer.
    unsafe {
        let dma = dev
            .map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert!(matches!(
            dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::Debug(DebugReport::DoubleUnmap { .. }))
        ));
    }
}

#[test]
fn leaks_are_reported_at_teardown() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dbg = Arc::new(DmaDebug::new());
    let pa = f.buffer(4096, 1);
    let dma = {
        let dev = f.device(DeviceConfig::new(5)).with_debug(dbg.clone());
        // SAFETY: test-owned buffer.
        unsafe { dev.map_phys(pa, 4096, Direction::ToDevice, Attrs::empty()) }.unwrap()
    };
    assert_eq!(
        dbg.take_reports(),
        vec![DebugReport::Leak {
            dev: 5,
            addr: dma,
            size: 4096,
            phys: pa
        }]
    );
}

#[test]
fn without_debugging_a_short_unmap_is_trusted_as_linux_does() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let pa = f.buffer(8192, 1);
    // SAFETY: test-owned buffer; the misuse below is the point.
    unsafe {
        let dma = dev
            .map_phys(pa, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        // Debugging is off by default: a caller's wrong size is believed,
        // so the second granule stays mapped. This is what DMA debugging
        // is for.
        dev.unmap_phys(dma, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        f.assert_unreachable(dma.0, 4096);
        assert!(f.dev_read(dma.0 + 4096, 4).is_some());
    }
}

#[test]
fn coherent_allocations_are_tracked_and_a_bad_free_changes_nothing() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dbg = Arc::new(DmaDebug::new());
    let dev = f.device(DeviceConfig::new(1)).with_debug(dbg.clone());
    let pa = f.buffer(8192, 0x31);
    // SAFETY: test-owned buffer.
    let live = unsafe { dev.map_phys(pa, 8192, Direction::ToDevice, Attrs::empty()) }.unwrap();
    let c = dev.alloc_coherent(4096).unwrap();
    assert_eq!(dbg.live(), 2);
    let (cpu, phys, dma) = (c.cpu, c.phys, c.dma);
    // SAFETY: all three frees are refused by debugging before anything
    // changes.
    unsafe {
        // A forged buffer over the streaming mapping: before, its IOVA was
        // unmapped and `pa` handed to the coherent allocator.
        let forged = CoherentBuffer::from_raw_parts(cpu, pa, live, 8192);
        assert!(matches!(
            dev.free_coherent(forged),
            Err(DmaError::Debug(DebugReport::WrongDirection { .. }))
        ));
        let wrong_size = CoherentBuffer::from_raw_parts(cpu, phys, dma, 8192);
        assert_eq!(
            dev.free_coherent(wrong_size),
            Err(DmaError::Debug(DebugReport::WrongSize {
                dev: 1,
                addr: dma,
                map_size: 4096,
                unmap_size: 8192
            }))
        );
        let elsewhere = CoherentBuffer::from_raw_parts(cpu, phys, DmaAddr(dma.0 - 0x10_0000), 4096);
        assert!(matches!(
            dev.free_coherent(elsewhere),
            Err(DmaError::Debug(DebugReport::DoubleUnmap { .. }))
        ));
    }
    assert_eq!(f.dev_read(live.0, 8192).unwrap(), vec![0x31; 8192]);
    assert!(f.dev_write(dma.0, &[5; 64]));
    // SAFETY: the real allocation, unused now.
    unsafe { dev.free_coherent(c) }.unwrap();
    f.assert_unreachable(dma.0, 4096);
    // A second free of it is refused.
    // SAFETY: refused before anything changes.
    let again = unsafe { dev.free_coherent(CoherentBuffer::from_raw_parts(cpu, phys, dma, 4096)) };
    assert!(matches!(
        again,
        Err(DmaError::Debug(DebugReport::DoubleUnmap { .. }))
    ));
    assert_eq!(f.dev_read(live.0, 8), Some(vec![0x31; 8]));
    // SAFETY: the mapping above.
    unsafe { dev.unmap_phys(live, 8192, Direction::ToDevice, Attrs::empty()) }.unwrap();
    assert_eq!(dbg.live(), 0);
}

#[test]
fn without_debugging_a_double_coherent_free_is_not_mapped() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dev = f.device(DeviceConfig::new(1));
    let c = dev.alloc_coherent(4096).unwrap();
    let (cpu, phys, dma) = (c.cpu, c.phys, c.dma);
    // SAFETY: the allocation, unused.
    unsafe { dev.free_coherent(c) }.unwrap();
    // SAFETY: the IOMMU holds nothing there: refused, nothing freed.
    let again = unsafe { dev.free_coherent(CoherentBuffer::from_raw_parts(cpu, phys, dma, 4096)) };
    assert_eq!(again, Err(DmaError::NotMapped(dma)));
    f.assert_unreachable(dma.0, 4096);
}

#[test]
fn one_buffer_mapped_twice_at_one_address_unmaps_twice() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dbg = Arc::new(DmaDebug::new());
    let cfg = DeviceConfig {
        coherent: Some(true),
        ..DeviceConfig::new(1)
    };
    let dev: DirectDev = DmaDevice::direct(cfg, f.env.clone()).with_debug(dbg.clone());
    let pa = f.buffer(4096, 1);
    // SAFETY: test-owned buffer, mapped twice for reading (allowed).
    unsafe {
        let a = dev
            .map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let b = dev
            .map_phys(pa, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert_eq!(a, b, "the direct path gives one address");
        assert_eq!(dbg.live(), 2);
        // Before, the second map replaced the first's record and the
        // second unmap was refused as a double unmap.
        dev.unmap_phys(a, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        dev.unmap_phys(b, 4096, Direction::ToDevice, Attrs::empty())
            .unwrap();
        assert!(matches!(
            dev.unmap_phys(b, 4096, Direction::ToDevice, Attrs::empty()),
            Err(DmaError::Debug(DebugReport::DoubleUnmap { .. }))
        ));
    }
    assert_eq!(dbg.live(), 0);
    assert_eq!(dbg.take_reports().len(), 1);
}

#[test]
fn wrong_unmaps_of_adjacent_mappings_are_refused_and_change_neither() {
    let f = fixture(Coherency::Coherent, Invalidation::Strict);
    let dbg = Arc::new(DmaDebug::new());
    let dev = f.device(DeviceConfig::new(1)).with_debug(dbg.clone());
    let a = f.buffer(8192, 1);
    let b = f.buffer(8192, 2);
    // SAFETY: test-owned buffers; every misuse below is refused.
    unsafe {
        let da = dev
            .map_phys(a, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        let db = dev
            .map_phys(b, 8192, Direction::ToDevice, Attrs::empty())
            .unwrap();
        // Top-down: B sits right below A, so an oversized unmap of B would
        // run into A.
        assert_eq!(db.0 + 8192, da.0);
        for (addr, size) in [
            (db, 16384),
            (db, 4096),
            (DmaAddr(db.0 + 4096), 4096),
            (DmaAddr(db.0 + 8), 8184),
        ] {
            let e = dev.unmap_phys(addr, size, Direction::ToDevice, Attrs::empty());
            assert!(
                matches!(e, Err(DmaError::Debug(_))),
                "{addr} {size:#x}: {e:?}"
            );
        }
        let e = dev.unmap_phys(db, 8192, Direction::FromDevice, Attrs::empty());
        assert!(matches!(
            e,
            Err(DmaError::Debug(DebugReport::WrongDirection { .. }))
        ));
        // A sync running past the mapping's end.
        let e = dev.sync_for_cpu(DmaAddr(db.0 + 4096), 8192, Direction::ToDevice);
        assert!(matches!(
            e,
            Err(DmaError::Debug(DebugReport::SyncUnmapped { .. }))
        ));
        assert_eq!(f.dev_read(da.0, 8192).unwrap(), vec![1; 8192]);
        assert_eq!(f.dev_read(db.0, 8192).unwrap(), vec![2; 8192]);
        assert_eq!(dbg.take_reports().len(), 6);
        for d in [da, db] {
            dev.unmap_phys(d, 8192, Direction::ToDevice, Attrs::empty())
                .unwrap();
            f.assert_unreachable(d.0, 8192);
        }
    }
}
