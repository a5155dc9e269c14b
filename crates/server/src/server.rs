//! Wiring of `cms-server serve`: check the settings, size the connection budget, open the
//! databases, bind the listeners, run until shutdown.
//!
//! This module must never parse the command line or install signal handlers (the binary does
//! both and hands over a [`CancellationToken`]); it only assembles the parts and runs them. A
//! server never takes registrations without an enrollment token unless told that enrollment is
//! open (`--open-enrollment`), whatever its address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::api::{self, AppState, IngestLimits, StateSettings, checks};
use crate::cluster::Cluster;
use crate::cluster::leader;
use crate::db::{self, Db, DbError, PoolUse};
use crate::events::{self, Dispatcher, EventBus};
use crate::intake::errors::PerAgent;
use crate::intake::guard::{self, SizeGuard};
use crate::intake::retention::{self, RetentionPolicy};
use crate::net::budget::{self, ConnectionBudget, Sizing};
use crate::net::proxy::TrustedProxies;
use crate::net::ratelimit::Rate;
use crate::net::tls::{self, TlsAcceptor, TlsError, TlsFiles};
use crate::net::{self, Listener, Timeouts};
use crate::release;
use crate::rollout::watcher::{self, RELEASE_POLL_INTERVAL, ReleaseWatcher};
use crate::rollout::{inflight, plan};
use crate::ws::Hub;

/// How often the server checks whether the timestamp metadata needs re-signing.
const METADATA_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Share of the connection budget kept for a separate operator listener: 1/8, at most this.
const MAX_OPERATOR_CONNECTIONS: usize = 256;

/// How connections are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Header-read and idle timeouts.
    pub timeouts: Timeouts,
    /// Connections held at most; `None` sizes it from the open-file limit.
    pub max_connections: Option<usize>,
    /// Connections one source network holds at most; `None` is 1/8 of the maximum.
    pub max_per_source: Option<usize>,
    /// Package streams sent at once (`--max-downloads`); one more is answered 503. `None`:
    /// 32, fewer under a small open-file limit.
    pub max_downloads: Option<usize>,
    /// Update checks waiting for a turn at most (`--max-waiting-checks`); one more is answered
    /// 503. `None`: 64 per check worked on at once.
    pub max_waiting_checks: Option<usize>,
    /// Update checks per second a push aims at (`--push-checks-per-sec`): a push to more
    /// agents asks them to spread their checks. `None`: 100 per check worked on at once.
    pub push_checks_per_sec: Option<u32>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            timeouts: Timeouts {
                header_read: Duration::from_secs(10),
                idle: Duration::from_secs(120),
            },
            max_connections: None,
            max_per_source: None,
            max_downloads: None,
            max_waiting_checks: None,
            push_checks_per_sec: None,
        }
    }
}

