//! Balanced calls to a service found through Consul, for any tonic client: a deadline on
//! every call and the request id in the metadata. The rules, each in one place:
//! - [`verdict`]: what one finished attempt means (answered, try elsewhere, out of time);
//! - a read whose first attempt passes its budget (a few times the instance's recent worst
//!   latency) is **hedged**: a second attempt goes to another instance and the first keeps
//!   running; whichever answers first wins, and the other is cancelled;
//! - a read whose instance refused the connection, reset it, shed the call
//!   (`RESOURCE_EXHAUSTED`) or said it is unavailable is retried on another instance;
//! - a hedge or a retry never goes to an ejected or refusing instance
//!   ([`Balancer::pick_other`]); with none left, the call keeps the attempt it has, or fails
//!   with the reason;
//! - hedges and retries together stay within the [`budget::RetryBudget`];
//! - writes are never sent twice.
//!
//! Every attempt's outcome feeds the balancer's outlier detection. No instance: 503 at once.

pub mod budget;
mod verdict;

use std::{
    borrow::Cow,
    future::Future,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use discovery::{
    Balancer, BalancerSettings, ConsulClient, Routing, WatchSettings, Watcher, balancer::Picked,
};
use futures_util::future::OptionFuture;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::{Status, metadata::MetadataValue, transport::Channel};
use tracing::Instrument;

use crate::{
    config::center::Live,
    connect::Connect,
    http::{ApiError, CallContext, HttpMetrics},
};

use budget::{RetryBudget, RetryBudgetSettings};
use verdict::{Verdict, verdict};

/// Which service to call and how: found in Consul, balanced, with a deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSettings {
    /// Which service to find in Consul, and how to watch it.
    #[serde(flatten)]
    pub watch: WatchSettings,
    /// Deadline of every call.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    pub balancer: BalancerSettings,
    /// How many hedges and retries the calls may add.
    #[serde(default)]
    pub retry_budget: RetryBudgetSettings,
}

impl UpstreamSettings {
    /// Calls to `service` with the default watch, balancer and a 3 s deadline.
    pub fn for_service(service: &str) -> Self {
        Self {
            watch: WatchSettings {
                service: service.to_owned(),
                ..WatchSettings::default()
            },
            deadline: Duration::from_secs(3),
            balancer: BalancerSettings::default(),
            retry_budget: RetryBudgetSettings::default(),
        }
    }

    /// The part a change applies while running (see [`Upstream::reconfigure`]).
    pub fn live(&self) -> UpstreamLive {
        UpstreamLive {
            deadline: self.deadline,
            retry_budget: self.retry_budget.clone(),
            routing: self.balancer.routing.clone(),
        }
    }

    /// Takes `live` in; the rest (which service, how to connect) stays.
    pub fn set_live(&mut self, live: UpstreamLive) {
        self.deadline = live.deadline;
        self.retry_budget = live.retry_budget;
        self.balancer.routing = live.routing;
    }
}

/// What of an upstream's settings changes while running: the deadline, the retry budget and
/// the balancer's routing. Which service is watched, and how to connect to it, need a
/// restart. A gateway's [`crate::config::ServiceSettings::Live`].
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamLive {
    pub deadline: Duration,
    pub retry_budget: RetryBudgetSettings,
    pub routing: Routing,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the call may be sent again to another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: hedged when slow, retried elsewhere when the instance could not take them.
    Idempotent,
    /// Writes: never sent twice.
    Never,
}

/// Attempts one call may make at most, the first included.
const MAX_ATTEMPTS: usize = 3;

/// One upstream service: its watch in Consul, its balancer, and how to make its client.
#[derive(Debug)]
pub struct Upstream<C> {
    service: &'static str,
    balancer: Balancer,
    /// The call deadline in nanoseconds; shared by the clones, changed by `reconfigure`.
    deadline: Arc<AtomicU64>,
    budget: Arc<RetryBudget>,
    metrics: HttpMetrics,
    client: fn(Channel) -> C,
    /// Keeps the Consul watch running as long as the upstream lives.
    _watcher: Arc<Watcher>,
}

impl<C> Clone for Upstream<C> {
    fn clone(&self) -> Self {
        Self {
            service: self.service,
            balancer: self.balancer.clone(),
            deadline: Arc::clone(&self.deadline),
            budget: Arc::clone(&self.budget),
            metrics: self.metrics.clone(),
            client: self.client,
            _watcher: Arc::clone(&self._watcher),
        }
    }
}

