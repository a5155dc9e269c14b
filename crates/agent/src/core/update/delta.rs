//! The delta path of an update: when the signed targets list a delta from the running version
//! to the offered one, download it (resumable, bounded by its signed length, through
//! [`download::fetch`] so `--download-limit` and the server's busy answers apply), check it
//! against its signed length and SHA-256, rebuild the package from the installed agent exe
//! (`cms_protocol::delta`), and check the rebuilt package against the **signed full package's**
//! length and SHA-256. Only a package that passed that check is put where the full download
//! would have left it. Any failure (no delta, a download error, a bad delta, an installed exe
//! that is not the released one) removes what this path wrote and answers `None`: the caller
//! then downloads the full package. This module must never leave a rebuilt file that did not
//! match the signed package, and never decide anything else about the update.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use cms_protocol::delta::{self, delta_target_name};
use cms_protocol::update::executable_names;
use cms_protocol::{BUILD_VERSION, UpdateInfo};

use super::download::{self, TransferLimits};
use super::steps::hash_file;
use crate::net::http_client::HttpClient;
use crate::net::trust::SignedTarget;
use crate::system;

/// What the delta path needs.
pub(super) struct DeltaFetch<'a> {
    /// The backend.
    pub http: &'a HttpClient,
    /// `--download-limit`.
    pub limits: TransferLimits,
    /// The `updates/` folder.
    pub dir: &'a Path,
}

impl DeltaFetch<'_> {
    /// Leaves the package, rebuilt from the delta `signed` and verified against `package`, at
    /// `part`; returns the delta's length. `None` when there is no usable delta (see the module docs).
    pub async fn fetch(
        &self,
        info: &UpdateInfo,
        signed: &SignedTarget,
        package: &SignedTarget,
        part: &Path,
    ) -> Option<u64> {
        let url = delta_url(
            &info.package_url,
            BUILD_VERSION,
            &info.version,
            system::PLATFORM,
        )?;
        let name = delta_target_name(BUILD_VERSION, &info.version, system::PLATFORM);
        let delta_part = self.dir.join(format!("{name}.part"));
        let rebuilt = part.with_extension("rebuilt");
        let result = self
            .download_and_rebuild(&url, signed, package, &delta_part, &rebuilt)
            .await;
        let _ = fs::remove_file(&delta_part);
        match result {
            Ok(()) => match fs::rename(&rebuilt, part) {
                Ok(()) => {
                    tracing::info!(
                        delta_length = signed.length,
                        package_length = package.length,
                        "package rebuilt from a signed delta and verified"
                    );
                    Some(signed.length)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot keep the rebuilt package: full package");
                    let _ = fs::remove_file(&rebuilt);
                    None
                }
            },
            Err(reason) => {
                let _ = fs::remove_file(&rebuilt);
                tracing::warn!(%reason, "delta not usable: full package");
                None
            }
        }
    }

    async fn download_and_rebuild(
        &self,
        url: &str,
        signed: &SignedTarget,
        package: &SignedTarget,
        delta_part: &Path,
        rebuilt: &Path,
    ) -> Result<(), String> {
        download::fetch(self.http, url, delta_part, signed.length, self.limits)
            .await
            .map_err(|e| format!("download: {e}"))?;
        let (delta_part, rebuilt) = (delta_part.to_owned(), rebuilt.to_owned());
        let (signed, package) = (signed.clone(), package.clone());
        tokio::task::spawn_blocking(move || rebuild(&delta_part, &signed, &rebuilt, &package))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// Checks the delta, applies it, checks the result (blocking I/O).
fn rebuild(
    delta_path: &Path,
    signed: &SignedTarget,
    rebuilt: &Path,
    package: &SignedTarget,
) -> Result<(), String> {
    matches_signed(delta_path, signed, "delta")?;
    let input = File::open(delta_path).map_err(|e| format!("open the delta: {e}"))?;
    let output = File::create(rebuilt).map_err(|e| format!("create the rebuilt package: {e}"))?;
    let mut writer = BufWriter::new(output);
    delta::apply(
        &mut BufReader::new(input),
        &installed_base,
        &mut writer,
        package.length,
    )
    .map_err(|e| e.to_string())?;
    writer
        .flush()
        .and_then(|()| writer.get_ref().sync_all())
        .map_err(|e| format!("write the rebuilt package: {e}"))?;
    matches_signed(rebuilt, package, "rebuilt package")
}

/// Whether the file at `path` has the signed length and SHA-256.
fn matches_signed(path: &Path, signed: &SignedTarget, what: &str) -> Result<(), String> {
    let (length, sha256) = hash_file(path).map_err(|e| format!("hash the {what}: {e}"))?;
    if length != signed.length || !sha256.eq_ignore_ascii_case(&signed.sha256) {
        return Err(format!(
            "the {what} is not the signed one ({length} bytes, SHA-256 {sha256}; signed: {} \
             bytes, {})",
            signed.length, signed.sha256
        ));
    }
    Ok(())
}

/// The installed file a delta names as its base: the agent exe at its install path.
fn installed_base(name: &str) -> Option<PathBuf> {
    let (agent, _) = executable_names(system::PLATFORM);
    (name == agent).then(system::installed_exe)?.ok()
}

/// The delta's URL beside the package's: `.../packages/TO/PLATFORM` becomes
/// `.../deltas/FROM/TO/PLATFORM` (docs/protocol.md); `None` for any other package URL.
fn delta_url(package_url: &str, from: &str, to: &str, platform: &str) -> Option<String> {
    let tail = format!("/packages/{to}/{platform}");
    let prefix = package_url.strip_suffix(&tail)?;
    Some(format!("{prefix}/deltas/{from}/{to}/{platform}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delta_url_sits_beside_the_package_url() {
        assert_eq!(
            delta_url(
                "https://h:1/api/v1/agent/packages/2.0.0/linux-x86_64",
                "1.0.0",
                "2.0.0",
                "linux-x86_64"
            )
            .as_deref(),
            Some("https://h:1/api/v1/agent/deltas/1.0.0/2.0.0/linux-x86_64")
        );
        assert_eq!(
            delta_url("https://h/p.zip", "1.0.0", "2.0.0", "linux-x86_64"),
            None
        );
    }
}
