//! A device as the DMA API sees it, and `map_phys` / `unmap_phys` / sync
//! on its three paths: direct, IOMMU, bounce.

use alloc::sync::Arc;

use crate::bounce::{BouncePool, BounceSlot, SLOT_SIZE};
use crate::debug::DmaDebug;
use crate::dma_domain::DmaDomain;
use crate::domain::{IommuDomain, NoIommu};
use crate::env::DmaEnv;
use crate::error::DmaError;
use crate::types::{Attrs, Direction, DmaAddr, IommuProt, PhysAddr};

/// What the DMA layer must know of a device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceConfig {
    /// Identifies the device in DMA-debug reports.
    pub id: u32,
    /// Highest device address the device can issue (e.g. `(1 << 32) - 1`).
    pub dma_mask: u64,
    /// Whether the device's DMA snoops CPU caches; `None` takes the
    /// IOMMU's answer (and means "not coherent" on the direct path).
    pub coherent: Option<bool>,
    /// An untrusted device (e.g. an external PCIe port): on the IOMMU path
    /// buffers that do not fill their granules are bounced, so the device
    /// cannot reach their neighbours.
    pub untrusted: bool,
    /// A PCI device: IOVAs below 4 GiB are tried first.
    pub pci: bool,
    /// With `pci`, skip the below-4 GiB attempt (Linux's `forcedac`).
    pub forcedac: bool,
    /// Bounce every direct-path mapping (Linux's `swiotlb=force`).
    pub force_bounce: bool,
    /// Direct path: device address = physical address + this (wrapping).
    pub dma_offset: u64,
    /// Longest DMA segment `map_sg` merges into.
    pub max_segment: u64,
}

impl DeviceConfig {
    /// Returns a trusted, 64-bit, non-PCI device `id` whose coherency
    /// follows the IOMMU, with Linux's 64 KiB default segment limit.
    pub const fn new(id: u32) -> Self {
        Self {
            id,
            dma_mask: u64::MAX,
            coherent: None,
            untrusted: false,
            pci: false,
            forcedac: false,
            force_bounce: false,
            dma_offset: 0,
            max_segment: 64 * 1024,
        }
    }
}

/// Memory a device and the CPU share coherently ([`DmaDevice::alloc_coherent`]).
#[derive(Debug)]
pub struct CoherentBuffer {
    /// The CPU's pointer.
    pub cpu: core::ptr::NonNull<u8>,
    /// Physical address.
    pub phys: PhysAddr,
    /// The device's address.
    pub dma: DmaAddr,
    /// Bytes usable.
    pub size: u64,
}

// SAFETY: the buffer is plain memory owned by whoever holds this handle.
unsafe impl Send for CoherentBuffer {}

impl CoherentBuffer {
    /// Returns the handle of a coherent allocation from its parts (for
    /// callers that keep only addresses, like virtio-drivers' `Hal`).
    ///
    /// # Safety
    ///
    /// The parts must be those of a live [`DmaDevice::alloc_coherent`]
    /// result whose handle is not used again.
    pub unsafe fn from_raw_parts(
        cpu: core::ptr::NonNull<u8>,
        phys: PhysAddr,
        dma: DmaAddr,
        size: u64,
    ) -> Self {
        Self {
            cpu,
            phys,
            dma,
            size,
        }
    }
}

/// A device on one of the three paths.
pub struct DmaDevice<E: DmaEnv, D: IommuDomain = NoIommu> {
    pub(crate) cfg: DeviceConfig,
    pub(crate) env: Arc<E>,
    pub(crate) domain: Option<Arc<DmaDomain<D, E>>>,
    pub(crate) bounce: Option<Arc<BouncePool>>,
    pub(crate) debug: Option<Arc<DmaDebug>>,
    pub(crate) coherent: bool,
}

pub(crate) type Res<T, D> = Result<T, DmaError<<D as IommuDomain>::Error>>;

