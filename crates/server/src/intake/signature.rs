//! Message signatures: an error message with its ids, hex strings and numbers stripped, so
//! reports of one problem on many agents fall into one group on the dashboard. Release
//! versions (`X.Y.Z`) are kept: two releases' failures are two problems, never one group.
//!
//! Pure function only: it must never do I/O.

/// Placeholder for a UUID.
const ID: &str = "<id>";
/// Placeholder for a hex string of six or more digits (hashes, addresses).
const HEX: &str = "<hex>";
/// Placeholder for a number.
const NUMBER: &str = "<n>";

/// The message with every UUID, hex string and number replaced by a placeholder, versions
/// kept.
///
/// A version is three dot-separated numbers (after an optional `v`) standing alone (not part of a longer dotted run
/// such as an IPv4 address, nor of a word), with an optional `-pre-release` suffix; it is kept
/// as it is. Words are runs of letters, digits and `-`; a word is a UUID, or is split at `-`
/// and each part that is all digits, or six or more hex digits with at least one digit, or
/// `0x` and hex digits, is replaced. Everything else is kept as it is.
pub fn signature(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut word = String::new();
    let mut chars = message.char_indices();
    while let Some((at, c)) = chars.next() {
        let at_boundary = word.is_empty() && !out.ends_with('.');
        let v = usize::from(c == 'v');
        if at_boundary && let Some(len) = version_at(&message[at + v..]).map(|len| len + v) {
            out.push_str(&message[at..at + len]);
            // The version is ASCII: one char per byte.
            chars.nth(len - 2);
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '-' {
            word.push(c);
        } else {
            push_word(&mut out, &word);
            word.clear();
            out.push(c);
        }
    }
    push_word(&mut out, &word);
    out
}

/// The length of the version `X.Y.Z[-pre]` that `text` starts with, if it starts with one that
/// ends there (not followed by `.` and a digit, nor by a letter or digit).
fn version_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut end = 0;
    for part in 0..3 {
        if part > 0 {
            if bytes.get(end) != Some(&b'.') {
                return None;
            }
            end += 1;
        }
        let digits = bytes[end..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        end += digits;
    }
    if bytes.get(end) == Some(&b'-') {
        let suffix = bytes[end + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.' || **b == b'-')
            .count();
        end += 1 + suffix;
        while end > 0 && bytes[end - 1] == b'.' {
            end -= 1;
        }
    }
    let next = bytes.get(end).copied();
    let continues = next.is_some_and(|b| b.is_ascii_alphanumeric())
        || (next == Some(b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit));
    (!continues).then_some(end)
}

fn push_word(out: &mut String, word: &str) {
    if is_uuid(word) {
        out.push_str(ID);
        return;
    }
    for (i, part) in word.split('-').enumerate() {
        if i > 0 {
            out.push('-');
        }
        out.push_str(normalize_part(part));
    }
}

fn normalize_part(part: &str) -> &str {
    if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
        return NUMBER;
    }
    let hex_digits = part
        .strip_prefix("0x")
        .filter(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex_digits.is_some() {
        return HEX;
    }
    let long_hex = part.len() >= 6
        && part.bytes().all(|b| b.is_ascii_hexdigit())
        && part.bytes().any(|b| b.is_ascii_digit());
    if long_hex { HEX } else { part }
}

fn is_uuid(word: &str) -> bool {
    let groups: Vec<&str> = word.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_hex_and_numbers_are_stripped() {
        assert_eq!(
            signature("agent 3f2a9c1e-0b4d-4e5f-8a9b-0c1d2e3f4a5b timed out after 30 s"),
            "agent <id> timed out after <n> s"
        );
        assert_eq!(
            signature("sha256 mismatch: expected 5d41402abc4b2a76, got 0xdeadbeef"),
            "sha256 mismatch: expected <hex>, got <hex>"
        );
        assert_eq!(
            signature("update to 2.10.3 failed while downloading: 1048576 bytes"),
            "update to 2.10.3 failed while downloading: <n> bytes"
        );
        assert_eq!(signature("worker-17 stopped"), "worker-<n> stopped");
    }

    #[test]
    fn words_are_kept() {
        for kept in ["disk full", "cafe added", "sha256", "v2 is old", "", "a--b"] {
            assert_eq!(signature(kept), kept);
        }
    }

    #[test]
    fn two_releases_failures_are_two_signatures() {
        let a = signature("new agent 3.0.0 exited with exit status 1; rolled back to 2.0.0.");
        let b = signature("new agent 3.0.1 exited with exit status 1; rolled back to 2.0.0.");
        assert_ne!(a, b);
        assert_eq!(
            a,
            "new agent 3.0.0 exited with exit status <n>; rolled back to 2.0.0."
        );
        assert_eq!(
            signature("got 2.0.0-rc.1, wanted 2.0.0"),
            "got 2.0.0-rc.1, wanted 2.0.0"
        );
        assert_eq!(signature("v1.2.3 and x1.2.3"), "v1.2.3 and x1.<n>.<n>");
    }

    #[test]
    fn one_problem_on_many_agents_has_one_signature() {
        let a = signature("cannot reach 10.0.0.7:8080 (os error 111)");
        let b = signature("cannot reach 10.0.0.12:9443 (os error 111)");
        assert_eq!(a, b);
        assert_eq!(a, "cannot reach <n>.<n>.<n>.<n>:<n> (os error <n>)");
    }
}
