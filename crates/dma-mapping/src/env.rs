//! What the DMA layer needs from the system it runs in.

use core::ptr::NonNull;

use crate::error::CacheError;
use crate::types::PhysAddr;

/// The environment seam: CPU identity and time for the per-CPU caches and
/// the flush queue, CPU cache maintenance for non-coherent devices, and CPU
/// access to physical memory for bounce copies and coherent allocations.
///
/// # Safety
///
/// Implementations must return from [`DmaEnv::phys_to_cpu`] pointers that
/// are valid for reads and writes of the asked length, and
/// [`DmaEnv::alloc_coherent`] must hand out memory nothing else uses until
/// it is freed. The DMA layer relies on both for its copies.
pub unsafe trait DmaEnv: Send + Sync {
    /// Returns the current CPU's index. Values are taken modulo the number
    /// of CPUs the DMA layer was configured with, so any value is safe;
    /// distinct CPUs should return distinct indices for scaling.
    fn cpu_id(&self) -> usize;

    /// Returns a monotonic tick count (the flush queue's timeout is in
    /// these ticks).
    fn now_ticks(&self) -> u64;

    /// Cleans (writes back) the CPU caches over `[phys, phys + len)` so a
    /// non-coherent device reads what the CPU wrote.
    ///
    /// # Errors
    ///
    /// [`CacheError`] when the range is not managed.
    fn clean(&self, phys: PhysAddr, len: u64) -> Result<(), CacheError>;

    /// Invalidates the CPU caches over `[phys, phys + len)` so the CPU reads
    /// what a non-coherent device wrote.
    ///
    /// # Errors
    ///
    /// [`CacheError`] when the range is not managed.
    fn invalidate(&self, phys: PhysAddr, len: u64) -> Result<(), CacheError>;

    /// Returns a CPU pointer to `[phys, phys + len)`, or `None` if that is
    /// not RAM the CPU can reach linearly.
    fn phys_to_cpu(&self, phys: PhysAddr, len: u64) -> Option<NonNull<u8>>;

    /// Copies `len` bytes from physical `src` to physical `dst` through the
    /// CPU, returning whether both ranges were reachable.
    ///
    /// The default goes through [`DmaEnv::phys_to_cpu`]; environments whose
    /// memory needs special accesses (e.g. atomics) override it.
    ///
    /// # Safety
    ///
    /// Both ranges must be memory the caller owns for the copy (no live
    /// Rust reference to either), and they must not overlap.
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> bool {
        let (Some(d), Some(s)) = (self.phys_to_cpu(dst, len), self.phys_to_cpu(src, len)) else {
            return false;
        };
        // SAFETY: both pointers are valid for `len` bytes (trait contract),
        // owned by the caller and disjoint (our caller's contract).
        unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), d.as_ptr(), len as usize) };
        true
    }

    /// Zeroes `len` bytes at physical `dst`, returning whether the range
    /// was reachable.
    ///
    /// # Safety
    ///
    /// The range must be memory the caller owns.
    unsafe fn zero(&self, dst: PhysAddr, len: u64) -> bool {
        let Some(d) = self.phys_to_cpu(dst, len) else {
            return false;
        };
        // SAFETY: valid for `len` bytes (trait contract), owned by the caller.
        unsafe { core::ptr::write_bytes(d.as_ptr(), 0, len as usize) };
        true
    }

    /// Returns zeroed, `size`-aligned memory (`size` a power of two) that
    /// the CPU and the device see coherently (an uncached mapping for a
    /// non-coherent device), with its CPU pointer.
    fn alloc_coherent(&self, size: u64) -> Option<(PhysAddr, NonNull<u8>)>;

    /// Frees what [`DmaEnv::alloc_coherent`] returned.
    ///
    /// # Safety
    ///
    /// `phys` and `size` must be a live allocation of this environment that
    /// no device can reach any more.
    unsafe fn free_coherent(&self, phys: PhysAddr, size: u64);
}
