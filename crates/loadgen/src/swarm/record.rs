//! What the fleet observed: heartbeat latencies inside a measurement window, failures, live
//! connections, when each pushed release notification arrived, and how the package downloads
//! of a `download` order went.
//!
//! Counters are shared by every agent task; nothing here waits or talks to the network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The fleet's shared observations.
#[derive(Debug, Default)]
pub struct Recorder {
    measuring: AtomicBool,
    latencies_us: Mutex<Vec<u64>>,
    heartbeat_errors: AtomicU64,
    ws_drops: AtomicU64,
    total_ws_drops: AtomicU64,
    connected: AtomicUsize,
    /// When a WebSocket last came up (microseconds since the Unix epoch; 0: never).
    last_connected_us: AtomicU64,
    pushes: Mutex<HashMap<String, PushSpread>>,
    downloads: Mutex<Downloads>,
}

/// The package downloads since the last [`Recorder::reset_downloads`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Downloads {
    /// Packages received whole.
    pub completed: usize,
    /// Downloads given up (an error, or too many busy answers).
    pub failed: usize,
    /// Why the first failed one failed.
    pub first_error: Option<String>,
    /// `503` + `Retry-After` answers waited out (never failures).
    pub busy: u64,
    /// Package bytes received (and discarded).
    pub bytes: u64,
    /// When the last download ended, either way (microseconds since the Unix epoch).
    pub last_done_unix_us: Option<u64>,
}

impl Downloads {
    /// Downloads that ended, either way.
    pub fn ended(&self) -> usize {
        self.completed + self.failed
    }
}

/// Answer to `measure`.
#[derive(Debug, Serialize)]
pub struct Window {
    secs: f64,
    connected: usize,
    latencies_us: Vec<u64>,
    heartbeat_errors: u64,
    ws_drops: u64,
}

/// Arrivals of one release's notification; answer to `await-push`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushSpread {
    /// Agents connected when the caller started waiting.
    pub expected: usize,
    /// Agents that received the notification.
    pub received: usize,
    /// First arrival (microseconds since the Unix epoch).
    pub first_unix_us: Option<u64>,
    /// Last arrival (microseconds since the Unix epoch).
    pub last_unix_us: Option<u64>,
    /// The longest spread of update checks a notification asked for (`spread_secs`).
    pub check_spread_secs: Option<u32>,
}

impl Recorder {
    /// Starts a measurement window: clears latencies and failure counters.
    pub fn start_window(&self) {
        lock(&self.latencies_us).clear();
        self.heartbeat_errors.store(0, Ordering::Relaxed);
        self.ws_drops.store(0, Ordering::Relaxed);
        self.measuring.store(true, Ordering::Relaxed);
    }

    /// Ends the window and hands over what it saw.
    pub fn end_window(&self, secs: f64) -> Window {
        self.measuring.store(false, Ordering::Relaxed);
        Window {
            secs,
            connected: self.connected(),
            latencies_us: std::mem::take(&mut *lock(&self.latencies_us)),
            heartbeat_errors: self.heartbeat_errors.load(Ordering::Relaxed),
            ws_drops: self.ws_drops.load(Ordering::Relaxed),
        }
    }

    /// A heartbeat answered with 204 after `latency`.
    pub fn heartbeat_ok(&self, latency: Duration) {
        if self.measuring.load(Ordering::Relaxed) {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            lock(&self.latencies_us).push(micros);
        }
    }

    /// A heartbeat that failed (transport error or a status other than 204).
    pub fn heartbeat_failed(&self) {
        self.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A WebSocket came up.
    pub fn ws_up(&self) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        let now = unix_micros(SystemTime::now());
        self.last_connected_us.fetch_max(now, Ordering::Relaxed);
    }

