//! The agent's trust in release metadata: The Update Framework (TUF) through awslabs' `tough`.
//!
//! A package is installed only if signed metadata says so: the pinned root (shipped with
//! `--trusted-root`, or trusted on first use right after enrollment) signs the keys of the
//! targets, snapshot and timestamp roles, and the targets metadata carries each package's
//! length, SHA-256, version and platform. Each refresh checks signatures, thresholds, that no
//! role's version went backwards (rollback), that nothing expired (freeze) and that no file is
//! larger than [`LIMITS`] allow (endless data). The last trusted metadata stays in
//! `DATA/tuf/` between runs, so a replayed older set is refused even after a restart.
//!
//! This module must never accept a package description that did not come out of a verified
//! refresh, never replace a pinned root with an older one, and never follow metadata to a URL
//! other than the configured server's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cms_protocol::delta::{CUSTOM_DELTA_FROM, delta_target_name};
use cms_protocol::update::target_custom;
use cms_protocol::{RollbackStatement, UpdateInfo, paths};
use futures_util::StreamExt;
use serde_json::Value;
use tough::schema::{Root, Signed};
use tough::{
    Limits, RepositoryLoader, TargetName, Transport, TransportError, TransportErrorKind,
    TransportStream,
};
use url::Url;

use crate::net::endpoint;
use crate::net::error_chain;
use crate::net::rollback;
use crate::net::servers::ServerList;
use cms_platform::fs::{read_no_follow, write_atomic};

/// Size limits on metadata (TUF's defence against endless-data attacks). Our files are a few
/// KiB; targets grow by about 300 bytes per published package.
pub const LIMITS: Limits = Limits {
    max_root_size: 512 * 1024,
    max_targets_size: 8 * 1024 * 1024,
    max_timestamp_size: 64 * 1024,
    max_snapshot_size: 512 * 1024,
    max_root_updates: 64,
};

/// Root the agent was told to trust, kept apart from tough's working copy.
const PINNED_ROOT: &str = "pinned-root.json";
/// tough's copy of the newest verified root, in the datastore.
const DATASTORE_ROOT: &str = "root.json";
/// What tough keeps to detect rollbacks; stale once the pinned root changes.
const DATASTORE_FILES: [&str; 4] = [
    "timestamp.json",
    "snapshot.json",
    "targets.json",
    "latest_known_time.json",
];

/// Why the agent does not trust what it was offered.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// No root is pinned and none could be fetched.
    #[error(
        "no trusted root for release metadata: start the agent with --trusted-root FILE (the \
         server's DIR/tuf/metadata/root.json) or let it pin the server's root after enrollment"
    )]
    NoRoot,
    /// A root file given or fetched is not a valid self-signed TUF root.
    #[error("{source_name} is not a valid TUF root: {reason}")]
    BadRoot {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// A root older than the one already trusted was offered for pinning.
    #[error(
        "refusing to pin root version {offered} from {source_name}: version {trusted} is \
         already trusted"
    )]
    OlderRoot {
        /// Where it came from.
        source_name: String,
        /// Its version.
        offered: u64,
        /// The trusted version.
        trusted: u64,
    },
    /// The trust files could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The metadata failed verification (signature, expiry, rollback, size) or could not be
    /// fetched; nothing is installed.
    #[error("signed release metadata refused: {0}")]
    Refused(String),
    /// The signed targets do not list the offered package.
    #[error("the signed release metadata does not list {0}")]
    UnknownTarget(String),
    /// An older version was offered with a rollback statement the root did not sign.
    #[error("going back to an older version refused: {0}")]
    Rollback(#[from] crate::net::rollback::RollbackRefused),
    /// The signed description of the package differs from what was offered.
    #[error("signed {what} of {target} is {signed:?}, but {offered:?} was offered")]
    Disagrees {
        /// The package.
        target: String,
        /// `version`, `platform`, `length` or `sha256`.
        what: &'static str,
        /// What the signed metadata says.
        signed: String,
        /// What the update check said.
        offered: String,
    },
}

