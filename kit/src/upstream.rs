//! Balanced calls to a service found through Consul, for any tonic client: a deadline on
//! every call, the request id in the metadata, and one retry on the next instance for
//! idempotent reads. A read's first attempt gets a few times the instance's recent worst
//! latency (the balancer's outlier settings), so an instance that swallows requests (a
//! frozen process, a wedged connection) costs a short wait and a retry, not the deadline.
//! Every attempt's outcome feeds the balancer's outlier detection: a refused or reset
//! connection ejects at once, timeouts in a row eject, a success ends a streak. No
//! instance: 503 at once.

use std::{
    borrow::Cow,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use discovery::{Balancer, BalancerSettings, ConsulClient, WatchSettings, Watcher};
use serde::{Deserialize, Serialize};
use tonic::{Code, Status, metadata::MetadataValue, transport::Channel};
use tracing::Instrument;

use crate::{
    config::center::Live,
    http::{ApiError, CallContext, HttpMetrics},
};

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
        }
    }
}

/// [`crate::config::ServiceSettings::LIVE`] of a gateway whose upstream section is named
/// `upstream`: the log filter, the deadline and the balancer's routing change live (see
/// [`Upstream::reconfigure`]); which service is watched, and connections, need a restart.
pub const GATEWAY_LIVE: &[&str] = &[
    "server.log_filter",
    "upstream.deadline",
    "upstream.balancer.policy",
    "upstream.balancer.outlier",
    "upstream.balancer.probe_interval",
    "upstream.balancer.probe_timeout",
];

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the call may be sent again to another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: a transport failure or a timed-out first attempt is retried once on the next
    /// instance.
    Idempotent,
    /// Writes: never sent twice.
    Never,
}

/// A status made by the client's transport (connection refused or reset, GOAWAY), not sent
/// by the service: the instance is unusable, whatever the code says.
fn transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        )
}

/// One upstream service: its watch in Consul, its balancer, and how to make its client.
#[derive(Debug)]
pub struct Upstream<C> {
    service: &'static str,
    balancer: Balancer,
    /// The call deadline in nanoseconds; shared by the clones, changed by `reconfigure`.
    deadline: Arc<AtomicU64>,
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
            metrics: self.metrics.clone(),
            client: self.client,
            _watcher: Arc::clone(&self._watcher),
        }
    }
}

impl<C> Upstream<C> {
    /// Starts following `settings.watch.service` in Consul; `client` is the tonic client's
    /// constructor, e.g. `UserClient::new`.
    pub fn follow(
        consul: &ConsulClient,
        settings: &UpstreamSettings,
        metrics: &HttpMetrics,
        client: fn(Channel) -> C,
    ) -> Self {
        let watcher = Watcher::start(consul.clone(), settings.watch.clone());
        let balancer = Balancer::new(watcher.subscribe(), settings.balancer.clone());
        let service = metrics.follow(&settings.watch.service, balancer.clone());
        Self {
            service,
            balancer,
            deadline: Arc::new(AtomicU64::new(nanos(settings.deadline))),
            metrics: metrics.clone(),
            client,
            _watcher: Arc::new(watcher),
        }
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_nanos(self.deadline.load(Ordering::Relaxed))
    }

    /// Applies `section` of every change `live` announces (Consul KV) with
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
                let settings = section(&changes.borrow_and_update()).clone();
                upstream.reconfigure(&settings);
            }
        });
    }

    /// Applies the settings that can change while running: the deadline and the balancer's
    /// routing (see [`Balancer::reconfigure`]). Which service is watched needs a restart.
    pub fn reconfigure(&self, settings: &UpstreamSettings) {
        self.deadline
            .store(nanos(settings.deadline), Ordering::Relaxed);
        self.balancer.reconfigure(&settings.balancer);
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
        let service = Cow::Borrowed(self.service);
        let started = tokio::time::Instant::now();
        let deadline = self.deadline();
        let mut failed_on: Option<String> = None;
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            let Some(picked) = self.balancer.pick(ctx.client_ip, failed_on.as_deref()) else {
                self.metrics
                    .upstream_call(self.service, "none", "no_instance");
                return Err(ApiError::Unavailable(service));
            };
            let budget = if retry == Retry::Idempotent && failed_on.is_none() {
                picked.first_attempt_budget(left)
            } else {
                left
            };
            let attempt_started = tokio::time::Instant::now();
            let mut grpc_request = tonic::Request::new(request.clone());
            grpc_request.set_timeout(budget);
            if let Ok(id) = MetadataValue::try_from(ctx.request_id.as_str()) {
                grpc_request.metadata_mut().insert("x-request-id", id);
            }
            // With traces on, each attempt is a span of its own (a retry is its sibling),
            // and the next tier continues it.
            let attempt = if bootstrap::telemetry::enabled() {
                let span = tracing::info_span!(
                    "upstream",
                    service = self.service,
                    instance = picked.id(),
                    retry = failed_on.is_some(),
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
            let outcome = tokio::time::timeout(budget, call(client, grpc_request))
                .instrument(attempt.clone())
                .await;
            if !matches!(outcome, Ok(Ok(_))) && !attempt.is_none() {
                attempt.record("otel.status_code", "ERROR");
                let message = match &outcome {
                    Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                    _ => "attempt timed out".to_owned(),
                };
                attempt.record("otel.status_message", message.as_str());
            }
            let status = match outcome {
                Err(_) => Status::deadline_exceeded("attempt timed out"),
                Ok(Ok(response)) => {
                    picked.succeeded(attempt_started.elapsed());
                    self.metrics.upstream_call(self.service, picked.id(), "Ok");
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
            };
            self.metrics
                .upstream_call(self.service, picked.id(), &format!("{:?}", status.code()));
            // The channel enforces the grpc-timeout we set and reports it as Cancelled.
            let timed_out = matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded);
            if timed_out {
                picked.failed();
            }
            if timed_out && (retry == Retry::Never || failed_on.is_some()) {
                return Err(ApiError::Timeout(service));
            }
            if !timed_out && !transport_failure(&status) {
                // The service answered: the instance works, whatever the answer says.
                picked.succeeded(attempt_started.elapsed());
                return Err(ApiError::from_status(status, service));
            }
            if !timed_out {
                picked.eject();
            }
            let retrying = retry == Retry::Idempotent && failed_on.is_none();
            tracing::warn!(
                service = self.service, instance = picked.id(), request_id = %ctx.request_id,
                error = %status, retrying, "upstream instance failed"
            );
            if !retrying {
                return Err(ApiError::Unavailable(service));
            }
            failed_on = Some(picked.id().to_owned());
        }
    }
}
