//! The download budget: at most `--max-downloads` package streams of this replica at once.
//!
//! A stream counts from the moment its handler takes a [`DownloadSlot`] until the response body
//! holding that slot is fully sent or dropped (a client that goes away frees it too). One more
//! is answered `503` with a short `Retry-After` ([`RETRY_AFTER`]); agents add jitter and back
//! off (docs/protocol.md), so a push to the whole fleet drains through the budget instead of
//! opening thousands of files and sockets at once. Refusals are logged as one line per
//! [`LOG_INTERVAL`] with their count. The budget's counts (active, limit, peak, refused) are
//! shown by `/healthz`.
//!
//! A slot is an extractor placed before the agent's credential in the download handlers, so a
//! refusal is answered before any database work: in a push to thousands of agents the refused
//! requests outnumber the streams about eight to one, and checking each one's bearer token
//! first queued heartbeats behind them for seconds (docs/BENCHMARKS.md, the push step). A
//! request whose credential then fails holds its slot only for that check. This module must
//! never block (a slot is taken or refused at once) and never count a stream twice or not at
//! all (the slot is released by `Drop`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, AppState};
use crate::logtext::LogEvery;

/// What a refused download is told to wait (agents add up to as much again as jitter).
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// At most one log line about refused downloads per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

static REFUSALS: LogEvery = LogEvery::new(LOG_INTERVAL);

/// The package streams of this replica, counted against a fixed number of slots.
#[derive(Debug)]
pub struct DownloadBudget {
    slots: Arc<Semaphore>,
    limit: usize,
    peak: AtomicUsize,
    refused: AtomicU64,
}

/// One package stream in flight; dropping it (with the body that holds it) frees the slot.
#[derive(Debug)]
pub struct DownloadSlot {
    _permit: OwnedSemaphorePermit,
}

/// Taken by a download handler before the credential is checked (see the module docs).
impl FromRequestParts<AppState> for DownloadSlot {
    type Rejection = ApiError;

    async fn from_request_parts(
        _parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.download_slot()
    }
}

/// The budget's counts, as `/healthz` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DownloadCounts {
    /// Streams being sent now.
    pub active: usize,
    /// Streams allowed at once (`--max-downloads`).
    pub limit: usize,
    /// Most streams sent at once since the server started.
    pub peak: usize,
    /// Downloads answered 503 since the server started.
    pub refused: u64,
}

impl DownloadBudget {
    /// A budget of `limit` streams at once (at least one).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        DownloadBudget {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A slot for one stream, or `503` with `Retry-After` at once when all are taken.
    pub fn try_slot(&self) -> Result<DownloadSlot, ApiError> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => {
                self.peak.fetch_max(self.active(), Ordering::Relaxed);
                Ok(DownloadSlot { _permit: permit })
            }
            Err(_) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(count) = REFUSALS.occurrence(Instant::now()) {
                    tracing::warn!(
                        count,
                        refused_total = refused,
                        max_downloads = self.limit,
                        retry_after_secs = RETRY_AFTER.as_secs(),
                        "package downloads refused: the download budget is full (503)"
                    );
                }
                Err(ApiError::Unavailable {
                    message: format!(
                        "the server is sending {} packages at once, its most; retry shortly",
                        self.limit
                    ),
                    retry_after: RETRY_AFTER,
                })
            }
        }
    }

    /// Streams being sent now.
    fn active(&self) -> usize {
        self.limit.saturating_sub(self.slots.available_permits())
    }

    /// The counts for `/healthz`.
    pub fn counts(&self) -> DownloadCounts {
        DownloadCounts {
            active: self.active(),
            limit: self.limit,
            peak: self.peak.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_refused_past_the_limit_and_freed_by_drop() {
        let budget = DownloadBudget::new(2);
        let first = budget.try_slot().unwrap();
        let second = budget.try_slot().unwrap();
        let refused = budget.try_slot().unwrap_err();
        assert!(matches!(
            refused,
            ApiError::Unavailable { retry_after, .. } if retry_after == RETRY_AFTER
        ));
        assert_eq!(
            budget.counts(),
            DownloadCounts {
                active: 2,
                limit: 2,
                peak: 2,
                refused: 1
            }
        );
        drop(first);
        drop(second);
        let counts = budget.counts();
        assert_eq!((counts.active, counts.peak), (0, 2));
        assert!(budget.try_slot().is_ok());
    }

    #[test]
    fn a_zero_limit_still_serves_one() {
        assert_eq!(DownloadBudget::new(0).counts().limit, 1);
    }
}
