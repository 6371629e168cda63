//! TLB invalidation commands issued per unmap, counted by the model, with
//! and without range invalidation, against the minimum possible.

use io_pgtable::{Granule, Prot};
use sim_memory::Coherency;
use smmuv3::tlbi::min_range_commands;
use smmuv3::{AttachOptions, SmmuConfig};
use smmuv3_hosted::{HostedDomain, System};
use smmuv3_model::{DmaRequest, ModelConfig};

const RW: Prot = Prot::READ.union(Prot::WRITE).union(Prot::CACHE);
/// Output addresses of the big mappings: beyond simulated memory, never
/// touched by DMA (only the tables are).
const FAR_PA: u64 = 0x10_0000_0000;

/// Returns the TLBI commands the model executed for one unmap of `size`
/// bytes mapped with pages of `page`.
fn tlbis_for_unmap(ril: bool, size: u64, page: u64) -> u64 {
    let model = ModelConfig {
        ril,
        ..ModelConfig::default()
    };
    let sys = System::new(16 << 20, Coherency::Coherent, model, SmmuConfig::default()).unwrap();
    let mut d = HostedDomain::new_stage1(&sys.smmu, Granule::K4, 48).unwrap();
    sys.smmu
        .attach(1, None, &d, AttachOptions::default())
        .unwrap();
    let iova = 0x40_0000_0000;
    // Map with exactly `page`-sized leaves.
    let mut off = 0;
    while off < size {
        d.map(iova + off, FAR_PA + off, page, RW).unwrap();
        off += page;
    }
    // Fill the TLB at both ends; after the unmap both must fault.
    let probes = [iova, iova + size - 4096];
    for p in probes {
        sys.model.translate(&DmaRequest::read(1, p, 4)).unwrap();
    }
    let s = sys.model.stats();
    let before: u64 = s.commands[0x10..0x40].iter().sum();
    assert_eq!(d.unmap(iova, size).unwrap(), size);
    let s = sys.model.stats();
    for p in probes {
        assert!(
            sys.model.translate(&DmaRequest::read(1, p, 4)).is_err(),
            "stale translation at {p:#x}"
        );
    }
    s.commands[0x10..0x40].iter().sum::<u64>() - before
}

#[test]
fn commands_per_unmap() {
    const K4: u64 = 4 << 10;
    const M2: u64 = 2 << 20;
    // (size, page, with RIL, without RIL)
    let cases = [
        (1u64 << 20, K4, 1, 256),
        // 512 commands or more: one ASID-wide invalidation instead.
        (2 << 20, K4, 1, 1),
        (2 << 20, M2, 1, 1),
        (1 << 30, M2, 1, 1),
    ];
    for (size, page, ril_want, non_want) in cases {
        let ril = tlbis_for_unmap(true, size, page);
        let non = tlbis_for_unmap(false, size, page);
        let min = u64::from(min_range_commands(size >> 12));
        eprintln!("unmap {size:#x} of {page:#x} pages: RIL {ril}, no RIL {non}, minimum {min}");
        assert_eq!(ril, ril_want, "RIL, {size:#x}/{page:#x}");
        assert_eq!(ril, min, "RIL reaches the minimum");
        assert_eq!(non, non_want, "no RIL, {size:#x}/{page:#x}");
    }
}
