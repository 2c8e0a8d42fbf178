//! Prometheus metrics of the gateway: requests by route and status, latency, upstream calls
//! by instance and outcome, and the instances in rotation (read at scrape time).

use std::{borrow::Cow, sync::Arc};

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
    instance: String,
    code: Label,
}

/// `value` as a borrowed label when it is in `known`, else an owned copy.
fn label(value: &str, known: &[&'static str]) -> Label {
    known
        .iter()
        .find(|k| **k == value)
        .map_or_else(|| Cow::Owned(value.to_owned()), |k| Cow::Borrowed(*k))
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// Upstream outcomes on the common path; failures (rare) are labelled with an owned copy.
const OUTCOMES: &[&str] = &["Ok", "no_instance"];

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~4 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00025, 2.0, 15,
    ))
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    upstream: Family<UpstreamLabels, Counter>,
    endpoints: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let upstream = Family::<UpstreamLabels, Counter>::default();
        let endpoints = Gauge::default();
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
            "Calls to user-srv by instance and gRPC outcome",
            upstream.clone(),
        );
        registry.register(
            "upstream_endpoints",
            "user-srv instances in rotation",
            endpoints.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            latency,
            upstream,
            endpoints,
        }
    }

    /// One answered request; `routes` are the router's templates (`route` is one of them,
    /// or `unmatched`).
    pub fn request(
        &self,
        method: &str,
        route: &str,
        routes: &[&'static str],
        status: u16,
        seconds: f64,
    ) {
        let route = label(route, routes);
        self.requests
            .get_or_create(&RequestLabels {
                method: label(method, METHODS),
                route: route.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    pub fn upstream_call(&self, instance: &str, code: &str) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                instance: instance.to_owned(),
                code: label(code, OUTCOMES),
            })
            .inc();
    }

    /// The text exposition, with the rotation size read now.
    pub fn render(&self, balancer: &Balancer) -> String {
        let in_rotation = balancer
            .members()
            .iter()
            .filter(|m| !m.is_ejected())
            .count();
        self.endpoints.set(in_rotation as i64);
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("cannot encode metrics");
        }
        out
    }
}
