//! An independent audit of the `smmu` binary against what it claims: the
//! kernel-log formats Linux's arm-smmu-v3 driver really prints, the
//! checker's verdicts against the SMMUv3 rules, and `--json`.

mod common;

use common::{Run, smmu, smmu_bytes};

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("{e}: {:?}", r.out))
}

/// One dump as the driver prints it: a header and four `\t0x%016llx`
/// lines, each behind `prefix`.
fn dump(prefix: &str, words: [u64; 4]) -> String {
    let mut s = format!("{prefix}event {:#04x} received:\n", words[0] & 0xff);
    for w in words {
        s.push_str(&format!("{prefix}\t0x{w:016x}\n"));
    }
    s
}

// F_TRANSLATION, SID 8, write at 0x1000; and SID 9 at 0x2000.
const A: [u64; 4] = [0x0000_0008_0000_0010, 0, 0x1000, 0];
const B: [u64; 4] = [0x0000_0009_0000_0010, 0, 0x2000, 0];

#[test]
fn dumps_of_two_smmus_interleaved_line_by_line_decode_each() {
    // Two SMMUs' event threads print at the same time: their lines mix.
    let a = dump("[  1.000001] arm-smmu-v3 9050000.smmuv3: ", A);
    let b = dump("[  1.000002] arm-smmu-v3 9060000.smmuv3: ", B);
    let mut log = String::new();
    for (la, lb) in a.lines().zip(b.lines()) {
        log.push_str(la);
        log.push('\n');
        log.push_str(lb);
        log.push('\n');
    }
    let r = smmu(&["--json", "decode", "log"], Some(&log));
    assert_eq!(r.code, 0, "{}", r.err);
    let v = json(&r);
    let ev = v["events"].as_array().unwrap();
    assert_eq!(ev.len(), 2, "{v}");
    assert_eq!((&ev[0]["sid"], &ev[0]["line"]), (&"0x8".into(), &1.into()));
    assert_eq!(ev[0]["fault"]["addr"], "0x1000");
    assert_eq!((&ev[1]["sid"], &ev[1]["line"]), (&"0x9".into(), &2.into()));
    assert_eq!(ev[1]["fault"]["addr"], "0x2000");
}

#[test]
fn a_hex_word_another_device_prints_mid_dump_is_not_taken_as_a_record_word() {
    // Another driver's line ending in a 64-bit hex value lands between the
    // dump's first and second words: it is not word 1 of the record.
    let d = dump("arm-smmu-v3 9050000.smmuv3: ", A);
    let mut lines: Vec<&str> = d.lines().collect();
    lines.insert(2, "nvme 0000:01:00.0: cqe 0x00000000deadbeef");
    let log = lines.join("\n");
    let r = smmu(&["--json", "decode", "log"], Some(&log));
    assert_eq!(r.code, 0, "{}", r.err);
    let v = json(&r);
    assert_eq!(v["events"][0]["words"][1], "0x0", "{v}");
    assert_eq!(v["events"][0]["fault"]["addr"], "0x1000", "{v}");
    assert_eq!(
        v["events"][0]["fault"]["stall_tag"],
        serde_json::Value::Null
    );
}

#[test]
fn unrelated_lines_between_a_dumps_words_are_skipped() {
    let d = dump("[ 5.5] arm-smmu-v3 arm-smmu-v3.0.auto: ", A);
    let mut lines: Vec<&str> = d.lines().collect();
    lines.insert(3, "[ 5.5] usb 1-1: new high-speed USB device number 2");
    lines.insert(4, "[ 5.5] arm_smmu_evtq_thread: 3 callbacks suppressed");
    let r = smmu(&["decode", "event"], Some(&lines.join("\n")));
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.starts_with("line 1: F_TRANSLATION sid=0x8"),
        "{}",
        r.out
    );
    assert!(r.out.contains("at 0x1000"), "{}", r.out);
}

#[test]
fn a_log_without_a_dump_is_reported_as_such() {
    // Was "no word given", which names the wrong problem.
    for args in [&["decode", "log"][..], &["decode", "event"][..]] {
        let r = smmu(args, Some("[ 1.0] usb 1-1: new device\n"));
        assert_eq!(r.code, 2);
        assert!(r.out.is_empty(), "{}", r.out);
        assert!(r.err.contains("no arm-smmu-v3 event dump"), "{}", r.err);
    }
}

