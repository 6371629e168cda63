//! Scatter-gather: a whole list in one IOVA range on the IOMMU path.

use alloc::vec::Vec;

use crate::device::{DmaDevice, Res, check_range};
use crate::domain::IommuDomain;
use crate::env::DmaEnv;
use crate::error::DmaError;
use crate::types::{Attrs, Direction, DmaAddr, DmaSegment, PhysSegment};

#[derive(Debug)]
enum Layout {
    /// One IOVA range holding every segment, each granule aligned in it.
    Contiguous { iova: u64, len: u64 },
    /// Every segment mapped on its own (direct path, or a bounced one).
    Separate(Vec<DmaAddr>),
}

/// A mapped scatter-gather list; give it back to
/// [`DmaDevice::unmap_sg`].
#[derive(Debug)]
#[must_use = "a mapped list must be unmapped"]
pub struct SgMapping {
    segments: Vec<DmaSegment>,
    inputs: Vec<PhysSegment>,
    layout: Layout,
    dir: Direction,
    attrs: Attrs,
}

impl SgMapping {
    /// Returns the DMA segments to program into the device (contiguous
    /// pieces merged).
    pub fn segments(&self) -> &[DmaSegment] {
        &self.segments
    }

    /// Returns whether the list got one IOVA range.
    pub fn is_contiguous(&self) -> bool {
        matches!(self.layout, Layout::Contiguous { .. })
    }
}

impl<E: DmaEnv, D: IommuDomain> DmaDevice<E, D> {
    /// Maps a scatter-gather list.
    ///
    /// On the IOMMU path, unless a segment needs bouncing, the whole list
    /// goes into one IOVA range (each segment at its in-granule offset) and
    /// DMA segments contiguous in IOVA are merged up to the device's
    /// `max_segment`. Otherwise every segment is mapped by itself.
    ///
    /// # Errors
    ///
    /// As [`DmaDevice::map_phys`] for any segment, [`DmaError::ZeroSize`]
    /// for an empty list; nothing stays mapped.
    ///
    /// # Safety
    ///
    /// As [`DmaDevice::map_phys`], for every segment.
    pub unsafe fn map_sg(
        &self,
        segs: &[PhysSegment],
        dir: Direction,
        attrs: Attrs,
    ) -> Res<SgMapping, D> {
        if segs.is_empty() {
            return Err(DmaError::ZeroSize);
        }
        for s in segs {
            check_range(s.phys, s.len)?;
        }
        if attrs.contains(Attrs::REQUIRE_COHERENT) && !self.coherent {
            return Err(DmaError::NotCoherent);
        }
        let unified = self
            .domain
            .as_ref()
            .is_some_and(|d| !segs.iter().any(|s| self.iommu_bounces(d, s.phys, s.len)));
        if !unified {
            return self.map_sg_separately(segs, dir, attrs);
        }
        let Some(d) = &self.domain else {
            unreachable!("unified implies an IOMMU");
        };
        let g = d.granule();
        let mut total = 0u64;
        for s in segs {
            let l = d
                .align_len((s.phys & (g - 1)) + s.len)
                .ok_or(DmaError::Overflow {
                    addr: s.phys,
                    size: s.len,
                })?;
            total = total.checked_add(l).ok_or(DmaError::Overflow {
                addr: s.phys,
                size: s.len,
            })?;
        }
        if !self.coherent && !attrs.intersects(Attrs::SKIP_CPU_SYNC | Attrs::MMIO) {
            for s in segs {
                self.env.clean(s.phys, s.len)?;
            }
        }
        let iova = d.alloc_iova(total, self.cfg.dma_mask, self.low_first())?;
        let prot = self.prot(dir, attrs);
        let dom = d.domain();
        let mut at = iova;
        let mut out: Vec<DmaSegment> = Vec::with_capacity(segs.len());
        for s in segs {
            let off = s.phys & (g - 1);
            let l = d.align_len(off + s.len).unwrap_or(0);
            if let Err(e) = dom.map(at, s.phys - off, l, prot) {
                d.undo_map(iova, at + l - iova, total);
                return Err(DmaError::Iommu(e));
            }
            let addr = at + off;
            match out.last_mut() {
                Some(last)
                    if last.addr.0 + last.len == addr
                        && last.len + s.len <= self.cfg.max_segment =>
                {
                    last.len += s.len;
                }
                _ => out.push(DmaSegment {
                    addr: DmaAddr(addr),
                    len: s.len,
                }),
            }
            at += l;
        }
        if let Err(e) = dom.sync_map(iova, total) {
            d.undo_map(iova, total, total);
            return Err(DmaError::Iommu(e));
        }
        if let Some(dbg) = &self.debug {
            dbg.record(self.cfg.id, DmaAddr(iova), total, dir, segs[0].phys);
        }
        Ok(SgMapping {
            segments: out,
            inputs: segs.to_vec(),
            layout: Layout::Contiguous { iova, len: total },
            dir,
            attrs,
        })
    }

