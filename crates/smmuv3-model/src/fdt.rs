//! The model described to a guest: its devicetree node (the `arm,smmu-v3`
//! binding) and the `iommu-map` of the PCI host bridge behind it, written
//! with rust-vmm's `vm-fdt` as the rest of a VMM's devicetree is.
//!
//! What the node says is read off the model, so it cannot contradict what
//! the guest's driver then finds in the ID registers: `dma-coherent`
//! exactly when IDR0.COHACC is set (Linux warns when the two disagree and
//! believes the firmware), no `priq` interrupt (the model has no PRI
//! queue), `msi-parent` only on a model with MSIs.

use vm_fdt::FdtWriter;

use crate::SmmuDevice;
use crate::regs::{self, FRAME_SIZE};

/// The binding's `compatible` string.
pub const COMPATIBLE: &str = "arm,smmu-v3";

/// `IRQ_TYPE_EDGE_RISING` in the GIC's third interrupt cell: the SMMU's
/// wired interrupts are edge-triggered (once per assertion, as the model's
/// [`crate::IrqHandler`] delivers them).
const EDGE_RISING: u32 = 1;
/// `GIC_SPI` in the GIC's first interrupt cell.
const GIC_SPI: u32 = 0;

/// Where a VMM places the model in its guest, and how its interrupts are
/// wired: the GIC SPI numbers (INTID - 32) the VMM raises when the
/// model's [`crate::IrqHandler`] reports each line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPlacement {
    /// Guest physical address of the register frame ([`FRAME_SIZE`]
    /// bytes, 64 KiB aligned).
    pub base: u64,
    /// SPI of [`crate::IrqLine::EventQ`].
    pub eventq_spi: u32,
    /// SPI of [`crate::IrqLine::Gerror`].
    pub gerror_spi: u32,
    /// SPI of [`crate::IrqLine::CmdSync`], if the VMM wires it (Linux
    /// polls or uses an MSI for CMD_SYNC and does not need it).
    pub cmdq_sync_spi: Option<u32>,
    /// The MSI controller the VMM delivers the model's MSIs to (from its
    /// [`crate::MsiHandler`]), for `msi-parent`. Ignored on a model
    /// without MSIs (IDR0.MSI = 0): the guest would look for MSIs the
    /// model cannot send.
    pub msi_parent: Option<MsiParent>,
}

/// An `msi-parent` reference: the MSI controller's phandle and, for one
/// with `#msi-cells = <1>` (a GICv3 ITS), the DeviceID the SMMU's own MSIs
/// carry; `None` for one without MSI cells (a GICv2m frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiParent {
    /// Phandle of the MSI controller.
    pub phandle: u32,
    /// The SMMU's DeviceID at that controller, when it takes one.
    pub device_id: Option<u32>,
}

/// Why a node was not written.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    /// The frame's base is not 64 KiB aligned (the SMMU's pages are 64 KiB).
    #[error("SMMU frame base {0:#x} is not 64 KiB aligned")]
    Unaligned(u64),
    /// The devicetree writer refused the node.
    #[error("devicetree writer: {0}")]
    Writer(#[from] vm_fdt::Error),
}

impl SmmuDevice {
    /// Returns the name of the node [`SmmuDevice::write_fdt_node`] writes at
    /// `base` (`smmuv3@<base>`).
    pub fn fdt_node_name(base: u64) -> String {
        format!("smmuv3@{base:x}")
    }

    /// Writes the model's devicetree node as a child of the node `fdt` is
    /// in, with phandle `phandle` (the one [`SmmuDevice::iommu_map`]
    /// refers to). The parent must have `#address-cells` and
    /// `#size-cells` of 2 (as the root of an arm64 VM's tree has), and
    /// the interrupt parent a GIC (three interrupt cells).
    ///
    /// # Errors
    ///
    /// [`FdtError::Unaligned`] for a base that is not 64 KiB aligned
    /// (nothing is written), [`FdtError::Writer`] when `vm-fdt` refuses
    /// a node or property.
    pub fn write_fdt_node(
        &self,
        fdt: &mut FdtWriter,
        at: &GuestPlacement,
        phandle: u32,
    ) -> Result<(), FdtError> {
        if at.base % (64 << 10) != 0 {
            return Err(FdtError::Unaligned(at.base));
        }
        let idr0 = self.model().id_regs().idr[0];
        let mut lines = vec![("eventq", at.eventq_spi), ("gerror", at.gerror_spi)];
        if let Some(spi) = at.cmdq_sync_spi {
            lines.push(("cmdq-sync", spi));
        }
        let node = fdt.begin_node(&Self::fdt_node_name(at.base))?;
        fdt.property_string("compatible", COMPATIBLE)?;
        fdt.property_array_u64("reg", &[at.base, FRAME_SIZE])?;
        let cells: Vec<u32> = lines
            .iter()
            .flat_map(|&(_, spi)| [GIC_SPI, spi, EDGE_RISING])
            .collect();
        fdt.property_array_u32("interrupts", &cells)?;
        fdt.property_string_list(
            "interrupt-names",
            lines.iter().map(|&(name, _)| name.to_owned()).collect(),
        )?;
        if idr0 & regs::IDR0_COHACC != 0 {
            fdt.property_null("dma-coherent")?;
        }
        if let Some(msi) = at.msi_parent.filter(|_| idr0 & regs::IDR0_MSI != 0) {
            match msi.device_id {
                Some(id) => fdt.property_array_u32("msi-parent", &[msi.phandle, id])?,
                None => fdt.property_u32("msi-parent", msi.phandle)?,
            }
        }
        fdt.property_u32("#iommu-cells", 1)?;
        fdt.property_phandle(phandle)?;
        fdt.end_node(node)?;
        Ok(())
    }

