//! The virtual register frame: what a host access to each SMMU register
//! does.

use io_pgtable::env::{CacheMaintenance, TableMemory};
use smmuv3::bits::Field;
use smmuv3::env::{RegisterFrame, SmmuEnv};
use smmuv3::regs::{self as r, cr0, gbpa, idr0, idr1, idr3, idr5, irq_ctrl, q_base};

use super::{EmulationOptions, Emulator, HostMemory, VSmmu};
use crate::scrub::Scrub;

/// A host register access the emulation refuses (and counts); a trap
/// handler reports it to the host as an external abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// There is no SMMU of that index.
    #[error("no SMMU {0}")]
    NoSmmu(usize),
    /// The access is not 4 or 8 bytes, or 8 bytes on a 32-bit register.
    #[error("{size}-byte access at {offset:#x}")]
    BadSize {
        /// Offset in the frame.
        offset: u64,
        /// Bytes accessed.
        size: u8,
    },
    /// The offset is not a multiple of the access size.
    #[error("misaligned access at {0:#x}")]
    Misaligned(u64),
    /// The offset is outside the SMMU's two 64 KiB register pages.
    /// (Undefined locations inside them read as zero and ignore writes,
    /// as IHI 0070 6.2 makes them RES0.)
    #[error("no register at {0:#x}")]
    Unknown(u64),
}

/// What lives at an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Idr(usize),
    Iidr,
    Aidr,
    Cr0,
    Cr0Ack,
    Cr1,
    Cr2,
    Statusr,
    Gbpa,
    Agbpa,
    IrqCtrl,
    IrqCtrlAck,
    Gerror,
    Gerrorn,
    StrtabBase,
    StrtabBaseCfg,
    CmdqBase,
    CmdqProd,
    CmdqCons,
    EvtqBase,
    EvtqProd,
    EvtqCons,
    /// Registers of hidden features (MSI configuration, the PRI queue):
    /// read as zero, writes ignored.
    Hidden,
    /// A location of the frame where no register is defined: RES0 (read
    /// as zero, writes ignored and counted).
    Undefined,
}

/// Returns the register at `offset` and whether it is 64-bit.
fn lookup(offset: u64) -> Option<(Reg, bool)> {
    let o = usize::try_from(offset).ok()?;
    Some(match o {
        r::IDR0 | r::IDR1 | r::IDR2 | r::IDR3 | r::IDR4 | r::IDR5 => (Reg::Idr(o / 4), false),
        r::IIDR => (Reg::Iidr, false),
        r::AIDR => (Reg::Aidr, false),
        r::CR0 => (Reg::Cr0, false),
        r::CR0ACK => (Reg::Cr0Ack, false),
        r::CR1 => (Reg::Cr1, false),
        r::CR2 => (Reg::Cr2, false),
        r::STATUSR => (Reg::Statusr, false),
        r::GBPA => (Reg::Gbpa, false),
        r::AGBPA => (Reg::Agbpa, false),
        r::IRQ_CTRL => (Reg::IrqCtrl, false),
        r::IRQ_CTRLACK => (Reg::IrqCtrlAck, false),
        r::GERROR => (Reg::Gerror, false),
        r::GERRORN => (Reg::Gerrorn, false),
        r::GERROR_IRQ_CFG0 | r::EVENTQ_IRQ_CFG0 | r::PRIQ_BASE | PRIQ_IRQ_CFG0 => {
            (Reg::Hidden, true)
        }
        r::GERROR_IRQ_CFG1
        | r::GERROR_IRQ_CFG2
        | r::EVENTQ_IRQ_CFG1
        | r::EVENTQ_IRQ_CFG2
        | PRIQ_IRQ_CFG1
        | PRIQ_IRQ_CFG2
        | r::PRIQ_PROD
        | r::PRIQ_CONS
        | PRIQ_PROD_P0
        | PRIQ_CONS_P0 => (Reg::Hidden, false),
        r::STRTAB_BASE => (Reg::StrtabBase, true),
        r::STRTAB_BASE_CFG => (Reg::StrtabBaseCfg, false),
        r::CMDQ_BASE => (Reg::CmdqBase, true),
        r::CMDQ_PROD => (Reg::CmdqProd, false),
        r::CMDQ_CONS => (Reg::CmdqCons, false),
        r::EVENTQ_BASE => (Reg::EvtqBase, true),
        r::EVENTQ_PROD | r::EVENTQ_PROD_P0 => (Reg::EvtqProd, false),
        r::EVENTQ_CONS | r::EVENTQ_CONS_P0 => (Reg::EvtqCons, false),
        _ => return None,
    })
}

