//! The packages and deltas being downloaded, kept in memory while they are in demand.
//!
//! A push sends the whole fleet for the same file at once. Streamed from disk, every 64 KB of
//! every download was a read on the blocking thread pool and a copy into a fresh buffer (5,000
//! downloads of a 4 MB package: 330,000 reads and 21 GB copied), CPU the heartbeats then
//! waited for. Here a file is read once, whole, and each download sends slices of the same
//! buffer. A file is kept while its length and modification time stay what they were when it
//! was read (releases are immutable: a changed file is read again, and the agent checks what
//! it gets against the signed metadata either way). This module must never hold more than
//! [`MAX_CACHED_BYTES`] of files, never keep a file larger than [`MAX_CACHED_FILE`] (those are
//! streamed from disk as before), and never read a file twice at once.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use axum::body::Bytes;

/// Files larger than this are streamed from disk, never kept.
pub const MAX_CACHED_FILE: u64 = 64 * 1024 * 1024;
/// Bytes of files kept at most; the least recently served go first.
pub const MAX_CACHED_BYTES: u64 = 128 * 1024 * 1024;

/// One kept file.
#[derive(Debug)]
struct Kept {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    bytes: Bytes,
    /// When it was last served, as a count of lookups.
    used: u64,
}

/// The kept files (see the module docs).
#[derive(Debug, Default)]
pub struct FileCache {
    shelf: Mutex<Shelf>,
    /// Held while a file is read, so a push's first requests read it once.
    reading: tokio::sync::Mutex<()>,
}

/// The kept files and the count of lookups (the clock of `used`).
#[derive(Debug, Default)]
struct Shelf {
    files: Vec<Kept>,
    lookups: u64,
}

/// What the cache has for a path.
#[derive(Debug)]
pub enum Lookup {
    /// The whole file, from memory.
    Bytes(Bytes),
    /// Too large to keep: stream it from disk.
    TooLarge,
}

impl FileCache {
    /// The whole of `path`, from memory when it is kept and unchanged, otherwise read (and
    /// kept); [`Lookup::TooLarge`] for a file larger than [`MAX_CACHED_FILE`].
    pub async fn get(&self, path: &Path) -> std::io::Result<Lookup> {
        let meta = tokio::fs::metadata(path).await?;
        let (len, modified) = (meta.len(), meta.modified().ok());
        if len > MAX_CACHED_FILE {
            return Ok(Lookup::TooLarge);
        }
        if let Some(bytes) = self.kept(path, len, modified) {
            return Ok(Lookup::Bytes(bytes));
        }
        let _reading = self.reading.lock().await;
        if let Some(bytes) = self.kept(path, len, modified) {
            return Ok(Lookup::Bytes(bytes));
        }
        let bytes = Bytes::from(tokio::fs::read(path).await?);
        if bytes.len() as u64 == len {
            self.keep(path, len, modified, bytes.clone());
        }
        Ok(Lookup::Bytes(bytes))
    }

    /// The kept bytes of `path` when it still has this length and modification time.
    fn kept(&self, path: &Path, len: u64, modified: Option<SystemTime>) -> Option<Bytes> {
        let mut shelf = self.shelf.lock().unwrap_or_else(PoisonError::into_inner);
        shelf.lookups += 1;
        let now = shelf.lookups;
        let file = shelf
            .files
            .iter_mut()
            .find(|f| f.path == path && f.len == len && f.modified == modified)?;
        file.used = now;
        Some(file.bytes.clone())
    }

    /// Keeps `bytes` as `path`'s, dropping its older copy and then the least recently served
    /// files until all fit in [`MAX_CACHED_BYTES`].
    fn keep(&self, path: &Path, len: u64, modified: Option<SystemTime>, bytes: Bytes) {
        let mut shelf = self.shelf.lock().unwrap_or_else(PoisonError::into_inner);
        let used = shelf.lookups;
        shelf.files.retain(|f| f.path != path);
        shelf.files.push(Kept {
            path: path.to_path_buf(),
            len,
            modified,
            bytes,
            used,
        });
        while shelf.files.iter().map(|f| f.len).sum::<u64>() > MAX_CACHED_BYTES {
            let Some(oldest) = (0..shelf.files.len()).min_by_key(|&i| shelf.files[i].used) else {
                break;
            };
            shelf.files.swap_remove(oldest);
        }
    }

    /// Bytes kept now.
    #[cfg(test)]
    fn kept_bytes(&self) -> u64 {
        let shelf = self.shelf.lock().unwrap_or_else(PoisonError::into_inner);
        shelf.files.iter().map(|f| f.len).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn modified(path: &Path) -> Option<SystemTime> {
        std::fs::metadata(path).unwrap().modified().ok()
    }

    fn bytes(lookup: Lookup) -> Bytes {
        match lookup {
            Lookup::Bytes(bytes) => bytes,
            Lookup::TooLarge => panic!("kept files only here"),
        }
    }

    #[tokio::test]
    async fn a_file_is_read_once_and_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.zip");
        std::fs::write(&path, b"first").unwrap();
        let cache = FileCache::default();
        let first = bytes(cache.get(&path).await.unwrap());
        let again = bytes(cache.get(&path).await.unwrap());
        assert_eq!(&first[..], b"first");
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "the same buffer, not a copy"
        );
        std::fs::write(&path, b"second, longer").unwrap();
        assert_eq!(
            &bytes(cache.get(&path).await.unwrap())[..],
            b"second, longer"
        );
        assert_eq!(cache.kept_bytes(), 14, "the old copy is dropped");
    }

    #[tokio::test]
    async fn the_least_recently_served_files_go_first_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let size = usize::try_from(MAX_CACHED_BYTES / 3 + 1).unwrap();
        let paths: Vec<_> = (0..4)
            .map(|i| dir.path().join(format!("{i}.zip")))
            .collect();
        for path in &paths {
            std::fs::write(path, vec![7u8; size]).unwrap();
        }
        let cache = FileCache::default();
        let first = bytes(cache.get(&paths[0]).await.unwrap());
        bytes(cache.get(&paths[1]).await.unwrap());
        bytes(cache.get(&paths[0]).await.unwrap());
        bytes(cache.get(&paths[2]).await.unwrap());
        assert!(cache.kept_bytes() <= MAX_CACHED_BYTES);
        // 1 was served least recently: it went; 0 is still the same buffer.
        let again = bytes(cache.get(&paths[0]).await.unwrap());
        assert_eq!(first.as_ptr(), again.as_ptr());
        let len = size as u64;
        assert!(cache.kept(&paths[1], len, modified(&paths[1])).is_none());
        assert!(cache.kept(&paths[2], len, modified(&paths[2])).is_some());
    }
}
