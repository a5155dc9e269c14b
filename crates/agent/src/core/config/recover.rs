//! Recovery of a damaged or missing `config.json`: the file is set aside (never overwritten),
//! rebuilt from `config.last-good.json` with the damaged file's fields that still parse, or
//! restored from that copy when it is missing. Nothing here migrates a schema or reaches the
//! network.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use cms_platform::clock;
use cms_platform::fs::{read_no_follow, write_atomic};

use super::{
    Config, ConfigError, ConfigNotice, LAST_GOOD_NAME, Unusable, encode, io_error, save_config,
};

/// `config.json` is missing: a fresh install, or a lost file whose last-good copy is restored.
pub(super) fn restore_missing(
    path: &Path,
    notices: &mut Vec<ConfigNotice>,
) -> Result<Config, ConfigError> {
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
pub(super) fn recover(
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

/// `config.last-good.json` beside `path`.
fn last_good_path(path: &Path) -> PathBuf {
    path.with_file_name(LAST_GOOD_NAME)
}

/// The last-good copy, when it exists and parses as this schema.
fn read_last_good(path: &Path) -> Option<Config> {
    let bytes = read_no_follow(&last_good_path(path)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Makes the last-good copy match a configuration that just loaded cleanly (an install from
/// before the copy existed, or a hand edit).
pub(super) fn keep_last_good(path: &Path, config: &Config) {
    if read_last_good(path).as_ref() != Some(config) {
        write_last_good(path, config);
    }
}

pub(super) fn write_last_good(path: &Path, config: &Config) {
    let copy = last_good_path(path);
    if let Err(err) = encode(config).and_then(|bytes| write_atomic(&copy, &bytes)) {
        tracing::warn!(path = %copy.display(), error = %err, "cannot write the last-good copy of config.json");
    }
}

pub(super) fn set_aside(
    path: &Path,
    label: &str,
    why: &Unusable,
) -> Result<ConfigNotice, ConfigError> {
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
