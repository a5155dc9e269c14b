//! The update delta format: how a release package is rebuilt, byte for byte, from the files of
//! an older release that an agent already has installed plus a small download.
//!
//! A delta is `MAGIC`, a little-endian `u32` header length, the JSON [`DeltaHeader`], then the
//! payload of each segment in order. Concatenating the segments' outputs gives the new package:
//! a [`Segment::Literal`] is copied as it is (zip headers, the manifest entry, the central
//! directory); a [`Segment::Patch`] is a zstd frame compressed with an old release's file as
//! its reference prefix (zstd's `--patch-from`, window as long as base plus file), whose output
//! is the new file's bytes, deflated again at the recorded level to give the zip entry's data.
//! The maker only emits a patch when that re-deflation reproduces the package's bytes exactly.
//!
//! Nothing here is trusted: the rebuilt package must still match the signed package's length
//! and SHA-256 before anything uses it (the caller's job). This module must never write more
//! than the caller's output bound, never read a base file longer than its header says, and
//! never allocate from an unchecked length.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use flate2::Compression;
use flate2::write::DeflateEncoder;
use serde::{Deserialize, Serialize};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, compress_bound};

/// First bytes of every delta file.
pub const MAGIC: &[u8; 8] = b"CMSDLT01";
/// Largest header accepted.
pub const MAX_HEADER: u32 = 1 << 20;
/// Largest base file or rebuilt file accepted (a release executable is a few MiB).
pub const MAX_FILE: u64 = 1 << 30;
/// zstd level of the patches (with the reference prefix and long-distance matching, a patch
/// release's delta is a small fraction of the package at this level).
pub const PATCH_LEVEL: i32 = 9;
/// File name suffix of a delta (also in its signed TUF target name).
pub const DELTA_SUFFIX: &str = ".delta";

/// Name of the delta from `from` to `to` for `platform`: its TUF target name and file name.
pub fn delta_target_name(from: &str, to: &str, platform: &str) -> String {
    format!("cms_agent-{from}-to-{to}-{platform}{DELTA_SUFFIX}")
}

/// Key of the TUF target `custom` object naming the version a delta starts from.
pub const CUSTOM_DELTA_FROM: &str = "delta_from";

/// What a delta holds, before its payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaHeader {
    /// Version the bases belong to.
    pub from: String,
    /// Version of the rebuilt package.
    pub to: String,
    /// Platform of both.
    pub platform: String,
    /// The pieces of the rebuilt package, in order.
    pub segments: Vec<Segment>,
}

/// One piece of the rebuilt package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Segment {
    /// `length` payload bytes copied as they are.
    Literal {
        /// Bytes.
        length: u64,
    },
    /// A zstd patch against an installed file of the old release, re-deflated.
    Patch {
        /// File name of the base in the old package (`cms_agent`, `updater.exe`, ...).
        base: String,
        /// Its exact length.
        base_length: u64,
        /// Its lower-case hex SHA-256.
        base_sha256: String,
        /// Payload bytes (the zstd frame).
        patch_length: u64,
        /// Length of the patched (uncompressed) file.
        raw_length: u64,
        /// Deflate level that reproduces the package's entry data.
        level: u32,
    },
}

/// Why a delta could not be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Reading or writing failed.
    #[error("delta I/O: {0}")]
    Io(#[from] io::Error),
    /// The delta is not well formed.
    #[error("malformed delta: {0}")]
    Malformed(String),
    /// A base file is missing or is not the released one.
    #[error("base file {name}: {reason}")]
    Base {
        /// The base's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// zstd refused the data.
    #[error("zstd: {0}")]
    Zstd(String),
    /// The rebuilt package would be longer than allowed.
    #[error("the rebuilt package would exceed {0} bytes")]
    TooLong(u64),
}

fn zstd_err(code: usize) -> DeltaError {
    DeltaError::Zstd(zstd::zstd_safe::get_error_name(code).to_owned())
}

/// The zstd window that covers `base` and the file after it.
fn window_log(total: usize) -> u32 {
    let bits = usize::BITS - total.max(1).leading_zeros();
    bits.clamp(10, 31)
}

/// Compresses `raw` with `base` as the reference prefix (`zstd --patch-from base raw`).
pub fn make_patch(base: &[u8], raw: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut cctx = CCtx::create();
    let window = window_log(base.len().saturating_add(raw.len()));
    for parameter in [
        CParameter::CompressionLevel(PATCH_LEVEL),
        CParameter::WindowLog(window),
        CParameter::EnableLongDistanceMatching(true),
    ] {
        cctx.set_parameter(parameter).map_err(zstd_err)?;
    }
    cctx.ref_prefix(base).map_err(zstd_err)?;
    let mut out = Vec::with_capacity(compress_bound(raw.len()));
    cctx.compress2(&mut out, raw).map_err(zstd_err)?;
    Ok(out)
}

/// Undoes [`make_patch`]; the output may be at most `raw_length` bytes.
pub fn apply_patch(base: &[u8], patch: &[u8], raw_length: u64) -> Result<Vec<u8>, DeltaError> {
    let capacity = usize::try_from(raw_length.min(MAX_FILE))
        .map_err(|_| DeltaError::Malformed("raw length".into()))?;
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(31))
        .map_err(zstd_err)?;
    dctx.ref_prefix(base).map_err(zstd_err)?;
    let mut out = Vec::with_capacity(capacity);
    dctx.decompress(&mut out, patch).map_err(zstd_err)?;
    if out.len() as u64 != raw_length {
        return Err(DeltaError::Malformed(format!(
            "patch gave {} bytes, header says {raw_length}",
            out.len()
        )));
    }
    Ok(out)
}

