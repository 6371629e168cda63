//! Event dumps from Linux's arm-smmu-v3 kernel log, as developers paste
//! them: a header line `event 0x10 received:` followed by the record's
//! four 64-bit words, one per line, each line prefixed by whatever the log
//! adds (timestamp, driver and device name, tabs). Newer kernels follow
//! with a summary line (`event: F_TRANSLATION client: ... sid: 0x8 ...`),
//! which is cross-checked against the decoded words. Xen's port prints
//! the same dump. Each line is tied to its device (the last `name:` token
//! before the payload), so the dumps of two SMMUs printing at once, and
//! other drivers' lines in between, do not mix.

use crate::decode::DecodeError;

/// One event found in a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    /// 1-based line number of the header.
    pub line: usize,
    /// Event code from the header line.
    pub header_code: u8,
    /// The record.
    pub words: [u64; 4],
    /// The kernel's own one-line summary, when the log has one.
    pub summary: Option<String>,
}

impl LogEvent {
    /// Returns whether the header's code matches the record's type field.
    pub fn header_matches(&self) -> bool {
        self.words[0] & 0xff == u64::from(self.header_code)
    }

    /// Returns the StreamID the kernel's summary names, if any.
    pub fn summary_sid(&self) -> Option<u32> {
        let s = self.summary.as_deref()?;
        let after = s.split("sid:").nth(1)?.split_whitespace().next()?;
        u32::from_str_radix(after.trim_start_matches("0x"), 16).ok()
    }
}

/// Returns whether `text` looks like kernel log lines rather than words.
pub fn looks_like_log(text: &str) -> bool {
    text.contains("received")
}

/// Returns the source a line's payload came from: the last `name:` token
/// of the text before it (`9050000.smmuv3:` after any timestamp, journal
/// or driver prefix), or "" when there is none. Lines of one device's
/// dump share it; another SMMU or driver has its own.
fn source(prefix: &str) -> &str {
    prefix
        .split_whitespace()
        .rev()
        .find(|t| t.ends_with(':'))
        .unwrap_or("")
}

/// Returns the event code and the prefix of a header line
/// (`... event 0x10 received:`).
fn header(line: &str) -> Option<(u8, &str)> {
    // ASCII lower-casing keeps byte offsets, so `at` indexes `line`.
    let at = line.to_ascii_lowercase().find("event 0x")?;
    let rest = &line[at + "event 0x".len()..];
    let (code, tail) = rest.split_once(char::is_whitespace)?;
    if !tail
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("received")
    {
        return None;
    }
    Some((u8::from_str_radix(code, 16).ok()?, &line[..at]))
}

fn hex(s: &str, digits: usize) -> Option<u64> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

fn strip_0x(s: &str) -> Option<&str> {
    s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
}

/// Returns the record word a dump line ends with and the line's prefix:
/// `0x` and 16 hex digits, or (as some mail archives wrap it) `0x` and 8
/// digits, a space, 8 digits.
fn word_of(line: &str) -> Option<(u64, &str)> {
    let (prefix, last) = line
        .trim_end()
        .rsplit_once(char::is_whitespace)
        .unwrap_or(("", line.trim_end()));
    if let Some(w) = strip_0x(last).and_then(|h| hex(h, 16)) {
        return Some((w, prefix));
    }
    let lo = hex(last, 8)?;
    let (prefix, prev) = prefix
        .trim_end()
        .rsplit_once(char::is_whitespace)
        .unwrap_or(("", prefix.trim_end()));
    let hi = strip_0x(prev).and_then(|h| hex(h, 8))?;
    Some((hi << 32 | lo, prefix))
}

/// A dump whose four words are still being read.
struct Pending<'a> {
    source: &'a str,
    line: usize,
    code: u8,
    words: Vec<u64>,
}