/// PRI queue registers the driver's layout does not name (page-0 aliases
/// and MSI configuration): hidden with the rest of PRI.
const PRIQ_PROD_P0: usize = 0xc8;
const PRIQ_CONS_P0: usize = 0xcc;
const PRIQ_IRQ_CFG0: usize = 0xd0;
const PRIQ_IRQ_CFG1: usize = 0xd8;
const PRIQ_IRQ_CFG2: usize = 0xdc;

/// CR0 bits the host may set: PRIQEN and ATSCHK belong to hidden features.
const CR0_HOST: u32 = (cr0::SMMUEN.mask() | cr0::EVENTQEN.mask() | cr0::CMDQEN.mask()) as u32;
/// IRQ_CTRL bits the host may set (no PRI queue).
const IRQ_HOST: u32 = (irq_ctrl::GERROR_IRQEN.mask() | irq_ctrl::EVENTQ_IRQEN.mask()) as u32;
/// CR1.QUEUE_*: queue cacheability and shareability (guarded by the
/// queue enables).
const CR1_QUEUE: u32 = 0x3f;
/// CR1.TABLE_*: stream table cacheability and shareability (guarded by
/// SMMUEN).
const CR1_TABLE: u32 = 0xfc0;
/// CR2: RECINVSID only (PTM belongs to the hidden BTM, E2H to the hidden
/// HYP: RES0, 6.3.12).
const CR2_HOST: u32 = 0b010;
/// GERROR(N) errors the virtual SMMU has: no PRI queue and no MSIs, so
/// no PRIQ_ABT_ERR or MSI_*_ABT_ERR (RES0, 6.3.20).
const GERROR_HOST: u32 = (r::gerror::CMDQ_ERR.mask()
    | r::gerror::EVTQ_ABT_ERR.mask()
    | r::gerror::SFM_ERR.mask()) as u32;
/// Queue base bits a host may set (address, LOG2SIZE, allocate hint).
const QBASE_HOST: u64 = q_base::ADDR.mask() | q_base::LOG2SIZE.mask() | q_base::ALLOC.mask();
/// Queue PROD/CONS: index and wrap (up to 2^19 entries), the overflow
/// flag of the event queue.
const QPTR_HOST: u32 = 0x000f_ffff | (1 << 31);

/// Returns the ID registers the host sees.
/// IDR0.STALL_MODEL of an SMMU that stalls every translation fault.
const STALL_FORCED: u64 = 0b10;

pub(super) fn virtual_idrs(
    real: &impl RegisterFrame,
    ias: u32,
    opts: &EmulationOptions,
) -> [u32; 6] {
    let get = |o| u64::from(real.read32(o));
    // Only fields the emulation implements pass (a whitelist: a feature of
    // a newer SMMU the emulation does not know must not reach the host).
    // Hidden: stage 2, VMID16, VMW, MSI, HYP, ATS, PRI, BTM, and every
    // field this code does not name.
    let i0 = get(r::IDR0)
        & (idr0::S1P.mask()
            | idr0::TTF.mask()
            | idr0::COHACC.mask()
            | idr0::HTTU.mask()
            | idr0::ASID16.mask()
            | idr0::SEV.mask()
            | idr0::CD2L.mask()
            | idr0::TTENDIAN.mask()
            | idr0::TERM_MODEL.mask()
            | idr0::ST_LEVEL.mask());
    // The host can neither resume nor terminate stalls: stalls are
    // terminated by the hypervisor's driver as it drains them
    // (`Smmu::set_abort_stalls`, on by default). So the host is shown
    // terminate only, unless the SMMU forces stalls: there its CDs must
    // select the stall model (CD.S = 0 is ILLEGAL on the real SMMU, which
    // walks the host's CDs), so it is shown stall forced. Either way no
    // stall tag reaches it.
    let stall = match idr0::STALL_MODEL.get(get(r::IDR0)) {
        STALL_FORCED => STALL_FORCED,
        _ => 1,
    };
    let i0 = idr0::STALL_MODEL.set(i0, stall);
    let real1 = get(r::IDR1);
    let sid_bits = idr1::SIDSIZE.get(real1).min(opts.max_sid_bits.into());
    // No PRI queue, no preset tables or queues, absolute addresses.
    let i1 = idr1::SIDSIZE.make(sid_bits)
        | (real1 & (idr1::SSIDSIZE.mask() | idr1::EVENTQS.mask() | idr1::CMDQS.mask()));
    // Stage-1 features only; FWB and the rest belong to stage 2 or to
    // features we do not emulate.
    let i3 =
        get(r::IDR3) & (idr3::HAD.mask() | idr3::XNX.mask() | idr3::RIL.mask() | idr3::BBML.mask());
    // The host's output addresses are IPAs of the shadow.
    let real5 = get(r::IDR5);
    let shadow_oas = smmuv3::probe::oas_encoding(ias as u8).map_or(0, u64::from);
    let i5 = idr5::OAS.make(idr5::OAS.get(real5).min(shadow_oas))
        | (real5
            & (idr5::GRAN4K.mask()
                | idr5::GRAN16K.mask()
                | idr5::GRAN64K.mask()
                | idr5::VAX.mask()));
    [i0 as u32, i1 as u32, 0, i3 as u32, 0, i5 as u32]
}

