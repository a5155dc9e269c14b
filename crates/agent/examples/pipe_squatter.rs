//! `pipe_squatter`: what a standard user would do to steal the IPC secret. It serves the agent's
//! IPC endpoint itself (`\\.\pipe\cms_agent_system` for the machine-wide agent) while the agent
//! is stopped, waits for one client and prints how many bytes that client sent it.
//!
//! It exists for `cargo xtask wine-e2e`, which runs the Windows build under Wine against an
//! installed agent: `cms_agent.exe --status` must refuse the squatter (it does not hold
//! `agent.lock`) and send it nothing, so the line this prints must say `received 0 bytes`.
//! It must never answer as if it were the agent.
//!
//! ```text
//! pipe_squatter [--data-dir DIR] [--wait-secs N]
//! ```
//!
//! Prints `listening on NAME as pid PID` once the endpoint exists, then `received N bytes`.
//! Exit codes: 0 a client came (whatever it sent), 1 none came in time or the endpoint could
//! not be created.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use cms_agent::ipc::IpcEndpoint;
use tokio::io::AsyncReadExt;

/// Serves the agent's IPC endpoint as a squatter and reports what a client sent.
#[derive(Parser)]
#[command(name = "pipe_squatter")]
struct Cli {
    /// The agent's storage path (default: the per-machine one when elevated, else per-user).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How long to wait for a client.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

/// How long the client may take to send what it sends.
const READ_WINDOW: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pipe_squatter: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let endpoint = common::agent_endpoint(cli.data_dir)?;
    let runtime = common::runtime()?;
    runtime.block_on(async {
        let received = squat(&endpoint, Duration::from_secs(cli.wait_secs)).await?;
        println!("received {received} bytes");
        Ok(())
    })
}

/// Creates the endpoint, waits up to `wait` for one client and counts what it sends within
/// [`READ_WINDOW`] (until it hangs up).
async fn squat(endpoint: &IpcEndpoint, wait: Duration) -> Result<usize> {
    let mut connection = transport::serve_one(endpoint, wait).await?;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(READ_WINDOW, connection.read_to_end(&mut received)).await;
    Ok(received.len())
}

#[cfg(windows)]
mod transport {
    use anyhow::{Context, Result};
    use cms_agent::ipc::IpcEndpoint;
    use tokio::net::windows::named_pipe::{NamedPipeServer, PipeMode, ServerOptions};

    use super::announce;

    /// A pipe instance of the endpoint's name with the default DACL, and its first client.
    pub async fn serve_one(
        endpoint: &IpcEndpoint,
        wait: std::time::Duration,
    ) -> Result<NamedPipeServer> {
        let server = ServerOptions::new()
            .pipe_mode(PipeMode::Message)
            .create(endpoint.name())
            .with_context(|| format!("cannot create {endpoint}"))?;
        announce(endpoint);
        tokio::time::timeout(wait, server.connect())
            .await
            .context("no client came")??;
        Ok(server)
    }
}

#[cfg(unix)]
mod transport {
    use anyhow::{Context, Result};
    use cms_agent::ipc::IpcEndpoint;
    use tokio::net::{UnixListener, UnixStream};

    use super::announce;

    /// A socket at the endpoint's path, and its first client.
    pub async fn serve_one(
        endpoint: &IpcEndpoint,
        wait: std::time::Duration,
    ) -> Result<UnixStream> {
        let _ = std::fs::remove_file(endpoint.name());
        let listener = UnixListener::bind(endpoint.name())
            .with_context(|| format!("cannot bind {endpoint}"))?;
        announce(endpoint);
        let (stream, _) = tokio::time::timeout(wait, listener.accept())
            .await
            .context("no client came")??;
        Ok(stream)
    }
}

fn announce(endpoint: &IpcEndpoint) {
    println!("listening on {endpoint} as pid {}", std::process::id());
}
