//! The link API: reserve IOVA once, link physical ranges into it without
//! IOTLB work, publish them with one `sync`, unlink, destroy.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::device::{DmaDevice, Res, check_range};
use crate::dma_domain::DmaDomain;
use crate::domain::IommuDomain;
use crate::env::DmaEnv;
use crate::error::DmaError;
use crate::types::{Attrs, Direction, DmaAddr, PhysAddr};

/// An IOVA reservation of the link API.
#[derive(Debug)]
#[must_use = "an IOVA reservation must be destroyed"]
pub struct IovaRange {
    /// Granule-aligned start.
    iova: u64,
    /// Granule-aligned length.
    len: u64,
    /// Offset of the first byte in the first granule.
    offset: u64,
    /// Bytes asked for.
    size: u64,
    /// Linked pieces `(offset, size)`, sorted.
    linked: Vec<(u64, u64)>,
    /// The serial of the domain whose IOVA space it is.
    domain: usize,
}

impl IovaRange {
    /// Returns the device address of byte 0 of the reservation.
    pub fn addr(&self) -> DmaAddr {
        DmaAddr(self.iova + self.offset)
    }

    /// Returns the bytes reserved.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns the linked pieces as (offset, size).
    pub fn linked(&self) -> &[(u64, u64)] {
        &self.linked
    }
}

impl<E: DmaEnv, D: IommuDomain> DmaDevice<E, D> {
    /// Reserves IOVA for `size` bytes whose first byte has the in-granule
    /// offset of `phys`.
    ///
    /// # Errors
    ///
    /// [`DmaError::NoIommu`] on the direct path, [`DmaError::NeedsBounce`]
    /// for untrusted devices, range and IOVA errors.
    pub fn iova_try_alloc(&self, phys: PhysAddr, size: u64) -> Res<IovaRange, D> {
        check_range(phys, size)?;
        let d = self.domain.as_ref().ok_or(DmaError::NoIommu)?;
        if self.cfg.untrusted {
            return Err(DmaError::NeedsBounce);
        }
        let offset = phys & (d.granule() - 1);
        let len = d
            .align_len(offset + size)
            .ok_or(DmaError::Overflow { addr: phys, size })?;
        let iova = d.alloc_iova(len, self.cfg.dma_mask, self.low_first())?;
        Ok(IovaRange {
            iova,
            len,
            offset,
            size,
            linked: Vec::new(),
            domain: d.serial(),
        })
    }

    /// Returns the domain of the device, refusing a reservation of another.
    fn link_domain(&self, r: &IovaRange) -> Res<&Arc<DmaDomain<D, E>>, D> {
        let d = self.domain.as_ref().ok_or(DmaError::NoIommu)?;
        if d.serial() != r.domain {
            return Err(DmaError::ForeignRange);
        }
        Ok(d)
    }

