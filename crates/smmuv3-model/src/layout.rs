//! In-memory structure layouts (Arm IHI 0070 chapters 4, 5, 7): stream
//! table entries, context descriptors, level-1 descriptors, commands and
//! event records. Pure field extraction and encoding; no behaviour.

/// Returns bits `[hi:lo]` of `v`.
#[inline]
pub const fn bits(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

/// Returns bit `b` of `v`.
#[inline]
pub const fn bit(v: u64, b: u32) -> bool {
    (v >> b) & 1 != 0
}

/// Mask of address bits `[51:lo]`.
#[inline]
pub const fn addr_mask(lo: u32) -> u64 {
    ((1u64 << 52) - 1) & !((1u64 << lo) - 1)
}

/// Returns how many address bits a command's physical address field
/// (such as CMD_SYNC.MSIAddress, \[55:2\]) defines in SMMUv3.`arch_minor`:
/// bits \[55:52\] are RES0 in SMMUv3.1 to v3.3 and \[55:48\] in v3.0
/// (IHI 0070 4.1.6).
pub const fn pa_field_bits(arch_minor: u8) -> u32 {
    match arch_minor {
        0 => 48,
        1..=3 => 52,
        _ => 56,
    }
}

/// Size of a stream table entry in bytes.
pub const STE_SIZE: u64 = 64;
/// Size of a context descriptor in bytes.
pub const CD_SIZE: u64 = 64;
/// Size of a command in bytes.
pub const CMD_SIZE: u64 = 16;
/// Size of an event record in bytes.
pub const EVENT_SIZE: u64 = 32;

/// A raw stream table entry (eight little-endian 64-bit words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawSte(pub [u64; 8]);

/// STE.Config encodings.
pub mod ste_config {
    /// Abort all traffic, record nothing.
    pub const ABORT: u64 = 0b000;
    /// Bypass both stages.
    pub const BYPASS: u64 = 0b100;
    /// Stage 1 translate, stage 2 bypass.
    pub const S1: u64 = 0b101;
    /// Stage 1 bypass, stage 2 translate.
    pub const S2: u64 = 0b110;
    /// Both stages (nested).
    pub const NESTED: u64 = 0b111;
}

impl RawSte {
    /// STE.V.
    pub fn valid(&self) -> bool {
        bit(self.0[0], 0)
    }
    /// STE.Config, bits \[3:1\].
    pub fn config(&self) -> u64 {
        bits(self.0[0], 3, 1)
    }
    /// STE.S1Fmt, bits \[5:4\].
    pub fn s1fmt(&self) -> u64 {
        bits(self.0[0], 5, 4)
    }
    /// STE.S1ContextPtr, bits \[51:6\].
    pub fn s1_context_ptr(&self) -> u64 {
        self.0[0] & addr_mask(6)
    }
    /// STE.S1CDMax, bits \[63:59\].
    pub fn s1cdmax(&self) -> u32 {
        bits(self.0[0], 63, 59) as u32
    }
    /// STE.S1DSS, bits \[65:64\].
    pub fn s1dss(&self) -> u64 {
        bits(self.0[1], 1, 0)
    }
    /// STE.S1STALLD, bit 91.
    pub fn s1stalld(&self) -> bool {
        bit(self.0[1], 27)
    }
    /// STE.EATS, bits \[93:92\].
    pub fn eats(&self) -> u64 {
        bits(self.0[1], 29, 28)
    }
    /// STE.STRW, bits \[95:94\].
    pub fn strw(&self) -> u64 {
        bits(self.0[1], 31, 30)
    }
    /// STE.PRIVCFG, bits \[113:112\].
    pub fn privcfg(&self) -> u64 {
        bits(self.0[1], 49, 48)
    }
    /// STE.INSTCFG, bits \[115:114\].
    pub fn instcfg(&self) -> u64 {
        bits(self.0[1], 51, 50)
    }
    /// STE.S2VMID, bits \[143:128\].
    pub fn s2vmid(&self) -> u16 {
        bits(self.0[2], 15, 0) as u16
    }
    /// STE.S2T0SZ, bits \[165:160\].
    pub fn s2t0sz(&self) -> u32 {
        bits(self.0[2], 37, 32) as u32
    }
    /// STE.S2SL0, bits \[167:166\].
    pub fn s2sl0(&self) -> u32 {
        bits(self.0[2], 39, 38) as u32
    }
    /// STE.S2TG, bits \[175:174\] (0 = 4K, 1 = 64K, 2 = 16K).
    pub fn s2tg(&self) -> u64 {
        bits(self.0[2], 47, 46)
    }
    /// STE.S2PS, bits \[178:176\].
    pub fn s2ps(&self) -> u64 {
        bits(self.0[2], 50, 48)
    }
    /// STE.S2AA64, bit 179.
    pub fn s2aa64(&self) -> bool {
        bit(self.0[2], 51)
    }
    /// STE.S2ENDI, bit 180.
    pub fn s2endi(&self) -> bool {
        bit(self.0[2], 52)
    }
    /// STE.S2AFFD, bit 181.
    pub fn s2affd(&self) -> bool {
        bit(self.0[2], 53)
    }
    /// STE.S2PTW, bit 182.
    pub fn s2ptw(&self) -> bool {
        bit(self.0[2], 54)
    }
    /// STE.S2HD, bit 183.
    pub fn s2hd(&self) -> bool {
        bit(self.0[2], 55)
    }
    /// STE.S2HA, bit 184.
    pub fn s2ha(&self) -> bool {
        bit(self.0[2], 56)
    }
    /// STE.S2S, bit 185.
    pub fn s2s(&self) -> bool {
        bit(self.0[2], 57)
    }
    /// STE.S2R, bit 186.
    pub fn s2r(&self) -> bool {
        bit(self.0[2], 58)
    }
    /// STE.S2TTB, bits \[243:196\].
    pub fn s2ttb(&self) -> u64 {
        self.0[3] & addr_mask(4)
    }
}

/// A raw context descriptor (eight little-endian 64-bit words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawCd(pub [u64; 8]);

impl RawCd {
    /// CD.T0SZ (sel 0) or CD.T1SZ (sel 1).
    pub fn tsz(&self, sel: u32) -> u32 {
        bits(self.0[0], 5 + 16 * sel, 16 * sel) as u32
    }
    /// CD.TG0 (sel 0) or CD.TG1 (sel 1), raw encoding.
    pub fn tg(&self, sel: u32) -> u64 {
        bits(self.0[0], 7 + 16 * sel, 6 + 16 * sel)
    }
    /// CD.EPD0 / CD.EPD1.
    pub fn epd(&self, sel: u32) -> bool {
        bit(self.0[0], 14 + 16 * sel)
    }
    /// CD.ENDI, bit 15.
    pub fn endi(&self) -> bool {
        bit(self.0[0], 15)
    }
    /// CD.V, bit 31.
    pub fn valid(&self) -> bool {
        bit(self.0[0], 31)
    }
    /// CD.IPS, bits \[34:32\].
    pub fn ips(&self) -> u64 {
        bits(self.0[0], 34, 32)
    }
    /// CD.AFFD, bit 35.
    pub fn affd(&self) -> bool {
        bit(self.0[0], 35)
    }
    /// CD.WXN, bit 36.
    pub fn wxn(&self) -> bool {
        bit(self.0[0], 36)
    }
    /// CD.TBI, bits \[39:38\].
    pub fn tbi(&self) -> u64 {
        bits(self.0[0], 39, 38)
    }
    /// CD.PAN, bit 40.
    pub fn pan(&self) -> bool {
        bit(self.0[0], 40)
    }
    /// CD.AA64, bit 41.
    pub fn aa64(&self) -> bool {
        bit(self.0[0], 41)
    }
    /// CD.HD, bit 42.
    pub fn hd(&self) -> bool {
        bit(self.0[0], 42)
    }
    /// CD.HA, bit 43.
    pub fn ha(&self) -> bool {
        bit(self.0[0], 43)
    }
    /// CD.S, bit 44.
    pub fn stall(&self) -> bool {
        bit(self.0[0], 44)
    }
    /// CD.R, bit 45.
    pub fn record(&self) -> bool {
        bit(self.0[0], 45)
    }
    /// CD.A, bit 46.
    pub fn abort(&self) -> bool {
        bit(self.0[0], 46)
    }
    /// CD.ASID, bits \[63:48\].
    pub fn asid(&self) -> u16 {
        bits(self.0[0], 63, 48) as u16
    }
    /// CD.HAD0 / CD.HAD1.
    pub fn had(&self, sel: u32) -> bool {
        bit(self.0[1 + sel as usize], 1)
    }
    /// CD.TTB0 / CD.TTB1, bits \[51:4\] of word 1 / 2.
    pub fn ttb(&self, sel: u32) -> u64 {
        self.0[1 + sel as usize] & addr_mask(4)
    }
    /// CD.MAIR0/1 (word 3).
    pub fn mair(&self) -> u64 {
        self.0[3]
    }
}

/// Level-1 stream table descriptor: Span, bits \[4:0\].
pub fn l1std_span(d: u64) -> u32 {
    bits(d, 4, 0) as u32
}
/// Level-1 stream table descriptor: L2Ptr, bits \[51:6\].
pub fn l1std_l2ptr(d: u64) -> u64 {
    d & addr_mask(6)
}
/// Level-1 CD descriptor: V, bit 0.
pub fn l1cd_valid(d: u64) -> bool {
    bit(d, 0)
}
/// Level-1 CD descriptor: L2Ptr, bits \[51:12\].
pub fn l1cd_l2ptr(d: u64) -> u64 {
    d & addr_mask(12)
}

/// A VMSAv8-64 translation table descriptor (stage 1 or stage 2; Arm DDI
/// 0487 D8.3): the bit positions the model's walker reads and updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawDesc(pub u64);

/// Descriptor bit positions and fields.
pub mod desc {
    /// Valid, bit 0.
    pub const VALID: u32 = 0;
    /// Table (levels 0-2) or page (level 3) when set; block when clear, bit 1.
    pub const TABLE: u32 = 1;
    /// Stage 1 AP\[1\] (EL0 access) / stage 2 S2AP\[0\] (read), bit 6.
    pub const AP_USER_S2_READ: u32 = 6;
    /// Stage 1 AP\[2\] (read-only) / stage 2 S2AP\[1\] (write), bit 7; also
    /// the dirty state of a DBM descriptor.
    pub const AP_RO_S2_WRITE: u32 = 7;
    /// Access flag, bit 10.
    pub const AF: u32 = 10;
    /// Not global (stage 1), bit 11.
    pub const NG: u32 = 11;
    /// Dirty bit modifier, bit 51.
    pub const DBM: u32 = 51;
    /// Contiguous hint, bit 52.
    pub const CONTIGUOUS: u32 = 52;
    /// Stage 1 PXN / stage 2 XN\[0\] (with FEAT_XNX), bit 53.
    pub const PXN: u32 = 53;
    /// Stage 1 UXN / stage 2 XN\[1\], bit 54.
    pub const UXN: u32 = 54;
    /// Table descriptor PXNTable, bit 59.
    pub const PXN_TABLE: u32 = 59;
    /// Table descriptor UXNTable, bit 60.
    pub const UXN_TABLE: u32 = 60;
    /// Table descriptor APTable\[0\] (no EL0 access), bit 61.
    pub const AP_TABLE_NO_USER: u32 = 61;
    /// Table descriptor APTable\[1\] (read-only), bit 62.
    pub const AP_TABLE_RO: u32 = 62;
    /// Output address bits \[47:lsb\] live in the same descriptor bits.
    pub const OA_HI: u32 = 47;
    /// With the 64K granule and 52-bit output, OA\[51:48\] sit in bits
    /// \[15:12\].
    pub const OA52_HI: u32 = 15;
    /// Low bit of OA\[51:48\] in the 52-bit 64K format.
    pub const OA52_LO: u32 = 12;
    /// Lower attributes that all members of a contiguous run must share:
    /// AttrIndx/MemAttr, NS, AP/S2AP, SH (bits \[9:2\]) and nG.
    pub const RUN_LOWER_ATTRS: u64 = 0xff << 2 | 1 << NG;
    /// Upper attributes a contiguous run shares: Contiguous, PXN, UXN/XN.
    pub const RUN_UPPER_ATTRS: u64 = 0x7 << CONTIGUOUS;
}

/// Where [`RawDesc::addr`] finds an address for one level's lowest
/// output bit and format, decided once: a walk extracts an address at
/// every level with one mask, one shift and an OR, and no branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OaMasks {
    /// Bits \[47:lsb\], in place.
    lo: u64,
    /// OA\[51:48\] once bits \[15:12\] are shifted up to them; zero
    /// without the 52-bit format.
    hi: u64,
}

