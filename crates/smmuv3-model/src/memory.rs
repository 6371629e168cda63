//! What the SMMU reads and writes: the memory behind it, as the device
//! sees it.
//!
//! One walker, one TLB and one command/event path run over either backend:
//!
//! * [`SimMemory`]: the sanitizer mode. Reads go through the *device view*,
//!   so on non-coherent memory an uncleaned CPU store stays invisible;
//! * [`GuestRam`]: any `vm-memory` guest memory (a VMM's guest RAM, e.g.
//!   `GuestMemoryMmap`), which is coherent.

use core::fmt::Debug;
use core::sync::atomic::{AtomicU64, Ordering};

use sim_memory::{MemError, SimMemory};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory};

/// The memory an SMMU masters: table walks, structure fetches, queue
/// accesses, MSIs and translated DMA.
///
/// Implementations must make aligned 64-bit reads, writes and
/// compare-exchanges single-copy atomic (descriptor fetches and hardware
/// access-flag/dirty updates race with CPU stores).
pub trait DeviceMemory: Debug + Send + Sync {
    /// Returns whether device accesses see CPU stores without cache
    /// maintenance (IDR0.COHACC).
    fn coherent(&self) -> bool;

    /// Reads `buf.len()` bytes at physical address `pa`.
    ///
    /// # Errors
    ///
    /// [`MemError`] when the range is not memory or aborts.
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Writes `data` at physical address `pa`.
    ///
    /// # Errors
    ///
    /// As [`DeviceMemory::read`].
    fn write(&self, pa: u64, data: &[u8]) -> Result<(), MemError>;

    /// Reads an aligned little-endian 64-bit word, single-copy atomically.
    ///
    /// # Errors
    ///
    /// As [`DeviceMemory::read`], and for an unaligned `pa`.
    fn read_u64(&self, pa: u64) -> Result<u64, MemError>;

    /// Compares and swaps an aligned 64-bit word: `Ok(Ok(old))` when it held
    /// `old` and now holds `new`, `Ok(Err(current))` otherwise.
    ///
    /// # Errors
    ///
    /// As [`DeviceMemory::read_u64`].
    fn cmpxchg_u64(&self, pa: u64, old: u64, new: u64) -> Result<Result<u64, u64>, MemError>;

    /// Returns the memory as one array of aligned words, the first at
    /// [`DeviceMemory::word_view_base`], when the backend keeps it so and
    /// every word of the array reads as [`DeviceMemory::read_u64`] of its
    /// address would. The table walker takes it once per walk and reads
    /// descriptors from it without a call each.
    ///
    /// The default, `None`, sends every read through `read_u64`.
    fn word_view(&self) -> Option<&[AtomicU64]> {
        None
    }

    /// Returns the physical address of the first word of
    /// [`DeviceMemory::word_view`].
    ///
    /// A separate method rather than part of `word_view`'s result: an
    /// address and a slice are three words, which a call returns through
    /// memory, and the walker's copy of that result then waited for the
    /// callee's stores (a store-forwarding stall on every walk). A slice
    /// alone comes back in two registers.
    fn word_view_base(&self) -> u64 {
        0
    }
}

impl DeviceMemory for SimMemory {
    fn coherent(&self) -> bool {
        self.coherency() == sim_memory::Coherency::Coherent
    }

    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.dev_read(pa, buf)
    }

    fn write(&self, pa: u64, data: &[u8]) -> Result<(), MemError> {
        self.dev_write(pa, data)
    }

    fn read_u64(&self, pa: u64) -> Result<u64, MemError> {
        self.dev_read_u64(pa)
    }

    fn cmpxchg_u64(&self, pa: u64, old: u64, new: u64) -> Result<Result<u64, u64>, MemError> {
        self.dev_cmpxchg_u64(pa, old, new)
    }

    fn word_view(&self) -> Option<&[AtomicU64]> {
        // None while an abort is injected: then every read is checked.
        self.dev_word_view()
    }

    fn word_view_base(&self) -> u64 {
        self.base()
    }
}

/// A `vm-memory` guest memory (e.g. `GuestMemoryMmap`) as the SMMU's
/// coherent memory: what a VMM mounting the model gives it.
#[derive(Clone, Debug)]
pub struct GuestRam<M>(pub M);

impl<M> GuestRam<M> {
    /// Returns the guest memory.
    pub fn inner(&self) -> &M {
        &self.0
    }
}

fn out_of_range(pa: u64, len: usize) -> MemError {
    MemError::OutOfRange {
        pa,
        len: len as u64,
    }
}

impl<M: GuestMemoryBackend + Debug + Send + Sync> DeviceMemory for GuestRam<M> {
    fn coherent(&self) -> bool {
        true
    }

    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.0
            .read_slice(buf, GuestAddress(pa))
            .map_err(|_| out_of_range(pa, buf.len()))
    }

    fn write(&self, pa: u64, data: &[u8]) -> Result<(), MemError> {
        self.0
            .write_slice(data, GuestAddress(pa))
            .map_err(|_| out_of_range(pa, data.len()))
    }

    fn read_u64(&self, pa: u64) -> Result<u64, MemError> {
        if pa % 8 != 0 {
            return Err(out_of_range(pa, 8));
        }
        self.0
            .load::<u64>(GuestAddress(pa), Ordering::Acquire)
            .map(u64::from_le)
            .map_err(|_| out_of_range(pa, 8))
    }

    fn cmpxchg_u64(&self, pa: u64, old: u64, new: u64) -> Result<Result<u64, u64>, MemError> {
        if pa % 8 != 0 {
            return Err(out_of_range(pa, 8));
        }
        let slice = self
            .0
            .get_slice(GuestAddress(pa), 8)
            .map_err(|_| out_of_range(pa, 8))?;
        let word = slice
            .get_atomic_ref::<AtomicU64>(0)
            .map_err(|_| out_of_range(pa, 8))?;
        Ok(word
            .compare_exchange(
                old.to_le(),
                new.to_le(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(u64::from_le)
            .map_err(u64::from_le))
    }
}
