//! The config center on the Consul double (or the agent `CONSUL_HTTP_ADDR` names): KV
//! documents layered between the file and the environment, live changes applied, restart-only
//! changes held back, bad documents refused, and a Consul that comes up after the service.

use std::{net::SocketAddr, time::Duration};

use consul_double::{ConsulDouble, DoubleConfig};
use discovery::ConsulSettings;
use kit::config::{
    ServerFlags, ServerSettings, ServiceSettings,
    center::{ConfigCenter, Live},
};
use serde::{Deserialize, Serialize};
use test_support::{Agent, eventually};

/// A service with one live section (`routing`) and the usual restart-only ones.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
struct Demo {
    server: ServerSettings,
    consul: ConsulSettings,
    routing: Routing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct Routing {
    policy: String,
    #[serde(with = "humantime_serde")]
    deadline: Duration,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            policy: "round_robin".into(),
            deadline: Duration::from_secs(3),
        }
    }
}

impl ServiceSettings for Demo {
    const ENV_PREFIX: &'static str = "DEMO";
    type Live = Routing;

    fn live(&self) -> Routing {
        self.routing.clone()
    }

    fn set_live(&mut self, live: Routing) {
        self.routing = live;
    }

    fn server(&self) -> &ServerSettings {
        &self.server
    }

    fn server_mut(&mut self) -> &mut ServerSettings {
        &mut self.server
    }

    fn consul(&mut self) -> &mut ConsulSettings {
        &mut self.consul
    }

    fn validate(&self) -> Result<(), String> {
        if self.routing.policy.is_empty() {
            return Err("routing.policy must not be empty".into());
        }
        Ok(())
    }
}

/// The double (or the agent in `CONSUL_HTTP_ADDR`), and a KV prefix no other test uses.
struct Kv {
    _agent: Agent,
    url: String,
    prefix: String,
}

impl Kv {
    async fn start() -> Self {
        bootstrap::init_test_logging();
        let agent = Agent::start(DoubleConfig::default()).await;
        Self {
            url: agent.url(),
            _agent: agent,
            prefix: format!("test-{}", uuid::Uuid::new_v4()),
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        env(&self.url, &self.prefix, extra)
    }

    async fn put(&self, key: &str, text: &str) {
        put(&self.url, &format!("{}/{key}", self.prefix), text).await;
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        // A real agent keeps the test's documents otherwise.
        let url = format!("{}/v1/kv/{}?recurse", self.url, self.prefix);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = runtime {
                rt.block_on(async {
                    let _ = reqwest::Client::new().delete(url).send().await;
                });
            }
        });
    }
}

