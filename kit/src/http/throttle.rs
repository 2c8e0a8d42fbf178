//! Attempt limits for the routes a guesser hammers (logins, sign-ups): one GCRA bucket per
//! key (a client IP, a mobile), in memory per instance. A refused attempt is a 429 with
//! `Retry-After`, counted in `/metrics` as `http_throttled_total{limit=…}`.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use serde::{Deserialize, Serialize};

use super::{ApiError, HttpMetrics};

/// At most `attempts` per `per` for one key, in a burst or spread out; 0 attempts: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rate {
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl Default for Rate {
    fn default() -> Self {
        Self::new(0, Duration::from_secs(60))
    }
}

impl Rate {
    pub const fn new(attempts: u32, per: Duration) -> Self {
        Self { attempts, per }
    }

    /// A clear message for a rate that cannot work, naming `setting`.
    pub fn validate(&self, setting: &str) -> Result<(), String> {
        if self.attempts > 0 && self.per.is_zero() {
            return Err(format!("{setting}.per must be longer than 0s"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// Makes the limiters of one gateway; they share one `/metrics` family.
#[derive(Debug, Clone)]
pub struct Throttle {
    refused: Family<LimitLabels, Counter>,
    max_keys: usize,
}

impl Throttle {
    /// `max_keys` bounds the keys each limiter remembers (expired ones are dropped first).
    pub fn new(metrics: &HttpMetrics, max_keys: usize) -> Self {
        let refused = Family::<LimitLabels, Counter>::default();
        metrics.register(
            "http_throttled",
            "Attempts refused with 429, by limit",
            refused.clone(),
        );
        Self { refused, max_keys }
    }

    /// A limiter named `name` (the metrics label) allowing `rate` per key.
    pub fn limiter(&self, name: &'static str, rate: Rate) -> Limiter {
        Limiter {
            name,
            rate,
            max_keys: self.max_keys,
            refused: self
                .refused
                .get_or_create(&LimitLabels { limit: name })
                .clone(),
            keys: Mutex::default(),
        }
    }
}

/// One limit over many keys.
#[derive(Debug)]
pub struct Limiter {
    name: &'static str,
    rate: Rate,
    max_keys: usize,
    refused: Counter,
    /// Per key, the theoretical arrival time of its next attempt (GCRA).
    keys: Mutex<HashMap<String, Instant>>,
}

impl Limiter {
    /// Counts an attempt for `key`, or refuses it with how long to wait.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), ApiError> {
        let Rate { attempts, per } = self.rate;
        if attempts == 0 {
            return Ok(());
        }
        let interval = per / attempts;
        let tolerance = per.saturating_sub(interval);
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = keys.get(key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            self.refused.inc();
            return Err(ApiError::TooManyRequests {
                retry_after: ahead - tolerance,
            });
        }
        if !keys.contains_key(key) && keys.len() >= self.max_keys {
            keys.retain(|_, t| *t > now);
            if keys.len() >= self.max_keys {
                tracing::warn!(
                    limit = self.name,
                    keys = keys.len(),
                    "throttle table full; this attempt is let through uncounted"
                );
                return Ok(());
            }
        }
        keys.insert(key.to_owned(), tat + interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(attempts: u32, per: Duration, max_keys: usize) -> Limiter {
        Throttle::new(&HttpMetrics::new(), max_keys).limiter("test", Rate::new(attempts, per))
    }

    fn retry_after(r: Result<(), ApiError>) -> Option<Duration> {
        match r {
            Err(ApiError::TooManyRequests { retry_after }) => Some(retry_after),
            _ => None,
        }
    }

    #[test]
    fn a_burst_up_to_the_rate_then_one_attempt_per_interval() {
        let l = limiter(3, Duration::from_secs(60), 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t0).is_ok());
        }
        assert_eq!(
            retry_after(l.check_at("a", t0)),
            Some(Duration::from_secs(20))
        );
        assert!(l.check_at("b", t0).is_ok(), "keys are counted apart");
        let later = t0 + Duration::from_secs(20);
        assert!(
            l.check_at("a", later).is_ok(),
            "one interval frees one attempt"
        );
        assert!(retry_after(l.check_at("a", later)).is_some());
    }

    #[test]
    fn zero_attempts_is_no_limit_and_the_table_stays_bounded() {
        let free = limiter(0, Duration::from_secs(60), 1);
        for _ in 0..100 {
            assert!(free.check("a").is_ok());
        }
        let l = limiter(1, Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert!(l.check_at("a", t0).is_ok());
        assert!(l.check_at("b", t0).is_ok());
        assert!(l.check_at("c", t0).is_ok(), "let through when full");
        assert_eq!(l.keys.lock().map(|k| k.len()).unwrap_or(0), 2);
        let later = t0 + Duration::from_secs(2);
        assert!(l.check_at("c", later).is_ok(), "expired keys make room");
        assert!(
            retry_after(l.check_at("c", later)).is_some(),
            "and c is counted now"
        );
    }
}
