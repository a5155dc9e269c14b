//! One update attempt, up to the launch of the updater (docs/ARCHITECTURE.md, "One
//! self-update, end to end", steps 3 to 7).
//!
//! [`Update::run`] walks `UPDATING_STARTING -> DOWNLOADING -> VERIFYING -> EXTRACTING_UPDATER
//! -> PREPARING_SHUTDOWN`: free-space check, a resumable download that never reads past the
//! expected length (rate-limited and waiting out a busy server: `download`), length, SHA-256
//! and version checks, the updater unpacked from the package and launched detached with the
//! contract's arguments. Any failure names its step; partial files that cannot be resumed are
//! removed. The updater is started from the install path (also
//! when the running exe was replaced on disk), and the enrollment token never travels on its
//! command line or in its environment (the agent keeps it in config.json).
//! This module must never change the agent's state on its own account except through the
//! `StateCell` it is given, and never stop the agent (the caller does, after a launch).

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cms_protocol::update::{executable_names, package_file_name};
use cms_protocol::{
    AgentState, BUILD_VERSION, RollbackStatement, Transfer, UpdateInfo, UpdateStep,
};
use sha2::{Digest, Sha256};

use super::delta;
use super::download::{self, TransferLimits};
use crate::core::agent_state::StateCell;
use crate::core::storage::StateManager;
use crate::net::http_client::{HttpClient, HttpError};
use crate::net::trust::{SignedTarget, TrustError, TrustedMetadata};
use crate::system;
use cms_platform::agent_args::{
    ENROLLMENT_TOKEN_ENV, PROXY_ARG, PROXY_ENV, split_enrollment_token, take_option,
};
use cms_platform::fs::open_no_follow;
use cms_platform::layout::JOURNAL_NAME;
use cms_platform::package::{Package, PackageError};

/// Why an update attempt stopped; the old version keeps running.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The offered version is not newer than the running one (a replayed old release), and no
    /// rollback statement came with it.
    #[error(
        "offered version {offered} is not newer than the running {BUILD_VERSION} (and no \
         rollback statement signed with the root key came with it)"
    )]
    NotNewer {
        /// What the server offered.
        offered: String,
    },
    /// Not enough room for the package, its extraction and the backup.
    #[error("not enough free space in {dir}: {free} bytes free, {needed} needed")]
    DiskSpace {
        /// Where the package would go.
        dir: PathBuf,
        /// Bytes free there.
        free: u64,
        /// Bytes needed (3x the package, plus the configured reserve).
        needed: u64,
    },
    /// The download failed or was longer than allowed.
    #[error(transparent)]
    Download(#[from] HttpError),
    /// The downloaded bytes are not the package that was announced.
    #[error("package {what} mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// `length`, `sha256`, `version` or `platform`.
        what: &'static str,
        /// The announced value.
        expected: String,
        /// The value found.
        actual: String,
    },
    /// The signed release metadata refused the offer, or could not be refreshed.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The package cannot be read.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// A file operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// The update step it belongs to, for the report.
        step: &'static str,
        /// What was being done.
        what: &'static str,
        /// What the OS said.
        source: io::Error,
    },
}

impl UpdateError {
    /// The step that failed, for the error report.
    pub fn step(&self) -> &'static str {
        match self {
            UpdateError::NotNewer { .. } | UpdateError::DiskSpace { .. } => "starting",
            UpdateError::Download(_) => "downloading",
            UpdateError::Mismatch { .. } | UpdateError::Trust(_) => "verifying",
            UpdateError::Package(_) => "extracting_updater",
            UpdateError::Io { step, .. } => step,
        }
    }

    /// Whether the partial download is worth keeping for a resume.
    fn keeps_partial(&self) -> bool {
        matches!(
            self,
            UpdateError::Download(
                HttpError::Incomplete { .. }
                    | HttpError::Transport { .. }
                    | HttpError::Busy { .. }
                    | HttpError::RateLimited { .. }
            )
        )
    }
}

/// How the updater is to start the new agent (and the old one again after a rollback): the
/// arguments after `--` in its command line (docs/CONTRACT.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relaunch {
    /// As a process of its own, with the arguments this agent was started with.
    Process(Vec<OsString>),
    /// Through the service manager (so it runs as the service), with the service's start
    /// arguments; the updater is told with `--service-name`.
    Service(Vec<OsString>),
}

