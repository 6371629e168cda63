//! [`HypIommu`]: the tracker, the pins and the shadow together; every
//! ownership change updates the shadow before it returns.

use alloc::vec::Vec;

use io_pgtable::env::{CacheMaintenance, TableMemory};
use smmuv3::env::SmmuEnv;
use smmuv3::{ExternalStage2, Smmu};

use crate::error::Error;
use crate::invalidate::{HOST_VMID, ShadowStats};
use crate::memmap::MemoryMap;
use crate::owner::{Change, Owner, Ownership, ShareTarget, check_guest};
use crate::scrub::Scrub;
use crate::shadow::{Geometry, Mode, Shadow};

/// Build options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Map host RAM with 4 KiB pages even when every SMMU has BBML2.
    pub force_leaf: bool,
}

/// A protected hypervisor's DMA isolation over a set of SMMUs.
pub struct HypIommu<M: TableMemory + CacheMaintenance, E: SmmuEnv, S> {
    owners: Ownership,
    shadow: Shadow<M, E>,
    scrub: S,
}

impl<M, E, S> HypIommu<M, E, S>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
{
    /// Returns the hypervisor's IOMMU state for `map` over `smmus` (brought
    /// up by the caller), with the shadow built and bound to every SMMU at
    /// VMID 0. No stream is attached yet (see
    /// [`HypIommu::attach_host_stream`]).
    ///
    /// # Errors
    ///
    /// As [`Shadow::build`]; [`Error::Driver`] when an SMMU refuses VMID 0
    /// or the shadow's format.
    pub fn new(
        map: &MemoryMap,
        smmus: Vec<Smmu<E>>,
        mem: M,
        scrub: S,
        opts: Options,
    ) -> Result<Self, Error> {
        let shadow = Shadow::build(map, smmus, mem, opts.force_leaf)?;
        let regs = shadow.regs();
        {
            let mut slots = shadow.env().slots.lock();
            for (k, slot) in slots.iter_mut().enumerate() {
                if let Some(smmu) = &slot.smmu {
                    let b = ExternalStage2::new(smmu, HOST_VMID, regs)
                        .map_err(|error| Error::Driver { smmu: k, error })?;
                    slot.binding = Some(b);
                }
            }
        }
        Ok(Self {
            owners: Ownership::new(map),
            shadow,
            scrub,
        })
    }

    /// Returns the ownership tracker.
    pub fn ownership(&self) -> &Ownership {
        &self.owners
    }

    /// Returns the owner of the page holding `addr` (`None` outside RAM).
    pub fn owner(&self, addr: u64) -> Option<Owner> {
        self.owners.owner(addr)
    }

    /// Returns the shadow stage 2.
    pub fn shadow(&self) -> &Shadow<M, E> {
        &self.shadow
    }

    /// Returns how host RAM is mapped.
    pub fn mode(&self) -> Mode {
        self.shadow.geometry().mode
    }

    /// Returns the invalidation and table-memory counters.
    pub fn stats(&self) -> ShadowStats {
        self.shadow.stats()
    }

    /// Puts host stream `sid` of SMMU `smmu` on the shadow (bypass becomes
    /// stage 2 at VMID 0); it stays there across power cycles.
    ///
    /// # Errors
    ///
    /// [`Error::NoSmmu`], [`Error::SmmuOff`], [`Error::Driver`].
    pub fn attach_host_stream(&mut self, smmu: usize, sid: u32) -> Result<(), Error> {
        let mut slots = self.shadow.env().slots.lock();
        let slot = slots.get_mut(smmu).ok_or(Error::NoSmmu(smmu))?;
        let (Some(s), Some(b)) = (&slot.smmu, &slot.binding) else {
            return Err(Error::SmmuOff(smmu));
        };
        s.attach_external(sid, b)
            .map_err(|error| Error::Driver { smmu, error })?;
        if !slot.streams.contains(&sid) {
            slot.streams.push(sid);
        }
        Ok(())
    }

    /// Hands the host streams of SMMU `smmu` over to the trap-and-emulate
    /// layer: every stream the SMMU's driver never configured, and each
    /// one [`HypIommu::attach_host_stream`] put on the shadow, aborts with
    /// an invalid STE (the SMMU records its traffic), and
    /// [`HypIommu::power_on`] no longer re-attaches them, until the host's
    /// own configuration says otherwise.
    pub(crate) fn release_host_streams(&mut self, smmu: usize) -> Result<(), Error> {
        let mut slots = self.shadow.env().slots.lock();
        let slot = slots.get_mut(smmu).ok_or(Error::NoSmmu(smmu))?;
        let Some(s) = &slot.smmu else {
            return Err(Error::SmmuOff(smmu));
        };
        let driver = |error| Error::Driver { smmu, error };
        s.report_unattached().map_err(driver)?;
        while let Some(&sid) = slot.streams.last() {
            s.set_invalid(sid).map_err(driver)?;
            slot.streams.pop();
        }
        Ok(())
    }

