//! The tasks' command-line options: taken out of the argument list one by one, so that whatever
//! is left over is an error the task reports (`reject_rest`).
//!
//! Must never: look past a `--` (what follows belongs to the program a task runs).

use anyhow::{Result, bail};

/// Removes every `FLAG VALUE` pair whose flag is one of `flags` from `args` (before any `--`)
/// and returns the values in order; a flag without a value is an error.
pub fn take_values(args: &mut Vec<String>, flags: &[&str]) -> Result<Vec<String>> {
    let mut values = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--" {
            break;
        }
        if flags.contains(&args[i].as_str()) {
            let flag = args.remove(i);
            if i >= args.len() || args[i] == "--" {
                bail!("{flag} needs a value");
            }
            values.push(args.remove(i));
        } else {
            i += 1;
        }
    }
    Ok(values)
}

/// Like [`take_values`] for an option that may be given at most once.
pub fn take_value(args: &mut Vec<String>, flags: &[&str]) -> Result<Option<String>> {
    let mut values = take_values(args, flags)?;
    if values.len() > 1 {
        bail!("{} given more than once", flags.join("/"));
    }
    Ok(values.pop())
}

/// Removes the switch `flag` from `args` (before any `--`) and says whether it was there.
pub fn take_switch(args: &mut Vec<String>, flag: &str) -> bool {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    match args[..end].iter().position(|a| a == flag) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    }
}

/// Everything after a `--` in `args` (removed from `args`, `--` included).
pub fn split_off_dashdash(args: &mut Vec<String>) -> Vec<String> {
    match args.iter().position(|a| a == "--") {
        Some(i) => {
            let rest = args.split_off(i + 1);
            args.pop();
            rest
        }
        None => Vec::new(),
    }
}

/// Fails when `args` still holds anything: the task did not understand it.
pub fn reject_rest(task: &str, args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("{task}: unexpected arguments {args:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_taken_before_the_double_dash_only() -> Result<()> {
        let mut a = args(&["-p", "a", "--package", "b", "--", "-p", "c"]);
        assert_eq!(take_values(&mut a, &["-p", "--package"])?, ["a", "b"]);
        assert_eq!(a, ["--", "-p", "c"]);
        assert_eq!(split_off_dashdash(&mut a), ["-p", "c"]);
        assert!(a.is_empty());
        let mut a = args(&["--smoke-test", "--", "--smoke-test"]);
        assert!(take_switch(&mut a, "--smoke-test"));
        assert!(!take_switch(&mut a, "--smoke-test"));
        Ok(())
    }

    #[test]
    fn a_missing_or_repeated_value_is_an_error() {
        assert!(take_values(&mut args(&["-p"]), &["-p"]).is_err());
        assert!(take_values(&mut args(&["-p", "--"]), &["-p"]).is_err());
        assert!(
            take_value(
                &mut args(&["--version", "1", "--version", "2"]),
                &["--version"]
            )
            .is_err()
        );
        assert!(reject_rest("t", &args(&["--bogus"])).is_err());
    }
}
