//! A stand-in for a Consul agent, for tests and for `make dev` on machines without a
//! `consul` binary. Never used by the product in production.
//!
//! It answers the agent, health, catalog, KV and status endpoints the project uses the way a
//! Consul 1.0.8 dev agent does (as recorded in the API transcripts): JSON shapes, plain-text
//! errors, `X-Consul-*` headers, blocking queries, gRPC/HTTP/TCP/TTL checks that really run,
//! DeregisterCriticalServiceAfter reaping, and a restart that forgets everything.
//!
//! # Layout
//! - [`state`]: the catalog, index bookkeeping and JSON views.
//! - [`decode`]: lenient registration decoding with Consul's error texts.
//! - `checks`: probe runners, TTL expiry and the reaper.
//! - `api`: the HTTP routes.
//! - `connect`: Connect's CA, leaf certificates, intentions and `authorize` (1.10.3).
//! - [`duration`]: Go duration parsing.

mod acl;
mod api;
mod checks;
mod connect;
pub mod decode;
pub mod duration;
pub mod state;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// A fresh EC P-256 private key in SEC1 PEM: what a CA configuration's `PrivateKey` takes
/// to rotate Connect's CA to a new root (on the double and on a real agent).
pub fn new_ca_key_pem() -> String {
    connect::new_key_pem()
}

/// Timing knobs. The defaults match a real agent; tests shorten the reaper.
#[derive(Debug, Clone)]
pub struct DoubleConfig {
    /// How often the reaper runs (Consul: 30 s).
    pub reap_interval: Duration,
    /// The floor under DeregisterCriticalServiceAfter (Consul: 1 min).
    pub deregister_minimum: Duration,
    pub node_name: String,
    /// ACLs on with a default-deny policy and this master token, as a 1.10 agent with
    /// `acl { enabled = true, default_policy = "deny", tokens { master = … } }`; `None`
    /// (the default): ACLs off.
    pub acl_master_token: Option<String>,
    /// After a CA rotation each leaf is renewed after a random delay up to this (a real
    /// agent: up to 30 s; shorter here so tests and `make chaos` need not wait for it).
    pub leaf_renew_jitter: Duration,
    /// JSON answers indented, as a dev agent (`consul agent -dev`) writes them; `false`:
    /// compact, as any other agent writes them (this double ignores `?pretty`).
    pub pretty: bool,
}

impl Default for DoubleConfig {
    fn default() -> Self {
        Self {
            reap_interval: Duration::from_secs(30),
            deregister_minimum: Duration::from_secs(60),
            node_name: "consul-double".into(),
            acl_master_token: None,
            leaf_renew_jitter: Duration::from_secs(2),
            pretty: true,
        }
    }
}

/// State shared by the routes, check runners and the ticker.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<state::State>,
    /// Kept apart from the catalog: a restart forgets the catalog, not the CA.
    connect: Mutex<connect::Ca>,
    /// The latest index after every change: blocking queries wake on it.
    changes: watch::Sender<u64>,
    /// False once the double stops: blocking queries return at once.
    alive: watch::Sender<bool>,
    config: DoubleConfig,
    /// For HTTP checks.
    http: reqwest::Client,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, state::State> {
        // A panic while holding the lock leaves consistent data for this use: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self, index: u64) {
        self.changes.send_replace(index);
    }

    fn connect(&self) -> MutexGuard<'_, connect::Ca> {
        self.connect.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes blocking queries to look again (Connect's indexes are not the catalog's).
    fn wake(&self) {
        self.changes.send_modify(|_| {});
    }
}

/// A running double.
#[derive(Debug)]
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    ticker: JoinHandle<()>,
}

impl ConsulDouble {
    /// Starts on a free loopback port.
    pub async fn start(config: DoubleConfig) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("a literal address"), config).await
    }

    /// Starts on `addr` (a fixed port lets a test stop and start the "agent" in place).
    pub async fn start_on(addr: SocketAddr, config: DoubleConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(listener, config))
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener, config: DoubleConfig) -> Self {
        // Only rcgen's own failure to make a P-256 key or sign with it ends up here.
        let ca = connect::Ca::new("dc1").expect("the double's CA");
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let shared = Arc::new(Shared {
            state: Mutex::new(state::State::new(&config.node_name)),
            connect: Mutex::new(ca),
            changes: watch::channel(0).0,
            alive: watch::channel(true).0,
            http: reqwest::Client::new(),
            config,
        });
        let app = axum::Router::new()
            .fallback(acl::dispatch)
            .with_state(Arc::clone(&shared));
        let mut alive = shared.alive.subscribe();
        let server = tokio::spawn(async move {
            let stopped = async move {
                let _ = alive.wait_for(|a| !*a).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "consul-double server failed");
            }
        });
        let ticker = tokio::spawn(checks::ticker(Arc::clone(&shared)));
        Self {
            addr,
            shared,
            server: Some(server),
            ticker,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `CONSUL_HTTP_ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Like a dev agent restart: every service, check and key is forgotten, the index
    /// starts small again and blocked queries wake.
    pub fn restart(&self) {
        let mut state = self.shared.lock();
        state.reset();
        let index = state.index;
        drop(state);
        self.shared.notify(index);
    }

    /// Stops answering: the port closes and blocked queries return.
    pub async fn stop(mut self) {
        self.shared.alive.send_replace(false);
        self.ticker.abort();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        self.shared.lock().reset();
    }

    /// Direct read access for tests: the service IDs registered under `name`.
    pub fn instances(&self, name: &str) -> Vec<String> {
        self.shared
            .lock()
            .services
            .values()
            .filter(|s| s.def.name == name)
            .map(|s| s.def.id.clone())
            .collect()
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        self.shared.alive.send_replace(false);
        self.ticker.abort();
        self.shared.lock().reset();
    }
}
