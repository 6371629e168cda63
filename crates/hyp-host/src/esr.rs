//! The ESR_EL2 syndrome of what the host did to trap into EL2.
//!
//! Field positions (Arm ARM, ESR_EL2) live in [`layout`], apart from the
//! decoding, and are checked by tests against hand-assembled syndromes.

/// ESR_EL2 and HPFAR_EL2 field positions.
pub mod layout {
    /// Exception class, bits \[31:26\].
    pub const EC_SHIFT: u32 = 26;
    /// Width mask of the exception class.
    pub const EC_MASK: u64 = 0x3f;
    /// Instruction-specific syndrome, bits \[24:0\].
    pub const ISS_MASK: u64 = 0x1ff_ffff;
    /// EC: HVC executed in AArch64 state.
    pub const EC_HVC64: u8 = 0x16;
    /// EC: SMC executed in AArch64 state (trapped by HCR_EL2.TSC).
    pub const EC_SMC64: u8 = 0x17;
    /// EC: data abort from a lower exception level.
    pub const EC_DATA_ABORT_LOWER: u8 = 0x24;
    /// Data abort ISS: syndrome valid (bits \[23:14\] hold the access).
    pub const ISV: u64 = 1 << 24;
    /// Data abort ISS: access size, bits \[23:22\] (log2 of the bytes).
    pub const SAS_SHIFT: u32 = 22;
    /// Data abort ISS: the load sign-extends.
    pub const SSE: u64 = 1 << 21;
    /// Data abort ISS: register number, bits \[20:16\].
    pub const SRT_SHIFT: u32 = 16;
    /// Data abort ISS: the register is 64-bit (X) rather than 32-bit (W).
    pub const SF: u64 = 1 << 15;
    /// Data abort ISS: the abort happened on a stage-1 table walk.
    pub const S1PTW: u64 = 1 << 7;
    /// Data abort ISS: write not read.
    pub const WNR: u64 = 1 << 6;
    /// Data abort ISS: fault status code, bits \[5:0\].
    pub const DFSC_MASK: u64 = 0x3f;
    /// HPFAR_EL2.FIPA, bits \[43:4\]: IPA bits \[51:12\].
    pub const HPFAR_FIPA_MASK: u64 = 0x0000_0fff_ffff_fff0;
    /// How far FIPA sits from its place in the IPA (bit 4 holds IPA bit 12).
    pub const HPFAR_FIPA_TO_IPA_SHIFT: u32 = 8;
}

use layout::*;

/// A data abort's access, as ESR_EL2 describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAbort {
    /// ISV: the fields below describe the access. Without it (a load/store
    /// pair, a post-indexed access, ...) the access cannot be emulated from
    /// the syndrome alone.
    pub valid: bool,
    /// Access size in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// A load that sign-extends to the register.
    pub sign_extend: bool,
    /// The transfer register, 0..=31 (31 is XZR/WZR, never SP).
    pub reg: u8,
    /// The register is 64-bit.
    pub sixty_four: bool,
    /// A store (write) rather than a load.
    pub write: bool,
    /// The fault happened on the host's stage-1 table walk.
    pub s1ptw: bool,
    /// Data fault status code.
    pub dfsc: u8,
}

/// Why the host trapped into EL2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syndrome {
    /// A data abort from EL1/EL0 (here: a stage-2 fault).
    DataAbort(DataAbort),
    /// An SMC (AArch64) trapped by HCR_EL2.TSC, with its immediate.
    Smc(u16),
    /// An HVC (AArch64), with its immediate.
    Hvc(u16),
    /// Anything else, raw.
    Other {
        /// Exception class.
        ec: u8,
        /// Instruction-specific syndrome.
        iss: u32,
    },
}

/// Returns the exception class of `esr`.
pub fn class(esr: u64) -> u8 {
    ((esr >> EC_SHIFT) & EC_MASK) as u8
}