impl<C> Upstream<C> {
    /// Starts following `settings.watch.service` in Consul, dialling its instances over
    /// `connect`'s mutual TLS when given; `client` is the tonic client's constructor, e.g.
    /// `UserClient::new`.
    pub fn follow(
        consul: &ConsulClient,
        settings: &UpstreamSettings,
        metrics: &HttpMetrics,
        connect: Option<&Connect>,
        client: fn(Channel) -> C,
    ) -> Self {
        let watcher = Watcher::start(consul.clone(), settings.watch.clone());
        let dial = connect.map_or_else(crate::coalesce::plain_dial, |c| {
            c.dialer(&settings.watch.service)
        });
        let balancer =
            Balancer::dialing(watcher.subscribe(), settings.balancer.clone(), Some(dial));
        let service = metrics.follow(&settings.watch.service, balancer.clone());
        Self {
            service,
            balancer,
            deadline: Arc::new(AtomicU64::new(nanos(settings.deadline))),
            budget: Arc::new(RetryBudget::new(settings.retry_budget.clone())),
            metrics: metrics.clone(),
            client,
            _watcher: Arc::new(watcher),
        }
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline.load(Ordering::Relaxed))
    }

    /// Applies the live part of `section` of every change `live` announces (Consul KV) with
    /// [`Upstream::reconfigure`], until `live` is dropped.
    pub fn follow_settings<T>(&self, live: &Live<T>, section: fn(&T) -> &UpstreamSettings)
    where
        T: Clone + Send + Sync + 'static,
        C: 'static,
    {
        let mut changes = live.subscribe();
        let upstream = self.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let settings = section(&changes.borrow_and_update()).live();
                upstream.reconfigure(&settings);
            }
        });
    }

    /// Applies the settings that can change while running: the deadline, the retry budget
    /// and the balancer's routing.
    pub fn reconfigure(&self, live: &UpstreamLive) {
        self.deadline.store(nanos(live.deadline), Ordering::Relaxed);
        self.budget.reconfigure(&live.retry_budget);
        self.balancer.reconfigure(&live.routing);
    }

    /// Runs `call` on a balanced instance; see the module docs for the rules.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        ctx: &CallContext,
        retry: Retry,
        request: Req,
        call: F,
    ) -> Result<Resp, ApiError>
    where
        Req: Clone,
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.deadline();
        self.budget.deposit(started);
        let Some(first) = self.balancer.pick(ctx.client_ip) else {
            self.metrics
                .upstream_call(self.service, "none", "no_instance");
            return Err(ApiError::Unavailable(Cow::Borrowed(self.service)));
        };
        let mut hedge_at = (retry == Retry::Idempotent)
            .then(|| started + first.first_attempt_budget(self.deadline()));
        // Two attempts run at once at most. `slot[i]` holds attempt i's instance and span,
        // `run0`/`run1` the attempt itself.
        let (attempt, span) = self.attempt(ctx, &first, &request, deadline, false, &call);
        let mut slot = [
            Some(Running {
                picked: first,
                span,
                started,
                extra: false,
            }),
            None,
        ];
        let mut run0 = pin!(OptionFuture::from(Some(attempt)));
        let mut run1 = pin!(OptionFuture::from(None));
        let mut attempts = 1;
        // A hedge or a retry: `picked` starts in the free `index` slot.
        macro_rules! start_another {
            ($index:expr, $picked:expr) => {{
                let (index, picked) = ($index, $picked);
                let (attempt, span) = self.attempt(ctx, &picked, &request, deadline, true, &call);
                either(index, &mut run0, &mut run1).set(Some(attempt).into());
                slot[index] = Some(Running {
                    picked,
                    span,
                    started: Instant::now(),
                    extra: true,
                });
                attempts += 1;
            }};
        }
        // Instances whose attempt ended without an answer (named only off the happy path).
        let mut failed_on: Vec<String> = Vec::new();
        loop {
            let hedge_timer = OptionFuture::from(hedge_at.map(tokio::time::sleep_until));
            let (index, outcome) = tokio::select! {
                Some(outcome) = &mut run0, if slot[0].is_some() => (0, outcome),
                Some(outcome) = &mut run1, if slot[1].is_some() => (1, outcome),
                Some(()) = hedge_timer, if hedge_at.is_some() => {
                    hedge_at = None;
                    // No instance or no budget for it: the first attempt keeps its chance.
                    if let Ok((index, picked)) = self.another(ctx, &slot, &failed_on, attempts, "hedge") {
                        start_another!(index, picked);
                    }
                    continue;
                }
                else => return Err(ApiError::Unavailable(Cow::Borrowed(self.service))),
            };
            either(index, &mut run0, &mut run1).set(None.into());
            let Some(ended) = slot[index].take() else {
                continue;
            };
            let other = 1 - index;
            match verdict(outcome, Instant::now() >= deadline) {
                Verdict::Answered(answer) => {
                    ended.picked.succeeded(ended.started.elapsed());
                    self.metrics
                        .upstream_call(self.service, ended.picked.id(), answer.label());
                    if let Some(slow) = slot[other].take().filter(|_| ended.extra) {
                        // A hedge won: the attempt it overtook was too slow. (A first attempt
                        // that wins only cancels its hedge, which learns nothing.)
                        slow.picked.failed();
                        slow.failed("overtaken by a hedge");
                        self.metrics
                            .upstream_call(self.service, slow.picked.id(), "overtaken");
                    }
                    return answer.into_result(self.service);
                }
                Verdict::OutOfTime => {
                    tracing::warn!(
                        service = self.service, request_id = %ctx.request_id,
                        "upstream call out of time"
                    );
                    for running in std::iter::once(ended).chain(slot[other].take()) {
                        running.picked.failed();
                        running.failed("deadline exceeded");
                        self.metrics.upstream_call(
                            self.service,
                            running.picked.id(),
                            "DEADLINE_EXCEEDED",
                        );
                    }
                    return Err(ApiError::Timeout(Cow::Borrowed(self.service)));
                }
                Verdict::Elsewhere(why) => {
                    why.record(&ended.picked);
                    ended.failed(why.label());
                    self.metrics
                        .upstream_call(self.service, ended.picked.id(), why.label());
                    tracing::warn!(
                        service = self.service, instance = ended.picked.id(), request_id = %ctx.request_id,
                        reason = why.label(), "upstream instance could not take the call"
                    );
                    failed_on.push(ended.picked.id().to_owned());
                    drop(ended);
                    if slot[other].is_some() {
                        // The other attempt may still answer: wait for it.
                        continue;
                    }
                    let next = match retry {
                        Retry::Idempotent => {
                            self.another(ctx, &slot, &failed_on, attempts, "retry")
                        }
                        Retry::Never => Err("a write is never sent twice"),
                    };
                    let (index, picked) = match next {
                        Ok(next) => next,
                        Err(no_retry) => {
                            tracing::warn!(
                                service = self.service, request_id = %ctx.request_id,
                                reason = why.label(), no_retry, "upstream call failed"
                            );
                            return Err(why.error(self.service));
                        }
                    };
                    start_another!(index, picked);
                }
            }
        }
    }

    /// An instance for a hedge or a retry, and the free slot for it: within
    /// [`MAX_ATTEMPTS`], never one already tried (running or failed), ejected or refusing,
    /// and only if the retry budget allows.
    fn another(
        &self,
        ctx: &CallContext,
        slot: &[Option<Running>; 2],
        failed_on: &[String],
        attempts: usize,
        kind: &'static str,
    ) -> Result<(usize, Picked), &'static str> {
        if attempts >= MAX_ATTEMPTS {
            return Err("no attempt left");
        }
        let index = slot
            .iter()
            .position(Option::is_none)
            .ok_or("two attempts running")?;
        let tried: Vec<&str> = failed_on
            .iter()
            .map(String::as_str)
            .chain(slot.iter().flatten().map(|r| r.picked.id()))
            .collect();
        let Some(picked) = self.balancer.pick_other(ctx.client_ip, &tried) else {
            self.metrics
                .extra_attempt(self.service, kind, "no_instance");
            return Err("no other instance in rotation");
        };
        if !self.budget.try_withdraw(Instant::now()) {
            self.metrics
                .extra_attempt(self.service, kind, "over_budget");
            return Err("the retry budget is spent");
        }
        self.metrics.extra_attempt(self.service, kind, "sent");
        Ok((index, picked))
    }

    /// One attempt on `picked`, bounded by the call's `deadline` (sent as `grpc-timeout`,
    /// which the channel enforces: no timer of our own per attempt), and its span (with traces
    /// on, each attempt is a span of its own, a hedge or retry its sibling, and the next
    /// tier continues it).
    fn attempt<Req, Resp, F, Fut>(
        &self,
        ctx: &CallContext,
        picked: &Picked,
        request: &Req,
        deadline: Instant,
        extra: bool,
        call: &F,
    ) -> (tracing::instrument::Instrumented<Fut>, tracing::Span)
    where
        Req: Clone,
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let mut grpc_request = tonic::Request::new(request.clone());
        grpc_request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        if let Ok(id) = MetadataValue::try_from(ctx.request_id.as_str()) {
            grpc_request.metadata_mut().insert("x-request-id", id);
        }
        let span = if bootstrap::telemetry::enabled() {
            let span = tracing::info_span!(
                "upstream",
                service = self.service,
                instance = picked.id(),
                retry = extra,
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                otel.status_message = tracing::field::Empty,
            );
            let metadata = grpc_request.metadata_mut();
            bootstrap::telemetry::inject(&span, |name, value| {
                if let Ok(value) = MetadataValue::try_from(value) {
                    metadata.insert(name, value);
                }
            });
            span
        } else {
            tracing::Span::none()
        };
        let client = (self.client)(picked.channel());
        let attempt = call(client, grpc_request).instrument(span.clone());
        (attempt, span)
    }
}

/// Slot `index` of two.
fn either<'a, T>(index: usize, first: &'a mut T, second: &'a mut T) -> &'a mut T {
    if index == 0 { first } else { second }
}

/// An attempt in flight: its instance (holding its in-flight count) and span.
struct Running {
    picked: Picked,
    span: tracing::Span,
    started: Instant,
    /// A hedge or a retry, not the call's first attempt.
    extra: bool,
}

impl Running {
    /// Marks the attempt's span as failed (with traces on).
    fn failed(&self, why: &str) {
        if !self.span.is_none() {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("otel.status_message", why);
        }
    }
}
