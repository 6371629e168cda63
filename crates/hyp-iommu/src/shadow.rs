//! The host stage-2 shadow: one stage-2 io-pgtable at VMID 0 that every
//! SMMU walks, identity-mapping host-owned RAM and MMIO.

use alloc::vec::Vec;
use core::mem::ManuallyDrop;

use io_pgtable::config::{Config, Granule, Quirks, Regs, Stage2Regs, WalkCoherency};
use io_pgtable::env::{CacheMaintenance, Gather, TableMemory};
use io_pgtable::{PageTable, Partial, Prot};
use smmuv3::Smmu;
use smmuv3::env::SmmuEnv;

use crate::error::Error;
use crate::invalidate::{ShadowEnv, ShadowStats, Slot};
use crate::memmap::{MemoryMap, PAGE};

/// Host RAM: read/write, normal write-back cacheable.
pub const RAM_PROT: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);
/// MMIO: read/write, device memory.
pub const MMIO_PROT: Prot = Prot::READ.union(Prot::WRITE).union(Prot::MMIO);

/// How host RAM is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The largest blocks; a donation inside a block replaces it by a full
    /// table in one store (every SMMU has `IDR3.BBML == 2`).
    Block,
    /// 4 KiB pages only: no block is ever split, so no SMMU ever sees a
    /// block/table change of a live translation.
    Leaf,
}

/// The shadow's shape, derived from every SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Input (= output) address bits: the smallest of 48 and every SMMU's
    /// output and IPA sizes.
    pub ias: u32,
    /// Page and block sizes every SMMU and the table support.
    pub pgsizes: u64,
    /// Every SMMU walks coherently.
    pub coherent: bool,
    /// How RAM is mapped.
    pub mode: Mode,
}

impl Geometry {
    /// Returns the geometry a set of SMMUs can share (`force_leaf` keeps
    /// 4 KiB RAM mappings even when every SMMU has BBML2).
    ///
    /// # Errors
    ///
    /// [`Error::Unsuitable`] without SMMUs, stage 2 or 4 KiB pages, or
    /// when a driver would let traffic bypass while its SMMU is off
    /// (`SmmuConfig::gbpa_abort` clear: powered off, it would give every
    /// host device all of memory).
    pub fn of<E: SmmuEnv>(smmus: &[Smmu<E>], force_leaf: bool) -> Result<Self, Error> {
        if smmus.is_empty() {
            return Err(Error::Unsuitable("no SMMU"));
        }
        let mut ias = 48u32;
        let mut pgsizes = u64::MAX;
        let mut coherent = true;
        let mut bbml2 = true;
        for s in smmus {
            let f = s.features();
            if !f.stage2 {
                return Err(Error::Unsuitable("an SMMU lacks stage 2"));
            }
            if !s.config().gbpa_abort {
                return Err(Error::Unsuitable(
                    "an SMMU's driver would bypass while it is off (gbpa_abort)",
                ));
            }
            ias = ias.min(f.oas_bits.into()).min(f.ipa_bits.into());
            pgsizes &= f.pgsize_bitmap;
            coherent &= f.coherent;
            bbml2 &= f.bbml == 2;
        }
        if pgsizes & PAGE == 0 {
            return Err(Error::Unsuitable("an SMMU lacks 4 KiB pages"));
        }
        Ok(Self {
            ias,
            pgsizes,
            coherent,
            mode: if bbml2 && !force_leaf {
                Mode::Block
            } else {
                Mode::Leaf
            },
        })
    }

    /// Returns whether `smmu` can join a shadow of this geometry (and
    /// aborts traffic while it is off).
    pub fn admits<E: SmmuEnv>(&self, smmu: &Smmu<E>) -> bool {
        let f = smmu.features();
        f.stage2
            && smmu.config().gbpa_abort
            && u32::from(f.oas_bits) >= self.ias
            && u32::from(f.ipa_bits) >= self.ias
            && f.pgsize_bitmap & self.pgsizes == self.pgsizes
            && (f.coherent || !self.coherent)
            && (f.bbml == 2 || self.mode == Mode::Leaf)
    }
}