#[test]
fn crlf_journalctl_prefixes_and_upper_case_digits_decode() {
    // Covers journalctl prefixes, CRLF line ends, upper-case hex digits,
    // spaces instead of the tab, and the overflow line in one paste.
    let log = "Dec 01 12:00:00 host kernel: arm-smmu-v3 9050000.smmuv3: event 0x10 received:\r\n\
        Dec 01 12:00:00 host kernel: arm-smmu-v3 9050000.smmuv3:         0x0000000800000010\r\n\
        Dec 01 12:00:00 host kernel: arm-smmu-v3 9050000.smmuv3:         0x0000020000000000\r\n\
        Dec 01 12:00:00 host kernel: arm-smmu-v3 9050000.smmuv3:         0x00000000FFFFF000\r\n\
        Dec 01 12:00:00 host kernel: arm-smmu-v3 9050000.smmuv3:         0x0000000000000000\r\n\
        Dec 01 12:00:00 host kernel: arm-smmu-v3 9050000.smmuv3: EVTQ overflow detected -- events lost\r\n";
    let r = smmu(&["--json", "decode", "log"], Some(log));
    assert_eq!(r.code, 0, "{}", r.err);
    let v = json(&r);
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    let e = &v["events"][0];
    assert_eq!(e["sid"], "0x8");
    assert_eq!(e["fault"]["addr"], "0xfffff000");
    assert_eq!(e["fault"]["read"], false);
    assert_eq!(e["header_matches"], true);
}

#[test]
fn a_truncated_dump_is_an_error_in_text_and_json() {
    let d = dump("[ 1.0] arm-smmu-v3 9050000.smmuv3: ", A);
    let cut: String = d.lines().take(3).map(|l| format!("{l}\n")).collect();
    for args in [&["decode", "log"][..], &["--json", "decode", "log"][..]] {
        let r = smmu(args, Some(&cut));
        assert_eq!(r.code, 2, "{}", r.out);
        assert!(r.out.is_empty(), "{}", r.out);
        assert!(r.err.contains("2 of 4 words"), "{}", r.err);
    }
}

#[test]
fn the_newer_kernels_summary_with_c_style_zero_is_cross_checked() {
    // %#x prints 0 as "0", and an unknown StreamID as "(unassigned sid)".
    let mut log = dump("arm-smmu-v3 9050000.smmuv3: ", [0x10, 0, 0x1000, 0]);
    log.push_str(
        "arm-smmu-v3 9050000.smmuv3: event: F_TRANSLATION client: (unassigned sid) sid: 0 ssid: 0 iova: 0x1000 ipa: 0\n\
         arm-smmu-v3 9050000.smmuv3: unpriv data write s1 \"Input address caused fault\" stag: 0\n",
    );
    let r = smmu(&["--json", "decode", "log"], Some(&log));
    assert_eq!(r.code, 0, "{}", r.err);
    let e = &json(&r)["events"][0];
    assert_eq!(e["summary_sid_matches"], true, "{e}");
    assert!(
        e["kernel_summary"]
            .as_str()
            .unwrap()
            .contains("(unassigned sid)")
    );
}

#[test]
fn an_empty_word_argument_is_an_error_not_a_verdict_on_zeros() {
    // `smmu check ste "$W"` with W unset checked an all-zero STE.
    for args in [
        &["check", "ste", ""][..],
        &["check", "cmd", " , "][..],
        &["decode", "cd", ""][..],
    ] {
        let r = smmu(args, None);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.out.is_empty(), "{args:?}: {}", r.out);
        assert!(r.err.contains("no word given"), "{args:?}: {}", r.err);
    }
}