/// Size of the writes into the deflater: the packager streams each executable into the zip
/// with `std::io::copy`, whose 8 KiB writes the output of some deflate backends depends on.
const WRITE_CHUNK: usize = 8 * 1024;

/// Raw deflate of `raw` at `level`, as the package's zip entries hold it.
pub fn deflate(raw: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::new(level));
    for chunk in raw.chunks(WRITE_CHUNK) {
        encoder.write_all(chunk)?;
    }
    encoder.finish()
}

/// Writes a delta: `payloads` holds one payload per segment of `header`, in order.
pub fn write_delta(
    out: &mut impl Write,
    header: &DeltaHeader,
    payloads: &[&[u8]],
) -> Result<(), DeltaError> {
    let json = serde_json::to_vec(header).map_err(|e| DeltaError::Malformed(e.to_string()))?;
    let length = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= MAX_HEADER)
        .ok_or_else(|| DeltaError::Malformed("header too large".into()))?;
    out.write_all(MAGIC)?;
    out.write_all(&length.to_le_bytes())?;
    out.write_all(&json)?;
    for payload in payloads {
        out.write_all(payload)?;
    }
    Ok(())
}

/// Reads the magic and the header of a delta.
pub fn read_header(input: &mut impl Read) -> Result<DeltaHeader, DeltaError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(DeltaError::Malformed("not a delta (bad magic)".into()));
    }
    let mut length = [0u8; 4];
    input.read_exact(&mut length)?;
    let length = u32::from_le_bytes(length);
    if length > MAX_HEADER {
        return Err(DeltaError::Malformed("header too large".into()));
    }
    let json = read_bounded(input, u64::from(length))?;
    serde_json::from_slice(&json).map_err(|e| DeltaError::Malformed(e.to_string()))
}

/// Exactly `length` bytes of `input` (at most [`MAX_FILE`]).
fn read_bounded(input: &mut impl Read, length: u64) -> Result<Vec<u8>, DeltaError> {
    if length > MAX_FILE {
        return Err(DeltaError::Malformed(format!("{length} bytes is too long")));
    }
    let mut bytes = Vec::new();
    input.take(length).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != length {
        return Err(DeltaError::Malformed("truncated".into()));
    }
    Ok(bytes)
}