    fn map_sg_separately(
        &self,
        segs: &[PhysSegment],
        dir: Direction,
        attrs: Attrs,
    ) -> Res<SgMapping, D> {
        let mut addrs = Vec::with_capacity(segs.len());
        for s in segs {
            // SAFETY: forwarded from our caller, per segment.
            match unsafe { self.map_phys(s.phys, s.len, dir, attrs) } {
                Ok(a) => addrs.push(a),
                Err(e) => {
                    for (a, s) in addrs.iter().zip(segs) {
                        // SAFETY: mapped just above with these arguments,
                        // never given to the device.
                        let _ = unsafe {
                            self.unmap_phys(*a, s.len, dir, attrs | Attrs::SKIP_CPU_SYNC)
                        };
                    }
                    return Err(e);
                }
            }
        }
        let segments = addrs
            .iter()
            .zip(segs)
            .map(|(&addr, s)| DmaSegment { addr, len: s.len })
            .collect();
        Ok(SgMapping {
            segments,
            inputs: segs.to_vec(),
            layout: Layout::Separate(addrs),
            dir,
            attrs,
        })
    }

    /// Unmaps a list [`DmaDevice::map_sg`] mapped: CPU caches invalidated
    /// for device-written directions, one unmap of the whole IOVA range.
    ///
    /// # Errors
    ///
    /// IOMMU errors; cache errors, after the list is unmapped all the same
    /// (it is consumed, so nothing could unmap it later).
    ///
    /// # Safety
    ///
    /// The device's DMA on the list has finished.
    pub unsafe fn unmap_sg(&self, m: SgMapping) -> Res<(), D> {
        match &m.layout {
            Layout::Separate(addrs) => {
                let mut res = Ok(());
                for (a, s) in addrs.iter().zip(&m.inputs) {
                    // SAFETY: mapped by `map_sg` with these arguments.
                    let r = unsafe { self.unmap_phys(*a, s.len, m.dir, m.attrs) };
                    if let Err(DmaError::Cache(_)) = r {
                        // Unmap it without the CPU side all the same: the
                        // list is consumed, nothing could unmap it later.
                        let skip = m.attrs | Attrs::SKIP_CPU_SYNC;
                        // SAFETY: as above; it is still mapped.
                        let _ = unsafe { self.unmap_phys(*a, s.len, m.dir, skip) };
                    }
                    if res.is_ok() {
                        res = r;
                    }
                }
                res
            }
            &Layout::Contiguous { iova, len } => {
                let Some(d) = &self.domain else {
                    unreachable!("contiguous lists exist only behind an IOMMU");
                };
                // A cache error does not stop the unmap: the list is
                // consumed, so nothing could unmap it later.
                let mut cache = Ok(());
                if !self.coherent
                    && !m.attrs.intersects(Attrs::SKIP_CPU_SYNC | Attrs::MMIO)
                    && m.dir != Direction::ToDevice
                {
                    for s in &m.inputs {
                        if let Err(e) = self.env.invalidate(s.phys, s.len) {
                            cache = cache.and(Err(e));
                        }
                    }
                }
                d.unmap_range(DmaAddr(iova), iova, len, self.cfg.untrusted)?;
                if let Some(dbg) = &self.debug {
                    dbg.forget(self.cfg.id, DmaAddr(iova), len, m.dir);
                }
                Ok(cache?)
            }
        }
    }

    /// Syncs a whole mapped list for the CPU.
    ///
    /// # Errors
    ///
    /// As [`DmaDevice::sync_for_cpu`].
    ///
    /// # Safety
    ///
    /// As [`DmaDevice::sync_for_cpu`].
    pub unsafe fn sync_sg_for_cpu(&self, m: &SgMapping) -> Res<(), D> {
        self.sync_sg(m, true)
    }

    /// Syncs a whole mapped list for the device.
    ///
    /// # Errors
    ///
    /// As [`DmaDevice::sync_for_device`].
    ///
    /// # Safety
    ///
    /// As [`DmaDevice::sync_for_device`].
    pub unsafe fn sync_sg_for_device(&self, m: &SgMapping) -> Res<(), D> {
        self.sync_sg(m, false)
    }

    fn sync_sg(&self, m: &SgMapping, for_cpu: bool) -> Res<(), D> {
        match &m.layout {
            Layout::Separate(addrs) => {
                for (a, s) in addrs.iter().zip(&m.inputs) {
                    // SAFETY: a live mapping of the list (caller's contract).
                    unsafe {
                        if for_cpu {
                            self.sync_for_cpu(*a, s.len, m.dir)?;
                        } else {
                            self.sync_for_device(*a, s.len, m.dir)?;
                        }
                    }
                }
            }
            Layout::Contiguous { .. } => {
                if self.coherent {
                    return Ok(());
                }
                for s in &m.inputs {
                    if for_cpu && m.dir != Direction::ToDevice {
                        self.env.invalidate(s.phys, s.len)?;
                    } else if !for_cpu {
                        self.env.clean(s.phys, s.len)?;
                    }
                }
            }
        }
        Ok(())
    }
}
