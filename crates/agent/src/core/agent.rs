//! `Agent`: ties state, configuration, error reporting and the backend together.
//!
//! Every periodic job (heartbeat, update polling, lock heartbeat), the WebSocket client, the
//! event handler and the OS-signal watcher is a task on one `CancellationToken`.
//! [`Agent::graceful_shutdown`] may be called from any task; `run` then joins the tasks with a
//! timeout, releases the lock, logs `Shutdown complete` and returns, so `main` can exit 0. A
//! task that dies (`supervisor`) is reported and shuts the agent down the same way, and `run`
//! says so, for `main` to exit non-zero and the service manager to restart the agent.
//! Nothing here calls `process::exit`, and nothing here logs a credential.
//!
//! This file keeps the lifecycle (build, run, serve, shut down), registration and heartbeats;
//! `tasks` holds the loops, `control` the answers to IPC requests, `metrics` the resource
//! figures of the heartbeat, and the update sequencing is `core::update::UpdateController`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cms_protocol::{BUILD_VERSION, RegisterRequest, StatusReport, UpdateInfo};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::core::agent_state::{AgentState, StateCell};
use crate::core::config::{self, ConfigManager, Intervals};
use crate::core::error_reporter::ErrorReporter;
use crate::core::net_health::NetHealth;
use crate::core::storage::StateManager;
use crate::core::supervisor::{Role, TaskDeath, Tasks};
use crate::core::update::{OfferOutcome, Relaunch, UpdateController, UpdateDeps};
use crate::net::Credentials;
use crate::net::http_client::{HttpClient, HttpError};
use crate::net::servers::ServerList;
use crate::net::trust::{TrustError, TrustedMetadata};
use crate::net::ws_client::{WSClient, WsLink};
use crate::net::{Transport, TransportError, UrlError, backoff};
use crate::system::{self, lock_manager::LockManager};

/// The release-signing root an installer ships beside the exe.
const SHIPPED_ROOT: &str = "root.json";

mod control;
mod identity;
mod metrics;
mod tasks;

use control::ipc_server;
use metrics::MetricsSampler;
use tasks::{lock_heartbeat, settle_update_journal, spawn_services, watch_os_signals};

/// How long shutdown waits for tasks before aborting them.
const SHUTDOWN_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Ceiling of the registration retry backoff.
const REGISTER_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why the agent cannot be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No backend URL in config.json or on the command line.
    #[error("no server URL configured: pass --server URL once (it is saved in config.json)")]
    NoServer,
    /// The configured URL is unusable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The HTTP client cannot be set up.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The trusted root given cannot be pinned.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// `--ca-cert` or `--proxy` is unusable.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Settings for one run that do not live in config.json.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Timers in effect (config.json with command-line overrides applied).
    pub intervals: Intervals,
    /// `--trusted-root`: the TUF root to pin before anything is fetched.
    pub trusted_root: Option<std::path::PathBuf>,
    /// How the updater starts the next version: as a process with these arguments, or as the
    /// service.
    pub relaunch: Relaunch,
}

/// How [`Agent::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// A requested stop (signal, IPC, hand-over to the updater).
    Stopped,
    /// A task died; it was reported and the agent stopped so that it is restarted.
    TaskDied,
}

/// The running agent; cheap to clone into tasks.
#[derive(Debug, Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: StateCell,
    config: Mutex<ConfigManager>,
    http: HttpClient,
    trust: TrustedMetadata,
    ws: WSClient,
    ws_link: WsLink,
    reporter: Arc<ErrorReporter>,
    net_health: NetHealth,
    network_route: String,
    lock: LockManager,
    storage: StateManager,
    cancel: CancellationToken,
    /// Stops the tasks that talk to the backend: with `cancel`, or when the agent is revoked.
    backend: CancellationToken,
    options: AgentOptions,
    metrics: Mutex<MetricsSampler>,
    /// Set once `backend-contact.json` names this process (the updater's health check).
    contact_recorded: AtomicBool,
    /// When updates may start, and what is recorded and reported around them.
    updates: UpdateController,
}

