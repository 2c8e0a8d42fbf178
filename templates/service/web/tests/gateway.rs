//! @name@-web end to end: the Consul double (or the agent at `CONSUL_HTTP_ADDR`), two
//! @name@-srv instances on one SQLite file, and the gateway finding them round-robin.

use std::time::Duration;

use kit::{
    config::{ServerFlags, ServiceSettings},
    rpc_log::RpcStats,
};
use serde_json::{Value, json};
use test_support::{Agent, eventually};
use tokio::sync::oneshot;

const SECRET: &str = "a-test-secret-that-is-long-enough";

struct Stack {
    web: String,
    srv_stats: Vec<RpcStats>,
    _stops: Vec<oneshot::Sender<()>>,
    _consul: Agent,
    _dir: tempfile::TempDir,
}

async fn stack() -> Stack {
    bootstrap::init_test_logging();
    let consul = Agent::start(consul_double::DoubleConfig::default()).await;
    let agent = consul.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("@snake@.db").display());
    let (mut stops, mut srv_stats, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let env = [
            ("DATABASE_URL", db.as_str()),
            ("CONSUL_HTTP_ADDR", agent.as_str()),
            ("@UPPER@_SRV__REGISTRATION__CHECK_INTERVAL", "200ms"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let settings =
            @snake@_srv::Settings::load_from(&ServerFlags::default(), env).expect("srv settings");
        let app = @snake@_srv::Application::build(&settings).await.expect("srv builds");
        srv_stats.push(app.server().stats());
        ids.push(app.server().service_id().expect("registered").to_owned());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        stops.push(stop);
    }
    let env = [
        ("CONSUL_HTTP_ADDR", agent.as_str()),
        ("@UPPER@_WEB__SERVER__PORT", "0"),
        ("@UPPER@_WEB__AUTH__JWT_SECRET", SECRET),
        ("@UPPER@_WEB__UPSTREAM__WAIT", "5s"),
        ("@UPPER@_WEB__REGISTRATION__ENABLED", "false"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let settings = @snake@_web::Settings::load_from(&ServerFlags::default(), env).expect("web settings");
    let app = @snake@_web::Application::build(&settings).await.expect("web builds");
    let web = format!("http://{}", app.local_addr());
    let state = app.state();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    stops.push(stop);
    eventually("both instances in rotation", Duration::from_secs(10), || {
        let members: Vec<String> = state
            .@snake@
            .balancer()
            .members()
            .iter()
            .map(|m| m.endpoint.id.to_string())
            .collect();
        let ok = ids.iter().all(|id| members.contains(id));
        async move { ok }
    })
    .await;
    Stack {
        web,
        srv_stats,
        _stops: stops,
        _consul: consul,
        _dir: dir,
    }
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_list_round_robin_through_consul() {
    let stack = stack().await;
    let http = reqwest::Client::new();
    let create = format!("{}/@prefix@/v1/@name@", stack.web);
    let item = json!({"name": "first", "price": 100});

    let (status, body) = send(http.post(&create).json(&item)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_token")));
    // The same keys as the gateway's (what user-web's login issues).
    let tokens = kit::http::auth::AuthSettings {
        jwt_secret: kit::config::Secret::new(SECRET),
        ..Default::default()
    }
    .tokens(2);
    let (user, _) = tokens.issue(7, 1, "user").expect("token");
    let (status, _) = send(http.post(&create).bearer_auth(&user).json(&item)).await;
    assert_eq!(status, 403, "a user may not create");
    let (admin, _) = tokens.issue(1, 2, "admin").expect("token");
    let (status, body) = send(http.post(&create).bearer_auth(&admin).json(&item)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "first");
    let (status, body) = send(http.post(&create).bearer_auth(&admin).json(&item)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("already_exists")));
    let (status, body) = send(
        http.post(&create)
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")));

    let before: Vec<u64> = stack.srv_stats.iter().map(RpcStats::service_calls).collect();
    for _ in 0..10 {
        let (status, body) = send(http.get(format!("{}/@prefix@/v1/@name@/list?pn=1&psize=5", stack.web))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total"], 1);
    }
    let served: Vec<u64> = stack
        .srv_stats
        .iter()
        .zip(&before)
        .map(|(s, b)| s.service_calls() - b)
        .collect();
    assert_eq!(served, [5, 5], "round-robin, counted on the @name@-srv side");

    let above = kit::page::MAX_SIZE + 1;
    let (status, body) = send(http.get(format!("{}/@prefix@/v1/@name@/list?psize={above}", stack.web))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_argument")));
    let (status, _) = send(http.get(format!("{}/@prefix@/v1/@name@/999", stack.web))).await;
    assert_eq!(status, 404);
    let (status, doc) = send(http.get(format!("{}/openapi.json", stack.web))).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/@prefix@/v1/@name@/list"].is_object(), "{doc}");
}
