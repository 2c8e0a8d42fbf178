//! A gRPC server's own metrics in Prometheus text, served on a small admin HTTP port
//! (`GET /metrics`): calls by method and code, latency by method, the serving status, and
//! with a database its pool (in use, idle) and its errors by kind. The per-RPC layer
//! records calls; everything else is read when scraped.

use std::{
    future::IntoFuture,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{admission::Admission, db::Db, health::Health, interned::Interned};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// The method label of calls to no method the server has (any path a client sends), so
/// the label set stays as small as the server's methods.
const OTHER_METHOD: &str = "other";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 16,
    ))
}

/// The registry and what is read at scrape time.
#[derive(Debug)]
struct Inner {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    serving: Gauge,
    ready: Gauge,
    limit: Gauge,
    pool: Family<StateLabels, Gauge>,
    db_errors: Family<KindLabels, Counter>,
    /// DB errors already reported, by kind (the totals are process-wide in `kit::db`).
    reported: Mutex<[u64; 3]>,
    methods: Interned,
}

/// Cheap to clone; the clones share the figures.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    inner: Arc<Inner>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let calls = Family::<CallLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let serving = Gauge::default();
        let ready = Gauge::default();
        let limit = Gauge::default();
        let pool = Family::<StateLabels, Gauge>::default();
        let db_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC calls answered, by method and code",
            calls.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "gRPC call latency, by method",
            latency.clone(),
        );
        registry.register(
            "rpc_serving",
            "1 while the health service says SERVING, 0 otherwise",
            serving.clone(),
        );
        registry.register(
            "rpc_ready",
            "1 while the readiness check (the database) passes; 0: calls answer UNAVAILABLE",
            ready.clone(),
        );
        registry.register(
            "rpc_concurrency_limit",
            "The adaptive limit on calls served at once (0: off); beyond it, RESOURCE_EXHAUSTED",
            limit.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections in use and idle",
            pool.clone(),
        );
        registry.register(
            "db_errors",
            "Database errors by kind (unavailable, constraint, other)",
            db_errors.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                calls,
                latency,
                serving,
                ready,
                limit,
                pool,
                db_errors,
                reported: Mutex::new([0; 3]),
                methods: Interned::default(),
            }),
        }
    }

    /// One answered call of `method` (the gRPC path), with its code and latency. A call the
    /// server has no method for (UNIMPLEMENTED, or no answer at all) counts as `other`.
    pub fn record(&self, method: &str, code: Option<tonic::Code>, seconds: f64) {
        let (method, code) = match code {
            Some(tonic::Code::Unimplemented) | None => {
                (OTHER_METHOD, code.map_or("UNKNOWN", code_name))
            }
            Some(code) => (self.inner.methods.get(method), code_name(code)),
        };
        self.inner
            .calls
            .get_or_create(&CallLabels { method, code })
            .inc();
        self.inner
            .latency
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    /// The text exposition, with the serving status, pool and DB errors read now.
    pub fn render(&self, health: &Health, admission: &Admission, db: Option<&Db>) -> String {
        let serving = health.status("") == Some(ServingStatus::Serving);
        self.inner.serving.set(i64::from(serving));
        self.inner.ready.set(i64::from(admission.is_ready()));
        self.inner.limit.set(i64::from(admission.limiter().limit()));
        if let Some(db) = db {
            let (in_use, idle) = db.pool_stats();
            for (state, n) in [("in_use", in_use), ("idle", idle)] {
                self.inner
                    .pool
                    .get_or_create(&StateLabels { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let totals = crate::db::error_totals();
            let mut reported = self
                .inner
                .reported
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (i, kind) in ["unavailable", "constraint", "other"]
                .into_iter()
                .enumerate()
            {
                let counter = self.inner.db_errors.get_or_create(&KindLabels { kind });
                counter.inc_by(totals[i].saturating_sub(reported[i]));
                reported[i] = totals[i];
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A gRPC server's admin port: Prometheus `GET /metrics`, bound with the server (so its port
/// can go into the registration) and served beside it.
#[derive(Debug)]
pub(crate) struct AdminServer {
    listener: TcpListener,
    addr: SocketAddr,
    /// Its pool and errors show in the metrics too.
    db: Option<Db>,
}

impl AdminServer {
    pub(crate) async fn bind(ip: IpAddr, port: u16) -> Result<Self, bootstrap::BindError> {
        let (listener, addr) = bootstrap::bind(ip, port).await?;
        Ok(Self {
            listener,
            addr,
            db: None,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn show_database(&mut self, db: &Db) {
        self.db = Some(db.clone());
    }

    /// Serves `GET /metrics` and `GET /health` until `shutdown` resolves.
    pub(crate) fn spawn(
        self,
        metrics: RpcMetrics,
        health: Health,
        admission: Admission,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<std::io::Result<()>> {
        tracing::info!(addr = %self.addr, "metrics on http://{}/metrics", self.addr);
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/health", get(health_handler))
            .with_state((metrics, health, admission, self.db));
        tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(shutdown)
                .into_future(),
        )
    }
}

async fn metrics_handler(
    State((metrics, health, admission, db)): State<(RpcMetrics, Health, Admission, Option<Db>)>,
) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(&health, &admission, db.as_ref()),
    )
        .into_response()
}

/// The gRPC health service's overall status over HTTP: Consul's check of a Connect server,
/// whose gRPC port admits no caller without a certificate.
async fn health_handler(
    State((_, health, _, _)): State<(RpcMetrics, Health, Admission, Option<Db>)>,
) -> Response {
    match health.status("") {
        Some(ServingStatus::Serving) => (StatusCode::OK, "SERVING").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING").into_response(),
    }
}

pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_to_methods_the_server_lacks_share_one_label() {
        let metrics = RpcMetrics::new();
        metrics.record("/user.v1.User/GetUserList", Some(tonic::Code::Ok), 0.001);
        for junk in ["/x.Y/Random1", "/user.v1.User/Random2"] {
            metrics.record(junk, Some(tonic::Code::Unimplemented), 0.001);
        }
        let admission = Admission::new(crate::overload::Limiter::new(&Default::default()));
        let text = metrics.render(&Health::new(), &admission, None);
        assert!(
            text.contains(r#"rpc_requests_total{method="/user.v1.User/GetUserList",code="OK"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rpc_requests_total{method="other",code="UNIMPLEMENTED"} 2"#),
            "{text}"
        );
        assert!(!text.contains("Random"), "{text}");
    }
}