#[test]
fn words_are_hex_digits_after_one_0x_prefix() {
    // from_str_radix takes a sign, and trimming every "0x" took "0x0x9".
    for w in ["+9", "0x+9", "0x0x9", "0x-1", "0x", "9g"] {
        let r = smmu(&["check", "ste", w], None);
        assert_eq!(r.code, 2, "{w}: {}", r.out);
        assert!(r.out.is_empty(), "{w}: {}", r.out);
        assert!(
            r.err.contains("is not a hexadecimal 64-bit word"),
            "{w}: {}",
            r.err
        );
    }
    // Upper-case prefix and digits, underscores and a tab between words.
    let r = smmu(&["--json", "check", "ste", "0X9\t0x0_0", "0xA_B"], None);
    assert_eq!(r.code, 0, "{}", r.err);
    let v = json(&r);
    assert_eq!(
        (&v["words"][0], &v["words"][1]),
        (&"0x9".into(), &"0x0".into())
    );
    assert_eq!(v["words"][2], "0xab");
    // 17 digits are too many unless the extra ones are leading zeros.
    let r = smmu(&["check", "cmd", "0x10000000000000046", "0"], None);
    assert_eq!(r.code, 2);
    assert!(r.err.contains("is not a hexadecimal"), "{}", r.err);
    let r = smmu(&["check", "cmd", "0x00000000000000046", "0"], None);
    assert_eq!((r.code, r.out.trim()), (0, "CMD: legal"));
}

#[test]
fn word_count_errors_name_the_structure_and_its_size() {
    for (args, msg) in [
        (
            &["check", "ste", "1", "2", "3", "4", "5", "6", "7", "8", "9"][..],
            "an STE has 8 64-bit words, 9 given",
        ),
        (
            &["check", "cd", "1,2,3,4,5,6,7,8,9"][..],
            "a CD has 8 64-bit words, 9 given",
        ),
        (
            &["check", "cmd", "0x46 0 0"][..],
            "a command has 2 64-bit words, 3 given",
        ),
        (
            &["decode", "event", "1", "2", "3", "4", "5"][..],
            "an event record has 4 64-bit words, 5 given",
        ),
    ] {
        let r = smmu(args, None);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.out.is_empty(), "{args:?}");
        assert!(r.err.contains(msg), "{args:?}: {}", r.err);
    }
}

/// A legal stage-2-only STE (4K granule, 39-bit IPA from level 1, table
/// at 0x8000_0000) with `S2PS = ps`.
fn s2_ste(ps: u64) -> Vec<String> {
    let w2: u64 = 1 << 51 | 25 << 32 | 1 << 38 | ps << 48;
    [
        "0xd".into(),
        "0".into(),
        format!("{w2:#x}"),
        "0x80000000".into(),
    ]
    .to_vec()
}

fn check(args: &[String]) -> Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    smmu(&a, None)
}

#[test]
fn a_reserved_s2ps_is_capped_not_illegal() {
    // SMMUv3 STE.S2PS: 0b111 is reserved and behaves as 0b110 (v3.1-v3.3);
    // any value above the OAS behaves as the OAS. It was called ILLEGAL.
    for ps in [5, 6, 7] {
        let mut a = vec!["check".to_string(), "ste".into()];
        a.extend(s2_ste(ps));
        let r = check(&a);
        assert_eq!(
            (r.code, r.out.lines().next()),
            (0, Some("STE: legal")),
            "S2PS {ps}: {}",
            r.err
        );
    }
}

#[test]
fn s1stalld_is_illegal_where_stalls_are_not_configurable() {
    // STE.S1STALLD = 1 is ILLEGAL unless IDR0.STALL_MODEL == 0b00; QEMU
    // (STALL_MODEL = 0b01) rejects it too. It was called legal.
    let (w0, w1) = ("0x8000000b", format!("{:#x}", 1u64 << 27));
    let r = smmu(&["check", "ste", w0, &w1, "--preset", "qemu"], None);
    assert_eq!(r.code, 1, "{}", r.out);
    assert!(r.out.contains("STE.S1STALLD"), "{}", r.out);
    // Where the stall model is configurable it is how the STE forbids
    // stalls, and legal; without it the QEMU STE is legal too.
    let r = smmu(&["check", "ste", w0, &w1], None);
    assert_eq!((r.code, r.out.lines().next()), (0, Some("STE: legal")));
    let r = smmu(&["check", "ste", w0, "0", "--preset", "qemu"], None);
    assert_eq!((r.code, r.out.lines().next()), (0, Some("STE: legal")));
}

