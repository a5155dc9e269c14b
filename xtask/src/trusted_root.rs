//! The backend's TUF root that `cargo xtask dist` and `cargo xtask installer` ship with
//! `--trusted-root FILE`: `cms-server`'s `DIR/tuf/metadata/root.json`. The installer embeds it
//! as `{app}\root.json`, and a per-machine install pins it at `--enable-autostart`, so the
//! service never trusts the first answer it gets from the network (issue 22, item 6).
//!
//! The check here is structural: a signed root (`signed._type` is `root`, a version, an expiry,
//! keys, the four roles each with key ids and a threshold) with at least one signature by a root
//! key. The agent verifies the signatures themselves when it pins the file.
//!
//! Must never: ship a file that is not a TUF root where the agent will look for one.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Map, Value};

use crate::flags;

/// Its file name in `dist/<platform>/` and in the install folder.
pub const FILE_NAME: &str = "root.json";

/// The roles a root delegates; each needs key ids and a threshold.
const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// A root file that passed [`check`].
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    source: PathBuf,
    bytes: Vec<u8>,
    version: u64,
}

impl TrustedRoot {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let version = check(&bytes)
            .with_context(|| format!("{} is not a signed TUF root", path.display()))?;
        Ok(TrustedRoot {
            source: path.to_path_buf(),
            bytes,
            version,
        })
    }

    /// `--trusted-root FILE` taken from `args`, read and checked.
    pub fn take_flag(args: &mut Vec<String>) -> Result<Option<Self>> {
        flags::take_value(args, &["--trusted-root"])?
            .map(|path| Self::read(Path::new(&path)))
            .transpose()
    }

    /// Where it was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Its root version (`signed.version`).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Writes the bytes as read (the agent compares roots by content) to `path`.
    pub fn write_to(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::write(path, &self.bytes).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Checks that `bytes` are a signed TUF root; returns its version.
fn check(bytes: &[u8]) -> Result<u64> {
    let file: Value = serde_json::from_slice(bytes).context("not JSON")?;
    let signed = object(&file, "signed")?;
    ensure!(
        signed.get("_type").and_then(Value::as_str) == Some("root"),
        "signed._type is not \"root\""
    );
    let version = signed
        .get("version")
        .and_then(Value::as_u64)
        .filter(|v| *v >= 1)
        .context("signed.version is not a positive integer")?;
    ensure!(
        signed.get("expires").is_some_and(Value::is_string),
        "signed.expires is missing"
    );
    let keys = map(signed, "keys")?;
    let roles = map(signed, "roles")?;
    let mut root_keys = Vec::new();
    for role in ROLES {
        let key_ids = role_key_ids(roles, role, keys)?;
        if role == "root" {
            root_keys = key_ids;
        }
    }
    let signatures = file
        .get("signatures")
        .and_then(Value::as_array)
        .context("no signatures")?;
    let signed_by_root = signatures.iter().any(|sig| {
        let key = sig.get("keyid").and_then(Value::as_str);
        let has_sig = sig.get("sig").and_then(Value::as_str).is_some();
        has_sig && key.is_some_and(|key| root_keys.iter().any(|k| k == key))
    });
    ensure!(signed_by_root, "no signature by a key of the root role");
    Ok(version)
}

/// The key ids of `role` in `roles`, each of which must be in `keys`, with a threshold no
/// larger than their number.
fn role_key_ids(
    roles: &Map<String, Value>,
    role: &str,
    keys: &Map<String, Value>,
) -> Result<Vec<String>> {
    let entry = roles
        .get(role)
        .with_context(|| format!("signed.roles has no {role}"))?;
    let ids: Vec<String> = entry
        .get("keyids")
        .and_then(Value::as_array)
        .context("no keyids")
        .and_then(|ids| {
            ids.iter()
                .map(|id| {
                    id.as_str()
                        .map(str::to_owned)
                        .context("a key id is not a string")
                })
                .collect()
        })
        .with_context(|| format!("signed.roles.{role}"))?;
    let threshold = entry.get("threshold").and_then(Value::as_u64).unwrap_or(0);
    if threshold == 0 || threshold > ids.len() as u64 {
        bail!(
            "signed.roles.{role}: threshold {threshold} with {} key ids",
            ids.len()
        );
    }
    match ids.iter().find(|id| !keys.contains_key(*id)) {
        Some(id) => bail!("signed.roles.{role} names key {id}, which signed.keys lacks"),
        None => Ok(ids),
    }
}

/// The object `name` in `value`.
fn object<'a>(value: &'a Value, name: &str) -> Result<&'a Map<String, Value>> {
    value
        .get(name)
        .and_then(Value::as_object)
        .with_context(|| format!("no object {name:?}"))
}

/// The object `name` in the map `value`.
fn map<'a>(value: &'a Map<String, Value>, name: &str) -> Result<&'a Map<String, Value>> {
    value
        .get(name)
        .and_then(Value::as_object)
        .with_context(|| format!("no object signed.{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root() -> Value {
        let role = |id: &str| json!({"keyids": [id], "threshold": 1});
        json!({
            "signed": {
                "_type": "root",
                "spec_version": "1.0.0",
                "consistent_snapshot": true,
                "version": 1,
                "expires": "2036-01-01T00:00:00Z",
                "keys": {"r": {}, "t": {}, "s": {}, "ts": {}},
                "roles": {
                    "root": role("r"), "targets": role("t"),
                    "snapshot": role("s"), "timestamp": role("ts"),
                },
            },
            "signatures": [{"keyid": "r", "sig": "00"}],
        })
    }

    fn checked(value: &Value) -> Result<u64> {
        check(value.to_string().as_bytes())
    }

    #[test]
    fn a_signed_root_passes() -> Result<()> {
        assert_eq!(checked(&root())?, 1);
        Ok(())
    }

    #[test]
    fn what_is_not_a_signed_root_fails() {
        let mut not_root = root();
        not_root["signed"]["_type"] = json!("targets");
        let mut unsigned = root();
        unsigned["signatures"] = json!([{"keyid": "t", "sig": "00"}]);
        let mut no_role = root();
        no_role["signed"]["roles"]
            .as_object_mut()
            .map(|roles| roles.remove("timestamp"));
        let mut unknown_key = root();
        unknown_key["signed"]["roles"]["targets"]["keyids"] = json!(["x"]);
        let mut threshold = root();
        threshold["signed"]["roles"]["root"]["threshold"] = json!(2);
        for bad in [not_root, unsigned, no_role, unknown_key, threshold] {
            assert!(checked(&bad).is_err(), "{bad}");
        }
        assert!(check(b"not json").is_err());
    }
}
