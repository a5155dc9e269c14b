//! The update-check queue: a push sends the whole fleet to check at once, and the checks take
//! turns here instead of all at once.
//!
//! At most [`CheckQueue::new`]'s `slots` checks are worked on together (each holds connections
//! of the agents' pool for a few queries, so heartbeats always find one), and at most
//! `--max-waiting-checks` more wait for their turn. One more is answered at once with `503`, a
//! `Retry-After` and `Connection: close`: a waiting request costs the server a connection and
//! its buffers (about 25 KB each; 5,000 of them were 120 MB in the push bench), a refused one
//! nothing once it is answered. The `Retry-After`s of a burst are spread out ([`Schedule`]): each
//! refusal is given the next free moment at twice the rate checks are being worked off (measured
//! as they end), so the refused agents come back about as fast as they can be served, not all
//! together a second later. The agent adds jitter and asks again (docs/protocol.md, "The
//! update-check line").
//!
//! A turn is an extractor placed before the agent's credential in the update-check handler, so
//! a refusal costs no database work. This module must never block a refusal (a place is taken
//! or refused at once), never count a check twice or not at all (places and turns are released
//! by `Drop`), and never tell an agent to wait longer than [`MAX_RETRY_AFTER`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, AppState};
use crate::logtext::LogEvery;

/// `--max-waiting-checks` by default, per check worked on at once.
pub const WAITING_PER_SLOT: usize = 64;
/// Shortest wait a refused check is told.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait a refused check is told, however long the line.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// A check's length assumed until one has been measured.
const FIRST_ESTIMATE: Duration = Duration::from_millis(10);
/// Refused checks are asked back this many times as fast as checks are worked off: one that
/// finds the line full again costs a short answer, while a line left empty wastes the turns.
const RETURN_SPEEDUP: u32 = 2;
/// Weight of the newest check in the running estimate of a check's length (1/8).
const NEWEST_WEIGHT: u64 = 8;
/// At most one log line about refused checks per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

static REFUSALS: LogEvery = LogEvery::new(LOG_INTERVAL);

/// The update checks of this replica: those being worked on, those waiting, and when the
/// refused ones are told to come back.
#[derive(Debug)]
pub struct CheckQueue {
    turns: Arc<Semaphore>,
    slots: usize,
    max_waiting: usize,
    /// Checks holding or waiting for a turn.
    present: AtomicUsize,
    peak_waiting: AtomicUsize,
    refused: AtomicU64,
    /// Running estimate of one check's length, in nanoseconds.
    check_nanos: AtomicU64,
    schedule: Mutex<Schedule>,
}

/// The queue's counts, as `/healthz` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckCounts {
    /// Checks waiting for a turn now.
    pub waiting: usize,
    /// Checks allowed to wait (`--max-waiting-checks`).
    pub limit: usize,
    /// Most checks waiting at once since the server started.
    pub peak: usize,
    /// Checks answered 503 since the server started.
    pub refused: u64,
}

/// A check's place in the queue: counted from the moment it is taken until dropped.
#[derive(Debug)]
struct Place {
    queue: Arc<CheckQueue>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.queue.present.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One update check's turn; dropping it (when the handler ends) frees the turn and measures
/// how long the check took.
#[derive(Debug)]
pub struct CheckTurn {
    _permit: OwnedSemaphorePermit,
    place: Place,
    started: Instant,
}

impl Drop for CheckTurn {
    fn drop(&mut self) {
        self.place.queue.measured(self.started.elapsed());
    }
}

/// Taken by the update-check handler before the credential is checked (see the module docs).
impl FromRequestParts<AppState> for CheckTurn {
    type Rejection = ApiError;

    async fn from_request_parts(
        _parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        CheckQueue::turn(state.check_queue()).await
    }
}

impl CheckQueue {
    /// A queue working on `slots` checks at once (at least one) while at most `max_waiting`
    /// more wait.
    pub fn new(slots: usize, max_waiting: usize) -> Self {
        let slots = slots.max(1);
        CheckQueue {
            turns: Arc::new(Semaphore::new(slots)),
            slots,
            max_waiting,
            present: AtomicUsize::new(0),
            peak_waiting: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            check_nanos: AtomicU64::new(nanos(FIRST_ESTIMATE)),
            schedule: Mutex::new(Schedule::default()),
        }
    }

    /// A turn for one check: at once when a slot is free, after waiting in line when the line
    /// has room, otherwise `503` with the `Retry-After` of the next free moment.
    pub async fn turn(queue: &Arc<CheckQueue>) -> Result<CheckTurn, ApiError> {
        let place = queue.take_place()?;
        let permit = Arc::clone(&queue.turns)
            .acquire_owned()
            .await
            .map_err(|_| super::busy("the server is shutting down"))?;
        Ok(CheckTurn {
            _permit: permit,
            place,
            started: Instant::now(),
        })
    }

    fn take_place(self: &Arc<Self>) -> Result<Place, ApiError> {
        let present = self.present.fetch_add(1, Ordering::Relaxed) + 1;
        let place = Place {
            queue: Arc::clone(self),
        };
        let waiting = present.saturating_sub(self.slots);
        if waiting > self.max_waiting {
            drop(place);
            return Err(self.refuse());
        }
        self.peak_waiting.fetch_max(waiting, Ordering::Relaxed);
        Ok(place)
    }

