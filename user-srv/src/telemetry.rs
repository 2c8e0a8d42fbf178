//! Logging set-up and the per-RPC log layer: one `info` line per call with method, gRPC code,
//! latency and the caller's `x-request-id`, plus a gauge of calls in flight.

use std::{
    future::Future,
    io::IsTerminal,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json`
/// switches to JSON lines. Colours only on a terminal, so piped logs stay greppable.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    // A second init (tests start several servers in one process) keeps the first subscriber.
    let _ = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Number of calls currently being handled.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Decrements the gauge when the call ends, however it ends (a dropped future included).
struct InFlightGuard(Arc<AtomicUsize>);

impl InFlightGuard {
    fn new(counter: &InFlight) -> Self {
        counter.0.fetch_add(1, Ordering::AcqRel);
        Self(counter.0.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Default)]
pub struct RpcLogLayer {
    in_flight: InFlight,
}

impl RpcLogLayer {
    pub fn new(in_flight: InFlight) -> Self {
        Self { in_flight }
    }
}

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcLog {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
    in_flight: InFlight,
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
        let guard = InFlightGuard::new(&self.in_flight);
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
                drop(guard);
                result
            }
            .instrument(span),
        )
    }
}
