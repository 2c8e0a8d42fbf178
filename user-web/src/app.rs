//! The running gateway: [`Application::build`] binds the port and starts following user-srv
//! in Consul; [`Application::run_until_stopped`] registers, serves, and on shutdown
//! deregisters before draining.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State},
    http::HeaderValue,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use discovery::{Balancer, CheckTarget, ConsulClient, ConsulError, PlanError, Planned, Watcher};
use tokio::net::TcpListener;
use utoipa::OpenApi;

use crate::{
    auth::Tokens,
    config::Settings,
    metrics::Metrics,
    routes,
    upstream::{CallContext, Upstream},
};

/// The name this gateway registers under in Consul.
pub const SERVICE_NAME: &str = "user-web";

const LIST: &str = "/u/v1/user/list";
const REGISTER: &str = "/u/v1/user/register";
const PWD_LOGIN: &str = "/u/v1/user/pwd_login";
const USER: &str = "/u/v1/user/{id}";
const HEALTH: &str = "/health";
const METRICS: &str = "/metrics";
const OPENAPI: &str = "/openapi.json";
/// Every route template, for the metrics' route label.
const ROUTES: &[&str] = &[LIST, REGISTER, PWD_LOGIN, USER, HEALTH, METRICS, OPENAPI];

/// What handlers share; one `Arc`, so the per-request clone is one atomic increment.
pub type AppState = Arc<Shared>;

#[derive(Debug)]
pub struct Shared {
    pub upstream: Upstream,
    pub tokens: Tokens,
    pub metrics: Metrics,
    /// Rendered once at start.
    pub openapi: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] bootstrap::BindError),
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error(transparent)]
    Registration(#[from] PlanError),
    #[error("cannot render the OpenAPI document: {0}")]
    OpenApi(#[from] serde_json::Error),
}

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    body_limit: usize,
    drain_timeout: Duration,
    /// Keeps the Consul watch running as long as the application lives.
    _watcher: Watcher,
    registration: Option<Planned>,
}

/// Takes the caller's `x-request-id` (or makes one), hands it to handlers, echoes it back,
/// and writes the request's one log line and metrics.
async fn edge(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let uri = request.uri().clone();
    request.extensions_mut().insert(CallContext {
        request_id: request_id.clone(),
        client_ip,
    });
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.request(
        method.as_str(),
        route,
        ROUTES,
        status,
        elapsed.as_secs_f64(),
    );
    tracing::info!(
        %method, path = uri.path(), status, latency_ms = elapsed.as_secs_f64() * 1e3, %request_id,
        "request"
    );
    response
}

/// `GET /health` over plain HTTP/1.0 within 2 s; `Err` unless it answers 200. Needs no HTTP
/// client in the image.
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

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let (listener, local_addr) =
            bootstrap::bind(settings.server.ip, settings.server.port).await?;

        let client = ConsulClient::new(&settings.consul)?;
        let watcher = Watcher::start(client.clone(), settings.upstream.watch.clone());
        let balancer = Balancer::new(watcher.subscribe(), settings.upstream.balancer.clone());
        let metrics = Metrics::new();
        let state = Arc::new(Shared {
            upstream: Upstream::new(balancer, settings.upstream.deadline, metrics.clone()),
            tokens: Tokens::new(&settings.auth.jwt_secret, settings.auth.token_ttl),
            metrics,
            openapi: routes::ApiDoc::openapi().to_json()?,
        });
        let registration = settings.registration.plan(
            &settings.consul,
            SERVICE_NAME,
            local_addr,
            |advertised| CheckTarget::Http(format!("http://{advertised}/health")),
        )?;
        Ok(Self {
            listener,
            local_addr,
            state,
            body_limit: settings.server.body_limit,
            drain_timeout: settings.server.drain_timeout,
            _watcher: watcher,
            registration,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The `user-web-<uuid>` ID this instance registers under, when registration is on.
    pub fn service_id(&self) -> Option<&str> {
        self.registration.as_ref().map(Planned::id)
    }

    pub fn router(state: AppState, body_limit: usize) -> Router {
        Router::new()
            .route(LIST, get(routes::list))
            .route(REGISTER, post(routes::register))
            .route(PWD_LOGIN, post(routes::pwd_login))
            .route(USER, get(routes::get_user))
            .route(HEALTH, get(routes::health))
            .route(METRICS, get(routes::metrics))
            .route(OPENAPI, get(routes::openapi))
            .fallback(routes::not_found)
            .method_not_allowed_fallback(routes::method_not_allowed)
            .layer(DefaultBodyLimit::max(body_limit))
            .layer(middleware::from_fn_with_state(state.clone(), edge))
            .with_state(state)
    }

    /// Registers in Consul, serves until `shutdown`, then deregisters and drains (bounded).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Self::router(self.state.clone(), self.body_limit);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stop_rx.await;
        });
        let mut server = tokio::spawn(async move { server.await });
        tracing::info!(addr = %self.local_addr, "user-web listening");
        let registration = self.registration.map(Planned::start);

        tokio::select! {
            () = shutdown => {}
            finished = &mut server => {
                return finished.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            }
        }
        tracing::info!("shutting down");
        if let Some(registration) = registration {
            registration.leave().await;
        }
        let _ = stop_tx.send(());
        match tokio::time::timeout(self.drain_timeout, &mut server).await {
            Ok(finished) => finished.unwrap_or_else(|e| Err(std::io::Error::other(e)))?,
            Err(_) => {
                tracing::warn!(timeout = ?self.drain_timeout, "drain timed out; closing open connections");
                server.abort();
            }
        }
        tracing::info!("user-web stopped");
        Ok(())
    }
}
