//! Traces across the tiers: user-web and user-srv run as processes with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an in-test OTLP collector. One list call with
//! a caller's `traceparent` arrives as one trace: user-web's request span under the caller's
//! span, one span per upstream attempt under it (a retry is a sibling), user-srv's RPC span
//! under the attempt that reached it, and the database call under the RPC.

mod support;

use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::{ADMIN_MOBILE, ADMIN_PASSWORD, JWT_SECRET, Stack, eventually, http, user_srv_binary};
use test_support::otlp::{Collector, Received};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn traced(
    command: &mut Command,
    collector: &Collector,
    dir: &std::path::Path,
    name: &str,
) -> Killed {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    Killed(
        command
            .current_dir(dir)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("RUST_LOG")
            .arg("--port")
            .arg("0")
            .arg("--ready-file")
            .arg(dir.join(format!("{name}.ready")))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}")),
    )
}

/// Random non-zero hex of `n` bytes.
fn random_hex(n: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..2 * n].to_owned()
}

fn one<'a>(spans: &'a [Received], what: &str, pick: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_list_call_is_one_trace_across_both_tiers_with_the_retry_visible() {
    let collector = Collector::start().await.expect("collector");
    // Consul and a seeded database; the in-process tiers of the stack stay out of the way.
    let stack = Stack::start(0, &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let _srv = traced(
        Command::new(user_srv_binary())
            .env("DATABASE_URL", &stack.db_url)
            .env("CONSUL_HTTP_ADDR", &stack.consul_url)
            .env("USER_SRV__REGISTRATION__NAME", &stack.service)
            .env("USER_SRV__REGISTRATION__CHECK_INTERVAL", "200ms"),
        &collector,
        dir.path(),
        "user-srv",
    );
    let _web = traced(
        Command::new(env!("CARGO_BIN_EXE_user-web"))
            .env("CONSUL_HTTP_ADDR", &stack.consul_url)
            .env("USER_WEB__AUTH__JWT_SECRET", JWT_SECRET)
            .env("USER_WEB__UPSTREAM__WAIT", "5s")
            .env("USER_WEB__UPSTREAM__SERVICE", &stack.service),
        &collector,
        dir.path(),
        "user-web",
    );
    let web =
        test_support::ready_address(&dir.path().join("user-web.ready"), Duration::from_secs(20))
            .await;
    let service = stack.service.clone();
    let ghost_id = format!("{service}-ghost");
    let endpoints = |n: usize| {
        let url = format!("http://{web}/metrics");
        let want = format!("upstream_endpoints{{service=\"{service}\"}} {n}");
        async move {
            let metrics = http().get(url).send().await.ok()?.text().await.ok()?;
            Some(metrics.contains(&want))
        }
    };
    eventually(
        "user-web finds user-srv",
        Duration::from_secs(15),
        || async { endpoints(1).await == Some(true) },
    )
    .await;
    let login = http()
        .post(format!("http://{web}/u/v1/user/pwd_login"))
        .json(&serde_json::json!({"mobile": ADMIN_MOBILE, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login");
    let token: serde_json::Value = login.json().await.expect("json");
    let token = token["token"].as_str().expect("token").to_owned();

    // An instance in Consul that refuses connections: the call that picks it is retried.
    let ghost = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ghost_port = ghost.local_addr().expect("addr").port();
    drop(ghost);
    let register = http()
        .put(format!("{}/v1/agent/service/register", stack.consul_url))
        .json(&serde_json::json!({
            "ID": ghost_id, "Name": service, "Address": "127.0.0.1", "Port": ghost_port
        }))
        .send()
        .await
        .expect("register the ghost");
    assert!(register.status().is_success(), "{register:?}");
    eventually("the ghost in rotation", Duration::from_secs(15), || async {
        endpoints(2).await == Some(true)
    })
    .await;

    // Two calls: with round-robin over two instances, one of them meets the ghost.
    let mut callers = Vec::new();
    for _ in 0..2 {
        let (trace_id, caller) = (random_hex(16), random_hex(8));
        let r = http()
            .get(format!("http://{web}/u/v1/user/list?pn=1&psize=5"))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{trace_id}-{caller}-01"))
            .send()
            .await
            .expect("list");
        assert_eq!(r.status().as_u16(), 200, "the retry hides the ghost");
        callers.push((trace_id, caller));
    }
    let _ = http()
        .put(format!(
            "{}/v1/agent/service/deregister/{ghost_id}",
            stack.consul_url
        ))
        .send()
        .await;

    let traces: HashSet<&str> = callers.iter().map(|(t, _)| t.as_str()).collect();
    let wanted = |s: &Received| traces.contains(s.trace_id.as_str());
    eventually(
        "both tiers' spans of both calls",
        Duration::from_secs(15),
        || {
            let spans = collector.spans();
            let complete = callers.iter().all(|(trace_id, _)| {
                ["request", "rpc", "db"].iter().all(|name| {
                    spans
                        .iter()
                        .any(|s| &s.trace_id == trace_id && s.name == *name)
                })
            });
            async move { complete }
        },
    )
    .await;
    let spans: Vec<Received> = collector.spans().into_iter().filter(wanted).collect();
    let mut retried = 0;
    for (trace_id, caller) in &callers {
        let spans: Vec<Received> = spans
            .iter()
            .filter(|s| &s.trace_id == trace_id)
            .cloned()
            .collect();
        let request = one(&spans, "user-web's request span", |s| s.name == "request");
        assert_eq!(request.service, "user-web");
        assert_eq!(
            &request.parent_span_id, caller,
            "it continues the caller's trace"
        );
        let attempts: Vec<&Received> = spans.iter().filter(|s| s.name == "upstream").collect();
        assert!(
            attempts
                .iter()
                .all(|a| a.parent_span_id == request.span_id && a.service == "user-web"),
            "attempts are children of the request: {attempts:#?}"
        );
        let rpc = one(&spans, "user-srv's RPC span", |s| s.name == "rpc");
        assert_eq!(rpc.service, "user-srv");
        let answered = one(&spans, "the attempt user-srv answered", |s| {
            s.name == "upstream" && s.span_id == rpc.parent_span_id
        });
        assert_ne!(answered.status_code, 2, "it succeeded");
        let db = one(&spans, "the database call", |s| s.name == "db");
        assert_eq!(
            db.parent_span_id, rpc.span_id,
            "the query is a child of the RPC"
        );
        assert_eq!(db.service, "user-srv");
        if attempts.len() == 2 {
            retried += 1;
            // The trace as the collector received it (shown with --nocapture).
            eprintln!("trace {trace_id}, the caller's span {caller}:");
            for s in &spans {
                eprintln!(
                    "{:9} {:8} span {} parent {:16} status {}",
                    s.service, s.name, s.span_id, s.parent_span_id, s.status_code
                );
            }
            let failed = one(&spans, "the failed attempt", |s| {
                s.name == "upstream" && s.span_id != rpc.parent_span_id
            });
            assert_eq!(
                failed.status_code, 2,
                "the failed attempt is an error: {failed:#?}"
            );
            assert_eq!(
                failed.attributes.get("instance").map(String::as_str),
                Some(ghost_id.as_str())
            );
        } else {
            assert_eq!(attempts.len(), 1, "{attempts:#?}");
        }
    }
    assert_eq!(retried, 1, "exactly one call met the ghost");

    // Log lines inside a request carry its trace id.
    let (trace_id, _) = &callers[0];
    let log = std::fs::read_to_string(dir.path().join("user-web.log")).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("trace_id={trace_id}"))),
        "no log line with trace_id={trace_id}:\n{log}"
    );
}
