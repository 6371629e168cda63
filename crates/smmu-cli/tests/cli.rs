//! The `smmu` binary as a user runs it: exit status, standard input,
//! `--json`, short input.

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

/// The record LOG dumps, as raw words.
const EVENT: [&str; 4] = ["0x0000310200000010", "0x000002088000007f", "0", "0"];

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
        &["decode", "event", EVENT[0], EVENT[1], EVENT[2], EVENT[3]],
        None,
    );
    assert_eq!(code, 0);
    assert!(out.contains("F_TRANSLATION"), "{out}");
    // No dump in the text: the bad-input status.
    let (code, _) = smmu(&["decode", "log"], Some("nothing to see\n"));
    assert_eq!(code, 2);
}

#[test]
fn check_exit_status_and_json() {
    let (code, out) = smmu(&["check", "ste", "0x9"], None);
    assert_eq!((code, out.lines().next()), (0, Some("STE: legal")));
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
    assert_eq!(code, 2);
}

/// Runs `args` as given and with `--json`, each with `stdin`.
fn both(args: &[&str], stdin: Option<&str>) -> [common::Run; 2] {
    let mut j = vec!["--json"];
    j.extend(args);
    [common::smmu(args, stdin), common::smmu(&j, stdin)]
}

fn json(r: &common::Run) -> serde_json::Value {
    serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("{e}: {:?}", r.out))
}

/// Asserts that a short structure's text run starts with `first` and then
/// gives exactly `note`, and that its JSON run says `given` words, both
/// runs exiting `code`; returns the JSON.
fn assert_short(
    [text, j]: &[common::Run; 2],
    code: i32,
    first: &str,
    note: &str,
    given: u64,
) -> serde_json::Value {
    assert_eq!(text.code, code, "{} {}", text.out, text.err);
    let lines: Vec<&str> = text.out.lines().collect();
    assert!(lines[0].starts_with(first), "{}", text.out);
    assert_eq!(lines[1..], [note], "{}", text.out);
    let v = json(j);
    assert_eq!((j.code, &v["words_given"]), (code, &given.into()));
    v
}

/// The dump LOG holds, cut after its second record word.
fn cut_dump() -> String {
    LOG.lines().take(3).map(|l| format!("{l}\n")).collect()
}

#[test]
fn bad_input_exits_2_with_the_error_on_stderr_and_nothing_on_stdout() {
    // Exit status 1 is `check`'s ILLEGAL verdict; a script must not take
    // a typing mistake for one.
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-file.log");
    let missing = missing.to_str().unwrap();
    let cut = cut_dump();
    let cases: [(&[&str], Option<&str>, &str); 9] = [
        (
            &["check", "ste", "0x9", "0xzz"],
            None,
            "`0xzz` is not a hexadecimal",
        ),
        (
            &["decode", "event", "1", "2", "3", "4", "5"],
            None,
            "4 64-bit words, 5 given",
        ),
        (
            &["check", "cmd", "1", "2", "3"],
            None,
            "2 64-bit words, 3 given",
        ),
        (&["check", "ste", ""], None, "no word given"),
        (&["decode", "cd", ""], None, "no word given"),
        (
            &["decode", "log"],
            Some("[ 1.0] usb 1-1: new device\n"),
            "no arm-smmu-v3 event dump",
        ),
        (
            &["decode", "event"],
            Some(&cut),
            "event dump has 2 of 4 words",
        ),
        (&["decode", "log", missing], None, "no-such-file.log"),
        (
            &["check", "cd", "0x1", "--ste", "0xq"],
            None,
            "`0xq` is not",
        ),
    ];
    for (args, stdin, msg) in cases {
        for r in both(args, stdin) {
            assert_eq!(r.code, 2, "{args:?}: {}", r.err);
            assert_eq!(r.out, "", "{args:?}");
            assert!(r.err.starts_with("error: "), "{args:?}: {}", r.err);
            assert!(r.err.contains(msg), "{args:?}: {}", r.err);
        }
    }
}