    /// Configures host stream `sid` of SMMU `smmu` as the trap-and-emulate
    /// layer decided: abort (reported or silent), stage 2 on the shadow, or
    /// the host's stage 1 nested on it.
    pub(crate) fn configure_stream(
        &self,
        smmu: usize,
        sid: u32,
        cfg: &crate::vsmmu::StreamConfig,
    ) -> Result<(), Error> {
        use crate::vsmmu::StreamConfig;
        let slots = self.shadow.env().slots.lock();
        let slot = slots.get(smmu).ok_or(Error::NoSmmu(smmu))?;
        let (Some(s), Some(b)) = (&slot.smmu, &slot.binding) else {
            return Err(Error::SmmuOff(smmu));
        };
        let r = match *cfg {
            StreamConfig::Abort => s.set_invalid(sid),
            StreamConfig::SilentAbort => s.set_abort(sid),
            StreamConfig::Stage2 => s.attach_external(sid, b),
            StreamConfig::Nested { cd, s1dss } => s.attach_foreign_nested(sid, b, cd, s1dss),
        };
        r.map(|_| ()).map_err(|error| Error::Driver { smmu, error })
    }

    /// Donates host pages `[addr, addr + len)` to the hypervisor.
    ///
    /// Returns once no device can reach them (unmapped, invalidated on
    /// every SMMU that is on).
    ///
    /// # Errors
    ///
    /// Range errors, [`Error::WrongOwner`], [`Error::Shared`],
    /// [`Error::Pinned`] (nothing changed); [`Error::Unresponsive`] and
    /// shadow errors (rolled back: the pages stay the host's).
    pub fn donate_to_hyp(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        self.donate(addr, len, Owner::Hyp)
    }

    /// Donates host pages `[addr, addr + len)` to guest `guest`.
    ///
    /// # Errors
    ///
    /// As [`HypIommu::donate_to_hyp`], and [`Error::BadGuest`].
    pub fn donate_to_guest(&mut self, addr: u64, len: u64, guest: u16) -> Result<(), Error> {
        check_guest(guest)?;
        self.donate(addr, len, Owner::Guest(guest))
    }

    fn donate(&mut self, addr: u64, len: u64, to: Owner) -> Result<(), Error> {
        let span = self.owners.span(addr, len)?;
        self.owners.check_donate(span)?;
        self.shadow.take(addr, len)?;
        self.owners.apply(span, Change::Own(to));
        Ok(())
    }

    /// Reclaims pages `[addr, addr + len)` of guest `guest` for the host:
    /// scrubbed, then mapped back for the host's devices.
    ///
    /// # Errors
    ///
    /// Range errors, [`Error::BadGuest`], [`Error::WrongOwner`] (nothing
    /// changed); [`Error::Scrub`], shadow errors (the pages stay the
    /// guest's and unreachable); [`Error::Unresponsive`] (the pages stay
    /// the guest's, scrubbed, but that SMMU may still reach those mapped
    /// during the attempt until it answers: every later operation
    /// invalidates them again).
    pub fn reclaim_from_guest(&mut self, addr: u64, len: u64, guest: u16) -> Result<(), Error> {
        check_guest(guest)?;
        let span = self.owners.span(addr, len)?;
        self.owners.check_owner(span, Owner::Guest(guest))?;
        // Scrubbed before any host device can reach it.
        self.scrub
            .scrub(addr, len)
            .map_err(|_| Error::Scrub(addr))?;
        self.shadow.give(addr, len)?;
        self.owners.apply(span, Change::Own(Owner::Host));
        Ok(())
    }

    /// Shares host pages `[addr, addr + len)` with `with`: ownership and
    /// the SMMU view do not change.
    ///
    /// # Errors
    ///
    /// Range errors, [`Error::BadGuest`], [`Error::WrongOwner`],
    /// [`Error::Shared`] (already shared); nothing changed.
    pub fn share(&mut self, addr: u64, len: u64, with: ShareTarget) -> Result<(), Error> {
        if let ShareTarget::Guest(g) = with {
            check_guest(g)?;
        }
        let span = self.owners.span(addr, len)?;
        self.owners.check_share(span)?;
        self.owners.apply(span, Change::Share(Some(with)));
        Ok(())
    }

    /// Ends a share of `[addr, addr + len)` with `with`.
    ///
    /// # Errors
    ///
    /// Range errors, [`Error::NotShared`]; nothing changed.
    pub fn unshare(&mut self, addr: u64, len: u64, with: ShareTarget) -> Result<(), Error> {
        let span = self.owners.span(addr, len)?;
        self.owners.check_unshare(span, with)?;
        self.owners.apply(span, Change::Share(None));
        Ok(())
    }

