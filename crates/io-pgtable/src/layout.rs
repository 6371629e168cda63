//! VMSAv8-64 descriptor and register field layouts (Arm ARM D8.3, SMMUv3 5.4
//! and 5.2). Only bit positions and encodings live here; the logic that
//! combines them is in `config` and `table`.

/// Bit 0: the descriptor is valid.
pub const VALID: u64 = 1 << 0;
/// Bit 1 at levels 0..=2: table (1) or block (0); at level 3 it must be 1
/// for a page descriptor.
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// The descriptor type bits (1:0).
pub const TYPE_MASK: u64 = VALID | TABLE_OR_PAGE;
/// Type bits of a table descriptor (levels 0..=2).
pub const TYPE_TABLE: u64 = VALID | TABLE_OR_PAGE;
/// Type bits of a block descriptor (levels 1..=2).
pub const TYPE_BLOCK: u64 = VALID;
/// Type bits of a page descriptor (level 3).
pub const TYPE_PAGE: u64 = VALID | TABLE_OR_PAGE;

/// Returns the type bits of a leaf at `level`: a page at level 3, a block
/// above.
#[inline(always)]
pub const fn leaf_type(level: usize) -> u64 {
    if level == 3 { TYPE_PAGE } else { TYPE_BLOCK }
}

/// Stage 1 lower attributes.
pub mod s1 {
    /// AttrIndx\[2:0\], bits 4:2: index into MAIR.
    pub const ATTR_INDX_SHIFT: u32 = 2;
    /// NS, bit 5 (secure translation regimes only).
    pub const NS: u64 = 1 << 5;
    /// AP\[1\], bit 6: unprivileged (EL0) access allowed.
    pub const AP_UNPRIV: u64 = 1 << 6;
    /// AP\[2\], bit 7: read-only.
    pub const AP_RDONLY: u64 = 1 << 7;
    /// nG, bit 11: not global (tagged with the ASID).
    pub const NG: u64 = 1 << 11;
    /// DBM, bit 51: dirty bit modifier (hardware dirty state management).
    pub const DBM: u64 = 1 << 51;
    /// PXN, bit 53.
    pub const PXN: u64 = 1 << 53;
    /// UXN (XN), bit 54.
    pub const UXN: u64 = 1 << 54;
    /// NSTable, bit 63 of a table descriptor.
    pub const NS_TABLE: u64 = 1 << 63;
}

/// Stage 2 lower attributes.
pub mod s2 {
    /// MemAttr\[3:0\], bits 5:2.
    pub const MEMATTR_SHIFT: u32 = 2;
    /// S2AP\[0\], bit 6: read allowed.
    pub const S2AP_READ: u64 = 1 << 6;
    /// S2AP\[1\], bit 7: write allowed.
    pub const S2AP_WRITE: u64 = 1 << 7;
    /// XN\[1\], bit 54: execute never.
    pub const XN: u64 = 1 << 54;
    /// MemAttr: Device-nGnRE (same encoding with and without FWB).
    pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
    /// MemAttr: Normal, outer and inner Non-cacheable (same with FWB).
    pub const MEMATTR_NC: u64 = 0b0101;
    /// MemAttr: Normal, outer and inner Write-Back (no FWB).
    pub const MEMATTR_WB: u64 = 0b1111;
    /// MemAttr with FEAT_S2FWB: force Normal Write-Back.
    pub const MEMATTR_FWB_WB: u64 = 0b0110;
}

/// SH\[1:0\], bits 9:8 (both stages).
pub const SH_SHIFT: u32 = 8;
/// Shareability: Outer Shareable.
pub const SH_OUTER: u64 = 0b10;
/// Shareability: Inner Shareable.
pub const SH_INNER: u64 = 0b11;
/// AF, bit 10: access flag (always set: SMMUs without HTTU fault otherwise).
pub const AF: u64 = 1 << 10;
/// Contiguous hint, bit 52.
pub const CONTIG: u64 = 1 << 52;

/// Output address bits 47:granule-shift of a descriptor.
pub const ADDR_MASK_48: u64 = 0x0000_ffff_ffff_f000;
/// With the 64K granule and 52-bit addresses, PA\[51:48\] live in bits 15:12.
pub const PA_HI_SHIFT_52: u32 = 36;
/// Mask of descriptor bits 15:12 holding PA\[51:48\] (64K granule, 52-bit).
pub const PA_HI_MASK_52: u64 = 0xf << 12;