#[test]
fn pte_json_carries_every_fact_of_the_text_including_invalid() {
    // `--json decode pte 0` gave empty fields: the text's "invalid" line
    // was not a "name = value" line and was lost.
    let r = smmu(&["--json", "decode", "pte", "0x0"], None);
    assert_eq!(r.code, 0);
    assert_eq!(json(&r)["fields"]["type"], "invalid (bit 0 clear)");
    for (d, level) in [
        ("0x0", "3"),
        ("0x40000000000fc7", "3"),
        ("0x80000000000003", "1"),
        ("0x780000080000701", "2"),
    ] {
        let text = smmu(&["decode", "pte", "--level", level, d], None);
        let v = json(&smmu(
            &["--json", "decode", "pte", "--level", level, d],
            None,
        ));
        assert_eq!(text.out.lines().next(), v["summary"].as_str(), "{d}");
        let body: Vec<&str> = text.out.lines().skip(1).collect();
        assert!(!body.is_empty());
        for l in body {
            let (k, val) = l.split_once(" = ").unwrap_or_else(|| panic!("{d}: {l:?}"));
            assert_eq!(v["fields"][k.trim()], val.trim(), "{d}: {l}");
        }
    }
}

/// The words of an STE, a CD or a command, as `smmu check` takes them.
fn hexes(words: &[u64]) -> Vec<String> {
    words.iter().map(|w| format!("{w:#x}")).collect()
}

/// Runs `smmu check` in text and JSON mode and returns the broken rule
/// (`None` when legal), after checking both modes and the exit status
/// agree, and that both say how many words were given.
fn verdict(kind: &str, words: &[u64], extra: &[&str]) -> Option<String> {
    let mut args = vec!["check".to_string(), kind.to_string()];
    args.extend(hexes(words));
    args.extend(extra.iter().map(|s| s.to_string()));
    let text = check(&args);
    args.insert(0, "--json".into());
    let j = check(&args);
    let v = json(&j);
    assert_eq!(text.code, j.code, "{args:?}");
    let up = kind.to_uppercase();
    let mut lines = text.out.lines();
    let first = lines.next().unwrap_or_default();
    let n = if kind == "cmd" { 2 } else { 8 };
    let note = (words.len() < n).then(|| format!("  note: {} of {n} words given;", words.len()));
    assert_eq!(
        lines.next().map(|l| l.split_inclusive(';').next().unwrap()),
        note.as_deref(),
        "{args:?}"
    );
    assert_eq!(v["words_given"], words.len(), "{args:?}");
    let rule = match first.strip_prefix(&format!("{up}: ")) {
        Some("legal") => None,
        Some(r) => Some(r.strip_prefix("ILLEGAL: ").expect("verdict").to_string()),
        None => panic!("{args:?}: {:?} {:?}", text.out, text.err),
    };
    assert_eq!(text.code, if rule.is_some() { 1 } else { 0 }, "{args:?}");
    assert_eq!(v["legal"], rule.is_none(), "{args:?}");
    assert_eq!(v["rule"].as_str(), rule.as_deref(), "{args:?}");
    assert_eq!(v["kind"], kind);
    for (i, w) in words.iter().enumerate() {
        assert_eq!(v["words"][i], format!("{w:#x}"), "{args:?}");
    }
    rule
}

/// One verdict to check: why, the words, extra arguments (a preset), and
/// a substring of the expected rule (`None` when legal).
type Case<'a> = (&'a str, Vec<u64>, &'a [&'a str], Option<&'a str>);

