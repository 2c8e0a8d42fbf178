//! user-srv's life in Consul, against the Consul double (or a real agent when
//! `CONSUL_HTTP_ADDR` is set): registration, the check Consul runs, deregistration before
//! exit, re-registration after an agent restart, Consul down at start, and reaping.

mod support;

use std::{process::Stdio, time::Duration};

use consul_double::{ConsulDouble, DoubleConfig};
use nix::{sys::signal::Signal, unistd::Pid};
use proto::user_v1::{CreateUserInfo, PageInfo};
use sqlx::Executor;
use support::{
    Backend, TestApp, eventually, listed,
    process::{bound_address, user_srv, wait_exit},
    spawn_app_with,
};
use test_support::Agent;
use tonic_health::pb::health_check_response::ServingStatus;

const WITHIN: Duration = Duration::from_secs(10);

/// Registration on, probed every 200 ms so the tests see the check's verdicts quickly. In
/// plain text: these tests call user-srv with a plain client; Connect has its own test
/// below and `user-web/tests/connect.rs`.
fn consul_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("USER_SRV__CONNECT__ENABLED", "false".into()),
        ("USER_SRV__REGISTRATION__ENABLED", "true".into()),
        ("CONSUL_HTTP_ADDR", url.to_owned()),
        ("USER_SRV__REGISTRATION__CHECK_INTERVAL", "200ms".into()),
        ("USER_SRV__REGISTRATION__CHECK_TIMEOUT", "1s".into()),
    ]
}

async fn registered_app(url: &str) -> TestApp {
    registered_app_with(url, false).await
}

/// With `connect`, Connect as it is by default (on, since the agent has it).
async fn registered_app_with(url: &str, connect: bool) -> TestApp {
    let env = consul_env(url);
    let env: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| !(connect && k.contains("CONNECT")))
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    spawn_app_with(Backend::Sqlite, &env)
        .await
        .expect("sqlite app")
}

fn id_of(app: &TestApp) -> String {
    app.service_id.clone().expect("registration is on")
}

async fn is_passing(url: &str, id: &str) -> bool {
    listed(url, true).await.iter().any(|l| l.id == id)
}