/// Settings of one `serve` run.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address the agents reach, such as `127.0.0.1:8080` (port 0 picks a free port).
    pub listen: String,
    /// A separate address for the operator API; `None` serves it on `listen`.
    pub operator_listen: Option<String>,
    /// Directory of the SQLite database and the release packages (`packages/`).
    pub data_dir: PathBuf,
    /// `postgres://...` (or `sqlite://...`) URL; `None` means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// When set, registration requires this token.
    pub enrollment_token: Option<String>,
    /// Allows registration without a token (whatever the address; without it and without a
    /// token, registration is closed).
    pub open_enrollment: bool,
    /// An agent without a WebSocket counts as offline after this long without contact.
    pub offline_after: Duration,
    /// Life of the timestamp metadata when the server re-signs it.
    pub timestamp_lifetime: Duration,
    /// Connection limits and timeouts.
    pub connections: ConnectionSettings,
    /// Registrations per source network.
    pub registration_rate: Rate,
    /// Error reports per agent.
    pub error_report_rate: Rate,
    /// Heartbeats per agent.
    pub heartbeat_rate: Rate,
    /// What error reports are kept.
    pub retention: RetentionPolicy,
    /// `--max-database-mb`: past it the oldest reports and events are shed.
    pub max_database_mb: u64,
    /// How often the database's size is checked.
    pub database_check: Duration,
    /// How often the stuck-update watch looks.
    pub stuck_check: Duration,
    /// How often the rollout plans are looked at.
    pub plan_check: Duration,
    /// How often a live feed checks its token or session again.
    pub live_recheck: Duration,
    /// Peers whose `X-Forwarded-For`/`X-Forwarded-Proto` are believed (`--trusted-proxy`).
    pub trusted_proxies: TrustedProxies,
    /// The server's public address (`--public-url`).
    pub public_url: Option<String>,
    /// `--tls-cert`/`--tls-key`: serve HTTPS and WSS instead of plain HTTP.
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("operator_listen", &self.operator_listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("open_enrollment", &self.open_enrollment)
            .field("offline_after", &self.offline_after)
            .field("timestamp_lifetime", &self.timestamp_lifetime)
            .field("connections", &self.connections)
            .field("registration_rate", &self.registration_rate)
            .field("error_report_rate", &self.error_report_rate)
            .field("heartbeat_rate", &self.heartbeat_rate)
            .field("retention", &self.retention)
            .field("max_database_mb", &self.max_database_mb)
            .field("database_check", &self.database_check)
            .field("stuck_check", &self.stuck_check)
            .field("plan_check", &self.plan_check)
            .field("live_recheck", &self.live_recheck)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("public_url", &self.public_url)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Where a started server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The agents' address (and the operators', without a separate one).
    pub agents: SocketAddr,
    /// The operator API's own address, when one was asked for.
    pub operators: Option<SocketAddr>,
}

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The settings cannot work together.
    #[error("{0}")]
    Settings(String),
    /// A public address without an enrollment token and without `--open-enrollment`.
    #[error(
        "{listen} is reachable beyond this machine, so registration needs an enrollment token: \
         start with --enrollment-token T (or CMS_ENROLLMENT_TOKEN), or with --open-enrollment \
         to let anyone who reaches the port register an agent"
    )]
    EnrollmentRequired {
        /// The address.
        listen: String,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The release metadata could not be created at start.
    #[error("cannot prepare the signed release metadata: {0}")]
    Metadata(#[from] crate::release::PublishError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The TLS certificate or key cannot be served.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl ServeError {
    /// Whether the settings were refused (a retry with the same ones cannot succeed).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ServeError::Settings(_) | ServeError::EnrollmentRequired { .. }
        )
    }
}

/// Runs the server until `shutdown` is cancelled; calls `on_listening` with the bound
/// addresses once the database is ready and the sockets accept connections.
pub async fn serve(
    config: ServeConfig,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(Listening),
) -> Result<(), ServeError> {
    check_settings(&config)?;
    let tls = config.tls.clone().map(tls::acceptor).transpose()?;
    let agents_tcp = bind(&config.listen).await?;
    check_enrollment(&config, &agents_tcp)?;
    let operators_tcp = match &config.operator_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let url = db::database_url(&config.data_dir, config.database_url.as_deref())?;
    let db = Db::connect(&url, PoolUse::Agents).await?;
    let operator_db = Db::attach(&url, PoolUse::Operators).await?;
    tracing::info!(backend = ?db.backend(), "database ready");
    let refresh = release::refresh_metadata(&db, &config.data_dir, config.timestamp_lifetime);
    leader::exclusively(&db, leader::METADATA_SIGNING, refresh).await?;
    let cluster = Cluster::new(db.clone(), EventBus::new(&db).await?);
    cluster.join().await?;
    let db_connections = PoolUse::Agents.max_connections(db.backend())
        + PoolUse::Operators.max_connections(db.backend());
    let sizing = budget::size(
        budget::raise_file_limit(),
        db_connections,
        config.connections.max_downloads,
        config.connections.max_connections,
        config.connections.max_per_source,
    );
    log_sizing(&sizing, &config);
    let hub = Hub::new();
    let background = shutdown.child_token();
    let tasks = spawn_background(
        &config,
        &url,
        &db,
        &operator_db,
        &cluster,
        &hub,
        &background,
    )
    .await;
    let check_slots = check_slots(&db);
    let state = AppState::new(
        db.clone(),
        operator_db.clone(),
        hub,
        cluster,
        StateSettings {
            data_dir: config.data_dir.clone(),
            enrollment_token: config.enrollment_token.clone(),
            open_enrollment: config.open_enrollment,
            offline_after: config.offline_after,
            ingest: IngestLimits {
                registrations: config.registration_rate,
                error_reports: config.error_report_rate,
                heartbeats: config.heartbeat_rate,
                per_agent: PerAgent {
                    reports: config.retention.per_agent,
                    events: config.retention.events_per_agent,
                    new_agent: config.retention.new_agent,
                },
            },
            download_slots: sizing.download_slots,
            listing_slots: PoolUse::Operators.max_connections(db.backend()) as usize - 1,
            check_slots,
            max_waiting_checks: config
                .connections
                .max_waiting_checks
                .unwrap_or(check_slots * checks::WAITING_PER_SLOT),
            serves_tls: tls.is_some(),
            live_recheck: config.live_recheck,
            public_https: config
                .public_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://")),
        },
        shutdown.clone(),
    );
    let proxies = Arc::new(config.trusted_proxies.clone());
    let listeners = listeners(state, agents_tcp, operators_tcp, &sizing, tls, &proxies)?;
    on_listening(listening(&listeners)?);
    let timeouts = config.connections.timeouts;
    let serving: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(net::serve(listener, timeouts, shutdown.clone())))
        .collect();
    for task in serving {
        if let Err(error) = task.await {
            tracing::error!(%error, "listener task failed");
        }
    }
    background.cancel();
    for task in tasks {
        if let Err(error) = task.await {
            tracing::warn!(%error, "background task failed");
        }
    }
    db.close().await;
    operator_db.close().await;
    Ok(())
}

