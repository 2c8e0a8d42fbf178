//! Overload protection: an adaptive concurrency limit in the spirit of Netflix's
//! concurrency-limits (Gradient) and Envoy's adaptive concurrency. Calls beyond the limit are
//! refused at once (the HTTP edge answers 503 with `Retry-After`, a gRPC server
//! `RESOURCE_EXHAUSTED`) instead of queueing until their deadline. The limit follows measured
//! latency: it shrinks while calls take more than `tolerance` × the baseline (the best recent
//! latency, which creeps up slowly so a lasting change is accepted) and more than
//! `latency_floor`, and grows while they do not and the calls in flight press against it.
//! The floor matters on a CPU-bound host, where a server only reaches its capacity with some
//! calls queued: a few milliseconds of queueing is the price of throughput, not overload.
//! The limit never goes below `min`: a closed set of clients on a slow host (fewer callers
//! than `min`) is never refused for being slow.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// Off: every call is admitted, however many are in flight.
    pub enabled: bool,
    /// The limit at start.
    pub initial: u32,
    /// The limit never goes below this...
    pub min: u32,
    /// ...nor above this.
    pub max: u32,
    /// Latency may reach this many times the baseline before the limit shrinks...
    pub tolerance: f64,
    /// ...and latency below this never shrinks it.
    #[serde(with = "humantime_serde")]
    pub latency_floor: Duration,
    /// Calls per measurement: the limit moves once per this many completed calls.
    pub window: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            initial: 64,
            min: 32,
            max: 1000,
            tolerance: 2.0,
            latency_floor: Duration::from_millis(20),
            window: 100,
        }
    }
}

impl LimitSettings {
    /// The settings made coherent: 1 <= min <= initial <= max, tolerance >= 1, window >= 1.
    fn coherent(&self) -> Self {
        let min = self.min.max(1);
        let max = self.max.max(min);
        Self {
            enabled: self.enabled,
            initial: self.initial.clamp(min, max),
            min,
            max,
            tolerance: if self.tolerance >= 1.0 {
                self.tolerance
            } else {
                1.0
            },
            latency_floor: self.latency_floor,
            window: self.window.max(1),
        }
    }
}

/// One measurement window and the state the limit is computed from.
#[derive(Debug)]
struct Window {
    settings: LimitSettings,
    /// The limit, unrounded.
    limit: f64,
    /// The best recent window's mean latency, in microseconds.
    baseline: f64,
}

/// Shared by every call of one server (cheap to clone).
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    in_flight: AtomicU32,
    /// The rounded limit admission reads; 0 means no limit.
    limit: AtomicU32,
    refused: AtomicU64,
    /// When a refusal was last logged, in seconds since `origin`.
    logged_at: AtomicU64,
    origin: Instant,
    /// Taken only to close a window (once per `window_size` calls).
    window: Mutex<Window>,
    enabled: bool,
    window_size: u32,
    /// The open window's calls, counted without a lock: their summed latency, how many,
    /// and the most calls in flight seen.
    sum_micros: AtomicU64,
    samples: AtomicU32,
    peak: AtomicU32,
}

/// An admitted call; dropping it ends the call, and a call that finished (rather than
/// being cancelled) feeds its latency to the limit.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    started: Instant,
    finished: bool,
}

impl Permit {
    /// The call completed (whatever its answer): its latency counts.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let in_flight = self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.finished {
            self.inner.sample(self.started.elapsed(), in_flight);
        }
    }
}

impl Limiter {
    pub fn new(settings: &LimitSettings) -> Self {
        let settings = &settings.coherent();
        let limit = if settings.enabled {
            settings.initial
        } else {
            0
        };
        Self {
            inner: Arc::new(Inner {
                in_flight: AtomicU32::new(0),
                limit: AtomicU32::new(limit),
                refused: AtomicU64::new(0),
                logged_at: AtomicU64::new(u64::MAX),
                origin: Instant::now(),
                window: Mutex::new(Window {
                    settings: settings.clone(),
                    limit: f64::from(settings.initial),
                    baseline: 0.0,
                }),
                enabled: settings.enabled,
                window_size: settings.window,
                sum_micros: AtomicU64::new(0),
                samples: AtomicU32::new(0),
                peak: AtomicU32::new(0),
            }),
        }
    }

