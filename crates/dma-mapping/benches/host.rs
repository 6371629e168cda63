//! A host environment (heap memory as "physical" memory, phys == CPU
//! address) and a null IOMMU domain, so the DMA layer's own cost is measured
//! apart from page-table and command-queue work.
#![allow(dead_code)]

use std::cell::Cell;
use std::convert::Infallible;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use dma_mapping::{CacheError, DmaEnv, IommuDomain, IommuProt};

thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread report CPU `cpu`.
pub fn set_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

/// Heap memory standing in for physical memory; coherent, no cache work.
#[derive(Default)]
pub struct HostEnv {
    ticks: AtomicU64,
}

// SAFETY: "physical" addresses are host addresses of heap memory the
// benchmark owns; `phys_to_cpu` returns them as they are.
unsafe impl DmaEnv for HostEnv {
    fn cpu_id(&self) -> usize {
        CPU.with(|c| c.get())
    }
    fn now_ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
    fn clean(&self, _phys: u64, _len: u64) -> Result<(), CacheError> {
        Ok(())
    }
    fn invalidate(&self, _phys: u64, _len: u64) -> Result<(), CacheError> {
        Ok(())
    }
    fn phys_to_cpu(&self, phys: u64, _len: u64) -> Option<NonNull<u8>> {
        NonNull::new(phys as *mut u8)
    }
    fn alloc_coherent(&self, _size: u64) -> Option<(u64, NonNull<u8>)> {
        None
    }
    unsafe fn free_coherent(&self, _phys: u64, _size: u64) {}
}

/// An IOMMU domain that maps and unmaps nothing (every call succeeds).
pub struct NullDomain;

impl IommuDomain for NullDomain {
    type Error = Infallible;
    fn pgsize_bitmap(&self) -> u64 {
        0x4000_1000 | 0x20_0000
    }
    fn iova_bits(&self) -> u32 {
        48
    }
    fn coherent(&self) -> bool {
        true
    }
    fn map(&self, _: u64, _: u64, _: u64, _: IommuProt) -> Result<(), Infallible> {
        Ok(())
    }
    fn sync_map(&self, _: u64, _: u64) -> Result<(), Infallible> {
        Ok(())
    }
    fn unmap(&self, _: u64, len: u64) -> Result<u64, Infallible> {
        Ok(len)
    }
    fn unmap_deferred(&self, _: u64, len: u64) -> Result<u64, Infallible> {
        Ok(len)
    }
    fn flush_all(&self) -> Result<(), Infallible> {
        Ok(())
    }
    fn translate(&self, iova: u64) -> Option<u64> {
        Some(iova)
    }
}

/// Returns a 2 KiB-aligned heap region of `size` bytes, leaked for the
/// benchmark's life, as a "physical" address.
pub fn region(size: usize) -> u64 {
    let v: Vec<u8> = vec![0x5a; size + 4096];
    let p = Box::leak(v.into_boxed_slice()).as_mut_ptr() as u64;
    (p + 4095) & !4095
}
