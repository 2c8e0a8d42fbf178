//! The retry budget, as Finagle's `RetryBudget` and Envoy's `retry_budget`: over the last
//! ten seconds, hedges and retries together may be at most `percent` of the calls plus
//! `min_per_second` a second, so a slow or overloaded service is not pushed over by its own
//! callers' second attempts. Time comes in as an argument, so the rules are tested by counts.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryBudgetSettings {
    /// Hedges and retries, as a share of the calls of the last ten seconds, in percent.
    pub percent: u32,
    /// ...plus this many a second whatever the calls, so a quiet service can still retry.
    pub min_per_second: u32,
}

impl Default for RetryBudgetSettings {
    fn default() -> Self {
        Self {
            percent: 20,
            min_per_second: 10,
        }
    }
}

/// Seconds the budget remembers.
const WINDOW: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Second {
    /// Which second since `origin` this bucket counts; older ones are stale.
    at: u64,
    calls: u32,
    extra: u32,
}

#[derive(Debug)]
struct State {
    settings: RetryBudgetSettings,
    seconds: [Second; WINDOW],
}

/// Shared by every call to one upstream service.
#[derive(Debug)]
pub struct RetryBudget {
    origin: Instant,
    state: Mutex<State>,
}

impl RetryBudget {
    pub fn new(settings: RetryBudgetSettings) -> Self {
        Self {
            origin: Instant::now(),
            state: Mutex::new(State {
                settings,
                seconds: [Second::default(); WINDOW],
            }),
        }
    }

    pub fn reconfigure(&self, settings: &RetryBudgetSettings) {
        self.lock().settings = settings.clone();
    }

    /// A call began (its first attempt): it earns the budget `percent` of an attempt.
    pub fn deposit(&self, now: Instant) {
        let second = self.second(now);
        let mut state = self.lock();
        let bucket = state.bucket(second);
        bucket.calls = bucket.calls.saturating_add(1);
    }

    /// Whether one more hedge or retry fits; if it does, it is counted.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut state = self.lock();
        let (calls, extra) = state
            .seconds
            .iter()
            .filter(|s| s.at + WINDOW as u64 > second && s.at <= second)
            .fold((0u64, 0u64), |(c, e), s| {
                (c + u64::from(s.calls), e + u64::from(s.extra))
            });
        let allowed = calls * u64::from(state.settings.percent) / 100
            + u64::from(state.settings.min_per_second) * WINDOW as u64;
        if extra >= allowed {
            return false;
        }
        let bucket = state.bucket(second);
        bucket.extra = bucket.extra.saturating_add(1);
        true
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// The bucket of `second`, emptied first if it still holds an older second.
    fn bucket(&mut self, second: u64) -> &mut Second {
        let bucket = &mut self.seconds[(second % WINDOW as u64) as usize];
        if bucket.at != second {
            *bucket = Second {
                at: second,
                ..Second::default()
            };
        }
        bucket
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(percent: u32, min_per_second: u32) -> (RetryBudget, Instant) {
        let b = RetryBudget::new(RetryBudgetSettings {
            percent,
            min_per_second,
        });
        let origin = b.origin;
        (b, origin)
    }

    fn withdrawals(b: &RetryBudget, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| b.try_withdraw(now)).count()
    }

    #[tokio::test]
    async fn extra_attempts_are_a_share_of_the_calls_plus_a_floor() {
        let (b, t0) = budget(20, 1);
        for _ in 0..100 {
            b.deposit(t0);
        }
        // 20 % of 100 calls, plus 1 a second over the ten-second window.
        assert_eq!(withdrawals(&b, t0, 100), 30);
        assert!(!b.try_withdraw(t0), "spent: refused");
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!(withdrawals(&b, t0, 10), 2, "ten more calls earn two");
    }

    #[tokio::test]
    async fn a_floor_alone_lets_a_quiet_service_retry() {
        let (b, t0) = budget(20, 2);
        assert_eq!(withdrawals(&b, t0, 50), 20, "2 a second over ten seconds");
        let (b, t0) = budget(0, 0);
        b.deposit(t0);
        assert!(!b.try_withdraw(t0), "no budget: never retried");
    }

    #[tokio::test]
    async fn what_was_spent_and_earned_ages_out_after_ten_seconds() {
        let (b, t0) = budget(50, 0);
        for _ in 0..20 {
            b.deposit(t0);
        }
        assert_eq!(withdrawals(&b, t0, 20), 10);
        let t5 = t0 + Duration::from_secs(5);
        assert!(!b.try_withdraw(t5), "still inside the window");
        for _ in 0..2 {
            b.deposit(t5);
        }
        assert_eq!(withdrawals(&b, t5, 5), 1, "22 calls allow 11, 10 spent");
        // At 10 s the first second has aged out: 2 calls allow 1, and 1 (at 5 s) is spent.
        let t10 = t0 + Duration::from_secs(10);
        assert!(!b.try_withdraw(t10));
        let t16 = t0 + Duration::from_secs(16);
        assert!(!b.try_withdraw(t16), "nothing earned any more");
        b.deposit(t16);
        b.deposit(t16);
        assert_eq!(withdrawals(&b, t16, 5), 1);
    }
}
