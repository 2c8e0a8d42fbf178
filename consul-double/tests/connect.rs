//! The double's Connect against the 1.10.3 recording (`06-connect.json`): roots and leaf
//! shapes and certificates, authorize and its reasons under default allow and default deny,
//! intentions by name, and a CA rotation. Every wait is bounded.

use std::time::{Duration, Instant};

use consul_double::{ConsulDouble, DoubleConfig};
use serde_json::{Value, json};
use test_support::eventually;
use x509_parser::{extensions::GeneralName, pem::Pem};

async fn double(config: DoubleConfig) -> (ConsulDouble, reqwest::Client) {
    let d = ConsulDouble::start(config).await.expect("double");
    (d, reqwest::Client::new())
}

/// (status, index header, body, elapsed) of one request.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, u64, Value, Duration) {
    let started = Instant::now();
    let mut request = http.request(method, url).timeout(Duration::from_secs(20));
    if let Some(token) = token {
        request = request.header("X-Consul-Token", token);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let index = r
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, index, body, started.elapsed())
}

async fn get(http: &reqwest::Client, d: &ConsulDouble, path: &str) -> (u16, u64, Value) {
    let (s, i, b, _) = call(
        http,
        reqwest::Method::GET,
        format!("{}{path}", d.url()),
        None,
        None,
    )
    .await;
    (s, i, b)
}