    /// Records a host DMA mapping of `[addr, addr + len)` (refcounted): the
    /// pages cannot be donated until it is unpinned.
    ///
    /// # Errors
    ///
    /// Range errors, [`Error::WrongOwner`], [`Error::PinOverflow`];
    /// nothing changed.
    pub fn pin_dma(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        let span = self.owners.span(addr, len)?;
        self.owners.pin(span)
    }

    /// Drops a host DMA mapping of `[addr, addr + len)`.
    ///
    /// # Errors
    ///
    /// Range errors, [`Error::NotPinned`]; nothing changed.
    pub fn unpin_dma(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        let span = self.owners.span(addr, len)?;
        self.owners.unpin(span)
    }

    /// Powers SMMU `smmu` off (or records that it was reset): translation
    /// is disabled (traffic aborts, GBPA) and invalidations skip it until
    /// [`HypIommu::power_on`].
    ///
    /// # Errors
    ///
    /// [`Error::NoSmmu`], [`Error::SmmuOff`]; [`Error::Driver`] when it
    /// does not acknowledge the disable: it is then still on for the
    /// shadow (it may still translate from its TLBs, so every later
    /// invalidation goes to it, and fails while it does not answer) until
    /// a power-off succeeds.
    pub fn power_off(&mut self, smmu: usize) -> Result<(), Error> {
        let mut slots = self.shadow.env().slots.lock();
        let slot = slots.get_mut(smmu).ok_or(Error::NoSmmu(smmu))?;
        let s = slot.smmu.as_ref().ok_or(Error::SmmuOff(smmu))?;
        // Skipping an SMMU whose disable was not acknowledged would leave
        // its cached translations of pages given away in place.
        s.shutdown()
            .map_err(|error| Error::Driver { smmu, error })?;
        // The binding's streams need no detach on a quiescent SMMU.
        slot.binding = None;
        slot.smmu = None;
        Ok(())
    }

    /// Brings SMMU `smmu` back from the hypervisor's state alone: `fresh`
    /// is the driver brought up again on it (stream table, queues, GBPA
    /// abort, every TLB and configuration cache invalidated before
    /// translation was enabled); the shadow is bound again at VMID 0 and
    /// the host streams re-attached.
    ///
    /// # Errors
    ///
    /// [`Error::NoSmmu`], [`Error::SmmuOn`], [`Error::Unsuitable`] when
    /// `fresh` cannot walk the shadow, [`Error::Driver`]: the SMMU stays
    /// off, shut down again if a host stream was already re-attached,
    /// unless that shutdown fails too: then it is on (as for
    /// [`HypIommu::power_off`], it may translate), with the streams
    /// re-attached so far.
    pub fn power_on(&mut self, smmu: usize, fresh: Smmu<E>) -> Result<(), Error> {
        let geo: Geometry = self.shadow.geometry();
        let regs = self.shadow.regs();
        let mut slots = self.shadow.env().slots.lock();
        let slot = slots.get_mut(smmu).ok_or(Error::NoSmmu(smmu))?;
        if slot.smmu.is_some() {
            return Err(Error::SmmuOn(smmu));
        }
        if !geo.admits(&fresh) {
            return Err(Error::Unsuitable("the SMMU cannot walk the shadow"));
        }
        let drv = |error| Error::Driver { smmu, error };
        // Nothing of the time it was off may survive in its TLBs, whatever
        // its bring-up did.
        fresh
            .issue(&[smmuv3::command::Command::TlbiNsnhAll], true)
            .map_err(drv)?;
        let b = ExternalStage2::new(&fresh, HOST_VMID, regs).map_err(drv)?;
        for &sid in &slot.streams {
            if let Err(error) = fresh.attach_external(sid, &b) {
                // Streams attached so far may walk the shadow and fill the
                // TLBs: it stays off only once it is provably quiescent,
                // and otherwise it is on, to be invalidated like the others.
                if fresh.shutdown().is_err() {
                    slot.binding = Some(b);
                    slot.smmu = Some(fresh);
                }
                return Err(drv(error));
            }
        }
        slot.binding = Some(b);
        slot.smmu = Some(fresh);
        Ok(())
    }

    /// Returns the driver of SMMU `smmu`, when it is on.
    pub fn smmu(&self, smmu: usize) -> Option<Smmu<E>> {
        self.shadow
            .env()
            .slots
            .lock()
            .get(smmu)
            .and_then(|s| s.smmu.clone())
    }

    /// Returns how many SMMUs share the shadow.
    pub fn smmu_count(&self) -> usize {
        self.shadow.env().slots.lock().len()
    }

    /// Returns whether SMMU `smmu` is on.
    pub fn is_on(&self, smmu: usize) -> bool {
        self.shadow
            .env()
            .slots
            .lock()
            .get(smmu)
            .is_some_and(|s| s.smmu.is_some())
    }
}
