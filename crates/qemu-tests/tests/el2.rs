//! The EL2 hypervisor booting Debian's stock arm64 Linux as its host under
//! QEMU (issue 13): one test per check of `scripts/el2-test.sh`.
//!
//! The first test to run boots QEMU four times (the disk run, the
//! `iommu.passthrough=1` run, the donation run and the isolation run); the
//! others read the same result. Without QEMU 10, the aarch64
//! toolchain, or the Linux images of `scripts/setup-linux.sh`, every test is
//! compiled as `#[ignore]` with a SKIPPED reason (see build.rs), so a skip is
//! listed as `ignored`, never as `ok`.

use std::path::PathBuf;

use qemu_tests::{Run, Status, run_el2_once};

fn run() -> &'static Run {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("el2-results");
    let run = run_el2_once(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        run.exit_code,
        Some(qemu_tests::EXIT_SKIPPED),
        "el2-test.sh SKIPPED at run time although the build found QEMU and the Linux images:\n{}",
        run.output
    );
    run
}

fn expect_pass(name: &str) -> String {
    match run().check("el2", name, Status::Pass) {
        Ok(v) => {
            println!("[el2] {name}: {}", v.detail);
            v.detail
        }
        Err(report) => panic!("{report}"),
    }
}

/// Returns the number after `key=` in `detail`.
fn counter(detail: &str, key: &str) -> u64 {
    let at = detail
        .find(&format!(" {key}="))
        .map(|i| i + key.len() + 2)
        .or_else(|| {
            detail
                .starts_with(&format!("{key}="))
                .then_some(key.len() + 1)
        })
        .unwrap_or_else(|| panic!("no {key}= in {detail}"));
    detail[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key}= is not a number in {detail}"))
}

macro_rules! el2_tests {
    ($( $test:ident => $name:literal, |$detail:ident| $check:block )*) => {
        $(
            #[test]
            #[cfg_attr(linux_missing, ignore = "SKIPPED: QEMU >= 10, the aarch64 toolchain or the Linux images are missing (scripts/setup-qemu.sh, scripts/setup-linux.sh)")]
            fn $test() {
                let $detail = expect_pass($name);
                $check
            }
        )*

        /// Every check the script reports has a test here.
        #[test]
        #[cfg_attr(linux_missing, ignore = "SKIPPED: QEMU >= 10, the aarch64 toolchain or the Linux images are missing (scripts/setup-qemu.sh, scripts/setup-linux.sh)")]
        fn every_reported_el2_check_has_a_test() {
            let known = [$($name),*];
            let unknown: Vec<_> = run()
                .verdicts
                .keys()
                .filter(|(_, name)| !known.contains(&name.as_str()))
                .collect();
            assert!(unknown.is_empty(), "checks without a test: {unknown:?}");
            assert_eq!(run().exit_code, Some(0), "{}", run().output);
        }
    };
}