impl Agent {
    /// Builds the agent around an acquired lock and a loaded configuration.
    pub fn new(
        storage: StateManager,
        config: ConfigManager,
        reporter: Arc<ErrorReporter>,
        lock: LockManager,
        options: AgentOptions,
    ) -> Result<Self, AgentError> {
        let servers = config.config().servers();
        if servers.is_empty() {
            return Err(AgentError::NoServer);
        }
        let servers = Arc::new(ServerList::parse(&servers)?);
        let transport = Transport::new(
            servers.primary(),
            config.config().ca_certs_pem.as_deref(),
            config.config().proxy.as_ref(),
        )?;
        let network_route = transport.route.label();
        tracing::info!(route = %network_route, extra_ca = config.config().ca_certs_pem.is_some(), "network route to the backend");
        let http = HttpClient::with_servers(servers.clone(), &transport)?;
        if let Some(credentials) = config.config().credentials.clone() {
            http.set_credentials(credentials);
        }
        let trust = TrustedMetadata::new(storage.tuf_dir(), servers.clone(), http.client().clone());
        match &options.trusted_root {
            Some(root) => trust.pin_root_file(root)?,
            None => pin_shipped_root(&trust),
        }
        let ws_max = Duration::from_secs(options.intervals.ws_reconnect_max_secs);
        let ws = WSClient::new(servers, ws_max, &transport);
        let cancel = CancellationToken::new();
        let inner = Inner {
            state: StateCell::default(),
            config: Mutex::new(config),
            http,
            trust,
            ws_link: ws.link(),
            ws,
            reporter,
            net_health: NetHealth::default(),
            network_route,
            lock,
            storage,
            backend: cancel.child_token(),
            cancel,
            options,
            metrics: Mutex::new(MetricsSampler::new()),
            contact_recorded: AtomicBool::new(false),
            updates: UpdateController::default(),
        };
        Ok(Agent {
            inner: Arc::new(inner),
        })
    }

    /// The agent's state right now.
    pub fn state(&self) -> AgentState {
        self.inner.state.get()
    }

    /// Asks every task to stop; `run` finishes the shutdown. Safe from any task, any number of
    /// times.
    pub fn graceful_shutdown(&self) {
        self.inner.graceful_shutdown();
    }

    /// Runs until a shutdown is requested or a task dies, then stops everything in order.
    pub async fn run(self) -> RunOutcome {
        let inner = &self.inner;
        let mut tasks = Tasks::default();
        let signals = watch_os_signals(inner.clone());
        tasks.spawn("os_signals", Role::MayFinish, signals);
        let heartbeat = lock_heartbeat(inner.clone());
        tasks.spawn("lock_heartbeat", Role::Essential, heartbeat);
        tasks.spawn("ipc_server", Role::MayFinish, ipc_server(inner.clone()));
        // Let them run once, so the stop signals are handled before anything is logged as up.
        tokio::task::yield_now().await;
        let mut services = Tasks::default();
        let death = inner.serve(&mut tasks, &mut services).await;
        if let Some(death) = &death {
            inner.after_death(death).await;
        }
        inner.finish_shutdown(services, tasks).await;
        match death {
            Some(_) => RunOutcome::TaskDied,
            None => RunOutcome::Stopped,
        }
    }
}

impl Inner {
    /// Registers, goes `IDLE` and runs the `services` that talk to the backend until a stop
    /// is requested; the task death that ended it first, if one did. A revoked agent stops its
    /// services (or, revoked at an earlier run, never starts them) and waits for a stop.
    async fn serve(self: &Arc<Self>, tasks: &mut Tasks, services: &mut Tasks) -> Option<TaskDeath> {
        let registered = tokio::select! {
            registered = self.register_unless_revoked() => registered,
            death = tasks.next_death(&self.cancel) => return Some(death),
        };
        if registered {
            self.pin_trusted_root().await;
            let _ = self.state.set_state(AgentState::Idle);
            self.reporter.flush(&self.http).await;
            spawn_services(self, services);
            let settle = settle_update_journal(self.clone());
            tasks.spawn("settle_update_journal", Role::MayFinish, settle);
        }
        let mut conflicts = self.ws.identity_conflicts();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                Ok(()) = conflicts.changed() => {
                    let refused = conflicts.borrow_and_update().clone();
                    self.identity_conflict(refused).await;
                }
                () = self.http.revoked().cancelled(), if !self.backend.is_cancelled() => {
                    self.revoked();
                }
                death = tasks.next_death(&self.cancel) => return Some(death),
                death = services.next_death(&self.backend) => return Some(death),
            }
        }
    }
}

impl Inner {
    /// The plan's `graceful_shutdown`, first half: `SHUTTING_DOWN` and cancel every task; safe
    /// from any task. `finish_shutdown` does the rest.
    fn graceful_shutdown(&self) {
        if self.state.get() != AgentState::ShuttingDown {
            let _ = self.state.set_state(AgentState::ShuttingDown);
        }
        self.cancel.cancel();
    }

    /// The rest of the plan's `graceful_shutdown`, run by `Agent::run` once the tasks were
    /// cancelled: join them (the backend's services first, with a timeout), `STOPPED`, release
    /// the lock, `Shutdown complete`.
    async fn finish_shutdown(&self, services: Tasks, tasks: Tasks) {
        self.graceful_shutdown();
        let services_stopped = services.stop(SHUTDOWN_JOIN_TIMEOUT).await;
        if !tasks.stop(SHUTDOWN_JOIN_TIMEOUT).await || !services_stopped {
            tracing::warn!(
                timeout_secs = SHUTDOWN_JOIN_TIMEOUT.as_secs(),
                "tasks did not stop in time; aborting them"
            );
        }
        if let Some(open) = self.net_health.take_open() {
            self.reporter.store("network_problem", &open.message()); // sent at the next start
        }
        self.reporter.persist_drop_count();
        let _ = self.state.set_state(AgentState::Stopped);
        self.lock.release();
        tracing::info!(version = BUILD_VERSION, "Shutdown complete");
    }

