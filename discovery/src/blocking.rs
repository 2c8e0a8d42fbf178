//! The one loop every Consul blocking query here runs on (the health watch, the config
//! center's KV watch), with Consul's documented rules: send back the index of the last
//! answer; an index that goes backwards (the agent's state was rebuilt) starts over at 0,
//! whose query answers at once; any other index is kept at 1 or more (0 would not block); at
//! most `max_rate` answers a second, in bursts of as many (a token bucket, so a key or a
//! service that changes without pause cannot spin the loop); failures back off
//! exponentially, with jitter.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;

/// Where a blocking loop stands: the index to send, the pace, the back-off.
#[derive(Debug)]
pub struct BlockingLoop {
    index: u64,
    pace: Pace,
    backoff: Backoff,
}

impl BlockingLoop {
    /// A loop that reads at most `max_rate` answers a second.
    pub fn new(max_rate: u32) -> Self {
        Self {
            index: 0,
            pace: Pace::new(f64::from(max_rate)),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Waits for the pace, then gives the index to send: 0 means "answer at once".
    pub async fn next_index(&mut self) -> u64 {
        let delay = self.pace.next_delay(Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.index
    }

    /// The index of the last answer, as the next query will send it.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Consul answered with `X-Consul-Index: index`.
    pub fn answered(&mut self, index: u64) {
        self.backoff.reset();
        self.index = next_index(self.index, index);
    }

    /// The query failed: how long to wait before the next one.
    pub fn failed(&mut self) -> Duration {
        // The agent answering next may not be the one that failed (a restart, another
        // agent behind the address) and its indexes need not follow the old ones: read
        // afresh before blocking again.
        self.index = 0;
        self.backoff.next_delay()
    }
}

/// The index to send after an answer carrying `answer`, when `sent` was sent.
fn next_index(sent: u64, answer: u64) -> u64 {
    if answer < sent { 0 } else { answer.max(1) }
}

/// At most `per_second` answers a second, in bursts of as many: Consul's advice for
/// blocking loops. Changes that come faster are read together in the next answer.
#[derive(Debug)]
struct Pace {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(per_second: f64) -> Self {
        let per_second = per_second.max(0.1);
        Self {
            per_second,
            tokens: per_second,
            at: Instant::now(),
        }
    }

    /// How long to wait before the next query (and takes its token).
    fn next_delay(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second.max(1.0));
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_follows_consuls_rules() {
        assert_eq!(next_index(0, 42), 42, "the first answer's index");
        assert_eq!(next_index(42, 57), 57);
        assert_eq!(next_index(57, 57), 57, "a wake-up with nothing new");
        assert_eq!(next_index(57, 3), 0, "backwards: start over");
        assert_eq!(
            next_index(0, 0),
            1,
            "never 0 after an answer: 0 would not block"
        );
    }

    #[test]
    fn the_pace_allows_a_burst_then_spaces_queries_out() {
        let t0 = Instant::now();
        let mut pace = Pace::new(4.0);
        let burst: Vec<Duration> = (0..4).map(|_| pace.next_delay(t0)).collect();
        assert_eq!(burst, [Duration::ZERO; 4]);
        assert_eq!(pace.next_delay(t0), Duration::from_millis(250));
        // A quiet second refills the bucket, never beyond one second's worth.
        let later = t0 + Duration::from_secs(10);
        let burst: Vec<Duration> = (0..4).map(|_| pace.next_delay(later)).collect();
        assert_eq!(burst, [Duration::ZERO; 4]);
        assert!(pace.next_delay(later) > Duration::ZERO);
    }
}