fn env(url: &str, prefix: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("CONSUL_HTTP_ADDR".to_owned(), url.to_owned()),
        (
            "DEMO__CONSUL__CONFIG__ENABLED".to_owned(),
            "true".to_owned(),
        ),
        ("DEMO__CONSUL__CONFIG__PREFIX".to_owned(), prefix.to_owned()),
        ("DEMO__CONSUL__CONFIG__WAIT".to_owned(), "5s".to_owned()),
        ("DEMO__CONSUL__TIMEOUT".to_owned(), "1s".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

async fn put(url: &str, key: &str, text: &str) {
    let response = reqwest::Client::new()
        .put(format!("{url}/v1/kv/{key}"))
        .body(text.to_owned())
        .send()
        .await
        .expect("consul answers");
    assert!(response.status().is_success(), "PUT {key}: {response:?}");
}

async fn start(env: Vec<(String, String)>) -> Live<Demo> {
    ConfigCenter::<Demo>::start("demo", &ServerFlags::default(), env)
        .await
        .expect("settings load")
        .watch()
}

async fn until(live: &Live<Demo>, what: &str, check: impl Fn(&Live<Demo>) -> bool) {
    eventually(what, Duration::from_secs(10), || {
        let ok = check(live);
        async move { ok }
    })
    .await;
}

#[tokio::test]
async fn kv_lies_between_the_file_and_the_environment_and_the_profile_wins()
-> Result<(), Box<dyn std::error::Error>> {
    let kv = Kv::start().await;
    kv.put(
        "demo/data",
        "[server]\ndrain_timeout = \"7s\"\nport = 7001\n[routing]\npolicy = \"random\"\n",
    )
    .await;
    kv.put(
        "demo,canary/data",
        "[routing]\npolicy = \"least_request\"\n",
    )
    .await;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("demo.toml");
    std::fs::write(&file, "[server]\nport = 7000\nbody_limit = 99\n")?;
    let flags = ServerFlags {
        config: Some(file),
        ..ServerFlags::default()
    };
    let center = ConfigCenter::<Demo>::start(
        "demo",
        &flags,
        kv.env(&[
            ("DEMO__CONSUL__CONFIG__PROFILE", "canary"),
            ("DEMO__SERVER__DRAIN_TIMEOUT", "9s"),
        ]),
    )
    .await?;
    let s = center.settings();
    assert_eq!(s.server.body_limit, 99, "the file, where KV says nothing");
    assert_eq!(s.server.port, 7001, "KV over the file");
    assert_eq!(s.routing.policy, "least_request", "the profile over KV");
    assert_eq!(
        s.server.drain_timeout,
        Duration::from_secs(9),
        "the environment over KV"
    );
    let status = center.watch().status();
    assert_eq!(
        status.documents,
        [
            format!("{}/demo/data", kv.prefix),
            format!("{}/demo,canary/data", kv.prefix)
        ]
    );
    assert_eq!(status.rejected, None);
    Ok(())
}

#[tokio::test]
async fn a_live_setting_changes_without_a_restart_and_others_wait_for_one() {
    let kv = Kv::start().await;
    kv.put("demo/data", "[routing]\npolicy = \"random\"\n")
        .await;
    let live = start(kv.env(&[])).await;
    assert_eq!(live.settings().routing.policy, "random");
    let mut changes = live.subscribe();

    kv.put(
        "demo/data",
        "[routing]\npolicy = \"least_request\"\ndeadline = \"1s\"\n[server]\nport = 9999\n",
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("a change is announced in time")
        .expect("the center is running");
    let s = live.settings();
    assert_eq!(s.routing.policy, "least_request", "applied live");
    assert_eq!(s.routing.deadline, Duration::from_secs(1), "applied live");
    assert_eq!(s.server.port, 0, "a new port needs a restart");
    assert_eq!(live.status().needs_restart, ["server.port"]);

    // Taking the port change back leaves nothing waiting for a restart.
    kv.put("demo/data", "[routing]\npolicy = \"least_request\"\n")
        .await;
    until(&live, "nothing waits for a restart", |l| {
        l.status().needs_restart.is_empty()
    })
    .await;
    assert_eq!(
        live.settings().routing.deadline,
        Duration::from_secs(3),
        "a removed setting returns to its default"
    );
}

#[tokio::test]
async fn a_bad_document_is_refused_naming_the_key_and_the_last_good_settings_stay() {
    let kv = Kv::start().await;
    kv.put("demo/data", "[routing]\npolicy = \"random\"\n")
        .await;
    let live = start(kv.env(&[])).await;
    let key = format!("{}/demo/data", kv.prefix);
    let cases = [
        ("[routing\npolicy = 1", "TOML syntax"),
        ("[routing]\ndeadline = \"soon\"\n", "routing.deadline"),
        ("[routing]\npolicy = [1]\n", "routing.policy"),
        ("[routing]\npolcy = \"random\"\n", "routing.polcy"),
        ("[routing]\npolicy = \"\"\n", "must not be empty"),
    ];
    for (text, names) in cases {
        kv.put("demo/data", text).await;
        until(&live, &format!("{names} refused"), |l| {
            l.status().rejected.is_some_and(|r| r.contains(&key))
        })
        .await;
        let why = live.status().rejected.unwrap_or_default();
        if names != "TOML syntax" {
            assert!(why.contains(names), "{names}: {why}");
        }
        assert_eq!(live.settings().routing.policy, "random", "{names}: kept");
        // Back to good between cases, so each refusal is seen on its own.
        kv.put("demo/data", "[routing]\npolicy = \"random\"\n")
            .await;
        until(&live, "the good document again", |l| {
            l.status().rejected.is_none()
        })
        .await;
    }
}

#[tokio::test]
async fn without_consul_at_start_the_service_starts_and_takes_kv_when_consul_comes() {
    bootstrap::init_test_logging();
    // A free port nothing listens on yet.
    let addr: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let url = format!("http://{addr}");
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let live = start(env(&url, &prefix, &[("DEMO__SERVER__PORT", "7100")])).await;
    assert_eq!(live.settings().server.port, 7100, "file and environment");
    assert_eq!(live.status().index, None, "Consul has not answered");

    let _double = ConsulDouble::start_on(addr, DoubleConfig::default())
        .await
        .expect("double on the same address");
    put(
        &url,
        &format!("{prefix}/demo/data"),
        "[routing]\npolicy = \"random\"\n[server]\nworker_threads = 4\n",
    )
    .await;
    until(&live, "KV applied once Consul answers", |l| {
        l.settings().routing.policy == "random"
    })
    .await;
    assert_eq!(live.settings().server.worker_threads, 1);
    assert_eq!(live.status().needs_restart, ["server.worker_threads"]);
}

#[tokio::test]
async fn the_log_filter_is_checked_and_kv_is_not_read_unless_enabled() {
    let kv = Kv::start().await;
    kv.put("demo/data", "[server]\nlog_filter = \"info,demo=loud\"\n")
        .await;
    let live = start(kv.env(&[])).await;
    let why = live.status().rejected.unwrap_or_default();
    assert!(why.contains("server.log_filter"), "{why}");

    kv.put("demo/data", "[routing]\npolicy = \"random\"\n")
        .await;
    let off = start(kv.env(&[("DEMO__CONSUL__CONFIG__ENABLED", "false")])).await;
    assert_eq!(off.settings().routing.policy, "round_robin");
    assert!(!off.status().enabled);
}
