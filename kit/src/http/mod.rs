//! The REST edge every gateway stands on. [`edge`] wraps a service's routes with request ids
//! (tower-http's request-id layers: the caller's `x-request-id`, or a new UUID, echoed back),
//! a span per request carrying it and one access line, metrics, a body limit, the adaptive
//! concurrency limit (outermost: beyond it a request is answered 503 with `Retry-After`
//! before anything else is spent on it; `/health` and `/metrics` are never limited),
//! `/health`, `/metrics`, `/openapi.json`, and JSON 404/405 answers. [`HttpServer`] binds once,
//! registers in Consul with an HTTP check, and on shutdown deregisters before it drains.

pub mod auth;
mod connections;
pub mod error;
pub mod extract;
mod json;
pub mod metrics;
pub mod throttle;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use discovery::{CheckTarget, ConsulSettings, Planned, RegistrationSettings};
use serde::Serialize;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use utoipa::{OpenApi, ToSchema};

pub use auth::{AdminUser, AuthUser, Claims, HasTokens, Tokens};
pub use error::{ApiError, ErrorBody, UpstreamFailures};
pub use extract::{CallContext, JsonBody, QueryParams};
pub use json::Json;
pub use metrics::HttpMetrics;

use crate::{
    Identity, StartError,
    config::ServerSettings,
    lifecycle::{Ended, Serving},
    overload::Limiter,
};

pub const HEALTH: &str = "/health";
pub const METRICS: &str = "/metrics";
pub const OPENAPI: &str = "/openapi.json";

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    pub status: &'static str,
}

/// 200 while the process is up (Consul's HTTP check).
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthView)))]
pub async fn health() -> Json<HealthView> {
    Json(HealthView { status: "ok" })
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text")))]
pub async fn metrics(State(metrics): State<HttpMetrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The edge's own routes, merged into every service's document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(health, metrics),
    components(schemas(HealthView, ErrorBody)),
    modifiers(&BearerScheme)
)]
struct EdgeDoc;

/// The `bearer` security scheme that protected routes name.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// A service's OpenAPI document with the edge's routes and schemes merged in.
pub fn document(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    openapi.merge(EdgeDoc::openapi());
    openapi
}

/// A caller's request id is kept only when it is short, visible ASCII; anything else is
/// replaced by a fresh UUID (it ends up in logs and in upstream metadata).
fn drop_unfit_request_id<B>(mut request: http::Request<B>) -> http::Request<B> {
    let fit = request.headers().get(&X_REQUEST_ID).is_none_or(|v| {
        !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic)
    });
    if !fit {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    request
}

fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = request.uri().path(),
        request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // A W3C `traceparent` from the caller is continued (nothing when traces are off).
    bootstrap::telemetry::continue_trace(&span, |name| {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    });
    span
}

fn access_line<B>(response: &http::Response<B>, latency: Duration, _: &tracing::Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1e3,
        "request"
    );
}

