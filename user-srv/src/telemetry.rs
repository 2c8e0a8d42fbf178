//! The per-RPC log layer: one `info` line per call with method, gRPC code, latency and the
//! caller's `x-request-id`, plus counters of calls in flight and calls served.

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
use tower::{Layer, Service};
use tracing::Instrument;

/// Call counters of one server: calls being handled, and `user.v1.User` calls answered.
#[derive(Debug, Clone, Default)]
pub struct RpcStats {
    in_flight: Arc<AtomicUsize>,
    user_calls: Arc<AtomicU64>,
}

impl RpcStats {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// `user.v1.User` calls answered so far (health checks and reflection excluded).
    pub fn user_calls(&self) -> u64 {
        self.user_calls.load(Ordering::Acquire)
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
        let span = tracing::info_span!("rpc", %method, %request_id);
        let guard = InFlightGuard::new(&self.stats);
        let user_calls = method
            .starts_with("/user.v1.User/")
            .then(|| self.stats.user_calls.clone());
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(
            async move {
                let result = call.await;
                let latency_ms = started.elapsed().as_secs_f64() * 1e3;
                match &result {
                    Ok(response) => {
                        let code = grpc_code(response);
                        tracing::info!(code = ?code, latency_ms, "rpc");
                    }
                    Err(e) => tracing::warn!(error = %e, latency_ms, "rpc transport error"),
                }
                if let Some(counter) = user_calls {
                    counter.fetch_add(1, Ordering::AcqRel);
                }
                drop(guard);
                result
            }
            .instrument(span),
        )
    }
}
