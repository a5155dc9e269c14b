//! Keyset paging of the operator listings.
//!
//! A listing answers one page, a JSON array of at most `?limit=` items (default
//! [`DEFAULT_PAGE_SIZE`], cut to [`MAX_PAGE_SIZE`]). When more follow, the answer carries
//! `Link: <PATH?...&cursor=C>; rel="next"`, the same request with an opaque cursor: the key of
//! the page's last item, so the next page starts right after it, costs the same at any depth
//! and never skips or repeats an item that stays stored. This module must never put anything
//! but a listing key in a cursor, and never trust a cursor beyond what its key type parses.

use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use cms_protocol::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use serde::Serialize;
use serde::de::DeserializeOwned;

use std::future::Future;

use super::{ApiError, AppState};
use crate::db::{Db, DbError};

/// Longest cursor accepted (keys are a few hundred bytes at most).
const MAX_CURSOR_LEN: usize = 4096;

/// `?limit=` and `?cursor=` of a listing.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PageQuery {
    /// Items wanted.
    pub limit: Option<u32>,
    /// Where to continue, from the previous page's `Link` header.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page size: the requested one within 1..=[`MAX_PAGE_SIZE`].
    pub fn limit(&self) -> i64 {
        i64::from(
            self.limit
                .unwrap_or(DEFAULT_PAGE_SIZE)
                .clamp(1, MAX_PAGE_SIZE),
        )
    }

    /// The key to start after: the cursor's, or `K::default()` (the start) without one.
    pub fn after<K: DeserializeOwned + Default>(&self) -> Result<K, ApiError> {
        let Some(cursor) = &self.cursor else {
            return Ok(K::default());
        };
        let bad = || ApiError::BadRequest("cursor is not one this server handed out".into());
        if cursor.len() > MAX_CURSOR_LEN {
            return Err(bad());
        }
        let bytes = hex::decode(cursor).map_err(|_| bad())?;
        serde_json::from_slice(&bytes).map_err(|_| bad())
    }
}

/// The page as a JSON array, with a `Link` to the next one when `next` is the key to continue
/// after.
///
/// A page may be megabytes of JSON: it is serialized on a blocking thread, so the runtime's
/// workers stay free for heartbeats meanwhile.
pub async fn page_response<T, K>(
    items: Vec<T>,
    next: Option<K>,
    uri: &Uri,
) -> Result<Response, ApiError>
where
    T: Serialize + Send + 'static,
    K: Serialize,
{
    let body = tokio::task::spawn_blocking(move || serde_json::to_vec(&items))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(key) = next {
        let json = serde_json::to_vec(&key).map_err(|e| ApiError::Internal(e.to_string()))?;
        let link = format!("<{}>; rel=\"next\"", next_uri(uri, &hex::encode(json)));
        let value = HeaderValue::from_str(&link).map_err(|e| ApiError::Internal(e.to_string()))?;
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
}

/// One page of a listing: waits for a listing slot, reads the rows after the cursor's key
/// with `fetch` (on the operators' pool), and answers them as items with a `Link` to the next
/// page.
pub async fn listing<K, R, T, Fut>(
    state: &AppState,
    page: &PageQuery,
    uri: &Uri,
    fetch: impl FnOnce(Db, K, i64) -> Fut,
    key_of: impl Fn(&R) -> K,
    to_item: impl FnMut(R) -> T,
) -> Result<Response, ApiError>
where
    K: DeserializeOwned + Default + Serialize,
    Fut: Future<Output = Result<(Vec<R>, bool), DbError>>,
    T: Serialize + Send + 'static,
{
    let _slot = state.listing_slot().await?;
    let after: K = page.after()?;
    let (rows, more) = fetch(state.operator_db().clone(), after, page.limit()).await?;
    let next = rows.last().filter(|_| more).map(key_of);
    let items: Vec<T> = rows.into_iter().map(to_item).collect();
    page_response(items, next, uri).await
}

/// The request's path and query with `cursor` replaced.
fn next_uri(uri: &Uri, cursor: &str) -> String {
    let mut query: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|part| !part.is_empty() && !part.starts_with("cursor="))
        .collect();
    let cursor = format!("cursor={cursor}");
    query.push(&cursor);
    format!("{}?{}", uri.path(), query.join("&"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    struct Key {
        at: String,
    }

    #[test]
    fn limits_are_bounded() {
        let page = |limit| PageQuery {
            limit,
            cursor: None,
        };
        assert_eq!(page(None).limit(), i64::from(DEFAULT_PAGE_SIZE));
        assert_eq!(page(Some(0)).limit(), 1);
        assert_eq!(page(Some(1_000_000)).limit(), i64::from(MAX_PAGE_SIZE));
    }

    #[tokio::test]
    async fn cursor_round_trip_and_bad_cursors() {
        let uri: Uri = "/api/v1/errors?agent_id=a%20b&cursor=00&limit=5"
            .parse()
            .unwrap();
        let key = Key { at: "t1".into() };
        let response = page_response(vec![1, 2], Some(&key), &uri).await.unwrap();
        let link = response.headers()[header::LINK]
            .to_str()
            .unwrap()
            .to_owned();
        let cursor = link
            .strip_prefix("</api/v1/errors?agent_id=a%20b&limit=5&cursor=")
            .and_then(|rest| rest.strip_suffix(">; rel=\"next\""))
            .unwrap();
        let next = PageQuery {
            limit: None,
            cursor: Some(cursor.to_owned()),
        };
        assert_eq!(next.after::<Key>().unwrap(), key);
        assert_eq!(PageQuery::default().after::<Key>().unwrap(), Key::default());
        for bad in ["zz", "00", &"0".repeat(MAX_CURSOR_LEN + 2)] {
            let query = PageQuery {
                limit: None,
                cursor: Some(bad.to_owned()),
            };
            assert!(query.after::<Key>().is_err(), "{bad}");
        }
        let last = page_response(vec![1], None::<Key>, &uri).await.unwrap();
        assert!(last.headers().get(header::LINK).is_none());
    }
}
