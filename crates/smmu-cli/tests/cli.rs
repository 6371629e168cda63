//! The `smmu` binary as a user runs it: exit status, standard input,
//! `--json`.

mod common;

/// Returns the exit status and standard output of one run.
fn smmu(args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let r = common::smmu(args, stdin);
    (r.code, r.out)
}

const LOG: &str = "\
[  478.907684] arm-smmu-v3 arm-smmu-v3.2.auto: event 0x10 received:
[  478.913691] arm-smmu-v3 arm-smmu-v3.2.auto:  0x0000310200000010
[  478.919603] arm-smmu-v3 arm-smmu-v3.2.auto:  0x000002088000007f
[  478.925515] arm-smmu-v3 arm-smmu-v3.2.auto:  0x0000000000000000
[  478.931425] arm-smmu-v3 arm-smmu-v3.2.auto:  0x0000000000000000
[  478.947552] hisi_zip 0000:31:00.0: qm_axi_rresp [error status=0x1] found
";

#[test]
fn pasted_kernel_log_decodes_from_stdin() {
    let (code, out) = smmu(&["decode", "event"], Some(LOG));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("line 1: F_TRANSLATION"), "{out}");
    assert!(out.contains("0x3102"), "{out}");
    let (code, out) = smmu(&["--json", "decode", "log", "-"], Some(LOG));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["events"][0]["sid"], "0x3102");
    assert_eq!(v["events"][0]["type"], "F_TRANSLATION");
    // Raw words still work.
    let (code, out) = smmu(
        &[
            "decode",
            "event",
            "0x0000310200000010",
            "0x000002088000007f",
            "0",
            "0",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert!(out.contains("F_TRANSLATION"), "{out}");
    // No dump in the text: an error status.
    let (code, _) = smmu(&["decode", "log"], Some("nothing to see\n"));
    assert_ne!(code, 0);
}

#[test]
fn check_exit_status_and_json() {
    let (code, out) = smmu(&["check", "ste", "0x9"], None);
    assert_eq!((code, out.trim()), (0, "STE: legal"));
    let (code, out) = smmu(&["check", "ste", "0xd", "--preset", "stage1"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("IDR0.S2P"), "{out}");
    let (code, out) = smmu(&["--json", "check", "cmd", "0x7f", "0"], None);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["legal"], false);
    assert_eq!(v["rule"], "unknown or reserved opcode");
    let (code, out) = smmu(&["--json", "decode", "cmd", "0x46", "0"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "SYNC");
    // Bad input is an error, not a verdict.
    let (code, _) = smmu(&["check", "cd", "zz"], None);
    assert_eq!(code, 1);
}
