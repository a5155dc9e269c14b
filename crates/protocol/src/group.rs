//! Agent groups: the name rule shared by the agent (`--group`), the server and the operator
//! API. Pure; this module must never do I/O.

/// The group of an agent that was given none.
pub const DEFAULT_GROUP: &str = "default";

/// Longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 64;

/// Whether `name` is a group name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn is_valid_group(name: &str) -> bool {
    (1..=MAX_GROUP_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        assert!(is_valid_group(DEFAULT_GROUP));
        assert!(is_valid_group("it-canary_1.eu"));
        assert!(is_valid_group(&"a".repeat(64)));
        assert!(!is_valid_group(&"a".repeat(65)));
        assert!(!is_valid_group(""));
        assert!(!is_valid_group("shop floor"));
        assert!(!is_valid_group("<b>"));
        assert!(!is_valid_group("café"));
    }
}
