//! Writing files so that a crash or a concurrent reader never sees half of one, private to
//! their owner, and telling a full disk apart from other write failures; opening the files of
//! the data folder without ever following a link at their name.
//!
//! Every file of the data folder is opened through [`open_no_follow`] (or the readers and
//! writers built on it): a symbolic link, junction or other reparse point where one of its
//! files goes is refused, never read or written through. The data folder's own folders are
//! checked once at start (`system::secure_data_dir`, which removes links) and only
//! administrators can change them afterwards, so refusing a link at the last component closes
//! what is left: a link planted between that check and an open, or by a handle kept open from
//! before the takeover. Logs are the one exception: the log writer opens its own files, in a
//! folder the same check keeps link-free (docs/SECURITY.md).
//!
//! This module must never use `system` (the OS seam uses it to write its own files, so the
//! other way round would be a circle): the private file it writes through is made here, the
//! one per-OS function outside `system/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Opens `path` with `options`, refusing (never following) a link at `path` itself: the error
/// then says the name is a link. On Linux the open fails with `O_NOFOLLOW`; on Windows the
/// link itself is opened (`FILE_FLAG_OPEN_REPARSE_POINT`), seen to be one and closed again,
/// so neither reads nor writes reach where it points.
pub fn open_no_follow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    no_follow_flag(options);
    let file = options.open(path).map_err(|err| {
        if is_link_refusal(&err) {
            link_refused(path)
        } else {
            err
        }
    })?;
    if opened_a_link(&file)? {
        return Err(link_refused(path));
    }
    Ok(file)
}

/// The whole of `path`, refusing a link at it (see [`open_no_follow`]).
pub fn read_no_follow(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_no_follow(path, OpenOptions::new().read(true))?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The whole of `path` as UTF-8 text, refusing a link at it (see [`open_no_follow`]).
pub fn read_to_string_no_follow(path: &Path) -> io::Result<String> {
    String::from_utf8(read_no_follow(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text"))
}

fn link_refused(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} is a link; a link in the data folder is never followed (remove it)",
            path.display()
        ),
    )
}

#[cfg(unix)]
fn no_follow_flag(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_NOFOLLOW);
}

#[cfg(unix)]
fn is_link_refusal(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ELOOP)
}

/// Linux refuses the link in the open itself.
#[cfg(unix)]
fn opened_a_link(_file: &File) -> io::Result<bool> {
    Ok(false)
}

#[cfg(windows)]
fn no_follow_flag(options: &mut OpenOptions) {
    use std::os::windows::fs::OpenOptionsExt;
    use windows_sys::Win32::Storage::FileSystem::FILE_FLAG_OPEN_REPARSE_POINT;
    options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT);
}

/// Windows opens the link itself; [`opened_a_link`] sees it.
#[cfg(windows)]
fn is_link_refusal(_err: &io::Error) -> bool {
    false
}

#[cfg(windows)]
fn opened_a_link(file: &File) -> io::Result<bool> {
    use std::os::windows::fs::MetadataExt;
    use windows_sys::Win32::Storage::FileSystem::FILE_ATTRIBUTE_REPARSE_POINT;
    Ok(file.metadata()?.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0)
}

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
    let mut file = create_private_file(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates (or truncates) `path` for writing, readable and writable by its owner only: 0600 on
/// Unix (also when the file existed with a wider mode); on Windows it inherits the storage
/// folder's DACL. A link at `path` is refused, never written through.
#[cfg(unix)]
pub fn create_private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = open_no_follow(
        path,
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600),
    )?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// See the Unix version above.
#[cfg(windows)]
pub fn create_private_file(path: &Path) -> io::Result<File> {
    // Inherits the storage folder's DACL.
    open_no_follow(
        path,
        OpenOptions::new().write(true).create(true).truncate(true),
    )
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

    #[cfg(unix)]
    #[test]
    fn a_private_file_is_0600_even_when_it_existed_wider() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private_file(&path).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[cfg(unix)]
    mod links {
        use super::*;
        use std::os::unix::fs::symlink;

        /// A folder with `outside` (a file that must never change) and `link` pointing at it.
        fn planted() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
            let dir = tempfile::tempdir().unwrap();
            let outside = dir.path().join("outside");
            fs::write(&outside, b"not yours").unwrap();
            let link = dir.path().join("config.json");
            symlink(&outside, &link).unwrap();
            (dir, outside, link)
        }

        #[test]
        fn reading_through_a_link_is_refused_with_its_name() {
            let (_dir, _outside, link) = planted();
            let err = read_no_follow(&link).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            assert!(err.to_string().contains("config.json is a link"), "{err}");
            assert!(read_to_string_no_follow(&link).is_err());
        }

        #[test]
        fn creating_a_private_file_over_a_link_leaves_its_target_alone() {
            let (_dir, outside, link) = planted();
            assert!(create_private_file(&link).is_err());
            assert_eq!(fs::read(&outside).unwrap(), b"not yours");
        }

        #[test]
        fn a_dangling_link_is_not_created_through() {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("would-be-created");
            let link = dir.path().join("errors.jsonl");
            symlink(&target, &link).unwrap();
            let err = open_no_follow(&link, OpenOptions::new().append(true).create(true));
            assert!(err.is_err());
            assert!(!target.exists());
        }

        #[test]
        fn an_atomic_write_replaces_a_link_instead_of_writing_through_it() {
            let (_dir, outside, link) = planted();
            write_atomic(&link, b"mine").unwrap();
            assert_eq!(fs::read(&outside).unwrap(), b"not yours");
            assert!(
                !fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            assert_eq!(read_no_follow(&link).unwrap(), b"mine");
        }

        #[test]
        fn a_link_at_the_temp_name_fails_the_write_without_touching_its_target() {
            let (dir, outside, _link) = planted();
            let path = dir.path().join("state.json");
            let temp = dir
                .path()
                .join(format!("state.json.tmp-{}", std::process::id()));
            symlink(&outside, &temp).unwrap();
            assert!(write_atomic(&path, b"mine").is_err());
            assert_eq!(fs::read(&outside).unwrap(), b"not yours");
            write_atomic(&path, b"mine").unwrap(); // the failed write removed the link
            assert_eq!(read_no_follow(&path).unwrap(), b"mine");
        }
    }

    #[test]
    fn a_plain_file_opens_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        fs::write(&path, b"text").unwrap();
        assert_eq!(read_to_string_no_follow(&path).unwrap(), "text");
        let mut file = open_no_follow(&path, OpenOptions::new().append(true)).unwrap();
        file.write_all(b"+").unwrap();
        assert_eq!(read_no_follow(&path).unwrap(), b"text+");
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
