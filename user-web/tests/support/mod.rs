//! A whole stack in one test process: the Consul double (or a real agent via
//! `CONSUL_HTTP_ADDR`), user-srv instances sharing one seeded SQLite file, and user-web on
//! port 0, all found through Consul as in production. Each stack registers its services
//! under names of its own, so stacks sharing one agent never see each other's instances.

#![allow(dead_code)]

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use consul_double::DoubleConfig;
use kit::{
    config::{
        ServiceSettings,
        center::{ConfigCenter, Live},
    },
    rpc_log::RpcStats,
};
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};

pub use test_support::{Agent, eventually};

pub const ADMIN_MOBILE: &str = "18800000000";
pub const ADMIN_PASSWORD: &str = "admin-password";
pub const DEMO_USERS: u32 = 20;
pub const JWT_SECRET: &str = "a-test-secret-that-is-long-enough";

/// One in-process user-srv.
#[derive(Debug)]
pub struct Srv {
    pub addr: SocketAddr,
    pub id: String,
    pub stats: RpcStats,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), kit::grpc::ServeError>>>,
}

impl Srv {
    /// Like SIGTERM: NOT_SERVING, deregister, drain; waits (bounded) for the exit.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

#[derive(Debug)]
pub struct Stack {
    pub consul: Agent,
    pub consul_url: String,
    /// The name this stack's user-srv instances register under (`user-srv-<8 hex>`).
    pub service: String,
    pub db_url: String,
    pub srvs: Vec<Srv>,
    pub web_addr: SocketAddr,
    pub web: user_web::state::AppState,
    web_stop: Option<oneshot::Sender<()>>,
    /// user-web's settings as Consul KV changes them.
    pub live: Live<user_web::Settings>,
    _dir: tempfile::TempDir,
}

/// The environment of one of the stack's user-srv instances (in-process or a child).
pub fn srv_env(service: &str, consul_url: &str, db_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db_url),
        ("CONSUL_HTTP_ADDR", consul_url),
        ("USER_SRV__REGISTRATION__NAME", service),
        ("USER_SRV__REGISTRATION__CHECK_INTERVAL", "200ms"),
        ("USER_SRV__REGISTRATION__CHECK_TIMEOUT", "1s"),
        ("USER_SRV__SERVER__DRAIN_TIMEOUT", "5s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Stack {
    /// Consul, `srvs` user-srv instances on one seeded database, and user-web with the
    /// given extra settings; returns once user-web has every instance in rotation.
    pub async fn start(srvs: usize, web_env: &[(&str, &str)]) -> Self {
        bootstrap::init_test_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("users.db").display()
        );
        let consul = Agent::start(DoubleConfig::default()).await;
        let consul_url = consul.url();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let service = format!("user-srv-{suffix}");
        let settings = user_srv::Settings::load_from(
            &kit::config::ServerFlags::default(),
            srv_env(&service, &consul_url, &db_url),
        )
        .expect("srv settings");
        let db = kit::db::Db::connect(&settings.database, &user_srv::repo::MIGRATIONS)
            .await
            .expect("db");
        user_srv::seed::seed(
            &db,
            &user_srv::seed::SeedRequest {
                users: DEMO_USERS,
                admin_mobile: ADMIN_MOBILE.into(),
                admin_password: ADMIN_PASSWORD.into(),
            },
        )
        .await
        .expect("seed");

        let mut stack_srvs = Vec::new();
        for _ in 0..srvs {
            stack_srvs.push(start_srv(&service, &consul_url, &db_url).await);
        }
        let mut env: Vec<(String, String)> = vec![
            ("USER_WEB__AUTH__JWT_SECRET".into(), JWT_SECRET.into()),
            ("CONSUL_HTTP_ADDR".into(), consul_url.clone()),
            ("USER_WEB__SERVER__PORT".into(), "0".into()),
            ("USER_WEB__UPSTREAM__WAIT".into(), "5s".into()),
            ("USER_WEB__UPSTREAM__SERVICE".into(), service.clone()),
            (
                "USER_WEB__REGISTRATION__NAME".into(),
                format!("user-web-{suffix}"),
            ),
            (
                "USER_WEB__REGISTRATION__CHECK_INTERVAL".into(),
                "200ms".into(),
            ),
        ];
        env.extend(web_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let center = ConfigCenter::<user_web::Settings>::start(
            "user-web",
            &kit::config::ServerFlags::default(),
            env,
        )
        .await
        .expect("web settings");
        let settings = center.settings();
        let live = center.watch();
        let app = user_web::Application::build(&settings)
            .await
            .expect("user-web builds");
        app.follow_settings(&live);
        let web_addr = app.local_addr();
        let web = app.state();
        let (web_stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let stack = Self {
            consul,
            consul_url,
            service,
            db_url,
            srvs: stack_srvs,
            web_addr,
            web,
            web_stop: Some(web_stop),
            live,
            _dir: dir,
        };
        let want: Vec<String> = stack.srvs.iter().map(|s| s.id.clone()).collect();
        eventually(
            "user-web has every instance in rotation",
            Duration::from_secs(10),
            || {
                let ids = stack.rotation();
                let ok = want.iter().all(|id| ids.contains(id));
                async move { ok }
            },
        )
        .await;
        stack
    }

    /// IDs user-web currently balances over (ejected ones excluded).
    pub fn rotation(&self) -> Vec<String> {
        self.web
            .users
            .balancer()
            .members()
            .iter()
            .filter(|m| !m.is_ejected())
            .map(|m| m.endpoint.id.to_string())
            .collect()
    }

    /// Another instance with extra environment settings; returns its index.
    pub async fn add_srv_with(&mut self, extra: &[(&str, &str)]) -> usize {
        self.srvs
            .push(start_srv_with(&self.service, &self.consul_url, &self.db_url, extra).await);
        self.srvs.len() - 1
    }

    pub async fn add_srv(&mut self) -> usize {
        self.srvs
            .push(start_srv(&self.service, &self.consul_url, &self.db_url).await);
        self.srvs.len() - 1
    }

    /// user-web's `/metrics` text.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.web_addr)
    }

    pub async fn admin_token(&self) -> String {
        login(self, ADMIN_MOBILE, ADMIN_PASSWORD).await.1["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    pub fn stop_web(&mut self) {
        if let Some(stop) = self.web_stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn start_srv(service: &str, consul_url: &str, db_url: &str) -> Srv {
    start_srv_with(service, consul_url, db_url, &[]).await
}

/// [`start_srv`] with extra environment settings (e.g. its registration weight).
pub async fn start_srv_with(
    service: &str,
    consul_url: &str,
    db_url: &str,
    extra: &[(&str, &str)],
) -> Srv {
    let mut env = srv_env(service, consul_url, db_url);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = user_srv::Settings::load_from(&kit::config::ServerFlags::default(), env)
        .expect("srv settings");
    let app = user_srv::Application::build(&settings)
        .await
        .expect("user-srv builds");
    let server = app.server();
    let (addr, id, stats) = (
        server.local_addr(),
        server.service_id().expect("registration on").to_owned(),
        server.stats(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Srv {
        addr,
        id,
        stats,
        stop: Some(stop),
        task: Some(task),
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// POST /u/v1/user/pwd_login → (status, body).
pub async fn login(stack: &Stack, mobile: &str, password: &str) -> (u16, Value) {
    let r = http()
        .post(stack.url("/u/v1/user/pwd_login"))
        .json(&serde_json::json!({"mobile": mobile, "password": password}))
        .send()
        .await
        .expect("login");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// GET with an optional bearer token → (status, body).
pub async fn get(stack: &Stack, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http().get(stack.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.expect("get");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The user-srv binary next to this test's binary (`cargo test --workspace` builds it).
pub fn user_srv_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("user-srv");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p user-srv; make test does)",
        bin.display()
    );
    bin
}

/// Keeps `workers` clients sending `GET path` until `stop` resolves; returns (ok, failed)
/// with each failure's status and body.
pub async fn steady_load(
    stack: &Stack,
    path: &str,
    token: &str,
    workers: usize,
    stop: impl Future<Output = ()>,
) -> (usize, Vec<String>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, token, stop_rx) = (stack.url(path), token.to_owned(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let client = http();
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !*stop_rx.borrow() {
                match client.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failed.push(format!(
                        "{} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    stop.await;
    let _ = stop_tx.send(true);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in tasks {
        let (o, f) = t.await.expect("load task");
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}
