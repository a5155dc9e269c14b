//! `cms-server serve`: its flags, turned into a [`ServeConfig`], and the signals that stop it.
//!
//! Prints `listening on http://IP:PORT` (`https://` with `--tls-cert`) once it accepts requests,
//! and with `--operator-listen` a second line, `operator API on http://IP:PORT`. This module must
//! never hold server logic (that is [`crate::server`]) and never print the enrollment token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{Refusal, StoreArgs, exit_code, print_line};
use crate::intake::guard;
use crate::intake::retention::{self, RetentionPolicy};
use crate::net::Timeouts;
use crate::net::proxy::{Cidr, TrustedProxies};
use crate::net::ratelimit::Rate;
use crate::net::tls::TlsFiles;
use crate::release::tuf::DEFAULT_TIMESTAMP_LIFETIME;
use crate::rollout::{inflight, plan};
use crate::server::{self, ConnectionSettings, Listening, ServeConfig};

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Address the agents reach (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Serve the operator API on this address only (an internal interface), not on --listen.
    #[arg(long)]
    operator_listen: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Registration requires this token when set.
    #[arg(long, env = "CMS_ENROLLMENT_TOKEN", hide_env_values = true)]
    enrollment_token: Option<String>,
    /// Let anyone who reaches --listen register agents without a token (without it and without
    /// --enrollment-token, registration is closed; a non-loopback address then refuses to start).
    #[arg(long)]
    open_enrollment: bool,
    /// Seconds without contact after which an agent without a WebSocket counts as offline.
    #[arg(long, default_value_t = 90)]
    offline_after: u64,
    /// Seconds the timestamp metadata is signed for when the server re-signs it (it does so
    /// once less than half of this is left).
    #[arg(long, default_value_t = DEFAULT_TIMESTAMP_LIFETIME.as_secs())]
    timestamp_expiry_secs: u64,
    /// A reverse proxy's address or network (repeatable): from these peers only, the client
    /// address is taken from X-Forwarded-For and HTTPS from X-Forwarded-Proto.
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<Cidr>,
    /// Seconds between a live feed's checks of its token or session (at most 30; for tests).
    #[arg(long, default_value_t = 30, hide = true, value_parser = clap::value_parser!(u64).range(1..=30))]
    live_feed_recheck_secs: u64,
    /// The server's public address, such as https://cms.example.com (an https:// address makes
    /// the session cookie Secure behind a TLS-terminating proxy).
    #[arg(long, value_name = "URL", value_parser = parse_public_url)]
    public_url: Option<String>,
    /// PEM certificate chain: serve HTTPS and WSS (needs --tls-key); re-read when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (ECDSA, Ed25519 or RSA).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Debug, Args)]
pub(super) struct LimitArgs {
    /// Seconds a request head (and the pause before it on a kept-alive connection) may take.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_secs: u64,
    /// Seconds a connection may pass without a byte either way (WebSockets ping every 30).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Connections held at most [default: the open-file limit minus a reserve].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Connections one source address (IPv6: /64) holds at most [default: 1/8 of the maximum].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_source: Option<u64>,
    /// Package downloads sent at once by this replica; one more is answered 503 with
    /// Retry-After and the agent comes back after a jittered wait [default: 32, or 1/16 of a
    /// smaller open-file limit, at least 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_downloads: Option<u64>,
    /// Update checks waiting for their turn at most (a push sends the whole fleet to check at
    /// once); one more is answered 503 with a Retry-After spread over the line, and the agent
    /// comes back then [default: 64 per check worked on at once: 128 on SQLite, 512 on
    /// PostgreSQL].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    max_waiting_checks: Option<u64>,
    /// Update checks per second a push aims at: a release pushed to more connected agents than
    /// this asks them to check at random moments over agents / N seconds (at most 10 minutes)
    /// instead of at once [default: 100 per check worked on at once: 200 on SQLite, 800 on
    /// PostgreSQL].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    push_checks_per_sec: Option<u32>,
    /// Registrations per minute from one source address, after the burst.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    registrations_per_minute: u32,
    /// Registrations one source address may make at once.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    registration_burst: u32,
    /// Error reports per minute from one agent, after the burst.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    error_reports_per_minute: u32,
    /// Error reports one agent may send at once (at least one batch, 500).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(500..))]
    error_report_burst: u32,
    /// Heartbeats per minute from one agent, after the burst (more are answered 429).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeats_per_minute: u32,
    /// Heartbeats one agent may send at once.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeat_burst: u32,
    /// Days error reports are kept.
    #[arg(long, default_value_t = retention::DEFAULT_MAX_AGE.as_secs() / 86_400)]
    error_retention_days: u64,
    /// Error reports kept in total (the oldest go first).
    #[arg(long, default_value_t = retention::DEFAULT_MAX_TOTAL, value_parser = clap::value_parser!(i64).range(1..))]
    error_retention_count: i64,
    /// Error reports kept per agent (its oldest go first; a new agent keeps
    /// --new-agent-retention, growing to this over its first week).
    #[arg(long, default_value_t = retention::DEFAULT_PER_AGENT, value_parser = clap::value_parser!(i64).range(1..))]
    error_retention_per_agent: i64,
    /// Days update events (update progress) are kept.
    #[arg(long, default_value_t = retention::DEFAULT_EVENT_MAX_AGE.as_secs() / 86_400)]
    event_retention_days: u64,
    /// Update events kept per agent (its oldest go first; grows like the error reports').
    #[arg(long, default_value_t = retention::DEFAULT_EVENTS_PER_AGENT, value_parser = clap::value_parser!(i64).range(1..))]
    event_retention_per_agent: i64,
    /// Error reports (and update events) a just-registered agent keeps, so fresh agents do
    /// not multiply what one source can store.
    #[arg(long, default_value_t = retention::NEW_AGENT_KEPT, value_parser = clap::value_parser!(i64).range(1..))]
    new_agent_retention: i64,
    /// Days audit log entries are kept.
    #[arg(long, default_value_t = retention::DEFAULT_AUDIT_MAX_AGE.as_secs() / 86_400)]
    audit_retention_days: u64,
    /// MiB the database may hold: past it the oldest error reports and update events are
    /// shed (logged as a warning, shown on the dashboard's overview).
    #[arg(long, default_value_t = guard::DEFAULT_MAX_MB, value_parser = clap::value_parser!(u64).range(1..))]
    max_database_mb: u64,
    /// Seconds between checks of the database's size (for tests).
    #[arg(long, default_value_t = guard::DEFAULT_CHECK_SECS, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    database_check_secs: u64,
    /// Seconds between looks for updates that became stuck (for tests).
    #[arg(long, default_value_t = inflight::STUCK_CHECK_INTERVAL.as_secs(), hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    stuck_check_secs: u64,
    /// Seconds between looks at the rollout plans (for tests).
    #[arg(long, default_value_t = plan::PLAN_CHECK_INTERVAL.as_secs(), hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    plan_check_secs: u64,
}

impl Refusal for server::ServeError {
    fn is_refusal(&self) -> bool {
        server::ServeError::is_refusal(self)
    }
}

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let enrollment_token = args.enrollment_token.filter(|t| !t.is_empty());
    let config = ServeConfig {
        listen: args.listen,
        operator_listen: args.operator_listen,
        database_url: args.store.database_url()?,
        data_dir: args.store.data_dir,
        enrollment_token,
        open_enrollment: args.open_enrollment,
        offline_after: Duration::from_secs(args.offline_after),
        timestamp_lifetime: Duration::from_secs(args.timestamp_expiry_secs),
        connections: connection_settings(&args.limits),
        registration_rate: Rate {
            per_minute: args.limits.registrations_per_minute,
            burst: args.limits.registration_burst,
        },
        error_report_rate: Rate {
            per_minute: args.limits.error_reports_per_minute,
            burst: args.limits.error_report_burst,
        },
        heartbeat_rate: Rate {
            per_minute: args.limits.heartbeats_per_minute,
            burst: args.limits.heartbeat_burst,
        },
        retention: RetentionPolicy {
            max_age: days(args.limits.error_retention_days),
            max_total: args.limits.error_retention_count,
            per_agent: args.limits.error_retention_per_agent,
            event_max_age: days(args.limits.event_retention_days),
            events_per_agent: args.limits.event_retention_per_agent,
            audit_max_age: days(args.limits.audit_retention_days),
            new_agent: args.limits.new_agent_retention,
        },
        max_database_mb: args.limits.max_database_mb,
        database_check: Duration::from_secs(args.limits.database_check_secs),
        stuck_check: Duration::from_secs(args.limits.stuck_check_secs),
        plan_check: Duration::from_secs(args.limits.plan_check_secs),
        live_recheck: Duration::from_secs(args.live_feed_recheck_secs),
        trusted_proxies: TrustedProxies::new(args.trusted_proxy),
        public_url: args.public_url,
        tls: args.tls_cert.map(|cert| TlsFiles {
            cert,
            key: args.tls_key.unwrap_or_default(),
        }),
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let served = server::serve(config, shutdown, |listening: Listening| {
        print_line(&format!("listening on {scheme}://{}", listening.agents));
        if let Some(operators) = listening.operators {
            print_line(&format!("operator API on {scheme}://{operators}"));
        }
    })
    .await;
    let served = served.map(|()| tracing::info!("shutdown complete"));
    exit_code(served, "serve failed")
}

fn days(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(86_400))
}

fn parse_public_url(text: &str) -> Result<String, String> {
    let url = text.trim_end_matches('/');
    if (url.starts_with("https://") || url.starts_with("http://"))
        && !url.contains(char::is_whitespace)
    {
        Ok(url.to_owned())
    } else {
        Err(format!("{text:?} is not an http:// or https:// address"))
    }
}

fn connection_settings(limits: &LimitArgs) -> ConnectionSettings {
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    ConnectionSettings {
        timeouts: Timeouts {
            header_read: Duration::from_secs(limits.header_read_timeout_secs),
            idle: Duration::from_secs(limits.idle_timeout_secs),
        },
        max_connections: limits.max_connections.map(to_usize),
        max_per_source: limits.max_connections_per_source.map(to_usize),
        max_downloads: limits.max_downloads.map(to_usize),
        max_waiting_checks: limits.max_waiting_checks.map(to_usize),
        push_checks_per_sec: limits.push_checks_per_sec,
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM (Ctrl-C on Windows).
async fn cancel_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