    /// Returns the `iommu-map` property of the PCI host bridge whose
    /// requester IDs this device maps, for an SMMU node of phandle
    /// `phandle`: one (RID base, phandle, StreamID base, count) entry per
    /// [`crate::RidMapping`], in their order. Requester IDs no mapping
    /// covers are left out, so the guest sees their devices as not behind
    /// the SMMU, as [`SmmuDevice::stream_id`] treats them.
    pub fn iommu_map(&self, phandle: u32) -> Vec<u32> {
        self.rid_map()
            .iter()
            .flat_map(|m| [m.rid_base, phandle, m.sid_base, m.count])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fdt_parser::Fdt;
    use sim_memory::{Coherency, SimMemory};

    use super::*;
    use crate::{ModelConfig, RidMapping, SmmuModel};

    const GIC: u32 = 1;
    const SMMU: u32 = 2;
    const MSI_CTL: u32 = 3;
    const BASE: u64 = 0x0905_0000;

    fn device(coherency: Coherency, msi: bool, rid_map: Vec<RidMapping>) -> SmmuDevice {
        let mem = Arc::new(SimMemory::new(0x4000_0000, 1 << 20, coherency).unwrap());
        let cfg = ModelConfig {
            msi,
            ..ModelConfig::default()
        };
        SmmuDevice::new(Arc::new(SmmuModel::new(cfg, mem).unwrap()), rid_map)
    }

    fn placement() -> GuestPlacement {
        GuestPlacement {
            base: BASE,
            eventq_spi: 74,
            gerror_spi: 77,
            cmdq_sync_spi: Some(76),
            msi_parent: Some(MsiParent {
                phandle: MSI_CTL,
                device_id: Some(0xff00),
            }),
        }
    }

    /// Returns a whole tree with the device's node and a PCI host behind it.
    fn tree(dev: &SmmuDevice, at: &GuestPlacement) -> Vec<u8> {
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 2).unwrap();
        fdt.property_u32("interrupt-parent", GIC).unwrap();
        let gic = fdt.begin_node("intc@8000000").unwrap();
        fdt.property_null("interrupt-controller").unwrap();
        fdt.property_u32("#interrupt-cells", 3).unwrap();
        fdt.property_phandle(GIC).unwrap();
        fdt.end_node(gic).unwrap();
        dev.write_fdt_node(&mut fdt, at, SMMU).unwrap();
        let pci = fdt.begin_node("pcie@10000000").unwrap();
        fdt.property_array_u32("iommu-map", &dev.iommu_map(SMMU))
            .unwrap();
        fdt.end_node(pci).unwrap();
        fdt.end_node(root).unwrap();
        fdt.finish().unwrap()
    }

