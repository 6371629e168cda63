//! A stage-2 page table the driver does not own, bound to one SMMU: a
//! hypervisor's host stage-2 shadow that several SMMUs walk at once.
//!
//! The driver only points stream table entries at it and tags them with
//! its VMID. Mapping, unmapping and invalidating are the owner's job (with
//! [`Smmu::issue`] and [`crate::tlbi::plan`]), because one table serves
//! several SMMUs and only the owner knows them all.

use alloc::sync::Arc;
use alloc::vec::Vec;

use io_pgtable::config::Stage2Regs;

use super::Smmu;
use super::domain::{DomainKind, DomainShared};
use crate::Error;
use crate::env::SmmuEnv;

/// A foreign stage-2 table's registers and VMID, claimed on one SMMU.
///
/// Dropping it detaches its streams (they abort) and, once their TLB
/// entries are invalidated, frees the VMID.
pub struct ExternalStage2<E: SmmuEnv> {
    smmu: Smmu<E>,
    shared: Arc<DomainShared>,
    regs: Stage2Regs,
}

impl<E: SmmuEnv> ExternalStage2<E> {
    /// Returns a binding of the stage-2 table described by `regs` to
    /// `smmu`, under `vmid` (0 for a hypervisor's host stage 2).
    ///
    /// The caller keeps the table alive and unchanged in format for as long
    /// as the binding has streams attached.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] without stage 2, or when the table's granule
    /// or output size is beyond the SMMU; [`Error::IdsExhausted`] when the
    /// VMID is in use or too wide.
    pub fn new(smmu: &Smmu<E>, vmid: u16, regs: Stage2Regs) -> Result<Self, Error> {
        let f = smmu.features();
        if !f.stage2 {
            return Err(Error::Unsupported("stage 2 (IDR0.S2P)"));
        }
        // VTCR.TG0: 0 = 4K, 1 = 64K, 2 = 16K.
        let granule_log2 = match regs.tg0 {
            0 => 12,
            1 => 16,
            2 => 14,
            _ => return Err(Error::Unsupported("stage-2 granule encoding")),
        };
        if f.pgsize_bitmap & (1 << granule_log2) == 0 {
            return Err(Error::Unsupported(
                "granule not supported by the SMMU (IDR5)",
            ));
        }
        let oas_enc = crate::probe::oas_encoding(f.oas_bits).unwrap_or(0);
        if regs.ps > oas_enc {
            return Err(Error::Unsupported(
                "stage-2 output size beyond the SMMU (IDR5.OAS)",
            ));
        }
        let vmid = smmu.inner.vmids.lock().claim(vmid)?;
        Ok(Self {
            smmu: smmu.clone(),
            shared: Arc::new(DomainShared::new(DomainKind::Stage2 { vmid })),
            regs,
        })
    }

    /// Returns the VMID the streams are tagged with.
    pub fn vmid(&self) -> u16 {
        self.shared.tlb_vmid()
    }

    /// Returns the table registers programmed into the STEs.
    pub fn regs(&self) -> Stage2Regs {
        self.regs
    }

    /// Returns the streams attached.
    pub fn attached(&self) -> Vec<u32> {
        self.shared.attached_sids()
    }

    pub(crate) fn shared(&self) -> &Arc<DomainShared> {
        &self.shared
    }

    /// Returns whether the binding was made on `smmu` (its VMID is claimed
    /// there only).
    pub(crate) fn belongs_to(&self, smmu: &Smmu<E>) -> bool {
        Arc::ptr_eq(&self.smmu.inner, &smmu.inner)
    }
}

impl<E: SmmuEnv> Drop for ExternalStage2<E> {
    fn drop(&mut self) {
        let quiescent = self.smmu.is_quiescent();
        let mut ok = true;
        for sid in self.attached() {
            ok &= quiescent || self.smmu.detach(sid, None).is_ok();
        }
        let vmid = self.vmid();
        let cmd = crate::tlbi::TlbiTarget::Stage2 { vmid }.all();
        let invalidated = quiescent || (ok && self.smmu.issue(&[cmd], true).is_ok());
        self.smmu.inner.vmids.lock().free(vmid, invalidated);
    }
}
