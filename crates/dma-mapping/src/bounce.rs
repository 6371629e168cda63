//! The bounce pool (Linux's swiotlb): a region of physical memory the
//! device can reach, handed out in 2 KiB slots, at most 256 KiB per mapping.

use alloc::vec;
use alloc::vec::Vec;

use spin::mutex::SpinMutex;

use crate::types::PhysAddr;

/// Bytes per slot.
pub const SLOT_SIZE: u64 = 2048;
/// Largest run one mapping may take.
pub const MAX_MAPPING: u64 = 256 * 1024;

const FREE: u32 = u32::MAX;

/// Why the pool refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BounceError {
    /// More than [`MAX_MAPPING`] bytes.
    #[error("{0:#x} bytes exceed the per-mapping limit")]
    TooLarge(u64),
    /// No free run fits.
    #[error("no free run of {0:#x} bytes")]
    Exhausted(u64),
    /// The pool's base or size is not slot aligned, or it is empty.
    #[error("pool must be a non-empty, 2 KiB aligned region")]
    BadRegion,
}

/// One live bounce mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceSlot {
    /// Start of the slot run (what an IOMMU maps).
    pub run_start: PhysAddr,
    /// Bytes of the run.
    pub run_len: u64,
    /// Where the buffer sits in the run.
    pub bounce: PhysAddr,
    /// The original buffer.
    pub orig: PhysAddr,
    /// Its size.
    pub size: u64,
}

#[derive(Clone, Copy)]
struct Head {
    orig: PhysAddr,
    size: u64,
    offset: u64,
    slots: u32,
}

struct State {
    /// Per slot: index of the run head holding it, or `FREE`.
    owner: Vec<u32>,
    heads: Vec<Option<Head>>,
    next: usize,
    used: usize,
}

/// A pool of bounce slots over `[base, base + size)`.
pub struct BouncePool {
    base: PhysAddr,
    nslots: usize,
    state: SpinMutex<State>,
}

impl BouncePool {
    /// Returns a pool over `[base, base + size)`, memory the caller gives
    /// to the pool for good.
    ///
    /// # Errors
    ///
    /// [`BounceError::BadRegion`] unless the region is non-empty and 2 KiB
    /// aligned.
    pub fn new(base: PhysAddr, size: u64) -> Result<Self, BounceError> {
        if size == 0 || base % SLOT_SIZE != 0 || size % SLOT_SIZE != 0 {
            return Err(BounceError::BadRegion);
        }
        base.checked_add(size).ok_or(BounceError::BadRegion)?;
        let nslots = (size / SLOT_SIZE) as usize;
        Ok(Self {
            base,
            nslots,
            state: SpinMutex::new(State {
                owner: vec![FREE; nslots],
                heads: vec![None; nslots],
                next: 0,
                used: 0,
            }),
        })
    }

    /// Returns the first byte of the pool.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// Returns the pool's size in bytes.
    pub fn size(&self) -> u64 {
        self.nslots as u64 * SLOT_SIZE
    }

    /// Returns whether `phys` lies in the pool.
    pub fn contains(&self, phys: PhysAddr) -> bool {
        phys >= self.base && phys - self.base < self.size()
    }

    /// Returns the number of slots in use.
    pub fn used_slots(&self) -> usize {
        self.state.lock().used
    }

    /// Reserves a run for `size` bytes of `orig` placed `offset` bytes into
    /// a run of `run_len` bytes aligned to `align` (a power of two).
    ///
    /// # Errors
    ///
    /// [`BounceError::TooLarge`], [`BounceError::Exhausted`].
    pub fn alloc(
        &self,
        orig: PhysAddr,
        size: u64,
        offset: u64,
        run_len: u64,
        align: u64,
    ) -> Result<BounceSlot, BounceError> {
        if run_len > MAX_MAPPING || offset + size > run_len {
            return Err(BounceError::TooLarge(run_len.max(offset + size)));
        }
        let need = run_len.div_ceil(SLOT_SIZE) as usize;
        let stride = (align.max(SLOT_SIZE) / SLOT_SIZE) as usize;
        let mut st = self.state.lock();
        let first = self
            .find(&st, need, stride)
            .ok_or(BounceError::Exhausted(run_len))?;
        for o in &mut st.owner[first..first + need] {
            *o = first as u32;
        }
        st.heads[first] = Some(Head {
            orig,
            size,
            offset,
            slots: need as u32,
        });
        st.used += need;
        st.next = (first + need) % self.nslots;
        let run_start = self.base + first as u64 * SLOT_SIZE;
        Ok(BounceSlot {
            run_start,
            run_len: need as u64 * SLOT_SIZE,
            bounce: run_start + offset,
            orig,
            size,
        })
    }

    /// Returns the first slot of a free, aligned run of `need` slots,
    /// searching from the rotating hint, then from the start.
    fn find(&self, st: &State, need: usize, stride: usize) -> Option<usize> {
        let total = self.nslots;
        // Alignment is of the physical address, so slot indices are
        // aligned relative to the base's own alignment.
        let base_slot = (self.base / SLOT_SIZE) as usize;
        let aligned = |i: usize| (base_slot + i) % stride == 0;
        let scan = |from: usize, to: usize| -> Option<usize> {
            let mut i = from;
            while i < to && i + need <= total {
                if !aligned(i) {
                    i += 1;
                    continue;
                }
                match st.owner[i..i + need].iter().rposition(|&o| o != FREE) {
                    None => return Some(i),
                    Some(busy) => i += busy + 1,
                }
            }
            None
        };
        scan(st.next, total).or_else(|| scan(0, st.next))
    }

    fn lookup_in(&self, st: &State, bounce: PhysAddr) -> Option<BounceSlot> {
        if !self.contains(bounce) {
            return None;
        }
        let idx = ((bounce - self.base) / SLOT_SIZE) as usize;
        let head = st.owner[idx];
        if head == FREE {
            return None;
        }
        let h = st.heads[head as usize]?;
        let run_start = self.base + u64::from(head) * SLOT_SIZE;
        let slot = BounceSlot {
            run_start,
            run_len: u64::from(h.slots) * SLOT_SIZE,
            bounce: run_start + h.offset,
            orig: h.orig,
            size: h.size,
        };
        (bounce >= slot.bounce && bounce - slot.bounce < slot.size).then_some(slot)
    }

    /// Returns the live mapping whose buffer contains `bounce`.
    pub fn lookup(&self, bounce: PhysAddr) -> Option<BounceSlot> {
        self.lookup_in(&self.state.lock(), bounce)
    }

    /// Releases the mapping whose buffer starts at `bounce`, returning it.
    pub fn release(&self, bounce: PhysAddr) -> Option<BounceSlot> {
        let mut st = self.state.lock();
        let slot = self.lookup_in(&st, bounce).filter(|s| s.bounce == bounce)?;
        let first = ((slot.run_start - self.base) / SLOT_SIZE) as usize;
        let n = (slot.run_len / SLOT_SIZE) as usize;
        for o in &mut st.owner[first..first + n] {
            *o = FREE;
        }
        st.heads[first] = None;
        st.used -= n;
        Some(slot)
    }
}
