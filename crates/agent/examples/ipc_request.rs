//! `ipc_request`: sends one IPC request, with a secret the caller chooses, to the agent that
//! owns a storage path, over the real transport (the named pipe on Windows, the socket on
//! Linux), and prints the agent's answer as one JSON line.
//!
//! It exists for end-to-end checks from outside the agent: `cargo xtask wine-e2e` runs the
//! Windows build under Wine against an installed agent to see that a wrong secret is refused
//! on `\\.\pipe\cms_agent_system`. It must never read or print the agent's own secret: the
//! caller says what to send.
//!
//! ```text
//! ipc_request [--data-dir DIR] [--command status|force_restart] --secret HEX
//! ```
//!
//! Exit codes: 0 an answer came back (whatever it says), 1 no answer (nothing listens, timeout).

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use cms_agent::ipc;
use cms_protocol::{IpcCommand, IpcRequest};

/// Sends one IPC request to a running agent and prints its answer.
#[derive(Parser)]
#[command(name = "ipc_request")]
struct Cli {
    /// The agent's storage path (default: the per-machine one when elevated, else per-user).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// What to ask.
    #[arg(long, value_enum, default_value_t = Command::Status)]
    command: Command,
    /// The secret to authenticate with (hex), e.g. a wrong one.
    #[arg(long, value_name = "HEX")]
    secret: String,
}

/// The IPC commands, as command-line values.
#[derive(Clone, Copy, ValueEnum)]
enum Command {
    /// Ask for state and version.
    Status,
    /// Ask the agent to shut down for a new instance.
    ForceRestart,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ipc_request: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let endpoint = common::agent_endpoint(cli.data_dir)?;
    let request = IpcRequest {
        command: match cli.command {
            Command::Status => IpcCommand::Status,
            Command::ForceRestart => IpcCommand::ForceRestart,
        },
        secret: cli.secret,
        args: Vec::new(),
    };
    let runtime = common::runtime()?;
    let answer = runtime
        .block_on(ipc::send_request(&endpoint, &request))
        .with_context(|| format!("no answer from {endpoint}"))?;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}
