//! Token buckets keyed by caller: registrations per source network, error reports per agent.
//!
//! Each key owns a bucket of `burst` tokens that refills at `per_minute`; a request takes as
//! many tokens as it costs or is refused with the time after which it would fit (the
//! `Retry-After` a client is told). A full bucket holds no information, so full buckets are
//! forgotten whenever the table reaches its size bound; if it is still full of active keys, a new
//! key is refused rather than let the table grow. This module must never block, never allocate
//! per request beyond one table entry, and never let a cost above `burst` pass (it can never
//! fit, so the caller must refuse it as too large instead).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Refill rate and size of a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per minute.
    pub per_minute: u32,
    /// Most tokens a bucket holds (the largest burst).
    pub burst: u32,
}

impl Rate {
    fn per_second(self) -> f64 {
        f64::from(self.per_minute.max(1)) / 60.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets by key (see the module docs).
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter with `rate` per key, remembering at most `max_keys` keys.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        RateLimiter {
            rate,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `cost` tokens from `key`'s bucket, or says how long until they would be there.
    pub fn try_take(&self, key: &K, cost: u32, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            self.forget_full(&mut buckets, now);
            if buckets.len() >= self.max_keys {
                return Err(self.time_for(1.0));
            }
        }
        let burst = f64::from(self.rate.burst);
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        self.refill(bucket, now);
        let cost = f64::from(cost);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Ok(());
        }
        Err(self.time_for(cost.min(burst) - bucket.tokens))
    }

    /// Whether `key` has at least one token (a cheap check before reading a request body).
    pub fn has_tokens(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = buckets.get_mut(key) else {
            return Ok(());
        };
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            Err(self.time_for(1.0 - bucket.tokens))
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.rate.per_second()).min(f64::from(self.rate.burst));
        bucket.updated = now;
    }

    fn forget_full(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let burst = f64::from(self.rate.burst);
        buckets.retain(|_, bucket| {
            self.refill(bucket, now);
            bucket.tokens < burst
        });
    }

    /// Whole seconds (at least one) until `missing` tokens have refilled.
    fn time_for(&self, missing: f64) -> Duration {
        let secs = (missing.max(0.0) / self.rate.per_second()).ceil().max(1.0);
        Duration::from_secs_f64(secs.min(86_400.0))
    }
}

/// The network a source address counts for: the address itself for IPv4, its /64 for IPv6
/// (one host usually holds a whole /64, so single IPv6 addresses would be free to rotate).
pub fn source_network(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, burst: u32, max_keys: usize) -> RateLimiter<&'static str> {
        RateLimiter::new(Rate { per_minute, burst }, max_keys)
    }

    #[test]
    fn burst_then_refusal_with_the_time_until_refill() {
        let limiter = limiter(60, 3, 10);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.try_take(&"a", 1, start).unwrap();
        }
        assert_eq!(
            limiter.try_take(&"a", 1, start),
            Err(Duration::from_secs(1))
        );
        assert_eq!(
            limiter.try_take(&"a", 3, start),
            Err(Duration::from_secs(3))
        );
        limiter.try_take(&"b", 3, start).unwrap();
        let later = start + Duration::from_secs(2);
        limiter.try_take(&"a", 2, later).unwrap();
        assert!(limiter.has_tokens(&"a", later).is_err());
        assert!(limiter.has_tokens(&"never-seen", later).is_ok());
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let limiter = limiter(60, 2, 10);
        let start = Instant::now();
        limiter.try_take(&"a", 2, start).unwrap();
        let much_later = start + Duration::from_secs(3600);
        limiter.try_take(&"a", 2, much_later).unwrap();
        assert!(limiter.try_take(&"a", 1, much_later).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_and_active_ones_bound_the_table() {
        let limiter = limiter(60, 1, 2);
        let start = Instant::now();
        limiter.try_take(&"a", 1, start).unwrap();
        limiter.try_take(&"b", 1, start).unwrap();
        assert!(
            limiter.try_take(&"c", 1, start).is_err(),
            "table full of active keys"
        );
        let later = start + Duration::from_secs(5);
        limiter.try_take(&"c", 1, later).unwrap();
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_network(a), source_network(b));
        assert_ne!(source_network(a), source_network(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            source_network(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }
}
