//! Building a release package: one zip holding the agent, the updater and `manifest.json`.
//!
//! The zip is written into a temp file next to its final place, flushed to disk and hashed; the
//! caller renames it into place. This module must never alter the executables' bytes (deflate is
//! lossless; a later step signs the executables and the package must carry them as they are),
//! never read a whole executable into memory, and never write the final path itself.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cms_protocol::update::{MANIFEST_NAME, PackageManifest};
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Unix mode of the executables inside the package.
const EXECUTABLE_MODE: u32 = 0o755;
/// Unix mode of the manifest inside the package.
const MANIFEST_MODE: u32 = 0o644;
/// Read buffer for hashing.
const HASH_BUFFER: usize = 64 * 1024;

/// Why a package could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading an input or writing the temp file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The zip writer failed.
    #[error("cannot write the zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// The manifest could not be serialized.
    #[error("cannot serialize the manifest: {0}")]
    Manifest(#[from] serde_json::Error),
}

/// A finished package in a temp file (removed when dropped unless persisted).
#[derive(Debug)]
pub struct BuiltPackage {
    /// The temp file, flushed to disk.
    pub file: NamedTempFile,
    /// Its length in bytes.
    pub length: u64,
    /// Lower-case hex SHA-256 of its bytes.
    pub sha256: String,
}

/// The executables that go into a package.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The agent executable, stored as `manifest.agent`.
    pub agent: &'a Path,
    /// The updater executable, stored as `manifest.updater`.
    pub updater: &'a Path,
}

/// Builds the package for `manifest` in a new temp file inside `dir` (blocking I/O).
pub fn build(
    dir: &Path,
    manifest: &PackageManifest,
    inputs: &Inputs<'_>,
) -> Result<BuiltPackage, ArchiveError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ArchiveError::Io { path, source }
    };
    let mut file = tempfile::Builder::new()
        .prefix(".publish-")
        .suffix(".zip.tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let temp_path = file.path().to_owned();
    write_zip(file.as_file_mut(), manifest, inputs)?;
    let handle = file.as_file_mut();
    make_world_readable(handle).map_err(io_err(&temp_path))?;
    handle.sync_all().map_err(io_err(&temp_path))?;
    handle
        .seek(SeekFrom::Start(0))
        .map_err(io_err(&temp_path))?;
    let (length, sha256) = hash(handle).map_err(io_err(&temp_path))?;
    Ok(BuiltPackage {
        file,
        length,
        sha256,
    })
}

fn write_zip(
    file: &mut File,
    manifest: &PackageManifest,
    inputs: &Inputs<'_>,
) -> Result<(), ArchiveError> {
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let manifest_options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(MANIFEST_MODE);
    zip.start_file(MANIFEST_NAME, manifest_options)?;
    let manifest_json = serde_json::to_vec_pretty(manifest)?;
    zip.write_all(&manifest_json)
        .map_err(|source| ArchiveError::Io {
            path: MANIFEST_NAME.to_owned(),
            source,
        })?;
    add_executable(&mut zip, &manifest.agent, inputs.agent)?;
    add_executable(&mut zip, &manifest.updater, inputs.updater)?;
    let buffered = zip.finish()?;
    buffered
        .into_inner()
        .map_err(|error| ArchiveError::Io {
            path: "package".to_owned(),
            source: error.into_error(),
        })?
        .flush()
        .map_err(|source| ArchiveError::Io {
            path: "package".to_owned(),
            source,
        })
}

/// Streams one executable into the zip under `name`, mode 0o755.
fn add_executable<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    name: &str,
    source: &Path,
) -> Result<(), ArchiveError> {
    let io_err = |source_err| ArchiveError::Io {
        path: PathBuf::from(source).display().to_string(),
        source: source_err,
    };
    let mut input = File::open(source).map_err(io_err)?;
    let size = input.metadata().map_err(io_err)?.len();
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(EXECUTABLE_MODE)
        .large_file(size >= u64::from(u32::MAX));
    zip.start_file(name, options)?;
    let copied = std::io::copy(&mut input, zip).map_err(io_err)?;
    if copied != size {
        // Still being written (a build or copy in progress): refuse rather than ship half a file.
        return Err(io_err(std::io::Error::other(format!(
            "changed while being packaged ({size} bytes at open, {copied} read)"
        ))));
    }
    Ok(())
}

/// Length and lower-case hex SHA-256 of everything `reader` yields.
pub fn hash(reader: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER];
    let mut length = 0u64;
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        length += read as u64;
    }
    Ok((length, hex::encode(hasher.finalize())))
}

/// Temp files are created 0600; the package must be readable by a server running as another
/// user than the publisher.
#[cfg(unix)]
pub(crate) fn make_world_readable(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
pub(crate) fn make_world_readable(_file: &File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn package_holds_exact_executables_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let agent: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let updater = b"#!/bin/sh\nexit 0\n".to_vec();
        std::fs::write(dir.path().join("a"), &agent).unwrap();
        std::fs::write(dir.path().join("u"), &updater).unwrap();
        let manifest = PackageManifest {
            version: "1.2.3".into(),
            platform: "linux-x86_64".into(),
            agent: "cms_agent".into(),
            updater: "updater".into(),
        };
        let inputs = Inputs {
            agent: &dir.path().join("a"),
            updater: &dir.path().join("u"),
        };
        let built = build(dir.path(), &manifest, &inputs).unwrap();
        let bytes = std::fs::read(built.file.path()).unwrap();
        assert_eq!(bytes.len() as u64, built.length);
        assert_eq!(built.sha256, hex::encode(Sha256::digest(&bytes)));

        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let read = |archive: &mut zip::ZipArchive<_>, name: &str| {
            let mut entry = archive.by_name(name).unwrap();
            let mode = entry.unix_mode();
            let mut out = Vec::new();
            entry.read_to_end(&mut out).unwrap();
            (out, mode)
        };
        assert_eq!(read(&mut archive, "cms_agent"), (agent, Some(0o100755)));
        assert_eq!(read(&mut archive, "updater"), (updater, Some(0o100755)));
        let (json, _) = read(&mut archive, MANIFEST_NAME);
        let parsed: PackageManifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed, manifest);
    }
}
