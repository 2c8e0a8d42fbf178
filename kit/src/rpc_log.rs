//! The per-RPC log layer: a span per call carrying the method, the caller's `x-request-id`
//! and, under Connect, the calling service (so every line logged inside the call has them), continuing the caller's
//! trace when traces are on, one `info` line per call
//! with its gRPC code and latency, and counters of calls in flight and calls served.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;

use crate::rpc_metrics::RpcMetrics;
use tower::{Layer, Service};
use tracing::Instrument;

/// Call counters of one server: calls being handled, and the service's own calls answered.
#[derive(Debug, Clone, Default)]
pub struct RpcStats {
    in_flight: Arc<AtomicUsize>,
    service_calls: Arc<AtomicU64>,
    metrics: RpcMetrics,
}

impl RpcStats {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Calls answered so far, health checks and reflection excluded.
    pub fn service_calls(&self) -> u64 {
        self.service_calls.load(Ordering::Acquire)
    }

    /// The Prometheus figures the admin port serves.
    pub fn metrics(&self) -> &RpcMetrics {
        &self.metrics
    }
}

/// Decrements the gauge when the call ends, however it ends (a dropped future included).
struct InFlightGuard(Arc<AtomicUsize>);

impl InFlightGuard {
    fn new(stats: &RpcStats) -> Self {
        stats.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(stats.in_flight.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Default)]
pub struct RpcLogLayer {
    stats: RpcStats,
}

impl RpcLogLayer {
    pub fn new(stats: RpcStats) -> Self {
        Self { stats }
    }
}

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcLog {
            inner,
            stats: self.stats.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
    stats: RpcStats,
}

/// The gRPC code of a response: tonic puts a failing unary call's status in the headers
/// (a trailers-only response); a response without it is a success whose `0` follows in
/// the trailers.
fn grpc_code<B>(response: &http::Response<B>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
        .unwrap_or(Code::Ok)
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Send,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let span = tracing::info_span!(
            "rpc",
            %method,
            %request_id,
            caller = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // Under Connect: the calling service, as its certificate names it.
        if let Some(caller) = request
            .extensions()
            .get::<crate::connect::Peer>()
            .and_then(|p| p.caller.as_ref())
        {
            span.record("caller", caller.service.as_str());
        }
        // The gateway's attempt span travels as `traceparent` metadata.
        bootstrap::telemetry::continue_trace(&span, |name| {
            request.headers().get(name).and_then(|v| v.to_str().ok())
        });
        let guard = InFlightGuard::new(&self.stats);
        let counted =
            !(method.starts_with("/grpc.health.") || method.starts_with("/grpc.reflection."));
        let service_calls = counted.then(|| self.stats.service_calls.clone());
        let metrics = self.stats.metrics.clone();
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(
            async move {
                let result = call.await;
                let seconds = started.elapsed().as_secs_f64();
                let latency_ms = seconds * 1e3;
                let code = match &result {
                    Ok(response) => {
                        let code = grpc_code(response);
                        tracing::info!(code = ?code, latency_ms, "rpc");
                        Some(code)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, latency_ms, "rpc transport error");
                        None
                    }
                };
                metrics.record(&method, code, seconds);
                if let Some(counter) = service_calls {
                    counter.fetch_add(1, Ordering::AcqRel);
                }
                drop(guard);
                result
            }
            .instrument(span),
        )
    }
}
