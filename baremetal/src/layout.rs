//! The memory map of QEMU's `virt` machine (the parts this kernel touches).

/// PL011 UART.
pub const UART: u64 = 0x0900_0000;
/// SMMUv3 register frame (two 64 KiB pages).
pub const SMMU: u64 = 0x0905_0000;
/// Size of the SMMUv3 register frame.
pub const SMMU_SIZE: u64 = 0x2_0000;
/// PCIe 32-bit MMIO window (BARs are assigned from here).
pub const PCIE_MMIO32: u64 = 0x1000_0000;
/// End (exclusive) of the 32-bit MMIO window.
pub const PCIE_MMIO32_END: u64 = 0x3eff_0000;
/// PCIe ECAM (configuration space), bus 0 at the base.
pub const PCIE_ECAM: u64 = 0x40_1000_0000;
/// Size of the ECAM window (256 buses).
pub const PCIE_ECAM_SIZE: u64 = 0x1000_0000;
/// Start of RAM.
pub const RAM: u64 = 0x4000_0000;
/// RAM size the harness runs QEMU with (`-m 1G`).
pub const RAM_SIZE: u64 = 0x4000_0000;

/// A region of the identity map.
pub struct Region {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// Normal cacheable memory (RAM) rather than Device memory (MMIO).
    pub normal: bool,
}

/// What the CPU's identity map covers.
pub const REGIONS: &[Region] = &[
    // Flash, GIC, UART, SMMU and the PCIe 32-bit window all sit below 1 GiB.
    Region {
        base: 0,
        size: RAM,
        normal: false,
    },
    Region {
        base: RAM,
        size: RAM_SIZE,
        normal: true,
    },
    Region {
        base: PCIE_ECAM,
        size: PCIE_ECAM_SIZE,
        normal: false,
    },
];

const _: () = {
    assert!(UART < RAM && SMMU + SMMU_SIZE <= RAM && PCIE_MMIO32_END <= RAM);
};
