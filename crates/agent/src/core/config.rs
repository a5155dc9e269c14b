//! `ConfigManager`: `config.json`, its schema versions and their migrations.
//!
//! Loading never loses data: an older schema is backed up, migrated step by step
//! (`v1 -> v2 -> ...`) and written atomically; a file that cannot be parsed or migrated is
//! renamed aside (never overwritten) and reported; a file from a newer agent (after a rollback)
//! is set aside in favour of the backup that newer agent made before migrating. This module
//! must never reach the network or decide whether the agent can run: it returns what it found.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cms_platform::clock;
use cms_platform::fs::write_atomic;

use crate::net::Credentials;
use crate::net::proxy::ProxySetting;

/// The schema version this build reads and writes.
pub const CONFIG_VERSION: u64 = 2;

/// Defaults chosen for fleets: a heartbeat a minute, a poll an hour (pushes cover the rest).
const DEFAULT_STATUS_SECS: u64 = 60;
const DEFAULT_UPDATE_POLL_SECS: u64 = 3600;
const DEFAULT_LOCK_HEARTBEAT_SECS: u64 = 60;
const DEFAULT_WS_RECONNECT_MAX_SECS: u64 = 60;
const DEFAULT_ERROR_BUFFER_MAX: usize = 1000;

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
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            status_secs: DEFAULT_STATUS_SECS,
            update_poll_secs: DEFAULT_UPDATE_POLL_SECS,
            lock_heartbeat_secs: DEFAULT_LOCK_HEARTBEAT_SECS,
            ws_reconnect_max_secs: DEFAULT_WS_RECONNECT_MAX_SECS,
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
    /// Backend base URL.
    #[serde(default)]
    pub server_url: Option<String>,
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
            credentials: None,
            ca_certs_pem: None,
            proxy: None,
            intervals: Intervals::default(),
            error_buffer_max_reports: DEFAULT_ERROR_BUFFER_MAX,
            update_reserve_free_bytes: 0,
            rolled_back_versions: Vec::new(),
        }
    }
}

/// Something about the file on disk that an operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigNotice {
    /// Error-report kind (`config_corrupt`, `config_migration_failed`, `config_downgraded`).
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

/// One schema step: turns a version-`from` document into a version-`from + 1` one.
type Migration = fn(Map<String, Value>) -> Result<Map<String, Value>, String>;

/// The migration chain; entry `i` migrates from version `i + 1`.
const MIGRATIONS: [Migration; (CONFIG_VERSION - 1) as usize] = [migrate_config_v1_to_v2];

/// Loads, migrates and saves `config.json`.
#[derive(Debug)]
pub struct ConfigManager {
    path: PathBuf,
    config: Config,
}

impl ConfigManager {
    /// Loads the file (a missing one is a fresh install); returns notices for anything that
    /// had to be set aside or recovered.
    pub fn load(path: &Path) -> Result<(Self, Vec<ConfigNotice>), ConfigError> {
        let mut notices = Vec::new();
        let config = match read_optional(path)? {
            None => Config::default(),
            Some(bytes) => match load_document(path, &bytes, &mut notices) {
                Ok(config) => config,
                Err(unusable) => {
                    notices.push(set_aside(path, "corrupt", &unusable)?);
                    Config::default()
                }
            },
        };
        let manager = ConfigManager {
            path: path.to_path_buf(),
            config,
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
            save_config(&self.path, &next)?;
            self.config = next;
        }
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error("read", path, source)),
    }
}

/// Parses `bytes` and brings it to the current schema, writing the result when it migrated.
fn load_document(
    path: &Path,
    bytes: &[u8],
    notices: &mut Vec<ConfigNotice>,
) -> Result<Config, Unusable> {
    let document: Map<String, Value> = serde_json::from_slice(bytes).map_err(Unusable::Json)?;
    let version = schema_version(&document)?;
    if version > CONFIG_VERSION {
        return load_backup_of_newer(path, version, notices);
    }
    if version == CONFIG_VERSION {
        return serde_json::from_value(Value::Object(document)).map_err(Unusable::Schema);
    }
    backup_config(path, version).map_err(|e| Unusable::Migration {
        from: version,
        to: CONFIG_VERSION,
        reason: format!("cannot back up before migrating: {e}"),
    })?;
    let config = migrate(document, version)?;
    save_config(path, &config).map_err(|e| Unusable::Migration {
        from: version,
        to: CONFIG_VERSION,
        reason: e.to_string(),
    })?;
    tracing::info!(from = version, to = CONFIG_VERSION, "config migrated");
    Ok(config)
}

