//! `limits.min_status_interval_secs` (contract §6): one status read of one ID per client per
//! interval, enforced with governor's keyed GCRA limiter; the rest answer 429 with
//! `Retry-After`. Waiting reads (long-polls and event streams) are not counted: they are
//! served from the shared watcher and cost the database nothing per client.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Checks between two sweeps of clients that are no longer limited: the limiter's memory
/// stays proportional to the clients of the last interval.
const SWEEP_EVERY: u64 = 4096;

/// A governor keyed limiter that sweeps keys it no longer limits, and says how long to wait in
/// whole seconds (for `Retry-After`). Shared by the status interval and the throttle of failed
/// authentication (`auth.rs`).
pub(crate) struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub(crate) fn new(quota: Quota) -> Self {
        Self { limiter: RateLimiter::keyed(quota), checks: AtomicU64::new(0) }
    }

    /// Counts one cell for `key`, or refuses it with the whole seconds until one is allowed.
    pub(crate) fn check(&self, key: &K) -> Result<(), u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

pub struct StatusLimiter {
    limiter: Option<KeyedLimiter<(String, String)>>,
    interval_secs: u64,
}

impl StatusLimiter {
    /// `interval_secs = 0` limits nothing.
    pub fn new(interval_secs: u64) -> Self {
        let limiter = Quota::with_period(Duration::from_secs(interval_secs))
            .map(|quota| KeyedLimiter::new(quota.allow_burst(NonZeroU32::MIN)));
        Self { limiter, interval_secs }
    }

    /// Counts one read of `id` by `client`, or refuses it with the seconds to wait.
    pub fn check(&self, client: &str, id: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check(&(client.to_owned(), id.to_owned())).map_err(|retry_after_secs| {
            ApiError::TooManyRequests { interval_secs: self.interval_secs, retry_after_secs }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_read_of_one_id_by_one_client_waits_the_interval() {
        let limiter = StatusLimiter::new(60);
        assert!(limiter.check("10.0.0.1", "p").is_ok());
        let Err(ApiError::TooManyRequests { interval_secs, retry_after_secs }) =
            limiter.check("10.0.0.1", "p")
        else {
            panic!("the second read is refused");
        };
        assert_eq!(interval_secs, 60);
        assert!((59..=60).contains(&retry_after_secs), "{retry_after_secs}");
        // Another ID, or another client, is counted apart.
        assert!(limiter.check("10.0.0.1", "q").is_ok());
        assert!(limiter.check("10.0.0.2", "p").is_ok());
    }

    #[test]
    fn zero_is_off() {
        let limiter = StatusLimiter::new(0);
        for _ in 0..100 {
            assert!(limiter.check("c", "p").is_ok());
        }
    }
}
