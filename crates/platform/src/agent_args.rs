//! The agent's command line as it travels to the updater and back: the secrets it may carry,
//! the enrollment token and a proxy password in `--proxy`, are taken out before anything is
//! started with it.
//!
//! A command line is readable by every local user (`/proc/PID/cmdline`, the process list), so
//! the token travels in the environment of the started process instead (readable only by its
//! user), and the agent stores it with its other secrets. Nothing here logs an argument.

use std::ffi::OsString;

/// The agent's option that carries the enrollment token.
pub const ENROLLMENT_TOKEN_ARG: &str = "--enrollment-token";
/// The environment variable the agent also reads the token from.
pub const ENROLLMENT_TOKEN_ENV: &str = "CMS_ENROLLMENT_TOKEN";
/// The agent's proxy option: saved in config.json at the first run, so never passed on (its URL
/// may hold a password).
pub const PROXY_ARG: &str = "--proxy";
/// The environment variable the agent also reads `--proxy` from.
pub const PROXY_ENV: &str = "CMS_AGENT_PROXY";

/// Splits `args` into the arguments without the enrollment token (both `--enrollment-token T`
/// and `--enrollment-token=T`) and the token itself, when one was given (the last one wins).
pub fn split_enrollment_token(args: Vec<OsString>) -> (Vec<OsString>, Option<OsString>) {
    take_option(args, ENROLLMENT_TOKEN_ARG)
}

/// Splits `args` into the arguments without option `name` (`NAME VALUE` and `NAME=VALUE`) and
/// its value, when one was given (the last one wins).
pub fn take_option(args: Vec<OsString>, name: &str) -> (Vec<OsString>, Option<OsString>) {
    let inline_prefix = format!("{name}=");
    let mut kept = Vec::with_capacity(args.len());
    let mut value = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == name {
            value = args.next().or(value);
        } else if let Some(inline) = arg.to_str().and_then(|a| a.strip_prefix(&inline_prefix)) {
            value = Some(inline.into());
        } else {
            kept.push(arg);
        }
    }
    (kept, value)
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
    fn a_proxy_option_is_taken_out_like_the_token() {
        let args = os(&[
            "--proxy",
            "http://u:pw@p:3128",
            "--data-dir",
            "/d",
            "--proxy=none",
        ]);
        let (kept, proxy) = take_option(args, PROXY_ARG);
        assert_eq!(kept, os(&["--data-dir", "/d"]));
        assert_eq!(proxy, Some("none".into()));
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