/// The binary as a process, registered with the agent at `url`; returns its temp dir (keep
/// it alive), the child, its bound address and its log lines.
async fn spawn_registered(
    url: &str,
    extra: &[(&str, &str)],
) -> (
    tempfile::TempDir,
    std::process::Child,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = user_srv(dir.path())
        .envs(consul_env(url))
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start user-srv");
    let (addr, logs) = bound_address(&mut child, dir.path()).await;
    eventually("registered", WITHIN, || async {
        listed(url, true)
            .await
            .iter()
            .any(|l| l.port == addr.port())
    })
    .await;
    (dir, child, addr, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_register_with_distinct_ids_and_a_passing_grpc_check() {
    let agent = Agent::start(DoubleConfig::default()).await;
    let url = agent.url();
    let (a, b) = (registered_app(&url).await, registered_app(&url).await);
    let (id_a, id_b) = (id_of(&a), id_of(&b));
    assert_ne!(id_a, id_b);
    for id in [&id_a, &id_b] {
        let uuid = id.strip_prefix("user-srv-").expect("user-srv-<uuid>");
        assert!(uuid.parse::<uuid::Uuid>().is_ok(), "{id}");
    }
    eventually("both instances passing", Duration::from_secs(1), || async {
        is_passing(&url, &id_a).await && is_passing(&url, &id_b).await
    })
    .await;
    for app in [&a, &b] {
        let id = id_of(app);
        assert!(
            listed(&url, true)
                .await
                .iter()
                .any(|l| l.id == id && l.port == app.addr.port()),
            "registered with the bound port"
        );
        // The check is the agent's own probe of the gRPC health service. A passing -> passing
        // result only changes the Output, which the agent view shows at once (the catalog
        // syncs output-only changes lazily).
        let want = format!("gRPC check {}: success", app.addr);
        eventually(
            "the agent has probed the gRPC health service",
            WITHIN,
            || async { agent_check_output(&url, &id).await.as_deref() == Some(want.as_str()) },
        )
        .await;
        // Scrapers find the admin port's metrics through the registration.
        let services: serde_json::Value = reqwest::get(format!("{url}/v1/agent/services"))
            .await
            .expect("agent services")
            .json()
            .await
            .expect("json");
        assert_eq!(
            services[&id]["Meta"]["metrics_port"].as_str(),
            Some(app.metrics_addr.port().to_string().as_str()),
            "{services}"
        );
    }
}

async fn agent_check_output(url: &str, id: &str) -> Option<String> {
    let checks: serde_json::Value = reqwest::get(format!("{url}/v1/agent/checks"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    checks[format!("service:{id}")]["Output"]
        .as_str()
        .map(str::to_owned)
}

/// An in-flight call (held by a table lock) keeps the process alive while the instance is
/// already gone from Consul: deregistration comes before the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deregisters_before_draining() {
    let agent = Agent::start(DoubleConfig::default()).await;
    let url = agent.url();
    let mut app = registered_app(&url).await;
    let id = id_of(&app);
    eventually("registered", WITHIN, || async {
        is_passing(&url, &id).await
    })
    .await;

    let mut locker = app.db.connect().await;
    locker.execute("BEGIN IMMEDIATE").await.expect("lock");
    let mut client = app.client.clone();
    let call = tokio::spawn(async move {
        client
            .create_user(CreateUserInfo {
                mobile: "13800138000".into(),
                password: "s3cret-pass".into(),
                nick_name: String::new(),
            })
            .await
    });
    let stats = app.stats.clone();
    eventually("a call in flight", WITHIN, || {
        let n = stats.in_flight();
        async move { n == 1 }
    })
    .await;

    app.begin_shutdown();
    eventually("gone from Consul", WITHIN, || async {
        !listed(&url, false).await.iter().any(|l| l.id == id)
    })
    .await;
    assert!(!app.has_exited(), "deregistered while still draining");
    locker.execute("COMMIT").await.expect("unlock");
    call.await
        .expect("task")
        .expect("the in-flight call succeeds");
    app.exited(WITHIN).await.expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_exits_zero() {
    let agent = Agent::start(DoubleConfig::default()).await;
    let url = agent.url();
    let (_dir, mut child, addr, logs) = spawn_registered(&url, &[]).await;
    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    let status = wait_exit(&mut child).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        !listed(&url, false)
            .await
            .iter()
            .any(|l| l.port == addr.port()),
        "still registered after exit"
    );
    let logs: Vec<String> = std::iter::from_fn(|| logs.recv_timeout(WITHIN).ok()).collect();
    let position = |needle: &str| logs.iter().position(|l| l.contains(needle));
    let (deregistered, stopped) = (
        position("deregistered from Consul"),
        position("user-srv stopped"),
    );
    assert!(
        deregistered.is_some() && deregistered < stopped,
        "deregistration is logged before the stop: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_come_back_after_an_agent_restart() {
    let agent = Agent::start(DoubleConfig::default()).await;
    let Some(double) = agent.double() else { return };
    let url = agent.url();
    let (a, b) = (registered_app(&url).await, registered_app(&url).await);
    let ids = [id_of(&a), id_of(&b)];
    eventually("both registered", WITHIN, || async {
        is_passing(&url, &ids[0]).await && is_passing(&url, &ids[1]).await
    })
    .await;
    double.restart();
    assert!(
        listed(&url, false).await.is_empty(),
        "the restarted agent forgot everything"
    );
    // The default resync interval (3 s) brings them back well within 10 s.
    eventually("both back and passing", WITHIN, || async {
        is_passing(&url, &ids[0]).await && is_passing(&url, &ids[1]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_while_consul_is_down_and_registers_when_it_comes_up() {
    if matches!(Agent::start(DoubleConfig::default()).await, Agent::Real(_)) {
        eprintln!("skipped: this test starts the agent late; it needs the double");
        return;
    }
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let consul_addr = reserved.local_addr().expect("addr");
    drop(reserved);
    let url = format!("http://{consul_addr}");
    let app = registered_app(&url).await;
    let id = id_of(&app);
    let list = app
        .client
        .clone()
        .get_user_list(PageInfo { pn: 1, p_size: 10 })
        .await
        .expect("serves without Consul");
    assert_eq!(list.into_inner().total, 0);

    let double = ConsulDouble::start_on(consul_addr, DoubleConfig::default())
        .await
        .expect("the agent comes up");
    eventually(
        "registered once Consul answers",
        Duration::from_secs(20),
        || async { is_passing(&double.url(), &id).await },
    )
    .await;
}

/// Under Connect (on by default wherever the agent has it) the gRPC port admits no caller
/// without a certificate, Consul's own check included: Consul checks the admin port's
/// `/health` over HTTP instead, and it follows NOT_SERVING as the gRPC check does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_connect_consul_checks_health_on_the_admin_port() {
    let agent = Agent::start(DoubleConfig::default()).await;
    let url = agent.url();
    let app = registered_app_with(&url, true).await;
    let id = id_of(&app);
    eventually("passing", WITHIN, || async { is_passing(&url, &id).await }).await;
    let health = format!("{}/health", app.metrics_addr.port());
    eventually("the agent has probed the admin port", WITHIN, || async {
        agent_check_output(&url, &id)
            .await
            .is_some_and(|output| output.contains(&health))
    })
    .await;
    app.health.set_all(ServingStatus::NotServing);
    eventually("critical", WITHIN, || async {
        !is_passing(&url, &id).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_turns_the_check_critical() {
    let agent = Agent::start(DoubleConfig::default()).await;
    let url = agent.url();
    let app = registered_app(&url).await;
    let id = id_of(&app);
    eventually("passing", WITHIN, || async { is_passing(&url, &id).await }).await;
    // What the database monitor does when pings fail.
    app.health.set_all(ServingStatus::NotServing);
    // The status, not the output text: each Consul version words the output its own way
    // (1.0.8 "gRPC application didn't report service healthy", 1.10 "gRPC <addr> serving
    // status: NOT_SERVING"), and these tests also run against a real agent.
    eventually("critical", WITHIN, || async {
        listed(&url, false)
            .await
            .iter()
            .any(|l| l.id == id && l.check_status == "critical" && !l.check_output.is_empty())
    })
    .await;
    assert!(!is_passing(&url, &id).await, "out of the passing set");
    app.health.set_all(ServingStatus::Serving);
    eventually("passing again", WITHIN, || async {
        is_passing(&url, &id).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_turns_critical_and_is_reaped() {
    let agent = Agent::start(DoubleConfig {
        reap_interval: Duration::from_millis(200),
        deregister_minimum: Duration::from_millis(500),
        ..DoubleConfig::default()
    })
    .await;
    let Some(double) = agent.double() else { return };
    let url = double.url();
    let (_dir, mut child, addr, _logs) = spawn_registered(
        &url,
        &[("USER_SRV__REGISTRATION__DEREGISTER_CRITICAL_AFTER", "1s")],
    )
    .await;
    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill");
    let _ = wait_exit(&mut child).await;
    // Interval (200 ms) + Timeout (1 s), with room for scheduling.
    eventually(
        "critical after the kill",
        Duration::from_secs(3),
        || async {
            listed(&url, false)
                .await
                .iter()
                .any(|l| l.port == addr.port() && l.check_status == "critical")
        },
    )
    .await;
    eventually("reaped", WITHIN, || async {
        !listed(&url, false)
            .await
            .iter()
            .any(|l| l.port == addr.port())
    })
    .await;
}