/// Returns what `esr` (an ESR_EL2 value) says the host did.
pub fn decode(esr: u64) -> Syndrome {
    let iss = esr & ISS_MASK;
    match class(esr) {
        EC_DATA_ABORT_LOWER => Syndrome::DataAbort(DataAbort {
            valid: iss & ISV != 0,
            size: 1 << ((iss >> SAS_SHIFT) & 0b11),
            sign_extend: iss & SSE != 0,
            reg: ((iss >> SRT_SHIFT) & 0x1f) as u8,
            sixty_four: iss & SF != 0,
            write: iss & WNR != 0,
            s1ptw: iss & S1PTW != 0,
            dfsc: (iss & DFSC_MASK) as u8,
        }),
        EC_SMC64 => Syndrome::Smc(iss as u16),
        EC_HVC64 => Syndrome::Hvc(iss as u16),
        ec => Syndrome::Other {
            ec,
            iss: iss as u32,
        },
    }
}

/// Returns the intermediate physical address of a stage-2 fault: the page from
/// HPFAR_EL2.FIPA, the byte within it from FAR_EL2 (whose upper bits are the
/// host's virtual address, not an IPA).
pub fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar & HPFAR_FIPA_MASK) << HPFAR_FIPA_TO_IPA_SHIFT) | (far & 0xfff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assembles a data-abort ESR from its fields, bit by bit as the Arm ARM
    /// draws them (independently of the layout constants).
    fn esr(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool, dfsc: u64) -> u64 {
        (0x24 << 26)
            | (1 << 25) // IL: 32-bit instruction
            | (u64::from(isv) << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
            | dfsc
    }

    #[test]
    fn a_32_bit_load_into_w5() {
        // ldr w5, [x1]: stage-2 translation fault at level 3 (DFSC 0b000111).
        let s = decode(esr(true, 2, false, 5, false, false, 0b000111));
        assert_eq!(
            s,
            Syndrome::DataAbort(DataAbort {
                valid: true,
                size: 4,
                sign_extend: false,
                reg: 5,
                sixty_four: false,
                write: false,
                s1ptw: false,
                dfsc: 7,
            })
        );
    }

    #[test]
    fn a_64_bit_store_from_x30_and_a_signed_byte_load() {
        let Syndrome::DataAbort(st) = decode(esr(true, 3, false, 30, true, true, 6)) else {
            panic!("not a data abort");
        };
        assert_eq!(
            (st.size, st.reg, st.sixty_four, st.write),
            (8, 30, true, true)
        );
        let Syndrome::DataAbort(ld) = decode(esr(true, 0, true, 31, true, false, 6)) else {
            panic!("not a data abort");
        };
        assert_eq!((ld.size, ld.sign_extend, ld.reg), (1, true, 31));
    }

    #[test]
    fn no_syndrome_is_reported_as_such() {
        let Syndrome::DataAbort(d) = decode(esr(false, 0, false, 0, false, false, 7)) else {
            panic!("not a data abort");
        };
        assert!(!d.valid);
    }

    #[test]
    fn smc_hvc_and_others() {
        assert_eq!(decode((0x17 << 26) | (1 << 25)), Syndrome::Smc(0));
        assert_eq!(decode((0x16 << 26) | (1 << 25) | 0x42), Syndrome::Hvc(0x42));
        // EC 0x01: WFI/WFE trapped.
        assert_eq!(
            decode((0x01 << 26) | (1 << 25) | 1),
            Syndrome::Other { ec: 1, iss: 1 }
        );
    }

    #[test]
    fn ipa_of_the_smmu_frame() {
        // IPA 0x0905_0044: HPFAR holds IPA[51:12] at bits [43:4], so 0x9050 << 4.
        let hpfar = 0x9050 << 4;
        let far = 0xffff_8000_1234_5044; // the host's VA of the same register
        assert_eq!(fault_ipa(hpfar, far), 0x0905_0044);
        // Bits above FIPA and below bit 4 are ignored.
        assert_eq!(fault_ipa(hpfar | 0xf | (1 << 63), 0x8), 0x0905_0008);
    }

    #[test]
    fn layout_positions() {
        assert_eq!(ISV, 0x0100_0000);
        assert_eq!(SSE, 0x0020_0000);
        assert_eq!(SF, 0x8000);
        assert_eq!(WNR, 0x40);
        assert_eq!(S1PTW, 0x80);
        assert_eq!(EC_DATA_ABORT_LOWER, 0b100100);
    }
}
