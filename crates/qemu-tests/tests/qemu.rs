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
}
