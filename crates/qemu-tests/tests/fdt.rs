//! The model's devicetree node against the one QEMU's `virt` machine gives
//! its own SMMUv3, which an unmodified Linux probes (the QEMU Linux tests
//! boot on it): placed where QEMU places its SMMU and wired to the same
//! SPIs, the model's node must say the same in every property the
//! binding defines, and the PCI host's `iommu-map` the same mapping.
//!
//! QEMU's tree comes from `-machine dumpdtb`, which needs no kernel.
//! Without QEMU the test is compiled as `#[ignore]` with a SKIPPED reason.

use std::process::Command;
use std::sync::Arc;

use fdt_parser::Fdt;
use fdt_parser::node::FdtNode;
use sim_memory::{Coherency, SimMemory};
use smmuv3_model::fdt::GuestPlacement;
use smmuv3_model::{ModelConfig, RidMapping, SmmuDevice, SmmuModel};
use vm_fdt::FdtWriter;

/// Where QEMU's virt machine puts its SMMU (`VIRT_SMMU`).
const QEMU_SMMU: u64 = 0x0905_0000;

fn qemu_dtb() -> Vec<u8> {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("virt-smmuv3.dtb");
    let out = Command::new("qemu-system-aarch64")
        .arg("-machine")
        .arg(format!("virt,iommu=smmuv3,dumpdtb={}", path.display()))
        .args([
            "-cpu",
            "cortex-a57",
            "-nodefaults",
            "-nographic",
            "-net",
            "none",
        ])
        .output()
        .expect("qemu-system-aarch64 runs");
    assert!(
        path.exists(),
        "QEMU wrote no devicetree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(path).unwrap()
}

fn cells(v: &[u8]) -> Vec<u32> {
    v.chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

/// Returns each named interrupt's cells: (name, [type, number, flags]).
fn named_interrupts(node: FdtNode<'_, '_>) -> Vec<(String, Vec<u32>)> {
    let names = node.property("interrupt-names").unwrap().value;
    let cells = cells(node.property("interrupts").unwrap().value);
    let names: Vec<_> = names
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8(n.to_vec()).unwrap())
        .collect();
    assert_eq!(cells.len(), 3 * names.len());
    names
        .into_iter()
        .zip(cells.chunks(3).map(<[u32]>::to_vec))
        .collect()
}

#[test]
#[cfg_attr(
    qemu_missing,
    ignore = "SKIPPED: QEMU >= 10 or the aarch64 toolchain is missing (scripts/setup-qemu.sh)"
)]
fn the_models_node_says_what_qemus_smmu_node_says() {
    let blob = qemu_dtb();
    let qemu = Fdt::new(&blob).unwrap();
    let theirs = qemu
        .find_compatible(&["arm,smmu-v3"])
        .expect("QEMU's tree has an arm,smmu-v3 node");
    let their_phandle = cells(theirs.property("phandle").unwrap().value)[0];
    let their_irqs = named_interrupts(theirs);
    let spi = |name: &str| {
        their_irqs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("QEMU names no {name} interrupt"))
            .1[1]
    };

    // The model as QEMU's SMMU is: coherent, wired where QEMU wires it,
    // every requester ID of the host bridge mapped one to one.
    let mem = Arc::new(SimMemory::new(0x4000_0000, 1 << 20, Coherency::Coherent).unwrap());
    let model = Arc::new(SmmuModel::new(ModelConfig::qemu_like(), mem).unwrap());
    let dev = SmmuDevice::new(model, vec![RidMapping::identity()]);
    let at = GuestPlacement {
        base: QEMU_SMMU,
        eventq_spi: spi("eventq"),
        gerror_spi: spi("gerror"),
        cmdq_sync_spi: Some(spi("cmdq-sync")),
        msi_parent: None,
    };
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    dev.write_fdt_node(&mut w, &at, their_phandle).unwrap();
    let pci = w.begin_node("pcie@10000000").unwrap();
    w.property_array_u32("iommu-map", &dev.iommu_map(their_phandle))
        .unwrap();
    w.end_node(pci).unwrap();
    w.end_node(root).unwrap();
    let ours_blob = w.finish().unwrap();
    let ours_fdt = Fdt::new(&ours_blob).unwrap();
    let ours = ours_fdt.find_compatible(&["arm,smmu-v3"]).unwrap();

    assert_eq!(ours.name, theirs.name, "node name (unit address)");
    // Every property of the binding QEMU sets, byte for byte, but the
    // interrupts (QEMU also wires a PRI queue, which the model lacks).
    for name in [
        "compatible",
        "reg",
        "dma-coherent",
        "#iommu-cells",
        "phandle",
    ] {
        let (a, b) = (ours.property(name), theirs.property(name));
        assert!(b.is_some(), "QEMU's node has {name}");
        assert_eq!(a.map(|p| p.value), b.map(|p| p.value), "{name}");
    }
    let our_irqs = named_interrupts(ours);
    for (name, c) in &our_irqs {
        let theirs = their_irqs.iter().find(|(n, _)| n == name);
        assert_eq!(Some(c), theirs.map(|(_, c)| c), "interrupt {name}");
    }
    let missing: Vec<_> = their_irqs
        .iter()
        .filter(|(n, _)| !our_irqs.iter().any(|(o, _)| o == n))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(missing, ["priq"], "only the PRI queue's line is left out");
    // No property QEMU's node lacks, but msi-parent (none here).
    for p in ours.properties() {
        assert!(
            theirs.property(p.name).is_some(),
            "extra property {}",
            p.name
        );
    }

    let their_pci = qemu.find_compatible(&["pci-host-ecam-generic"]).unwrap();
    let our_pci = ours_fdt.find_node("/pcie@10000000").unwrap();
    assert_eq!(
        cells(our_pci.property("iommu-map").unwrap().value),
        cells(their_pci.property("iommu-map").unwrap().value),
        "iommu-map"
    );
}
