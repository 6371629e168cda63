//! Lazy invalidation: unmapped IOVAs wait in per-CPU rings until an IOTLB
//! flush that started after they were queued has completed; only then are
//! they given back to the allocator for reuse.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use spin::mutex::SpinMutex;

/// Entries per CPU ring (as Linux).
pub const RING_SIZE: usize = 256;

#[derive(Clone, Copy, Default)]
struct Entry {
    pfn: u64,
    pages: u64,
    /// Flushes started when the entry was queued.
    stamp: u64,
}

struct Ring {
    entries: [Entry; RING_SIZE],
    head: usize,
    len: usize,
}

impl Ring {
    fn pop_done(&mut self, finished: u64, free: &mut dyn FnMut(u64, u64)) {
        while self.len > 0 {
            let e = self.entries[self.head];
            if e.stamp >= finished {
                break;
            }
            free(e.pfn, e.pages);
            self.head = (self.head + 1) % RING_SIZE;
            self.len -= 1;
        }
    }
}

#[repr(align(128))]
struct CpuRing(SpinMutex<Ring>);

/// The per-CPU flush queues of one domain.
pub struct FlushQueue {
    rings: Box<[CpuRing]>,
    /// Flush tickets issued / highest ticket completed: an entry stamped
    /// `s` (tickets issued when it was queued) is safe to free once
    /// `finished > s`, i.e. a flush that started after it completed.
    started: AtomicU64,
    finished: AtomicU64,
    last_flush: AtomicU64,
    timeout: u64,
}

impl FlushQueue {
    /// Returns queues for `ncpus` CPUs, flushed at the latest `timeout`
    /// ticks after the previous flush (checked on every queue operation
    /// and by [`FlushQueue::tick`]).
    pub fn new(ncpus: usize, timeout: u64, now: u64) -> Self {
        Self {
            rings: (0..ncpus.max(1))
                .map(|_| {
                    CpuRing(SpinMutex::new(Ring {
                        entries: [Entry::default(); RING_SIZE],
                        head: 0,
                        len: 0,
                    }))
                })
                .collect(),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            last_flush: AtomicU64::new(now),
            timeout,
        }
    }

    /// Runs `flush` (an IOTLB invalidation of the whole domain) as a
    /// counted flush.
    fn counted<E>(&self, now: u64, flush: &dyn Fn() -> Result<(), E>) -> Result<(), E> {
        // Each flush takes a ticket; `finished` is the highest ticket that
        // completed, so a failed flush delays nothing beyond the next
        // successful one (counting completions instead would leave
        // `finished` one behind for good after a failure).
        let ticket = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        flush()?;
        self.finished.fetch_max(ticket, Ordering::AcqRel);
        self.last_flush.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Queues `[pfn, pfn + pages)` on CPU `cpu`'s ring. Frees (through
    /// `free`) what earlier flushes made safe; flushes first when the ring
    /// is full or the timeout passed.
    ///
    /// # Errors
    ///
    /// The flush's error. The range is then still queued when the ring has
    /// room; when the ring stayed full it is dropped from reuse for good
    /// (leaked, never freed unflushed).
    pub fn queue<E>(
        &self,
        cpu: usize,
        pfn: u64,
        pages: u64,
        now: u64,
        flush: &dyn Fn() -> Result<(), E>,
        free: &mut dyn FnMut(u64, u64),
    ) -> Result<(), E> {
        let n = self.rings.len();
        let mut ring = self.rings[if cpu < n { cpu } else { cpu % n }].0.lock();
        ring.pop_done(self.finished.load(Ordering::Acquire), free);
        let mut res = Ok(());
        if ring.len == RING_SIZE
            || now.wrapping_sub(self.last_flush.load(Ordering::Relaxed)) >= self.timeout
        {
            res = self.counted(now, flush);
            ring.pop_done(self.finished.load(Ordering::Acquire), free);
        }
        if ring.len < RING_SIZE {
            // The caller's page-table update (the unmap) must be visible
            // before the stamp is read: otherwise a flush that takes its
            // ticket after the read could still run before the update is
            // seen, let the walker re-cache the old entry, and free the
            // range anyway (a store-load order, so Acquire is not enough;
            // Linux has an smp_mb() here).
            fence(Ordering::SeqCst);
            let tail = (ring.head + ring.len) % RING_SIZE;
            ring.entries[tail] = Entry {
                pfn,
                pages,
                stamp: self.started.load(Ordering::SeqCst),
            };
            ring.len += 1;
        }
        res
    }

    /// Flushes if the timeout passed since the last flush (the clock tick
    /// of the environment), then frees whatever became safe on every CPU.
    ///
    /// # Errors
    ///
    /// The flush's error.
    pub fn tick<E>(
        &self,
        now: u64,
        flush: &dyn Fn() -> Result<(), E>,
        free: &mut dyn FnMut(u64, u64),
    ) -> Result<(), E> {
        if now.wrapping_sub(self.last_flush.load(Ordering::Relaxed)) >= self.timeout
            && self.pending() > 0
        {
            self.counted(now, flush)?;
        }
        self.drain_done(free);
        Ok(())
    }

    /// Flushes now and frees everything queued.
    ///
    /// # Errors
    ///
    /// The flush's error.
    pub fn flush_now<E>(
        &self,
        now: u64,
        flush: &dyn Fn() -> Result<(), E>,
        free: &mut dyn FnMut(u64, u64),
    ) -> Result<(), E> {
        self.counted(now, flush)?;
        self.drain_done(free);
        Ok(())
    }

    fn drain_done(&self, free: &mut dyn FnMut(u64, u64)) {
        let finished = self.finished.load(Ordering::Acquire);
        for r in self.rings.iter() {
            r.0.lock().pop_done(finished, free);
        }
    }

    /// Returns how many ranges wait for a flush.
    pub fn pending(&self) -> usize {
        self.rings.iter().map(|r| r.0.lock().len).sum()
    }
}