    /// Admits a call, or `None` when as many as the limit are in flight.
    pub fn try_acquire(&self) -> Option<Permit> {
        let limit = self.inner.limit.load(Ordering::Relaxed);
        let admitted =
            self.inner
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (limit == 0 || n < limit).then_some(n + 1)
                });
        if admitted.is_err() {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit {
            inner: Arc::clone(&self.inner),
            started: Instant::now(),
            finished: false,
        })
    }

    /// The limit now (0: off).
    pub fn limit(&self) -> u32 {
        self.inner.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a refusal now should be logged: at most once a second.
    pub fn should_log_refusal(&self) -> bool {
        let now = self.inner.origin.elapsed().as_secs();
        let last = self.inner.logged_at.load(Ordering::Relaxed);
        (last == u64::MAX || now > last)
            && self
                .inner
                .logged_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Calls refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// One completed call of `latency`, with `in_flight` calls running when it ended.
    fn sample(&self, latency: Duration, in_flight: u32) {
        if !self.enabled {
            return;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.peak.fetch_max(in_flight, Ordering::Relaxed);
        if self.samples.fetch_add(1, Ordering::AcqRel) + 1 < self.window_size {
            return;
        }
        // One caller closes the window; a call landing meanwhile counts in the next one.
        let Ok(mut w) = self.window.try_lock() else {
            return;
        };
        let samples = self.samples.swap(0, Ordering::AcqRel);
        if samples < self.window_size {
            return;
        }
        let sum = self.sum_micros.swap(0, Ordering::AcqRel) as f64;
        let peak = self.peak.swap(0, Ordering::AcqRel);
        let limit = w.next_limit(sum / f64::from(samples), peak);
        drop(w);
        // Rounded to nearest: the limit admission reads.
        self.limit.store(limit.round() as u32, Ordering::Relaxed);
    }
}

impl Window {
    /// Closes a window whose calls took `mean_micros` on average with at most `peak` in
    /// flight: the limit for the next one.
    fn next_limit(&mut self, mean_micros: f64, peak: u32) -> f64 {
        let s = &self.settings;
        let short = mean_micros.max(1.0);
        // The best recent latency, drifting up by 1/1000 a window so that a lasting change
        // (a slower dependency) becomes the new normal in some hundreds of windows.
        self.baseline = if self.baseline == 0.0 || short < self.baseline {
            short
        } else {
            self.baseline * 1.001
        };
        let acceptable = (s.tolerance * self.baseline).max(s.latency_floor.as_secs_f64() * 1e6);
        let gradient = (acceptable / short).clamp(0.5, 1.0);
        let headroom = self.limit.sqrt();
        let target = if gradient < 1.0 {
            // Calls queue: shrink in proportion, keeping a little headroom (Gradient's form).
            self.limit * gradient + headroom
        } else if f64::from(peak) * 2.0 >= self.limit {
            // Latency holds while calls press against the limit: room for more.
            self.limit + headroom
        } else {
            // Calls are few: nothing says more would be served well.
            self.limit
        };
        self.limit = (self.limit * 0.8 + target * 0.2).clamp(f64::from(s.min), f64::from(s.max));
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(initial: u32, min: u32, max: u32) -> Limiter {
        Limiter::new(&LimitSettings {
            enabled: true,
            initial,
            min,
            max,
            tolerance: 2.0,
            latency_floor: Duration::ZERO,
            window: 10,
        })
    }

    /// `windows` full windows of calls of `micros` each, with `in_flight` running.
    fn feed(l: &Limiter, windows: u32, micros: u64, in_flight: u32) {
        for _ in 0..windows * 10 {
            l.inner.sample(Duration::from_micros(micros), in_flight);
        }
    }

    #[test]
    fn calls_beyond_the_limit_are_refused_and_counted() {
        let l = limiter(3, 1, 10);
        let permits: Vec<Permit> = (0..3).filter_map(|_| l.try_acquire()).collect();
        assert_eq!(permits.len(), 3);
        assert!(l.try_acquire().is_none());
        assert!(l.try_acquire().is_none());
        assert_eq!((l.in_flight(), l.refused()), (3, 2));
        drop(permits);
        assert_eq!(l.in_flight(), 0);
        assert!(l.try_acquire().is_some(), "room again");
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_calls_press_against_it() {
        let l = limiter(10, 5, 100);
        feed(&l, 20, 1000, 100);
        let grown = l.limit();
        assert!(grown > 20, "{grown}");
        feed(&l, 200, 1000, 100);
        assert_eq!(l.limit(), 100, "up to max");
    }

    #[test]
    fn few_calls_do_not_grow_the_limit() {
        let l = limiter(40, 5, 100);
        feed(&l, 50, 1000, 3);
        assert_eq!(l.limit(), 40, "3 in flight of 40 says nothing about 41");
    }

    #[test]
    fn queueing_latency_shrinks_the_limit_down_to_the_floor() {
        let l = limiter(80, 20, 100);
        feed(&l, 5, 1000, 80);
        let before = l.limit();
        // Five times the baseline: the gradient is at its 0.5 floor.
        feed(&l, 5, 5000, 80);
        let after = l.limit();
        assert!(after < before, "{before} -> {after}");
        feed(&l, 100, 5000, 80);
        assert_eq!(l.limit(), 20, "never below min");
    }

    #[test]
    fn latency_under_the_floor_never_shrinks_the_limit() {
        let l = Limiter::new(&LimitSettings {
            initial: 60,
            min: 10,
            max: 100,
            latency_floor: Duration::from_millis(20),
            window: 10,
            ..LimitSettings::default()
        });
        feed(&l, 5, 500, 60);
        let a = l.limit();
        // 30 x the baseline, but 15 ms: queueing a CPU-bound host needs for throughput.
        feed(&l, 20, 15_000, 60);
        assert!(l.limit() >= a, "{a} -> {}", l.limit());
        feed(&l, 20, 60_000, 60);
        assert!(l.limit() < a, "60 ms is above the floor: shrinks");
    }

    #[test]
    fn latency_within_tolerance_keeps_the_limit() {
        let l = limiter(50, 5, 100);
        feed(&l, 5, 1000, 50);
        let a = l.limit();
        // 1.8 x the baseline is within 2 x: no shrink.
        feed(&l, 20, 1800, 50);
        assert!(l.limit() >= a, "{a} -> {}", l.limit());
    }

    #[test]
    fn off_admits_everything() {
        let l = Limiter::new(&LimitSettings {
            enabled: false,
            ..LimitSettings::default()
        });
        let permits: Vec<Permit> = (0..5000).filter_map(|_| l.try_acquire()).collect();
        assert_eq!((permits.len(), l.refused(), l.limit()), (5000, 0, 0));
    }

    #[test]
    fn incoherent_settings_are_made_coherent() {
        let l = Limiter::new(&LimitSettings {
            min: 50,
            initial: 10,
            max: 20,
            tolerance: 0.1,
            latency_floor: Duration::ZERO,
            window: 0,
            enabled: true,
        });
        assert_eq!(l.limit(), 50, "min wins over a smaller max and initial");
        feed(&l, 3, 1000, 50);
        assert_eq!(l.limit(), 50);
    }
}
