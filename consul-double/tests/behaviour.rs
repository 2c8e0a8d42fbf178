//! The double's timed behaviour: blocking queries, checks that really run, TTL expiry, the
//! critical-service reaper and the dev-agent restart. Every wait is bounded.

use std::time::{Duration, Instant};

use consul_double::{ConsulDouble, DoubleConfig};
use serde_json::{Value, json};
use test_support::eventually;
use tonic_health::ServingStatus;

async fn double() -> (ConsulDouble, reqwest::Client) {
    let d = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    (d, reqwest::Client::new())
}

async fn put(http: &reqwest::Client, d: &ConsulDouble, path: &str, body: Value) -> u16 {
    http.put(format!("{}{path}", d.url()))
        .body(body.to_string())
        .send()
        .await
        .expect("put")
        .status()
        .as_u16()
}

/// GET returning (index, body, elapsed).
async fn get(http: &reqwest::Client, d: &ConsulDouble, path: &str) -> (u64, Value, Duration) {
    let started = Instant::now();
    let r = http
        .get(format!("{}{path}", d.url()))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("get");
    let index = r
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (
        index,
        r.json().await.unwrap_or(Value::Null),
        started.elapsed(),
    )
}

fn ttl_service(id: &str, name: &str) -> Value {
    json!({"ID": id, "Name": name, "Port": 1, "Check": {"TTL": "10m", "Status": "passing"}})
}

