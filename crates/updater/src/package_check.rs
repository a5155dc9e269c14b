//! The package checked again: the agent verified its length and SHA-256 against the signed
//! release metadata and passes both (`--package-length`, `--package-sha256`); the updater
//! opens the package once, on a handle no one can write through
//! ([`system::open_exclusive_read`]), checks both on that handle, and reads the package for
//! extraction only while that handle is open and only as the file it names
//! ([`system::pinned_path`]). A package swapped or altered after the agent's check is refused
//! before anything changes. An older agent passes neither value: the package is then used as
//! before, with a warning.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use cms_platform::package::Package;
use cms_platform::system;
use cms_protocol::update::package_file_name;
use sha2::{Digest, Sha256};

/// What the agent verified the package to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// SHA-256 as hex, as the agent passed it (checked here to be 64 hex digits).
    pub sha256: String,
    /// Length in bytes.
    pub length: u64,
}

/// The opened package, and the handle that keeps it from changing while it is read.
#[derive(Debug)]
pub struct Opened {
    /// The package, read through a path that names the checked file.
    pub package: Package,
    /// Held until the new agent is extracted; `None` when nothing was checked (an older agent).
    pub pin: Option<File>,
}

/// Opens the package at `path`, checked against `expected` when the agent passed it; `Err`
/// says why it is refused.
pub fn open(path: &Path, expected: Option<&Expected>) -> Result<Opened, String> {
    let Some(expected) = expected else {
        tracing::warn!(
            "no --package-sha256/--package-length (an older agent launched this updater): the package is not checked again"
        );
        let package = Package::open(path).map_err(|err| format!("refusing the package: {err}"))?;
        return Ok(Opened { package, pin: None });
    };
    let mut file = system::open_exclusive_read(path)
        .map_err(|err| format!("cannot open the package {}: {err}", path.display()))?;
    check(&mut file, expected)?;
    tracing::info!(
        length = expected.length,
        sha256 = %expected.sha256,
        "package verified again on a handle no one can write through"
    );
    let package = Package::open(&system::pinned_path(&file, path))
        .map_err(|err| format!("refusing the package: {err}"))?;
    Ok(Opened {
        package,
        pin: Some(file),
    })
}

/// Checks that `file`, read from its current position to its end, has `expected`'s length and
/// SHA-256; never reads more than one byte past the expected length.
pub fn check(file: &mut File, expected: &Expected) -> Result<(), String> {
    let wanted = parse_sha256(&expected.sha256)?;
    let actual_len = file
        .metadata()
        .map_err(|err| format!("cannot read the package's length: {err}"))?
        .len();
    if actual_len != expected.length {
        return Err(format!(
            "package length mismatch: expected {}, got {actual_len}",
            expected.length
        ));
    }
    let limit = expected.length.saturating_add(1);
    let (read, digest) =
        hash(file.take(limit)).map_err(|err| format!("cannot read the package: {err}"))?;
    if read != expected.length {
        return Err(format!(
            "package length mismatch: expected {}, read {read}",
            expected.length
        ));
    }
    if digest != wanted {
        return Err(format!(
            "package sha256 mismatch: expected {}, got {}",
            to_hex(&wanted),
            to_hex(&digest)
        ));
    }
    Ok(())
}

/// The version in the package's file name (`cms_agent-<version>-<platform>.zip`, named by the
/// agent from the version it checked), for the journal of a package refused unread.
pub fn version_in_name(path: &Path) -> Option<String> {
    let template = package_file_name("\u{0}", system::PLATFORM);
    let (prefix, suffix) = template.split_once('\u{0}')?;
    let name = path.file_name()?.to_str()?;
    let version = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (!version.is_empty()).then(|| version.to_owned())
}

fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let bad = || format!("--package-sha256 {text:?} is not 64 hex digits");
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digits = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(digits, 16).map_err(|_| bad())?;
    }
    Ok(bytes)
}

fn hash(mut reader: impl Read) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            return Ok((read, hasher.finalize().into()));
        }
        hasher.update(&buffer[..n]);
        read += n as u64;
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// SHA-256 of `abc` (FIPS 180-2, appendix B.1).
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file
    }

    fn expected(sha256: &str, length: u64) -> Expected {
        Expected {
            sha256: sha256.to_owned(),
            length,
        }
    }

    #[test]
    fn the_package_the_agent_checked_passes_in_either_case_of_hex() {
        check(&mut file_with(b"abc"), &expected(ABC_SHA256, 3)).unwrap();
        let upper = ABC_SHA256.to_ascii_uppercase();
        check(&mut file_with(b"abc"), &expected(&upper, 3)).unwrap();
    }

    #[test]
    fn other_bytes_of_the_same_length_are_refused_naming_both_hashes() {
        let err = check(&mut file_with(b"abd"), &expected(ABC_SHA256, 3)).unwrap_err();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert!(err.contains(ABC_SHA256), "{err}");
        let actual = to_hex(&hash(&b"abd"[..]).unwrap().1);
        assert!(err.contains(&actual), "{err}");
    }

    #[test]
    fn another_length_is_refused() {
        let err = check(&mut file_with(b"abcd"), &expected(ABC_SHA256, 3)).unwrap_err();
        assert!(err.contains("length mismatch: expected 3, got 4"), "{err}");
        let err = check(&mut file_with(b"ab"), &expected(ABC_SHA256, 3)).unwrap_err();
        assert!(err.contains("length mismatch"), "{err}");
    }

    #[test]
    fn a_malformed_hash_is_refused() {
        let signed = format!("+{}", &ABC_SHA256[1..]);
        let odd = format!("{}zz", &ABC_SHA256[2..]);
        for bad in ["", "abc", &ABC_SHA256[1..], &odd, &signed] {
            let err = check(&mut file_with(b"abc"), &expected(bad, 3)).unwrap_err();
            assert!(err.contains("not 64 hex digits"), "{bad:?}: {err}");
        }
        let multibyte = format!("é{}", &ABC_SHA256[2..]);
        assert!(check(&mut file_with(b"abc"), &expected(&multibyte, 3)).is_err());
    }

    #[test]
    fn the_version_comes_from_the_name_the_agent_gave_the_package() {
        let name = package_file_name("2.1.0-rc.1", system::PLATFORM);
        let path = Path::new("updates").join(name);
        assert_eq!(version_in_name(&path).as_deref(), Some("2.1.0-rc.1"));
        assert_eq!(version_in_name(Path::new("updates/other.zip")), None);
        let empty = package_file_name("", system::PLATFORM);
        assert_eq!(version_in_name(Path::new(&empty)), None);
    }
}
