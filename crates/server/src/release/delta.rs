//! Deltas made at publish: from each of the last few published releases of the platform to the
//! new one, so an agent running one of them downloads a few KiB instead of the whole package.
//!
//! A delta (format in `cms_protocol::delta`) rebuilds the new package byte for byte from the
//! old release's agent executable as the agent installed it (the reference of both patched
//! files: the updater is not kept installed). It lies in
//! `DIR/deltas/PLATFORM/TO/FROM.delta` and is a TUF target named
//! `cms_agent-FROM-to-TO-PLATFORM.delta` (custom: `version` TO, `platform`, `delta_from` FROM)
//! with its own length and SHA-256. It is kept only when it is at most half the package
//! ([`worth_keeping`]); otherwise the agent takes the full package. The signed targets list a
//! delta only when both its releases are committed ([`signed_deltas`]), and the package route
//! serves only those. This module must never write a delta anywhere but its own path, never
//! sign anything itself, and never fail a publish for a delta that cannot be made (it is
//! logged and skipped: the full package always works).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cms_protocol::delta::{self, DeltaHeader, Segment};
use cms_protocol::update::executable_names;
use semver::Version;
use zip::{CompressionMethod, ZipArchive};

use super::tuf::TargetEntry;
use super::{PublishError, parse_version};
use crate::db::{Db, ReleaseRecord};

/// Folder of the deltas inside the data directory.
pub const DELTAS_DIR: &str = "deltas";
/// Releases a new one gets a delta from when `--delta-from` is not given.
pub const DEFAULT_DELTA_FROM: usize = 3;
/// Deflate levels tried, in order, to reproduce a package entry from its raw bytes.
const LEVELS: [u32; 9] = [6, 9, 1, 2, 3, 4, 5, 7, 8];

/// Path of the delta from `from` to `to`, relative to the data directory.
pub fn delta_rel_path(from: &str, to: &str, platform: &str) -> String {
    format!("{DELTAS_DIR}/{platform}/{to}/{from}.delta")
}

/// The size rule: a delta is kept only when it is at most half of the full package.
pub fn worth_keeping(delta_length: u64, package_length: u64) -> bool {
    delta_length.saturating_mul(2) <= package_length
}

/// The new release and what its deltas are made against.
#[derive(Debug, Clone)]
pub struct NewPackage<'a> {
    /// The data directory.
    pub data_dir: &'a Path,
    /// Canonical version.
    pub version: &'a Version,
    /// Platform.
    pub platform: &'a str,
    /// The built package (still in its temp file).
    pub path: &'a Path,
    /// Its length.
    pub length: u64,
}

/// Makes the deltas from the `count` newest releases of the platform older than the new one;
/// returns their targets. A delta that cannot be made or is not worth it is skipped.
pub async fn make_for_publish(
    db: &Db,
    new: &NewPackage<'_>,
    count: usize,
) -> Result<Vec<TargetEntry>, PublishError> {
    let mut older: Vec<(Version, String)> = db
        .releases_for_platform(new.platform)
        .await
        .map_err(PublishError::Database)?
        .into_iter()
        .filter_map(|r| parse_version(&r.version).map(|v| (v, r.version)))
        .filter(|(v, _)| v < new.version)
        .collect();
    older.sort_by(|a, b| b.0.cmp(&a.0));
    let mut targets = Vec::new();
    for (_, from) in older.into_iter().take(count) {
        let Some(row) = db
            .release_package(&from, new.platform)
            .await
            .map_err(PublishError::Database)?
        else {
            continue;
        };
        let job = Job {
            old_package: new.data_dir.join(&row.package_path),
            new_package: new.path.to_owned(),
            out: new.data_dir.join(delta_rel_path(
                &from,
                &new.version.to_string(),
                new.platform,
            )),
            header: DeltaHeader {
                from: from.clone(),
                to: new.version.to_string(),
                platform: new.platform.to_owned(),
                segments: Vec::new(),
            },
            package_length: new.length,
        };
        let started = std::time::Instant::now();
        let made = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| PublishError::Task(e.to_string()))?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match made {
            Ok(Some(target)) => {
                tracing::info!(from = %from, to = %new.version, length = target.length, package_length = new.length, elapsed_ms, "delta made");
                targets.push(target);
            }
            Ok(None) => {
                tracing::info!(from = %from, to = %new.version, elapsed_ms, "delta skipped: not at most half the package");
            }
            Err(error) => {
                tracing::warn!(from = %from, to = %new.version, %error, "delta skipped: it could not be made");
            }
        }
    }
    Ok(targets)
}

