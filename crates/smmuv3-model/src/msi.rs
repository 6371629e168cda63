//! What an MSI write is made of (IHI 0070 3.18): an address, a 32-bit
//! payload, and the memory type and Shareability the SMMU_*_IRQ_CFG2
//! registers or CMD_SYNC's MSIAttr/MSH give it.
//!
//! A VMM's MSI callback ([`crate::SmmuModel::set_msi_write_handler`]) gets
//! these so it can tell a write aimed at an interrupt controller's
//! doorbell (Device memory, as Arm recommends for one) from one aimed at
//! memory a CPU polls (Normal, cacheable: Linux's CMD_SYNC completion).

/// A Normal memory cacheability (one of a MemAttr's two halves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cacheability {
    /// Non-cacheable.
    NonCacheable,
    /// Write-Through cacheable.
    WriteThrough,
    /// Write-Back cacheable.
    WriteBack,
}

/// The memory type of an MSI write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryType {
    /// Device-nGnRnE.
    DeviceNgnrne,
    /// Device-nGnRE.
    DeviceNgnre,
    /// Device-nGRE.
    DeviceNgre,
    /// Device-GRE.
    DeviceGre,
    /// Normal memory.
    Normal {
        /// Outer cacheability.
        outer: Cacheability,
        /// Inner cacheability.
        inner: Cacheability,
    },
}

/// The Shareability of an MSI write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shareability {
    /// Non-shareable.
    NonShareable,
    /// Outer Shareable.
    Outer,
    /// Inner Shareable.
    Inner,
}

/// The memory attributes of an MSI write as programmed: MemAttr and SH
/// of an SMMU_*_IRQ_CFG2, or MSIAttr and MSH of a CMD_SYNC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiAttr {
    mem_attr: u8,
    sh: u8,
}

impl MsiAttr {
    /// Returns the attributes of a 4-bit MemAttr (encoded as STE.MemAttr)
    /// and a 2-bit SH field; higher bits are dropped.
    pub const fn new(mem_attr: u32, sh: u32) -> Self {
        Self {
            mem_attr: (mem_attr & 0xf) as u8,
            sh: (sh & 0b11) as u8,
        }
    }

    /// Returns the MemAttr (MSIAttr) field as programmed.
    pub const fn mem_attr(&self) -> u32 {
        self.mem_attr as u32
    }

    /// Returns the SH (MSH) field as programmed.
    pub const fn sh(&self) -> u32 {
        self.sh as u32
    }

    /// Returns the memory type the write is made with. MemAttr is
    /// encoded as the VMSAv8-64 stage 2 MemAttr\[3:0\] (outer cacheability
    /// in \[3:2\], inner in \[1:0\], 0b00xx Device), except that 0b0100,
    /// 0b1000 and 0b1100 are Reserved and behave as Device-nGnRnE (5.2,
    /// STE.MemAttr).
    pub const fn memory_type(&self) -> MemoryType {
        match (
            cacheability(self.mem_attr >> 2),
            cacheability(self.mem_attr & 3),
        ) {
            (Some(outer), Some(inner)) => MemoryType::Normal { outer, inner },
            (Some(_), None) => MemoryType::DeviceNgnrne,
            (None, _) => match self.mem_attr {
                0 => MemoryType::DeviceNgnrne,
                1 => MemoryType::DeviceNgnre,
                2 => MemoryType::DeviceNgre,
                _ => MemoryType::DeviceGre,
            },
        }
    }

    /// Returns whether the write is to Device memory.
    pub const fn is_device(&self) -> bool {
        !matches!(self.memory_type(), MemoryType::Normal { .. })
    }

    /// Returns the Shareability the write is made with: Outer Shareable
    /// for Device and Normal Inner and Outer Non-cacheable types, whatever
    /// SH says (3.18, 4.7.3), otherwise SH, its Reserved 0b01 treated as
    /// Non-shareable (6.3.23).
    pub const fn shareability(&self) -> Shareability {
        use Cacheability::NonCacheable;
        match self.memory_type() {
            MemoryType::Normal {
                outer: NonCacheable,
                inner: NonCacheable,
            } => Shareability::Outer,
            MemoryType::Normal { .. } => match self.sh {
                0b10 => Shareability::Outer,
                0b11 => Shareability::Inner,
                _ => Shareability::NonShareable,
            },
            _ => Shareability::Outer,
        }
    }
}

/// Returns the cacheability a 2-bit half of a Normal MemAttr encodes
/// (`None` for 0b00, which is not Normal).
const fn cacheability(half: u8) -> Option<Cacheability> {
    match half {
        1 => Some(Cacheability::NonCacheable),
        2 => Some(Cacheability::WriteThrough),
        3 => Some(Cacheability::WriteBack),
        _ => None,
    }
}

/// One MSI the SMMU sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MsiWrite {
    /// Physical address, 4-byte aligned, within the OAS.
    pub addr: u64,
    /// The 32-bit payload.
    pub data: u32,
    /// Memory type and Shareability.
    pub attr: MsiAttr,
}

impl MsiWrite {
    /// Returns an MSI of `data` to `addr` with attributes `attr`.
    pub const fn new(addr: u64, data: u32, attr: MsiAttr) -> Self {
        Self { addr, data, attr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Cacheability::*;

    #[test]
    fn mem_attr_decodes_as_stage2_memattr_with_reserved_as_device_ngnrne() {
        let t = |m| MsiAttr::new(m, 0).memory_type();
        assert_eq!(
            [0, 1, 2, 3].map(t),
            [
                MemoryType::DeviceNgnrne,
                MemoryType::DeviceNgnre,
                MemoryType::DeviceNgre,
                MemoryType::DeviceGre
            ]
        );
        for reserved in [0b0100, 0b1000, 0b1100] {
            assert_eq!(t(reserved), MemoryType::DeviceNgnrne, "{reserved:#b}");
        }
        let normal = |outer, inner| MemoryType::Normal { outer, inner };
        assert_eq!(t(0b0101), normal(NonCacheable, NonCacheable));
        assert_eq!(t(0b0110), normal(NonCacheable, WriteThrough));
        assert_eq!(t(0b1011), normal(WriteThrough, WriteBack));
        assert_eq!(t(0b1111), normal(WriteBack, WriteBack));
        assert_eq!(t(0b1101), normal(WriteBack, NonCacheable));
        assert_eq!(MsiAttr::new(0x1f, 0x7), MsiAttr::new(0xf, 0x3));
    }

    #[test]
    fn shareability_is_outer_for_device_and_non_cacheable_normal() {
        let sh = |m, s| MsiAttr::new(m, s).shareability();
        for s in 0..4 {
            assert_eq!(sh(0b0001, s), Shareability::Outer, "Device, SH {s}");
            assert_eq!(sh(0b1000, s), Shareability::Outer, "reserved, SH {s}");
            assert_eq!(sh(0b0101, s), Shareability::Outer, "iNC-oNC, SH {s}");
        }
        assert_eq!(sh(0b1111, 0b00), Shareability::NonShareable);
        assert_eq!(sh(0b1111, 0b01), Shareability::NonShareable, "reserved");
        assert_eq!(sh(0b1111, 0b10), Shareability::Outer);
        assert_eq!(sh(0b1111, 0b11), Shareability::Inner);
        assert_eq!(sh(0b0111, 0b11), Shareability::Inner, "oNC-iWB");
        assert!(MsiAttr::new(0b0011, 3).is_device());
        assert!(!MsiAttr::new(0b0101, 3).is_device());
    }
}