/// One update attempt.
pub struct Update<'a> {
    /// The backend.
    pub http: &'a HttpClient,
    /// The pinned root and last verified metadata; the only source of a package's length and
    /// hash.
    pub trust: &'a TrustedMetadata,
    /// The agent's state; the caller already moved it to `UPDATING_STARTING`.
    pub state: &'a StateCell,
    /// Where `updates/` and `logs/` are.
    pub storage: &'a StateManager,
    /// Extra free bytes to keep (config.json `update_reserve_free_bytes`).
    pub reserve_free_bytes: u64,
    /// The download's rate limit (config.json `download_limit_kbps`).
    pub limits: TransferLimits,
    /// How the updater starts the agent after the swap.
    pub relaunch: &'a Relaunch,
    /// Told when the download starts and when the package passed verification.
    pub on_step: &'a (dyn Fn(UpdateStep, Option<(Transfer, u64)>) + Sync),
}

impl std::fmt::Debug for Update<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Update")
            .field("storage", &self.storage)
            .field("reserve_free_bytes", &self.reserve_free_bytes)
            .field("limits", &self.limits)
            .field("relaunch", &self.relaunch)
            .finish_non_exhaustive()
    }
}

impl Update<'_> {
    /// Runs the update up to the launch of the updater; returns the updater's PID.
    pub async fn run(&self, info: &UpdateInfo) -> Result<u32, UpdateError> {
        let rollback = allowed_direction(info)?;
        self.trust.pin_server_root_if_missing().await?;
        if let Some(statement) = rollback {
            self.trust.verified_rollback(info, statement).await?;
            tracing::info!(from = BUILD_VERSION, to = %info.version, "going back to an older version: allowed by a statement signed with the root key");
        }
        let (signed, delta) = self
            .trust
            .verified_target_and_delta(info, BUILD_VERSION)
            .await?;
        let dir = self.storage.updates_dir();
        fs::create_dir_all(&dir).map_err(|source| UpdateError::Io {
            step: "starting",
            what: "create updates/",
            source,
        })?;
        self.check_free_space(&dir, signed.length)?;
        // Named from the checked SemVer version and our own platform, never from a server
        // string that could hold a path.
        let file = package_file_name(&info.version, system::PLATFORM);
        let part = dir.join(format!("{file}.part"));
        let result = self
            .fetch_and_launch(info, &signed, delta.as_ref(), &part)
            .await;
        if let Err(err) = &result {
            clear_updates_dir(&dir, err.keeps_partial().then_some(part.as_path()));
        }
        result
    }

    async fn fetch_and_launch(
        &self,
        info: &UpdateInfo,
        signed: &SignedTarget,
        delta: Option<&SignedTarget>,
        part: &Path,
    ) -> Result<u32, UpdateError> {
        self.enter(AgentState::UpdatingDownloading);
        (self.on_step)(UpdateStep::Downloading, None);
        let transfer = self.transfer(info, signed, delta, part).await?;
        self.enter(AgentState::UpdatingVerifying);
        let package_path = part.with_extension("");
        verify_download(part, signed).await?;
        fs::rename(part, &package_path).map_err(|source| UpdateError::Io {
            step: "verifying",
            what: "keep the verified package",
            source,
        })?;
        let package = Package::open(&package_path)?;
        check_manifest(&package, info)?;
        (self.on_step)(UpdateStep::Verified, Some(transfer));
        self.enter(AgentState::UpdatingExtractingUpdater);
        let updater = package_path.with_file_name(executable_names(system::PLATFORM).1);
        package.extract_updater(&updater)?;
        self.enter(AgentState::UpdatingPreparingShutdown);
        self.launch_updater(&updater, &package_path, signed)
    }

    /// Leaves the package at `part`: rebuilt from a signed delta when there is one from this
    /// version that rebuilds the signed package, else downloaded whole. Says which, and its bytes.
    async fn transfer(
        &self,
        info: &UpdateInfo,
        signed: &SignedTarget,
        delta: Option<&SignedTarget>,
        part: &Path,
    ) -> Result<(Transfer, u64), UpdateError> {
        // A full download already under way is resumed rather than started over as a delta.
        if let Some(signed_delta) = delta.filter(|_| !part.exists()) {
            let dir = part.parent().unwrap_or(Path::new("."));
            let deltas = delta::DeltaFetch {
                http: self.http,
                limits: self.limits,
                dir,
            };
            if let Some(bytes) = deltas.fetch(info, signed_delta, signed, part).await {
                return Ok((Transfer::Delta, bytes));
            }
        }
        download::fetch(
            self.http,
            &info.package_url,
            part,
            signed.length,
            self.limits,
        )
        .await?;
        Ok((Transfer::Full, signed.length))
    }

    fn enter(&self, state: AgentState) {
        let _ = self.state.set_state(state);
    }

    fn check_free_space(&self, dir: &Path, length: u64) -> Result<(), UpdateError> {
        let free = system::available_space(dir).map_err(|source| UpdateError::Io {
            step: "starting",
            what: "measure free space",
            source,
        })?;
        let needed = length
            .saturating_mul(3)
            .saturating_add(self.reserve_free_bytes);
        if free < needed {
            return Err(UpdateError::DiskSpace {
                dir: dir.to_path_buf(),
                free,
                needed,
            });
        }
        Ok(())
    }

    /// Starts the updater with the plan's four arguments, the package's signed length and
    /// SHA-256 (the updater checks them again on a handle nobody can write through, so a
    /// package swapped after this check never runs) and the agent's own arguments after `--`.
    fn launch_updater(
        &self,
        updater: &Path,
        package: &Path,
        signed: &SignedTarget,
    ) -> Result<u32, UpdateError> {
        let io_err = |source| UpdateError::Io {
            step: "preparing_shutdown",
            what: "launch the updater",
            source,
        };
        let exe = system::installed_exe().map_err(io_err)?;
        let mut command = Command::new(updater);
        let agent_args = match self.relaunch {
            Relaunch::Process(args) => args,
            Relaunch::Service(args) => {
                command
                    .arg("--service-name")
                    .arg(system::service::SERVICE_NAME);
                args
            }
        };
        // The token and the proxy (with its password) are in config.json: never on a command line.
        let (agent_args, _token_kept_in_config) = split_enrollment_token(agent_args.clone());
        let (agent_args, _proxy_kept_in_config) = take_option(agent_args, PROXY_ARG);
        command
            .arg("--package-path")
            .arg(package)
            .arg("--current-exe-path")
            .arg(&exe)
            .arg("--old-pid")
            .arg(std::process::id().to_string())
            .arg("--log-dir")
            .arg(self.storage.logs_dir())
            .arg("--package-sha256")
            .arg(signed.sha256.to_ascii_lowercase())
            .arg("--package-length")
            .arg(signed.length.to_string())
            .arg("--")
            .args(agent_args)
            .env_remove(ENROLLMENT_TOKEN_ENV)
            .env_remove(PROXY_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        system::detach(&mut command);
        let child = command.spawn().map_err(io_err)?;
        tracing::info!(updater_pid = child.id(), package = %package.display(), "updater launched");
        Ok(child.id())
    }
}

