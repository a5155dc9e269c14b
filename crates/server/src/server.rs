//! Wiring of `cms-server serve`: open the database, bind the listener, run until shutdown.
//!
//! This module must never parse the command line or install signal handlers (the binary does
//! both and hands over a [`CancellationToken`]); it only assembles the parts and runs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::api::{self, AppState};
use crate::cluster::Cluster;
use crate::db::{self, Db, DbError};
use crate::events::{self, Dispatcher, EventBus};
use crate::leader;
use crate::notify::{RELEASE_POLL_INTERVAL, ReleaseWatcher};
use crate::release;
use crate::tls::{self, TlsError, TlsFiles, TlsListener};
use crate::ws::Hub;

/// How often the server checks whether the timestamp metadata needs re-signing.
const METADATA_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Settings of one `serve` run.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address to listen on, such as `127.0.0.1:8080` (port 0 picks a free port).
    pub listen: String,
    /// Directory of the SQLite database and the release packages (`packages/`).
    pub data_dir: PathBuf,
    /// `postgres://...` (or `sqlite://...`) URL; `None` means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// When set, registration requires this token.
    pub enrollment_token: Option<String>,
    /// An agent without a WebSocket counts as offline after this long without contact.
    pub offline_after: Duration,
    /// Life of the timestamp metadata when the server re-signs it.
    pub timestamp_lifetime: Duration,
    /// `--tls-cert`/`--tls-key`: serve HTTPS and WSS instead of plain HTTP.
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("offline_after", &self.offline_after)
            .field("timestamp_lifetime", &self.timestamp_lifetime)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
    /// The TLS certificate or key cannot be served.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Runs the server until `shutdown` is cancelled; calls `on_listening` with the bound address
/// once the database is ready and the socket accepts connections.
pub async fn serve(
    config: ServeConfig,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => db::sqlite_url_for_dir(&config.data_dir)?,
    };
    let acceptor = config.tls.clone().map(tls::acceptor).transpose()?;
    let db = Db::connect(&url).await?;
    tracing::info!(backend = ?db.backend(), "database ready");
    let refresh = release::refresh_metadata(&db, &config.data_dir, config.timestamp_lifetime);
    leader::exclusively(&db, leader::METADATA_SIGNING, refresh).await?;
    let cluster = Cluster::new(db.clone(), EventBus::new(&db).await?);
    cluster.join().await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    let hub = Hub::new();
    let watcher_stop = shutdown.child_token();
    let background = spawn_background(&config, &url, &db, &cluster, &hub, &watcher_stop).await;
    let state = AppState::new(
        db.clone(),
        hub,
        cluster,
        config.data_dir.clone(),
        config.enrollment_token.clone(),
        config.offline_after,
        shutdown.clone(),
    );
    let app = api::router(state);
    tracing::info!(%addr, tls = acceptor.is_some(), enrollment = config.enrollment_token.is_some(), "listening");
    on_listening(addr);
    let result = match acceptor {
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor).map_err(ServeError::Http)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    };
    watcher_stop.cancel();
    for task in background {
        if let Err(error) = task.await {
            tracing::warn!(%error, "background task failed");
        }
    }
    db.close().await;
    result.map_err(ServeError::Http)
}

/// The release watcher, the metadata refresher, the replica lease and, on PostgreSQL, the
/// listener for the other replicas' events.
async fn spawn_background(
    config: &ServeConfig,
    url: &str,
    db: &Db,
    cluster: &Cluster,
    hub: &Hub,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let releases_changed = Arc::new(Notify::new());
    let channel = cluster.bus().channel().map(str::to_owned);
    // With a bus the watcher is told of every change; without one it polls.
    let poll = channel.is_none().then_some(RELEASE_POLL_INTERVAL);
    let watcher = ReleaseWatcher::new(db.clone(), hub.clone()).await;
    let mut tasks = vec![
        tokio::spawn(watcher.run(poll, releases_changed.clone(), stop.clone())),
        tokio::spawn(keep_metadata_fresh(
            db.clone(),
            config.data_dir.clone(),
            config.timestamp_lifetime,
            stop.clone(),
        )),
        tokio::spawn(cluster.clone().run_lease(stop.clone())),
    ];
    if let Some(channel) = channel {
        let dispatcher = Dispatcher {
            replica_id: cluster.replica_id(),
            hub: hub.clone(),
            releases_changed,
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