/// Reads a base file whole, refusing one that is not `length` bytes with `sha256`.
fn read_base(
    name: &str,
    path: Option<PathBuf>,
    length: u64,
    sha256: &str,
) -> Result<Vec<u8>, DeltaError> {
    let base_err = |reason: String| DeltaError::Base {
        name: name.to_owned(),
        reason,
    };
    let path = path.ok_or_else(|| base_err("not installed here".into()))?;
    let file =
        std::fs::File::open(&path).map_err(|e| base_err(format!("{}: {e}", path.display())))?;
    if length > MAX_FILE {
        return Err(base_err(format!("{length} bytes is too long")));
    }
    // One byte more than announced is read, so a longer file is told apart.
    let mut bytes = Vec::new();
    file.take(length.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| base_err(e.to_string()))?;
    if bytes.len() as u64 != length {
        return Err(base_err(format!(
            "{} is not the released file ({} bytes or more, expected {length})",
            path.display(),
            bytes.len()
        )));
    }
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
        return Err(base_err(format!(
            "{} is not the released file (SHA-256 {actual}, expected {sha256})",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Rebuilds the package from `delta` into `out`: `base_path` maps a base's name to the
/// installed file (or `None`); at most `max_output` bytes are written. Returns the bytes
/// written. The output is unverified (see the module docs).
pub fn apply(
    delta: &mut impl Read,
    base_path: &dyn Fn(&str) -> Option<PathBuf>,
    out: &mut impl Write,
    max_output: u64,
) -> Result<u64, DeltaError> {
    let header = read_header(delta)?;
    let mut written = 0u64;
    for segment in &header.segments {
        let bytes = match segment {
            Segment::Literal { length } => read_bounded(delta, *length)?,
            Segment::Patch {
                base,
                base_length,
                base_sha256,
                patch_length,
                raw_length,
                level,
            } => {
                let base_bytes = read_base(base, base_path(base), *base_length, base_sha256)?;
                let patch = read_bounded(delta, *patch_length)?;
                let raw = apply_patch(&base_bytes, &patch, *raw_length)?;
                deflate(&raw, (*level).min(9))?
            }
        };
        written = written.saturating_add(bytes.len() as u64);
        if written > max_output {
            return Err(DeltaError::TooLong(max_output));
        }
        out.write_all(&bytes)?;
    }
    if delta.read(&mut [0u8; 1])? != 0 {
        return Err(DeltaError::Malformed("bytes after the last segment".into()));
    }
    Ok(written)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn a_patch_against_a_similar_base_is_small_and_round_trips() {
        let base = sample(1, 1 << 20);
        let mut new = base.clone();
        new[1000..1010].copy_from_slice(b"2.0.0-abcd");
        new.extend_from_slice(&sample(2, 1000));
        let patch = make_patch(&base, &new).unwrap();
        assert!(patch.len() < 4000, "patch is {} bytes", patch.len());
        assert_eq!(apply_patch(&base, &patch, new.len() as u64).unwrap(), new);
        assert!(apply_patch(&base, &patch, new.len() as u64 - 1).is_err());
        let other = sample(3, 1 << 20);
        assert_ne!(
            apply_patch(&other, &patch, new.len() as u64).ok().as_ref(),
            Some(&new)
        );
    }

    #[test]
    fn apply_rebuilds_literals_and_patches_and_checks_bases() {
        let dir = tempfile_dir();
        let base = sample(4, 200_000);
        let base_path = dir.join("cms_agent");
        std::fs::write(&base_path, &base).unwrap();
        let mut raw = base.clone();
        raw[10] ^= 1;
        let patch = make_patch(&base, &raw).unwrap();
        let header = DeltaHeader {
            from: "1.0.0".into(),
            to: "2.0.0".into(),
            platform: "linux-x86_64".into(),
            segments: vec![
                Segment::Literal { length: 3 },
                Segment::Patch {
                    base: "cms_agent".into(),
                    base_length: base.len() as u64,
                    base_sha256: sha256_hex(&base),
                    patch_length: patch.len() as u64,
                    raw_length: raw.len() as u64,
                    level: 6,
                },
            ],
        };
        let mut delta = Vec::new();
        write_delta(&mut delta, &header, &[b"abc", &patch]).unwrap();
        let lookup = |name: &str| (name == "cms_agent").then(|| base_path.clone());
        let mut out = Vec::new();
        apply(&mut delta.as_slice(), &lookup, &mut out, u64::MAX).unwrap();
        let mut expected = b"abc".to_vec();
        expected.extend(deflate(&raw, 6).unwrap());
        assert_eq!(out, expected);
        // Bounded output, a changed base, a missing base, trailing bytes: all refused.
        assert!(matches!(
            apply(&mut delta.as_slice(), &lookup, &mut Vec::new(), 10),
            Err(DeltaError::TooLong(10))
        ));
        let none = |_: &str| None;
        assert!(matches!(
            apply(&mut delta.as_slice(), &none, &mut Vec::new(), u64::MAX),
            Err(DeltaError::Base { .. })
        ));
        let mut longer = delta.clone();
        longer.push(0);
        assert!(apply(&mut longer.as_slice(), &lookup, &mut Vec::new(), u64::MAX).is_err());
        let mut longer_base = base.clone();
        longer_base.push(0);
        std::fs::write(&base_path, &longer_base).unwrap();
        assert!(matches!(
            apply(&mut delta.as_slice(), &lookup, &mut Vec::new(), u64::MAX),
            Err(DeltaError::Base { .. })
        ));
        std::fs::write(&base_path, &raw).unwrap();
        assert!(matches!(
            apply(&mut delta.as_slice(), &lookup, &mut Vec::new(), u64::MAX),
            Err(DeltaError::Base { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cms-delta-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
