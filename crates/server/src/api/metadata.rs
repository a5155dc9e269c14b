//! `GET /api/v1/tuf/{file}`: the signed release metadata (The Update Framework).
//!
//! Public on purpose: every file is signed, so agents verify it whoever serves it, and the same
//! folder (`DIR/tuf/metadata`) may be copied to a mirror or CDN. Only the file names a TUF client
//! asks for are served (`root.json`, `N.root.json`, `timestamp.json`, `N.snapshot.json`,
//! `N.targets.json`). This handler must never serve anything else from the data directory (the
//! signing keys sit next to the metadata).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::release::tuf;

/// Route of the metadata files.
pub const METADATA_ROUTE: &str = "/api/v1/tuf/{file}";

/// Whether `name` is one of the metadata file names a TUF client fetches.
fn is_metadata_name(name: &str) -> bool {
    if name == "root.json" || name == "timestamp.json" {
        return true;
    }
    let Some((version, role)) = name.split_once('.') else {
        return false;
    };
    let numeric = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit());
    numeric && matches!(role, "root.json" | "snapshot.json" | "targets.json")
}

/// Serves one metadata file (small; read whole).
pub async fn file(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !is_metadata_name(&name) {
        return Err(ApiError::NotFound(format!("no metadata file {name:?}")));
    }
    let file_path = tuf::Repository::new(state.data_dir())
        .metadata_dir()
        .join(&name);
    let bytes = match tokio::fs::read(&file_path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound(format!("no metadata file {name:?}")));
        }
        Err(e) => return Err(ApiError::Internal(format!("{}: {e}", file_path.display()))),
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The unversioned names change with every signing; the versioned ones never do.
    let cache = if name.starts_with(|c: char| c.is_ascii_digit()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tuf_names_are_served() {
        for good in [
            "root.json",
            "timestamp.json",
            "1.root.json",
            "12.snapshot.json",
            "7.targets.json",
        ] {
            assert!(is_metadata_name(good), "{good}");
        }
        for bad in [
            "snapshot.json",
            "keys",
            "../keys/root.pk8",
            "1.timestamp.json",
            ".root.json",
            "1a.root.json",
            "signing.lock",
            "1.root.json.tmp",
        ] {
            assert!(!is_metadata_name(bad), "{bad}");
        }
    }
}