fn schema_version(document: &Map<String, Value>) -> Result<u64, Unusable> {
    match document.get("config_version") {
        None => Ok(1), // the first agents wrote no version field
        Some(value) => value
            .as_u64()
            .filter(|v| *v >= 1)
            .ok_or(Unusable::BadVersion),
    }
}

fn migrate(mut document: Map<String, Value>, from: u64) -> Result<Config, Unusable> {
    for version in from..CONFIG_VERSION {
        let step = MIGRATIONS[(version - 1) as usize];
        document = step(document).map_err(|reason| Unusable::Migration {
            from: version,
            to: version + 1,
            reason,
        })?;
        document.insert("config_version".into(), Value::from(version + 1));
    }
    serde_json::from_value(Value::Object(document)).map_err(Unusable::Schema)
}

/// v1 (flat: `server`, `version`, `status_interval`, `poll_interval`, `agent_id`,
/// `agent_token`) -> v2 (`server_url`, `current_version`, `intervals`, `credentials`).
fn migrate_config_v1_to_v2(mut v1: Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut v2 = Map::new();
    move_string(&mut v1, "server", &mut v2, "server_url")?;
    move_string(&mut v1, "version", &mut v2, "current_version")?;
    let mut intervals = Map::new();
    move_secs(&mut v1, "status_interval", &mut intervals, "status_secs")?;
    move_secs(&mut v1, "poll_interval", &mut intervals, "update_poll_secs")?;
    v2.insert("intervals".into(), Value::Object(intervals));
    let mut credentials = Map::new();
    move_string(&mut v1, "agent_id", &mut credentials, "agent_id")?;
    move_string(&mut v1, "agent_token", &mut credentials, "agent_token")?;
    match credentials.len() {
        0 => {}
        2 => {
            v2.insert("credentials".into(), Value::Object(credentials));
        }
        _ => return Err("agent_id and agent_token must both be present or both absent".into()),
    }
    Ok(v2)
}

fn move_string(
    from: &mut Map<String, Value>,
    old: &str,
    to: &mut Map<String, Value>,
    new: &str,
) -> Result<(), String> {
    match from.remove(old) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) => {
            to.insert(new.into(), Value::String(s));
            Ok(())
        }
        Some(other) => Err(format!("`{old}` must be a string, found {other}")),
    }
}

fn move_secs(
    from: &mut Map<String, Value>,
    old: &str,
    to: &mut Map<String, Value>,
    new: &str,
) -> Result<(), String> {
    match from.remove(old) {
        None | Some(Value::Null) => Ok(()),
        Some(value) => {
            let secs = value.as_u64().filter(|s| *s > 0).ok_or_else(|| {
                format!("`{old}` must be a positive number of seconds, found {value}")
            })?;
            to.insert(new.into(), Value::from(secs));
            Ok(())
        }
    }
}

/// Path of the copy made before migrating away from schema `version`.
pub fn backup_path(path: &Path, version: u64) -> PathBuf {
    path.with_file_name(format!("config.v{version}.bak.json"))
}

fn backup_config(path: &Path, version: u64) -> io::Result<()> {
    let backup = backup_path(path, version);
    write_atomic(&backup, &fs::read(path)?)?;
    tracing::info!(backup = %backup.display(), "config backed up before migration");
    Ok(())
}

/// After a rollback the file may be from a newer agent; that agent backed up our schema first.
fn load_backup_of_newer(
    path: &Path,
    version: u64,
    notices: &mut Vec<ConfigNotice>,
) -> Result<Config, Unusable> {
    let backup = backup_path(path, CONFIG_VERSION);
    let bytes = fs::read(&backup).map_err(|_| Unusable::Future(version))?;
    let config: Config = serde_json::from_slice(&bytes).map_err(|_| Unusable::Future(version))?;
    let aside = set_aside(path, &format!("v{version}"), &Unusable::Future(version))
        .map_err(|_| Unusable::Future(version))?;
    save_config(path, &config).map_err(|_| Unusable::Future(version))?;
    notices.push(ConfigNotice {
        kind: "config_downgraded",
        message: format!("{}; restored {}", aside.message, backup.display()),
    });
    Ok(config)
}