fn bits(f: Field) -> u32 {
    f.mask() as u32
}

impl<M, E, S, H> Emulator<M, E, S, H>
where
    M: TableMemory + CacheMaintenance,
    E: SmmuEnv,
    S: Scrub,
    H: HostMemory,
{
    /// Emulates a host read of `size` bytes at `offset` of SMMU `smmu`'s
    /// frame and returns the value.
    ///
    /// # Errors
    ///
    /// [`AccessError`] (counted); nothing changed.
    pub fn read(&mut self, smmu: usize, offset: u64, size: u8) -> Result<u64, AccessError> {
        let (reg, high) = self.decode_access(smmu, offset, size)?;
        if reg == Reg::EvtqProd {
            // A polling host sees the events the real SMMU reported so far.
            self.forward_events(smmu);
        }
        let v = &mut self.vs[smmu];
        v.stats.reads += 1;
        let full: u64 = match reg {
            Reg::Idr(i) => v.idr[i].into(),
            Reg::Iidr => v.iidr.into(),
            Reg::Aidr => v.aidr.into(),
            Reg::Cr0 | Reg::Cr0Ack => v.cr0.into(),
            Reg::Cr1 => v.cr1.into(),
            Reg::Cr2 => v.cr2.into(),
            Reg::Statusr | Reg::Agbpa | Reg::Hidden | Reg::Undefined => 0,
            Reg::Gbpa => gbpa::ABORT.mask(),
            Reg::IrqCtrl | Reg::IrqCtrlAck => v.irq_ctrl.into(),
            Reg::Gerror => v.gerror.into(),
            Reg::Gerrorn => v.gerrorn.into(),
            Reg::StrtabBase => v.strtab_base,
            Reg::StrtabBaseCfg => v.strtab_cfg.into(),
            Reg::CmdqBase => v.cmdq.base,
            Reg::CmdqProd => v.cmdq.prod.into(),
            // The indexes the SMMU writes have no bits above the wrap bit
            // of the queue's current size (6.3.28).
            Reg::CmdqCons => (v.cmdq_ring().bits(v.cmdq.cons) | (v.cmdq_err << 24)).into(),
            Reg::EvtqBase => v.evtq.base,
            Reg::EvtqProd => {
                let ovf = r::evtq::OVFLG.mask() as u32;
                (v.evtq_ring().bits(v.evtq.prod) | (v.evtq.prod & ovf)).into()
            }
            Reg::EvtqCons => v.evtq.cons.into(),
        };
        Ok(match (size, high) {
            (8, _) => full,
            (_, true) => full >> 32,
            _ => full & 0xffff_ffff,
        })
    }

    /// Emulates a host write of `size` bytes of `value` at `offset` of SMMU
    /// `smmu`'s frame.
    ///
    /// # Errors
    ///
    /// [`AccessError`] (counted); nothing changed.
    pub fn write(
        &mut self,
        smmu: usize,
        offset: u64,
        size: u8,
        value: u64,
    ) -> Result<(), AccessError> {
        let (reg, high) = self.decode_access(smmu, offset, size)?;
        let v = &mut self.vs[smmu];
        v.stats.writes += 1;
        // 32-bit halves of 64-bit registers merge into the current value.
        let merge = |cur: u64| match (size, high) {
            (8, _) => value,
            (_, true) => (cur & 0xffff_ffff) | (value << 32),
            _ => (cur & !0xffff_ffff) | (value & 0xffff_ffff),
        };
        let w32 = value as u32;
        match reg {
            Reg::Cr0 => self.write_cr0(smmu, w32 & CR0_HOST),
            // CR1 and CR2 are read-only while their guards are set
            // (6.3.11, 6.3.12): TABLE_* and CR2 by SMMUEN, QUEUE_* by the
            // queue enables.
            Reg::Cr1 if !v.cr0_has(cr0::SMMUEN) || !v.queues_enabled() => {
                let mut writable = 0;
                if !v.cr0_has(cr0::SMMUEN) {
                    writable |= CR1_TABLE;
                }
                if !v.queues_enabled() {
                    writable |= CR1_QUEUE;
                }
                v.cr1 = (v.cr1 & !writable) | (w32 & writable);
            }
            Reg::Cr2 if !v.cr0_has(cr0::SMMUEN) => v.cr2 = w32 & CR2_HOST,
            Reg::IrqCtrl => v.irq_ctrl = w32 & IRQ_HOST,
            Reg::Gerrorn => {
                v.gerrorn = w32 & GERROR_HOST;
                // An acknowledged command error lets the queue go on from
                // the command at CONS (which the host has fixed).
                self.run_cmdq(smmu);
            }
            Reg::StrtabBase if !v.cr0_has(cr0::SMMUEN) => {
                let mask = r::strtab_base::ADDR.mask() | r::strtab_base::RA.mask();
                v.strtab_base = merge(v.strtab_base) & mask;
            }
            Reg::StrtabBaseCfg if !v.cr0_has(cr0::SMMUEN) => {
                // FMT and SPLIT exist only with 2-level tables (6.3.25).
                let mut mask = bits(r::strtab_base_cfg::LOG2SIZE);
                if idr0::ST_LEVEL.get(v.idr[0].into()) != 0 {
                    mask |= bits(r::strtab_base_cfg::SPLIT) | bits(r::strtab_base_cfg::FMT);
                }
                v.strtab_cfg = w32 & mask;
            }
            Reg::CmdqBase if !v.cr0_has(cr0::CMDQEN) => {
                v.cmdq.base = merge(v.cmdq.base) & QBASE_HOST;
            }
            Reg::CmdqProd => {
                v.cmdq.prod = w32 & QPTR_HOST & !(1 << 31);
                self.run_cmdq(smmu);
            }
            Reg::CmdqCons if !v.cr0_has(cr0::CMDQEN) => {
                v.cmdq.cons = w32 & QPTR_HOST & !(1 << 31);
            }
            Reg::EvtqBase if !v.cr0_has(cr0::EVENTQEN) => {
                v.evtq.base = merge(v.evtq.base) & QBASE_HOST;
            }
            Reg::EvtqProd if !v.cr0_has(cr0::EVENTQEN) => v.evtq.prod = w32 & QPTR_HOST,
            Reg::EvtqCons => v.evtq.cons = w32 & QPTR_HOST,
            Reg::Hidden => {}
            // Read-only registers, guarded ones while guarded, undefined
            // locations.
            _ => v.stats.ignored_writes += 1,
        }
        Ok(())
    }

    /// Returns the register an access reaches and whether it is the high
    /// half of a 64-bit register.
    fn decode_access(
        &mut self,
        smmu: usize,
        offset: u64,
        size: u8,
    ) -> Result<(Reg, bool), AccessError> {
        let v = self.vs.get_mut(smmu).ok_or(AccessError::NoSmmu(smmu))?;
        let refuse = |v: &mut VSmmu, e| {
            v.stats.refused_accesses += 1;
            Err(e)
        };
        if size != 4 && size != 8 {
            return refuse(v, AccessError::BadSize { offset, size });
        }
        if offset % u64::from(size) != 0 {
            return refuse(v, AccessError::Misaligned(offset));
        }
        if offset >= r::FRAME_SIZE as u64 {
            return refuse(v, AccessError::Unknown(offset));
        }
        let (reg, wide, high) = match lookup(offset) {
            Some((reg, wide)) => (reg, wide, false),
            None => match offset.checked_sub(4).and_then(lookup) {
                // The high half of a 64-bit register, as a 32-bit access.
                Some((reg, true)) if size == 4 => (reg, true, true),
                // 8 bytes over an undefined location and a 32-bit
                // register: as an access to two registers, refused (one of
                // the outcomes 6.2 allows).
                _ if size == 8 && lookup(offset + 4).is_some() => {
                    return refuse(v, AccessError::BadSize { offset, size });
                }
                // Undefined locations are RES0 (6.2: on page 0; on page 1
                // RES0 is one of the two outcomes allowed).
                _ => (Reg::Undefined, true, false),
            },
        };
        if size == 8 && !wide {
            return refuse(v, AccessError::BadSize { offset, size });
        }
        Ok((reg, high))
    }

    fn write_cr0(&mut self, smmu: usize, new: u32) {
        let v = &mut self.vs[smmu];
        let old = v.cr0;
        v.cr0 = new;
        let rose = |f| new & bits(f) != 0 && old & bits(f) == 0;
        let fell = |f| new & bits(f) == 0 && old & bits(f) != 0;
        if rose(cr0::SMMUEN) || fell(cr0::SMMUEN) {
            // Off, the host's GBPA (abort) applies to every stream; on,
            // its stream table does.
            self.reshadow_all(smmu);
        }
        if rose(cr0::CMDQEN) {
            self.run_cmdq(smmu);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real SMMU whose IDR0 reads `.0` and every other register all
    /// ones (`Real(u32::MAX)`: every ID bit set).
    struct Real(u32);

    impl RegisterFrame for Real {
        fn read32(&self, offset: usize) -> u32 {
            if offset == r::IDR0 { self.0 } else { u32::MAX }
        }
        fn write32(&self, _: usize, _: u32) {}
        fn read64(&self, _: usize) -> u64 {
            u64::MAX
        }
        fn write64(&self, _: usize, _: u64) {}
    }

    #[test]
    fn only_emulated_features_reach_the_host() {
        let opts = EmulationOptions { max_sid_bits: 16 };
        let [i0, i1, i2, i3, i4, i5] = virtual_idrs(&Real(u32::MAX), 40, &opts).map(u64::from);
        for hidden in [
            idr0::S2P,
            idr0::VMID16,
            idr0::MSI,
            idr0::HYP,
            idr0::ATS,
            idr0::PRI,
            idr0::VMW,
            idr0::BTM,
        ] {
            assert_eq!(hidden.get(i0), 0, "IDR0 bit {}", hidden.lo);
        }
        assert_eq!(idr0::STALL_MODEL.get(i0), 1);
        assert_eq!(idr0::S1P.get(i0), 1);
        // Bits no field of the emulation names (IDR0[8], [11], [15], [20],
        // [23], [29..31]) never pass.
        for b in [8, 11, 15, 20, 23, 29, 30, 31] {
            assert_eq!(i0 >> b & 1, 0, "IDR0 bit {b}");
        }
        assert_eq!(idr1::SIDSIZE.get(i1), 16);
        assert_eq!(idr1::PRIQS.get(i1), 0);
        assert_eq!(
            i1 & !(idr1::SIDSIZE.mask()
                | idr1::SSIDSIZE.mask()
                | idr1::EVENTQS.mask()
                | idr1::CMDQS.mask()),
            0
        );
        assert_eq!((i2, i4), (0, 0));
        assert_eq!(idr3::FWB.get(i3), 0);
        // 40-bit shadow: OAS encoding 2.
        assert_eq!(idr5::OAS.get(i5), 2);
        assert_eq!(idr5::STALL_MAX.get(i5), 0);
    }

    #[test]
    fn the_host_sees_stalls_forced_only_where_the_smmu_forces_them() {
        let opts = EmulationOptions { max_sid_bits: 16 };
        for (real, shown) in [(0b00, 0b01), (0b01, 0b01), (0b10, 0b10), (0b11, 0b01)] {
            let i0 = idr0::STALL_MODEL.set(0, real) as u32;
            let [v0, ..] = virtual_idrs(&Real(i0), 40, &opts);
            assert_eq!(idr0::STALL_MODEL.get(v0.into()), shown, "real {real:#b}");
        }
    }
}
