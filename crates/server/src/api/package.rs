//! `GET /api/v1/agent/packages/{version}/{platform}`: streams a release package to an agent;
//! `GET /api/v1/agent/deltas/{from}/{to}/{platform}` streams a signed delta the same way.
//!
//! Bearer-authenticated like every agent route. Supports one HTTP byte range (`bytes=N-`,
//! `bytes=N-M`, `bytes=-S`) so an interrupted download resumes: 206 with `Content-Range`, 416
//! when the range starts past the end; any other `Range` value is ignored (200, whole file).
//! The file on disk is served as it is: the agent, not this handler, checks length and SHA-256
//! against the update check. Streams in flight are bounded by the download budget
//! ([`super::downloads`], `--max-downloads`): one past it is answered 503 with `Retry-After`,
//! and the slot is held by the response body, so it counts until the last byte is sent or the
//! client goes away. Files are sent from the file cache ([`super::file_cache`]: read once
//! while in demand, bounded), larger ones streamed from disk. This handler must never serve a
//! path outside the data directory, and never answer for a release that is not published.

use std::path::{Component, Path as FsPath, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::agent::AuthedAgent;
use super::downloads::DownloadSlot;
use super::file_cache::{FileCache, Lookup};
use super::{ApiError, AppState};
use crate::logtext::Untrusted;
use crate::release::delta::delta_rel_path;

/// Route of the package download (the path `rollout::offer::package_url` builds).
pub const PACKAGE_ROUTE: &str = "/api/v1/agent/packages/{version}/{platform}";
/// Route of a delta download: the package route's `packages/{to}/{platform}` becomes
/// `deltas/{from}/{to}/{platform}` (how the agent finds it without a field in the offer).
pub const DELTA_ROUTE: &str = "/api/v1/agent/deltas/{from}/{to}/{platform}";

/// Read size of the streamed body.
const CHUNK: usize = 64 * 1024;

/// What a `Range` header asks of a file of a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable range: the whole file (200).
    Full,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// The range lies beyond the file (416).
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 section 14) for a file of `total` bytes. Multiple
/// ranges, other units and malformed values are ignored, as the RFC allows.
pub fn parse_range(header: Option<&str>, total: u64) -> ByteRange {
    let Some(spec) = header.and_then(strip_bytes_unit) else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return suffix_range(last, total);
    }
    let Ok(start) = first.parse::<u64>() else {
        return ByteRange::Full;
    };
    let end = match last {
        "" => u64::MAX,
        last => match last.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return ByteRange::Full,
        },
    };
    if start >= total {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Partial {
        start,
        end: end.min(total - 1),
    }
}

fn strip_bytes_unit(header: &str) -> Option<&str> {
    let (unit, spec) = header.trim().split_once('=')?;
    unit.trim().eq_ignore_ascii_case("bytes").then_some(spec)
}

/// `bytes=-S`: the last `S` bytes.
fn suffix_range(last: &str, total: u64) -> ByteRange {
    match last.parse::<u64>() {
        Ok(0) => ByteRange::Unsatisfiable,
        Ok(_) if total == 0 => ByteRange::Unsatisfiable,
        Ok(suffix) => ByteRange::Partial {
            start: total.saturating_sub(suffix),
            end: total - 1,
        },
        Err(_) => ByteRange::Full,
    }
}

/// `GET /api/v1/agent/packages/{version}/{platform}`: the package, whole or one range. The
/// slot comes before the credential: a refusal costs no database work.
pub async fn download(
    State(state): State<AppState>,
    slot: DownloadSlot,
    agent: AuthedAgent,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((version, platform)) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let row = state
        .db()
        .release_package(&version, &platform)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such release is published".into()))?;
    let file_path = resolve(state.data_dir(), &row.package_path)?;
    tracing::info!(
        agent_id = agent.agent_id,
        version = %Untrusted(&version),
        platform = %Untrusted(&platform),
        "package download"
    );
    let served = stream_file(state.file_cache(), slot, &file_path, &headers).await?;
    if i64::try_from(served.total).ok() != Some(row.length) {
        tracing::warn!(
            version = %Untrusted(&version),
            platform = %Untrusted(&platform),
            on_disk = served.total,
            recorded = row.length,
            "package file length differs from its release record; agents will refuse it"
        );
    }
    Ok(served.response)
}

/// `GET /api/v1/agent/deltas/{from}/{to}/{platform}`: the signed delta from release `from` to
/// release `to` (`release::delta`), whole or one range, under the same download budget. Served
/// only when both releases are published, which is when the signed targets list it.
pub async fn download_delta(
    State(state): State<AppState>,
    slot: DownloadSlot,
    agent: AuthedAgent,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((from, to, platform)) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let db = state.db();
    for version in [&from, &to] {
        db.release_package(version, &platform)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such delta is published".into()))?;
    }
    // Both versions are those of published rows, so the path holds only their names.
    let file_path = resolve(state.data_dir(), &delta_rel_path(&from, &to, &platform))?;
    if !tokio::fs::try_exists(&file_path).await.unwrap_or(false) {
        return Err(ApiError::NotFound("no such delta is published".into()));
    }
    tracing::info!(
        agent_id = agent.agent_id,
        from = %Untrusted(&from),
        to = %Untrusted(&to),
        platform = %Untrusted(&platform),
        "delta download"
    );
    Ok(stream_file(state.file_cache(), slot, &file_path, &headers)
        .await?
        .response)
}

