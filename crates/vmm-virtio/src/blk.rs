//! A virtio-blk device on rust-vmm's `virtio-queue`: the VMM side of the
//! data path. Every access it makes (descriptor table, rings, request
//! headers, data, status) goes through the `GuestMemory` it is given,
//! which for a device behind the SMMU is `IommuMemory` over the model.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Size of a disk sector.
pub const SECTOR: u64 = 512;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_ACCESS_PLATFORM: the device's addresses go through the
/// platform's IOMMU.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
/// VIRTIO_BLK_F_FLUSH.
pub const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// The device's serial number (VIRTIO_BLK_T_GET_ID).
pub const DEVICE_ID: &[u8; 20] = b"smmuv3-vmm-virtio-bk";

/// What the device saw, for tests and the demo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Requests completed (any status).
    pub requests: u64,
    /// Requests completed with VIRTIO_BLK_S_IOERR.
    pub io_errors: u64,
    /// Guest memory accesses that failed (SMMU faults, for a device
    /// behind the SMMU).
    pub dma_faults: u64,
    /// Data bytes moved.
    pub bytes: u64,
    /// The last failed access, as vm-memory reported it.
    pub last_fault: Option<String>,
}

/// A virtio-blk device over a RAM disk image.
#[derive(Debug)]
pub struct BlkDevice<M> {
    mem: M,
    queue: Queue,
    disk: Vec<u8>,
    stats: BlkStats,
}

impl<M: GuestMemory> BlkDevice<M> {
    /// Returns the device serving `disk` (a multiple of [`SECTOR`] bytes)
    /// through `mem`, with a queue of at most `queue_max` entries.
    ///
    /// # Errors
    ///
    /// The queue's error for an invalid size.
    pub fn new(mem: M, disk: Vec<u8>, queue_max: u16) -> Result<Self, virtio_queue::Error> {
        Ok(Self {
            mem,
            queue: Queue::new(queue_max)?,
            disk,
            stats: BlkStats::default(),
        })
    }

    /// Returns the memory the device accesses.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Returns the memory mutably (e.g. to enable the IOMMU once
    /// VIRTIO_F_ACCESS_PLATFORM is negotiated).
    pub fn mem_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// Returns the queue (the transport programs it).
    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Returns the disk image.
    pub fn disk(&self) -> &[u8] {
        &self.disk
    }

    /// Returns the capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.len() as u64 / SECTOR
    }

    /// Returns the counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    fn fault(&mut self, e: impl std::fmt::Display) {
        self.stats.dma_faults += 1;
        self.stats.last_fault = Some(e.to_string());
    }

    /// Serves every available request; returns how many completed.
    pub fn process(&mut self) -> usize {
        let mut done = 0;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let written = self.serve(&descs);
            if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                self.fault(e);
            }
            self.stats.requests += 1;
            done += 1;
        }
        done
    }

    /// Serves one request; returns the bytes written into guest buffers.
    fn serve(&mut self, descs: &[Descriptor]) -> u32 {
        let (Some(hdr), Some(status)) = (descs.first(), descs.last()) else {
            return 0;
        };
        if descs.len() < 2 || !status.is_write_only() || status.len() < 1 {
            return 0;
        }
        let mut h = [0u8; 16];
        let (code, written) = match self.mem.read_slice(&mut h, hdr.addr()) {
            Err(e) => {
                self.fault(e);
                (S_IOERR, 0)
            }
            Ok(()) => {
                let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                let mut s = [0u8; 8];
                s.copy_from_slice(&h[8..]);
                let sector = u64::from_le_bytes(s);
                self.request(kind, sector, &descs[1..descs.len() - 1])
            }
        };
        if code == S_IOERR {
            self.stats.io_errors += 1;
        }
        match self.mem.write_slice(&[code], status.addr()) {
            Ok(()) => written + 1,
            Err(e) => {
                self.fault(e);
                written
            }
        }
    }

    fn request(&mut self, kind: u32, sector: u64, data: &[Descriptor]) -> (u8, u32) {
        let mut off = sector.saturating_mul(SECTOR);
        let mut written = 0u32;
        match kind {
            T_IN | T_OUT => {
                for d in data {
                    let len = u64::from(d.len());
                    let Some(end) = off
                        .checked_add(len)
                        .filter(|e| *e <= self.disk.len() as u64)
                    else {
                        return (S_IOERR, written);
                    };
                    let range = off as usize..end as usize;
                    let r = if kind == T_IN && d.is_write_only() {
                        self.mem.write_slice(&self.disk[range], d.addr())
                    } else if kind == T_OUT && !d.is_write_only() {
                        self.mem.read_slice(&mut self.disk[range], d.addr())
                    } else {
                        return (S_IOERR, written);
                    };
                    if let Err(e) = r {
                        // The SMMU refused the access: nothing was copied.
                        self.fault(e);
                        return (S_IOERR, written);
                    }
                    if kind == T_IN {
                        written += d.len();
                    }
                    self.stats.bytes += len;
                    off = end;
                }
                (S_OK, written)
            }
            T_FLUSH => (S_OK, 0),
            T_GET_ID => match data.first() {
                Some(d) if d.is_write_only() => {
                    let n = (d.len() as usize).min(DEVICE_ID.len());
                    match self.mem.write_slice(&DEVICE_ID[..n], d.addr()) {
                        Ok(()) => (S_OK, n as u32),
                        Err(e) => {
                            self.fault(e);
                            (S_IOERR, 0)
                        }
                    }
                }
                _ => (S_IOERR, 0),
            },
            _ => (S_UNSUPP, 0),
        }
    }

    /// Returns whether guest address `addr` is readable through the
    /// device's memory (false when the SMMU would fault).
    pub fn can_read(&self, addr: u64, len: usize) -> bool {
        self.mem
            .check_range(GuestAddress(addr), len, vm_memory::Permissions::Read)
    }
}
