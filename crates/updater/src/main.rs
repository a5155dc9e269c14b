//! `updater`: replaces the CMS agent with a new version, proves it healthy or rolls back
//! (plan part III, design.md sections 4 and 6).
//!
//! This build carries the command-line contract the agent launches it with; the swap, health
//! check and rollback arrive with the self-update work. Until then it refuses to touch the
//! installation and says so, exiting non-zero as the contract requires for "not updated".

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cms_protocol::BUILD_VERSION;

/// Exit code for "nothing was changed": the agent keeps running the old version.
const EXIT_NOT_UPDATED: u8 = 2;

/// Arguments the agent passes when it hands over to the updater.
#[derive(Debug, Parser)]
#[command(name = "updater", version = BUILD_VERSION)]
struct Args {
    /// The verified update package (zip) in the agent's `updates/` folder.
    #[arg(long, value_name = "PATH")]
    package_path: PathBuf,
    /// The agent executable to replace.
    #[arg(long, value_name = "PATH")]
    current_exe_path: PathBuf,
    /// PID of the agent that launched the update; waited for before the swap.
    #[arg(long, value_name = "PID")]
    old_pid: u32,
    /// Folder for `updater.log`.
    #[arg(long, value_name = "DIR")]
    log_dir: PathBuf,
    /// The agent's own arguments, passed on unchanged to the new (or restored) agent.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    agent_args: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    eprintln!(
        "updater {BUILD_VERSION}: asked to replace {} (pid {}) with {}; this build cannot perform updates, nothing was changed",
        args.current_exe_path.display(),
        args.old_pid,
        args.package_path.display()
    );
    ExitCode::from(EXIT_NOT_UPDATED)
}
