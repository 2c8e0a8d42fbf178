//! A default-deny ACL agent (the double in ACL mode, answering like the Consul 1.10
//! transcript): what each token may do, the token file, and a watcher whose token cannot
//! read the service saying so instead of just "no instances".

use std::{net::SocketAddr, time::Duration};

use consul_double::{ConsulDouble, DoubleConfig};
use discovery::{
    CheckTarget, ConsulClient, ConsulSettings, RegistrationSettings, Secret, WatchSettings,
    Watcher, watcher::why_empty,
};

const MASTER: &str = "root-secret-token";

async fn acl_double() -> ConsulDouble {
    ConsulDouble::start(DoubleConfig {
        acl_master_token: Some(MASTER.to_owned()),
        ..DoubleConfig::default()
    })
    .await
    .expect("double")
}

/// (status, body, X-Consul-Default-Acl-Policy) of one request with `token`.
async fn send(
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.header("X-Consul-Token", token);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let r = request.send().await.expect("request");
    let policy = r
        .headers()
        .get("X-Consul-Default-Acl-Policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (
        r.status().as_u16(),
        r.text().await.unwrap_or_default(),
        policy,
    )
}

#[tokio::test]
async fn default_deny_answers_as_the_1_10_transcript() {
    let d = acl_double().await;
    let url = d.url();
    let register = format!("{url}/v1/agent/service/register");
    let body = r#"{"ID":"user-srv-1","Name":"user-srv","Port":1}"#;
    use reqwest::Method;

    let (status, text, policy) = send(Method::PUT, register.clone(), None, Some(body)).await;
    assert_eq!(
        (status, text.as_str(), policy.as_str()),
        (
            403,
            "Permission denied: Missing service:write on user-srv",
            "deny"
        )
    );
    let (status, text, _) = send(Method::PUT, register.clone(), Some("bogus"), Some(body)).await;
    assert_eq!((status, text.as_str()), (403, "ACL not found"));
    assert_eq!(
        send(Method::PUT, register, Some(MASTER), Some(body))
            .await
            .0,
        200
    );

    let health = format!("{url}/v1/health/service/user-srv");
    let (status, text, policy) = send(Method::GET, health.clone(), None, None).await;
    assert_eq!((status, text.trim(), policy.as_str()), (200, "[]", "deny"));
    let (status, text, _) = send(Method::GET, health, Some(MASTER), None).await;
    assert!(status == 200 && text.contains("user-srv-1"), "{text}");

    let self_url = format!("{url}/v1/acl/token/self");
    assert_eq!(send(Method::GET, self_url.clone(), None, None).await.0, 403);
    let (status, text, _) = send(Method::GET, self_url, Some(MASTER), None).await;
    assert!(
        status == 200 && text.contains("global-management"),
        "{text}"
    );

    let unknown = format!("{url}/v1/agent/service/deregister/nope");
    let (status, text, _) = send(Method::PUT, unknown, Some(MASTER), None).await;
    assert_eq!((status, text.as_str()), (500, "Unknown service \"nope\""));
    let known = format!("{url}/v1/agent/service/deregister/user-srv-1");
    let (status, text, _) = send(Method::PUT, known, None, None).await;
    assert_eq!(
        (status, text.as_str()),
        (403, "Permission denied: Missing service:write on user-srv")
    );
}

/// KV under default deny: a key is refused, a listing is filtered (as the 1.10 transcript).
#[tokio::test]
async fn kv_without_a_token_is_refused_or_filtered() {
    use reqwest::Method;
    let d = acl_double().await;
    let key = format!("{}/v1/kv/config/user-web/data", d.url());
    assert_eq!(
        send(Method::PUT, key.clone(), Some(MASTER), Some("x = 1"))
            .await
            .0,
        200
    );
    let (status, text, _) = send(Method::GET, key.clone(), None, None).await;
    assert_eq!((status, text.as_str()), (403, "Permission denied"));
    let (status, _, _) = send(Method::PUT, key.clone(), None, Some("x = 2")).await;
    assert_eq!(status, 403);
    let folder = format!("{}/v1/kv/config/user-web", d.url());
    let (status, text, _) = send(Method::GET, format!("{folder}?recurse"), None, None).await;
    assert_eq!((status, text.as_str()), (404, ""), "filtered to nothing");
    let (status, text, _) = send(Method::GET, format!("{folder}?keys"), None, None).await;
    assert_eq!((status, text.as_str()), (200, "[]"));
    let (status, text, _) =
        send(Method::GET, format!("{folder}?recurse"), Some(MASTER), None).await;
    assert!(
        status == 200 && text.contains("config/user-web/data"),
        "{text}"
    );

    // The client reads a filtered folder as empty, with an index to block on.
    let client = discovery::ConsulClient::new(&discovery::ConsulSettings {
        addr: d.url(),
        ..discovery::ConsulSettings::default()
    })
    .expect("client");
    let answer = client
        .kv_folder("config/user-web", None, std::time::Duration::from_secs(1))
        .await
        .expect("a filtered read is not an error");
    assert!(answer.entries.is_empty() && answer.index > 0, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_whose_token_cannot_read_says_so_and_a_token_file_works() {
    let d = acl_double().await;
    let dir = std::env::temp_dir().join(format!("acl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("token");
    std::fs::write(&file, format!("{MASTER}\n")).expect("token file");
    let with_file = ConsulSettings {
        addr: d.url(),
        token_file: Some(file),
        ..ConsulSettings::default()
    };
    // The token file registers an instance (Consul's CLI reads the same variable).
    let bound: SocketAddr = "127.0.0.1:4243".parse().expect("addr");
    let registration = RegistrationSettings::default()
        .plan(&with_file, "user-srv", "1.0.0", bound, |a| {
            CheckTarget::Http(format!("http://{a}/health"))
        })
        .expect("plan")
        .expect("on")
        .start();
    let watch = |settings: &ConsulSettings| {
        Watcher::start(
            ConsulClient::new(settings).expect("client"),
            WatchSettings {
                service: "user-srv".into(),
                wait: Duration::from_secs(2),
                ..WatchSettings::default()
            },
        )
    };
    let no_token = ConsulSettings {
        addr: d.url(),
        ..ConsulSettings::default()
    };
    // Without a token the agent answers an empty list, not an error: the watch must say why.
    let blind = watch(&no_token);
    test_support::eventually(
        "the blind watcher has its (empty) answer",
        Duration::from_secs(10),
        || {
            let known = blind.subscribe().borrow().known;
            async move { known }
        },
    )
    .await;
    assert!(blind.subscribe().borrow().list.is_empty());
    let client = |settings: &ConsulSettings| ConsulClient::new(settings).expect("client");
    let why = why_empty(&client(&no_token), "user-srv").await;
    assert!(
        why.contains("service:read") && why.contains("no token is set"),
        "{why}"
    );
    let bogus = ConsulSettings {
        token: Some(Secret::new("bogus")),
        ..no_token.clone()
    };
    let why = why_empty(&client(&bogus), "user-srv").await;
    assert!(
        why.contains("ACL not found"),
        "a refused token is named: {why}"
    );

    let seeing = watch(&with_file);
    test_support::eventually(
        "the token file's watcher sees it",
        Duration::from_secs(10),
        || {
            let n = seeing.subscribe().borrow().list.len();
            async move { n == 1 }
        },
    )
    .await;
    drop(registration);
    let _ = std::fs::remove_dir_all(dir);
}
