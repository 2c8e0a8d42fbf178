//! The gRPC runner: [`GrpcServer::bind`] binds once (port 0 kept, never re-bound) and plans
//! the Consul registration; services are added by type, which also makes the health service
//! answer for them; [`GrpcServer::run_until_stopped`] serves with reflection and the per-RPC
//! log layer and [`Admission`], registers, and on shutdown goes NOT_SERVING → deregister →
//! stop accepting → bounded drain. The registration is withdrawn on every exit path, a
//! server error included.
//!
//! A readiness check (the database) does not touch health, so Consul's check never takes
//! every instance out for an outage they share: while it fails, calls answer UNAVAILABLE
//! at once, and the moment it passes again they are served (see the README's
//! "When the database is away").

use std::{
    convert::Infallible, fmt, future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc,
    time::Duration,
};

use discovery::{CheckTarget, ConsulSettings, Planned, RegistrationSettings};
use futures_util::StreamExt;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    body::Body,
    server::NamedService,
    service::RoutesBuilder,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    Identity, StartError,
    admission::Admission,
    coalesce::Coalesced,
    config::ServerSettings,
    connect::{Connect, ConnectSettings},
    gate::Gate,
    health::Health,
    lifecycle::{Ended, Serving},
    rpc_log::{RpcLogLayer, RpcStats},
    rpc_metrics::AdminServer,
};

/// The registration meta key holding the admin port (Prometheus finds `/metrics` by it).
pub const METRICS_PORT_META: &str = "metrics_port";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the gRPC server task panicked or was cancelled: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("cannot write the ready file: {0}")]
    ReadyFile(#[source] std::io::Error),
}

type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A dependency the service cannot serve without (its database): polled while serving; while
/// it fails, [`Admission`] answers calls UNAVAILABLE.
#[derive(Clone)]
struct Readiness {
    interval: Duration,
    check: Check,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// A bound gRPC server and what it will serve.
#[derive(Debug)]
pub struct GrpcServer {
    identity: Identity,
    /// Bound once in `bind` and served as is: there is no window in which the port is free
    /// for someone else to take.
    listener: TcpListener,
    local_addr: SocketAddr,
    health: Health,
    stats: RpcStats,
    admission: Admission,
    routes: RoutesBuilder,
    descriptor_sets: Vec<&'static [u8]>,
    readiness: Option<Readiness>,
    drain_timeout: Duration,
    ready_file: Option<PathBuf>,
    registration: Option<Planned>,
    admin: AdminServer,
    /// Mutual TLS and intentions; `None` serves plain text.
    connect: Option<(Connect, ConnectSettings)>,
}

impl GrpcServer {
    /// Binds the listener, gets the Connect certificate (see [`Connect::start`]) and plans
    /// the registration as `identity.name`. Consul checks it with a gRPC health check on
    /// the advertised address, or under Connect (whose port a check cannot call without a
    /// certificate) with an HTTP check of the admin port's `/health`.
    pub async fn bind(
        identity: Identity,
        server: &ServerSettings,
        consul: &ConsulSettings,
        registration: &RegistrationSettings,
        connect: &ConnectSettings,
    ) -> Result<Self, StartError> {
        let admin = AdminServer::bind(server.ip, server.admin_port).await?;
        let name = registration.service_name(identity.name);
        let tls = Connect::start(connect, consul, name, registration.enabled).await?;
        let admin_port = admin.addr().port();
        // Scrapers find the metrics through Consul, beside the instance's address.
        let mut registration = registration.clone();
        registration.meta.insert(
            METRICS_PORT_META.to_owned(),
            admin.addr().port().to_string(),
        );
        let (listener, local_addr, registration) =
            crate::bind_planned(identity, server, consul, &registration, |a| {
                if tls.is_some() {
                    CheckTarget::Http(format!(
                        "http://{}/health",
                        SocketAddr::new(a.ip(), admin_port)
                    ))
                } else {
                    CheckTarget::Grpc(a.to_string())
                }
            })
            .await?;
        Ok(Self {
            identity,
            listener,
            local_addr,
            health: Health::new(),
            stats: RpcStats::default(),
            admission: Admission::new(crate::overload::Limiter::new(&server.limit)),
            routes: RoutesBuilder::default(),
            descriptor_sets: Vec::new(),
            readiness: None,
            drain_timeout: server.drain_timeout,
            ready_file: server.ready_file.clone(),
            registration,
            admin,
            connect: tls.map(|c| (c, connect.clone())),
        })
    }