/// Returns every complete event dump in `text`, in the order of their
/// header lines. Dumps of different devices may interleave line by line
/// (two SMMUs' event threads print at once); lines of other sources are
/// skipped.
///
/// # Errors
///
/// [`DecodeError::Malformed`] when a header is not followed by four record
/// words from the same device, and [`DecodeError::NoDump`] when the text
/// holds no event dump.
pub fn parse_log(text: &str) -> Result<Vec<LogEvent>, DecodeError> {
    let mut out: Vec<LogEvent> = Vec::new();
    let mut pending: Vec<Pending<'_>> = Vec::new();
    // Per source, the event a following kernel summary line belongs to.
    let mut last_done: Vec<(&str, usize)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some((code, prefix)) = header(line) {
            let src = source(prefix);
            if let Some(p) = pending.iter().find(|p| p.source == src) {
                return Err(DecodeError::Malformed(format!(
                    "line {}: event dump has {} of 4 words before the next one at line {n}",
                    p.line,
                    p.words.len()
                )));
            }
            last_done.retain(|(s, _)| *s != src);
            pending.push(Pending {
                source: src,
                line: n,
                code,
                words: Vec::new(),
            });
            continue;
        }
        if let Some((w, prefix)) = word_of(line) {
            let src = source(prefix);
            if let Some(at) = pending.iter().position(|p| p.source == src) {
                let p = &mut pending[at];
                p.words.push(w);
                if p.words.len() == 4 {
                    let p = pending.remove(at);
                    last_done.push((src, out.len()));
                    out.push(LogEvent {
                        line: p.line,
                        header_code: p.code,
                        words: [p.words[0], p.words[1], p.words[2], p.words[3]],
                        summary: None,
                    });
                }
            }
            continue;
        }
        if let Some(pos) = line.find("event: ").filter(|_| line.contains("sid:")) {
            let src = source(&line[..pos]);
            // The summary follows the four words: a dump still short of
            // them lost lines.
            if let Some(p) = pending.iter().find(|p| p.source == src) {
                return Err(DecodeError::Malformed(format!(
                    "line {n}: expected record word {} of the event at line {}",
                    p.words.len() + 1,
                    p.line
                )));
            }
            if let Some(k) = last_done.iter().position(|(s, _)| *s == src) {
                let (_, idx) = last_done.remove(k);
                out[idx].summary = Some(line[pos..].trim().to_string());
            }
        }
        // Any other line (another driver, the queue-overflow or rate-limit
        // notice, a concurrent global-error message) is not part of a dump.
    }
    if let Some(p) = pending.first() {
        return Err(DecodeError::Malformed(format!(
            "line {}: event dump has {} of 4 words",
            p.line,
            p.words.len()
        )));
    }
    if out.is_empty() {
        return Err(DecodeError::NoDump);
    }
    out.sort_by_key(|e| e.line);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_KERNEL: &str = "\
[   70.355743] arm-smmu-v3 arm-smmu-v3.5.auto: event 0x10 received:
[   70.361893] arm-smmu-v3 arm-smmu-v3.5.auto:  0x0002060000000010
[   70.367948] arm-smmu-v3 arm-smmu-v3.5.auto:  0x0000020000000000
[   70.374002] arm-smmu-v3 arm-smmu-v3.5.auto:  0x00000000ff9bc000
[   70.380055] arm-smmu-v3 arm-smmu-v3.5.auto:  0x0000000000000000
[   70.386109] arm-smmu-v3 arm-smmu-v3.5.auto: event: F_TRANSLATION client: 0001:06:00.0 sid: 0x20600 ssid: 0x0 iova: 0xff9bc000 ipa: 0x0
[   70.398531] arm-smmu-v3 arm-smmu-v3.5.auto: unpriv data write s1 \"Input address caused fault\" stag: 0x0
some other line
arm-smmu-v3 fc900000.iommu: event 0x10 received:
arm-smmu-v3 fc900000.iommu: \t0x0000010000000010
arm-smmu-v3 fc900000.iommu: \t0x0000020000000000
arm-smmu-v3 fc900000.iommu: \t0x000000090000f040
arm-smmu-v3 fc900000.iommu: \t0x0000000000000000
";

    #[test]
    fn finds_each_dump_with_its_summary() {
        let ev = parse_log(NEW_KERNEL).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].line, 1);
        assert_eq!(ev[0].header_code, 0x10);
        assert_eq!(ev[0].words[0], 0x0002_0600_0000_0010);
        assert_eq!(ev[0].words[2], 0xff9b_c000);
        assert!(ev[0].header_matches());
        assert_eq!(ev[0].summary_sid(), Some(0x20600));
        assert_eq!(ev[1].line, 9);
        assert_eq!(ev[1].words[2], 0x9_0000_f040);
        assert_eq!(ev[1].summary, None);
    }

    #[test]
    fn wrapped_words_and_xen_prefixes() {
        let t = "(XEN) SMMUv3: /smmuv3@9050000: event 0x10 received:\n\
                 (XEN) SMMUv3: /smmuv3@9050000:  0x00000008 00000010\n\
                 (XEN) SMMUv3: /smmuv3@9050000:  0x0000008000000000\n\
                 (XEN) SMMUv3: /smmuv3@9050000:  0x0000000008090040\n\
                 (XEN) SMMUv3: /smmuv3@9050000:  0x0000000000000000\n";
        let ev = parse_log(t).unwrap();
        assert_eq!(ev[0].words, [0x8_0000_0010, 0x80_0000_0000, 0x809_0040, 0]);
    }

    #[test]
    fn truncated_dumps_are_typed_errors() {
        let t = "x: event 0x10 received:\nx:  0x0000000800000010\n";
        assert!(matches!(parse_log(t), Err(DecodeError::Malformed(_))));
        let t = "x: event 0x10 received:\nx: hello\n";
        assert!(matches!(parse_log(t), Err(DecodeError::Malformed(_))));
        assert_eq!(parse_log("nothing here"), Err(DecodeError::NoDump));
        let t = "a: event 0x10 received:\na: 0x0000000800000010\na: event 0x10 received:\n";
        assert!(matches!(parse_log(t), Err(DecodeError::Malformed(_))));
    }
}
