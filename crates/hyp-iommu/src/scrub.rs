//! Scrubbing: what a reclaimed page goes through before the host may see
//! it again.

/// Scrubbing failed (the environment could not write the range).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scrub failed")]
pub struct ScrubError;

/// Zeroes physical memory as the hypervisor sees it, and makes the zeroes
/// what any device reads (clean to the point of coherency for a
/// non-coherent interconnect).
pub trait Scrub {
    /// Zeroes `[addr, addr + len)` (page aligned) for CPU and devices.
    ///
    /// # Errors
    ///
    /// [`ScrubError`] when the range could not be written.
    fn scrub(&self, addr: u64, len: u64) -> Result<(), ScrubError>;
}

impl<T: Scrub + ?Sized> Scrub for &T {
    fn scrub(&self, addr: u64, len: u64) -> Result<(), ScrubError> {
        (**self).scrub(addr, len)
    }
}