impl OaMasks {
    /// Returns the masks for addresses whose lowest bit is `lsb` (12 to
    /// 47), with OA\[51:48\] in bits \[15:12\] when `pa52`.
    #[inline]
    pub const fn new(lsb: u32, pa52: bool) -> Self {
        Self {
            lo: ((1u64 << (desc::OA_HI + 1)) - 1) & !((1u64 << lsb) - 1),
            hi: if pa52 {
                ((1u64 << (desc::OA52_HI - desc::OA52_LO + 1)) - 1) << 48
            } else {
                0
            },
        }
    }
}

impl RawDesc {
    /// Returns whether the descriptor is valid.
    pub fn valid(&self) -> bool {
        bit(self.0, desc::VALID)
    }
    /// Returns whether it is a table (levels 0-2) or page (level 3).
    pub fn is_table(&self) -> bool {
        bit(self.0, desc::TABLE)
    }
    /// Returns the low two bits (valid and type).
    pub fn kind(&self) -> u64 {
        bits(self.0, desc::TABLE, desc::VALID)
    }
    /// Returns the access flag.
    pub fn af(&self) -> bool {
        bit(self.0, desc::AF)
    }
    /// Returns the dirty bit modifier.
    pub fn dbm(&self) -> bool {
        bit(self.0, desc::DBM)
    }
    /// Returns the nG bit.
    pub fn not_global(&self) -> bool {
        bit(self.0, desc::NG)
    }
    /// Returns the contiguous hint.
    pub fn contiguous(&self) -> bool {
        bit(self.0, desc::CONTIGUOUS)
    }
    /// Returns stage 1 AP\[1\] (EL0 access) / stage 2 S2AP\[0\] (read).
    pub fn ap_user_or_s2_read(&self) -> bool {
        bit(self.0, desc::AP_USER_S2_READ)
    }
    /// Returns stage 1 AP\[2\] (read-only) / stage 2 S2AP\[1\] (write).
    pub fn ap_ro_or_s2_write(&self) -> bool {
        bit(self.0, desc::AP_RO_S2_WRITE)
    }
    /// Returns stage 1 PXN.
    pub fn pxn(&self) -> bool {
        bit(self.0, desc::PXN)
    }
    /// Returns stage 1 UXN (stage 2 XN\[1\]).
    pub fn uxn(&self) -> bool {
        bit(self.0, desc::UXN)
    }
    /// Returns the stage 2 XN\[1:0\] field (FEAT_XNX encoding).
    pub fn s2_xn(&self) -> u64 {
        bits(self.0, desc::UXN, desc::PXN)
    }
    /// Returns the table descriptor's PXNTable.
    pub fn pxn_table(&self) -> bool {
        bit(self.0, desc::PXN_TABLE)
    }
    /// Returns the table descriptor's UXNTable.
    pub fn uxn_table(&self) -> bool {
        bit(self.0, desc::UXN_TABLE)
    }
    /// Returns the table descriptor's APTable\[0\] (no EL0 access).
    pub fn ap_table_no_user(&self) -> bool {
        bit(self.0, desc::AP_TABLE_NO_USER)
    }
    /// Returns the table descriptor's APTable\[1\] (read-only).
    pub fn ap_table_ro(&self) -> bool {
        bit(self.0, desc::AP_TABLE_RO)
    }
    /// Returns the table descriptor's hierarchical attributes, bits
    /// \[62:59\], as four bits: PXNTable (bit 0), UXNTable (1), APTable\[0\]
    /// (2) and APTable\[1\] (3). A walk ORs them down the levels at once.
    #[inline]
    pub fn table_attr_bits(&self) -> u8 {
        bits(self.0, desc::AP_TABLE_RO, desc::PXN_TABLE) as u8
    }
    /// Returns the output (or next-level table) address: bits \[47:lsb\],
    /// plus OA\[51:48\] from bits \[15:12\] when `pa52` (64K granule with
    /// 52-bit output). Bits \[50:48\] are RES0 and bit 51 is DBM, never
    /// address bits.
    #[inline]
    pub fn addr(&self, lsb: u32, pa52: bool) -> u64 {
        self.addr_in(OaMasks::new(lsb, pa52))
    }
    /// Returns [`RawDesc::addr`] with its arguments' masks at hand.
    #[inline]
    pub fn addr_in(&self, m: OaMasks) -> u64 {
        self.0 & m.lo | (self.0 << (48 - desc::OA52_LO)) & m.hi
    }
    /// Returns the descriptor with the access flag set.
    pub fn with_af(self) -> Self {
        Self(self.0 | 1 << desc::AF)
    }
    /// Returns the descriptor in its dirty state: stage 2 sets S2AP\[1\]
    /// (writable), stage 1 clears AP\[2\] (read-only).
    pub fn dirtied(self, stage2: bool) -> Self {
        if stage2 {
            Self(self.0 | 1 << desc::AP_RO_S2_WRITE)
        } else {
            Self(self.0 & !(1 << desc::AP_RO_S2_WRITE))
        }
    }
}