/// The shadow stage 2.
pub struct Shadow<M: TableMemory + CacheMaintenance, E: SmmuEnv> {
    /// Dropped only once no stream points at it (see `Drop`).
    pt: ManuallyDrop<PageTable<ShadowEnv<M, E>>>,
    geo: Geometry,
    /// Pages whose invalidation failed on some SMMU: invalidated again by
    /// every later operation until one succeeds (tables retired under them
    /// are freed only then).
    carry: Option<(u64, u64)>,
    /// Host ranges a rollback could not map back (start, length): mapped
    /// again by every later operation until that succeeds.
    holes: Vec<(u64, u64)>,
}

impl<M, E> Shadow<M, E>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
{
    /// Returns the shadow of `map` for `smmus`, built: host RAM and MMIO
    /// identity-mapped, the hypervisor's ranges left out.
    ///
    /// # Errors
    ///
    /// [`Error::Unsuitable`], [`Error::BadMemoryMap`] when the map is beyond
    /// the shadow's input size, [`Error::Shadow`] when table memory runs out.
    pub fn build(
        map: &MemoryMap,
        smmus: Vec<Smmu<E>>,
        mem: M,
        force_leaf: bool,
    ) -> Result<Self, Error> {
        let geo = Geometry::of(&smmus, force_leaf)?;
        if map.end() > 1u64 << geo.ias {
            return Err(Error::BadMemoryMap("beyond the shadow's input size"));
        }
        let quirks = if geo.mode == Mode::Block {
            Quirks::BBML2
        } else {
            Quirks::empty()
        };
        let cfg = Config::stage2(Granule::K4, geo.ias, geo.ias)
            .with_coherency(if geo.coherent {
                WalkCoherency::Coherent
            } else {
                WalkCoherency::Deferred
            })
            .with_quirks(quirks);
        let slots = smmus
            .into_iter()
            .map(|s| Slot {
                smmu: Some(s),
                binding: None,
                streams: Vec::new(),
            })
            .collect();
        let pt = PageTable::new(cfg, ShadowEnv::new(mem, slots)).map_err(Error::Shadow)?;
        let mut geo = geo;
        geo.pgsizes &= pt.pgsize_bitmap();
        let shadow = Self {
            pt: ManuallyDrop::new(pt),
            geo,
            carry: None,
            holes: Vec::new(),
        };
        let ram_sizes = match geo.mode {
            Mode::Block => geo.pgsizes,
            Mode::Leaf => PAGE,
        };
        for r in map.host_ram() {
            shadow.map(r.base, r.len, ram_sizes, RAM_PROT)?;
        }
        for r in map.mmio() {
            shadow.map(r.base, r.len, geo.pgsizes, MMIO_PROT)?;
        }
        Ok(shadow)
    }

    /// Returns the geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Returns the registers every SMMU's STEs point at.
    pub fn regs(&self) -> Stage2Regs {
        match self.pt.regs() {
            Regs::Stage2(r) => r,
            // A stage-2 configuration always yields stage-2 registers.
            Regs::Stage1(_) => unreachable!("stage-2 table with stage-1 registers"),
        }
    }

    /// Returns the page table (for translation queries and walks).
    pub fn page_table(&self) -> &PageTable<ShadowEnv<M, E>> {
        &self.pt
    }

    /// Returns the environment (SMMU slots and counters).
    pub(crate) fn env(&self) -> &ShadowEnv<M, E> {
        self.pt.env()
    }

    /// Returns the invalidation and table-memory counters.
    pub fn stats(&self) -> ShadowStats {
        self.pt.env().stats()
    }

    /// Identity-maps `[base, base + len)` with the largest of `sizes` the
    /// alignment allows, and makes it visible to the SMMUs. No invalidation:
    /// every entry goes from invalid to valid.
    fn map(&self, base: u64, len: u64, sizes: u64, prot: Prot) -> Result<(), Error> {
        self.map_counted(base, len, sizes, prot)
            .map_err(|(_, e)| Error::Shadow(e))
    }