el2_tests! {
    el2_host_boots_at_el1 => "host-boot", |d| {
        assert!(d.contains("at EL1 under the hypervisor"), "{d}");
        assert!(d.contains("Linux: CPU: All CPU(s) started at EL1"), "{d}");
    }
    el2_linux_probes_the_trapped_smmu => "smmu-probe", |d| {
        assert!(d.contains("arm-smmu-v3 9050000.smmuv3: ias 44-bit, oas 44-bit"), "{d}");
        assert!(d.contains("iommu-group 0/devices/0000:00:"), "{d}");
    }
    el2_virtio_blk_read_matches_the_file => "virtio-blk-read", |d| {
        // The script compared them; the test checks it compared real hashes.
        let hashes: Vec<&str> = d.split([' ', ',', ':']).filter(|w| w.len() == 64).collect();
        assert_eq!(hashes.len(), 2, "{d}");
        assert_eq!(hashes[0], hashes[1]);
    }
    el2_virtio_blk_write_lands_in_the_file => "virtio-blk-write", |d| {
        let hashes: Vec<&str> = d.split([' ', ',', ':']).filter(|w| w.len() == 64).collect();
        assert_eq!(hashes.len(), 3, "{d}");
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{d}");
    }
    el2_smmu_accesses_trapped_none_refused => "trap-counters", |d| {
        assert!(counter(&d, "trapped") > 0, "{d}");
        assert!(counter(&d, "writes") > 0, "{d}");
        assert_eq!(counter(&d, "refused"), 0, "{d}");
        // Linux's driver polls CMDQ_CONS (0x9c) after writing CMDQ_PROD (0x98).
        assert!(d.contains(",0x98:w"), "{d}");
        assert!(counter(&d, "smc") > 0, "{d}");
    }
    el2_virtual_smmu_shadows_linux_without_refusals => "vsmmu-counters", |d| {
        // Linux's STE for the disk was shadowed (nested on the shadow),
        // its commands forwarded, nothing of it refused, and no device
        // access faulted at stage 2.
        assert!(counter(&d, "ste_updates") > 0, "{d}");
        assert!(counter(&d, "forwarded") > 0, "{d}");
        assert!(counter(&d, "host_syncs") > 0, "{d}");
        for zero in ["refused_commands", "refused_accesses", "refused_pointers", "bad_stes", "real_failures", "hyp_events"] {
            assert_eq!(counter(&d, zero), 0, "{zero}: {d}");
        }
        assert!(d.contains("streams-seen 0x8=Nested"), "{d}");
        // Linux's strict-mode unmaps: TLBI_NH_VA (0x12) and CMD_SYNC (0x46).
        assert!(d.contains(" 0x12:") && d.contains(" 0x46:"), "{d}");
    }
    el2_shadow_never_maps_hypervisor_memory => "shadow-excludes-hypervisor", |d| {
        // Every page of the hypervisor's 16 MiB is unmapped in the shadow
        // (what a host device can reach, bypass or nested), and sampled
        // host RAM is mapped to itself.
        assert_eq!(counter(&d, "hyp-pages-mapped"), 0, "{d}");
        assert!(d.contains("of 4096 "), "{d}");
        let sampled = counter(&d, "host-ram-sampled");
        assert!(sampled > 1000, "{d}");
        assert_eq!(counter(&d, "identity"), sampled, "{d}");
    }
    el2_host_bypass_becomes_stage2_on_the_shadow => "bypass-is-stage2", |d| {
        assert!(d.starts_with("exit status 0;"), "{d}");
        assert!(d.contains("Default domain type: Passthrough"), "{d}");
        assert!(d.contains("streams-seen 0x8=Stage2"), "{d}");
        assert!(!d.contains("=Nested"), "{d}");
        assert_eq!(counter(&d, "hyp_events"), 0, "{d}");
        assert_eq!(counter(&d, "refused_commands"), 0, "{d}");
        let hashes: Vec<&str> = d.split([' ', ',', ':', '(', ')', ';']).filter(|w| w.len() == 64).collect();
        assert_eq!(hashes.len(), 3, "{d}");
        assert_eq!(hashes[0], hashes[1], "{d}");
    }
    el2_donated_page_faults_at_stage2 => "donated-page-faults", |d| {
        assert!(d.starts_with("exit status 0;"), "{d}");
        let faults = counter(&d, "stage2-faults-in-page");
        assert!(faults > 0, "{d}");
        // Every event the hypervisor kept is a stage-2 fault in that page.
        assert_eq!(faults, counter(&d, "kept-hyp-events"), "{d}");
        assert!(counter(&d, "hyp_events") >= faults, "{d}");
        // The host is told nothing of the hypervisor's faults.
        assert_eq!(counter(&d, "host_events"), 0, "{d}");
    }
    el2_host_cannot_read_hypervisor_memory => "hyp-memory-unreachable", |d| {
        assert!(d.starts_with("exit status 5 "), "{d}");
        assert!(d.contains("IPA 0x7f000000 is outside the trapped frame"), "{d}");
    }
}