fn assert_verdicts(kind: &str, cases: &[Case<'_>]) {
    for (why, words, extra, want) in cases {
        let got = verdict(kind, words, extra);
        match (want, &got) {
            (None, None) => {}
            (Some(w), Some(g)) if g.contains(w) => {}
            _ => panic!("{kind} {why}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn ste_verdicts_follow_the_architecture() {
    // Covers Config encodings, S1CDMax/S1Fmt, S1ContextPtr range, the
    // S2T0SZ/S2SL0/S2TG combinations, S2TTB range and alignment, EATS and
    // S2VMID, in text and JSON (before: bypass, S2TG, S2P and V only).
    let s2 = |t0sz: u64, sl0: u64, tg: u64| 1 << 51 | t0sz << 32 | sl0 << 38 | tg << 46 | 5 << 48;
    let s1 = 0xb | 0x8000_0000;
    let none: &[&str] = &[];
    let qemu: &[&str] = &["--preset", "qemu"];
    assert_verdicts(
        "ste",
        &[
            ("Config 0b001 behaves as abort", vec![0x3], none, None),
            ("Config 0b000 abort", vec![0x1], none, None),
            (
                "S1CDMax 8 = SSIDSIZE, 2-level",
                vec![s1 | 8 << 59 | 1 << 4],
                none,
                None,
            ),
            (
                "S1CDMax 9 > SSIDSIZE 8",
                vec![s1 | 9 << 59],
                none,
                Some("S1CDMax"),
            ),
            (
                "S1Fmt 0b11 behaves as linear",
                vec![s1 | 1 << 59 | 3 << 4],
                none,
                None,
            ),
            (
                "S1Fmt ignored with S1CDMax 0",
                vec![s1 | 1 << 4],
                qemu,
                None,
            ),
            (
                "S1CDMax ignored without substreams",
                vec![s1 | 1 << 59],
                qemu,
                None,
            ),
            (
                "S1ContextPtr beyond the OAS",
                vec![0xb | 1 << 50],
                none,
                Some("S1ContextPtr"),
            ),
            (
                "S1ContextPtr beyond the IPA",
                vec![0xf | 1 << 40, 0, s2(25, 1, 0), 0x8000_0000],
                none,
                Some("S1ContextPtr"),
            ),
            (
                "4K, 39-bit IPA from level 1",
                vec![0xd, 0, s2(25, 1, 0), 0x8000_0000],
                none,
                None,
            ),
            (
                "4K, 40 bits from level 1, 2 tables",
                vec![0xd, 0, s2(24, 1, 0), 0x8000_0000],
                none,
                None,
            ),
            (
                "4K, 43 bits from level 1, 16 tables",
                vec![0xd, 0, s2(21, 1, 0), 0x8000_0000],
                none,
                None,
            ),
            (
                "4K, 44 bits from level 1, 32 tables",
                vec![0xd, 0, s2(20, 1, 0), 0x8000_0000],
                none,
                Some("S2SL0 and S2T0SZ"),
            ),
            (
                "4K, 39 bits from level 2",
                vec![0xd, 0, s2(25, 0, 0), 0x8000_0000],
                none,
                Some("S2SL0 and S2T0SZ"),
            ),
            (
                "4K, 48 bits from level 0",
                vec![0xd, 0, s2(16, 2, 0), 0x8000_0000],
                none,
                None,
            ),
            (
                "4K, 25 bits from level 2",
                vec![0xd, 0, s2(39, 0, 0), 0x8000_0000],
                none,
                None,
            ),
            (
                "S2T0SZ 40",
                vec![0xd, 0, s2(40, 0, 0), 0x8000_0000],
                none,
                Some("S2T0SZ out of range"),
            ),
            (
                "S2T0SZ 15 below 64 - IAS",
                vec![0xd, 0, s2(15, 2, 0), 0x8000_0000],
                none,
                Some("S2T0SZ out of range"),
            ),
            (
                "S2SL0 0b11 with 4K",
                vec![0xd, 0, s2(25, 3, 0), 0x8000_0000],
                none,
                Some("S2SL0 is reserved"),
            ),
            (
                "64K, 42 bits from level 2",
                vec![0xd, 0, s2(22, 1, 1), 0x8000_0000],
                none,
                None,
            ),
            (
                "64K from level 1 without 52-bit PA",
                vec![0xd, 0, s2(16, 2, 1), 0x8000_0000],
                none,
                Some("52-bit"),
            ),
            (
                "16K, 36 bits from level 2",
                vec![0xd, 0, s2(28, 1, 2), 0x8000_0000],
                none,
                None,
            ),
            (
                "S2TTB low bits are treated as zero",
                vec![0xd, 0, s2(25, 1, 0), 0x8000_0008],
                none,
                None,
            ),
            (
                "S2TTB beyond S2PS",
                vec![0xd, 0, s2(25, 1, 0), 1 << 48],
                none,
                Some("S2TTB"),
            ),
            (
                "S2AA64 = 0",
                vec![0xd, 0, s2(25, 1, 0) & !(1 << 51), 0x8000_0000],
                none,
                Some("S2AA64"),
            ),
            (
                "S2VMID[15:8] with 16-bit VMIDs",
                vec![0xd, 0, s2(25, 1, 0) | 0x100, 0x8000_0000],
                none,
                None,
            ),
            (
                "EATS ignored without IDR0.ATS",
                vec![0x9, 1 << 28],
                none,
                None,
            ),
        ],
    );
}

#[test]
fn cd_verdicts_follow_the_architecture() {
    // Covers V, AA64, T0SZ range, TG0/TG1 encodings, EPD making fields
    // IGNORED, IPS capping, ENDI, TTB range, HA/HD against IDR0.HTTU,
    // ASID16, A and S against the QEMU preset, and the STE it hangs under.
    let b: u64 = 16 | 1 << 30 | 1 << 31 | 5 << 32 | 1 << 41 | 1 << 45 | 1 << 46 | 1 << 48;
    let t = 0x8000_1000;
    let none: &[&str] = &[];
    let qemu: &[&str] = &["--preset", "qemu"];
    let mmu600: &[&str] = &["--preset", "mmu600"];
    assert_verdicts(
        "cd",
        &[
            ("base", vec![b, t], none, None),
            ("V = 0", vec![b & !(1 << 31), t], none, Some("CD.V = 0")),
            ("AA64 = 0", vec![b & !(1 << 41), t], none, Some("AA64")),
            ("T0SZ 39", vec![b & !0x3f | 39, t], none, None),
            ("T0SZ 40", vec![b & !0x3f | 40, t], none, Some("T0SZ")),
            (
                "T0SZ 12, 64K, no VAX",
                vec![b & !0x3f | 12 | 1 << 6, 0x8000_0000],
                none,
                Some("T0SZ"),
            ),
            ("TG0 0b11", vec![b | 3 << 6, t], none, Some("TG0/TG1")),
            (
                "EPD0 makes TG0 and T0SZ IGNORED",
                vec![b & !0x3f | 1 << 14 | 3 << 6, 0],
                none,
                None,
            ),
            (
                "TG1 0b00 is reserved",
                vec![b & !(1 << 30), t],
                none,
                Some("TG0/TG1"),
            ),
            (
                "TG1 4K, T1SZ 16",
                vec![b & !(1 << 30) | 2 << 22 | 16 << 16, t, 0x8000_2000],
                none,
                None,
            ),
            (
                "IPS 0b110 capped to the OAS",
                vec![b & !(7 << 32) | 6 << 32, t],
                none,
                None,
            ),
            (
                "IPS 0b111 behaves as 0b110",
                vec![b & !(7 << 32) | 7 << 32, t],
                none,
                None,
            ),
            (
                "ENDI with a table walked",
                vec![b | 1 << 15, t],
                none,
                Some("ENDI"),
            ),
            (
                "ENDI IGNORED with both EPD",
                vec![b | 1 << 15 | 1 << 14, 0],
                none,
                None,
            ),
            (
                "TTB0 beyond 48 bits",
                vec![b, 1 << 48 | t],
                none,
                Some("TTB0"),
            ),
            ("TTB0 low bits treated as zero", vec![b, t | 8], none, None),
            ("HA without HTTU", vec![b | 1 << 43, t], none, Some("HA/HD")),
            ("HA and HD with HTTU", vec![b | 3 << 42, t], mmu600, None),
            (
                "HD alone is off, not ILLEGAL",
                vec![b | 1 << 42, t],
                mmu600,
                None,
            ),
            (
                "ASID[15:8] with 16-bit ASIDs",
                vec![b | 0xff00 << 48, t],
                none,
                None,
            ),
            (
                "A = 0 with TERM_MODEL 1",
                vec![b & !(1 << 46), t],
                qemu,
                Some("CD.A = 0"),
            ),
            (
                "S = 1 with terminate-only",
                vec![b | 1 << 44, t],
                qemu,
                Some("CD.S = 1"),
            ),
            (
                "S = 1 with stalls configurable",
                vec![b | 1 << 44, t],
                none,
                None,
            ),
            (
                "under a bypass STE",
                vec![b, t],
                &["--ste", "0x9"],
                Some("does not enable stage 1"),
            ),
        ],
    );
}

#[test]
fn command_verdicts_follow_the_architecture() {
    // Covers opcode support per preset, SSEC, CMD_SYNC.CS, and the range
    // TLBI fields (TG 16K with TTL 0b01 treated as 0, RES0 without RIL).
    let none: &[&str] = &[];
    let p = |name: &'static str| -> &'static [&'static str] {
        match name {
            "stage1" => &["--preset", "stage1"],
            "stage2" => &["--preset", "stage2"],
            "qemu" => &["--preset", "qemu"],
            _ => &["--preset", "mmu600"],
        }
    };
    assert_verdicts(
        "cmd",
        &[
            (
                "opcode 0",
                vec![0, 0],
                none,
                Some("unknown or reserved opcode"),
            ),
            ("SYNC CS = SIG_IRQ", vec![0x1046, 0x8000_0000], none, None),
            ("SYNC CS = SIG_SEV", vec![0x2046, 0], none, None),
            ("SYNC CS = 0b11", vec![0x3046, 0], none, Some("CS = 0b11")),
            (
                "SSEC on the non-secure queue",
                vec![0x46 | 1 << 10, 0],
                none,
                Some("SSEC"),
            ),
            ("CFGI_ALL", vec![0x04, 31], none, None),
            (
                "TLBI_NH_VA 4K TTL 3",
                vec![0x12, 0x1000 | 1 << 10 | 3 << 8],
                none,
                None,
            ),
            (
                "TLBI_NH_VA 16K TTL 1",
                vec![0x12, 0x1000 | 2 << 10 | 1 << 8],
                none,
                Some("NUM = SCALE = TTL = 0"),
            ),
            (
                "TLBI_NH_VA 16K TTL 1 NUM 1",
                vec![0x1012, 0x1000 | 2 << 10 | 1 << 8],
                none,
                None,
            ),
            (
                "TG is RES0 without RIL",
                vec![0x12, 0x1000 | 1 << 10],
                p("mmu600"),
                None,
            ),
            (
                "TLBI_S2_IPA without stage 2",
                vec![0x2a, 0x1000],
                p("stage1"),
                Some("stage 2"),
            ),
            (
                "TLBI_NH_ASID without stage 1",
                vec![0x11, 0],
                p("stage2"),
                Some("stage 1"),
            ),
            (
                "CFGI_CD without stage 1",
                vec![0x05, 0],
                p("stage2"),
                Some("stage 1"),
            ),
            ("TLBI_EL2_ALL without HYP", vec![0x20, 0], none, Some("HYP")),
            ("ATC_INV without ATS", vec![0x40, 0], none, Some("ATS")),
            (
                "RESUME without stalls",
                vec![0x44, 0],
                p("qemu"),
                Some("STALL_MODEL"),
            ),
            ("STALL_TERM with stalls", vec![0x45, 0], none, None),
            (
                "TLBI_EL3_ALL on the non-secure queue",
                vec![0x18, 0],
                none,
                Some("EL3"),
            ),
        ],
    );
}

#[test]
fn demo_ends_with_result_ok() {
    let r = smmu(&["demo", "--ops", "64"], None);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(r.out.lines().last(), Some("== result: OK"), "{}", r.out);
}

#[test]
fn a_log_with_bytes_that_are_not_utf8_still_decodes() {
    // Serial-console noise was "stream did not contain valid UTF-8" for the
    // whole log, from standard input and from a file.
    let mut log = b"[ 0.9] \xff\xfe garbage on the console\n".to_vec();
    log.extend(dump("[ 1.0] arm-smmu-v3 9050000.smmuv3: ", A).into_bytes());
    let r = smmu_bytes(&["decode", "event"], Some(&log));
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.starts_with("line 2: F_TRANSLATION sid=0x8"),
        "{}",
        r.out
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("audit-not-utf8.log");
    std::fs::write(&path, &log).unwrap();
    let r = smmu(&["--json", "decode", "log", path.to_str().unwrap()], None);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(json(&r)["events"][0]["fault"]["addr"], "0x1000");
}

#[test]
fn pte_names_blocks_only_where_the_granule_has_them() {
    // A block descriptor at 4K level 0 or 16K level 0/1 is a translation
    // fault without FEAT_LPA2 (the model's walker treats it so); it was
    // decoded as "block". The 64K granule has no level 0.
    let ty = |granule: &str, level: &str| {
        let r = smmu(
            &[
                "--json",
                "decode",
                "pte",
                "--granule",
                granule,
                "--level",
                level,
                "0x40000001",
            ],
            None,
        );
        assert_eq!(r.code, 0, "{granule} {level}: {}", r.err);
        json(&r)["fields"]["type"].as_str().unwrap().to_string()
    };
    for (g, l, want) in [
        ("4096", "0", "reserved (a level-0 block"),
        ("4096", "1", "block"),
        ("4096", "2", "block"),
        ("16384", "0", "reserved (no level-0 block"),
        ("16384", "1", "reserved (a level-1 block"),
        ("16384", "2", "block"),
        ("65536", "1", "block (at level 1 only with a 52-bit output"),
        ("65536", "2", "block"),
    ] {
        let got = ty(g, l);
        assert!(got.starts_with(want), "{g} level {l}: {got}");
        assert_eq!(want == "block", got == "block", "{g} level {l}: {got}");
    }
    for args in [&["decode", "pte"][..], &["--json", "decode", "pte"][..]] {
        let mut a = args.to_vec();
        a.extend(["--granule", "65536", "--level", "0", "0x3"]);
        let r = smmu(&a, None);
        assert_eq!(r.code, 2);
        assert!(r.out.is_empty(), "{}", r.out);
        assert!(r.err.contains("no level 0"), "{}", r.err);
    }
}

#[test]
fn records_without_stall_stage_or_class_fields_are_not_decoded_with_them() {
    // F_UUT has no S2, CLASS or Stall field; F_WALK_EABT and
    // F_TLB_CONFLICT have no Stall/STAG (only the four translation-related
    // faults do; these carry an IMPLEMENTATION DEFINED Reason), and
    // F_TLB_CONFLICT no CLASS. An F_UUT was "stage 1 ... while fetching
    // the CD [stalled, tag 0x7f]".
    let w1 = format!("{:#x}", 1u64 << 31 | 1 << 39 | 0x7f);
    let run = |code: &str| {
        let w0 = format!("{:#x}", 4u64 << 32 | u64::from_str_radix(code, 16).unwrap());
        let text = smmu(&["decode", "event", &w0, &w1, "0x1000", "0"], None);
        let j = json(&smmu(
            &["--json", "decode", "event", &w0, &w1, "0x1000", "0"],
            None,
        ));
        (text.out, j)
    };
    let (t, j) = run("01");
    assert_eq!(
        t.trim(),
        "event: F_UUT sid=0x4: unsupported upstream transaction; unprivileged data write at 0x1000"
    );
    assert_eq!(j["fault"]["stage2"], serde_json::Value::Null);
    assert_eq!(j["fault"]["class"], serde_json::Value::Null);
    assert_eq!(j["fault"]["stall_tag"], serde_json::Value::Null);
    for code in ["0b", "20"] {
        let (t, j) = run(code);
        assert!(!t.contains("stalled"), "{t}");
        assert_eq!(j["fault"]["stall_tag"], serde_json::Value::Null, "{code}");
        assert_eq!(j["fault"]["stage2"], true, "{code}");
    }
    assert_eq!(run("20").1["fault"]["class"], serde_json::Value::Null);
    assert_eq!(run("0b").1["fault"]["class"], "CdFetch");
    // A translation fault still stalls.
    let (t, j) = run("10");
    assert!(t.contains("[stalled, tag 0x7f]"), "{t}");
    assert_eq!(j["fault"]["stall_tag"], 0x7f);
}

#[test]
fn a_range_tlbi_decodes_its_num_field_as_encoded() {
    // NUM = 3, SCALE = 1, TG = 64K, TTL = 3: (3 + 1) << 1 = 8 granules.
    // The text said "num=4", the span's multiplier, not the field.
    let w = ["0x0005000300103012", "0x0000123456781f01"];
    let r = smmu(&["decode", "cmd", w[0], w[1]], None);
    assert_eq!(r.code, 0);
    assert!(
        r.out.contains("vmid=3 asid=5 addr=0x123456781000 leaf=true ttl=3 range: tg=3 (64K) num=3 scale=1 (8 granules)"),
        "{}",
        r.out
    );
    let v = json(&smmu(&["--json", "decode", "cmd", w[0], w[1]], None));
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .contains("num=3 scale=1 (8 granules)"),
        "{v}"
    );
    assert_eq!(v["name"], "TLBI_NH_VA");
}

#[test]
fn cmd_resume_with_ac_and_ab_set_is_a_retry() {
    // CMD_RESUME: bit 12 (Ac) = 1 retries and bit 13 (Ab) is then
    // IGNORED; Action 0b11 was decoded as an abort.
    let r = smmu(&["decode", "cmd", "0x0000000800003044", "0x5"], None);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(
        r.out.contains("CMD_RESUME sid=0x8 stag=5 action=retry"),
        "{}",
        r.out
    );
    let r = smmu(&["decode", "cmd", "0x0000000800002044", "0x5"], None);
    assert!(r.out.contains("action=abort"), "{}", r.out);
}