    /// Serves `service`; the health service answers for it under its own name.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.health.add::<S>();
        self.routes.add_service(service);
        self
    }

    /// An encoded `FileDescriptorSet` for server reflection (grpcurl, grpcui).
    pub fn with_descriptor_set(mut self, set: &'static [u8]) -> Self {
        self.descriptor_sets.push(set);
        self
    }

    /// Polls `check` every `interval` while serving; see [`Readiness`].
    pub fn with_readiness<F, Fut>(mut self, interval: Duration, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.readiness = Some(Readiness {
            interval,
            check: Arc::new(move || Box::pin(check())),
        });
        self
    }

    /// Calls follow `db`: pinged every `interval` while serving (see [`Readiness`]).
    /// The pool and errors of `db` also show in the admin port's metrics.
    pub fn with_database(mut self, db: &crate::db::Db, interval: Duration) -> Self {
        self.admin.show_database(db);
        let db = db.clone();
        self.with_readiness(interval, move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|e| e.to_string()) }
        })
    }

    /// The address actually bound (the OS's choice when the port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin port's address (`GET /metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// The `<name>-<uuid>` ID this instance registers under, when registration is on.
    pub fn service_id(&self) -> Option<&str> {
        self.registration.as_ref().map(Planned::id)
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    pub fn stats(&self) -> RpcStats {
        self.stats.clone()
    }

    /// Readiness and the concurrency limit calls are admitted by.
    pub fn admission(&self) -> Admission {
        self.admission.clone()
    }

    /// Serves until `shutdown` resolves, then: NOT_SERVING (Watch streams end), leave
    /// Consul, stop accepting, let in-flight calls finish within the drain timeout, return.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for set in &self.descriptor_sets {
            reflection = reflection.register_encoded_file_descriptor_set(set);
        }
        let mut routes = self.routes;
        routes.add_service(self.health.server());
        routes.add_service(reflection.build_v1()?);
        let (stop_accepting, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let authorize = self
            .connect
            .as_ref()
            .map(|(c, settings)| c.authorizer(settings.authorize_ttl));
        let router = Server::builder()
            .layer(RpcLogLayer::new(self.stats.clone()))
            .layer(tower::util::option_layer(authorize))
            .layer(Gate(self.admission.clone()))
            .add_routes(routes.routes());
        // Ready before the first call can be answered: the dependencies answered in `build`,
        // and the listener is bound. (Set after the spawn, a check that came in at once could
        // be answered NOT_SERVING by a server that was about to say SERVING.)
        self.health.set_all(ServingStatus::Serving);
        let server = match &self.connect {
            Some((connect, settings)) => {
                let incoming = connect.incoming(self.listener, settings.handshake_timeout);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => {
                let incoming = TcpIncoming::from(self.listener)
                    .with_nodelay(Some(true))
                    .map(|conn| conn.map(Coalesced::new));
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
        };
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        let admin = self.admin.spawn(
            self.stats.metrics().clone(),
            self.health.clone(),
            self.admission.clone(),
            async {
                let _ = admin_stopped.await;
            },
        );

        let name = self.identity.name;
        tracing::info!(addr = %self.local_addr, service = name, "{name} listening");
        let monitor = self
            .readiness
            .map(|r| tokio::spawn(follow(r, self.admission.clone())));
        let serving = Serving {
            server,
            stop_accepting,
            registration: self.registration,
            drain: self.drain_timeout,
        };
        let health = self.health.clone();
        let ended = serving
            .until_stopped(
                self.ready_file.as_deref(),
                self.local_addr,
                shutdown,
                || {
                    if let Some(monitor) = monitor {
                        monitor.abort();
                    }
                    tracing::info!("NOT_SERVING");
                    health.set_all(ServingStatus::NotServing);
                    health.close_watches();
                },
            )
            .await;
        let result = match ended {
            Ended::Failed(finished) | Ended::Drained(finished) => Ok(finished??),
            Ended::ReadyFile(e) => Err(ServeError::ReadyFile(e)),
            Ended::DrainTimedOut => {
                tracing::warn!(
                    in_flight = self.stats.in_flight(),
                    timeout = ?self.drain_timeout,
                    "drain timed out; abandoned the calls still running"
                );
                Ok(())
            }
        };
        let _ = stop_admin.send(());
        if let Ok(Err(e)) = admin.await {
            tracing::warn!(error = %e, "the metrics port failed");
        }
        tracing::info!("{name} stopped");
        result
    }
}

/// Runs `readiness` for as long as the server serves, and makes admission follow it. A
/// statement that finds the database out of reach stops admission at once and runs the check
/// now: calls fail fast from the first sign of an outage, and a false alarm costs one check.
async fn follow(readiness: Readiness, admission: Admission) {
    let interval = readiness.interval;
    // A check never waits longer than this: its answer decides whether calls are served.
    let timeout = interval.min(Duration::from_secs(1));
    let mut serving = true;
    loop {
        // While failing, look again soon: the instance is back the moment its dependency is.
        let pause = if serving {
            interval
        } else {
            interval.min(Duration::from_millis(250))
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = crate::db::trouble(), if serving => {
                admission.set_ready(false);
            }
        }
        let ok = match tokio::time::timeout(timeout, (readiness.check)()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "readiness check failed");
                false
            }
            Err(_) => {
                tracing::error!(?timeout, "readiness check timed out");
                false
            }
        };
        if ok != serving {
            serving = ok;
            if ok {
                // Statements that failed during the outage are no news now.
                let _ = futures_util::FutureExt::now_or_never(crate::db::trouble());
                tracing::warn!("readiness check passes again; serving calls");
            } else {
                tracing::warn!("readiness check failed; calls are answered UNAVAILABLE");
            }
        }
        admission.set_ready(ok);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(SocketAddr, String),
    #[error("{0} answered {1:?}")]
    NotServing(SocketAddr, ServingStatus),
    #[error("the admin port {0}: {1}")]
    Admin(SocketAddr, std::io::Error),
}

/// The `probe` subcommand of a gRPC service (container health checks): `addr`'s health
/// service when given; else the admin port's `GET /health` when it is fixed, which answers
/// under Connect too (the service port admits no caller without a certificate); else the
/// health service on the configured port.
pub async fn probe_local(
    server: &ServerSettings,
    addr: Option<SocketAddr>,
) -> Result<(), ProbeError> {
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    match addr {
        None if server.admin_port != 0 => {
            let admin = local(server.admin_port);
            crate::http::probe(admin)
                .await
                .map_err(|e| ProbeError::Admin(admin, e))
        }
        addr => probe(addr.unwrap_or_else(|| local(server.port))).await,
    }
}

/// Asks the health service at `addr` about the whole server (`""`), within 2 s. The
/// `probe` subcommand of a gRPC service (container health checks).
pub async fn probe(addr: SocketAddr) -> Result<(), ProbeError> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let unreachable = |e: String| ProbeError::Unreachable(addr, e);
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok::<i32, ProbeError>(response.into_inner().status)
    };
    let status = tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .map_err(|_| unreachable("no answer within 2s".into()))??;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(ProbeError::NotServing(addr, other)),
        Err(_) => Err(ProbeError::NotServing(addr, ServingStatus::Unknown)),
    }
}