/// Command opcodes (bits \[7:0\] of the first word).
pub mod op {
    /// CMD_PREFETCH_CONFIG.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// CMD_PREFETCH_ADDR.
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// CMD_CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// CMD_CFGI_STE_RANGE (CMD_CFGI_ALL when Range = 31).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// CMD_CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// CMD_CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// CMD_TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// CMD_TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// CMD_TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// CMD_TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// CMD_TLBI_EL3_ALL.
    pub const TLBI_EL3_ALL: u8 = 0x18;
    /// CMD_TLBI_EL3_VA.
    pub const TLBI_EL3_VA: u8 = 0x1a;
    /// CMD_TLBI_EL2_ALL.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// CMD_TLBI_EL2_ASID.
    pub const TLBI_EL2_ASID: u8 = 0x21;
    /// CMD_TLBI_EL2_VA.
    pub const TLBI_EL2_VA: u8 = 0x22;
    /// CMD_TLBI_EL2_VAA.
    pub const TLBI_EL2_VAA: u8 = 0x23;
    /// CMD_TLBI_S12_VMALL.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// CMD_TLBI_S2_IPA.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// CMD_TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// CMD_ATC_INV.
    pub const ATC_INV: u8 = 0x40;
    /// CMD_PRI_RESP.
    pub const PRI_RESP: u8 = 0x41;
    /// CMD_RESUME.
    pub const RESUME: u8 = 0x44;
    /// CMD_STALL_TERM.
    pub const STALL_TERM: u8 = 0x45;
    /// CMD_SYNC.
    pub const SYNC: u8 = 0x46;
}