/// A file answer and the file's whole length.
struct Served {
    response: Response,
    total: u64,
}

/// Where a file's bytes come from.
enum Source {
    /// The file cache.
    Memory(Bytes),
    /// The file on disk, too large to keep.
    Disk(tokio::fs::File),
}

/// Sends `file_path` (the range `headers` ask for) from the file cache, or streamed from disk
/// when it is too large to keep, holding `slot` until the body ends.
async fn stream_file(
    cache: &FileCache,
    slot: DownloadSlot,
    file_path: &FsPath,
    headers: &HeaderMap,
) -> Result<Served, ApiError> {
    let io_err = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", file_path.display()));
    let source = match cache.get(file_path).await.map_err(io_err)? {
        Lookup::Bytes(bytes) => Source::Memory(bytes),
        Lookup::TooLarge => Source::Disk(tokio::fs::File::open(file_path).await.map_err(io_err)?),
    };
    let total = match &source {
        Source::Memory(bytes) => bytes.len() as u64,
        Source::Disk(file) => file.metadata().await.map_err(io_err)?.len(),
    };
    let range = parse_range(headers.get(RANGE).and_then(|v| v.to_str().ok()), total);
    tracing::debug!(?range, total, "file download");
    let (status, start, length) = match range {
        ByteRange::Full => (StatusCode::OK, 0, total),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        ByteRange::Unsatisfiable => {
            return Ok(Served {
                response: unsatisfiable(total),
                total,
            });
        }
    };
    // The stream owns the download slot: it is freed when the body is sent or dropped.
    let body = match source {
        Source::Memory(bytes) => {
            let chunks = slices(bytes, start, length).map(move |chunk| {
                let _slot = &slot;
                Ok::<_, std::io::Error>(chunk)
            });
            Body::from_stream(futures_util::stream::iter(chunks))
        }
        Source::Disk(mut file) => {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(io_err)?;
            let stream = ReaderStream::with_capacity(file.take(length), CHUNK).map(move |chunk| {
                let _slot = &slot;
                chunk
            });
            Body::from_stream(stream)
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{total}", start + length - 1);
        headers.insert(CONTENT_RANGE, header_value(&value)?);
    }
    Ok(Served { response, total })
}

/// `length` bytes of `bytes` from `start`, as [`CHUNK`]-sized slices of the same buffer.
fn slices(bytes: Bytes, start: u64, length: u64) -> impl Iterator<Item = Bytes> + Send {
    let start = usize::try_from(start)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start
        .saturating_add(usize::try_from(length).unwrap_or(usize::MAX))
        .min(bytes.len());
    (start..end)
        .step_by(CHUNK)
        .map(move |from| bytes.slice(from..(from + CHUNK).min(end)))
}

/// 416 with `Content-Range: bytes */TOTAL` and the usual JSON error body.
fn unsatisfiable(total: u64) -> Response {
    let body =
        serde_json::json!({ "error": format!("range not satisfiable (package is {total} bytes)") });
    let mut response = (StatusCode::RANGE_NOT_SATISFIABLE, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{total}")) {
        response.headers_mut().insert(CONTENT_RANGE, value);
    }
    response
}

fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Joins the stored `/`-separated relative path to the data directory, refusing anything but
/// plain names (no `..`, roots or drive prefixes), so a bad row can never escape the directory.
fn resolve(data_dir: &FsPath, relative: &str) -> Result<PathBuf, ApiError> {
    let mut path = data_dir.to_path_buf();
    for part in relative.split('/') {
        let mut components = FsPath::new(part).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) if !part.contains('\\') => path.push(name),
            _ => {
                return Err(ApiError::Internal(format!(
                    "release row has an unsafe package path {relative:?}"
                )));
            }
        }
    }
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn partial(start: u64, end: u64) -> ByteRange {
        ByteRange::Partial { start, end }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=10-"), 100), partial(10, 99));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), partial(0, 9));
        assert_eq!(parse_range(Some("Bytes = 5 - 500"), 100), partial(5, 99));
        assert_eq!(parse_range(Some("bytes=99-"), 100), partial(99, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), partial(90, 99));
        assert_eq!(parse_range(Some("bytes=-500"), 100), partial(0, 99));
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            ByteRange::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=-0"), 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
    }

    #[test]
    fn unusable_ranges_are_ignored() {
        for header in [
            "bytes=5-1",
            "bytes=a-",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes",
            "bytes=x",
        ] {
            assert_eq!(parse_range(Some(header), 100), ByteRange::Full, "{header}");
        }
    }

    #[test]
    fn resolve_refuses_escapes() {
        let dir = FsPath::new("/data");
        assert_eq!(
            resolve(dir, "packages/linux-x86_64/1.0.0/p.zip").unwrap(),
            PathBuf::from("/data/packages/linux-x86_64/1.0.0/p.zip")
        );
        for bad in [
            "../x",
            "packages/../../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a\\..\\b",
            "",
        ] {
            assert!(resolve(dir, bad).is_err(), "{bad}");
        }
    }
}
