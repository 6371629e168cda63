//! One test per (machine, scenario) of the bare-metal kernel under QEMU.
//!
//! The first test to run boots QEMU (through `scripts/qemu-test.sh`) for both
//! machines; the others read the same result. Without QEMU 10 or the aarch64
//! toolchain every test is compiled as `#[ignore]` with a SKIPPED reason (see
//! build.rs), so a skip is listed as `ignored`, never as `ok`.

use std::path::PathBuf;

use qemu_tests::{Run, Status, run_once};

/// Machine with stage 1 and stage 2.
const VIRT: &str = "virt";
/// Machine whose SMMU has stage 1 only.
const VIRT_91: &str = "virt-9.1";

fn run() -> &'static Run {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu-results");
    let run = run_once(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        run.exit_code,
        Some(qemu_tests::EXIT_SKIPPED),
        "qemu-test.sh SKIPPED at run time although the build found QEMU:\n{}",
        run.output
    );
    run
}

fn expect(machine: &str, name: &str, status: Status) {
    match run().check(machine, name, status) {
        Ok(v) => println!("[{machine}] {name}: {:?} {}", v.status, v.detail),
        Err(report) => panic!("{report}"),
    }
}

/// Declares one test per scenario per machine: `pass` on both machines,
/// `s2` passes on virt and must report SKIP (no stage 2) on virt-9.1.
macro_rules! scenarios {
    ($( $kind:ident $name:literal => $virt:ident, $virt91:ident; )*) => {
        $(
            #[test]
            #[cfg_attr(qemu_missing, ignore = "SKIPPED: QEMU >= 10 or the aarch64 toolchain is missing (scripts/setup-qemu.sh)")]
            fn $virt() {
                expect(VIRT, $name, Status::Pass);
            }

            #[test]
            #[cfg_attr(qemu_missing, ignore = "SKIPPED: QEMU >= 10 or the aarch64 toolchain is missing (scripts/setup-qemu.sh)")]
            fn $virt91() {
                expect(VIRT_91, $name, scenarios!(@virt91 $kind));
            }
        )*

        /// Every scenario the kernel reports has a test here.
        #[test]
        #[cfg_attr(qemu_missing, ignore = "SKIPPED: QEMU >= 10 or the aarch64 toolchain is missing (scripts/setup-qemu.sh)")]
        fn every_reported_scenario_has_a_test() {
            let known = [$($name),*];
            let unknown: Vec<_> = run()
                .verdicts
                .keys()
                .filter(|(_, name)| !known.contains(&name.as_str()))
                .collect();
            assert!(unknown.is_empty(), "scenarios without a test: {unknown:?}");
        }
    };
    (@virt91 pass) => { Status::Pass };
    (@virt91 s2) => { Status::Skip };
}

scenarios! {
    pass "exception-vectors" => virt_exception_vectors, virt91_exception_vectors;
    pass "probe" => virt_probe, virt91_probe;
    pass "bypass-dma" => virt_bypass_dma, virt91_bypass_dma;
    pass "abort-dma" => virt_abort_dma, virt91_abort_dma;
    pass "linear-stream-table" => virt_linear_stream_table, virt91_linear_stream_table;
    pass "stage1-dma" => virt_stage1_dma, virt91_stage1_dma;
    s2 "stage2-dma" => virt_stage2_dma, virt91_stage2_dma;
    s2 "nested-dma" => virt_nested_dma, virt91_nested_dma;
    s2 "nested-s2-unmap" => virt_nested_s2_unmap, virt91_nested_s2_unmap;
    pass "two-level-stream-table" => virt_two_level_stream_table, virt91_two_level_stream_table;
    pass "fault-translation" => virt_fault_translation, virt91_fault_translation;
    pass "fault-permission" => virt_fault_permission, virt91_fault_permission;
    pass "stale-tlb-range-tlbi" => virt_stale_tlb_range_tlbi, virt91_stale_tlb_range_tlbi;
    pass "unmap-then-fault" => virt_unmap_then_fault, virt91_unmap_then_fault;
    pass "scatter-gather-blocks" => virt_scatter_gather_blocks, virt91_scatter_gather_blocks;
    pass "granules-dma" => virt_granules_dma, virt91_granules_dma;
    pass "event-overflow" => virt_event_overflow, virt91_event_overflow;
    pass "ste-transitions" => virt_ste_transitions, virt91_ste_transitions;
    pass "ste-switch-under-dma" => virt_ste_switch_under_dma, virt91_ste_switch_under_dma;
    s2 "hyp-shadow" => virt_hyp_shadow, virt91_hyp_shadow;
    s2 "hyp-trap" => virt_hyp_trap, virt91_hyp_trap;
    pass "pci-bridges" => virt_pci_bridges, virt91_pci_bridges;
    pass "virtio-blk-read" => virt_virtio_blk_read, virt91_virtio_blk_read;
    pass "virtio-blk-write" => virt_virtio_blk_write, virt91_virtio_blk_write;
    pass "virtio-blk-unmapped-fault" => virt_virtio_blk_unmapped_fault, virt91_virtio_blk_unmapped_fault;
    pass "virtio-blk-two-domains" => virt_virtio_blk_two_domains, virt91_virtio_blk_two_domains;
    pass "virtio-blk-image" => virt_virtio_blk_image, virt91_virtio_blk_image;
}

