//! Prometheus metrics of a gateway: requests by route and status, latency by route, upstream
//! calls by service, instance and outcome, and each upstream's instances in rotation (read
//! at scrape time). A service registers metrics of its own in [`HttpMetrics::registry`].

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, PoisonError},
};

use discovery::Balancer;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label values are borrowed when they are one of a known few (methods, route templates,
/// outcomes), so recording a request allocates nothing on the common path.
type Label = Cow<'static, str>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Label,
    route: Label,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    service: Label,
    instance: String,
    code: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExtraAttemptLabels {
    service: Label,
    /// `hedge` or `retry`.
    kind: Label,
    /// `sent`, `over_budget` (the retry budget refused it) or `no_instance` (no fit one).
    outcome: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: Label,
}

/// `value` as a borrowed label when it is in `known`, else an owned copy.
fn label(value: &str, known: &[&'static str]) -> Label {
    known
        .iter()
        .find(|k| **k == value)
        .map_or_else(|| Cow::Owned(value.to_owned()), |k| Cow::Borrowed(*k))
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~4 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00025, 2.0, 15,
    ))
}

#[derive(Debug, Clone)]
pub struct HttpMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    upstream: Family<UpstreamLabels, Counter>,
    extra_attempts: Family<ExtraAttemptLabels, Counter>,
    /// The edge's concurrency limiter, read at scrape time.
    limiter: Mutex<Option<crate::overload::Limiter>>,
    limit: Gauge,
    shed: Counter,
    endpoints: Family<ServiceLabels, Gauge>,
    ejections: Family<ServiceLabels, Counter>,
    connections_open: Gauge,
    connections_max: Gauge,
    /// Each followed balancer, with the ejection count already reported.
    balancers: Mutex<Vec<(&'static str, Balancer, u64)>>,
    interned: crate::interned::Interned,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let upstream = Family::<UpstreamLabels, Counter>::default();
        let extra_attempts = Family::<ExtraAttemptLabels, Counter>::default();
        let limit = Gauge::default();
        let shed = Counter::default();
        registry.register(
            "upstream_extra_attempts",
            "Hedges and retries wanted, by service, kind and outcome (sent, over_budget, no_instance)",
            extra_attempts.clone(),
        );
        registry.register(
            "http_concurrency_limit",
            "The adaptive limit on requests served at once (0: off)",
            limit.clone(),
        );
        registry.register(
            "http_shed",
            "Requests refused at once with 503 because the concurrency limit was reached",
            shed.clone(),
        );
        let endpoints = Family::<ServiceLabels, Gauge>::default();
        let ejections = Family::<ServiceLabels, Counter>::default();
        let connections_open = Gauge::default();
        let connections_max = Gauge::default();
        registry.register(
            "http_connections_open",
            "HTTP connections open now",
            connections_open.clone(),
        );
        registry.register(
            "http_connections_max",
            "HTTP connections served at once at most (more wait in the listen queue)",
            connections_max.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "upstream_calls",
            "Calls to upstream services by service, instance and gRPC outcome",
            upstream.clone(),
        );
        registry.register(
            "upstream_endpoints",
            "Upstream instances in rotation, by service",
            endpoints.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Upstream instances ejected by outlier detection, by service",
            ejections.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                requests,
                latency,
                upstream,
                extra_attempts,
                limiter: Mutex::new(None),
                limit,
                shed,
                endpoints,
                ejections,
                connections_open,
                connections_max,
                balancers: Mutex::new(Vec::new()),
                interned: crate::interned::Interned::default(),
            }),
        }
    }

    /// The server's connection cap, as shown in `/metrics`.
    pub(crate) fn connection_limit(&self, max: usize) {
        self.inner
            .connections_max
            .set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    pub(crate) fn connection_gauge(&self) -> &Gauge {
        &self.inner.connections_open
    }

    /// Registers a service's own metric beside the gateway's.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// One answered request; `route` is the router's template, or `unmatched`.
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let route: Label = Cow::Borrowed(self.inner.interned.get(route));
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                method: label(method, METHODS),
                route: route.clone(),
                status,
            })
            .inc();
        self.inner
            .latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// One attempt on an upstream instance, by outcome (a gRPC code's name, `no_instance`,
    /// `refused`, `overtaken` by a hedge).
    pub fn upstream_call(&self, service: &str, instance: &str, code: &'static str) {
        self.inner
            .upstream
            .get_or_create(&UpstreamLabels {
                service: Cow::Borrowed(self.inner.interned.get(service)),
                instance: instance.to_owned(),
                code: Cow::Borrowed(code),
            })
            .inc();
    }

    /// A hedge or a retry wanted, and whether it was sent.
    pub fn extra_attempt(&self, service: &str, kind: &'static str, outcome: &'static str) {
        self.inner
            .extra_attempts
            .get_or_create(&ExtraAttemptLabels {
                service: Cow::Borrowed(self.inner.interned.get(service)),
                kind: Cow::Borrowed(kind),
                outcome: Cow::Borrowed(outcome),
            })
            .inc();
    }

    /// Reports `limiter`'s limit and refusals at every scrape.
    pub(crate) fn follow_limiter(&self, limiter: &crate::overload::Limiter) {
        *self
            .inner
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(limiter.clone());
    }

    /// Reports `balancer`'s rotation size as `service`'s endpoints at every scrape; returns
    /// the service name as the metrics keep it (a label for the process's life).
    pub fn follow(&self, service: &str, balancer: Balancer) -> &'static str {
        let service = self.inner.interned.get(service);
        self.inner
            .balancers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((service, balancer, 0));
        service
    }

    /// The text exposition, with the rotation sizes and the limit read now.
    pub fn render(&self) -> String {
        if let Some(limiter) = &*self
            .inner
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            self.inner.limit.set(i64::from(limiter.limit()));
            let refused = limiter.refused();
            self.inner
                .shed
                .inc_by(refused.saturating_sub(self.inner.shed.get()));
        }
        for (service, balancer, reported) in self
            .inner
            .balancers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
        {
            let label = ServiceLabels {
                service: Cow::Borrowed(*service),
            };
            let total = balancer.ejections();
            self.inner
                .ejections
                .get_or_create(&label)
                .inc_by(total.saturating_sub(*reported));
            *reported = total;
            let in_rotation = balancer
                .members()
                .iter()
                .filter(|m| !m.is_ejected())
                .count();
            self.inner
                .endpoints
                .get_or_create(&ServiceLabels {
                    service: Cow::Borrowed(*service),
                })
                .set(i64::try_from(in_rotation).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if encode(&mut out, &registry).is_err() {
            tracing::error!("cannot encode metrics");
        }
        out
    }
}
