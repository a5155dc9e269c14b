//! Writing files so that a crash or a concurrent reader never sees half of one, and telling a
//! full disk apart from other write failures.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::system;

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old or the new content,
/// never a mix: temp file in the same folder, flush to disk, rename over. The file is private
/// to its owner (0600 on Linux; on Windows it inherits the storage folder's DACL), because the
/// files written this way hold credentials and secrets.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut temp_name = file_name.to_os_string();
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let result = write_and_sync(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_and_sync(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = system::create_private_file(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Whether `err` says the disk (or the user's quota) is full: a condition that passes once
/// space is freed, unlike a refused permission or a missing folder.
pub fn is_out_of_space(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_a_full_disk_or_quota_counts_as_out_of_space() {
        assert!(is_out_of_space(&io::Error::from(
            io::ErrorKind::StorageFull
        )));
        assert!(is_out_of_space(&io::Error::from(
            io::ErrorKind::QuotaExceeded
        )));
        assert!(!is_out_of_space(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}