/// A release is acceptable if strictly newer, or if older with a rollback statement (still to
/// be checked against the root: returned here); an older one without, replayed by a mirror or
/// an attacker, would be a rollback attack.
fn allowed_direction(info: &UpdateInfo) -> Result<Option<&RollbackStatement>, UpdateError> {
    let parse = |v: &str| semver::Version::parse(v.trim_start_matches('v')).ok();
    match (parse(&info.version), parse(BUILD_VERSION)) {
        (Some(new), Some(running)) if new > running => Ok(None),
        (Some(new), Some(running)) if new < running && info.rollback.is_some() => {
            Ok(info.rollback.as_deref())
        }
        _ => Err(UpdateError::NotNewer {
            offered: info.version.clone(),
        }),
    }
}

async fn verify_download(part: &Path, signed: &SignedTarget) -> Result<(), UpdateError> {
    let path = part.to_path_buf();
    let (length, digest) = tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(|e| UpdateError::Io {
            step: "verifying",
            what: "hash the package",
            source: io::Error::other(e),
        })?
        .map_err(|source| UpdateError::Io {
            step: "verifying",
            what: "hash the package",
            source,
        })?;
    if length != signed.length {
        return Err(mismatch(
            "length",
            signed.length.to_string(),
            length.to_string(),
        ));
    }
    if !digest.eq_ignore_ascii_case(&signed.sha256) {
        return Err(mismatch("sha256", signed.sha256.clone(), digest));
    }
    tracing::info!(version = %signed.version, length, "package verified against signed metadata");
    Ok(())
}