/// Returns the end of `[addr, addr + size)`.
pub(crate) fn check_range<X>(addr: u64, size: u64) -> Result<u64, DmaError<X>> {
    if size == 0 {
        return Err(DmaError::ZeroSize);
    }
    addr.checked_add(size)
        .ok_or(DmaError::Overflow { addr, size })
}

impl<E: DmaEnv> DmaDevice<E, NoIommu> {
    /// Returns a device without an IOMMU (the direct path).
    pub fn direct(cfg: DeviceConfig, env: Arc<E>) -> Self {
        Self {
            coherent: cfg.coherent.unwrap_or(false),
            cfg,
            env,
            domain: None,
            bounce: None,
            debug: None,
        }
    }
}

impl<E: DmaEnv, D: IommuDomain> DmaDevice<E, D> {
    /// Returns a device translated by `domain` (the IOMMU path).
    pub fn behind_iommu(cfg: DeviceConfig, domain: Arc<DmaDomain<D, E>>) -> Self {
        Self {
            coherent: cfg.coherent.unwrap_or_else(|| domain.domain().coherent()),
            cfg,
            env: domain.env().clone(),
            domain: Some(domain),
            bounce: None,
            debug: None,
        }
    }

    /// Returns the device with a bounce pool (shared with other devices).
    pub fn with_bounce(mut self, pool: Arc<BouncePool>) -> Self {
        self.bounce = Some(pool);
        self
    }

    /// Returns the device with DMA debugging through `debug`.
    pub fn with_debug(mut self, debug: Arc<DmaDebug>) -> Self {
        self.debug = Some(debug);
        self
    }

    /// Returns the configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Returns whether the device is treated as cache coherent.
    pub fn is_coherent(&self) -> bool {
        self.coherent
    }

    /// Returns the IOMMU domain, if the device is behind one.
    pub fn dma_domain(&self) -> Option<&Arc<DmaDomain<D, E>>> {
        self.domain.as_ref()
    }

    /// Returns the bounce pool, if any.
    pub fn bounce_pool(&self) -> Option<&Arc<BouncePool>> {
        self.bounce.as_ref()
    }

    fn skip_sync(&self, attrs: Attrs) -> bool {
        self.coherent || attrs.intersects(Attrs::SKIP_CPU_SYNC | Attrs::MMIO)
    }

    fn clean(&self, phys: PhysAddr, size: u64) -> Res<(), D> {
        Ok(self.env.clean(phys, size)?)
    }

    fn invalidate(&self, phys: PhysAddr, size: u64) -> Res<(), D> {
        Ok(self.env.invalidate(phys, size)?)
    }

    /// Returns whether the device can issue `[dma, dma + size)`.
    fn reachable(&self, dma: u64, size: u64) -> bool {
        dma.checked_add(size - 1)
            .is_some_and(|last| last <= self.cfg.dma_mask)
    }

