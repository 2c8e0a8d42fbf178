//! Every documented error: bad input, auth failures and gRPC statuses become the JSON
//! `{"error":{"code","message","fields"?}}` with the right HTTP status, never a 5xx or a
//! panic. Also /health, /metrics and /openapi.json.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Stack, get, http, login};

/// Status and error code of an error answer (panics if the body is not the error JSON).
fn error_code(status: u16, body: &Value) -> (u16, String) {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body ({status}): {body}"));
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code.to_owned())
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_documented_json_errors() {
    let stack = Stack::start(1, &[]).await;
    let admin = stack.admin_token().await;
    let c = http();
    let post = |path: &str| c.post(stack.url(path));
    let list = |q: &str| {
        c.get(stack.url(&format!("/u/v1/user/list{q}")))
            .bearer_auth(&admin)
    };
    let table: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("non-numeric pn", list("?pn=abc"), 400, "invalid_argument"),
        ("negative psize", list("?psize=-1"), 400, "invalid_argument"),
        (
            "psize above the largest page",
            list(&format!("?psize={}", kit::page::MAX_SIZE + 1)),
            400,
            "invalid_argument",
        ),
        (
            "pn too large for u32",
            list("?pn=99999999999"),
            400,
            "invalid_argument",
        ),
        (
            "broken JSON",
            post("/u/v1/user/register")
                .header("content-type", "application/json")
                .body("{\"mobile\":"),
            400,
            "invalid_argument",
        ),
        (
            "missing field",
            post("/u/v1/user/register").json(&json!({"mobile": "13912345678"})),
            400,
            "invalid_argument",
        ),
        (
            "wrong field type",
            post("/u/v1/user/register").json(&json!({"mobile": 139, "password": "x"})),
            400,
            "invalid_argument",
        ),
        (
            "not JSON at all",
            post("/u/v1/user/register").body("mobile=1"),
            400,
            "invalid_argument",
        ),
        (
            "oversize body",
            post("/u/v1/user/register")
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"mobile\":\"{}\",\"password\":\"x\"}}",
                    "1".repeat(40_000)
                )),
            400,
            "invalid_argument",
        ),
        (
            "bad mobile",
            post("/u/v1/user/register")
                .json(&json!({"mobile": "12345", "password": "long-enough"})),
            400,
            "invalid_argument",
        ),
        (
            "short password",
            post("/u/v1/user/register").json(&json!({"mobile": "13912345678", "password": "123"})),
            400,
            "invalid_argument",
        ),
        (
            "duplicate mobile",
            post("/u/v1/user/register")
                .json(&json!({"mobile": support::ADMIN_MOBILE, "password": "long-enough"})),
            409,
            "already_exists",
        ),
        (
            "empty password at login",
            post("/u/v1/user/pwd_login")
                .json(&json!({"mobile": support::ADMIN_MOBILE, "password": ""})),
            400,
            "invalid_argument",
        ),
        (
            "wrong password",
            post("/u/v1/user/pwd_login")
                .json(&json!({"mobile": support::ADMIN_MOBILE, "password": "wrong-password"})),
            401,
            "invalid_credentials",
        ),
        (
            "unknown mobile",
            post("/u/v1/user/pwd_login")
                .json(&json!({"mobile": "13900000099", "password": "whatever1"})),
            401,
            "invalid_credentials",
        ),
        (
            "no token",
            c.get(stack.url("/u/v1/user/list")),
            401,
            "missing_token",
        ),
        (
            "garbage token",
            c.get(stack.url("/u/v1/user/list")).bearer_auth("not.a.jwt"),
            401,
            "invalid_token",
        ),
        (
            "x-token header works too",
            c.get(stack.url("/u/v1/user/999999"))
                .header("x-token", &admin),
            404,
            "not_found",
        ),
        (
            "non-numeric id",
            c.get(stack.url("/u/v1/user/abc")).bearer_auth(&admin),
            400,
            "invalid_argument",
        ),
        (
            "id out of range",
            c.get(stack.url("/u/v1/user/0")).bearer_auth(&admin),
            400,
            "invalid_argument",
        ),
        ("unknown route", c.get(stack.url("/nope")), 404, "not_found"),
        (
            "wrong method",
            c.delete(stack.url("/u/v1/user/list")),
            405,
            "method_not_allowed",
        ),
    ];
    for (what, request, want_status, want_code) in table {
        let (status, body) = send(request).await;
        assert_eq!(
            error_code(status, &body),
            (want_status, want_code.to_owned()),
            "{what}: {body}"
        );
    }

    // Field details from user-srv survive the mapping.
    let (_, body) = send(
        post("/u/v1/user/register").json(&json!({"mobile": "12345", "password": "long-enough"})),
    )
    .await;
    assert!(body["error"]["fields"]["mobile"].is_string(), "{body}");
    let (_, body) = send(
        post("/u/v1/user/register")
            .json(&json!({"mobile": support::ADMIN_MOBILE, "password": "long-enough"})),
    )
    .await;
    assert!(body["error"]["fields"]["mobile"].is_string(), "{body}");

    // A plain user may read themself, not others, and may not list.
    let r = send(
        post("/u/v1/user/register")
            .json(&json!({"mobile": "13912345678", "password": "long-enough"})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let token = r.1["token"].as_str().expect("token").to_owned();
    let (status, body) = get(&stack, "/u/v1/user/1", Some(&token)).await;
    assert_eq!(error_code(status, &body), (403, "permission_denied".into()));
    let (status, body) = get(&stack, "/u/v1/user/list", Some(&token)).await;
    assert_eq!(error_code(status, &body), (403, "permission_denied".into()));
    // Nothing the bad requests sent was stored.
    let (_, list) = get(&stack, "/u/v1/user/list?psize=100", Some(&admin)).await;
    assert_eq!(
        list["total"],
        u64::from(support::DEMO_USERS) + 2,
        "admin, demo users and one registration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_is_an_immediate_503() {
    let mut stack = Stack::start(1, &[]).await;
    let admin = stack.admin_token().await;
    let mut only = stack.srvs.remove(0);
    only.stop().await;
    support::eventually("rotation empty", Duration::from_secs(10), || {
        let empty = stack.rotation().is_empty();
        async move { empty }
    })
    .await;
    let started = Instant::now();
    let (status, body) = get(&stack, "/u/v1/user/list", Some(&admin)).await;
    assert_eq!(error_code(status, &body), (503, "unavailable".into()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once, not after a hang"
    );
}

/// Holds the SQLite write lock until `ROLLBACK`: a write in user-srv waits on it.
async fn write_lock(stack: &Stack) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    let mut locker = <sqlx::AnyConnection as sqlx::Connection>::connect(&stack.db_url)
        .await
        .expect("lock connection");
    sqlx::Executor::execute(&mut locker, "BEGIN IMMEDIATE")
        .await
        .expect("lock");
    locker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_user_srv_is_a_504_after_the_deadline() {
    let stack = Stack::start(1, &[("USER_WEB__UPSTREAM__DEADLINE", "300ms")]).await;
    // Hold the SQLite write lock: user-srv's insert waits, user-web's deadline fires.
    let mut locker = write_lock(&stack).await;
    let (status, body) = send(
        http()
            .post(stack.url("/u/v1/user/register"))
            .json(&json!({"mobile": "13912345670", "password": "long-enough"})),
    )
    .await;
    sqlx::Executor::execute(&mut locker, "ROLLBACK")
        .await
        .expect("unlock");
    assert_eq!(error_code(status, &body), (504, "deadline_exceeded".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_its_concurrency_limit_the_gateway_answers_503_with_retry_after_at_once() {
    let one = [
        ("USER_WEB__SERVER__LIMIT__INITIAL", "1"),
        ("USER_WEB__SERVER__LIMIT__MIN", "1"),
        ("USER_WEB__SERVER__LIMIT__MAX", "1"),
    ];
    let stack = Stack::start(1, &one).await;
    // Hold the SQLite write lock: a sign-up waits inside user-srv, holding the one place.
    let mut locker = write_lock(&stack).await;
    let held = tokio::spawn(
        http()
            .post(stack.url("/u/v1/user/register"))
            .json(&json!({"mobile": "13912345671", "password": "long-enough"}))
            .send(),
    );
    let srv = stack.srvs[0].stats.clone();
    support::eventually(
        "the sign-up is inside user-srv",
        Duration::from_secs(10),
        || {
            let n = srv.in_flight();
            async move { n == 1 }
        },
    )
    .await;
    let refused = http()
        .post(stack.url("/u/v1/user/pwd_login"))
        .json(&json!({"mobile": "13912345672", "password": "long-enough"}))
        .send()
        .await
        .expect("request");
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = refused.status().as_u16();
    let body: Value = refused.json().await.expect("json");
    assert_eq!(error_code(status, &body), (503, "overloaded".into()));
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        srv.service_calls(),
        0,
        "the refused request never reached user-srv"
    );
    let (health, _) = get(&stack, "/health", None).await;
    assert_eq!(health, 200, "/health is never limited");

    sqlx::Executor::execute(&mut locker, "ROLLBACK")
        .await
        .expect("unlock");
    let done = held.await.expect("task").expect("answer");
    assert_eq!(
        done.status().as_u16(),
        201,
        "the admitted request was served"
    );
    let metrics = stack.metrics().await;
    assert!(metrics.contains("http_shed_total 1"), "{metrics}");
    assert!(metrics.contains("http_concurrency_limit 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_openapi_and_the_request_id() {
    let stack = Stack::start(1, &[]).await;
    let (status, body) = get(&stack, "/health", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let r = http()
        .post(stack.url("/u/v1/user/pwd_login"))
        .header("x-request-id", "req-abc-123")
        .json(&json!({"mobile": support::ADMIN_MOBILE, "password": support::ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(
        r.headers()["x-request-id"],
        "req-abc-123",
        "the caller's id is kept"
    );
    let r = http()
        .get(stack.url("/health"))
        .send()
        .await
        .expect("health");
    assert!(
        r.headers().get("x-request-id").is_some(),
        "an id is made when none is sent"
    );

    let metrics = stack.metrics().await;
    let service = &stack.service;
    for needle in [
        "http_requests_total{method=\"POST\",route=\"/u/v1/user/pwd_login\",status=\"200\"}"
            .to_owned(),
        "http_request_duration_seconds_bucket".to_owned(),
        format!("upstream_calls_total{{service=\"{service}\",instance=\"{service}-"),
        format!("upstream_endpoints{{service=\"{service}\"}} 1"),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in:\n{metrics}");
    }

    // user-web registers itself, with an HTTP check the agent runs against /health: the
    // check passes and its output (worded by the agent's version) names the URL and the 200.
    let agent = stack.consul_url.clone();
    let want = format!("http://{}/health", stack.web_addr);
    support::eventually(
        "user-web registered and probed",
        Duration::from_secs(10),
        || {
            let (agent, want) = (agent.clone(), want.clone());
            async move {
                let checks: Value =
                    match http().get(format!("{agent}/v1/agent/checks")).send().await {
                        Ok(r) => r.json().await.unwrap_or(Value::Null),
                        Err(_) => Value::Null,
                    };
                checks.as_object().is_some_and(|m| {
                    m.iter().any(|(id, c)| {
                        id.starts_with("service:user-web-")
                            && c["Status"] == "passing"
                            && c["Output"]
                                .as_str()
                                .is_some_and(|o| o.contains(want.as_str()) && o.contains("200"))
                    })
                })
            }
        },
    )
    .await;

    let (status, doc) = get(&stack, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["info"]["title"], "user-web");
    assert!(doc["paths"]["/u/v1/user/list"]["get"].is_object(), "{doc}");
    assert!(doc["components"]["schemas"]["UserList"].is_object());
    let _ = login;
}

/// Slow clients cannot hold the gateway: a connection that sends half a request head is
/// closed after the header-read timeout, connections beyond the cap wait in the listen queue
/// rather than being served, and a normal request still gets its answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_the_connection_cap_holds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CAP: usize = 8;
    let stack = Stack::start(
        1,
        &[
            ("USER_WEB__SERVER__MAX_CONNECTIONS", "8"),
            ("USER_WEB__SERVER__HEADER_READ_TIMEOUT", "500ms"),
        ],
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..CAP + 4 {
        let mut s = tokio::net::TcpStream::connect(stack.web_addr)
            .await
            .expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("half a head");
        slow.push(s);
    }
    let started = Instant::now();
    let (status, body) = get(&stack, "/health", None).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered while the slow clients were being timed out"
    );
    for (i, s) in slow.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        // Closed by the server: end of stream (possibly after a 408 it wrote).
        let closed = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .unwrap_or_else(|_| panic!("slow connection {i} is still open"));
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(&format!("http_connections_max {CAP}")),
        "{metrics}"
    );
}

/// Guessing is limited per mobile and per client: beyond the limit a 429 with `Retry-After`,
/// even for the right password, counted in /metrics; other mobiles are not affected until
/// the client's own limit is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_login_attempts_get_429_with_retry_after() {
    let stack = Stack::start(
        1,
        &[
            ("USER_WEB__THROTTLE__LOGIN__PER_MOBILE__ATTEMPTS", "2"),
            ("USER_WEB__THROTTLE__LOGIN__PER_MOBILE__PER", "1h"),
            ("USER_WEB__THROTTLE__LOGIN__PER_IP__ATTEMPTS", "5"),
            ("USER_WEB__THROTTLE__LOGIN__PER_IP__PER", "1h"),
        ],
    )
    .await;
    let attempt = |mobile: &'static str, password: &'static str| {
        http()
            .post(stack.url("/u/v1/user/pwd_login"))
            .json(&json!({"mobile": mobile, "password": password}))
            .send()
    };
    for _ in 0..2 {
        let r = attempt(support::ADMIN_MOBILE, "wrong-password")
            .await
            .expect("login");
        assert_eq!(r.status().as_u16(), 401);
    }
    for password in ["wrong-password", support::ADMIN_PASSWORD] {
        let r = attempt(support::ADMIN_MOBILE, password)
            .await
            .expect("login");
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("json");
        assert_eq!(error_code(status, &body), (429, "rate_limited".into()));
        // Two attempts an hour: the next one is free in half an hour.
        assert!((1700..=1800).contains(&retry_after), "{retry_after}");
    }
    // Another mobile from the same client: its own limit, until the client's (5) is spent.
    let (status, _) = send(
        http()
            .post(stack.url("/u/v1/user/pwd_login"))
            .json(&json!({"mobile": "13900000099", "password": "whatever1"})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = send(
        http()
            .post(stack.url("/u/v1/user/pwd_login"))
            .json(&json!({"mobile": "13900000098", "password": "whatever1"})),
    )
    .await;
    assert_eq!(error_code(status, &body), (429, "rate_limited".into()));

    let metrics = stack.metrics().await;
    for needle in [
        "http_throttled_total{limit=\"login_per_mobile\"} 2",
        "http_throttled_total{limit=\"login_per_ip\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
}
