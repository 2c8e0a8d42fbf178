//! Test helpers: a fresh database per test (a SQLite file in a temp dir, or a new database on
//! the PostgreSQL server named by `TEST_DATABASE_URL`) and user-srv started in-process on
//! port 0, with clients and a handle to stop it.

#![allow(dead_code)]

pub mod process;

use std::{net::SocketAddr, time::Duration};

use kit::{
    config::{ServerFlags, ServiceSettings},
    grpc::ServeError,
    health::Health,
    rpc_log::RpcStats,
};
use proto::user_v1::user_client::UserClient;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use user_srv::{Application, Settings};

#[allow(unused_imports)]
pub use test_support::{Backend, TestDb, eventually, skip};

/// Settings for a test instance: its own database, Consul registration off unless `extra`
/// turns it on (extra pairs are environment variables, applied last).
pub fn settings_for(db: &TestDb, extra: &[(&str, &str)]) -> Settings {
    let mut env = vec![
        ("DATABASE_URL".to_owned(), db.url.clone()),
        (
            "USER_SRV__DATABASE__MAX_CONNECTIONS".to_owned(),
            "4".to_owned(),
        ),
        (
            "USER_SRV__REGISTRATION__ENABLED".to_owned(),
            "false".to_owned(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load_from(&ServerFlags::default(), env).expect("test settings")
}

/// One running user-srv.
#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: TestDb,
    pub client: UserClient<Channel>,
    pub health: Health,
    pub stats: RpcStats,
    pub app_db: kit::db::Db,
    /// The admin port (`GET /metrics`).
    pub metrics_addr: SocketAddr,
    /// The Consul service ID, when registration is on.
    pub service_id: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, &[]).await
}

/// [`spawn_app`] with extra environment settings (e.g. Consul registration on).
pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> Option<TestApp> {
    bootstrap::init_test_logging();
    let db = TestDb::create(backend).await?;
    let app = Application::build(&settings_for(&db, extra))
        .await
        .expect("user-srv builds");
    let server = app.server();
    let addr = server.local_addr();
    let metrics_addr = server.metrics_addr();
    let service_id = server.service_id().map(str::to_owned);
    let (health, stats, app_db) = (server.health(), server.stats(), app.db().clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let client = UserClient::new(channel(addr));
    Some(TestApp {
        addr,
        db,
        client,
        health,
        stats,
        app_db,
        metrics_addr,
        service_id,
        stop: Some(stop),
        task: Some(task),
    })
}

/// A plain channel to user-srv, connected on its first call.
pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

impl TestApp {
    /// The admin port's Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .expect("metrics port answers")
            .text()
            .await
            .expect("text")
    }

    pub async fn health_client(&self) -> HealthClient<Channel> {
        HealthClient::new(channel(self.addr))
    }

    /// The same as SIGTERM/SIGINT in the binary: resolves the shutdown future.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn has_exited(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits (bounded) for `run_until_stopped` to return and hands back its result.
    pub async fn exited(&mut self, within: Duration) -> Result<(), ServeError> {
        let task = self.task.take().expect("server task");
        tokio::time::timeout(within, task)
            .await
            .expect("user-srv did not exit in time")
            .expect("server task panicked")
    }
}

/// The Consul agent the tests talk to: a real one when `CONSUL_HTTP_ADDR` is set (tests
/// that must restart or stop the agent then skip), else a fresh double.
/// A `user-srv` instance as Consul's health endpoint lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub port: u16,
    pub check_status: String,
    pub check_output: String,
}

/// `/v1/health/service/user-srv` (`?passing` when asked), reduced to what tests look at.
pub async fn listed(agent_url: &str, passing: bool) -> Vec<Listed> {
    let url = format!(
        "{agent_url}/v1/health/service/user-srv{}",
        if passing { "?passing" } else { "" }
    );
    let Ok(response) = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    else {
        return Vec::new();
    };
    let entries: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            let check = e["Checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["ServiceID"] != ""))
                .cloned()
                .unwrap_or_default();
            Listed {
                id: e["Service"]["ID"].as_str().unwrap_or("").to_owned(),
                port: e["Service"]["Port"].as_u64().unwrap_or(0) as u16,
                check_status: check["Status"].as_str().unwrap_or("").to_owned(),
                check_output: check["Output"].as_str().unwrap_or("").to_owned(),
            }
        })
        .collect()
}