    /// A WebSocket went down; `dropped` when the server or the network ended it (not `quit`).
    pub fn ws_down(&self, dropped: bool) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if dropped {
            self.ws_drops.fetch_add(1, Ordering::Relaxed);
            self.total_ws_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// WebSockets the server or the network ended since the fleet started (windows aside).
    pub fn total_ws_drops(&self) -> u64 {
        self.total_ws_drops.load(Ordering::Relaxed)
    }

    /// When a WebSocket last came up, if one ever did.
    pub fn last_connected_unix_us(&self) -> Option<u64> {
        Some(self.last_connected_us.load(Ordering::Relaxed)).filter(|us| *us > 0)
    }

    /// Agents holding a WebSocket now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// An `agent:update_required` for `version` arrived now.
    pub fn push_received(&self, version: &str, check_spread_secs: Option<u32>) {
        let now = unix_micros(SystemTime::now());
        let mut pushes = lock(&self.pushes);
        let spread = pushes.entry(version.to_owned()).or_default();
        spread.received += 1;
        spread.check_spread_secs = spread.check_spread_secs.max(check_spread_secs);
        spread.first_unix_us = Some(spread.first_unix_us.map_or(now, |t| t.min(now)));
        spread.last_unix_us = Some(spread.last_unix_us.map_or(now, |t| t.max(now)));
    }

    /// Forgets the downloads of an earlier order.
    pub fn reset_downloads(&self) {
        *lock(&self.downloads) = Downloads::default();
    }

    /// A package of `bytes` arrived whole.
    pub fn download_done(&self, bytes: u64) {
        let mut downloads = lock(&self.downloads);
        downloads.completed += 1;
        downloads.bytes += bytes;
        downloads.last_done_unix_us = Some(unix_micros(SystemTime::now()));
    }

    /// A download was given up because of `error`.
    pub fn download_failed(&self, error: String) {
        let mut downloads = lock(&self.downloads);
        downloads.failed += 1;
        downloads.first_error.get_or_insert(error);
        downloads.last_done_unix_us = Some(unix_micros(SystemTime::now()));
    }

    /// The server answered a download `503` with a `Retry-After`.
    pub fn download_busy(&self) {
        lock(&self.downloads).busy += 1;
    }

    /// The downloads so far.
    pub fn downloads(&self) -> Downloads {
        lock(&self.downloads).clone()
    }

    /// Arrivals for `version` so far.
    pub fn pushes(&self, version: &str) -> PushSpread {
        lock(&self.pushes).get(version).cloned().unwrap_or_default()
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The counters stay meaningful after a panic elsewhere, so a poisoned lock is still used.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_count_only_inside_a_window() {
        let recorder = Recorder::default();
        recorder.heartbeat_ok(Duration::from_millis(5));
        recorder.start_window();
        recorder.heartbeat_ok(Duration::from_micros(1500));
        recorder.heartbeat_failed();
        let window = recorder.end_window(1.0);
        assert_eq!(window.latencies_us, [1500]);
        assert_eq!(window.heartbeat_errors, 1);
        recorder.heartbeat_ok(Duration::from_millis(5));
        assert!(recorder.end_window(1.0).latencies_us.is_empty());
    }

    #[test]
    fn drops_are_counted_across_windows_and_the_last_connection_is_kept() {
        let recorder = Recorder::default();
        assert_eq!(recorder.last_connected_unix_us(), None);
        recorder.ws_up();
        recorder.ws_up();
        recorder.ws_down(true);
        recorder.start_window();
        recorder.ws_down(false);
        assert_eq!(recorder.connected(), 0);
        assert_eq!(recorder.total_ws_drops(), 1);
        assert_eq!(recorder.end_window(1.0).ws_drops, 0);
        assert!(recorder.last_connected_unix_us().is_some());
    }

    #[test]
    fn downloads_count_completions_failures_and_busy_answers_until_reset() {
        let recorder = Recorder::default();
        recorder.download_busy();
        recorder.download_done(100);
        recorder.download_failed("first".into());
        recorder.download_failed("second".into());
        let downloads = recorder.downloads();
        assert_eq!((downloads.completed, downloads.failed), (1, 2));
        assert_eq!(
            (downloads.busy, downloads.bytes, downloads.ended()),
            (1, 100, 3)
        );
        assert_eq!(downloads.first_error.as_deref(), Some("first"));
        recorder.reset_downloads();
        assert_eq!(recorder.downloads().ended(), 0);
        assert_eq!(recorder.downloads().last_done_unix_us, None);
    }

    #[test]
    fn pushes_are_counted_per_version_with_first_and_last_arrival() {
        let recorder = Recorder::default();
        recorder.push_received("2.0.0", None);
        recorder.push_received("2.0.0", Some(25));
        recorder.push_received("3.0.0", None);
        let spread = recorder.pushes("2.0.0");
        assert_eq!(spread.received, 2);
        assert_eq!(spread.check_spread_secs, Some(25));
        assert_eq!(recorder.pushes("3.0.0").check_spread_secs, None);
        assert!(spread.first_unix_us <= spread.last_unix_us);
        assert_eq!(recorder.pushes("4.0.0").received, 0);
    }
}