    /// As [`Shadow::map`]; on failure, the bytes from `base` the table
    /// maps, and the error.
    fn map_counted(
        &self,
        base: u64,
        len: u64,
        sizes: u64,
        prot: Prot,
    ) -> Result<(), (u64, io_pgtable::Error)> {
        let r = map_chunks(&self.pt, base, len, sizes, prot);
        let done = match r {
            Ok(()) => len,
            Err(p) => p.done as u64,
        };
        if done > 0 {
            // The entries are written either way: counted as mapped, so a
            // rollback's hole never covers a page the table maps (a hole
            // is mapped again blindly, whoever owns it by then).
            self.pt.sync_map(base, done).map_err(|e| (done, e))?;
        }
        r.map_err(|p| (done, p.error))
    }

    /// Maps back host RAM `[addr, addr + len)` that `take` unmapped. In
    /// block mode a 2 MiB region whose table the unmap removed gets a
    /// block again, so the rollback needs no table memory (the unmap keeps
    /// every other table): running out of it is what failed the unmap.
    ///
    /// # Errors
    ///
    /// On failure, the bytes from `addr` mapped back, and the error.
    fn restore(&self, addr: u64, len: u64) -> Result<(), (u64, io_pgtable::Error)> {
        const BLOCK: u64 = 2 << 20;
        let block_mode = self.geo.mode == Mode::Block && self.geo.pgsizes & BLOCK != 0;
        if !block_mode {
            return self.map_counted(addr, len, PAGE, RAM_PROT);
        }
        let end = addr + len;
        let mut at = addr;
        while at < end {
            let next = ((at / BLOCK) + 1) * BLOCK;
            let n = next.min(end) - at;
            let steps = self.pt.walk(at);
            let empty_l2 = steps
                .steps()
                .last()
                .is_some_and(|s| s.level == 2 && s.desc & 1 == 0);
            let sizes = if n == BLOCK && empty_l2 { BLOCK } else { PAGE };
            self.map_counted(at, n, sizes, RAM_PROT)
                .map_err(|(d, e)| (at - addr + d, e))?;
            at += n;
        }
        Ok(())
    }

    /// Maps the holes earlier rollbacks left, as far as it can now.
    fn fill_holes(&mut self) {
        let holes = core::mem::take(&mut self.holes);
        for (addr, len) in holes {
            if let Err((done, _)) = self.restore(addr, len) {
                self.holes.push((addr + done, len - done));
            }
        }
    }