/// Returns the name of a command opcode, or `None` if unknown.
pub fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        op::PREFETCH_CONFIG => "PREFETCH_CONFIG",
        op::PREFETCH_ADDR => "PREFETCH_ADDR",
        op::CFGI_STE => "CFGI_STE",
        op::CFGI_STE_RANGE => "CFGI_STE_RANGE",
        op::CFGI_CD => "CFGI_CD",
        op::CFGI_CD_ALL => "CFGI_CD_ALL",
        op::TLBI_NH_ALL => "TLBI_NH_ALL",
        op::TLBI_NH_ASID => "TLBI_NH_ASID",
        op::TLBI_NH_VA => "TLBI_NH_VA",
        op::TLBI_NH_VAA => "TLBI_NH_VAA",
        op::TLBI_EL3_ALL => "TLBI_EL3_ALL",
        op::TLBI_EL3_VA => "TLBI_EL3_VA",
        op::TLBI_EL2_ALL => "TLBI_EL2_ALL",
        op::TLBI_EL2_ASID => "TLBI_EL2_ASID",
        op::TLBI_EL2_VA => "TLBI_EL2_VA",
        op::TLBI_EL2_VAA => "TLBI_EL2_VAA",
        op::TLBI_S12_VMALL => "TLBI_S12_VMALL",
        op::TLBI_S2_IPA => "TLBI_S2_IPA",
        op::TLBI_NSNH_ALL => "TLBI_NSNH_ALL",
        op::ATC_INV => "ATC_INV",
        op::PRI_RESP => "PRI_RESP",
        op::RESUME => "RESUME",
        op::STALL_TERM => "STALL_TERM",
        op::SYNC => "SYNC",
        _ => return None,
    })
}