/// Returns the detail of a scenario that must have passed.
fn detail(machine: &str, name: &str) -> String {
    match run().check(machine, name, Status::Pass) {
        Ok(v) => v.detail,
        Err(report) => panic!("{report}"),
    }
}

/// The devices sit where scripts/qemu-test.sh puts them: on virt disk A is
/// behind a root port (bus 1), on virt-9.1 the edu of every shared
/// scenario is (bus 1) and disk B behind a second one (bus 2), so those
/// streams carry a non-zero bus number.
#[test]
#[cfg_attr(
    qemu_missing,
    ignore = "SKIPPED: QEMU >= 10 or the aarch64 toolchain is missing (scripts/setup-qemu.sh)"
)]
fn streams_behind_root_ports_have_their_bus_number() {
    let v = detail(VIRT, "pci-bridges");
    assert!(
        v.contains("-> bus 1..1") && v.contains("1af4:1042 sid=0x100"),
        "{v}"
    );
    assert!(detail(VIRT, "virtio-blk-read").contains("sid=0x100:"));
    let v = detail(VIRT_91, "pci-bridges");
    assert!(v.contains("1234:11e8 sid=0x100"), "{v}");
    assert!(
        v.contains("-> bus 2..2") && v.contains("1af4:1042 sid=0x200"),
        "{v}"
    );
    assert!(detail(VIRT_91, "linear-stream-table").contains("stream 0x100"));
    assert!(detail(VIRT_91, "virtio-blk-two-domains").contains("sid=0x200 "));
}

/// The image files, checked here independently of the script: the
/// checksums the kernel printed are those of the original images, and disk
/// A holds the kernel's pattern exactly at sectors 1024..1039.
#[test]
#[cfg_attr(
    qemu_missing,
    ignore = "SKIPPED: QEMU >= 10 or the aarch64 toolchain is missing (scripts/setup-qemu.sh)"
)]
fn disk_images_hold_what_the_kernel_read_and_wrote() {
    for m in [VIRT, VIRT_91] {
        let file = |n: &str| {
            let p = run().out_dir.join(format!("{m}.{n}"));
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let (a, a0, b, b0) = (
            file("disk-a.img"),
            file("disk-a.orig"),
            file("disk-b.img"),
            file("disk-b.orig"),
        );
        let want = |name: &str| {
            let d = detail(m, name);
            let c = d
                .strip_prefix("cksum=")
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("[{m}] {name}: no cksum in {d}"));
            c.parse::<u32>().unwrap()
        };
        assert_eq!(
            qemu_tests::cksum(&a0),
            want("virtio-blk-read"),
            "[{m}] disk A"
        );
        assert_eq!(
            qemu_tests::cksum(&b0),
            want("virtio-blk-two-domains"),
            "[{m}] disk B"
        );
        let (lo, hi) = (1024 * 512, 1040 * 512);
        assert_eq!(a[..lo], a0[..lo], "[{m}] disk A changed before sector 1024");
        assert_eq!(a[hi..], a0[hi..], "[{m}] disk A changed after sector 1039");
        for (i, sector) in a[lo..hi].chunks(512).enumerate() {
            let line = format!("dma-mapping sector {:08} ok.\n", 1024 + i);
            assert_eq!(
                sector,
                line.repeat(16).as_bytes(),
                "[{m}] sector {}",
                1024 + i
            );
        }
        assert_eq!(b, b0, "[{m}] disk B was written");
    }
}
