//! `ConfigManager`: `config.json`, its schema versions and their migrations.
//!
//! Loading never loses data: an older schema is backed up, migrated step by step
//! (`v1 -> v2 -> ...`) and written atomically; a file that cannot be parsed or migrated is
//! renamed aside (never overwritten) and reported; a file from a newer agent (after a rollback)
//! is set aside in favour of the backup that newer agent made before migrating.
//!
//! Damage never costs the agent its identity: every save also writes `config.last-good.json`,
//! and a damaged `config.json` (empty, truncated, garbage, NUL bytes, one mistyped field) is
//! rebuilt from that copy with every field of the damaged file that still parses on top, so
//! the server URL and the credential survive and no second identity is ever registered. A
//! missing `config.json` beside a last-good copy is restored from it. This module must never
//! reach the network or decide whether the agent can run: it returns what it found.
//!
//! Secrets are sealed at rest where the platform seals (Windows: DPAPI, machine scope for the
//! machine-wide agent, user scope for a per-user one; `net::sealed`): every read and write of
//! the file runs in the manager's scope, and a plain secret read (a file from before sealing)
//! is written again, sealed, at once. Schema v3 is the first with sealed values, so an older
//! agent after a rollback restores the v2 backup made before migrating instead of reading a
//! value it cannot open.
//!
//! This file holds the schema and `ConfigManager`; `migrate` the schema steps
//! (`migrate_config_v1_to_v2`, `migrate_config_v2_to_v3`), `recover` the repair of a damaged or
//! missing file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use cms_platform::fs::{read_no_follow, write_atomic};

mod migrate;
mod recover;

pub use migrate::backup_path;
use migrate::load_document;
use recover::{keep_last_good, recover, restore_missing, write_last_good};

use crate::core::metered::MeteredMode;
use crate::net::proxy::ProxySetting;
use crate::net::sealed::{self, Sealing};
use crate::net::{Credentials, EnrollmentToken, parse_server_url};
use crate::system::SecretScope;

/// The schema version this build reads and writes (3: secrets sealed at rest).
pub const CONFIG_VERSION: u64 = 3;

/// Defaults chosen for fleets: a heartbeat a minute, a poll an hour (pushes cover the rest).
const DEFAULT_STATUS_SECS: u64 = 60;
const DEFAULT_UPDATE_POLL_SECS: u64 = 3600;
const DEFAULT_LOCK_HEARTBEAT_SECS: u64 = 60;
const DEFAULT_WS_RECONNECT_MAX_SECS: u64 = 60;
const DEFAULT_ERROR_BUFFER_MAX: usize = 1000;
/// First wait before retrying an update the updater aborted; doubles with each abort.
const DEFAULT_UPDATE_RETRY_SECS: u64 = 600;
/// Name of the copy of the last configuration written, beside `config.json`.
const LAST_GOOD_NAME: &str = "config.last-good.json";

/// Timers, in seconds; the command line may override the first two for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Intervals {
    /// Heartbeat to the backend.
    pub status_secs: u64,
    /// Update check when no push arrives.
    pub update_poll_secs: u64,
    /// Rewrite of the lock file's timestamp.
    pub lock_heartbeat_secs: u64,
    /// Ceiling of the WebSocket reconnect backoff.
    pub ws_reconnect_max_secs: u64,
    /// First wait before retrying an update that the updater aborted before the swap.
    pub update_retry_secs: u64,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            status_secs: DEFAULT_STATUS_SECS,
            update_poll_secs: DEFAULT_UPDATE_POLL_SECS,
            lock_heartbeat_secs: DEFAULT_LOCK_HEARTBEAT_SECS,
            ws_reconnect_max_secs: DEFAULT_WS_RECONNECT_MAX_SECS,
            update_retry_secs: DEFAULT_UPDATE_RETRY_SECS,
        }
    }
}

