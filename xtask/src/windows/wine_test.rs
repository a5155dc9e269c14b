//! `cargo xtask wine-test [-p PKG]... [-- TEST_ARGS...]`: the Windows tests under Wine.
//!
//! Cross-compiles the tests of the given packages (default: cms-protocol, cms-platform,
//! cms-agent, cms-updater) for `x86_64-pc-windows-gnu` and runs them under Wine
//! (`CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine`) in a fresh prefix
//! ([`crate::windows::wine`]); any test failure fails the task. Linux only: on Windows,
//! `cargo test` runs them natively.
//!
//! Must never: run the tests in the user's own `~/.wine`.

use anyhow::{Context, Result};

use crate::build::WINDOWS;
use crate::flags;
use crate::util::{self, run_checked};
use crate::windows::wine;

/// Packages whose tests `wine-test` runs when no `-p` is given.
const DEFAULT_PACKAGES: [&str; 4] = ["cms-protocol", "cms-platform", "cms-agent", "cms-updater"];

/// `cargo xtask wine-test [-p PKG]... [-- TEST_ARGS...]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut args = args.to_vec();
    let mut packages = flags::take_values(&mut args, &["-p", "--package"])?;
    let test_args = flags::split_off_dashdash(&mut args);
    flags::reject_rest("wine-test", &args)?;
    wine::require_wine_host("wine-test")?;
    if packages.is_empty() {
        packages = DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect();
    }
    let prefix = wine::prepare_prefix("wine-test")?;
    eprintln!("wine-test: WINEPREFIX={}", prefix.dir().display());
    let mut cmd = util::cargo();
    cmd.args(["test", "--target", WINDOWS.triple, "--no-fail-fast"]);
    for package in &packages {
        cmd.args(["-p", package]);
    }
    if !test_args.is_empty() {
        cmd.arg("--").args(&test_args);
    }
    prefix.apply_env(&mut cmd);
    cmd.env(
        "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER",
        wine::wine_program(),
    );
    run_checked(&mut cmd).context("Windows tests under Wine failed")?;
    eprintln!(
        "wine-test: all tests passed under Wine for {}",
        packages.join(", ")
    );
    Ok(())
}
