//! How a task reports what it checked: named checks that all run and are reported together,
//! and the SKIPPED outcome for a check this machine cannot run.
//!
//! A skip ends the task with [`SKIPPED_EXIT_CODE`] (77, the automake convention), which
//! `.ci/windows-lane.sh` lists as SKIPPED. Must never: turn a skip into a pass (exit 0) or a
//! failed check into anything but a failed task.

use anyhow::{Result, bail};

/// Exit code of a task that skipped a check.
pub const SKIPPED_EXIT_CODE: i32 = 77;

/// Prints `SKIPPED: <what>: <reason>` and ends the process with [`SKIPPED_EXIT_CODE`].
pub fn skip(what: &str, reason: &str) -> ! {
    println!("SKIPPED: {what}: {reason}");
    std::process::exit(SKIPPED_EXIT_CODE)
}

/// Named checks that all run; failures are collected and reported together.
#[derive(Debug, Default)]
pub struct Checks {
    failed: Vec<String>,
}

impl Checks {
    /// Runs one check and prints its outcome.
    pub fn check(&mut self, name: impl Into<String>, check: impl FnOnce() -> Result<()>) {
        let name = name.into();
        match check() {
            Ok(()) => eprintln!("  ok    {name}"),
            Err(e) => {
                eprintln!("  FAIL  {name}: {e:#}");
                self.failed.push(name);
            }
        }
    }

    /// Fails when any check failed.
    pub fn finish(self, what: &str) -> Result<()> {
        if !self.failed.is_empty() {
            bail!(
                "{what}: {} check(s) failed: {}",
                self.failed.len(),
                self.failed.join("; ")
            );
        }
        eprintln!("{what}: PASSED");
        Ok(())
    }
}