/// A raw command (two little-endian 64-bit words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RawCmd(pub [u64; 2]);

impl RawCmd {
    /// Opcode, bits \[7:0\].
    pub fn opcode(&self) -> u8 {
        bits(self.0[0], 7, 0) as u8
    }
    /// SSec, bit 10 (must be 0 on the non-secure queue).
    pub fn ssec(&self) -> bool {
        bit(self.0[0], 10)
    }
    /// SSV, bit 11.
    pub fn ssv(&self) -> bool {
        bit(self.0[0], 11)
    }
    /// SubstreamID, bits \[31:12\].
    pub fn ssid(&self) -> u32 {
        bits(self.0[0], 31, 12) as u32
    }
    /// StreamID, bits \[63:32\].
    pub fn sid(&self) -> u32 {
        bits(self.0[0], 63, 32) as u32
    }
    /// Leaf, bit 64.
    pub fn leaf(&self) -> bool {
        bit(self.0[1], 0)
    }
    /// CFGI_STE_RANGE.Range, bits \[68:64\].
    pub fn range(&self) -> u32 {
        bits(self.0[1], 4, 0) as u32
    }
    /// TLBI NUM, bits \[16:12\].
    pub fn num(&self) -> u32 {
        bits(self.0[0], 16, 12) as u32
    }
    /// TLBI SCALE, bits \[24:20\].
    pub fn scale(&self) -> u32 {
        bits(self.0[0], 24, 20) as u32
    }
    /// TLBI VMID, bits \[47:32\].
    pub fn vmid(&self) -> u16 {
        bits(self.0[0], 47, 32) as u16
    }
    /// TLBI ASID, bits \[63:48\].
    pub fn asid(&self) -> u16 {
        bits(self.0[0], 63, 48) as u16
    }
    /// TLBI TTL, bits \[73:72\].
    pub fn ttl(&self) -> u32 {
        bits(self.0[1], 9, 8) as u32
    }
    /// TLBI TG, bits \[75:74\].
    pub fn tg(&self) -> u32 {
        bits(self.0[1], 11, 10) as u32
    }
    /// TLBI_NH_VA address, bits \[127:76\] (the full VA\[63:12\]).
    pub fn va(&self) -> u64 {
        self.0[1] & !0xfff
    }
    /// TLBI_S2_IPA address, bits \[115:76\] (IPA\[51:12\]).
    pub fn ipa(&self) -> u64 {
        self.0[1] & addr_mask(12)
    }
    /// CMD_SYNC.CS, bits \[13:12\].
    pub fn sync_cs(&self) -> u32 {
        bits(self.0[0], 13, 12) as u32
    }
    /// CMD_SYNC.MSIData, bits \[63:32\].
    pub fn sync_msi_data(&self) -> u32 {
        bits(self.0[0], 63, 32) as u32
    }
    /// CMD_SYNC.MSH, bits \[23:22\]: the MSI write's Shareability.
    pub fn sync_msh(&self) -> u32 {
        bits(self.0[0], 23, 22) as u32
    }
    /// CMD_SYNC.MSIAttr, bits \[27:24\]: the MSI write's memory type
    /// (encoded as STE.MemAttr).
    pub fn sync_msi_attr(&self) -> u32 {
        bits(self.0[0], 27, 24) as u32
    }
    /// CMD_SYNC.MSIAddress, bits \[119:66\] (address bits \[55:2\], of
    /// which [`pa_field_bits`] says how many an architecture revision
    /// defines).
    pub fn sync_msi_addr(&self) -> u64 {
        bits(self.0[1], 55, 2) << 2
    }
    /// ATC_INV.Size, bits \[69:64\].
    pub fn atc_size(&self) -> u32 {
        bits(self.0[1], 5, 0) as u32
    }
    /// RESUME.STAG, bits \[79:64\].
    pub fn stag(&self) -> u16 {
        bits(self.0[1], 15, 0) as u16
    }
    /// RESUME.Ac, bit 12: 1 retries the transaction, 0 terminates it.
    pub fn resume_retry(&self) -> bool {
        bit(self.0[0], 12)
    }
    /// RESUME.Ab, bit 13: a terminated transaction aborts (1) or completes
    /// with RAZ/WI (0); IGNORED on retry.
    pub fn resume_abort(&self) -> bool {
        bit(self.0[0], 13)
    }
}

