//! The hex words decoders and checkers take: parsed, counted, and the
//! ones not given read as zero (and said so).

use crate::decode::DecodeError;

/// The words of an `N`-word structure as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Words<const N: usize> {
    /// The structure; words past `given` are zero.
    pub words: [u64; N],
    /// How many words were given (1..=N).
    pub given: usize,
}

impl<const N: usize> Words<N> {
    /// Returns what was read as zero ("2 of 4 words given; words 2-3 read
    /// as 0"), or `None` when every word was given. A truncated paste
    /// decodes as zeros, so the output must say it was short.
    pub fn zero_filled(&self) -> Option<String> {
        if self.given >= N {
            return None;
        }
        let missing = if self.given + 1 == N {
            format!("word {}", self.given)
        } else {
            format!("words {}-{}", self.given, N - 1)
        };
        Some(format!(
            "{} of {N} words given; {missing} read as 0",
            self.given
        ))
    }
}

/// Parses hex words (one "0x" or "0X" optional, "_" allowed between
/// digits) into up to `N` words, zero-filling the rest.
///
/// # Errors
///
/// [`DecodeError`] for no word, a bad word or too many words.
pub fn parse_words<const N: usize>(
    what: &'static str,
    args: &[String],
) -> Result<Words<N>, DecodeError> {
    // Accept "w0 w1" as well as "w0,w1" or one quoted string.
    let words: Vec<&str> = args
        .iter()
        .flat_map(|a| a.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|w| !w.is_empty())
        .collect();
    // An empty argument (an unset shell variable) is no word, not a zero.
    if words.is_empty() {
        return Err(DecodeError::Empty);
    }
    if words.len() > N {
        return Err(DecodeError::TooMany {
            what,
            max: N,
            got: words.len(),
        });
    }
    let mut out = [0u64; N];
    for (slot, w) in out.iter_mut().zip(&words) {
        *slot = parse_word(w).ok_or_else(|| DecodeError::BadWord(w.to_string()))?;
    }
    Ok(Words {
        words: out,
        given: words.len(),
    })
}

/// Returns the value of one hex word, or `None` unless it is hex digits
/// (and separating underscores) after at most one `0x`: `from_str_radix`
/// alone would take a sign (`+9`), and stripping every `0x` would take
/// `0x0x9`.
fn parse_word(w: &str) -> Option<u64> {
    let digits = w
        .strip_prefix("0x")
        .or_else(|| w.strip_prefix("0X"))
        .unwrap_or(w);
    if !digits.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_') {
        return None;
    }
    u64::from_str_radix(&digits.replace('_', ""), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn words_not_given_are_zero_and_named() {
        let w: Words<4> = parse_words("an event record", &args("0x10 1")).unwrap();
        assert_eq!((w.words, w.given), ([0x10, 1, 0, 0], 2));
        assert_eq!(
            w.zero_filled().as_deref(),
            Some("2 of 4 words given; words 2-3 read as 0")
        );
        let w: Words<4> = parse_words("an event record", &args("1,2 3")).unwrap();
        assert_eq!(
            w.zero_filled().as_deref(),
            Some("3 of 4 words given; word 3 read as 0")
        );
        let w: Words<2> = parse_words("a command", &args("0x46 0")).unwrap();
        assert_eq!((w.given, w.zero_filled()), (2, None));
    }
}