#[test]
fn check_tells_an_illegal_ste_from_a_mistyped_one() {
    let legal = ["check", "ste", "0x9", "0", "0", "0", "0", "0", "0", "0"];
    let [text, j] = both(&legal, None);
    assert_eq!((text.code, text.out.as_str()), (0, "STE: legal\n"));
    assert_eq!((j.code, &json(&j)["legal"]), (0, &true.into()));
    // Stage 2 on a stage-1-only SMMU: a verdict, on standard output.
    let illegal = ["check", "ste", "0xd", "0", "0", "0", "0", "0", "0", "0"];
    let mut args = illegal.to_vec();
    args.extend(["--preset", "stage1"]);
    let [text, j] = both(&args, None);
    assert_eq!(text.code, 1, "{}", text.err);
    assert!(text.out.starts_with("STE: ILLEGAL: "), "{}", text.out);
    assert!(text.out.contains("IDR0.S2P"), "{}", text.out);
    assert_eq!(j.code, 1, "{}", j.err);
    let v = json(&j);
    assert_eq!((&v["legal"], &v["words_given"]), (&false.into(), &8.into()));
    // The same STE with a typing mistake in a word: not a verdict.
    let mut typo = args.clone();
    typo[3] = "0xd0g";
    for r in both(&typo, None) {
        assert_eq!((r.code, r.out.as_str()), (2, ""), "{}", r.err);
    }
    // A usage error (clap's own) exits 2 too.
    let r = common::smmu(&["check", "ste", "0x9", "--preset", "nope"], None);
    assert_eq!((r.code, r.out.as_str()), (2, ""));
}

#[test]
fn help_tells_the_exit_statuses() {
    let r = common::smmu(&["--help"], None);
    assert_eq!(r.code, 0);
    assert!(r.out.contains("Exit status:"), "{}", r.out);
    assert!(
        r.out.contains("1  `check`: the structure is ILLEGAL"),
        "{}",
        r.out
    );
    assert!(r.out.contains("2  bad input or usage"), "{}", r.out);
}

#[test]
fn a_short_event_says_how_many_words_were_given() {
    // A paste cut after two words decoded as if words 2 and 3 were zero,
    // with no sign of it.
    let runs = both(
        &[
            "decode",
            "event",
            "0x0000310200000010",
            "0x000002088000007f",
        ],
        None,
    );
    let v = assert_short(
        &runs,
        0,
        "event: F_TRANSLATION",
        "  note: 2 of 4 words given; words 2-3 read as 0",
        2,
    );
    assert_eq!(v["words"][3], "0x0");
    let r = common::smmu(&["decode", "event", "0x10", "0", "0x1000"], None);
    assert!(
        r.out
            .ends_with("\n  note: 3 of 4 words given; word 3 read as 0\n"),
        "{}",
        r.out
    );
}

#[test]
fn a_short_ste_says_how_many_words_were_given() {
    let ste = ["0xd", "0", "0x8000000000005"];
    let mut args = vec!["decode", "ste"];
    args.extend(ste);
    let [text, j] = both(&args, None);
    assert_eq!(text.code, 0, "{}", text.err);
    let lines: Vec<&str> = text.out.lines().collect();
    assert!(lines[0].starts_with("STE: valid"), "{}", text.out);
    assert_eq!(lines[1], "  note: 3 of 8 words given; words 3-7 read as 0");
    assert_eq!(text.out.matches("note:").count(), 1, "{}", text.out);
    assert_eq!(json(&j)["words_given"], 3);
    // The checker says it too, after its verdict; the STE's S2TTB (word 3)
    // was not given, so it is illegal as read.
    args[0] = "check";
    assert_short(
        &both(&args, None),
        1,
        "STE: ILLEGAL: ",
        "  note: 3 of 8 words given; words 3-7 read as 0",
        3,
    );
    // A CD under a short --ste: the note names which one was short.
    let w0 = format!(
        "{:#x}",
        16u64 | 1 << 30 | 1 << 31 | 5 << 32 | 1 << 41 | 1 << 45 | 1 << 46 | 1 << 48
    );
    let cd = [
        "check",
        "cd",
        &w0,
        "0x80001000",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "--ste",
        "0x8000000b",
    ];
    let [text, j] = both(&cd, None);
    assert_eq!((text.code, text.out.lines().next()), (0, Some("CD: legal")));
    assert_eq!(
        text.out.lines().skip(1).collect::<Vec<_>>(),
        ["  note: --ste: 1 of 8 words given; words 1-7 read as 0"],
        "{}",
        text.out
    );
    let v = json(&j);
    assert_eq!(
        (&v["words_given"], &v["ste_words_given"]),
        (&8.into(), &1.into())
    );
    assert_eq!(text.code, j.code);
}

