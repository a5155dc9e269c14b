//! `cms-loadgen`: the tools `cargo xtask bench` drives to measure what it cannot measure from
//! outside a process.
//!
//! - `cms-loadgen swarm --server URL` simulates a fleet of agents speaking the real agent
//!   protocol (registration, a WebSocket each carrying its heartbeats, or with `--heartbeat-over
//!   http` a keep-alive HTTP connection each for them; see `docs/protocol.md`) and is steered one
//!   line at a time on stdin; see [`swarm`].
//! - `cms-loadgen download --server URL --url PATH --length N --out FILE` fetches one release
//!   package through the agent's own downloader (`HttpClient::download_file`, on the same
//!   single-threaded runtime the agent uses) and prints `{"bytes": N, "secs": S}`.
//! - `cms-loadgen heartbeats --server URL --count N` registers one agent through the agent's
//!   own client and sends it N heartbeats one after the other, as the agent does (one keep-alive
//!   connection), printing `{"register_us": R, "latencies_us": [...]}`: the registration is the
//!   first request on a new connection (TCP and, over HTTPS, the TLS handshake included).
//!
//! `download` and `heartbeats` take `--ca-cert FILE` for an HTTPS server signed by a private CA,
//! and always go direct (never through a proxy a variable names). Every command refuses any
//! server that is not on this machine (loopback): this is a load generator, and it must never
//! be pointed at someone else's server. Results go to stdout as JSON, logs to stderr; the
//! bearer token of `download` comes from the environment and is never printed.

mod swarm;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use cms_agent::net::Credentials;
use cms_agent::net::http_client::HttpClient;
use cms_agent::net::proxy::ProxySetting;
use cms_agent::net::{Transport, parse_server_url};
use cms_protocol::{AgentState, BUILD_VERSION, Metrics, RegisterRequest, StatusReport};

/// Benchmark tools for the CMS agent and server (loopback only).
#[derive(Debug, Parser)]
#[command(name = "cms-loadgen", version = BUILD_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a fleet of agents, steered by commands on stdin (see the crate docs).
    Swarm(SwarmArgs),
    /// Download one package through the agent's downloader and print the time it took.
    Download(DownloadArgs),
    /// Register one agent and time heartbeats sent through the agent's client.
    Heartbeats(HeartbeatsArgs),
}

/// The server `download` and `heartbeats` talk to, and the CA they trust for it.
#[derive(Debug, Args)]
struct Backend {
    /// The server's base URL, `http://` or `https://` (loopback only).
    #[arg(long)]
    server: String,
    /// PEM certificate(s) of the CA that signed an HTTPS server's certificate.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

impl Backend {
    /// The agent's own HTTP client for this server: its TLS trust plus `--ca-cert`, direct.
    fn client(&self) -> Result<HttpClient> {
        loopback_addr(&self.server, &["http", "https"])?;
        let base = parse_server_url(&self.server)?;
        let ca_pem = match &self.ca_cert {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --ca-cert {}", path.display()))?,
            ),
            None => None,
        };
        let transport = Transport::new(&base, ca_pem.as_deref(), Some(&ProxySetting::Direct))?;
        Ok(HttpClient::new(base, &transport)?)
    }
}

#[derive(Debug, Args)]
struct SwarmArgs {
    /// The server's base URL, such as `http://127.0.0.1:8080` (loopback only).
    #[arg(long)]
    server: String,
    /// Seconds between heartbeats of each simulated agent (the agent's default is 60).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_secs: u64,
    /// Where heartbeats go: `websocket` (one connection per agent, as the agent does) or `http`
    /// (a keep-alive connection beside the socket, as older agents do).
    #[arg(long, default_value = "websocket", value_parser = ["websocket", "http"])]
    heartbeat_over: String,
    /// Version the simulated agents report (releases newer than it are pushed to them).
    #[arg(long, default_value = "1.0.0")]
    agent_version: String,
    /// Platform the simulated agents register for.
    #[arg(long, default_value = "linux-x86_64")]
    platform: String,
    /// Agents set up (connect, register, open the WebSocket) at the same time while growing.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Number of this process's first agent: several processes given disjoint ranges share
    /// one fleet (distinct hostnames and loopback source addresses).
    #[arg(long, default_value_t = 0)]
    first_agent: usize,
}