pub(super) fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = open_no_follow(path, fs::OpenOptions::new().read(true))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut length = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((length, hex::encode(hasher.finalize())));
        }
        hasher.update(&buffer[..read]);
        length += read as u64;
    }
}

fn check_manifest(package: &Package, info: &UpdateInfo) -> Result<(), UpdateError> {
    let manifest = &package.manifest;
    if manifest.version != info.version {
        return Err(mismatch(
            "version",
            info.version.clone(),
            manifest.version.clone(),
        ));
    }
    if manifest.platform != system::PLATFORM {
        return Err(mismatch(
            "platform",
            system::PLATFORM.to_owned(),
            manifest.platform.clone(),
        ));
    }
    Ok(())
}

fn mismatch(what: &'static str, expected: String, actual: String) -> UpdateError {
    UpdateError::Mismatch {
        what,
        expected,
        actual,
    }
}

/// Empties `updates/` except the journal and `keep` (a partial download worth resuming).
pub(super) fn clear_updates_dir(dir: &Path, keep: Option<&Path>) {
    for (path, err) in remove_update_files(dir, keep) {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove a leftover update file");
    }
}

/// Removes every file in `updates/` but the journal and `keep`; returns the ones that would
/// not go, with why.
pub(super) fn remove_update_files(dir: &Path, keep: Option<&Path>) -> Vec<(PathBuf, io::Error)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stuck = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let is_journal = path.file_name().is_some_and(|n| n == JOURNAL_NAME);
        if is_journal || keep == Some(path.as_path()) {
            continue;
        }
        if let Err(err) = fs::remove_file(&path) {
            stuck.push((path, err));
        }
    }
    stuck
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(version: &str, rollback: Option<Box<RollbackStatement>>) -> UpdateInfo {
        UpdateInfo {
            version: version.into(),
            platform: system::PLATFORM.into(),
            package_url: String::new(),
            target: String::new(),
            length: 1,
            sha256: String::new(),
            window: None,
            rollback,
            urgent: false,
        }
    }

    #[test]
    fn newer_versions_and_older_ones_with_a_statement_only_are_accepted() {
        assert!(matches!(
            allowed_direction(&offer("999.0.0", None)),
            Ok(None)
        ));
        assert!(allowed_direction(&offer(BUILD_VERSION, None)).is_err());
        assert!(allowed_direction(&offer("0.0.1", None)).is_err());
        assert!(allowed_direction(&offer("not-a-version", None)).is_err());
        let statement = RollbackStatement {
            signed: cms_protocol::RollbackTerms {
                kind: cms_protocol::ROLLBACK_TYPE.into(),
                version: "0.0.1".into(),
                platform: system::PLATFORM.into(),
                expires: "2100-01-01T00:00:00Z".into(),
            },
            signatures: Vec::new(),
        };
        let back = offer("0.0.1", Some(Box::new(statement.clone())));
        assert_eq!(allowed_direction(&back).unwrap(), Some(&statement));
        // The same version is never re-installed, statement or not.
        assert!(allowed_direction(&offer(BUILD_VERSION, Some(Box::new(statement)))).is_err());
    }

    #[test]
    fn an_io_failure_reports_the_step_it_happened_in() {
        let hashing = UpdateError::Io {
            step: "verifying",
            what: "hash the package",
            source: io::Error::other("x"),
        };
        assert_eq!(hashing.step(), "verifying");
        assert_eq!(
            UpdateError::NotNewer {
                offered: "0.0.1".into()
            }
            .step(),
            "starting"
        );
    }

    #[test]
    fn hash_matches_a_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"abc").unwrap();
        let (length, digest) = hash_file(&path).unwrap();
        assert_eq!(length, 3);
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn cleanup_keeps_the_journal_and_a_resumable_partial() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("p.zip.part");
        for name in [JOURNAL_NAME, "p.zip.part", "p.zip", "updater"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        clear_updates_dir(dir.path(), Some(&part));
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![OsString::from("p.zip.part"), OsString::from(JOURNAL_NAME)]
        );
    }
}
