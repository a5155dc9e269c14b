//! Owner-only files and folders: the data directory (0700), the SQLite database and its WAL
//! files (0600), signing keys (0600).
//!
//! On Unix the modes are set explicitly, and an existing data directory or database that others
//! can read is tightened (the caller logs it). On Windows the data directory inherits the ACL of
//! the folder it is created in, which the operator chooses; nothing is changed there. This
//! module must never loosen a mode and never follow the data into another place.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

/// Creates `dir` (and its parents) owner-only, or tightens an existing one. Returns whether an
/// existing folder had to be tightened.
pub fn private_dir(dir: &Path) -> io::Result<bool> {
    if !dir.exists() {
        create_dir_private(dir)?;
        return Ok(false);
    }
    restrict(dir, 0o700)
}

/// Creates `file` empty and owner-only if missing (never truncating), or tightens it. Returns
/// whether an existing file had to be tightened.
pub fn private_file(file: &Path) -> io::Result<bool> {
    if file.exists() {
        return restrict(file, 0o600);
    }
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    owner_only(&mut options);
    options.open(file).map(drop)?;
    Ok(false)
}

/// Tightens `file` to owner-only when it exists; a missing file is fine.
pub fn restrict_if_present(file: &Path) -> io::Result<bool> {
    match fs::metadata(file) {
        Ok(_) => restrict(file, 0o600),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(unix)]
fn create_dir_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // The mode passed to mkdir is filtered by the umask, so set it once more.
    restrict(dir, 0o700).map(drop)
}

#[cfg(not(unix))]
fn create_dir_private(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// Sets `mode` when the current mode allows more than it; returns whether it changed.
#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let current = fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(current & mode))?;
    Ok(true)
}

#[cfg(not(unix))]
fn restrict(_path: &Path, _mode: u32) -> io::Result<bool> {
    Ok(false)
}

/// Makes a file about to be created owner-only (0600 on Unix).
#[cfg(unix)]
pub fn owner_only(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

/// Makes a file about to be created owner-only (inherited ACL on Windows).
#[cfg(not(unix))]
pub fn owner_only(_options: &mut OpenOptions) {}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_dir_and_file_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        assert!(!private_dir(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("db");
        assert!(!private_file(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn existing_open_modes_are_tightened_never_loosened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("db");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(!private_file(&file).unwrap(), "0400 is already private");
        assert_eq!(mode(&file), 0o400);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(restrict_if_present(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert!(!restrict_if_present(&dir.join("missing")).unwrap());
    }
}