/// Every delta on disk whose two releases are in `releases`, as signed targets.
pub fn signed_deltas(data_dir: &Path, releases: &[ReleaseRecord]) -> Vec<TargetEntry> {
    let mut targets = Vec::new();
    for to in releases {
        for from in releases.iter().filter(|r| r.platform == to.platform) {
            let path = data_dir.join(delta_rel_path(&from.version, &to.version, &to.platform));
            let Ok(mut file) = File::open(&path) else {
                continue;
            };
            match super::archive::hash(&mut file) {
                Ok((length, sha256)) => targets.push(TargetEntry {
                    version: to.version.clone(),
                    platform: to.platform.clone(),
                    length,
                    sha256,
                    delta_from: Some(from.version.clone()),
                }),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "delta left out of the signed targets: unreadable");
                }
            }
        }
    }
    targets
}

/// One delta to make (on a blocking thread).
struct Job {
    old_package: PathBuf,
    new_package: PathBuf,
    out: PathBuf,
    header: DeltaHeader,
    package_length: u64,
}

/// Why one delta could not be made.
#[derive(Debug, thiserror::Error)]
enum MakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("{0}")]
    Delta(#[from] delta::DeltaError),
}

impl Job {
    fn run(mut self) -> Result<Option<TargetEntry>, MakeError> {
        let bases = read_bases(&self.old_package, &self.header.platform)?;
        let new_bytes = std::fs::read(&self.new_package)?;
        let payloads = segments(
            &new_bytes,
            &bases,
            &self.header.platform,
            &mut self.header.segments,
        )?;
        let mut bytes = Vec::new();
        let slices: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        delta::write_delta(&mut bytes, &self.header, &slices)?;
        if !worth_keeping(bytes.len() as u64, self.package_length) {
            return Ok(None);
        }
        let dir = self.out.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        temp.write_all(&bytes)?;
        temp.as_file().sync_all()?;
        super::archive::make_world_readable(temp.as_file())?;
        temp.persist(&self.out).map_err(|e| e.error)?;
        Ok(Some(TargetEntry {
            version: self.header.to,
            platform: self.header.platform,
            length: bytes.len() as u64,
            sha256: delta::sha256_hex(&bytes),
            delta_from: Some(self.header.from),
        }))
    }
}

/// The reference of every patched file: the old release's agent executable, by its name. It is
/// the one file every agent of that release has installed (the updater runs from `updates/`
/// and is not kept), and the updater shares much of its code.
fn read_bases(package: &Path, platform: &str) -> Result<(String, Vec<u8>), MakeError> {
    let (agent, _) = executable_names(platform);
    let mut archive = ZipArchive::new(File::open(package)?)?;
    let mut entry = archive.by_name(agent)?;
    let mut bytes = Vec::new();
    entry
        .by_ref()
        .take(delta::MAX_FILE)
        .read_to_end(&mut bytes)?;
    Ok((agent.to_owned(), bytes))
}

/// Splits the new package into literal and patch segments; returns their payloads.
fn segments(
    package: &[u8],
    (base_name, base): &(String, Vec<u8>),
    platform: &str,
    out: &mut Vec<Segment>,
) -> Result<Vec<Vec<u8>>, MakeError> {
    let mut archive = ZipArchive::new(std::io::Cursor::new(package))?;
    let mut payloads = Vec::new();
    let mut cursor = 0usize;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let name = entry.name()?.into_owned();
        let Some(start) = entry.data_start() else {
            continue;
        };
        let (start, end) = (
            usize::try_from(start).unwrap_or(usize::MAX),
            usize::try_from(start.saturating_add(entry.compressed_size())).unwrap_or(usize::MAX),
        );
        let (agent, updater) = executable_names(platform);
        if name != agent && name != updater {
            continue;
        }
        if start < cursor
            || end > package.len()
            || entry.compression() != CompressionMethod::Deflated
        {
            continue;
        }
        let mut raw = Vec::new();
        entry.read_to_end(&mut raw)?;
        let Some(level) = reproducing_level(&raw, &package[start..end]) else {
            tracing::info!(entry = %name, "entry kept whole in the delta: its deflate could not be reproduced");
            continue;
        };
        let patch = delta::make_patch(base, &raw)?;
        push_literal(&package[cursor..start], out, &mut payloads);
        out.push(Segment::Patch {
            base: base_name.clone(),
            base_length: base.len() as u64,
            base_sha256: delta::sha256_hex(base),
            patch_length: patch.len() as u64,
            raw_length: raw.len() as u64,
            level,
        });
        payloads.push(patch);
        cursor = end;
    }
    push_literal(&package[cursor..], out, &mut payloads);
    Ok(payloads)
}

