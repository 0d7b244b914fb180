//! Token buckets: the per-connection message rate, the per-process accept rate and the
//! per-source accept rate in front of it. Pure: callers pass the current instant.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate_per_sec`.
    pub fn new(rate_per_sec: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate_per_sec,
            capacity: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Seconds until one token is available (for Retry-After).
    pub fn wait_secs(&self) -> f64 {
        ((1.0 - self.tokens) / self.rate_per_sec).max(0.0)
    }

    /// Whether the bucket has refilled completely by `now`: it is then no different from
    /// a new one and may be forgotten.
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.capacity);
    }
}

/// One accept bucket per source address (see [`crate::client_addr::source_key`]), so a
/// flood from one source spends its own budget and not everyone's.
pub type SourceBuckets = KeyedBuckets<IpAddr>;

/// One bucket per key (a source address, a user). The map is bounded: when it reaches
/// `max_sources`, buckets that have refilled are forgotten (at most once a second, so a
/// full map costs no scan per call); a key that still finds no room is not limited per
/// key, only by whatever limit stands behind this one (the node-wide accept bucket, the
/// per-connection frame rate). So many keys at once degrade the limit and never lock
/// new clients out.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate_per_sec: f64,
    burst: u32,
    max_sources: usize,
    buckets: HashMap<K, TokenBucket>,
    last_prune: Option<Instant>,
}

impl<K: std::hash::Hash + Eq> KeyedBuckets<K> {
    pub fn new(rate_per_sec: f64, burst: u32, max_sources: usize) -> Self {
        KeyedBuckets {
            rate_per_sec,
            burst,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            last_prune: None,
        }
    }

    /// Takes a token for `source`, or returns the seconds to wait (for Retry-After).
    pub fn try_take(&mut self, source: K, now: Instant) -> Result<(), f64> {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            let due = self
                .last_prune
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
            if due {
                self.last_prune = Some(now);
                self.buckets.retain(|_, b| !b.is_full(now));
            }
            if self.buckets.len() >= self.max_sources {
                return Ok(());
            }
        }
        let (rate, burst) = (self.rate_per_sec, self.burst);
        let bucket = self
            .buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::new(rate, burst, now));
        if bucket.try_take(now) {
            Ok(())
        } else {
            Err(bucket.wait_secs())
        }
    }

    /// Sources currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.wait_secs() > 0.0);
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(110)));
        // Refill is capped at the burst size.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn wait_secs_is_the_time_to_the_next_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(4.0, 1, t0);
        assert_eq!(b.wait_secs(), 0.0);
        assert!(b.try_take(t0));
        assert_eq!(b.wait_secs(), 0.25);
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        assert!((b.wait_secs() - 0.15).abs() < 1e-9, "{}", b.wait_secs());
    }

    #[test]
    fn each_source_spends_its_own_budget() {
        let t0 = Instant::now();
        let mut sources = SourceBuckets::new(1.0, 2, 100);
        let flooder: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
        assert!(sources.try_take(flooder, t0).is_ok());
        assert!(sources.try_take(flooder, t0).is_ok());
        let wait = sources.try_take(flooder, t0).expect_err("flooder limited");
        assert!(wait > 0.0 && wait <= 1.0, "{wait}");
        assert!(sources.try_take(other, t0).is_ok());
        assert!(sources
            .try_take(flooder, t0 + Duration::from_millis(1001))
            .is_ok());
    }

    #[test]
    fn the_source_map_stays_bounded() {
        let t0 = Instant::now();
        let mut sources = SourceBuckets::new(10.0, 1, 2);
        assert!(sources.is_empty());
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let c: IpAddr = [192, 0, 2, 3].into();
        assert!(sources.try_take(a, t0).is_ok());
        assert!(sources.try_take(b, t0).is_ok());
        // A full map still limits the sources it tracks.
        assert!(sources.try_take(a, t0).is_err());
        // Both tracked sources are still limited: a third is let through untracked (the
        // node-wide bucket still applies), again and again.
        assert!(sources.try_take(c, t0).is_ok());
        assert!(sources.try_take(c, t0).is_ok());
        assert_eq!(sources.len(), 2);
        // Once they have refilled they are forgotten and make room: `c` is tracked.
        let later = t0 + Duration::from_secs(1);
        assert!(sources.try_take(c, later).is_ok());
        assert_eq!(sources.len(), 1);
        assert!(sources.try_take(c, later).is_err());
        assert!(!sources.is_empty());
    }
}
