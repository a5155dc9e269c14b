//! Schema versions of `config.json` and the migrations between them (`v1 -> v2 -> ...`): an
//! older file is backed up, migrated step by step and written; a file from a newer agent
//! (after a rollback) gives way to the backup that agent made before migrating. Nothing here
//! repairs a damaged file (that is `recover`) or reaches the network.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use cms_platform::fs::{read_no_follow, write_atomic};

use super::recover::set_aside;
use super::{CONFIG_VERSION, Config, ConfigNotice, Unusable, save_config};

/// One schema step: turns a version-`from` document into a version-`from + 1` one.
type Migration = fn(Map<String, Value>) -> Result<Map<String, Value>, String>;

/// The migration chain; entry `i` migrates from version `i + 1`.
const MIGRATIONS: [Migration; (CONFIG_VERSION - 1) as usize] =
    [migrate_config_v1_to_v2, migrate_config_v2_to_v3];

/// Parses `bytes` and brings it to the current schema, writing the result when it migrated.
pub(super) fn load_document(
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

/// v2 -> v3: the same fields; v3 stores the secrets (`credentials.agent_token`,
/// `pending_credentials.agent_token`, `enrollment_token`) sealed where the platform seals, which
/// the write after this step does. The version exists so that an older agent (after a
/// rollback) restores the v2 backup instead of reading a sealed value it cannot open.
fn migrate_config_v2_to_v3(v2: Map<String, Value>) -> Result<Map<String, Value>, String> {
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
    write_atomic(&backup, &read_no_follow(path)?)?;
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
    let bytes = read_no_follow(&backup).map_err(|_| Unusable::Future(version))?;
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