    /// Gives `[addr, addr + len)` (host RAM, mapped) back to the host's
    /// devices with 4 KiB pages.
    ///
    /// # Errors
    ///
    /// [`Error::Shadow`] when table memory ran out; what was mapped is
    /// unmapped again (and invalidated) first. [`Error::Unresponsive`]
    /// when that invalidation failed: the SMMU named may still reach the
    /// pages mapped meanwhile (every later operation invalidates them
    /// again until it answers).
    pub fn give(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        if !self.holes.is_empty() {
            self.fill_holes();
        }
        match self.map(addr, len, PAGE, RAM_PROT) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Take back whatever became reachable: the range stays
                // where it was, unless an SMMU did not hear of it.
                match self.take_mapped(addr, len).2 {
                    Some(u) => Err(u),
                    None => Err(e),
                }
            }
        }
    }

    /// Removes `[addr, addr + len)` from every SMMU's reach: unmaps it,
    /// then one invalidation per SMMU for the whole range (block splits
    /// and removed tables included). Returns only when no device can reach
    /// the range through a cached entry.
    ///
    /// # Errors
    ///
    /// [`Error::Unresponsive`] when an SMMU failed the invalidation and
    /// [`Error::Shadow`] when the unmap failed: the range is mapped back
    /// first (nothing changed for the devices), or
    /// [`Error::RollbackIncomplete`] when that failed too (every later
    /// operation tries again to map what is left unmapped).
    pub fn take(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        if !self.holes.is_empty() {
            self.fill_holes();
        }
        let (done, unmapped, invalidated) = self.take_mapped(addr, len);
        let Some(err) = unmapped.or(invalidated) else {
            // Every retired table was invalidated on every SMMU that is on.
            self.pt.reclaim();
            return Ok(());
        };
        if done > 0 {
            if let Err((back, error)) = self.restore(addr, done) {
                self.holes.push((addr + back, done - back));
                return Err(Error::RollbackIncomplete {
                    addr: addr + back,
                    len: done - back,
                    error,
                });
            }
        }
        Err(err)
    }

    /// Unmaps and invalidates; returns the bytes cleared, why the unmap
    /// stopped short, and the SMMU that failed the invalidation.
    fn take_mapped(&mut self, addr: u64, len: u64) -> (u64, Option<Error>, Option<Error>) {
        let env = self.pt.env();
        env.begin();
        let mut gather = Gather::new();
        let r = self
            .pt
            .unmap(addr, PAGE, (len / PAGE) as usize, &mut gather);
        let (done, err) = match r {
            Ok(d) if d as u64 == len => (len, None),
            Ok(d) => (
                d as u64,
                Some(Error::Shadow(io_pgtable::Error::Unsupported(
                    "range not fully mapped",
                ))),
            ),
            Err(p) => (p.done as u64, Some(Error::Shadow(p.error))),
        };
        if let Some((s, e)) = self.carry {
            env.defer_walk(s, e);
        }
        let unresponsive = match env.finish(&gather) {
            Ok(()) => {
                self.carry = None;
                None
            }
            Err((smmu, error)) => {
                let (s, e) = self.carry.unwrap_or((addr, addr + len));
                self.carry = Some((s.min(addr), e.max(addr + len)));
                Some(Error::Unresponsive { smmu, error })
            }
        };
        (done, err, unresponsive)
    }
}

/// Maps `[base, base + len)` 1:1 with the largest page of `sizes` that the
/// alignment and the remaining length allow.
fn map_chunks<M, E>(
    pt: &PageTable<ShadowEnv<M, E>>,
    base: u64,
    len: u64,
    sizes: u64,
    prot: Prot,
) -> Result<(), Partial>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
{
    let end = base + len;
    let mut at = base;
    while at < end {
        let left = end - at;
        let Some(size) = (12..48u32)
            .rev()
            .map(|s| 1u64 << s)
            .find(|&s| sizes & s != 0 && at % s == 0 && left >= s)
        else {
            return Err(Partial {
                done: (at - base) as usize,
                error: io_pgtable::Error::BadPageSize(PAGE),
            });
        };
        // Up to the next boundary of a larger size, where a larger page
        // may start.
        let larger = sizes & !((size << 1) - 1);
        let mut count = left / size;
        if larger != 0 {
            let next = 1u64 << larger.trailing_zeros();
            let to_boundary = (next - at % next) / size;
            count = count.min(to_boundary);
        }
        match pt.map(at, at, size, count as usize, prot) {
            Ok(n) => at += n as u64,
            Err(p) => {
                return Err(Partial {
                    done: (at - base) as usize + p.done,
                    error: p.error,
                });
            }
        }
    }
    Ok(())
}

impl<M, E> Drop for Shadow<M, E>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
{
    fn drop(&mut self) {
        // Every stream stops walking the tables before they are freed: the
        // bindings detach their streams (which then abort) and invalidate
        // VMID 0 as they drop. An SMMU that is off walks nothing.
        let mut ok = true;
        {
            let mut slots = self.pt.env().slots.lock();
            for slot in slots.iter_mut() {
                let (Some(smmu), Some(b)) = (&slot.smmu, &slot.binding) else {
                    continue;
                };
                for sid in b.attached() {
                    ok &= smmu.detach(sid, None).is_ok();
                }
                slot.binding = None;
            }
        }
        if ok {
            // SAFETY: `pt` is never used again (we are in `drop`), and no
            // stream of any SMMU points at its tables any more: every detach
            // completed (synced) and the bindings are gone.
            unsafe { ManuallyDrop::drop(&mut self.pt) };
        }
        // Otherwise an SMMU may still walk the tables: leak them rather than
        // let it walk freed memory.
    }
}
