//! The transfer of one update's package: [`fetch`] downloads it to a `.part` file, resuming
//! what is already there, no faster than `--download-limit`, and waits out a busy server.
//!
//! A server whose download budget is full answers `503` with `Retry-After` (and a throttling
//! one `429`): the download is tried again after that wait plus jitter, the waits growing while
//! the server stays busy ([`BusyWaits`]); the partial file is kept, so a retry resumes with a
//! `Range` request. Only after [`MAX_BUSY_WAITS`] waits does the busy answer become the
//! download's failure. A transfer that breaks off (the connection lost mid-answer, or before
//! one came, as on a thin or flaky link) is resumed the same way after a short wait, up to
//! [`MAX_BREAKS`] times, so a dropped connection is not reported as a failed update; a server
//! that ends its answer short on purpose (a file shorter than the signed length) is not. The
//! rate limit ([`Throttle`]) lasts for the whole transfer, across waits. This module must never
//! write past the signed length (`download_file` enforces it), never wait without a bound, and
//! never decide anything about the downloaded bytes (the steps verify them). Another transfer
//! (a delta) belongs beside [`fetch`], using the same waits.

use std::path::Path;
use std::time::Duration;

use crate::net::http_client::{HttpClient, HttpError};
use crate::net::throttle::Throttle;

/// Busy answers waited out in one transfer before it fails: 36 minutes of waits (54 with the
/// most jitter) when the server asks for 2 s each time.
pub const MAX_BUSY_WAITS: u32 = 40;
/// Breaks of one transfer resumed before the break becomes the download's failure.
pub const MAX_BREAKS: u32 = 3;
/// Wait before resuming a broken transfer, plus up to as much again of jitter.
const BREAK_WAIT: Duration = Duration::from_secs(1);
/// Longest single wait, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Waits double from the server's `Retry-After` up to this (unless it asked for longer).
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// What a transfer is given besides its source and target.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferLimits {
    /// `--download-limit` in KiB/s; `None` is no limit.
    pub kilobytes_per_sec: Option<u32>,
}

/// Downloads `url` to `part` (resuming it) until `length` bytes are there; a busy server is
/// waited out, any other failure is returned at once.
pub async fn fetch(
    http: &HttpClient,
    url: &str,
    part: &Path,
    length: u64,
    limits: TransferLimits,
) -> Result<u64, HttpError> {
    let mut throttle = limits.kilobytes_per_sec.map(Throttle::new);
    let mut waits = BusyWaits::default();
    let mut breaks = 0;
    loop {
        let result = http
            .download_file(url, part, length, throttle.as_mut())
            .await;
        let Err(error) = result else {
            return result;
        };
        if let Some(asked) = error.retry_after() {
            let Some(wait) = waits.next(asked) else {
                return Err(error);
            };
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                busy_answers = waits.taken(),
                %error,
                "package download: the server is busy; waiting before resuming"
            );
            tokio::time::sleep(wait).await;
        } else if is_break(&error) && breaks < MAX_BREAKS {
            breaks += 1;
            let wait = BREAK_WAIT.mul_f64(1.0 + fastrand::f64());
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                breaks,
                %error,
                "package download: the transfer broke off; resuming"
            );
            tokio::time::sleep(wait).await;
        } else {
            return Err(error);
        }
    }
}

/// Whether `error` is a transfer that broke off and may go on where it stopped: the connection
/// lost, not a refusal, an answer that ended short (the server sent all it has), a bad answer,
/// or a certificate or proxy problem an operator must fix.
fn is_break(error: &HttpError) -> bool {
    matches!(error, HttpError::Transport { .. }) && error.network_problem().is_none()
}

/// The waits of one transfer while the server is busy: the server's `Retry-After`, doubling
/// with each busy answer up to [`BACKOFF_CAP`] (so a fleet that keeps finding the budget full
/// comes back less often), plus up to half as much again of jitter (so agents refused together
/// do not return together), never more than [`MAX_WAIT`] and never more than
/// [`MAX_BUSY_WAITS`] times. The update check waits out a busy server the same way.
#[derive(Debug, Default)]
pub(super) struct BusyWaits {
    taken: u32,
}

impl BusyWaits {
    /// The next wait after the server asked for `asked`, or `None` once the waits are used up.
    pub(super) fn next(&mut self, asked: Duration) -> Option<Duration> {
        self.next_with(asked, fastrand::f64())
    }

    /// Waits handed out so far.
    pub(super) fn taken(&self) -> u32 {
        self.taken
    }

    /// [`Self::next`] with the jitter's random fraction (0 to 1) given.
    fn next_with(&mut self, asked: Duration, random: f64) -> Option<Duration> {
        if self.taken >= MAX_BUSY_WAITS {
            return None;
        }
        let asked = asked.clamp(Duration::from_secs(1), MAX_WAIT);
        let cap = BACKOFF_CAP.max(asked);
        let grown = asked.saturating_mul(1 << self.taken.min(8)).min(cap);
        self.taken += 1;
        let jitter = grown.mul_f64(random.clamp(0.0, 1.0) / 2.0);
        Some((grown + jitter).min(MAX_WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn waits_start_at_retry_after_double_to_the_cap_and_run_out() {
        let mut waits = BusyWaits::default();
        let grown: Vec<_> = (0..7).map(|_| waits.next_with(secs(2), 0.0)).collect();
        let expected = [2, 4, 8, 16, 32, 60, 60].map(|s| Some(secs(s)));
        assert_eq!(grown, expected);
        for _ in 7..MAX_BUSY_WAITS {
            assert_eq!(waits.next_with(secs(2), 0.0), Some(secs(60)));
        }
        assert_eq!(waits.next_with(secs(2), 0.0), None);
    }

    #[test]
    fn an_answer_ended_short_or_refused_is_no_break_to_resume() {
        let short = HttpError::Incomplete {
            url: "http://127.0.0.1/p".into(),
            received: 10,
            expected: 20,
        };
        assert!(!is_break(&short));
        let refused = HttpError::Status {
            what: "download",
            status: reqwest::StatusCode::NOT_FOUND,
            body: String::new(),
        };
        assert!(!is_break(&refused));
        assert!(!is_break(&HttpError::NotRegistered));
    }

    #[test]
    fn jitter_adds_at_most_half_and_everything_is_bounded() {
        let mut waits = BusyWaits::default();
        assert_eq!(waits.next_with(secs(2), 1.0), Some(secs(3)));
        let mut long = BusyWaits::default();
        // A server asking for an hour gets five minutes, jitter included.
        assert_eq!(long.next_with(secs(3600), 1.0), Some(MAX_WAIT));
        // A zero Retry-After still waits a second.
        assert_eq!(BusyWaits::default().next_with(secs(0), 0.0), Some(secs(1)));
    }
}
