//! The MSIs the SMMU sends: the register sets that configure the event
//! queue and GERROR ones (SMMU_*_IRQ_CFG0..2), and CMD_SYNC's operands.

use super::State;
use crate::layout::{RawCmd, pa_field_bits};
use crate::msi::{MsiAttr, MsiWrite};
use crate::regs::irq_cfg;

/// Returns the mask of address bits \[`end` - 1:`lsb`\].
const fn addr_bits(end: u32, lsb: u32) -> u64 {
    let below_end = if end >= 64 { u64::MAX } else { (1 << end) - 1 };
    below_end & !((1 << lsb) - 1)
}

/// Writes 32 bits at `rel` bytes into an MSI configuration (CFG0's low
/// and high halves, CFG1, CFG2; the GERROR and event queue sets share the
/// layout): CFG0 keeps the address bits of `addr_mask`, CFG2 its two
/// attribute fields.
pub(super) fn write_msi_cfg(
    (cfg0, cfg1, cfg2): (&mut u64, &mut u32, &mut u32),
    addr_mask: u64,
    rel: u64,
    value: u32,
) {
    match rel {
        0 => *cfg0 = ((*cfg0 & !0xffff_ffff) | u64::from(value)) & addr_mask,
        4 => *cfg0 = ((*cfg0 & 0xffff_ffff) | u64::from(value) << 32) & addr_mask,
        8 => *cfg1 = value,
        _ => *cfg2 = value & irq_cfg::CFG2_FIELDS,
    }
}

impl State {
    /// Returns the CFG0.ADDR bits this SMMU stores: those below the OAS.
    /// The ones above are RES0 and "an implementation is not required to
    /// store these bits" (6.3.21), so an MSI address is truncated to the
    /// OAS as 3.4.3 says of MSI writes.
    pub(super) fn msi_addr_mask(&self) -> u64 {
        let end = u32::from(self.cfg.oas_bits).min(irq_cfg::ADDR_END);
        addr_bits(end, irq_cfg::ADDR_LSB)
    }

    /// Sends the MSI of a register-configured source (CFG0, CFG1, CFG2)
    /// when MSIs are implemented and its ADDR is not zero; returns false
    /// when the write aborted. `abort` is the GERROR bit its abort
    /// activates (the caller raises it on a false return; the outbox when
    /// a declined MSI aborts).
    pub(super) fn send_msi(&mut self, (cfg0, data, cfg2): (u64, u32, u32), abort: u32) -> bool {
        let addr = cfg0 & self.msi_addr_mask();
        if !self.cfg.msi || addr == 0 {
            return true;
        }
        self.stats.msi_writes += 1;
        let attr = MsiAttr::new(cfg2 & irq_cfg::MEMATTR_MASK, cfg2 >> irq_cfg::SH_SHIFT);
        self.write_msi(MsiWrite::new(addr, data, attr), abort)
    }

    /// Returns the MSI a CMD_SYNC with CS = SIG_IRQ sends, if any (4.7.3):
    /// one when MSIs are implemented and MSIAddress is not zero, checked
    /// over the whole field and "not limited to the physical address size
    /// (OAS)", then "truncated to the OAS". The field's bits this
    /// revision makes RES0 (4.1.6) are ignored, one of the two behaviours
    /// 4.1.5 allows for any RES0 command field.
    pub(super) fn sync_msi(&self, c: &RawCmd) -> Option<MsiWrite> {
        let field_end = pa_field_bits(self.cfg.arch_minor);
        let field = c.sync_msi_addr() & addr_bits(field_end, irq_cfg::ADDR_LSB);
        if !self.cfg.msi || field == 0 {
            return None;
        }
        let attr = MsiAttr::new(c.sync_msi_attr(), c.sync_msh());
        let addr = field & self.msi_addr_mask();
        Some(MsiWrite::new(addr, c.sync_msi_data(), attr))
    }

    /// Hands `write` to the VMM's callback, or makes it to memory without
    /// one; returns false when the memory write aborted.
    pub(super) fn write_msi(&mut self, write: MsiWrite, abort: u32) -> bool {
        if self.outbox.msi(write, abort) {
            return true;
        }
        let data = write.data.to_le_bytes();
        self.mem.write(write.addr, &data).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_bits_spans_exactly_the_field() {
        assert_eq!(addr_bits(48, 2), 0x0000_ffff_ffff_fffc);
        assert_eq!(addr_bits(56, 2), 0x00ff_ffff_ffff_fffc);
        assert_eq!(addr_bits(64, 2), !3);
        assert_eq!(addr_bits(32, 2), 0xffff_fffc);
    }

    #[test]
    fn a_cfg0_write_keeps_only_the_mask_and_cfg2_its_fields() {
        let (mut c0, mut c1, mut c2) = (0u64, 0u32, 0u32);
        let mask = addr_bits(44, 2);
        for (rel, v) in [(0, u32::MAX), (4, u32::MAX), (8, u32::MAX), (12, u32::MAX)] {
            write_msi_cfg((&mut c0, &mut c1, &mut c2), mask, rel, v);
        }
        assert_eq!((c0, c1, c2), (0x0fff_ffff_fffc, u32::MAX, 0x3f));
        write_msi_cfg((&mut c0, &mut c1, &mut c2), mask, 4, 0);
        assert_eq!(c0, 0xffff_fffc, "the low half stays");
    }
}
