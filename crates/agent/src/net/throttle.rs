//! `Throttle`: a token bucket that caps the rate of a byte stream (`--download-limit`).
//!
//! Each chunk read is debited from the bucket, which refills at the configured rate up to a
//! small burst; a debit that leaves the bucket in debt sleeps until the debt is repaid, so the
//! average rate never exceeds the limit and a slow reader leaves the TCP window to slow the
//! sender down. This module must never busy-wait (it sleeps on the runtime's timer) and never
//! hold back a stream that has no limit.

use std::time::{Duration, Instant};

/// Bytes in one kilobyte of `--download-limit` (KiB: 1024).
pub const KILOBYTE: u64 = 1024;
/// Smallest burst: one chunk of a typical read, so a low limit still moves whole chunks.
const MIN_BURST: f64 = 16.0 * 1024.0;
/// The burst is this fraction of a second at the limit (a quarter second).
const BURST_SECS: f64 = 0.25;

/// A token bucket over bytes.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// Bytes per second.
    rate: f64,
    /// Bytes the bucket holds at most.
    burst: f64,
    /// Bytes that may pass now; negative while in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl Throttle {
    /// A bucket passing `kilobytes_per_sec` KiB a second (at least 1), starting full.
    pub fn new(kilobytes_per_sec: u32) -> Self {
        Self::at(
            u64::from(kilobytes_per_sec.max(1)) * KILOBYTE,
            Instant::now(),
        )
    }

    fn at(bytes_per_sec: u64, now: Instant) -> Self {
        let rate = bytes_per_sec as f64;
        let burst = (rate * BURST_SECS).max(MIN_BURST);
        Throttle {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Debits `bytes` at `now`; returns how long to wait before the next byte may pass (zero
    /// while the bucket is not in debt).
    fn debit(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Debits `bytes` and sleeps off any debt.
    pub async fn pass(&mut self, bytes: usize) {
        let wait = self.debit(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_bucket_passes_its_burst_then_charges_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Throttle::at(100_000, t0); // burst: 25,000 bytes
        assert_eq!(bucket.debit(25_000, t0), Duration::ZERO);
        // 50,000 bytes of debt at 100,000 B/s: half a second.
        assert_eq!(bucket.debit(50_000, t0), secs(0.5));
        // Half a second later the debt is repaid and nothing is waited.
        assert_eq!(bucket.debit(0, t0 + secs(0.5)), Duration::ZERO);
        // A long pause refills only up to the burst.
        assert_eq!(bucket.debit(25_000, t0 + secs(60.0)), Duration::ZERO);
        assert_eq!(bucket.debit(10_000, t0 + secs(60.0)), secs(0.1));
    }

    #[test]
    fn a_steady_stream_averages_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Throttle::at(64 * KILOBYTE, t0);
        let mut now = t0;
        let chunk = 16 * 1024;
        let mut sent = 0u64;
        for _ in 0..400 {
            now += bucket.debit(chunk, now); // the reader sleeps exactly as told
            sent += chunk as u64;
        }
        // 400 chunks of 16 KiB at 64 KiB/s: 100 s, less the first burst (16 KiB, 0.25 s).
        let took = now.duration_since(t0).as_secs_f64();
        let expected = (sent - 16 * 1024) as f64 / (64.0 * 1024.0);
        assert!((took - expected).abs() < 0.01, "{took} vs {expected}");
    }

    #[test]
    fn small_limits_keep_a_burst_of_one_chunk() {
        let t0 = Instant::now();
        let mut bucket = Throttle::at(KILOBYTE, t0);
        assert_eq!(bucket.debit(16 * 1024, t0), Duration::ZERO);
        assert_eq!(bucket.debit(1024, t0), secs(1.0));
    }
}