fn push_literal(bytes: &[u8], out: &mut Vec<Segment>, payloads: &mut Vec<Vec<u8>>) {
    if !bytes.is_empty() {
        out.push(Segment::Literal {
            length: bytes.len() as u64,
        });
        payloads.push(bytes.to_vec());
    }
}

/// The deflate level whose output of `raw` is exactly `compressed`, if any.
fn reproducing_level(raw: &[u8], compressed: &[u8]) -> Option<u32> {
    LEVELS
        .into_iter()
        .find(|level| delta::deflate(raw, *level).is_ok_and(|d| d == compressed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cms_protocol::update::PackageManifest;

    fn package(dir: &Path, version: &str, agent: &[u8], updater: &[u8]) -> PathBuf {
        std::fs::write(dir.join("a"), agent).unwrap();
        std::fs::write(dir.join("u"), updater).unwrap();
        let manifest = PackageManifest {
            version: version.into(),
            platform: "linux-x86_64".into(),
            agent: "cms_agent".into(),
            updater: "updater".into(),
        };
        let inputs = super::super::archive::Inputs {
            agent: &dir.join("a"),
            updater: &dir.join("u"),
        };
        let built = super::super::archive::build(dir, &manifest, &inputs).unwrap();
        let path = dir.join(format!("{version}.zip"));
        built.file.persist(&path).unwrap();
        path
    }

    fn exe(seed: u64, len: usize) -> Vec<u8> {
        // Half noise, half runs: deflate shrinks it some, like an executable.
        let mut state = seed;
        (0..len)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 2 == 0 { (state >> 56) as u8 } else { 0 }
            })
            .collect()
    }

    #[test]
    fn a_delta_rebuilds_the_new_package_from_the_installed_files_and_is_small() {
        let dir = tempfile::tempdir().unwrap();
        let old_agent = exe(3, 400_000);
        // The updater shares code with the agent, which is the reference of both patches.
        let old_updater = [&old_agent[100_000..250_000], &exe(5, 50_000)[..]].concat();
        let old = package(dir.path(), "1.0.0", &old_agent, &old_updater);
        let mut new_agent = old_agent.clone();
        new_agent[5000..5005].copy_from_slice(b"2.0.0");
        let new = package(dir.path(), "2.0.0", &new_agent, &old_updater);
        let length = std::fs::metadata(&new).unwrap().len();
        let job = Job {
            old_package: old,
            new_package: new.clone(),
            out: dir.path().join("out/1.0.0.delta"),
            header: DeltaHeader {
                from: "1.0.0".into(),
                to: "2.0.0".into(),
                platform: "linux-x86_64".into(),
                segments: Vec::new(),
            },
            package_length: length,
        };
        let target = job.run().unwrap().expect("worth keeping");
        assert!(target.length * 10 < length, "{} of {length}", target.length);
        let installed = dir.path().join("installed");
        std::fs::create_dir_all(&installed).unwrap();
        std::fs::write(installed.join("cms_agent"), &old_agent).unwrap();
        std::fs::write(installed.join("updater"), &old_updater).unwrap();
        let lookup = |name: &str| Some(installed.join(name));
        let delta_bytes = std::fs::read(dir.path().join("out/1.0.0.delta")).unwrap();
        let mut rebuilt = Vec::new();
        delta::apply(&mut delta_bytes.as_slice(), &lookup, &mut rebuilt, length).unwrap();
        assert_eq!(rebuilt, std::fs::read(&new).unwrap());
        assert_eq!(delta::sha256_hex(&delta_bytes), target.sha256);
    }

    #[test]
    fn the_size_rule_keeps_at_most_half() {
        assert!(worth_keeping(50, 100));
        assert!(!worth_keeping(51, 100));
    }
}
