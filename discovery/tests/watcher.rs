//! The watcher against the Consul double: publishes passing instances, ignores spurious
//! wake-ups, follows an agent restart, keeps the last known set while Consul is down, and
//! reads large answers (chunked, indented or not).

use std::{future::Future, time::Duration};

use consul_double::{ConsulDouble, DoubleConfig};
use discovery::{ConsulClient, ConsulSettings, WatchSettings, Watcher};
use serde_json::json;

async fn register(d: &ConsulDouble, id: &str, port: u16, status: &str) {
    let body = json!({"ID": id, "Name": "user-srv", "Address": "127.0.0.1", "Port": port,
        "Check": {"TTL": "10m", "Status": status}});
    let r = reqwest::Client::new()
        .put(format!("{}/v1/agent/service/register", d.url()))
        .body(body.to_string())
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success());
}

fn watcher(url: &str) -> Watcher {
    let client = ConsulClient::new(&ConsulSettings {
        addr: url.to_owned(),
        ..ConsulSettings::default()
    })
    .expect("client");
    Watcher::start(
        client,
        WatchSettings {
            service: "user-srv".to_owned(),
            wait: Duration::from_secs(2),
            ..WatchSettings::default()
        },
    )
}

/// The shared helper with this file's 10 s bound.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    test_support::eventually(what, Duration::from_secs(10), check).await;
}

fn ids(w: &Watcher) -> Vec<String> {
    w.subscribe()
        .borrow()
        .list
        .iter()
        .map(|e| e.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_passing_instances_and_ignores_spurious_wakeups() {
    let d = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    register(&d, "a", 7001, "passing").await;
    let w = watcher(&d.url());
    eventually("a known", || async { ids(&w) == ["a"] }).await;
    let mut rx = w.subscribe();
    rx.borrow_and_update();
    // A critical instance wakes the blocking query with an identical passing set.
    register(&d, "b", 7002, "critical").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rx.has_changed().expect("open"),
        "a spurious wake-up published a change"
    );
    register(&d, "c", 7003, "passing").await;
    eventually("c joins", || async { ids(&w) == ["a", "c"] }).await;
    let c = w.subscribe().borrow().list[1].clone();
    assert_eq!(
        (c.addr.to_string().as_str(), c.weight),
        ("127.0.0.1:7003", 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_empties_the_set_and_later_registrations_show_up() {
    let d = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    for i in 0..5 {
        register(&d, &format!("s{i}"), 7000 + i, "passing").await;
    }
    let w = watcher(&d.url());
    eventually("five known", || async { ids(&w).len() == 5 }).await;
    d.restart();
    eventually("an empty answer empties the set", || async {
        ids(&w).is_empty()
    })
    .await;
    // The index went backwards; the watcher must reset it or it would block on the old one.
    register(&d, "back", 7100, "passing").await;
    eventually("the new instance shows up", || async {
        ids(&w) == ["back"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_last_known_set_while_consul_is_down() {
    let d = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    let addr = d.addr();
    register(&d, "a", 7001, "passing").await;
    let w = watcher(&d.url());
    eventually("a known", || async { ids(&w) == ["a"] }).await;
    d.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ids(&w),
        ["a"],
        "last known instances kept while Consul is down"
    );
    let d = ConsulDouble::start_on(addr, DoubleConfig::default())
        .await
        .expect("double back");
    register(&d, "b", 7002, "passing").await;
    eventually("the watch resumes", || async { ids(&w) == ["b"] }).await;
}

/// Forty instances make an answer of many KB, which Consul sends chunked; a dev agent
/// indents it, any other agent does not. Joins and leaves are followed either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_large_chunked_answer_indented_or_compact() {
    for pretty in [true, false] {
        let d = ConsulDouble::start(DoubleConfig {
            pretty,
            ..DoubleConfig::default()
        })
        .await
        .expect("double");
        for i in 0..40 {
            register(&d, &format!("s{i:02}"), 7000 + i, "passing").await;
        }
        let w = watcher(&d.url());
        eventually("forty known", || async { ids(&w).len() == 40 }).await;
        deregister(&d, "s17").await;
        eventually("s17 leaves", || async {
            let ids = ids(&w);
            ids.len() == 39 && !ids.iter().any(|i| i == "s17")
        })
        .await;
        register(&d, "s17", 7117, "passing").await;
        eventually("s17 joins on its new port", || async {
            w.subscribe()
                .borrow()
                .list
                .iter()
                .any(|e| &*e.id == "s17" && e.addr.port() == 7117)
        })
        .await;
        assert_eq!(ids(&w).len(), 40, "pretty: {pretty}");
    }
}

async fn deregister(d: &ConsulDouble, id: &str) {
    let r = reqwest::Client::new()
        .put(format!("{}/v1/agent/service/deregister/{id}", d.url()))
        .send()
        .await
        .expect("deregister");
    assert!(r.status().is_success());
}