/// CMD_SYNC completion signal values (CS field).
pub mod sync_cs {
    /// No signal (MSI write only when an address is given).
    pub const NONE: u32 = 0;
    /// Signal by interrupt (MSI when implemented, else wired).
    pub const IRQ: u32 = 1;
    /// Signal by SEV.
    pub const SEV: u32 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ste_fields_sit_at_architected_bits() {
        let mut s = RawSte::default();
        s.0[0] = 1 | ste_config::NESTED << 1 | 0b01 << 4 | 0x1234_5678_9ac0 | 7 << 59;
        s.0[1] = 0b10 | 1 << 27 | 0b01 << 28 | 0b10 << 30;
        s.0[2] = 0xbeef | 25 << 32 | 2 << 38 | 2 << 46 | 5 << 48 | 1 << 51 | 1 << 58;
        s.0[3] = 0xf_ffff_ffff_fff0;
        assert!(s.valid());
        assert_eq!(s.config(), ste_config::NESTED);
        assert_eq!(s.s1fmt(), 1);
        assert_eq!(s.s1_context_ptr(), 0x1234_5678_9ac0);
        assert_eq!(s.s1cdmax(), 7);
        assert_eq!(
            (s.s1dss(), s.s1stalld(), s.eats(), s.strw()),
            (2, true, 1, 2)
        );
        assert_eq!(
            (s.s2vmid(), s.s2t0sz(), s.s2sl0(), s.s2tg()),
            (0xbeef, 25, 2, 2)
        );
        assert_eq!(
            (s.s2ps(), s.s2aa64(), s.s2r(), s.s2s()),
            (5, true, true, false)
        );
        assert_eq!(s.s2ttb(), 0xf_ffff_ffff_fff0);
    }