fn set_aside(path: &Path, label: &str, why: &Unusable) -> Result<ConfigNotice, ConfigError> {
    let aside = path.with_file_name(format!("config.json.{label}-{}", clock::now_file_stamp()));
    fs::rename(path, &aside).map_err(|source| io_error("set aside", path, source))?;
    let message = format!("config.json {why}; kept aside as {}", aside.display());
    tracing::error!(kind = why.kind(), kept_as = %aside.display(), "{message}");
    Ok(ConfigNotice {
        kind: why.kind(),
        message,
    })
}

fn save_config(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let mut bytes = serde_json::to_vec_pretty(config)
        .map_err(|e| io_error("encode", path, io::Error::other(e)))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| io_error("write", path, source))
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> ConfigError {
    ConfigError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> (tempfile::TempDir, PathBuf, ConfigManager, Vec<ConfigNotice>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, text).unwrap();
        let (manager, notices) = ConfigManager::load(&path).unwrap();
        (dir, path, manager, notices)
    }

    #[test]
    fn missing_file_is_a_fresh_install_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let (manager, notices) = ConfigManager::load(&path).unwrap();
        assert_eq!(manager.config(), &Config::default());
        assert!(notices.is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn v1_is_backed_up_migrated_and_saved() {
        let v1 = r#"{"config_version":1,"server":"http://127.0.0.1:1","version":"0.9.0",
            "status_interval":15,"poll_interval":120,"agent_id":"a1","agent_token":"t1"}"#;
        let (_dir, path, manager, notices) = load_text(v1);
        assert!(notices.is_empty());
        let config = manager.config();
        assert_eq!(config.config_version, 2);
        assert_eq!(config.server_url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(config.current_version.as_deref(), Some("0.9.0"));
        assert_eq!(config.intervals.status_secs, 15);
        assert_eq!(config.intervals.update_poll_secs, 120);
        assert_eq!(config.credentials.as_ref().unwrap().agent_token, "t1");
        assert_eq!(fs::read_to_string(backup_path(&path, 1)).unwrap(), v1);
        let saved: Config = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(&saved, config);
    }

    #[test]
    fn a_file_without_version_is_treated_as_v1() {
        let (_dir, _path, manager, _) = load_text(r#"{"server":"http://127.0.0.1:2"}"#);
        assert_eq!(
            manager.config().server_url.as_deref(),
            Some("http://127.0.0.1:2")
        );
    }

    #[test]
    fn garbage_is_kept_aside_byte_for_byte() {
        let (dir, path, manager, notices) = load_text("{ not json");
        assert_eq!(manager.config(), &Config::default());
        assert_eq!(notices[0].kind, "config_corrupt");
        assert!(!path.exists());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(fs::read_to_string(&aside[0]).unwrap(), "{ not json");
    }

    #[test]
    fn a_failing_migration_leaves_the_original_aside_and_unmodified() {
        let v1 = r#"{"config_version":1,"status_interval":"soon"}"#;
        let (dir, _path, _manager, notices) = load_text(v1);
        assert_eq!(notices[0].kind, "config_migration_failed");
        assert!(notices[0].message.contains("status_interval"));
        let kept = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("corrupt"))
            .unwrap();
        assert_eq!(fs::read_to_string(kept).unwrap(), v1);
    }

    #[test]
    fn a_newer_schema_falls_back_to_the_backup_made_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let ours = Config {
            server_url: Some("http://127.0.0.1:3".into()),
            ..Config::default()
        };
        fs::write(
            backup_path(&path, CONFIG_VERSION),
            serde_json::to_vec(&ours).unwrap(),
        )
        .unwrap();
        fs::write(&path, r#"{"config_version":3,"whatever":true}"#).unwrap();
        let (manager, notices) = ConfigManager::load(&path).unwrap();
        assert_eq!(manager.config(), &ours);
        assert_eq!(notices[0].kind, "config_downgraded");
    }

    #[test]
    fn a_newer_schema_without_backup_is_kept_aside() {
        let (_dir, _path, manager, notices) = load_text(r#"{"config_version":9}"#);
        assert_eq!(manager.config(), &Config::default());
        assert_eq!(notices[0].kind, "config_migration_failed");
    }

    #[test]
    fn update_writes_only_when_something_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let (mut manager, _) = ConfigManager::load(&path).unwrap();
        manager.update(|_| {}).unwrap();
        assert!(!path.exists());
        manager
            .update(|c| c.current_version = Some("1.2.3".into()))
            .unwrap();
        let (reloaded, _) = ConfigManager::load(&path).unwrap();
        assert_eq!(reloaded.config().current_version.as_deref(), Some("1.2.3"));
    }
}