#[derive(Debug, Args)]
struct DownloadArgs {
    #[command(flatten)]
    backend: Backend,
    /// The package URL as the update check gives it (relative to the server or absolute).
    #[arg(long)]
    url: String,
    /// The announced package length; the downloader never reads past it.
    #[arg(long)]
    length: u64,
    /// Where to write the package (replaced if it exists: every run is a full download).
    #[arg(long)]
    out: PathBuf,
    /// The agent bearer token for the package route.
    #[arg(long, env = "CMS_LOADGEN_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Debug, Args)]
struct HeartbeatsArgs {
    #[command(flatten)]
    backend: Backend,
    /// Heartbeats to send, one after the other.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CMS_LOADGEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cms-loadgen: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // The agent's HTTP stack expects a process-wide TLS provider, as in the agent's `main`.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Swarm(args) => {
            let settings = swarm::Settings {
                server: loopback_addr(&args.server, &["http"])?,
                heartbeat: std::time::Duration::from_secs(args.heartbeat_secs),
                heartbeat_route: if args.heartbeat_over == "http" {
                    swarm::HeartbeatRoute::Http
                } else {
                    swarm::HeartbeatRoute::WebSocket
                },
                agent_version: args.agent_version,
                platform: args.platform,
                concurrency: usize::from(args.concurrency),
                first_agent: args.first_agent,
            };
            runtime.block_on(swarm::run(settings))
        }
        Command::Download(args) => runtime.block_on(download(args)),
        Command::Heartbeats(args) => runtime.block_on(heartbeats(args)),
    }
}

/// The socket address of a loopback server URL with one of `schemes`; anything else is refused.
fn loopback_addr(server: &str, schemes: &[&str]) -> Result<SocketAddr> {
    let url = url::Url::parse(server).with_context(|| format!("invalid server URL {server:?}"))?;
    let addrs = url
        .socket_addrs(|| url.port_or_known_default())
        .with_context(|| format!("cannot resolve {server}"))?;
    match addrs.into_iter().next() {
        Some(addr) if addr.ip().is_loopback() && schemes.contains(&url.scheme()) => Ok(addr),
        _ => bail!(
            "{server} is not a {} loopback server; cms-loadgen only loads this machine",
            schemes.join(" or ")
        ),
    }
}

/// `download`: one full download through the agent's downloader, timed around the call.
async fn download(args: DownloadArgs) -> Result<()> {
    let client = args.backend.client()?;
    client.set_credentials(Credentials {
        agent_id: "cms-loadgen".into(),
        agent_token: args.token,
    });
    match std::fs::remove_file(&args.out) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot replace {}", args.out.display()));
        }
    }
    let started = Instant::now();
    let bytes = client
        .download_file(&args.url, &args.out, args.length, None)
        .await?;
    let secs = started.elapsed().as_secs_f64();
    print_result(&serde_json::json!({ "bytes": bytes, "secs": secs }))
}

/// `heartbeats`: one registration, then `count` heartbeats in a row, each timed around the call.
async fn heartbeats(args: HeartbeatsArgs) -> Result<()> {
    let client = args.backend.client()?;
    let request = RegisterRequest {
        hostname: "cms-loadgen-heartbeats".into(),
        platform: "linux-x86_64".into(),
        version: "1.0.0".into(),
        enrollment_token: None,
        group: None,
    };
    let started = Instant::now();
    let identity = client.register(&request).await?;
    let register_us = started.elapsed().as_micros();
    client.set_credentials(Credentials {
        agent_id: identity.agent_id,
        agent_token: identity.agent_token,
    });
    let report = StatusReport {
        state: AgentState::Idle,
        version: request.version,
        metrics: Metrics::default(),
        network: Some("direct".into()),
        group: None,
        utc_offset_minutes: None,
    };
    let mut latencies_us = Vec::new();
    for _ in 0..args.count {
        let started = Instant::now();
        client.send_status(&report).await?;
        latencies_us.push(started.elapsed().as_micros());
    }
    print_result(&serde_json::json!({ "register_us": register_us, "latencies_us": latencies_us }))
}

/// One JSON line on stdout.
fn print_result(line: &serde_json::Value) -> Result<()> {
    writeln!(std::io::stdout(), "{line}").context("cannot write the result")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_servers_with_an_allowed_scheme_are_accepted() {
        let http = ["http"];
        assert!(loopback_addr("http://127.0.0.1:8080", &http).is_ok());
        assert!(loopback_addr("http://[::1]:8080", &http).is_ok());
        assert!(loopback_addr("http://192.0.2.1:8080", &http).is_err());
        assert!(loopback_addr("https://127.0.0.1:8443", &http).is_err());
        assert!(loopback_addr("https://127.0.0.1:8443", &["http", "https"]).is_ok());
        assert!(loopback_addr("https://192.0.2.1:8443", &["http", "https"]).is_err());
        assert!(loopback_addr("not a url", &http).is_err());
    }
}