/// Every certificate in a PEM chain: (subject alternative URIs, is a CA).
fn certificates(pem: &str) -> Vec<(Vec<String>, bool)> {
    Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| {
            let p = p.expect("PEM");
            let cert = p.parse_x509().expect("X.509");
            let uris = cert
                .subject_alternative_name()
                .expect("SAN")
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .map(|n| match n {
                            GeneralName::URI(u) => (*u).to_owned(),
                            other => format!("not a URI: {other:?}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (uris, cert.is_ca())
        })
        .collect()
}

#[tokio::test]
async fn roots_and_leaves_look_like_the_recording() {
    let (d, http) = double(DoubleConfig::default()).await;
    let (status, index, roots) = get(&http, &d, "/v1/agent/connect/ca/roots").await;
    assert_eq!(status, 200);
    assert!(index > 0);
    let td = roots["TrustDomain"]
        .as_str()
        .expect("trust domain")
        .to_owned();
    assert!(td.ends_with(".consul"), "{td}");
    assert_eq!(roots["Roots"].as_array().map(Vec::len), Some(1));
    let root = &roots["Roots"][0];
    assert_eq!(root["ID"], roots["ActiveRootID"]);
    assert_eq!(root["Active"], json!(true));
    assert_eq!(root["IntermediateCerts"], Value::Null);
    let root_pem = root["RootCert"].as_str().expect("root");
    assert_eq!(
        certificates(root_pem),
        [(vec![format!("spiffe://{td}")], true)]
    );

    let (status, leaf_index, leaf) = get(&http, &d, "/v1/agent/connect/ca/leaf/user-srv").await;
    assert_eq!(status, 200);
    let uri = format!("spiffe://{td}/ns/default/dc/dc1/svc/user-srv");
    assert_eq!(leaf["ServiceURI"], json!(uri));
    assert_eq!(leaf["ModifyIndex"], json!(leaf_index));
    assert!(
        leaf["PrivateKeyPEM"]
            .as_str()
            .is_some_and(|k| k.starts_with("-----BEGIN EC PRIVATE KEY-----")),
        "a SEC1 key, as Consul sends it"
    );
    let chain = certificates(leaf["CertPEM"].as_str().expect("cert"));
    assert_eq!(chain, [(vec![uri], false)], "the URI is the only SAN");
    // The same leaf again; a blocking query with its index waits.
    let (_, again_index, again) = get(&http, &d, "/v1/agent/connect/ca/leaf/user-srv").await;
    assert_eq!(
        (again_index, &again["CertPEM"]),
        (leaf_index, &leaf["CertPEM"])
    );
    let (_, _, _, took) = call(
        &http,
        reqwest::Method::GET,
        format!(
            "{}/v1/agent/connect/ca/leaf/user-srv?index={leaf_index}&wait=300ms",
            d.url()
        ),
        None,
        None,
    )
    .await;
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let (status, _, body) = get(&http, &d, "/v1/agent/connect/ca/leaf/").await;
    assert_eq!(
        (status, body),
        (500, json!("URI must be either service or agent"))
    );
}

async fn authorize(
    http: &reqwest::Client,
    d: &ConsulDouble,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let (s, _, b, _) = call(
        http,
        reqwest::Method::POST,
        format!("{}/v1/agent/connect/authorize", d.url()),
        token,
        Some(body),
    )
    .await;
    (s, b)
}

#[tokio::test]
async fn authorize_follows_intentions_with_consuls_reasons() {
    let (d, http) = double(DoubleConfig::default()).await;
    let web = json!({"Target": "user-srv", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/user-web", "ClientCertSerial": "09"});
    assert_eq!(
        authorize(&http, &d, None, web.clone()).await,
        (
            200,
            json!({"Authorized": true, "Reason": "ACLs disabled, access is allowed by default"})
        )
    );
    let exact = format!(
        "{}/v1/connect/intentions/exact?source=user-web&destination=user-srv",
        d.url()
    );
    let (s, _, b, _) = call(
        &http,
        reqwest::Method::PUT,
        exact.clone(),
        None,
        Some(json!({"Action": "deny"})),
    )
    .await;
    assert_eq!((s, b), (200, json!(true)));
    assert_eq!(
        authorize(&http, &d, None, web.clone()).await.1,
        json!({"Authorized": false, "Reason": "Matched L4 intention: default/user-web => default/user-srv (Precedence: 9, Action: DENY)"})
    );
    let (_, _, listed) = get(&http, &d, "/v1/connect/intentions").await;
    assert_eq!(listed[0]["Action"], json!("deny"));
    assert_eq!(listed[0]["Precedence"], json!(9));
    let (s, _, b, _) = call(
        &http,
        reqwest::Method::PUT,
        exact.clone(),
        None,
        Some(json!({"Action": "maybe"})),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            500,
            json!("Sources[0].Action must be set to 'allow' or 'deny'")
        )
    );
    let (s, _, _, _) = call(&http, reqwest::Method::DELETE, exact.clone(), None, None).await;
    assert_eq!(s, 200);
    let (s, _, _, _) = call(&http, reqwest::Method::GET, exact, None, None).await;
    assert_eq!(s, 404);
    assert_eq!(
        authorize(&http, &d, None, web).await.1["Authorized"],
        json!(true)
    );
    // Consul's 400s.
    for (body, text) in [
        (
            json!({"Target": "user-srv", "ClientCertURI": "garbage"}),
            "Bad request: ClientCertURI not a valid Connect identifier",
        ),
        (
            json!({"Target": "user-srv", "ClientCertURI": "spiffe://x.consul/agent/client/dc/dc1/id/n"}),
            "Bad request: ClientCertURI not a valid Service identifier",
        ),
        (
            json!({"ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/a"}),
            "Bad request: Target service must be specified",
        ),
    ] {
        assert_eq!(authorize(&http, &d, None, body).await, (400, json!(text)));
    }
}

#[tokio::test]
async fn under_default_deny_roots_are_public_and_authorize_denies_by_default() {
    let master = "master-token";
    let (d, http) = double(DoubleConfig {
        acl_master_token: Some(master.into()),
        ..DoubleConfig::default()
    })
    .await;
    assert_eq!(get(&http, &d, "/v1/agent/connect/ca/roots").await.0, 200);
    assert_eq!(
        get(&http, &d, "/v1/agent/connect/ca/leaf/user-srv").await.0,
        403
    );
    let web = json!({"Target": "user-srv", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/user-web"});
    assert_eq!(authorize(&http, &d, None, web.clone()).await.0, 403);
    assert_eq!(
        authorize(&http, &d, Some(master), web).await,
        (
            200,
            json!({"Authorized": false, "Reason": "Default behavior configured by ACLs"})
        )
    );
}

#[tokio::test]
async fn a_rotation_cross_signs_the_new_root_and_renews_leaves() {
    let (d, http) = double(DoubleConfig::default()).await;
    let (_, roots_index, before) = get(&http, &d, "/v1/agent/connect/ca/roots").await;
    get(&http, &d, "/v1/agent/connect/ca/leaf/user-srv").await;
    let url = d.url();
    let pending = {
        let http = http.clone();
        tokio::spawn(async move {
            call(
                &http,
                reqwest::Method::GET,
                format!("{url}/v1/agent/connect/ca/roots?index={roots_index}&wait=10s"),
                None,
                None,
            )
            .await
        })
    };
    let config = json!({"Provider": "consul", "Config": {"LeafCertTTL": "72h", "PrivateKey": consul_double::new_ca_key_pem()}});
    let (s, _, _, _) = call(
        &http,
        reqwest::Method::PUT,
        format!("{}/v1/connect/ca/configuration", d.url()),
        None,
        Some(config),
    )
    .await;
    assert_eq!(s, 200);
    let (_, woken_index, after, took) = pending.await.expect("pending roots query");
    assert!(
        took < Duration::from_secs(5),
        "the pending query woke: {took:?}"
    );
    assert!(woken_index > roots_index);
    assert_ne!(after["ActiveRootID"], before["ActiveRootID"]);
    let roots = after["Roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 2, "both roots are listed");
    let new = roots
        .iter()
        .find(|r| r["Active"] == json!(true))
        .expect("active root");
    assert_eq!(
        new["IntermediateCerts"].as_array().map(Vec::len),
        Some(1),
        "cross-signed"
    );
    let mut ids: Vec<&str> = roots.iter().filter_map(|r| r["ID"].as_str()).collect();
    let listed = ids.clone();
    ids.sort_unstable();
    assert_eq!(listed, ids, "ordered by ID");
    eventually(
        "user-srv's leaf is renewed",
        Duration::from_secs(10),
        || async {
            let (_, _, leaf) = get(&http, &d, "/v1/agent/connect/ca/leaf/user-srv").await;
            leaf["CertPEM"]
                .as_str()
                .is_some_and(|c| certificates(c).len() == 2)
        },
    )
    .await;
}