    #[test]
    fn cd_fields_sit_at_architected_bits() {
        let mut c = RawCd::default();
        c.0[0] = 16 | 2 << 6 | 1 << 14 | 1 << 31 | 5 << 32 | 1 << 35 | 1 << 41 | 1 << 45;
        c.0[0] |= 1 << 46 | 0xabcd << 48 | 25 << 16 | 1 << 30;
        c.0[1] = 0x8_0000_1000 | 2;
        assert_eq!(
            (c.tsz(0), c.tg(0), c.epd(0), c.valid()),
            (16, 2, true, true)
        );
        assert_eq!((c.tsz(1), c.epd(1)), (25, true));
        assert_eq!(
            (c.ips(), c.affd(), c.aa64(), c.record()),
            (5, true, true, true)
        );
        assert_eq!((c.abort(), c.asid(), c.had(0)), (true, 0xabcd, true));
        assert_eq!(c.ttb(0), 0x8_0000_1000);
    }

    #[test]
    fn command_fields_sit_at_architected_bits() {
        let c = RawCmd([
            u64::from(op::TLBI_NH_VA) | 3 << 12 | 9 << 20 | 0x22 << 32 | 0x7777 << 48,
            1 | 2 << 8 | 1 << 10 | 0xffff_0000_1234_5000,
        ]);
        assert_eq!(c.opcode(), op::TLBI_NH_VA);
        assert_eq!(
            (c.num(), c.scale(), c.vmid(), c.asid()),
            (3, 9, 0x22, 0x7777)
        );
        assert_eq!((c.leaf(), c.ttl(), c.tg()), (true, 2, 1));
        assert_eq!(c.va(), 0xffff_0000_1234_5000);
        assert_eq!(c.ipa(), 0x000f_0000_1234_5000);
        let s = RawCmd([
            u64::from(op::SYNC) | 1 << 12 | 0b11 << 22 | 0xa << 24 | 0xdead_beef << 32,
            0xff80_0000_8000_1007,
        ]);
        assert_eq!(
            (s.sync_cs(), s.sync_msi_data(), s.sync_msi_addr()),
            (1, 0xdead_beef, 0x0080_0000_8000_1004)
        );
        assert_eq!((s.sync_msh(), s.sync_msi_attr()), (0b11, 0xa));
        assert_eq!(RawCmd([0, 1 << 55]).sync_msi_addr(), 1 << 55);
        assert_eq!(RawCmd([0, 1 << 56]).sync_msi_addr(), 0);
        assert_eq!(
            [0, 1, 3, 4].map(pa_field_bits),
            [48, 52, 52, 56],
            "4.1.6: [55:52] RES0 in v3.1-v3.3, [55:48] in v3.0"
        );
        assert_eq!(opcode_name(0x46), Some("SYNC"));
        assert_eq!(opcode_name(0x47), None);
    }