/// The current schema (version [`CONFIG_VERSION`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Schema version; always [`CONFIG_VERSION`] once loaded.
    pub config_version: u64,
    /// Agent version that last ran with this file (written at first start and after updates).
    #[serde(default)]
    pub current_version: Option<String>,
    /// Backend base URL (the first of `server_urls` when there are several).
    #[serde(default)]
    pub server_url: Option<String>,
    /// Every server of the backend (replicas), in the order they are tried, when more than one
    /// was given; `server_url` alone otherwise. An older agent reads `server_url` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_urls: Vec<String>,
    /// Identity from registration.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// `--ca-cert`: PEM certificates trusted for the backend besides the OS trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certs_pem: Option<String>,
    /// `--proxy`: `none` or a proxy URL (its password is as secret as the credential);
    /// absent means the system's proxy setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySetting>,
    /// Timers.
    #[serde(default)]
    pub intervals: Intervals,
    /// Most error reports kept on disk while the backend is unreachable.
    #[serde(default = "default_error_buffer_max")]
    pub error_buffer_max_reports: usize,
    /// Free bytes to leave on the disk beyond the 3x package size an update needs.
    #[serde(default)]
    pub update_reserve_free_bytes: u64,
    /// Versions that failed their health check here and were rolled back: never retried, so a
    /// bad release cannot put the machine in an update loop (publish a newer one instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back_versions: Vec<String>,
    /// Enrollment token given once, kept for enrolling again after the server forgot this
    /// agent (it never travels on a command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<EnrollmentToken>,
    /// An update that the updater aborted before the swap (the release never ran): retried
    /// with backoff instead of being refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_retry: Option<UpdateRetry>,
    // Identity (agent identities an operator manages).
    /// Set once the server answered that an operator revoked this agent: it no longer contacts
    /// the backend, and never registers again by itself, until `--reset-identity`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity_revoked: bool,
    /// A credential rotation under way: the credential this agent chose and wrote here before
    /// proposing it to the server; it replaces `credentials` once the server has stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_credentials: Option<Credentials>,
    /// `--group`: the agent's group, sent at registration and in heartbeats (the server's
    /// `default` when absent; an operator's assignment there wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `--download-limit`: the most KiB per second an update's package is downloaded at
    /// (absent: no limit). An older agent ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_limit_kbps: Option<u32>,
    /// `--metered`: `yes` or `no` (absent: `auto`, ask the OS). An older agent ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metered: Option<MeteredMode>,
}

/// When an aborted update may be tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRetry {
    /// The version whose update was aborted.
    pub version: String,
    /// Aborted attempts so far.
    pub aborted: u32,
    /// Not tried again before this time (seconds since the Unix epoch).
    pub not_before_unix: u64,
}

fn default_error_buffer_max() -> usize {
    DEFAULT_ERROR_BUFFER_MAX
}

impl Default for Config {
    fn default() -> Self {
        Config {
            config_version: CONFIG_VERSION,
            current_version: None,
            server_url: None,
            server_urls: Vec::new(),
            credentials: None,
            ca_certs_pem: None,
            proxy: None,
            intervals: Intervals::default(),
            error_buffer_max_reports: DEFAULT_ERROR_BUFFER_MAX,
            update_reserve_free_bytes: 0,
            rolled_back_versions: Vec::new(),
            enrollment_token: None,
            update_retry: None,
            identity_revoked: false,
            pending_credentials: None,
            group: None,
            download_limit_kbps: None,
            metered: None,
        }
    }
}

impl Config {
    /// `--reset-identity`: forgets the agent id, its credential and its revocation (the
    /// server, settings and pinned root stay), so the next start registers anew; the id
    /// forgotten, if there was one.
    pub fn forget_identity(&mut self) -> Option<String> {
        self.identity_revoked = false;
        self.pending_credentials = None;
        self.credentials.take().map(|c| c.agent_id)
    }

    /// The backend's servers in the order they are tried: `server_urls`, else `server_url`.
    pub fn servers(&self) -> Vec<String> {
        if self.server_urls.is_empty() {
            self.server_url.iter().cloned().collect()
        } else {
            self.server_urls.clone()
        }
    }

    /// Saves the servers given on the command line (the first as `server_url`). An identity
    /// belongs to one backend, so a new first server forgets it, its enrollment token and its
    /// revocation; the same server spelled differently keeps them.
    pub fn set_servers(&mut self, servers: &[String]) {
        let Some(first) = servers.first() else {
            return;
        };
        if !same_server(self.server_url.as_deref(), first) {
            self.server_url = Some(first.clone());
            self.credentials = None;
            self.enrollment_token = None;
            self.identity_revoked = false;
        }
        self.server_urls = if servers.len() > 1 {
            servers.to_vec()
        } else {
            Vec::new()
        };
    }
}