    fn refuse(&self) -> ApiError {
        let now = Instant::now();
        let retry_after = self
            .schedule
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_return(now, self.spacing());
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(count) = REFUSALS.occurrence(now) {
            tracing::warn!(
                count,
                refused_total = refused,
                max_waiting = self.max_waiting,
                retry_after_secs = retry_after.as_secs(),
                "update checks refused: too many are waiting for a turn (503)"
            );
        }
        ApiError::Unavailable {
            message: format!(
                "{} update checks are already waiting; retry in {} s",
                self.max_waiting,
                retry_after.as_secs()
            ),
            retry_after,
        }
    }

    /// Time between two refused checks' returns: one check's length over the slots, over
    /// [`RETURN_SPEEDUP`].
    fn spacing(&self) -> Duration {
        let slots = u32::try_from(self.slots).unwrap_or(u32::MAX);
        Duration::from_nanos(self.check_nanos.load(Ordering::Relaxed))
            / slots.saturating_mul(RETURN_SPEEDUP)
    }

    /// Folds one check's length into the running estimate.
    fn measured(&self, took: Duration) {
        let old = self.check_nanos.load(Ordering::Relaxed);
        let new = old - old / NEWEST_WEIGHT + nanos(took) / NEWEST_WEIGHT;
        self.check_nanos.store(new, Ordering::Relaxed);
    }

    /// The counts for `/healthz`.
    pub fn counts(&self) -> CheckCounts {
        CheckCounts {
            waiting: self
                .present
                .load(Ordering::Relaxed)
                .saturating_sub(self.slots),
            limit: self.max_waiting,
            peak: self.peak_waiting.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// When refused checks are told to come back: each at the next free moment, `spacing` after
/// the one before and at least [`MIN_RETRY_AFTER`] from now, in whole seconds rounded up (as
/// `Retry-After` carries them) and never more than [`MAX_RETRY_AFTER`].
#[derive(Debug, Default)]
struct Schedule {
    next: Option<Instant>,
}

impl Schedule {
    fn next_return(&mut self, now: Instant, spacing: Duration) -> Duration {
        let earliest = now + MIN_RETRY_AFTER;
        let latest = now + MAX_RETRY_AFTER;
        let slot = self
            .next
            .map_or(earliest, |next| next.clamp(earliest, latest));
        self.next = Some(slot + spacing);
        let wait = slot - now;
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Duration::from_secs(secs).min(MAX_RETRY_AFTER)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_past_the_slots_wait_and_past_the_line_are_refused() {
        let queue = Arc::new(CheckQueue::new(2, 1));
        let first = CheckQueue::turn(&queue).await.unwrap();
        let _second = CheckQueue::turn(&queue).await.unwrap();
        let waiting = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { CheckQueue::turn(&queue).await.map(|_| ()) }
        });
        while queue.counts().waiting == 0 {
            tokio::task::yield_now().await;
        }
        let refused = CheckQueue::turn(&queue).await.unwrap_err();
        assert!(matches!(
            refused,
            ApiError::Unavailable { retry_after, .. } if retry_after >= MIN_RETRY_AFTER
        ));
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(
            queue.counts(),
            CheckCounts {
                waiting: 0,
                limit: 1,
                peak: 1,
                refused: 1
            }
        );
    }

    #[tokio::test]
    async fn no_line_at_all_still_works_on_the_slots() {
        let queue = Arc::new(CheckQueue::new(1, 0));
        let turn = CheckQueue::turn(&queue).await.unwrap();
        assert!(CheckQueue::turn(&queue).await.is_err());
        drop(turn);
        assert!(CheckQueue::turn(&queue).await.is_ok());
    }

    #[test]
    fn a_burst_of_refusals_is_told_to_come_back_spread_at_the_working_rate() {
        let mut schedule = Schedule::default();
        let now = Instant::now();
        let spacing = Duration::from_millis(10);
        let waits: Vec<u64> = (0..500)
            .map(|_| schedule.next_return(now, spacing).as_secs())
            .collect();
        // 100 returns a second from a second from now, rounded up to whole seconds.
        assert_eq!(waits[0], 1);
        assert_eq!(waits[1], 2);
        assert_eq!(waits[100], 2);
        assert_eq!(waits[101], 3);
        assert_eq!(waits[499], 6);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_later_refusal_is_never_told_less_than_the_minimum_nor_more_than_the_maximum() {
        let mut schedule = Schedule::default();
        let now = Instant::now();
        assert_eq!(
            schedule.next_return(now, Duration::from_secs(600)),
            MIN_RETRY_AFTER
        );
        assert_eq!(
            schedule.next_return(now, Duration::from_secs(600)),
            MAX_RETRY_AFTER
        );
        let much_later = now + Duration::from_secs(3600);
        assert_eq!(
            schedule.next_return(much_later, Duration::ZERO),
            MIN_RETRY_AFTER
        );
    }

    #[test]
    fn the_estimate_follows_the_checks_lengths() {
        let queue = CheckQueue::new(2, 10);
        for _ in 0..100 {
            queue.measured(Duration::from_millis(40));
        }
        // 40 ms over two slots: one every 20 ms, asked back twice as fast.
        let spacing = queue.spacing();
        assert!(
            spacing > Duration::from_millis(9) && spacing <= Duration::from_millis(10),
            "{spacing:?}"
        );
    }
}