async fn record(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.request(
        method.as_str(),
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The answer to a request shed at the concurrency limit: made once, cloned per refusal, so
/// shedding costs as little as possible when the host is already short of CPU.
fn overloaded() -> Response {
    type Answer = (
        axum::http::StatusCode,
        axum::http::HeaderMap,
        axum::body::Bytes,
    );
    static ANSWER: std::sync::LazyLock<Answer> =
        std::sync::LazyLock::new(|| ApiError::Overloaded("this gateway".into()).answer());
    ANSWER.clone().into_response()
}

/// Sheds a request beyond the concurrency limit before anything else is spent on it (no
/// request id, span or access line: a refusal is counted in `http_shed_total`, and logged at
/// most once a second). `/health`, `/metrics` and `/openapi.json` are never limited. A
/// layer of its own rather than `from_fn`, which boxes a clone of the whole inner stack for
/// every request.
#[derive(Debug, Clone)]
struct Shed(Limiter);

impl<S> tower::Layer<S> for Shed {
    type Service = Shedding<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shedding {
            inner,
            limiter: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Shedding<S> {
    inner: S,
    limiter: Limiter,
}

type Answer =
    std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

impl<S> tower::Service<Request> for Shedding<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let path = request.uri().path();
        if path == HEALTH || path == METRICS || path == OPENAPI {
            return Box::pin(self.inner.call(request));
        }
        let Some(permit) = self.limiter.try_acquire() else {
            if self.limiter.should_log_refusal() {
                tracing::warn!(
                    limit = self.limiter.limit(),
                    refused = self.limiter.refused(),
                    "over the concurrency limit; shedding with 503"
                );
            }
            return Box::pin(std::future::ready(Ok(overloaded())));
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            permit.finish();
            response
        })
    }
}

/// Wraps `routes` (already given their state) into the whole edge, with `server`'s body
/// and concurrency limits; see the module docs.
pub fn edge(
    routes: Router,
    openapi: utoipa::openapi::OpenApi,
    metrics: &HttpMetrics,
    server: &ServerSettings,
) -> Result<Router, serde_json::Error> {
    let limiter = Limiter::new(&server.limit);
    metrics.follow_limiter(&limiter);
    // Rendered once; each answer shares the bytes.
    let openapi = axum::body::Bytes::from(document(openapi).to_json()?);
    let ids = ServiceBuilder::new()
        .map_request(drop_unfit_request_id)
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(access_line)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID));
    Ok(routes
        .route(HEALTH, get(health))
        .route(METRICS, get(self::metrics).with_state(metrics.clone()))
        .route(
            OPENAPI,
            get(move || {
                let doc = openapi.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(server.body_limit))
        .layer(middleware::from_fn_with_state(metrics.clone(), record))
        .layer(ids)
        .layer(Shed(limiter)))
}

/// A bound HTTP server, planned into Consul with an HTTP check on `/health`.
#[derive(Debug)]
pub struct HttpServer {
    identity: Identity,
    listener: TcpListener,
    local_addr: SocketAddr,
    drain_timeout: Duration,
    ready_file: Option<PathBuf>,
    limits: connections::Limits,
    registration: Option<Planned>,
}

impl HttpServer {
    pub async fn bind(
        identity: Identity,
        server: &ServerSettings,
        consul: &ConsulSettings,
        registration: &RegistrationSettings,
    ) -> Result<Self, StartError> {
        let (listener, local_addr, registration) =
            crate::bind_planned(identity, server, consul, registration, |a| {
                CheckTarget::Http(format!("http://{a}{HEALTH}"))
            })
            .await?;
        Ok(Self {
            identity,
            listener,
            local_addr,
            drain_timeout: server.drain_timeout,
            ready_file: server.ready_file.clone(),
            limits: connections::Limits {
                header_read_timeout: server.header_read_timeout,
                max_connections: server.max_connections,
            },
            registration,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `<name>-<uuid>` ID this instance registers under, when registration is on.
    pub fn service_id(&self) -> Option<&str> {
        self.registration.as_ref().map(Planned::id)
    }

    /// Serves `app` (its connections counted in `metrics`), registers, and on `shutdown`
    /// deregisters, then drains (bounded). The registration is withdrawn on every exit path.
    pub async fn serve(
        self,
        app: Router,
        metrics: &HttpMetrics,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(connections::serve(
            self.listener,
            app,
            self.limits,
            metrics.clone(),
            async {
                let _ = stop_rx.await;
            },
        ));
        let name = self.identity.name;
        tracing::info!(addr = %self.local_addr, service = name, "{name} listening");
        let serving = Serving {
            server,
            stop_accepting: stop_tx,
            registration: self.registration,
            drain: self.drain_timeout,
        };
        let ended = serving
            .until_stopped(self.ready_file.as_deref(), self.local_addr, shutdown, || {})
            .await;
        let result = match ended {
            Ended::Failed(finished) | Ended::Drained(finished) => {
                finished.unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
            Ended::ReadyFile(e) => Err(e),
            Ended::DrainTimedOut => {
                tracing::warn!(timeout = ?self.drain_timeout, "drain timed out; closed the open connections");
                Ok(())
            }
        };
        tracing::info!("{name} stopped");
        result
    }
}

/// `GET /health` over plain HTTP/1.0 within 2 s; `Err` unless it answers 200. The `probe`
/// subcommand of an HTTP service: needs no HTTP client in the image.
pub async fn probe(addr: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .map_err(|_| std::io::Error::other("no answer within 2s"))??;
    if head.ends_with(b" 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "/health answered {}",
            String::from_utf8_lossy(&head)
        )))
    }
}