/// A package as the verified metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTarget {
    /// Exact length; the download never goes past it.
    pub length: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Release version (from the target's `custom`).
    pub version: String,
    /// Platform (from the target's `custom`).
    pub platform: String,
}

/// The agent's trust store in `DATA/tuf/` and the server it refreshes from.
#[derive(Debug, Clone)]
pub struct TrustedMetadata {
    dir: PathBuf,
    servers: Arc<ServerList>,
    transport: MetadataTransport,
}

impl TrustedMetadata {
    /// The store in `dir` for the backend's `servers` (the metadata comes from the one in use:
    /// it is signed, so any of them, or a mirror, will do); `client` carries the agent's TLS
    /// settings.
    pub fn new(dir: PathBuf, servers: Arc<ServerList>, client: reqwest::Client) -> Self {
        TrustedMetadata {
            dir,
            servers,
            transport: MetadataTransport { client },
        }
    }

    /// Where the metadata lies on the server in use.
    fn metadata_url(&self) -> Result<Url, TrustError> {
        Url::parse(&endpoint(&self.servers.current(), paths::TUF_METADATA))
            .map_err(|e| TrustError::Refused(format!("bad metadata URL: {e}")))
    }

    /// Whether a root is pinned.
    pub fn has_root(&self) -> bool {
        self.dir.join(PINNED_ROOT).is_file()
    }

