//! Coherent allocations on both paths.

mod common;

use common::*;
use dma_mapping::{DeviceConfig, DmaDevice, DmaError, Invalidation};

#[test]
fn coherent_memory_is_shared_without_syncs_and_gone_after_free() {
    both(|coh| {
        let f = fixture(coh, Invalidation::Strict);
        let dev = f.device(DeviceConfig::new(1));
        let buf = dev.alloc_coherent(6000).unwrap();
        assert_eq!(buf.size, 6000);
        assert_eq!(f.dev_read(buf.dma.0, 16).unwrap(), vec![0; 16], "zeroed");
        assert!(
            f.dev_write(buf.dma.0 + 8000, &[4; 8]),
            "mapped for the whole 8 KiB"
        );
        let dma = buf.dma;
        // SAFETY: the device is done with the buffer.
        unsafe { dev.free_coherent(buf) }.unwrap();
        f.assert_unreachable(dma.0, 8192);
        assert_eq!(dev.alloc_coherent(0).unwrap_err(), DmaError::ZeroSize);
    });
}

#[test]
fn direct_coherent_allocations_check_the_mask() {
    let f = fixture(sim_memory::Coherency::Coherent, Invalidation::Strict);
    let low: DirectDev = f.direct(DeviceConfig {
        dma_mask: (1 << 30) - 1,
        ..DeviceConfig::new(1)
    });
    assert!(matches!(
        low.alloc_coherent(4096),
        Err(DmaError::Unreachable { .. })
    ));
    let dev: DirectDev = DmaDevice::direct(DeviceConfig::new(2), f.env.clone());
    let b = dev.alloc_coherent(4096).unwrap();
    assert_eq!(b.dma.0, b.phys);
    // SAFETY: unused by any device.
    unsafe { dev.free_coherent(b) }.unwrap();
}