    /// Maps `size` bytes at `phys` for DMA in `dir`.
    ///
    /// Returns the address the device must use. On the IOMMU path the
    /// enclosing granules are mapped with `dir`'s permissions (read-only to
    /// the device for [`Direction::ToDevice`]); a trusted device can reach
    /// the rest of those granules, an untrusted one gets a bounce buffer
    /// with zeroed padding instead.
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroSize`], [`DmaError::Overflow`],
    /// [`DmaError::NotCoherent`], [`DmaError::Unreachable`],
    /// [`DmaError::NoBouncePool`], [`DmaError::BounceRefused`], bounce and
    /// IOVA exhaustion, cache and IOMMU errors; nothing stays changed.
    ///
    /// # Safety
    ///
    /// `[phys, phys + size)` must be memory the caller owns for the life of
    /// the mapping (no Rust reference to it while the device or a bounce
    /// copy may write it), or a device's MMIO range with [`Attrs::MMIO`].
    /// For a non-coherent device that is not bounced, the CPU must not
    /// write memory sharing a cache line with the buffer while it is
    /// mapped: unmap and `sync_for_cpu` invalidate whole lines, so such a
    /// write is lost (or, written back, overwrites the device's data), as
    /// with Linux's DMA alignment rule.
    pub unsafe fn map_phys(
        &self,
        phys: PhysAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<DmaAddr, D> {
        check_range(phys, size)?;
        if attrs.contains(Attrs::REQUIRE_COHERENT) && !self.coherent {
            return Err(DmaError::NotCoherent);
        }
        let dma = match &self.domain {
            None => self.map_direct(phys, size, dir, attrs)?,
            Some(d) => self.map_iommu(d, phys, size, dir, attrs)?,
        };
        if let Some(dbg) = &self.debug {
            dbg.record(self.cfg.id, dma, size, dir, phys);
        }
        Ok(dma)
    }

    /// Bounces `[phys, phys + size)` into a run of `run_len` bytes aligned
    /// to `align`, the buffer `offset` bytes in, padding zeroed when
    /// `zero_padding`; the original is always copied in, whatever the
    /// direction, so a short device write exposes nothing stale.
    fn bounce_in(
        &self,
        phys: PhysAddr,
        size: u64,
        offset: u64,
        run_len: u64,
        align: u64,
        zero_padding: bool,
    ) -> Res<BounceSlot, D> {
        let pool = self.bounce.as_ref().ok_or(DmaError::NoBouncePool)?;
        let slot = pool
            .alloc(phys, size, offset, run_len, align)
            .map_err(|e| match e {
                crate::bounce::BounceError::TooLarge(s) => DmaError::BounceTooLarge { size: s },
                _ => DmaError::BounceExhausted { size: run_len },
            })?;
        // SAFETY: the run belongs to this mapping now (just allocated), and
        // the original is the caller's (map_phys contract); disjoint because
        // the pool's memory was given to it for good.
        let ok = unsafe {
            let head = !zero_padding || self.env.zero(slot.run_start, offset);
            let tail_start = slot.bounce + size;
            let tail = slot.run_start + slot.run_len - tail_start;
            let tail_ok = !zero_padding || tail == 0 || self.env.zero(tail_start, tail);
            let head_ok = offset == 0 || head;
            head_ok && tail_ok && self.env.copy(slot.bounce, phys, size)
        };
        if !ok {
            pool.release(slot.bounce);
            return Err(DmaError::Unreachable {
                addr: phys,
                size,
                mask: self.cfg.dma_mask,
            });
        }
        Ok(slot)
    }

    fn map_direct(
        &self,
        phys: PhysAddr,
        size: u64,
        _dir: Direction,
        attrs: Attrs,
    ) -> Res<DmaAddr, D> {
        let dma = phys.wrapping_add(self.cfg.dma_offset);
        if !self.cfg.force_bounce && self.reachable(dma, size) {
            if !self.skip_sync(attrs) {
                self.clean(phys, size)?;
            }
            return Ok(DmaAddr(dma));
        }
        let Some(pool) = &self.bounce else {
            if self.cfg.force_bounce {
                // The address may well be reachable: the pool is missing.
                return Err(DmaError::NoBouncePool);
            }
            return Err(DmaError::Unreachable {
                addr: dma,
                size,
                mask: self.cfg.dma_mask,
            });
        };
        if attrs.intersects(Attrs::MMIO | Attrs::REQUIRE_COHERENT) {
            return Err(DmaError::BounceRefused);
        }
        let run = size
            .checked_next_multiple_of(SLOT_SIZE)
            .ok_or(DmaError::BounceTooLarge { size })?;
        let slot = self.bounce_in(phys, size, 0, run, SLOT_SIZE, false)?;
        let bdma = slot.bounce.wrapping_add(self.cfg.dma_offset);
        if !self.reachable(bdma, size) {
            pool.release(slot.bounce);
            return Err(DmaError::Unreachable {
                addr: bdma,
                size,
                mask: self.cfg.dma_mask,
            });
        }
        if !self.coherent {
            if let Err(e) = self.clean(slot.bounce, size) {
                pool.release(slot.bounce);
                return Err(e);
            }
        }
        Ok(DmaAddr(bdma))
    }

    pub(crate) fn prot(&self, dir: Direction, attrs: Attrs) -> IommuProt {
        let mut p = IommuProt::empty();
        if dir.device_reads() {
            p |= IommuProt::READ;
        }
        if dir.device_writes() {
            p |= IommuProt::WRITE;
        }
        if attrs.contains(Attrs::MMIO) {
            p |= IommuProt::MMIO;
        } else if self.coherent {
            p |= IommuProt::CACHE;
        }
        if attrs.contains(Attrs::PRIVILEGED) {
            p |= IommuProt::PRIV;
        }
        p
    }

    /// Returns whether an IOMMU-path mapping of `[phys, phys + size)` must
    /// be bounced.
    pub(crate) fn iommu_bounces(&self, d: &DmaDomain<D, E>, phys: PhysAddr, size: u64) -> bool {
        self.cfg.untrusted && (phys | size) & (d.granule() - 1) != 0
    }

    pub(crate) fn low_first(&self) -> bool {
        self.cfg.pci && !self.cfg.forcedac
    }

    fn map_iommu(
        &self,
        d: &DmaDomain<D, E>,
        phys: PhysAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<DmaAddr, D> {
        let g = d.granule();
        let off = phys & (g - 1);
        let len = d
            .align_len(off + size)
            .ok_or(DmaError::Overflow { addr: phys, size })?;
        let mut slot = None;
        let (map_at, dma_off) = if self.iommu_bounces(d, phys, size) {
            if attrs.intersects(Attrs::MMIO | Attrs::REQUIRE_COHERENT) {
                return Err(DmaError::BounceRefused);
            }
            let pool = self.bounce.as_ref().ok_or(DmaError::NoBouncePool)?;
            let s = self.bounce_in(phys, size, off, len, g, true)?;
            // The device reaches the whole run, padding included.
            if !self.coherent {
                if let Err(e) = self.clean(s.run_start, s.run_len) {
                    pool.release(s.bounce);
                    return Err(e);
                }
            }
            slot = Some(s);
            (s.run_start, off)
        } else {
            if !self.skip_sync(attrs) {
                self.clean(phys, size)?;
            }
            (phys - off, off)
        };
        let undo_bounce = || {
            if let (Some(s), Some(p)) = (slot, &self.bounce) {
                p.release(s.bounce);
            }
        };
        let iova = match d.alloc_iova(len, self.cfg.dma_mask, self.low_first()) {
            Ok(i) => i,
            Err(e) => {
                undo_bounce();
                return Err(e);
            }
        };
        let prot = self.prot(dir, attrs);
        if let Err(e) = d.map_synced(iova, map_at, len, prot) {
            undo_bounce();
            return Err(DmaError::Iommu(e));
        }
        Ok(DmaAddr(iova + dma_off))
    }

    /// Unmaps what [`DmaDevice::map_phys`] returned.
    ///
    /// CPU caches are invalidated for device-written directions (unless
    /// `SKIP_CPU_SYNC`) and a bounce buffer is copied back. Strict domains
    /// invalidate the IOTLB before returning; lazy ones queue the IOVA.
    ///
    /// # Errors
    ///
    /// [`DmaError::NotMapped`] for an address without a mapping (detected
    /// on the IOMMU and bounce paths always, on the plain direct path only
    /// with DMA debugging); [`DmaError::Debug`] when debugging refuses the
    /// call; [`DmaError::SizeMismatch`] when the IOMMU held another size.
    /// Nothing changes on a refusal.
    ///
    /// # Safety
    ///
    /// `dma`, `size`, `dir` and `attrs` must be those of a live mapping of
    /// this device whose DMA has finished (DMA debugging checks the first
    /// three when enabled).
    pub unsafe fn unmap_phys(
        &self,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<(), D> {
        check_range(dma.0, size)?;
        if let Some(dbg) = &self.debug {
            dbg.check_unmap(self.cfg.id, dma, size, dir)
                .map_err(DmaError::Debug)?;
        }
        match &self.domain {
            None => self.unmap_direct(dma, size, dir, attrs)?,
            Some(d) => self.unmap_iommu(d, dma, size, dir, attrs)?,
        }
        if let Some(dbg) = &self.debug {
            dbg.forget(self.cfg.id, dma, size, dir);
        }
        Ok(())
    }

    /// Finishes the CPU side of a bounced or non-coherent buffer at unmap.
    fn cpu_side_unmap(
        &self,
        phys: PhysAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<(), D> {
        let slot = self
            .bounce
            .as_ref()
            .and_then(|p| p.lookup(phys).filter(|s| s.bounce == phys));
        let sync = !attrs.contains(Attrs::SKIP_CPU_SYNC);
        if sync && !self.skip_sync(attrs) && dir != Direction::ToDevice {
            self.invalidate(phys, size)?;
        }
        if let (Some(s), Some(pool)) = (slot, &self.bounce) {
            if sync && dir.device_writes() {
                // SAFETY: the original is the caller's (map contract), the
                // bounce run ours until released just below.
                unsafe { self.env.copy(s.orig, s.bounce, size.min(s.size)) };
            }
            pool.release(s.bounce);
        }
        Ok(())
    }

    fn unmap_direct(&self, dma: DmaAddr, size: u64, dir: Direction, attrs: Attrs) -> Res<(), D> {
        let phys = dma.0.wrapping_sub(self.cfg.dma_offset);
        if let Some(pool) = &self.bounce {
            if pool.contains(phys) && pool.lookup(phys).filter(|s| s.bounce == phys).is_none() {
                return Err(DmaError::NotMapped(dma));
            }
        }
        self.cpu_side_unmap(phys, size, dir, attrs)
    }

    fn unmap_iommu(
        &self,
        d: &DmaDomain<D, E>,
        dma: DmaAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<(), D> {
        let g = d.granule();
        let off = dma.0 & (g - 1);
        let iova = dma.0 - off;
        let len = d
            .align_len(off + size)
            .ok_or(DmaError::Overflow { addr: dma.0, size })?;
        let needs_phys = !self.skip_sync(attrs) || (self.cfg.untrusted && self.bounce.is_some());
        let phys = if needs_phys {
            Some(
                d.domain()
                    .translate(dma.0)
                    .ok_or(DmaError::NotMapped(dma))?,
            )
        } else {
            None
        };
        if let (Some(p), Some(pool)) = (phys, &self.bounce) {
            // Inside a bounce run but not at a live buffer's start: not
            // what map returned (unmapping would leak the slots).
            if pool.contains(p) && pool.lookup(p).filter(|s| s.bounce == p).is_none() {
                return Err(DmaError::NotMapped(dma));
            }
        }
        if let Some(p) = phys {
            // Before the unmap, as Linux: the CPU must not see lines the
            // device could still be filling after it.
            self.cpu_side_unmap_pre(p, size, dir, attrs)?;
        }
        d.unmap_range(dma, iova, len, self.cfg.untrusted)?;
        if let Some(p) = phys {
            self.bounce_out(p, size, dir, attrs);
        }
        Ok(())
    }

    fn cpu_side_unmap_pre(
        &self,
        phys: PhysAddr,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<(), D> {
        if !self.skip_sync(attrs) && dir != Direction::ToDevice {
            self.invalidate(phys, size)?;
        }
        Ok(())
    }

    fn bounce_out(&self, phys: PhysAddr, size: u64, dir: Direction, attrs: Attrs) {
        let Some(pool) = &self.bounce else { return };
        let Some(s) = pool.lookup(phys).filter(|s| s.bounce == phys) else {
            return;
        };
        if !attrs.contains(Attrs::SKIP_CPU_SYNC) && dir.device_writes() {
            // (The caches were invalidated before the unmap.)
            // SAFETY: as in `cpu_side_unmap`.
            unsafe { self.env.copy(s.orig, s.bounce, size.min(s.size)) };
        }
        pool.release(s.bounce);
    }

    /// Returns the physical address behind `[dma, dma + size)`.
    fn resolve(&self, dma: DmaAddr) -> Res<PhysAddr, D> {
        match &self.domain {
            None => Ok(dma.0.wrapping_sub(self.cfg.dma_offset)),
            Some(d) => d.domain().translate(dma.0).ok_or(DmaError::NotMapped(dma)),
        }
    }

    fn check_sync(&self, dma: DmaAddr, size: u64, dir: Direction) -> Res<(), D> {
        check_range(dma.0, size)?;
        if let Some(dbg) = &self.debug {
            dbg.check_sync(self.cfg.id, dma, size, dir)
                .map_err(DmaError::Debug)?;
        }
        Ok(())
    }

    /// Gives the CPU ownership of `[dma, dma + size)` of a live mapping:
    /// invalidates CPU caches (non-coherent), then copies a bounce buffer
    /// back to the original.
    ///
    /// # Errors
    ///
    /// [`DmaError::NotMapped`] on the IOMMU path when nothing is mapped;
    /// debugging, range and cache errors.
    ///
    /// # Safety
    ///
    /// As [`DmaDevice::unmap_phys`]: a live mapping of this device, its
    /// memory the caller's.
    pub unsafe fn sync_for_cpu(&self, dma: DmaAddr, size: u64, dir: Direction) -> Res<(), D> {
        self.check_sync(dma, size, dir)?;
        let phys = self.resolve(dma)?;
        if !self.coherent && dir != Direction::ToDevice {
            self.invalidate(phys, size)?;
        }
        if let Some(s) = self.bounce.as_ref().and_then(|p| p.lookup(phys)) {
            if dir.device_writes() {
                let at = phys - s.bounce;
                let n = size.min(s.size - at);
                // SAFETY: the mapping is live (contract) so the run is ours,
                // the original the caller's.
                unsafe { self.env.copy(s.orig + at, phys, n) };
            }
        }
        Ok(())
    }

    /// Gives the device ownership of `[dma, dma + size)` again: copies the
    /// original into a bounce buffer, then cleans CPU caches
    /// (non-coherent).
    ///
    /// # Errors
    ///
    /// As [`DmaDevice::sync_for_cpu`].
    ///
    /// # Safety
    ///
    /// As [`DmaDevice::sync_for_cpu`].
    pub unsafe fn sync_for_device(&self, dma: DmaAddr, size: u64, dir: Direction) -> Res<(), D> {
        self.check_sync(dma, size, dir)?;
        let phys = self.resolve(dma)?;
        if let Some(s) = self.bounce.as_ref().and_then(|p| p.lookup(phys)) {
            if dir.device_reads() {
                let at = phys - s.bounce;
                let n = size.min(s.size - at);
                // SAFETY: as in `sync_for_cpu`.
                unsafe { self.env.copy(phys, s.orig + at, n) };
            }
        }
        if !self.coherent {
            self.clean(phys, size)?;
        }
        Ok(())
    }

    /// Allocates `size` bytes both the CPU and the device use without
    /// syncs, mapped read-write for the device.
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroSize`], [`DmaError::OutOfMemory`],
    /// [`DmaError::Unreachable`], IOVA and IOMMU errors.
    pub fn alloc_coherent(&self, size: u64) -> Res<CoherentBuffer, D> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let alloc_size = self
            .coherent_size(size)
            .ok_or(DmaError::OutOfMemory { size })?;
        let (phys, cpu) = self
            .env
            .alloc_coherent(alloc_size)
            .ok_or(DmaError::OutOfMemory { size })?;
        let free = || {
            // SAFETY: just allocated, never given to a device.
            unsafe { self.env.free_coherent(phys, alloc_size) }
        };
        let dma = match &self.domain {
            None => {
                let dma = phys.wrapping_add(self.cfg.dma_offset);
                if !self.reachable(dma, alloc_size) {
                    free();
                    return Err(DmaError::Unreachable {
                        addr: dma,
                        size,
                        mask: self.cfg.dma_mask,
                    });
                }
                dma
            }
            Some(d) => {
                let iova = match d.alloc_iova(alloc_size, self.cfg.dma_mask, self.low_first()) {
                    Ok(i) => i,
                    Err(e) => {
                        free();
                        return Err(e);
                    }
                };
                let prot = self.prot(Direction::Bidirectional, Attrs::empty());
                if let Err(e) = d.map_synced(iova, phys, alloc_size, prot) {
                    free();
                    return Err(DmaError::Iommu(e));
                }
                iova
            }
        };
        if let Some(dbg) = &self.debug {
            dbg.record(
                self.cfg.id,
                DmaAddr(dma),
                size,
                Direction::Bidirectional,
                phys,
            );
        }
        Ok(CoherentBuffer {
            cpu,
            phys,
            dma: DmaAddr(dma),
            size,
        })
    }

    /// Returns the bytes a coherent allocation of `size` takes: a power of
    /// two, at least one granule (4 KiB on the direct path).
    fn coherent_size(&self, size: u64) -> Option<u64> {
        let g = self.domain.as_ref().map_or(4096, |d| d.granule());
        Some(size.checked_next_power_of_two()?.max(g)).filter(|_| size > 0)
    }

    /// Unmaps and frees a coherent allocation.
    ///
    /// # Errors
    ///
    /// [`DmaError::Debug`] when debugging finds no such live allocation
    /// (nothing changed); [`DmaError::NotMapped`] when the IOMMU has
    /// nothing mapped at its address (nothing changed); IOMMU errors and
    /// [`DmaError::SizeMismatch`]: the memory is then not freed (the device
    /// might still reach it).
    ///
    /// # Safety
    ///
    /// `buf` came from this device, the device no longer uses it, and no
    /// CPU reference into it is alive.
    pub unsafe fn free_coherent(&self, buf: CoherentBuffer) -> Res<(), D> {
        let alloc_size = self.coherent_size(buf.size).ok_or(DmaError::ZeroSize)?;
        let (id, dma, size) = (self.cfg.id, buf.dma, buf.size);
        if let Some(dbg) = &self.debug {
            dbg.check_unmap(id, dma, size, Direction::Bidirectional)
                .map_err(DmaError::Debug)?;
        }
        let buf = CoherentBuffer {
            size: alloc_size,
            ..buf
        };
        if let Some(d) = &self.domain {
            let done = d
                .domain()
                .unmap(buf.dma.0, buf.size)
                .map_err(DmaError::Iommu)?;
            if done == 0 {
                return Err(DmaError::NotMapped(buf.dma));
            }
            if done != buf.size {
                return Err(DmaError::SizeMismatch {
                    addr: buf.dma,
                    expected: buf.size,
                    found: done,
                });
            }
            d.free_iova_now(buf.dma.0, buf.size);
        }
        // SAFETY: our allocation, unreachable by the device now (strict
        // unmap above, or direct path with the caller's promise).
        unsafe { self.env.free_coherent(buf.phys, buf.size) };
        if let Some(dbg) = &self.debug {
            dbg.forget(id, dma, size, Direction::Bidirectional);
        }
        Ok(())
    }
}

impl<E: DmaEnv, D: IommuDomain> Drop for DmaDevice<E, D> {
    fn drop(&mut self) {
        if let Some(dbg) = &self.debug {
            dbg.check_leaks(self.cfg.id);
        }
    }
}
