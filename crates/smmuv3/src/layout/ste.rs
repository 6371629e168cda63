//! Stream table entry (STE, 64 bytes = 8 words) and level-1 stream table
//! descriptor fields.

use crate::bits::Field;

/// Bytes in an STE.
pub const STE_BYTES: usize = 64;
/// 64-bit words in an STE.
pub const STE_WORDS: usize = 8;
/// Bytes in a level-1 stream table descriptor.
pub const L1_DESC_BYTES: usize = 8;

/// Word 0: valid.
pub const V: Field = Field::bit(0);
/// Word 0: configuration (see the `CONFIG_*` values).
pub const CONFIG: Field = Field::new(3, 1);
/// Word 0: CD table format.
pub const S1FMT: Field = Field::new(5, 4);
/// Word 0: CD table (or level-1 CD table) address, bits \[51:6\].
pub const S1CTXPTR: Field = Field::new(51, 6);
/// Word 0: log2 of the number of CDs.
pub const S1CDMAX: Field = Field::new(63, 59);

/// Config: abort all traffic.
pub const CONFIG_ABORT: u64 = 0b000;
/// Config: bypass both stages.
pub const CONFIG_BYPASS: u64 = 0b100;
/// Config: stage 1 translates, stage 2 bypass.
pub const CONFIG_S1: u64 = 0b101;
/// Config: stage 1 bypass, stage 2 translates.
pub const CONFIG_S2: u64 = 0b110;
/// Config: both stages translate (nested).
pub const CONFIG_NESTED: u64 = 0b111;

/// S1Fmt: linear CD table.
pub const S1FMT_LINEAR: u64 = 0;
/// S1Fmt: 2-level CD table with 4 KiB level-2 tables (64 CDs).
pub const S1FMT_4K_L2: u64 = 1;
/// S1Fmt: 2-level CD table with 64 KiB level-2 tables (1024 CDs).
pub const S1FMT_64K_L2: u64 = 2;

/// Word 1: default substream behaviour for traffic without an SSID.
pub const S1DSS: Field = Field::new(1, 0);
/// Word 1: CD table inner cacheability.
pub const S1CIR: Field = Field::new(3, 2);
/// Word 1: CD table outer cacheability.
pub const S1COR: Field = Field::new(5, 4);
/// Word 1: CD table shareability.
pub const S1CSH: Field = Field::new(7, 6);
/// Word 1: disable stall faults for stage 1.
pub const S1STALLD: Field = Field::bit(27);
/// Word 1: ATS enable (0: abort, 1: full, 2: split-stage).
pub const EATS: Field = Field::new(29, 28);
/// Word 1: stream world (0: NS-EL1, 2: EL2).
pub const STRW: Field = Field::new(31, 30);
/// Word 1: shareability override.
pub const SHCFG: Field = Field::new(45, 44);

/// S1DSS: terminate transactions without an SSID.
pub const S1DSS_TERMINATE: u64 = 0;
/// S1DSS: transactions without an SSID bypass stage 1.
pub const S1DSS_BYPASS: u64 = 1;
/// S1DSS: transactions without an SSID use CD 0 (SSID 0 is then reserved).
pub const S1DSS_SSID0: u64 = 2;
/// SHCFG: use the incoming shareability.
pub const SHCFG_INCOMING: u64 = 1;

/// Word 2: VMID.
pub const S2VMID: Field = Field::new(15, 0);
/// Word 2: stage-2 input size (64 - IPA bits).
pub const S2T0SZ: Field = Field::new(37, 32);
/// Word 2: stage-2 starting level.
pub const S2SL0: Field = Field::new(39, 38);
/// Word 2: stage-2 walk inner cacheability.
pub const S2IR0: Field = Field::new(41, 40);
/// Word 2: stage-2 walk outer cacheability.
pub const S2OR0: Field = Field::new(43, 42);
/// Word 2: stage-2 walk shareability.
pub const S2SH0: Field = Field::new(45, 44);
/// Word 2: stage-2 granule (0: 4K, 1: 64K, 2: 16K).
pub const S2TG: Field = Field::new(47, 46);
/// Word 2: stage-2 output size encoding.
pub const S2PS: Field = Field::new(50, 48);
/// Word 2: stage-2 uses AArch64 tables.
pub const S2AA64: Field = Field::bit(51);
/// Word 2: stage-2 big-endian tables.
pub const S2ENDI: Field = Field::bit(52);
/// Word 2: stage-2 access flag fault disable.
pub const S2AFFD: Field = Field::bit(53);
/// Word 2: protected table walk (stage-1 walks to device memory fault).
pub const S2PTW: Field = Field::bit(54);
/// Word 2: stage-2 stall on fault.
pub const S2S: Field = Field::bit(57);
/// Word 2: record stage-2 faults.
pub const S2R: Field = Field::bit(58);
/// Word 2: stage-2 forced write-back (FEAT_S2FWB leaf encodings).
pub const S2FWB: Field = Field::bit(59);
/// All stage-2 translation-control fields of word 2 (the VTCR image).
pub const S2VTCR: Field = Field::new(50, 32);

/// Word 3: stage-2 table base, bits \[51:4\].
pub const S2TTB: Field = Field::new(51, 4);

/// Level-1 descriptor: log2(number of STEs in the level-2 table) + 1; 0 = invalid.
pub const L1_SPAN: Field = Field::new(4, 0);
/// Level-1 descriptor: level-2 table address, bits \[51:6\].
pub const L1_L2PTR: Field = Field::new(51, 6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_layout() {
        assert_eq!(STE_WORDS * 8, STE_BYTES);
        assert_eq!(CONFIG.mask(), 0b1110);
        assert_eq!(S1CTXPTR.mask(), 0x000f_ffff_ffff_ffc0);
        assert_eq!(S1CDMAX.mask(), 0xf800_0000_0000_0000);
        assert_eq!(EATS.mask(), 3 << 28);
        assert_eq!(SHCFG.mask(), 3 << 44);
        assert_eq!(S2VMID.mask(), 0xffff);
        assert_eq!(S2VTCR.mask(), 0x0007_ffff_0000_0000);
        assert_eq!(S2AA64.mask(), 1 << 51);
        assert_eq!(S2R.mask(), 1 << 58);
        assert_eq!(S2FWB.mask(), 1 << 59);
        assert_eq!(S2TTB.mask(), 0x000f_ffff_ffff_fff0);
        // Stage-2 VTCR sub-fields tile the VTCR image exactly.
        let parts = [S2T0SZ, S2SL0, S2IR0, S2OR0, S2SH0, S2TG, S2PS];
        let mut all = 0;
        for p in parts {
            assert_eq!(all & p.mask(), 0, "overlap at {p:?}");
            all |= p.mask();
        }
        assert_eq!(all, S2VTCR.mask());
    }
}
