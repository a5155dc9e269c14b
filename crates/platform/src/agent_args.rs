//! The agent's command line as it travels to the updater and back: the one secret it may carry,
//! the enrollment token, is taken out before anything is started with it.
//!
//! A command line is readable by every local user (`/proc/PID/cmdline`, the process list), so
//! the token travels in the environment of the started process instead (readable only by its
//! user), and the agent stores it with its other secrets. Nothing here logs an argument.

use std::ffi::OsString;

/// The agent's option that carries the enrollment token.
pub const ENROLLMENT_TOKEN_ARG: &str = "--enrollment-token";
/// The environment variable the agent also reads the token from.
pub const ENROLLMENT_TOKEN_ENV: &str = "CMS_ENROLLMENT_TOKEN";

/// Splits `args` into the arguments without the enrollment token (both `--enrollment-token T`
/// and `--enrollment-token=T`) and the token itself, when one was given (the last one wins).
pub fn split_enrollment_token(args: Vec<OsString>) -> (Vec<OsString>, Option<OsString>) {
    let inline_prefix = format!("{ENROLLMENT_TOKEN_ARG}=");
    let mut kept = Vec::with_capacity(args.len());
    let mut token = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == ENROLLMENT_TOKEN_ARG {
            token = args.next().or(token);
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix(&inline_prefix)) {
            token = Some(value.into());
        } else {
            kept.push(arg);
        }
    }
    (kept, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_token_is_taken_out_in_both_spellings_and_the_rest_kept_in_order() {
        let (kept, token) = split_enrollment_token(os(&[
            "--server",
            "https://cms",
            "--enrollment-token",
            "t1",
            "--data-dir",
            "/d",
        ]));
        assert_eq!(kept, os(&["--server", "https://cms", "--data-dir", "/d"]));
        assert_eq!(token, Some("t1".into()));
        let (kept, token) = split_enrollment_token(os(&["--enrollment-token=t2", "--status"]));
        assert_eq!(kept, os(&["--status"]));
        assert_eq!(token, Some("t2".into()));
    }

    #[test]
    fn no_token_leaves_the_arguments_alone_and_a_dangling_option_is_dropped() {
        let args = os(&["--server", "https://cms"]);
        assert_eq!(split_enrollment_token(args.clone()), (args, None));
        let (kept, token) = split_enrollment_token(os(&["--server", "s", "--enrollment-token"]));
        assert_eq!(kept, os(&["--server", "s"]));
        assert_eq!(token, None);
    }
}