    /// A task died: say so (a panic was already reported by the panic hook), deliver what is
    /// buffered while the backend may still be reachable, and stop.
    async fn after_death(&self, death: &TaskDeath) {
        tracing::error!(
            task = death.task,
            panicked = death.panic.is_some(),
            "{death}; stopping so that the service manager restarts the agent"
        );
        if death.panic.is_none() {
            let message = format!(
                "{death} while the agent was running; the agent stops with exit code 4 to be restarted"
            );
            let details = json!({ "task": death.task });
            self.report("task_died", &message, details).await;
        }
        self.reporter.flush(&self.http).await;
        self.graceful_shutdown();
    }

    async fn report(&self, kind: &str, message: &str, details: Value) {
        self.reporter
            .report(&self.http, kind, message, details)
            .await;
    }

    fn config(&self) -> MutexGuard<'_, ConfigManager> {
        config::lock(&self.config)
    }

    /// Registers unless credentials exist; retries with backoff. `false` if cancelled first.
    async fn register_until_done(&self) -> bool {
        let mut failures = 0;
        while !self.http.is_registered() {
            match self.http.register(&self.register_request()).await {
                Ok(identity) => {
                    self.save_identity(identity.agent_id, identity.agent_token);
                    self.backend_answered().await;
                }
                Err(err) => {
                    failures += 1;
                    self.exchange_failed(
                        "registration_failed",
                        &format!("registration failed: {err}"),
                        &err,
                        json!({ "attempt": failures }),
                    )
                    .await;
                    let delay = backoff(failures, REGISTER_MAX_BACKOFF);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        !self.cancel.is_cancelled()
    }

    /// Trust on first use, right after enrollment, when no root was shipped; a failure is
    /// reported and retried before the next update.
    async fn pin_trusted_root(&self) {
        if let Err(err) = self.trust.pin_server_root_if_missing().await {
            let message = format!("cannot pin the server's release-signing root: {err}");
            self.report("trust_root_failed", &message, json!({})).await;
        }
    }

    fn register_request(&self) -> RegisterRequest {
        let group = self.config().config().group.clone();
        RegisterRequest {
            hostname: sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into()),
            platform: system::PLATFORM.to_owned(),
            version: BUILD_VERSION.to_owned(),
            enrollment_token: self
                .config()
                .config()
                .enrollment_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
            group,
        }
    }

    fn save_identity(&self, agent_id: String, agent_token: String) {
        let credentials = Credentials {
            agent_id,
            agent_token,
        };
        tracing::info!(agent_id = %credentials.agent_id, "registered with the server");
        if let Err(err) = self
            .config()
            .update(|c| c.credentials = Some(credentials.clone()))
        {
            tracing::error!(error = %err, "cannot save the agent's identity; it will register again at next start");
        }
        self.http.set_credentials(credentials);
    }

    async fn send_status(&self) {
        let buffered = self.reporter.buffered();
        let metrics = self
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(buffered);
        let group = self.config().config().group.clone();
        let report = StatusReport {
            state: self.state.get(),
            version: BUILD_VERSION.to_owned(),
            metrics,
            network: Some(self.network_route.clone()),
            group,
            utc_offset_minutes: cms_platform::clock::local_utc_offset_minutes(),
        };
        let sent = self.deliver_status(&report).await;
        if sent.is_ok() {
            self.record_backend_contact();
            self.backend_answered().await;
        }
        match sent {
            Ok(()) if self.reporter.has_undelivered() => self.reporter.flush(&self.http).await,
            Ok(()) => tracing::debug!(state = %report.state, "heartbeat sent"),
            Err(HttpError::Unauthorized { .. }) => self.register_again().await,
            Err(HttpError::Revoked { .. }) => {} // `serve` stops the services

            Err(err) => {
                let message = err.to_string();
                self.exchange_failed("status_report_failed", &message, &err, Value::Null)
                    .await
            }
        }
    }

    /// The heartbeat on the WebSocket while it is up (its answer reaches the event loop),
    /// else over HTTP.
    async fn deliver_status(&self, report: &StatusReport) -> Result<(), HttpError> {
        match self.ws_link.heartbeat(report).await {
            Ok(_) => {
                tracing::debug!(state = %report.state, "heartbeat sent over the websocket");
                Ok(())
            }
            Err(err) => {
                tracing::debug!(reason = %err, "heartbeat over HTTP");
                self.http.send_status(report).await
            }
        }
    }

    /// A failed exchange with the backend: a problem on the way there (a refused certificate,
    /// the proxy) is logged once per change and reported when the backend answers again, so a
    /// fleet behind a broken proxy does not fill its buffers; anything else is reported now.
    async fn exchange_failed(
        &self,
        kind: &'static str,
        message: &str,
        err: &HttpError,
        details: Value,
    ) {
        match err.network_problem() {
            Some(problem) => self.net_health.failed(kind, problem),
            None => self.report(kind, message, details).await,
        }
    }

    /// The backend answered: report the network problem this ends, if there was one.
    async fn backend_answered(&self) {
        if let Some(ended) = self.net_health.recovered() {
            self.report("network_problem", &ended.message(), ended.details())
                .await;
        }
    }

    /// After the first heartbeat the backend accepted: `backend-contact.json` names this
    /// process and version, for the updater's health check (retried at the next heartbeat
    /// when it cannot be written).
    fn record_backend_contact(&self) {
        if self.contact_recorded.load(Ordering::Relaxed) {
            return;
        }
        let storage = self.storage.storage_path();
        match cms_platform::contact::record_backend_contact(storage, BUILD_VERSION) {
            Ok(()) => {
                self.contact_recorded.store(true, Ordering::Relaxed);
                tracing::info!(
                    version = BUILD_VERSION,
                    "the backend accepted this agent's heartbeat"
                );
            }
            Err(err) => tracing::warn!(error = %err, "cannot record the backend's contact"),
        }
    }

    /// The server no longer knows this agent (its database was reset): enroll anew.
    async fn register_again(&self) {
        tracing::warn!("the server rejected this agent's credential; registering again");
        self.http.clear_credentials();
        if let Err(err) = self.config().update(|c| c.credentials = None) {
            tracing::error!(error = %err, "cannot clear the rejected credential from config.json");
        }
        self.register_until_done().await;
    }

    /// The update controller's dependencies, lent for one call.
    fn update_deps<'a>(&'a self, shut_down: &'a (dyn Fn() + Sync)) -> UpdateDeps<'a> {
        UpdateDeps {
            state: &self.state,
            config: &self.config,
            http: &self.http,
            trust: &self.trust,
            reporter: &self.reporter,
            storage: &self.storage,
            cancel: &self.cancel,
            relaunch: &self.options.relaunch,
            retry_base: Duration::from_secs(self.options.intervals.update_retry_secs),
            shut_down,
        }
    }

    async fn check_for_update(&self, trigger: &'static str) {
        let shut_down = || self.graceful_shutdown();
        let deps = self.update_deps(&shut_down);
        self.updates.check_for_update(&deps, trigger).await;
    }

    async fn initiate_update(&self, trigger: &'static str, info: &UpdateInfo) -> OfferOutcome {
        let shut_down = || self.graceful_shutdown();
        let deps = self.update_deps(&shut_down);
        self.updates.initiate_update(&deps, trigger, info).await
    }
}

/// Debug builds only (the tests): with `CMS_AGENT_TEST_PANIC_FILE` set, the status loop panics
/// once the file it names exists, so a test can make a running agent panic when it chooses.
/// Release builds do not contain this code (docs/ARCHITECTURE.md, "What each test suite proves").
/// It stays in this file: `lifecycle.rs` checks that the report names the panic's place here.
#[cfg(debug_assertions)]
fn panic_if_a_test_asks() {
    const TEST_PANIC_FILE_ENV: &str = "CMS_AGENT_TEST_PANIC_FILE";
    let asked = std::env::var_os(TEST_PANIC_FILE_ENV)
        .is_some_and(|file| std::path::Path::new(&file).exists());
    if asked {
        panic!("test panic requested through {TEST_PANIC_FILE_ENV}");
    }
}

#[cfg(not(debug_assertions))]
fn panic_if_a_test_asks() {}

/// The backend's root that the installer put beside the exe (`root.json`, from `cargo xtask
/// installer --trusted-root`), pinned when none is: an install that was given no server (so no
/// `--trusted-root` at `--enable-autostart`) still never trusts a root on first use. A file that
/// cannot be pinned is logged and left alone; the server's root is then trusted on first use.
fn pin_shipped_root(trust: &TrustedMetadata) {
    if trust.has_root() {
        return;
    }
    let shipped = system::installed_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(SHIPPED_ROOT)))
        .filter(|root| root.is_file());
    let Some(root) = shipped else {
        return;
    };
    match trust.pin_root_file(&root) {
        Ok(()) => {
            tracing::info!(root = %root.display(), "pinned the release-signing root shipped beside the agent");
        }
        Err(err) => {
            tracing::error!(root = %root.display(), error = %err, "cannot pin the root shipped beside the agent; the server's root will be trusted on first use");
        }
    }
}