    fn cells(v: &[u8]) -> Vec<u32> {
        v.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn the_node_follows_the_binding_and_the_id_registers() {
        for (coherency, msi) in [(Coherency::Coherent, true), (Coherency::NonCoherent, false)] {
            let dev = device(coherency, msi, vec![RidMapping::identity()]);
            let blob = tree(&dev, &placement());
            let fdt = Fdt::new(&blob).unwrap();
            let node = fdt.find_node("/smmuv3@9050000").unwrap();
            assert_eq!(node.compatible().unwrap().first(), COMPATIBLE);
            let reg: Vec<_> = node.reg().unwrap().collect();
            assert_eq!(reg.len(), 1);
            assert_eq!(reg[0].starting_address as u64, BASE);
            assert_eq!(reg[0].size, Some(0x20000));
            let prop = |name| node.property(name).map(|p| p.value);
            assert_eq!(
                cells(prop("interrupts").unwrap()),
                [0, 74, 1, 0, 77, 1, 0, 76, 1]
            );
            assert_eq!(
                prop("interrupt-names").unwrap(),
                b"eventq\0gerror\0cmdq-sync\0"
            );
            // COHACC and MSI as the guest's driver will read them.
            let idr0 = dev.model().read32(regs::IDR0);
            assert_eq!(
                idr0 & regs::IDR0_COHACC != 0,
                coherency == Coherency::Coherent
            );
            assert_eq!(
                prop("dma-coherent").is_some(),
                idr0 & regs::IDR0_COHACC != 0
            );
            assert_eq!(idr0 & regs::IDR0_MSI != 0, msi);
            assert_eq!(
                prop("msi-parent").map(cells),
                msi.then(|| vec![MSI_CTL, 0xff00])
            );
            assert_eq!(prop("#iommu-cells").map(cells), Some(vec![1]));
            assert_eq!(fdt.find_phandle(SMMU).unwrap().name, "smmuv3@9050000");
            assert!(
                prop("priq").is_none() && !prop("interrupt-names").unwrap().starts_with(b"priq")
            );
        }
    }

    #[test]
    fn without_a_cmdq_sync_line_two_interrupts_are_named() {
        let dev = device(Coherency::Coherent, false, vec![]);
        let at = GuestPlacement {
            cmdq_sync_spi: None,
            ..placement()
        };
        let blob = tree(&dev, &at);
        let fdt = Fdt::new(&blob).unwrap();
        let node = fdt.find_node("/smmuv3@9050000").unwrap();
        let prop = |name| node.property(name).unwrap().value;
        assert_eq!(cells(prop("interrupts")), [0, 74, 1, 0, 77, 1]);
        assert_eq!(prop("interrupt-names"), b"eventq\0gerror\0");
    }

    #[test]
    fn an_msi_controller_without_cells_is_named_alone() {
        let dev = device(Coherency::Coherent, true, vec![]);
        let at = GuestPlacement {
            msi_parent: Some(MsiParent {
                phandle: MSI_CTL,
                device_id: None,
            }),
            ..placement()
        };
        let blob = tree(&dev, &at);
        let fdt = Fdt::new(&blob).unwrap();
        let node = fdt.find_node("/smmuv3@9050000").unwrap();
        assert_eq!(cells(node.property("msi-parent").unwrap().value), [MSI_CTL]);
    }

    #[test]
    fn an_unaligned_base_is_refused_and_writes_nothing() {
        let dev = device(Coherency::Coherent, false, vec![]);
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        let at = GuestPlacement {
            base: BASE + 0x1000,
            ..placement()
        };
        assert!(matches!(
            dev.write_fdt_node(&mut fdt, &at, SMMU),
            Err(FdtError::Unaligned(b)) if b == BASE + 0x1000
        ));
        fdt.end_node(root).unwrap();
        let blob = fdt.finish().unwrap();
        let parsed = Fdt::new(&blob).unwrap();
        assert_eq!(parsed.all_nodes().count(), 1, "only the root");
    }

    /// The guest resolves a requester ID through `iommu-map` as the
    /// devicetree specifies (the first entry whose range holds it); that
    /// must give the StreamID the device uses for it, for every RID.
    #[test]
    fn the_guest_maps_every_requester_id_to_the_devices_stream() {
        let map = vec![
            RidMapping {
                rid_base: 0x100,
                count: 0x100,
                sid_base: 0x2000,
            },
            // Overlaps the first: the first one wins, for both.
            RidMapping {
                rid_base: 0x180,
                count: 0x200,
                sid_base: 0x10,
            },
            RidMapping {
                rid_base: 0xff00,
                count: 0x100,
                sid_base: 0,
            },
        ];
        let dev = device(Coherency::Coherent, false, map);
        let blob = tree(&dev, &placement());
        let fdt = Fdt::new(&blob).unwrap();
        let pci = fdt.find_node("/pcie@10000000").unwrap();
        let entries = cells(pci.property("iommu-map").unwrap().value);
        assert_eq!(entries.len(), 12);
        let guest = |rid: u32| {
            entries.chunks(4).find_map(|e| {
                assert_eq!(e[1], SMMU);
                (rid >= e[0] && rid - e[0] < e[3]).then(|| e[2] + (rid - e[0]))
            })
        };
        for rid in 0..=u16::MAX {
            assert_eq!(guest(u32::from(rid)), dev.stream_id(rid), "rid {rid:#x}");
        }
        assert_eq!(dev.stream_id(0x1ff), Some(0x20ff));
        assert_eq!(dev.stream_id(0x200), Some(0x90));
        assert_eq!(dev.stream_id(0x50), None);
    }
}