#[test]
fn whole_structures_have_no_note_and_words_given_n() {
    for (args, n) in [
        (
            &["decode", "event", EVENT[0], EVENT[1], EVENT[2], EVENT[3]][..],
            4,
        ),
        (
            &["decode", "ste", "0x9", "0", "0", "0", "0", "0", "0", "0"][..],
            8,
        ),
        (&["decode", "cd", "1,2,3,4,5,6,7,8"][..], 8),
        (&["decode", "cmd", "0x46", "0"][..], 2),
        (&["check", "cmd", "0x46", "0"][..], 2),
        (&["check", "ste", "0x9 0 0 0 0 0 0 0"][..], 8),
    ] {
        let [text, j] = both(args, None);
        assert_eq!(text.code, 0, "{args:?}: {}", text.err);
        assert!(!text.out.contains("note"), "{args:?}: {}", text.out);
        assert_eq!(json(&j)["words_given"], n, "{args:?}");
    }
    // A CD checked under the default STE: no --ste, so none given.
    let r = common::smmu(&["--json", "check", "cd", "0x1"], None);
    assert_eq!(json(&r)["ste_words_given"], serde_json::Value::Null);
    // A log's dumps are four words or an error: each decoded event says 4.
    let [text, j] = both(&["decode", "log"], Some(LOG));
    assert!(!text.out.contains("note"), "{}", text.out);
    assert_eq!(json(&j)["events"][0]["words_given"], 4);
}

#[test]
fn a_dump_cut_short_in_a_log_is_an_error_not_zero_filled() {
    // The kernel prints all four words of a record: fewer is a log that
    // lost lines, not a record to read as zero.
    let cut = cut_dump();
    for args in [&["decode", "event"][..], &["decode", "log", "-"][..]] {
        for r in both(args, Some(&cut)) {
            assert_eq!((r.code, r.out.as_str()), (2, ""), "{args:?}");
            assert!(
                r.err.contains("line 1: event dump has 2 of 4 words"),
                "{}",
                r.err
            );
        }
    }
    // Pasted as arguments rather than piped: the same.
    let lines: Vec<&str> = cut.lines().collect();
    let mut args = vec!["decode", "event"];
    args.extend(&lines);
    let r = common::smmu(&args, None);
    assert_eq!((r.code, r.out.as_str()), (2, ""), "{}", r.err);
}

#[test]
fn a_reader_that_goes_away_ends_the_output_not_the_run() {
    // `smmu ... | head`: the reader is gone before the tool writes (it
    // first reads the whole log from standard input), so every write
    // fails with a broken pipe. `println!` panicked on it (exit 101).
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut c = Command::new(env!("CARGO_BIN_EXE_smmu"))
        .args(["decode", "event"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    let mut input = c.stdin.take().unwrap();
    input.write_all(LOG.repeat(200).as_bytes()).unwrap();
    drop(input);
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn ste_takes_one_value_wherever_it_stands() {
    // `--ste` took every word after it, so `check cd --ste STE CD...` lost
    // the CD's words to the STE (a usage error, or worse a CD checked
    // short). One value, words separated by commas, in any place.
    let w0 = format!(
        "{:#x}",
        16u64 | 1 << 30 | 1 << 31 | 5 << 32 | 1 << 41 | 1 << 45 | 1 << 46 | 1 << 48
    );
    let cd = [w0.as_str(), "0x80001000", "0", "0", "0", "0", "0", "0"];
    let before: Vec<&str> = ["--json", "check", "cd", "--ste", "0x8000000b,0"]
        .into_iter()
        .chain(cd)
        .collect();
    let after: Vec<&str> = ["--json", "check", "cd"]
        .into_iter()
        .chain(cd)
        .chain(["--ste", "0x8000000b,0"])
        .collect();
    for args in [before, after] {
        let r = common::smmu(&args, None);
        assert_eq!(r.code, 0, "{args:?}: {} {}", r.out, r.err);
        let v: serde_json::Value = serde_json::from_str(&r.out).unwrap();
        assert_eq!(
            (&v["words_given"], &v["ste_words_given"]),
            (&8.into(), &2.into()),
            "{args:?}"
        );
    }
    // A bypass STE given first still applies to the CD after it.
    let r = common::smmu(&["check", "cd", "--ste", "0x9", &w0, "0x80001000"], None);
    assert_eq!(r.code, 1, "{} {}", r.out, r.err);
    assert!(r.out.contains("does not enable stage 1"), "{}", r.out);
}
