//! DMA debugging (as Linux's `CONFIG_DMA_API_DEBUG`, off by default):
//! every mapping is tracked, and misuse is refused with a report before it
//! changes anything.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::mutex::SpinMutex;

use crate::types::{Direction, DmaAddr, PhysAddr};

/// One finding of DMA debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DebugReport {
    /// Unmap of an address that is not mapped (twice, or never).
    #[error("device {dev}: unmap of {addr}, which is not mapped")]
    DoubleUnmap {
        /// Device id.
        dev: u32,
        /// Address.
        addr: DmaAddr,
    },
    /// Unmap with a size other than the mapping's.
    #[error("device {dev}: unmap of {addr} with size {unmap_size:#x}, mapped {map_size:#x}")]
    WrongSize {
        /// Device id.
        dev: u32,
        /// Address.
        addr: DmaAddr,
        /// Size at map time.
        map_size: u64,
        /// Size given to unmap.
        unmap_size: u64,
    },
    /// Unmap or sync with a direction other than the mapping's.
    #[error("device {dev}: {addr} used as {used:?}, mapped {mapped:?}")]
    WrongDirection {
        /// Device id.
        dev: u32,
        /// Address.
        addr: DmaAddr,
        /// Direction at map time.
        mapped: Direction,
        /// Direction given now.
        used: Direction,
    },
    /// Sync of a range no mapping covers.
    #[error("device {dev}: sync of unmapped {addr}+{size:#x}")]
    SyncUnmapped {
        /// Device id.
        dev: u32,
        /// Address.
        addr: DmaAddr,
        /// Size.
        size: u64,
    },
    /// A mapping still live when its device was torn down.
    #[error("device {dev}: {addr}+{size:#x} (phys {phys:#x}) leaked at teardown")]
    Leak {
        /// Device id.
        dev: u32,
        /// Address.
        addr: DmaAddr,
        /// Size.
        size: u64,
        /// Physical address mapped.
        phys: PhysAddr,
    },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    size: u64,
    dir: Direction,
    phys: PhysAddr,
}

/// Live mappings by (device, address, serial): the serial keeps apart
/// mappings a device holds at one address at once (the same buffer mapped
/// twice on the direct path).
type Live = BTreeMap<(u32, u64, u64), Entry>;

/// The tracker shared by the devices it debugs.
#[derive(Default)]
pub struct DmaDebug {
    live: SpinMutex<Live>,
    serial: AtomicU64,
    reports: SpinMutex<Vec<DebugReport>>,
}

/// Returns the mappings `dev` holds at `addr`.
fn at(live: &Live, dev: u32, addr: u64) -> impl Iterator<Item = (&(u32, u64, u64), &Entry)> {
    live.range((dev, addr, 0)..=(dev, addr, u64::MAX))
}

impl DmaDebug {
    /// Returns an empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn report(&self, r: DebugReport) -> DebugReport {
        self.reports.lock().push(r);
        r
    }

    pub(crate) fn record(&self, dev: u32, addr: DmaAddr, size: u64, dir: Direction, phys: u64) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .insert((dev, addr.0, serial), Entry { size, dir, phys });
    }

    /// Checks an unmap against the live mapping (nothing is changed).
    pub(crate) fn check_unmap(
        &self,
        dev: u32,
        addr: DmaAddr,
        size: u64,
        dir: Direction,
    ) -> Result<(), DebugReport> {
        let e = {
            let live = self.live.lock();
            let mut here = at(&live, dev, addr.0).map(|(_, e)| *e).peekable();
            let first = here.peek().copied();
            here.find(|e| e.size == size && e.dir == dir).or(first)
        };
        let Some(e) = e else {
            return Err(self.report(DebugReport::DoubleUnmap { dev, addr }));
        };
        if e.size != size {
            return Err(self.report(DebugReport::WrongSize {
                dev,
                addr,
                map_size: e.size,
                unmap_size: size,
            }));
        }
        if e.dir != dir {
            return Err(self.report(DebugReport::WrongDirection {
                dev,
                addr,
                mapped: e.dir,
                used: dir,
            }));
        }
        Ok(())
    }

    /// Forgets one mapping of `dev` at `addr` of `size` bytes in `dir`.
    pub(crate) fn forget(&self, dev: u32, addr: DmaAddr, size: u64, dir: Direction) {
        let mut live = self.live.lock();
        let key = {
            let mut here = at(&live, dev, addr.0);
            here.find(|(_, e)| e.size == size && e.dir == dir)
                .map(|(k, _)| *k)
        };
        if let Some(k) = key {
            live.remove(&k);
        }
    }

    /// Checks that a sync lies inside one live mapping of `dev` with the
    /// same direction.
    pub(crate) fn check_sync(
        &self,
        dev: u32,
        addr: DmaAddr,
        size: u64,
        dir: Direction,
    ) -> Result<(), DebugReport> {
        let live = self.live.lock();
        let hit = live
            .range((dev, 0, 0)..=(dev, addr.0, u64::MAX))
            .next_back()
            .map(|(&(_, a, _), &e)| (a, e))
            .filter(|&(a, e)| addr.0 - a < e.size && size <= e.size - (addr.0 - a));
        drop(live);
        match hit {
            None => Err(self.report(DebugReport::SyncUnmapped { dev, addr, size })),
            Some((a, e)) if e.dir != dir => Err(self.report(DebugReport::WrongDirection {
                dev,
                addr: DmaAddr(a),
                mapped: e.dir,
                used: dir,
            })),
            Some(_) => Ok(()),
        }
    }

    /// Reports (and returns) every mapping `dev` still holds.
    pub fn check_leaks(&self, dev: u32) -> Vec<DebugReport> {
        let leaks: Vec<DebugReport> = self
            .live
            .lock()
            .range((dev, 0, 0)..=(dev, u64::MAX, u64::MAX))
            .map(|(&(_, a, _), e)| DebugReport::Leak {
                dev,
                addr: DmaAddr(a),
                size: e.size,
                phys: e.phys,
            })
            .collect();
        self.reports.lock().extend(leaks.iter().copied());
        leaks
    }

    /// Returns the number of live mappings tracked.
    pub fn live(&self) -> usize {
        self.live.lock().len()
    }

    /// Returns and clears every report so far.
    pub fn take_reports(&self) -> Vec<DebugReport> {
        core::mem::take(&mut *self.reports.lock())
    }
}