    /// Pins the root in `file` (`--trusted-root`): refused if it is not a self-signed root or
    /// older than the trusted one; a different root of the same or a newer version replaces it.
    pub fn pin_root_file(&self, file: &Path) -> Result<(), TrustError> {
        let bytes = fs::read(file).map_err(|source| TrustError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        self.pin(&bytes, &file.display().to_string())
    }

    /// Trust on first use: pins the server's current root when none is pinned yet.
    pub async fn pin_server_root_if_missing(&self) -> Result<(), TrustError> {
        if self.has_root() {
            return Ok(());
        }
        let url = self
            .metadata_url()?
            .join(DATASTORE_ROOT)
            .map_err(|e| TrustError::Refused(e.to_string()))?;
        let bytes = self
            .transport
            .fetch_bounded(url.clone(), LIMITS.max_root_size)
            .await
            .map_err(|e| TrustError::Refused(format!("cannot fetch {url}: {e}")))?;
        self.pin(&bytes, url.as_str())?;
        tracing::warn!(%url, "pinned the server's TUF root on first use; ship --trusted-root to avoid trusting the first answer");
        Ok(())
    }

    fn pin(&self, bytes: &[u8], source_name: &str) -> Result<(), TrustError> {
        let offered = parse_root(bytes, source_name)?;
        let pinned_path = self.dir.join(PINNED_ROOT);
        if let Ok(current) = read_no_follow(&pinned_path) {
            let trusted = parse_root(&current, &pinned_path.display().to_string())?;
            if same_root(&offered, &trusted) {
                return Ok(());
            }
            if offered.signed.version < trusted.signed.version {
                return Err(TrustError::OlderRoot {
                    source_name: source_name.to_owned(),
                    offered: offered.signed.version.get(),
                    trusted: trusted.signed.version.get(),
                });
            }
        }
        self.write(PINNED_ROOT, bytes)?;
        self.forget_datastore()?;
        tracing::info!(
            source = source_name,
            version = offered.signed.version.get(),
            "pinned TUF root"
        );
        Ok(())
    }

    /// Refreshes the metadata from the server and returns the signed description of the
    /// offered package, refusing any disagreement with the offer.
    pub async fn verified_target(&self, offer: &UpdateInfo) -> Result<SignedTarget, TrustError> {
        let repository = self.refresh().await?;
        package_target(&repository, offer)
    }

    /// [`Self::verified_target`], and from the same verified refresh the signed delta from
    /// release `from` to the offered one when the targets list one under its name
    /// (`cms_protocol::delta::delta_target_name`) whose `custom` agrees on `from`, the version
    /// and the platform (a delta that disagrees is left out, with a warning).
    pub async fn verified_target_and_delta(
        &self,
        offer: &UpdateInfo,
        from: &str,
    ) -> Result<(SignedTarget, Option<SignedTarget>), TrustError> {
        let repository = self.refresh().await?;
        let package = package_target(&repository, offer)?;
        let delta = delta_target(&repository, offer, from).unwrap_or_else(|error| {
            tracing::warn!(%error, "signed delta left out");
            None
        });
        Ok((package, delta))
    }

    /// Checks the rollback statement that comes with an offer of an older version against the
    /// newest root trusted after a verified refresh (`crate::net::rollback`).
    pub async fn verified_rollback(
        &self,
        offer: &UpdateInfo,
        statement: &RollbackStatement,
    ) -> Result<(), TrustError> {
        let repository = self.refresh().await?;
        let root = &repository.root().signed;
        rollback::check(root, statement, offer, time::OffsetDateTime::now_utc())?;
        Ok(())
    }

    /// One verified refresh, starting from the newest root trusted so far.
    async fn refresh(&self) -> Result<tough::Repository, TrustError> {
        let root = self.starting_root()?;
        let url = self.metadata_url()?;
        let repository = RepositoryLoader::new(&root, url.clone(), url)
            .transport(self.transport.clone())
            .limits(LIMITS)
            .datastore(&self.dir)
            .load()
            .await
            .map_err(|e| TrustError::Refused(error_chain(&e)))?;
        self.keep_newest_root(repository.root())?;
        tracing::info!(
            timestamp = repository.timestamp().signed.version.get(),
            targets = repository.targets().signed.version.get(),
            "release metadata verified"
        );
        Ok(repository)
    }

    /// tough's datastore copy when it is a valid root (it may be newer than the pin), else the
    /// pin.
    fn starting_root(&self) -> Result<Vec<u8>, TrustError> {
        let pinned = read_no_follow(&self.dir.join(PINNED_ROOT)).map_err(|_| TrustError::NoRoot)?;
        let working = read_no_follow(&self.dir.join(DATASTORE_ROOT)).ok();
        Ok(working
            .filter(|bytes| parse_root(bytes, DATASTORE_ROOT).is_ok())
            .unwrap_or(pinned))
    }

    /// After a refresh that rotated the root, the pin follows (written atomically, unlike
    /// tough's remove-then-create of its working copy).
    fn keep_newest_root(&self, newest: &Signed<Root>) -> Result<(), TrustError> {
        let pinned_path = self.dir.join(PINNED_ROOT);
        let pinned = read_no_follow(&pinned_path).map_err(|source| TrustError::Io {
            path: pinned_path,
            source,
        })?;
        let pinned = parse_root(&pinned, PINNED_ROOT)?;
        if newest.signed.version > pinned.signed.version {
            let bytes = serde_json::to_vec_pretty(newest)
                .map_err(|e| TrustError::Refused(format!("cannot store the new root: {e}")))?;
            self.write(PINNED_ROOT, &bytes)?;
            tracing::info!(
                version = newest.signed.version.get(),
                "trusted root rotated"
            );
        }
        Ok(())
    }

    fn forget_datastore(&self) -> Result<(), TrustError> {
        for name in DATASTORE_FILES.iter().chain([&DATASTORE_ROOT]) {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Err(source) if source.kind() != io::ErrorKind::NotFound => {
                    return Err(TrustError::Io { path, source });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), TrustError> {
        let path = self.dir.join(name);
        fs::create_dir_all(&self.dir)
            .and_then(|()| write_atomic(&path, bytes))
            .map_err(|source| TrustError::Io { path, source })
    }
}

/// A root is usable only if it parses and carries a threshold of signatures by its own keys.
fn parse_root(bytes: &[u8], source_name: &str) -> Result<Signed<Root>, TrustError> {
    let bad = |reason: String| TrustError::BadRoot {
        source_name: source_name.to_owned(),
        reason,
    };
    let root: Signed<Root> = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    root.signed
        .verify_role(&root)
        .map_err(|e| bad(e.to_string()))?;
    Ok(root)
}

/// Same root whatever the JSON formatting (tough rewrites the file it keeps).
fn same_root(a: &Signed<Root>, b: &Signed<Root>) -> bool {
    serde_json::to_value(&a.signed).ok() == serde_json::to_value(&b.signed).ok()
}

/// The signed description of the offered package, refusing any disagreement with the offer.
fn package_target(
    repository: &tough::Repository,
    offer: &UpdateInfo,
) -> Result<SignedTarget, TrustError> {
    let target = offer.target.as_str();
    let signed = signed_target(repository, target)?
        .ok_or_else(|| TrustError::UnknownTarget(target.to_owned()))?;
    agree(target, "version", &signed.0.version, &offer.version)?;
    agree(target, "platform", &signed.0.platform, &offer.platform)?;
    let length = signed.0.length.to_string();
    agree(target, "length", &length, &offer.length.to_string())?;
    let sha256 = offer.sha256.to_ascii_lowercase();
    agree(target, "sha256", &signed.0.sha256, &sha256)?;
    Ok(signed.0)
}

/// The signed delta from `from` to the offered release, if the targets list one.
fn delta_target(
    repository: &tough::Repository,
    offer: &UpdateInfo,
    from: &str,
) -> Result<Option<SignedTarget>, TrustError> {
    let target = delta_target_name(from, &offer.version, &offer.platform);
    let Some((signed, signed_from)) = signed_target(repository, &target)? else {
        return Ok(None);
    };
    agree(&target, "version", &signed.version, &offer.version)?;
    agree(&target, "platform", &signed.platform, &offer.platform)?;
    agree(&target, "delta_from", &signed_from, from)?;
    Ok(Some(signed))
}

/// The target `name` as the verified targets describe it, with its `custom` `delta_from`.
fn signed_target(
    repository: &tough::Repository,
    name: &str,
) -> Result<Option<(SignedTarget, String)>, TrustError> {
    let key = TargetName::new(name).map_err(|e| TrustError::Refused(e.to_string()))?;
    let Some(entry) = repository.targets().signed.targets.get(&key) else {
        return Ok(None);
    };
    let signed = SignedTarget {
        length: entry.length,
        sha256: hex::encode(entry.hashes.sha256.as_ref()),
        version: custom_text(&entry.custom, target_custom::VERSION),
        platform: custom_text(&entry.custom, target_custom::PLATFORM),
    };
    Ok(Some((
        signed,
        custom_text(&entry.custom, CUSTOM_DELTA_FROM),
    )))
}

fn custom_text(custom: &std::collections::HashMap<String, Value>, key: &str) -> String {
    custom
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn agree(target: &str, what: &'static str, signed: &str, offered: &str) -> Result<(), TrustError> {
    if signed == offered {
        return Ok(());
    }
    Err(TrustError::Disagrees {
        target: target.to_owned(),
        what,
        signed: signed.to_owned(),
        offered: offered.to_owned(),
    })
}

/// tough's [`Transport`] over the agent's own HTTP client (same TLS roots and timeouts).
#[derive(Debug, Clone)]
struct MetadataTransport {
    client: reqwest::Client,
}

impl MetadataTransport {
    /// The whole body of `url`, refused past `limit` bytes.
    async fn fetch_bounded(&self, url: Url, limit: u64) -> Result<Vec<u8>, TransportError> {
        let mut stream = self.fetch(url.clone()).await?;
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk?);
            if body.len() as u64 > limit {
                let cause = format!("larger than {limit} bytes");
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url,
                    cause,
                ));
            }
        }
        Ok(body)
    }
}

#[tough::async_trait]
impl Transport for MetadataTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let failed =
            |kind, cause: reqwest::Error| TransportError::new_with_cause(kind, url.as_str(), cause);
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| failed(TransportErrorKind::Other, e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        let response = response
            .error_for_status()
            .map_err(|e| failed(TransportErrorKind::Other, e))?;
        let url_text = url.to_string();
        let stream = response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| {
                TransportError::new_with_cause(TransportErrorKind::Other, &url_text, e)
            })
        });
        Ok(Box::pin(stream))
    }
}