    #[test]
    fn descriptor_fields_sit_at_architected_bits() {
        let d = RawDesc(1 | 1 << 1 | 1 << 6 | 1 << 10 | 1 << 11 | 1 << 51 | 1 << 52 | 1 << 53);
        assert!(d.valid() && d.is_table() && d.ap_user_or_s2_read() && d.af());
        assert!(d.not_global() && d.dbm() && d.contiguous() && d.pxn());
        assert!(!d.uxn() && !d.ap_ro_or_s2_write());
        assert_eq!((d.kind(), d.s2_xn()), (3, 1));
        let t = RawDesc(1 << 59 | 1 << 60 | 1 << 61 | 1 << 62 | 1 << 54 | 1 << 7);
        assert!(t.pxn_table() && t.uxn_table() && t.ap_table_no_user() && t.ap_table_ro());
        assert!(t.uxn() && t.ap_ro_or_s2_write() && !t.valid());
        assert_eq!(t.table_attr_bits(), 0b1111);
        // One attribute at a time: PXNTable, UXNTable, APTable[0], APTable[1].
        for (bit, want) in [(59, 0b0001), (60, 0b0010), (61, 0b0100), (62, 0b1000)] {
            assert_eq!(RawDesc(1 << bit | 3).table_attr_bits(), want, "bit {bit}");
        }
        assert_eq!(RawDesc(1 << 63 | 1 << 58).table_attr_bits(), 0);
        assert_eq!(t.s2_xn(), 2);
        assert_eq!(RawDesc(0).with_af().0, 1 << 10);
        assert_eq!(RawDesc(1 << 7).dirtied(false).0, 0);
        assert_eq!(RawDesc(0).dirtied(true).0, 1 << 7);
        // OA[47:lsb]; bits 51:48 are DBM/RES0, not address bits.
        let a = RawDesc(0x000f_1234_5678_9fff);
        assert_eq!(a.addr(12, false), 0x1234_5678_9000);
        assert_eq!(a.addr(16, false), 0x1234_5678_0000);
        // 52-bit 64K format: OA[51:48] from bits 15:12.
        let b = RawDesc(0x0000_1234_5678_0000 | 0xa << 12 | 3);
        assert_eq!(b.addr(16, true), 0x000a_1234_5678_0000);
        // Bits 15:12 are not address bits without the 52-bit format, and
        // the bits between the granule and 15 are never.
        assert_eq!(b.addr(16, false), 0x0000_1234_5678_0000);
        assert_eq!(RawDesc(0xffff).addr(16, true), 0xf << 48);
        assert_eq!(desc::RUN_LOWER_ATTRS, 0xbfc);
        assert_eq!(desc::RUN_UPPER_ATTRS, 0x7 << 52);
    }

    #[test]
    fn sizes_match_architecture() {
        assert_eq!(core::mem::size_of::<RawSte>() as u64, STE_SIZE);
        assert_eq!(core::mem::size_of::<RawCd>() as u64, CD_SIZE);
        assert_eq!(core::mem::size_of::<RawCmd>() as u64, CMD_SIZE);
        assert_eq!(l1std_span(0x8000_0045), 5);
        assert_eq!(l1std_l2ptr(0x8000_0045), 0x8000_0040);
        assert_eq!(l1cd_l2ptr(0x8000_1fff), 0x8000_1000);
    }
}