fn check_settings(config: &ServeConfig) -> Result<(), ServeError> {
    let batch = crate::api::agent::MAX_REPORTS_PER_BATCH;
    if (config.error_report_rate.burst as usize) < batch {
        return Err(ServeError::Settings(format!(
            "the error report burst must hold a whole batch: at least {batch}"
        )));
    }
    let counts = [
        config.retention.per_agent,
        config.retention.max_total,
        config.retention.events_per_agent,
    ];
    if counts.iter().any(|&count| count < 1) {
        return Err(ServeError::Settings(
            "retention counts must be at least 1".into(),
        ));
    }
    Ok(())
}

async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Refuses to start on an address reachable from other machines when no one could register
/// (no token, enrollment not open): that is almost always a forgotten flag. On loopback such a
/// server starts, and refuses registrations ([`crate::intake::registration::admit`]).
fn check_enrollment(config: &ServeConfig, agents: &TcpListener) -> Result<(), ServeError> {
    let addr = agents.local_addr().map_err(ServeError::Http)?;
    let guarded = config.enrollment_token.is_some() || config.open_enrollment;
    if addr.ip().is_loopback() || guarded {
        if !guarded {
            tracing::warn!(
                "no --enrollment-token and no --open-enrollment: registration is closed"
            );
        }
        return Ok(());
    }
    Err(ServeError::EnrollmentRequired {
        listen: config.listen.clone(),
    })
}

fn log_sizing(sizing: &Sizing, config: &ServeConfig) {
    let limit = sizing.file_limit;
    tracing::info!(
        open_files_found = limit.map(|l| l.found),
        open_files_now = limit.map(|l| l.now),
        open_files_hard = limit.map(|l| l.hard),
        reserved = sizing.reserved,
        max_connections = sizing.max_connections,
        max_per_source = sizing.max_per_source,
        download_slots = sizing.download_slots,
        header_read_timeout_secs = config.connections.timeouts.header_read.as_secs(),
        idle_timeout_secs = config.connections.timeouts.idle.as_secs(),
        "connection budget"
    );
}

/// The listener(s): one serving both APIs, or the agents' and the operators' apart (the
/// operators then get a small share of the budget of their own).
fn listeners(
    state: AppState,
    agents_tcp: TcpListener,
    operators_tcp: Option<TcpListener>,
    sizing: &Sizing,
    tls: Option<TlsAcceptor>,
    proxies: &Arc<TrustedProxies>,
) -> Result<Vec<Listener>, ServeError> {
    let Some(operators_tcp) = operators_tcp else {
        let budget = ConnectionBudget::new(sizing.max_connections, sizing.max_per_source);
        return Ok(vec![Listener {
            name: "agents",
            tcp: agents_tcp,
            budget,
            app: api::router(state),
            tls,
            proxies: proxies.clone(),
        }]);
    };
    let operators = (sizing.max_connections / 8).clamp(1, MAX_OPERATOR_CONNECTIONS);
    let agents = sizing.max_connections.saturating_sub(operators).max(1);
    Ok(vec![
        Listener {
            name: "agents",
            tcp: agents_tcp,
            budget: ConnectionBudget::new(agents, sizing.max_per_source.min(agents)),
            app: api::agent_router(state.clone()),
            tls: tls.clone(),
            proxies: proxies.clone(),
        },
        Listener {
            name: "operators",
            tcp: operators_tcp,
            budget: ConnectionBudget::new(operators, operators),
            app: api::operator_router(state),
            tls,
            proxies: proxies.clone(),
        },
    ])
}

