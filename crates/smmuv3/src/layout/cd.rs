//! Context descriptor (CD, 64 bytes = 8 words) and level-1 CD table
//! descriptor fields.

use crate::bits::Field;

/// Bytes in a CD.
pub const CD_BYTES: usize = 64;
/// 64-bit words in a CD.
pub const CD_WORDS: usize = 8;
/// Bytes in a level-1 CD descriptor.
pub const L1_DESC_BYTES: usize = 8;
/// CDs in a 4 KiB level-2 CD table.
pub const L2_CDS: usize = 4096 / CD_BYTES;

/// Word 0: input size of TTB0 (64 - VA bits).
pub const T0SZ: Field = Field::new(5, 0);
/// Word 0: TTB0 granule (0: 4K, 1: 64K, 2: 16K).
pub const TG0: Field = Field::new(7, 6);
/// Word 0: TTB0 walk inner cacheability.
pub const IR0: Field = Field::new(9, 8);
/// Word 0: TTB0 walk outer cacheability.
pub const OR0: Field = Field::new(11, 10);
/// Word 0: TTB0 walk shareability.
pub const SH0: Field = Field::new(13, 12);
/// Word 0: disable TTB0 walks.
pub const EPD0: Field = Field::bit(14);
/// Word 0: big-endian tables.
pub const ENDI: Field = Field::bit(15);
/// Word 0: disable TTB1 walks.
pub const EPD1: Field = Field::bit(30);
/// Word 0: valid.
pub const V: Field = Field::bit(31);
/// Word 0: intermediate physical size encoding.
pub const IPS: Field = Field::new(34, 32);
/// Word 0: access flag fault disable.
pub const AFFD: Field = Field::bit(35);
/// Word 0: top-byte ignore.
pub const TBI: Field = Field::new(39, 38);
/// Word 0: AArch64 tables.
pub const AA64: Field = Field::bit(41);
/// Word 0: hardware dirty-state update.
pub const HD: Field = Field::bit(42);
/// Word 0: hardware access-flag update.
pub const HA: Field = Field::bit(43);
/// Word 0: stall on fault.
pub const S: Field = Field::bit(44);
/// Word 0: record faults.
pub const R: Field = Field::bit(45);
/// Word 0: abort (rather than RAZ/WI) terminated transactions.
pub const A: Field = Field::bit(46);
/// Word 0: ASID set (1: non-shared ASID, not affected by broadcast TLBI).
pub const ASET: Field = Field::bit(47);
/// Word 0: ASID.
pub const ASID: Field = Field::new(63, 48);

/// Word 1: TTB0 address, bits \[51:4\].
pub const TTB0: Field = Field::new(51, 4);
/// Word 2: TTB1 address, bits \[51:4\].
pub const TTB1: Field = Field::new(51, 4);
/// Word 3 is MAIR (the whole word).
pub const MAIR_WORD: usize = 3;

/// Level-1 CD descriptor: valid.
pub const L1_V: Field = Field::bit(0);
/// Level-1 CD descriptor: level-2 table address, bits \[51:12\].
pub const L1_L2PTR: Field = Field::new(51, 12);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_layout() {
        assert_eq!(CD_WORDS * 8, CD_BYTES);
        assert_eq!(V.mask(), 1 << 31);
        assert_eq!(ASID.mask(), 0xffff_0000_0000_0000);
        assert_eq!(IPS.mask(), 7 << 32);
        assert_eq!(AA64.mask(), 1 << 41);
        assert_eq!(R.mask(), 1 << 45);
        assert_eq!(A.mask(), 1 << 46);
        assert_eq!(TTB0.mask(), 0x000f_ffff_ffff_fff0);
        assert_eq!(L1_L2PTR.mask(), 0x000f_ffff_ffff_f000);
        assert_eq!(L2_CDS, 64);
    }
}
