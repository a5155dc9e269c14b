//! Starting the agent: the lock, then config.json (migrated or recovered) with the command
//! line's settings applied and saved, retried while the disk is full. A failure after the lock
//! gives it back; nothing here runs the agent or talks to the backend.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cms_platform::fs::is_out_of_space;
use cms_protocol::{BUILD_VERSION, LockRecord};

use crate::core::agent::AgentError;
use crate::core::config::ConfigManager;
use crate::core::error_reporter::ErrorReporter;
use crate::core::storage::StateManager;
use crate::net::proxy::ProxySetting;
use crate::net::servers::ServerList;
use crate::net::tls::parse_ca_pem;
use crate::net::{EnrollmentToken, backoff};
use crate::system::lock_manager::{Acquire, LockManager};

use super::policy::RawPolicy;
use super::{Args, EXIT_LOCK_HELD, FORCE_LOCK_TIMEOUT};

/// Longest pause between two attempts to start on a full disk.
const DISK_FULL_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a start attempt found.
pub(super) enum Start {
    /// This process holds the lock; the configuration is loaded and the error reporter open.
    Ready(Box<ConfigManager>, Arc<ErrorReporter>),
    /// Another agent holds the lock.
    LockHeld(Option<LockRecord>),
}

/// Takes the lock, then loads the configuration; a failure after the lock gives it back, so
/// the attempt can be repeated.
pub(super) fn start(
    storage: &StateManager,
    lock: &LockManager,
    wait_for_lock: bool,
    cli: &Args,
    policy: &RawPolicy,
) -> Result<Start> {
    let acquired = if wait_for_lock {
        lock.acquire_with_timeout(FORCE_LOCK_TIMEOUT)?
    } else {
        lock.acquire()?
    };
    if let Acquire::HeldBy(holder) = acquired {
        return Ok(Start::LockHeld(holder));
    }
    let ready = load_config(storage, cli, policy);
    if ready.is_err() {
        lock.release();
    }
    ready
}

/// Loads config.json, opens the error buffer and applies the command line, then the machine's
/// policy over it (policy wins).
fn load_config(storage: &StateManager, cli: &Args, policy: &RawPolicy) -> Result<Start> {
    let (mut config, reporter) = open_config(storage)?;
    save_settings(&mut config, cli)?;
    super::policy::apply(&mut config, policy, &reporter)?;
    check_and_record_version(&mut config)?;
    Ok(Start::Ready(Box::new(config), reporter))
}

/// `config.json` (migrated or set aside as needed; what happened is buffered as error reports)
/// and the error reporter.
pub(super) fn open_config(storage: &StateManager) -> Result<(ConfigManager, Arc<ErrorReporter>)> {
    let (config, notices) = ConfigManager::load(&storage.config_path(), storage.secret_scope())?;
    let reporter = Arc::new(ErrorReporter::open(
        storage.error_buffer_path(),
        config.config().error_buffer_max_reports,
    ));
    for notice in &notices {
        reporter.store(notice.kind, &notice.message);
    }
    Ok((config, reporter))
}

pub(super) fn describe_holder(holder: Option<&LockRecord>) -> String {
    holder.map_or("unknown pid".into(), |r| {
        format!("pid {}, heartbeat {}", r.pid, r.timestamp)
    })
}

/// Another agent holds the lock: said, and exit code 1.
pub(super) fn lock_held(storage: &StateManager, holder: Option<&LockRecord>) -> u8 {
    let who = describe_holder(holder);
    tracing::error!(holder = %who, "Failed to acquire lock. Agent exiting.");
    eprintln!(
        "cms_agent: another agent is running on {} ({who})",
        storage.storage_path().display()
    );
    EXIT_LOCK_HELD
}

/// How long a start waited for disk space.
pub(super) struct DiskFullWait {
    waited: Duration,
    attempts: u32,
}

impl DiskFullWait {
    pub(super) fn describe(&self, storage: &Path) -> String {
        format!(
            "the storage path {} was full at start: the agent waited {} s ({} attempts) until it could write its lock and configuration",
            storage.display(),
            self.waited.as_secs(),
            self.attempts
        )
    }
}

/// Runs `attempt` again, backing off up to [`DISK_FULL_MAX_BACKOFF`], for as long as it fails
/// for want of disk space: a full disk passes, and exiting would leave the machine without an
/// agent when it does. Any other error is returned at once.
pub(super) fn retry_while_disk_full<T>(
    storage: &Path,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<(T, Option<DiskFullWait>)> {
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match attempt() {
            Ok(value) => {
                let waited = (failures > 0).then(|| DiskFullWait {
                    waited: started.elapsed(),
                    attempts: failures + 1,
                });
                return Ok((value, waited));
            }
            Err(err) if is_disk_full(&err) => {
                failures += 1;
                if failures == 1 {
                    tracing::error!(error = %format!("{err:#}"), "the storage path is full; waiting for free space");
                    eprintln!(
                        "cms_agent: {err:#}; waiting for free space in {}",
                        storage.display()
                    );
                }
                std::thread::sleep(backoff(failures, DISK_FULL_MAX_BACKOFF));
            }
            Err(err) => return Err(err),
        }
    }
}

fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(is_out_of_space)
}

/// Saves what the command line changes for good: the server (a new one forgets the identity
/// and its enrollment token; the same server spelled differently keeps them), the enrollment
/// token (kept for a later re-enrollment), `--group`, `--download-limit` (0: none),
/// `--metered` (`auto`: left out), `--ca-cert` and `--proxy`.
pub(super) fn save_settings(config: &mut ConfigManager, cli: &Args) -> Result<()> {
    if !cli.server.is_empty() {
        ServerList::parse(&cli.server)?;
        config.update(|c| c.set_servers(&cli.server))?;
    }
    if let Some(token) = &cli.enrollment_token {
        config.update(|c| c.enrollment_token = Some(EnrollmentToken::new(token.clone())))?;
    }
    if let Some(group) = &cli.group {
        config.update(|c| c.group = Some(group.clone()))?;
    }
    if let Some(limit) = cli.download_limit {
        config.update(|c| c.download_limit_kbps = (limit > 0).then_some(limit))?;
    }
    if let Some(mode) = cli.metered {
        config.update(|c| c.metered = mode.saved())?;
    }
    apply_network_settings(config, cli)
}

/// Requires a server (from config.json, the command line or policy), and records the version
/// at first start.
fn check_and_record_version(config: &mut ConfigManager) -> Result<()> {
    if config.config().server_url.is_none() {
        return Err(AgentError::NoServer.into()); // checked before the version is written
    }
    match config.config().current_version.as_deref() {
        None => config.update(|c| c.current_version = Some(BUILD_VERSION.to_owned()))?,
        Some(recorded) if recorded != BUILD_VERSION => {
            tracing::info!(
                recorded,
                running = BUILD_VERSION,
                "running a different version than config.json records"
            );
        }
        Some(_) => {}
    }
    Ok(())
}

/// `--ca-cert` and `--proxy`: checked, then saved in config.json.
fn apply_network_settings(config: &mut ConfigManager, cli: &Args) -> Result<()> {
    if let Some(file) = &cli.ca_cert {
        let pem = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read --ca-cert {}", file.display()))?;
        parse_ca_pem(&pem).with_context(|| format!("--ca-cert {}", file.display()))?;
        config.update(|c| c.ca_certs_pem = Some(pem))?;
    }
    if let Some(raw) = &cli.proxy {
        let proxy = ProxySetting::parse(raw)?;
        config.update(|c| c.proxy = Some(proxy))?;
    }
    Ok(())
}
