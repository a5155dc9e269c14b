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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cms_platform::clock;
use cms_platform::fs::write_atomic;

use crate::net::proxy::ProxySetting;
use crate::net::{Credentials, EnrollmentToken, parse_server_url};

/// The schema version this build reads and writes.
pub const CONFIG_VERSION: u64 = 2;

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
        }
    }
}

impl Config {
    /// The backend's servers in the order they are tried: `server_urls`, else `server_url`.
    pub fn servers(&self) -> Vec<String> {
        if self.server_urls.is_empty() {
            self.server_url.iter().cloned().collect()
        } else {
            self.server_urls.clone()
        }
    }

    /// Saves the servers given on the command line (the first as `server_url`). An identity
    /// belongs to one backend, so a new first server forgets it and its enrollment token; the
    /// same server spelled differently keeps them.
    pub fn set_servers(&mut self, servers: &[String]) {
        let Some(first) = servers.first() else {
            return;
        };
        if !same_server(self.server_url.as_deref(), first) {
            self.server_url = Some(first.clone());
            self.credentials = None;
            self.enrollment_token = None;
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
    /// Loads the file (a missing one is a fresh install, unless a last-good copy says
    /// otherwise); returns notices for anything that had to be set aside or recovered.
    pub fn load(path: &Path) -> Result<(Self, Vec<ConfigNotice>), ConfigError> {
        let mut notices = Vec::new();
        let config = match read_optional(path)? {
            None => restore_missing(path, &mut notices)?,
            Some(bytes) => match load_document(path, &bytes, &mut notices) {
                Ok(config) => {
                    keep_last_good(path, &config);
                    config
                }
                Err(unusable) => recover(path, &bytes, &unusable, &mut notices)?,
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

/// The configuration behind the agent's mutex; a thread that panicked while holding it does
/// not take it away from the others.
pub fn lock(shared: &Mutex<ConfigManager>) -> MutexGuard<'_, ConfigManager> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error("read", path, source)),
    }
}

/// `config.json` is missing: a fresh install, or a lost file whose last-good copy is restored.
fn restore_missing(path: &Path, notices: &mut Vec<ConfigNotice>) -> Result<Config, ConfigError> {
    let Some(config) = read_last_good(path) else {
        return Ok(Config::default());
    };
    save_config(path, &config)?;
    let message = format!(
        "config.json was missing; restored from {}",
        last_good_path(path).display()
    );
    tracing::warn!(kind = "config_restored", "{message}");
    notices.push(ConfigNotice {
        kind: "config_restored",
        message,
    });
    Ok(config)
}

/// A damaged file is set aside, then rebuilt from the last-good copy and the damaged file's
/// fields that still parse; the result is written only when it holds anything at all.
fn recover(
    path: &Path,
    bytes: &[u8],
    unusable: &Unusable,
    notices: &mut Vec<ConfigNotice>,
) -> Result<Config, ConfigError> {
    let mut notice = set_aside(path, "corrupt", unusable)?;
    let last_good = read_last_good(path);
    let had_last_good = last_good.is_some();
    let salvaged = salvage(bytes, unusable, last_good.unwrap_or_default());
    if salvaged.config != Config::default() {
        save_config(path, &salvaged.config)?;
        let recovered = salvaged.describe(had_last_good);
        tracing::warn!(kind = unusable.kind(), %recovered, "config.json rebuilt");
        notice
            .message
            .push_str(&format!("; rebuilt from {recovered}"));
    }
    notices.push(notice);
    Ok(salvaged.config)
}

/// The outcome of rebuilding a damaged file.
#[derive(Debug)]
struct Salvaged {
    config: Config,
    /// Fields of the damaged file taken over (where they differ from the base).
    taken: Vec<String>,
    /// Fields of the damaged file that do not parse and were left at the base value.
    refused: Vec<String>,
}

impl Salvaged {
    fn describe(&self, had_last_good: bool) -> String {
        let base = if had_last_good {
            format!("the last good copy ({LAST_GOOD_NAME})")
        } else {
            "the defaults".to_owned()
        };
        let mut text = base;
        if !self.taken.is_empty() {
            text.push_str(&format!(
                " and the damaged file's {}",
                self.taken.join(", ")
            ));
        }
        if !self.refused.is_empty() {
            text.push_str(&format!(
                "; unreadable and not kept: {}",
                self.refused.join(", ")
            ));
        }
        text
    }
}

/// Lays every field of the damaged document that still parses (one level deep: a mistyped
/// `intervals.status_secs` costs only that field) over `base`. Only documents of this schema
/// (or with an unreadable `config_version`) are read field by field: another schema's fields
/// mean other things.
fn salvage(bytes: &[u8], unusable: &Unusable, base: Config) -> Salvaged {
    let mut salvaged = Salvaged {
        config: base,
        taken: Vec::new(),
        refused: Vec::new(),
    };
    let of_this_schema = matches!(unusable, Unusable::Schema(_) | Unusable::BadVersion);
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(bytes) else {
        return salvaged;
    };
    if !of_this_schema {
        return salvaged;
    }
    for (key, value) in fields.into_iter().filter(|(k, _)| k != "config_version") {
        if salvaged.try_take(&[&key], value.clone()) {
            continue;
        }
        match value {
            Value::Object(inner) => {
                for (sub, value) in inner {
                    salvaged.try_take(&[&key, &sub], value);
                }
            }
            _ => salvaged.refused.push(key),
        }
    }
    salvaged
}

impl Salvaged {
    /// Sets `path` to `value` if the result still parses; records what happened.
    fn try_take(&mut self, path: &[&str], value: Value) -> bool {
        let name = path.join(".");
        let Ok(Value::Object(mut document)) = serde_json::to_value(&self.config) else {
            return false;
        };
        set_path(&mut document, path, value);
        match serde_json::from_value::<Config>(Value::Object(document)) {
            Ok(candidate) => {
                if candidate != self.config {
                    self.config = candidate;
                    self.taken.push(name);
                }
                true
            }
            Err(_) => {
                if path.len() > 1 {
                    self.refused.push(name);
                }
                false
            }
        }
    }
}

fn set_path(document: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            document.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = document
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                set_path(inner, rest, value);
            }
        }
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

/// `config.last-good.json` beside `path`.
fn last_good_path(path: &Path) -> PathBuf {
    path.with_file_name(LAST_GOOD_NAME)
}

/// The last-good copy, when it exists and parses as this schema.
fn read_last_good(path: &Path) -> Option<Config> {
    let bytes = fs::read(last_good_path(path)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Makes the last-good copy match a configuration that just loaded cleanly (an install from
/// before the copy existed, or a hand edit).
fn keep_last_good(path: &Path, config: &Config) {
    if read_last_good(path).as_ref() != Some(config) {
        write_last_good(path, config);
    }
}

fn write_last_good(path: &Path, config: &Config) {
    let copy = last_good_path(path);
    if let Err(err) = encode(config).and_then(|bytes| write_atomic(&copy, &bytes)) {
        tracing::warn!(path = %copy.display(), error = %err, "cannot write the last-good copy of config.json");
    }
}

fn set_aside(path: &Path, label: &str, why: &Unusable) -> Result<ConfigNotice, ConfigError> {
    let aside = free_aside_name(path, label);
    fs::rename(path, &aside).map_err(|source| io_error("set aside", path, source))?;
    let message = format!("config.json {why}; kept aside as {}", aside.display());
    tracing::error!(kind = why.kind(), kept_as = %aside.display(), "{message}");
    Ok(ConfigNotice {
        kind: why.kind(),
        message,
    })
}

/// `config.json.<label>-<time>`, with `-2`, `-3`... when a file set aside in the same second
/// already has that name (it is never overwritten).
fn free_aside_name(path: &Path, label: &str) -> PathBuf {
    let stem = format!("config.json.{label}-{}", clock::now_file_stamp());
    let mut aside = path.with_file_name(&stem);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = path.with_file_name(format!("{stem}-{n}"));
    }
    aside
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
    fn one_server_is_saved_as_before_and_a_list_beside_it() {
        let credentials = Credentials {
            agent_id: "a1".into(),
            agent_token: "t1".into(),
        };
        let mut config = Config {
            server_url: Some("https://a.example".into()),
            credentials: Some(credentials),
            ..Config::default()
        };
        config.set_servers(&["https://a.example".into()]);
        assert!(config.server_urls.is_empty());
        assert!(config.credentials.is_some(), "same server, same identity");
        let json = serde_json::to_value(&config).unwrap();
        assert!(json.get("server_urls").is_none(), "{json}");

        let replicas = [
            "https://a.example".to_owned(),
            "https://b.example".to_owned(),
        ];
        config.set_servers(&replicas);
        assert_eq!(config.servers(), replicas);
        assert!(
            config.credentials.is_some(),
            "the first server is unchanged"
        );
        assert_eq!(config.server_url.as_deref(), Some("https://a.example"));

        config.set_servers(&["https://c.example".into()]);
        assert_eq!(config.servers(), ["https://c.example"]);
        assert!(
            config.credentials.is_none(),
            "another backend, another identity"
        );
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

    /// A saved configuration with a server and an identity, as a registered agent leaves it.
    fn registered(path: &Path) -> Config {
        let (mut manager, _) = ConfigManager::load(path).unwrap();
        manager
            .update(|c| {
                c.server_url = Some("http://127.0.0.1:4".into());
                c.credentials = Some(Credentials {
                    agent_id: "a4".into(),
                    agent_token: "t4".into(),
                });
                c.intervals.update_poll_secs = 900;
            })
            .unwrap();
        manager.config().clone()
    }

    #[test]
    fn every_kind_of_damage_is_rebuilt_from_the_last_good_copy() {
        let damages: [&[u8]; 5] = [
            b"",
            b"{\"config_version\": 2, \"server_url\": \"http://127.0.0.1:4\", \"credent",
            b"garbage \xff\xfe",
            &[0u8; 512],
            b"[1, 2, 3]",
        ];
        for damage in damages {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.json");
            let saved = registered(&path);
            fs::write(&path, damage).unwrap();
            let (manager, notices) = ConfigManager::load(&path).unwrap();
            assert_eq!(manager.config(), &saved, "damage {damage:?}");
            assert_eq!(notices[0].kind, "config_corrupt");
            assert!(notices[0].message.contains(LAST_GOOD_NAME), "{notices:?}");
            fs::write(&path, damage).unwrap();
            ConfigManager::load(&path).unwrap(); // the same second: both copies are kept
            let aside = fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains("corrupt")
                })
                .count();
            assert_eq!(aside, 2);
            let rewritten: Config = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            assert_eq!(rewritten, saved);
        }
    }

    #[test]
    fn a_mistyped_field_costs_only_that_field_even_without_a_last_good_copy() {
        let text = r#"{"config_version":2,"server_url":"http://127.0.0.1:5",
            "credentials":{"agent_id":"a5","agent_token":"t5"},
            "intervals":{"status_secs":"sixty","update_poll_secs":900},"error_buffer_max_reports":"many"}"#;
        let (_dir, path, manager, notices) = load_text(text);
        let config = manager.config();
        assert_eq!(config.server_url.as_deref(), Some("http://127.0.0.1:5"));
        assert_eq!(config.credentials.as_ref().unwrap().agent_id, "a5");
        assert_eq!(config.intervals.update_poll_secs, 900);
        assert_eq!(config.intervals.status_secs, DEFAULT_STATUS_SECS);
        assert_eq!(config.error_buffer_max_reports, DEFAULT_ERROR_BUFFER_MAX);
        let message = &notices[0].message;
        assert!(message.contains("intervals.status_secs"), "{message}");
        assert!(message.contains("error_buffer_max_reports"), "{message}");
        assert!(message.contains("kept aside"), "{message}");
        let rewritten: Config = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(&rewritten, config);
    }

    #[test]
    fn the_damaged_file_wins_over_the_last_good_copy_where_it_still_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        registered(&path);
        let edited = r#"{"config_version":2,"server_url":"http://127.0.0.1:6","intervals":{"status_secs":"x"}}"#;
        fs::write(&path, edited).unwrap();
        let (manager, _) = ConfigManager::load(&path).unwrap();
        assert_eq!(
            manager.config().server_url.as_deref(),
            Some("http://127.0.0.1:6")
        );
        assert_eq!(
            manager.config().credentials.as_ref().unwrap().agent_id,
            "a4"
        );
    }

    #[test]
    fn a_missing_file_beside_a_last_good_copy_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let saved = registered(&path);
        fs::remove_file(&path).unwrap();
        let (manager, notices) = ConfigManager::load(&path).unwrap();
        assert_eq!(manager.config(), &saved);
        assert_eq!(notices[0].kind, "config_restored");
        assert!(path.exists());
    }

    #[test]
    fn the_enrollment_token_is_kept_but_never_shown_by_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let (mut manager, _) = ConfigManager::load(&path).unwrap();
        manager
            .update(|c| c.enrollment_token = Some(EnrollmentToken::new("enroll-me".into())))
            .unwrap();
        assert!(!format!("{manager:?}").contains("enroll-me"));
        let (reloaded, _) = ConfigManager::load(&path).unwrap();
        let token = reloaded.config().enrollment_token.as_ref().unwrap();
        assert_eq!(token.expose(), "enroll-me");
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
