//! The service kit: what every service binary here stands on, written once.
//!
//! # Layout
//! - [`config`]: typed, layered settings (defaults → file → Consul KV → environment → flags),
//!   with unknown keys refused in files and KV and warned about in the environment;
//!   [`config::center`] follows KV and applies live changes.
//! - [`grpc`]: the gRPC runner (bind once, health by service type, reflection, per-RPC
//!   spans, Consul registration, ordered shutdown), over [`health`] and [`rpc_log`], with
//!   [`rpc_metrics`] on an admin port.
//! - [`db`]: SQLite or PostgreSQL by URL, migrations, readiness pings, and the
//!   [`db::Connections`] a store is written against once for both dialects.
//! - [`http`]: the REST edge: request ids and a span per request, metrics, the JSON error
//!   type and its gRPC mapping, extractors, bearer tokens, `probe`, graceful shutdown.
//! - [`upstream`]: balanced calls to any tonic client, found through Consul: hedged reads,
//!   retries elsewhere within a retry budget, outlier detection.
//! - [`overload`]: the adaptive concurrency limit both kinds of server shed load with
//!   ([`admission`] for gRPC, the edge for HTTP); [`gate`] is the one layer that runs such
//!   per-call checks.
//! - [`page`]: the paging rule (defaults, largest page) that services and gateways share.
//! - [`connect`]: Consul Connect-native mutual TLS between the tiers (certificates followed
//!   in the agent, SPIFFE verifiers, callers authorized by intentions).
//! - [`coalesce`]: every gRPC connection, either side, plain or TLS: a call's frames go out
//!   in one write (one TLS record) instead of two.
//!
//! A service is its domain plus a few lines of wiring: see `user-srv/src/app.rs` and
//! `user-web/src/app.rs`, or generate one with `make new-service NAME=…`.

pub mod admission;
pub mod coalesce;
pub mod config;
pub mod connect;
pub mod db;
pub mod gate;
pub mod grpc;
pub mod health;
pub mod http;
mod interned;
mod lifecycle;
pub mod overload;
pub mod page;
pub mod rpc_log;
pub mod rpc_metrics;
pub mod upstream;

use std::net::SocketAddr;

pub use bootstrap::{self, announce_ready};
pub use discovery;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] bootstrap::BindError),
    #[error(transparent)]
    Registration(#[from] discovery::PlanError),
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
}

/// Why a service binary could not get as far as its command.
#[derive(Debug, thiserror::Error)]
pub enum MainError {
    #[error("cannot start logging: {0}")]
    Logging(std::io::Error),
    #[error(transparent)]
    Settings(#[from] config::ConfigError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// What every service binary's `main` does before its command: logs (flushed when this
/// returns), settings through the config center (defaults, file, Consul KV, environment,
/// `flags`), and the runtime they size; then `run` with the center and the settings.
pub fn main<T, E, F, Fut>(identity: Identity, flags: &config::ServerFlags, run: F) -> Result<(), E>
where
    T: config::ServiceSettings + Clone + PartialEq + Send + Sync + 'static,
    E: From<MainError>,
    F: FnOnce(config::center::ConfigCenter<T>, T) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    // Dropped last: every line logged before the exit is written.
    let _logs = bootstrap::init_logging(identity.name).map_err(MainError::Logging)?;
    let center =
        config::center::ConfigCenter::<T>::load(identity.name, flags).map_err(MainError::from)?;
    let settings = center.settings();
    let runtime =
        bootstrap::runtime(settings.server().worker_threads).map_err(MainError::Runtime)?;
    runtime.block_on(run(center, settings))
}

/// Binds the listener a server keeps for its whole life, and plans its registration as
/// `identity.name` with the check `check` makes from the advertised address.
pub(crate) async fn bind_planned(
    identity: Identity,
    server: &config::ServerSettings,
    consul: &discovery::ConsulSettings,
    registration: &discovery::RegistrationSettings,
    check: impl FnOnce(SocketAddr) -> discovery::CheckTarget,
) -> Result<
    (
        tokio::net::TcpListener,
        SocketAddr,
        Option<discovery::Planned>,
    ),
    StartError,
> {
    let (listener, local_addr) = bootstrap::bind(server.ip, server.port).await?;
    let planned = registration.plan(consul, identity.name, identity.version, local_addr, check)?;
    Ok((listener, local_addr, planned))
}

/// Who a service is: the name it registers under in Consul (instances are `<name>-<uuid>`)
/// and its own version, sent as the registration's `version` meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub name: &'static str,
    pub version: &'static str,
}

/// The identity of the calling crate: its package name and version.
#[macro_export]
macro_rules! identity {
    () => {
        $crate::Identity {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
        }
    };
}