/// MAIR attribute index used for Normal Non-cacheable memory.
pub const MAIR_IDX_NC: u64 = 0;
/// MAIR attribute index used for Normal Write-Back cacheable memory.
pub const MAIR_IDX_CACHE: u64 = 1;
/// MAIR attribute index used for Device-nGnRE (MMIO).
pub const MAIR_IDX_DEVICE: u64 = 2;
/// MAIR attribute index for inner Non-cacheable, outer Write-Back memory.
pub const MAIR_IDX_INC_OCACHE: u64 = 3;
/// MAIR Attr encoding: Normal Non-cacheable.
pub const MAIR_ATTR_NC: u64 = 0x44;
/// MAIR Attr encoding: Normal Write-Back, read/write allocate.
pub const MAIR_ATTR_WBRWA: u64 = 0xff;
/// MAIR Attr encoding: Device-nGnRE.
pub const MAIR_ATTR_DEVICE: u64 = 0x04;
/// MAIR Attr encoding: inner Non-cacheable, outer Write-Back RW-allocate.
pub const MAIR_ATTR_INC_OWBRWA: u64 = 0xf4;

/// Returns the MAIR value matching the attribute indices above.
pub const fn mair() -> u64 {
    (MAIR_ATTR_NC << (8 * MAIR_IDX_NC))
        | (MAIR_ATTR_WBRWA << (8 * MAIR_IDX_CACHE))
        | (MAIR_ATTR_DEVICE << (8 * MAIR_IDX_DEVICE))
        | (MAIR_ATTR_INC_OWBRWA << (8 * MAIR_IDX_INC_OCACHE))
}

/// TCR/CD/VTCR TG0 encoding of a granule (4K = 0, 64K = 1, 16K = 2).
pub mod tg0 {
    /// 4 KiB granule.
    pub const K4: u8 = 0b00;
    /// 64 KiB granule.
    pub const K64: u8 = 0b01;
    /// 16 KiB granule.
    pub const K16: u8 = 0b10;
}

/// IRGN/ORGN encodings (walk cacheability).
pub mod rgn {
    /// Non-cacheable.
    pub const NC: u8 = 0b00;
    /// Write-Back, read/write allocate.
    pub const WBWA: u8 = 0b01;
}

/// SH0 encodings for walks.
pub mod sh {
    /// Non-shareable.
    pub const NON: u8 = 0b00;
    /// Outer Shareable.
    pub const OUTER: u8 = 0b10;
    /// Inner Shareable.
    pub const INNER: u8 = 0b11;
}

/// Returns the IPS/PS encoding of an output address size, or `None` when
/// the architecture has no encoding for it.
pub const fn ps_encoding(bits: u32) -> Option<u8> {
    Some(match bits {
        32 => 0,
        36 => 1,
        40 => 2,
        42 => 3,
        44 => 4,
        48 => 5,
        52 => 6,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_types_follow_the_architecture() {
        // Arm ARM D8.3: bits 1:0 = 0b11 table (levels 0-2) or page (level
        // 3), 0b01 block, bit 0 clear invalid.
        assert_eq!(TYPE_TABLE, 0b11);
        assert_eq!(TYPE_BLOCK, 0b01);
        assert_eq!(TYPE_PAGE, 0b11);
        assert_eq!(TYPE_MASK, 0b11);
        assert_eq!(
            (leaf_type(1), leaf_type(2), leaf_type(3)),
            (0b01, 0b01, 0b11)
        );
    }

    #[test]
    fn descriptor_fields_sit_where_the_architecture_puts_them() {
        assert_eq!(s1::AP_UNPRIV | s1::AP_RDONLY, 0b11 << 6);
        assert_eq!(s2::S2AP_READ | s2::S2AP_WRITE, 0b11 << 6);
        assert_eq!(SH_INNER << SH_SHIFT, 0x300);
        assert_eq!(AF, 0x400);
        assert_eq!(s1::NG, 0x800);
        assert_eq!(s1::DBM.trailing_zeros(), 51);
        assert_eq!(CONTIG.trailing_zeros(), 52);
        assert_eq!(s1::PXN.trailing_zeros(), 53);
        assert_eq!(s1::UXN.trailing_zeros(), 54);
        assert_eq!(s2::XN, s1::UXN);
        assert_eq!(s1::NS_TABLE.trailing_zeros(), 63);
        // PA[51:48] -> bits 15:12.
        assert_eq!((0xfu64 << 48) >> PA_HI_SHIFT_52, PA_HI_MASK_52);
        assert_eq!(ADDR_MASK_48.count_ones(), 36);
    }

    #[test]
    fn mair_bytes_match_indices() {
        let m = mair();
        assert_eq!(m & 0xff, 0x44);
        assert_eq!((m >> 8) & 0xff, 0xff);
        assert_eq!((m >> 16) & 0xff, 0x04);
        assert_eq!((m >> 24) & 0xff, 0xf4);
    }

    #[test]
    fn ps_encodings() {
        let all: [(u32, u8); 7] = [
            (32, 0),
            (36, 1),
            (40, 2),
            (42, 3),
            (44, 4),
            (48, 5),
            (52, 6),
        ];
        for (bits, enc) in all {
            assert_eq!(ps_encoding(bits), Some(enc));
        }
        assert_eq!(ps_encoding(39), None);
    }
}
