//! Reading a release package: its manifest and the two executables inside.
//!
//! The agent reads the manifest and extracts the updater; the updater extracts the agent. Both
//! use this one reader. It refuses a package whose manifest is missing or does not name its
//! files, reads the manifest with a size cap, and never writes outside the target path given.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::system;
use cms_protocol::update::{MANIFEST_NAME, PackageManifest};

/// Most bytes the manifest may have (it is a few lines of JSON).
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Why the package cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The file cannot be opened or read.
    #[error("cannot read package {path}: {source}")]
    Io {
        /// The package.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Not a zip, or an entry is missing or damaged.
    #[error("package {path} is damaged: {reason}")]
    Damaged {
        /// The package.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// An opened release package.
#[derive(Debug)]
pub struct Package {
    path: PathBuf,
    /// What the package says it holds.
    pub manifest: PackageManifest,
}

impl Package {
    /// Opens `path` and reads its manifest.
    pub fn open(path: &Path) -> Result<Self, PackageError> {
        let mut package = Package {
            path: path.to_path_buf(),
            manifest: PackageManifest {
                version: String::new(),
                platform: String::new(),
                agent: String::new(),
                updater: String::new(),
            },
        };
        let bytes = package.read_entry(MANIFEST_NAME, MAX_MANIFEST_BYTES)?;
        package.manifest = serde_json::from_slice(&bytes)
            .map_err(|e| package.damaged(format!("bad manifest: {e}")))?;
        Ok(package)
    }

    /// Writes the package's agent executable to `target`, flushed to disk and runnable.
    pub fn extract_agent(&self, target: &Path) -> Result<(), PackageError> {
        self.extract(&self.manifest.agent, target)
    }

    /// Writes the package's updater executable to `target`, flushed to disk and runnable.
    pub fn extract_updater(&self, target: &Path) -> Result<(), PackageError> {
        self.extract(&self.manifest.updater, target)
    }

    /// Size of the agent executable once extracted (what staging it takes on the install
    /// volume).
    pub fn agent_len(&self) -> Result<u64, PackageError> {
        let mut archive = self.archive()?;
        let entry = archive
            .by_name(&self.manifest.agent)
            .map_err(|e| self.damaged(format!("no {:?}: {e}", self.manifest.agent)))?;
        Ok(entry.size())
    }

    fn extract(&self, name: &str, target: &Path) -> Result<(), PackageError> {
        let mut archive = self.archive()?;
        let mut entry = archive
            .by_name(name)
            .map_err(|e| self.damaged(format!("no {name:?}: {e}")))?;
        let io_err = |source| PackageError::Io {
            path: target.to_path_buf(),
            source,
        };
        let mut out = crate::fs::open_no_follow(
            target,
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )
        .map_err(io_err)?;
        io::copy(&mut entry, &mut out).map_err(io_err)?;
        out.flush().and_then(|()| out.sync_all()).map_err(io_err)?;
        system::make_executable(target).map_err(io_err)
    }

    fn read_entry(&self, name: &str, limit: u64) -> Result<Vec<u8>, PackageError> {
        let mut archive = self.archive()?;
        let entry = archive
            .by_name(name)
            .map_err(|e| self.damaged(format!("no {name}: {e}")))?;
        let mut bytes = Vec::new();
        entry
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| self.damaged(e.to_string()))?;
        Ok(bytes)
    }

    /// Opened by path as given: the updater passes the path of the handle it checked and
    /// holds (`/proc/self/fd/N`, a link by design), so links are its check's business
    /// (`crates/updater/src/package_check.rs`), not this open's.
    fn archive(&self) -> Result<zip::ZipArchive<File>, PackageError> {
        let file = File::open(&self.path).map_err(|source| PackageError::Io {
            path: self.path.clone(),
            source,
        })?;
        zip::ZipArchive::new(file).map_err(|e| self.damaged(e.to_string()))
    }

    fn damaged(&self, reason: String) -> PackageError {
        PackageError::Damaged {
            path: self.path.clone(),
            reason,
        }
    }
}
