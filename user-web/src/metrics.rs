//! Prometheus metrics of the gateway: requests by route and status, latency, upstream calls
//! by instance and outcome, and the instances in rotation (read at scrape time).

use std::sync::Arc;

use discovery::Balancer;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    instance: String,
    code: String,
}

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

    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    pub fn upstream_call(&self, instance: &str, code: &str) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                instance: instance.to_owned(),
                code: code.to_owned(),
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