fn listening(listeners: &[Listener]) -> Result<Listening, ServeError> {
    let addr = |listener: &Listener| listener.tcp.local_addr().map_err(ServeError::Http);
    let agents = listeners
        .first()
        .map(addr)
        .ok_or_else(|| ServeError::Settings("no listener".into()))??;
    let operators = listeners.get(1).map(addr).transpose()?;
    tracing::info!(%agents, operators = operators.map(tracing::field::display), "listening");
    Ok(Listening { agents, operators })
}

/// Update checks worked on at once: half the agents' pool, so heartbeats keep the other half.
fn check_slots(db: &Db) -> usize {
    PoolUse::Agents.max_connections(db.backend()) as usize / 2
}

/// The release watcher, the metadata refresher, the error retention sweep, the database size
/// guard, the replica lease, the stuck-update watch, the rollout plans and, on PostgreSQL, the listener for the
/// other replicas' events.
async fn spawn_background(
    config: &ServeConfig,
    url: &str,
    db: &Db,
    operator_db: &Db,
    cluster: &Cluster,
    hub: &Hub,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let releases_changed = Arc::new(Notify::new());
    let channel = cluster.bus().channel().map(str::to_owned);
    // With a bus the watcher is told of every change; without one it polls.
    let poll = channel.is_none().then_some(RELEASE_POLL_INTERVAL);
    let push_rate = config.connections.push_checks_per_sec.unwrap_or_else(|| {
        u32::try_from(check_slots(db)).unwrap_or(u32::MAX) * watcher::PUSH_CHECKS_PER_TURN
    });
    let watcher = ReleaseWatcher::new(operator_db.clone(), hub.clone(), push_rate).await;
    let mut tasks = vec![
        tokio::spawn(watcher.run(poll, releases_changed.clone(), stop.clone())),
        tokio::spawn(keep_metadata_fresh(
            db.clone(),
            config.data_dir.clone(),
            config.timestamp_lifetime,
            stop.clone(),
        )),
        tokio::spawn(retention::run(
            operator_db.clone(),
            config.retention,
            retention::SWEEP_INTERVAL,
            stop.clone(),
        )),
        tokio::spawn(guard::run(
            operator_db.clone(),
            SizeGuard::new(config.max_database_mb),
            config.database_check,
            stop.clone(),
        )),
        tokio::spawn(cluster.clone().run_lease(stop.clone())),
        tokio::spawn(inflight::watch_stuck(
            operator_db.clone(),
            cluster.live().clone(),
            config.stuck_check,
            stop.clone(),
        )),
        tokio::spawn(plan::watch_plans(
            operator_db.clone(),
            (cluster.live().clone(), cluster.bus().clone()),
            config.plan_check,
            stop.clone(),
        )),
    ];
    if let Some(channel) = channel {
        let dispatcher = Dispatcher {
            replica_id: cluster.replica_id(),
            hub: hub.clone(),
            releases_changed,
            live: cluster.live().clone(),
            probes: cluster.probes().clone(),
            bus: cluster.bus().clone(),
        };
        let listen = events::listen(url.to_owned(), channel, dispatcher, stop.clone());
        tasks.push(tokio::spawn(listen));
    }
    tasks
}

/// Re-signs the release metadata before its timestamp runs out, so agents never see it
/// expire while the server is up; one replica at a time does it.
async fn keep_metadata_fresh(
    db: Db,
    data_dir: PathBuf,
    lifetime: Duration,
    stop: CancellationToken,
) {
    let period = METADATA_CHECK_INTERVAL
        .min(lifetime / 4)
        .max(Duration::from_secs(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let refresh = release::refresh_metadata(&db, &data_dir, lifetime);
        match leader::unless_taken(&db, leader::METADATA_SIGNING, refresh).await {
            Ok(Some(true)) => tracing::info!("re-signed the release metadata before it expired"),
            Ok(Some(false) | None) => {}
            Err(error) => tracing::error!(%error, "cannot re-sign the release metadata"),
        }
    }
}