/// Whether `saved` and `given` name the same server once parsed.
fn same_server(saved: Option<&str>, given: &str) -> bool {
    let parse = |url: &str| parse_server_url(url).ok();
    saved
        .and_then(parse)
        .is_some_and(|saved| Some(saved) == parse(given))
}

/// Something about the file on disk that an operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigNotice {
    /// Error-report kind (`config_corrupt`, `config_migration_failed`, `config_downgraded`,
    /// `config_restored`).
    pub kind: &'static str,
    /// What happened and where the old file is now.
    pub message: String,
}

/// Why `config.json` cannot be read or written at all (as opposed to read but unusable).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file system refused.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// Why one file could not be turned into a [`Config`]; the file is then set aside.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("config_version must be a positive integer")]
    BadVersion,
    #[error("migration v{from} -> v{to} failed: {reason}")]
    Migration { from: u64, to: u64, reason: String },
    #[error("does not match schema v{CONFIG_VERSION}: {0}")]
    Schema(serde_json::Error),
    #[error("written by a newer agent (schema v{0}) and no v{CONFIG_VERSION} backup exists")]
    Future(u64),
}

impl Unusable {
    fn kind(&self) -> &'static str {
        match self {
            Unusable::Migration { .. } | Unusable::Future(_) => "config_migration_failed",
            _ => "config_corrupt",
        }
    }
}

/// Loads, migrates and saves `config.json`.
#[derive(Debug)]
pub struct ConfigManager {
    path: PathBuf,
    config: Config,
    /// Whose key seals the secrets: the machine's for the machine-wide agent, else the user's.
    scope: SecretScope,
}

impl ConfigManager {
    /// Loads the file (a missing one is a fresh install, unless a last-good copy says
    /// otherwise), its secrets sealed in `scope` (the storage's: machine-wide or per user);
    /// returns notices for anything that had to be set aside or recovered.
    pub fn load(path: &Path, scope: SecretScope) -> Result<(Self, Vec<ConfigNotice>), ConfigError> {
        let mut notices = Vec::new();
        let Sealing { result, plain_seen } =
            sealed::sealing_as(scope, || load_or_recover(path, &mut notices));
        let config = result?;
        if plain_seen && path.exists() {
            // A secret written before sealing (or by hand): seal it now.
            sealed::sealing_as(scope, || save_config(path, &config)).result?;
            tracing::info!("config.json: secrets sealed at rest");
        }
        let manager = ConfigManager {
            path: path.to_path_buf(),
            config,
            scope,
        };
        Ok((manager, notices))
    }

    /// The loaded configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the configuration in memory and writes it atomically.
    pub fn update(&mut self, change: impl FnOnce(&mut Config)) -> Result<(), ConfigError> {
        let mut next = self.config.clone();
        change(&mut next);
        if next != self.config {
            sealed::sealing_as(self.scope, || save_config(&self.path, &next)).result?;
            self.config = next;
        }
        Ok(())
    }
}

/// The configuration in `path`, migrated, or recovered when it is damaged or missing.
fn load_or_recover(path: &Path, notices: &mut Vec<ConfigNotice>) -> Result<Config, ConfigError> {
    match read_optional(path)? {
        None => restore_missing(path, notices),
        Some(bytes) => match load_document(path, &bytes, notices) {
            Ok(config) => {
                keep_last_good(path, &config);
                Ok(config)
            }
            Err(unusable) => recover(path, &bytes, &unusable, notices),
        },
    }
}

/// The configuration behind the agent's mutex; a thread that panicked while holding it does
/// not take it away from the others.
pub fn lock(shared: &Mutex<ConfigManager>) -> MutexGuard<'_, ConfigManager> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    match read_no_follow(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error("read", path, source)),
    }
}

/// Writes `config.json`, then its last-good copy.
fn save_config(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let bytes = encode(config).map_err(|e| io_error("encode", path, e))?;
    write_atomic(path, &bytes).map_err(|source| io_error("write", path, source))?;
    write_last_good(path, config);
    Ok(())
}

fn encode(config: &Config) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> ConfigError {
    ConfigError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
