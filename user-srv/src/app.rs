//! The running service: [`Application::build`] opens the database and binds the listener,
//! [`Application::run_until_stopped`] serves on that same listener until the shutdown
//! future resolves, then withdraws, drains and returns.

use std::{future::Future, net::SocketAddr, time::Duration};

use discovery::{CheckTarget, PlanError, Planned};
use proto::user_v1::user_server::UserServer;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    config::Settings,
    db::{Db, DbError},
    domain::Users,
    grpc::UserService,
    health::Health,
    telemetry::{RpcLogLayer, RpcStats},
};

/// Names the health service answers for: the whole server and the user service.
pub const HEALTH_SERVICES: [&str; 2] = ["", "user.v1.User"];

/// The name instances register under in Consul; user-web looks it up.
pub const SERVICE_NAME: &str = "user-srv";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the database does not answer: {0}")]
    Ping(#[source] sqlx::Error),
    #[error(transparent)]
    Bind(#[from] bootstrap::BindError),
    #[error(transparent)]
    Registration(#[from] PlanError),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the gRPC server task panicked or was cancelled: {0}")]
    Join(#[from] tokio::task::JoinError),
}

#[derive(Debug)]
pub struct Application {
    /// Bound once in `build` and served as is: there is no window in which the port is free
    /// for someone else to take.
    listener: TcpListener,
    local_addr: SocketAddr,
    db: Db,
    /// Shared with the health service; flipped to NOT_SERVING first thing at shutdown.
    health: Health,
    /// Calls being handled and served; the drain waits for in-flight calls.
    stats: RpcStats,
    drain_timeout: Duration,
    db_check_interval: Duration,
    /// Consul registration, when enabled: started once serving, withdrawn before draining.
    registration: Option<Planned>,
}

impl Application {
    /// Opens the pool, runs migrations, checks the database answers, then binds.
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let db = Db::connect(&settings.database).await?;
        db.ping().await.map_err(StartError::Ping)?;
        let (listener, local_addr) =
            bootstrap::bind(settings.server.ip, settings.server.port).await?;
        let registration = settings.registration.plan(
            &settings.consul,
            SERVICE_NAME,
            local_addr,
            |advertised| CheckTarget::Grpc(advertised.to_string()),
        )?;
        Ok(Self {
            listener,
            local_addr,
            db,
            health: Health::new(HEALTH_SERVICES),
            stats: RpcStats::default(),
            drain_timeout: settings.server.drain_timeout,
            db_check_interval: settings.server.db_check_interval,
            registration,
        })
    }

    /// The `user-srv-<uuid>` ID this instance registers under, when registration is on.
    pub fn service_id(&self) -> Option<&str> {
        self.registration.as_ref().map(Planned::id)
    }

    /// The address actually bound (the OS's choice when the port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    pub fn stats(&self) -> RpcStats {
        self.stats.clone()
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Serves until `shutdown` resolves, then: NOT_SERVING (Watch streams end), stop
    /// accepting, let in-flight calls finish within the drain timeout, return.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::user_v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let users = UserService::new(Users::new(self.db.store()));
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let (stop_accepting, stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            .layer(RpcLogLayer::new(self.stats.clone()))
            .add_service(self.health.server())
            .add_service(reflection)
            .add_service(UserServer::new(users));
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));

        // Ready: the listener accepts and the database answered in `build`.
        self.health.set_all(ServingStatus::Serving);
        tracing::info!(addr = %self.local_addr, db = ?self.db.dialect(), "user-srv listening");
        let db_monitor = tokio::spawn(watch_database(
            self.db.clone(),
            self.health.clone(),
            self.db_check_interval,
        ));
        let registration = self.registration.map(Planned::start);

        tokio::select! {
            () = shutdown => {}
            finished = &mut server => {
                db_monitor.abort();
                finished??;
                return Ok(());
            }
        }

        tracing::info!("shutting down: NOT_SERVING");
        db_monitor.abort();
        self.health.set_all(ServingStatus::NotServing);
        self.health.close_watches();
        // Leave Consul before draining, so no new traffic is routed to an instance that is
        // about to go. A Consul failure is logged and never holds the exit.
        if let Some(registration) = registration {
            registration.leave().await;
        }
        let _ = stop_accepting.send(());
        match tokio::time::timeout(self.drain_timeout, &mut server).await {
            Ok(finished) => finished??,
            Err(_) => {
                tracing::warn!(
                    in_flight = self.stats.in_flight(),
                    timeout = ?self.drain_timeout,
                    "drain timed out; abandoning the calls still running"
                );
                server.abort();
            }
        }
        tracing::info!("user-srv stopped");
        Ok(())
    }
}

/// Pings the database every `interval`: a failure turns every health status NOT_SERVING
/// (Consul's gRPC check then goes critical), the next success turns them back.
async fn watch_database(db: Db, health: Health, interval: Duration) {
    let mut serving = true;
    loop {
        tokio::time::sleep(interval).await;
        let ok = match tokio::time::timeout(interval, db.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "database ping failed");
                false
            }
            Err(_) => {
                tracing::error!(timeout = ?interval, "database ping timed out");
                false
            }
        };
        if ok != serving {
            serving = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::warn!(?status, "health follows the database");
            health.set_all(status);
        }
    }
}