    /// Maps `size` bytes at `phys` at byte `offset` of the reservation,
    /// without IOTLB work and without publishing the page table: call
    /// [`DmaDevice::iova_sync`] before the device uses it.
    ///
    /// A piece must start on a granule boundary (unless at offset 0) and
    /// end on one (unless at the end), with `phys` at the same in-granule
    /// offset as its IOVA, and must not overlap a linked piece.
    ///
    /// # Errors
    ///
    /// [`DmaError::BadLink`] for a piece that breaks these rules,
    /// [`DmaError::ForeignRange`] for a reservation of another domain, cache
    /// and IOMMU errors; nothing stays mapped (if the driver cannot undo its
    /// partial map either, the piece stays recorded so that
    /// [`DmaDevice::iova_destroy`] removes it).
    ///
    /// # Safety
    ///
    /// As [`DmaDevice::map_phys`].
    pub unsafe fn iova_link(
        &self,
        r: &mut IovaRange,
        phys: PhysAddr,
        offset: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<(), D> {
        check_range(phys, size)?;
        let d = self.link_domain(r)?;
        let g = d.granule();
        let bad = || DmaError::BadLink { offset, size };
        let end = offset.checked_add(size).ok_or_else(bad)?;
        let at = r.iova + r.offset + offset;
        let starts_ok = offset == 0 || at & (g - 1) == 0;
        let ends_ok = end == r.size || (at + size) & (g - 1) == 0;
        if end > r.size || !starts_ok || !ends_ok || (at ^ phys) & (g - 1) != 0 {
            return Err(bad());
        }
        let pos = r.linked.partition_point(|&(o, _)| o < offset);
        let overlaps_prev = pos > 0 && {
            let (o, s) = r.linked[pos - 1];
            o + s > offset
        };
        let overlaps_next = r.linked.get(pos).is_some_and(|&(o, _)| o < end);
        if overlaps_prev || overlaps_next {
            return Err(bad());
        }
        if !self.coherent && !attrs.intersects(Attrs::SKIP_CPU_SYNC | Attrs::MMIO) {
            self.env.clean(phys, size)?;
        }
        let start = at & !(g - 1);
        let len = d.align_len(at + size - start).ok_or_else(bad)?;
        let dom = d.domain();
        if let Err(e) = dom.map(start, phys & !(g - 1), len, self.prot(dir, attrs)) {
            if dom.unmap(start, len).is_err() {
                // Part of it may still be mapped: keep the piece so
                // `iova_destroy` removes it.
                r.linked.insert(pos, (offset, size));
            }
            return Err(DmaError::Iommu(e));
        }
        r.linked.insert(pos, (offset, size));
        Ok(())
    }

    /// Publishes the linked pieces in `[offset, offset + size)` of the
    /// reservation to the IOMMU: one `sync_map` of the page table.
    ///
    /// # Errors
    ///
    /// [`DmaError::BadLink`] for a range beyond the reservation,
    /// [`DmaError::ForeignRange`], IOMMU errors.
    pub fn iova_sync(&self, r: &IovaRange, offset: u64, size: u64) -> Res<(), D> {
        let d = self.link_domain(r)?;
        let bad = || DmaError::BadLink { offset, size };
        if size == 0 || offset.checked_add(size).is_none_or(|e| e > r.size) {
            return Err(bad());
        }
        let g = d.granule();
        let at = r.iova + r.offset + offset;
        let start = at & !(g - 1);
        let len = d.align_len(at + size - start).ok_or_else(bad)?;
        d.domain().sync_map(start, len).map_err(DmaError::Iommu)
    }

    /// Unmaps one linked piece (exactly as linked), invalidating the IOTLB
    /// before returning; the IOVA stays reserved.
    ///
    /// # Errors
    ///
    /// [`DmaError::NotMapped`] when no piece was linked there,
    /// [`DmaError::ForeignRange`] (nothing changed), cache and IOMMU errors.
    ///
    /// # Safety
    ///
    /// The device's DMA on the piece has finished.
    pub unsafe fn iova_unlink(
        &self,
        r: &mut IovaRange,
        offset: u64,
        size: u64,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<(), D> {
        let d = self.link_domain(r)?;
        let Some(pos) = r.linked.iter().position(|&p| p == (offset, size)) else {
            return Err(DmaError::NotMapped(DmaAddr(r.iova + r.offset + offset)));
        };
        let g = d.granule();
        let at = r.iova + r.offset + offset;
        if !self.coherent
            && !attrs.intersects(Attrs::SKIP_CPU_SYNC | Attrs::MMIO)
            && dir != Direction::ToDevice
        {
            let phys = d
                .domain()
                .translate(at)
                .ok_or(DmaError::NotMapped(DmaAddr(at)))?;
            self.env.invalidate(phys, size)?;
        }
        let start = at & !(g - 1);
        let len = d.align_len(at + size - start).unwrap_or(0);
        d.domain().unmap(start, len).map_err(DmaError::Iommu)?;
        r.linked.remove(pos);
        Ok(())
    }

    /// Unlinks whatever is still linked and frees the reservation (through
    /// the flush queue when lazy).
    ///
    /// # Errors
    ///
    /// [`DmaError::ForeignRange`] for a reservation of another domain:
    /// nothing is unmapped here, and the reservation, now dropped, stays
    /// allocated and linked in its own domain. Otherwise the first cache or
    /// IOMMU error; every other piece is still unmapped, and the IOVA is
    /// kept from reuse.
    ///
    /// # Safety
    ///
    /// The device's DMA on the reservation has finished.
    pub unsafe fn iova_destroy(
        &self,
        mut r: IovaRange,
        dir: Direction,
        attrs: Attrs,
    ) -> Res<(), D> {
        let d = self.link_domain(&r)?;
        let g = d.granule();
        let linked = core::mem::take(&mut r.linked);
        // Every piece is unmapped whatever fails: the reservation is gone
        // with this call, so nothing could unmap a piece left behind.
        let mut res = Ok(());
        for &(offset, size) in &linked {
            let at = r.iova + r.offset + offset;
            if !self.coherent
                && !attrs.intersects(Attrs::SKIP_CPU_SYNC | Attrs::MMIO)
                && dir != Direction::ToDevice
            {
                if let Some(phys) = d.domain().translate(at) {
                    if let Err(e) = self.env.invalidate(phys, size) {
                        res = res.and(Err(e.into()));
                    }
                }
            }
            let start = at & !(g - 1);
            let len = d.align_len(at + size - start).unwrap_or(0);
            if let Err(e) = d.unmap_pages(start, len, false) {
                res = res.and(Err(e));
            }
        }
        if res.is_err() {
            if d.is_lazy() {
                // What was unmapped must not stay in the IOTLB.
                let _ = d.domain().flush_all();
            }
            return res;
        }
        if linked.is_empty() {
            // Nothing was ever reachable: no invalidation to wait for.
            d.free_iova_now(r.iova, r.len);
            return Ok(());
        }
        d.release_iova(r.iova, r.len, false)
    }
}
