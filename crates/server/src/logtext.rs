//! Text from the network, made safe to log.
//!
//! Hostnames, versions, paths and other strings a client chooses are cut to
//! [`MAX_LOGGED_CHARS`] and written quoted with Rust's escaping, so a client can neither forge a
//! log line (`\n`), make the log binary (NUL and other control characters), hide text (bidi
//! overrides) nor fill the log with one huge line. Every log field holding such text must go
//! through [`Untrusted`]; this module must never allocate the whole input or log it unbounded.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Characters of untrusted text written to the log; the rest is counted, not written.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Displays untrusted text quoted, escaped and bounded: `"PC-42\n..."`, or
/// `"aaaa..."+900000 bytes` when it was cut.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        let mut shown = 0usize;
        for (count, c) in self.0.chars().enumerate() {
            if count == MAX_LOGGED_CHARS {
                break;
            }
            write!(f, "{}", c.escape_debug())?;
            shown += c.len_utf8();
        }
        f.write_str("\"")?;
        let rest = self.0.len() - shown;
        if rest > 0 {
            write!(f, "+{rest} bytes")?;
        }
        Ok(())
    }
}

/// Lets a repeated warning (a refused flood) through at most once per interval, with the
/// number of occurrences it stood for, so an attack cannot fill the log one line per request.
#[derive(Debug)]
pub struct LogEvery {
    interval: Duration,
    state: Mutex<Option<(Instant, u64)>>,
}

impl LogEvery {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        LogEvery {
            interval,
            state: Mutex::new(None),
        }
    }

    /// `Some(n)` when this occurrence should be logged, standing for `n` occurrences (itself
    /// and those held back since the last line); `None` to stay silent.
    pub fn occurrence(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *state {
            Some((last, held)) if now.saturating_duration_since(*last) < self.interval => {
                *held += 1;
                None
            }
            _ => {
                let held = state.map_or(0, |(_, held)| held);
                *state = Some((now, 0));
                Some(held + 1)
            }
        }
    }
}

/// The longest prefix of `text` that fits in `max` bytes and ends on a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_counted_between_lines() {
        let every = LogEvery::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(every.occurrence(start), Some(1));
        assert_eq!(every.occurrence(start + Duration::from_secs(1)), None);
        assert_eq!(every.occurrence(start + Duration::from_secs(2)), None);
        assert_eq!(every.occurrence(start + Duration::from_secs(11)), Some(3));
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("ééé", 3), "é");
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("abc", 0), "");
    }

    #[test]
    fn control_characters_are_escaped() {
        let text = Untrusted("a\nfake line\0\u{202e}b").to_string();
        assert_eq!(text, r#""a\nfake line\0\u{202e}b""#);
        assert!(!text.contains('\n') && !text.contains('\0'));
    }

    #[test]
    fn long_text_is_cut_and_counted() {
        let long = "é".repeat(1000);
        let text = Untrusted(&long).to_string();
        assert!(text.starts_with('"'));
        assert!(text.ends_with("\"+1744 bytes"), "{text}");
        assert_eq!(text.chars().filter(|c| *c == 'é').count(), MAX_LOGGED_CHARS);
    }

    #[test]
    fn short_text_is_quoted_whole() {
        assert_eq!(Untrusted("PC-0042").to_string(), "\"PC-0042\"");
    }
}