async fn agent_check(http: &reqwest::Client, d: &ConsulDouble, id: &str) -> (String, String) {
    let (_, checks, _) = get(http, d, "/v1/agent/checks").await;
    let c = &checks[id];
    (
        c["Status"].as_str().unwrap_or("").to_owned(),
        c["Output"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_waits_out_its_wait_when_nothing_changes() {
    let (d, http) = double().await;
    assert_eq!(
        put(
            &http,
            &d,
            "/v1/agent/service/register",
            ttl_service("a", "user-srv")
        )
        .await,
        200
    );
    let (index, _, _) = get(&http, &d, "/v1/health/service/user-srv?passing").await;
    let (after, body, elapsed) = get(
        &http,
        &d,
        &format!("/v1/health/service/user-srv?passing&index={index}&wait=1s"),
    )
    .await;
    assert_eq!(after, index, "same index after a timeout");
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    assert!(
        elapsed >= Duration::from_secs(1),
        "returned early: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_wakes_on_its_service_only() {
    let (d, http) = double().await;
    put(
        &http,
        &d,
        "/v1/agent/service/register",
        ttl_service("a", "user-srv"),
    )
    .await;
    let (index, _, _) = get(&http, &d, "/v1/health/service/user-srv?passing").await;
    let url = format!("/v1/health/service/user-srv?passing&index={index}&wait=30s");
    let (h2, d2) = (http.clone(), d.url());
    let blocked = tokio::spawn(async move {
        let started = Instant::now();
        let r = h2.get(format!("{d2}{url}")).send().await.expect("get");
        let index: u64 = r.headers()["X-Consul-Index"]
            .to_str()
            .expect("hdr")
            .parse()
            .expect("n");
        (
            index,
            r.json::<Value>().await.expect("json"),
            started.elapsed(),
        )
    });
    // Unrelated changes do not wake it.
    put(
        &http,
        &d,
        "/v1/agent/service/register",
        ttl_service("o", "order-srv"),
    )
    .await;
    http.put(format!("{}/v1/kv/some/key", d.url()))
        .body("x")
        .send()
        .await
        .expect("kv");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "woken by an unrelated change");
    put(
        &http,
        &d,
        "/v1/agent/service/register",
        ttl_service("b", "user-srv"),
    )
    .await;
    let (new_index, body, elapsed) = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("woken in time")
        .expect("task");
    assert!(new_index > index);
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    assert!(elapsed < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_zero_returns_at_once_and_a_future_index_returns_the_lower_one() {
    let (d, http) = double().await;
    put(
        &http,
        &d,
        "/v1/agent/service/register",
        ttl_service("a", "user-srv"),
    )
    .await;
    let (index, _, elapsed) = get(&http, &d, "/v1/health/service/user-srv?index=0&wait=5s").await;
    assert!(elapsed < Duration::from_secs(2), "index=0 must not block");
    let far = index + 1000;
    let (back, _, elapsed) = get(
        &http,
        &d,
        &format!("/v1/health/service/user-srv?index={far}&wait=500ms"),
    )
    .await;
    assert_eq!(back, index, "the lower, current index comes back");
    assert!(elapsed >= Duration::from_millis(500));
}

/// A real gRPC health server whose status the test flips.
async fn grpc_health_server() -> (
    std::net::SocketAddr,
    tonic_health::server::HealthReporter,
    tokio::task::JoinHandle<()>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, reporter, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_really_probe_their_target() {
    let (d, http) = double().await;
    let (addr, reporter, server) = grpc_health_server().await;
    let body = json!({"ID": "g1", "Name": "user-srv", "Port": addr.port(),
        "Check": {"GRPC": addr.to_string(), "Interval": "100ms", "Timeout": "1s"}});
    assert_eq!(
        put(&http, &d, "/v1/agent/service/register", body).await,
        200
    );
    let within = Duration::from_secs(5);
    let expect = |status: &'static str, output: String| {
        let (http, d) = (&http, &d);
        async move {
            let want = (status.to_owned(), output);
            eventually(&format!("{want:?}"), within, || async {
                agent_check(http, d, "service:g1").await == want
            })
            .await;
        }
    };
    expect("passing", format!("gRPC check {addr}: success")).await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    expect(
        "critical",
        format!("gRPC {addr} serving status: NOT_SERVING"),
    )
    .await;
    let (_, passing, _) = get(&http, &d, "/v1/health/service/user-srv?passing").await;
    assert_eq!(passing, json!([]), "a critical instance is filtered out");
    server.abort();
    let _ = server.await;
    expect(
        "critical",
        "rpc error: code = Unavailable desc = all SubConns are in TransientFailure".into(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_map_429_to_warning_and_5xx_to_critical() {
    let (d, http) = double().await;
    let app = axum::Router::new()
        .route("/ok", axum::routing::get(|| async { "fine" }))
        .route(
            "/slow",
            axum::routing::get(|| async {
                (axum::http::StatusCode::TOO_MANY_REQUESTS, "slow down")
            }),
        )
        .route(
            "/down",
            axum::routing::get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    for (id, path, status, output) in [
        ("h1", "ok", "passing", "200 OK Output: fine"),
        (
            "h2",
            "slow",
            "warning",
            "429 Too Many Requests Output: slow down",
        ),
        (
            "h3",
            "down",
            "critical",
            "503 Service Unavailable Output: no",
        ),
    ] {
        let url = format!("http://{addr}/{path}");
        let body = json!({"ID": id, "Name": "web", "Check": {"HTTP": url, "Interval": "100ms"}});
        put(&http, &d, "/v1/agent/service/register", body).await;
        let want = (status.to_owned(), format!("HTTP GET {url}: {output}"));
        eventually(&format!("{want:?}"), Duration::from_secs(5), || async {
            agent_check(&http, &d, &format!("service:{id}")).await == want
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_check_expires_to_critical_with_its_last_output() {
    let (d, http) = double().await;
    let body = json!({"ID": "t1", "Name": "ttl", "Check": {"TTL": "300ms"}});
    put(&http, &d, "/v1/agent/service/register", body).await;
    let r = http
        .put(format!(
            "{}/v1/agent/check/pass/service:t1?note=alive",
            d.url()
        ))
        .send()
        .await
        .expect("pass");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(agent_check(&http, &d, "service:t1").await.0, "passing");
    let want = (
        "critical".to_owned(),
        "TTL expired (last output before timeout follows): alive".to_owned(),
    );
    eventually("TTL expiry", Duration::from_secs(5), || async {
        agent_check(&http, &d, "service:t1").await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_removes_services_critical_past_their_limit() {
    let d = ConsulDouble::start(DoubleConfig {
        reap_interval: Duration::from_millis(100),
        deregister_minimum: Duration::from_millis(300),
        ..DoubleConfig::default()
    })
    .await
    .expect("double");
    let http = reqwest::Client::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let reaped = json!({"ID": "dead-1", "Name": "user-srv", "Port": port,
        "Check": {"GRPC": format!("127.0.0.1:{port}"), "Interval": "100ms",
                  "DeregisterCriticalServiceAfter": "100ms"}});
    let kept = json!({"ID": "dead-2", "Name": "user-srv", "Port": port,
        "Check": {"GRPC": format!("127.0.0.1:{port}"), "Interval": "100ms"}});
    put(&http, &d, "/v1/agent/service/register", reaped).await;
    put(&http, &d, "/v1/agent/service/register", kept).await;
    eventually("dead-1 reaped", Duration::from_secs(5), || async {
        d.instances("user-srv") == vec!["dead-2".to_owned()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_forgets_everything_and_the_index_goes_back() {
    let (d, http) = double().await;
    for i in 0..5 {
        put(
            &http,
            &d,
            "/v1/agent/service/register",
            ttl_service(&format!("s{i}"), "user-srv"),
        )
        .await;
    }
    let (before, _, _) = get(&http, &d, "/v1/health/service/user-srv").await;
    d.restart();
    let (after, body, _) = get(&http, &d, "/v1/health/service/user-srv").await;
    assert!(after < before, "index went backwards: {before} -> {after}");
    assert_eq!(body, json!([]));
    let (_, services, _) = get(&http, &d, "/v1/agent/services").await;
    assert_eq!(services, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registration_keeps_the_check_status_and_output_but_updates_the_service() {
    let (d, http) = double().await;
    let first = json!({"ID": "r1", "Name": "ttl-srv", "Check": {"TTL": "30s"}});
    put(&http, &d, "/v1/agent/service/register", first).await;
    http.put(format!(
        "{}/v1/agent/check/pass/service:r1?note=hello",
        d.url()
    ))
    .send()
    .await
    .expect("pass");
    let again = json!({"ID": "r1", "Name": "ttl-srv", "Tags": ["changed"],
        "Check": {"TTL": "30s", "Status": "warning"}});
    assert_eq!(
        put(&http, &d, "/v1/agent/service/register", again).await,
        200
    );
    assert_eq!(
        agent_check(&http, &d, "service:r1").await,
        ("passing".to_owned(), "hello".to_owned()),
        "the recorded agent kept Status and Output, ignoring the new Status"
    );
    let (_, services, _) = get(&http, &d, "/v1/agent/services").await;
    assert_eq!(services["r1"]["Tags"], json!(["changed"]));
}
