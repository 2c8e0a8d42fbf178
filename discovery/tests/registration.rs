//! An instance's registration against the Consul double: its `Meta` carries the service's
//! own version, and a registration dropped without leaving (a server error, a panic) is still
//! withdrawn, so Consul never keeps routing to a dead instance.

use std::{net::SocketAddr, time::Duration};

use consul_double::{ConsulDouble, DoubleConfig};
use discovery::{CheckTarget, ConsulSettings, RegistrationSettings};
use serde_json::Value;

async fn agent_services(url: &str) -> Value {
    reqwest::get(format!("{url}/v1/agent/services"))
        .await
        .expect("agent")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_registration_is_withdrawn_and_carries_the_version() {
    let double = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    let url = double.url();
    let consul = ConsulSettings {
        addr: url.clone(),
        ..ConsulSettings::default()
    };
    let bound: SocketAddr = "127.0.0.1:4242".parse().expect("addr");
    let settings = RegistrationSettings {
        weight: 3,
        meta: [("zone".to_owned(), "eu-1".to_owned())].into(),
        ..RegistrationSettings::default()
    };
    let planned = settings
        .plan(&consul, "demo-srv", "7.1.2", bound, |a| {
            CheckTarget::Http(format!("http://{a}/health"))
        })
        .expect("plan")
        .expect("registration on");
    let id = planned.id().to_owned();
    let registration = planned.start();
    test_support::eventually("registered", Duration::from_secs(10), || async {
        agent_services(&url).await.get(&id).is_some()
    })
    .await;
    let services = agent_services(&url).await;
    assert_eq!(services[&id]["Meta"]["version"], "7.1.2");
    assert_eq!(services[&id]["Meta"]["zone"], "eu-1");
    assert_eq!(
        services[&id]["Weights"],
        serde_json::json!({"Passing": 3, "Warning": 1})
    );

    drop(registration);
    test_support::eventually(
        "withdrawn after the drop",
        Duration::from_secs(10),
        || async { agent_services(&url).await.get(&id).is_none() },
    )
    .await;
}

/// Weights as a 1.10 agent takes them (the double answers so): none is `{1, 1}`, a lone
/// `Passing` leaves `Warning` 0, and the invalid ones are refused with Consul's texts.
#[tokio::test]
async fn weights_default_and_validate_as_consul_1_10_does() {
    let double = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    let url = double.url();
    let http = reqwest::Client::new();
    let register = |body: serde_json::Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .put(format!("{url}/v1/agent/service/register"))
                .body(body.to_string())
                .send()
                .await
                .expect("register");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(
        register(serde_json::json!({"ID": "a", "Name": "s"}))
            .await
            .0,
        200
    );
    assert_eq!(
        register(serde_json::json!({"ID": "b", "Name": "s", "Weights": {"Passing": 3}}))
            .await
            .0,
        200
    );
    let services = agent_services(&url).await;
    assert_eq!(
        services["a"]["Weights"],
        serde_json::json!({"Passing": 1, "Warning": 1})
    );
    assert_eq!(
        services["b"]["Weights"],
        serde_json::json!({"Passing": 3, "Warning": 0})
    );
    for (weights, text) in [
        (serde_json::json!({}), "Passing must be greater than 0"),
        (
            serde_json::json!({"Passing": 1, "Warning": -1}),
            "Warning must be greater or equal than 0",
        ),
        (
            serde_json::json!({"Passing": 65536}),
            "DNS Weight must be between 0 and 65535",
        ),
    ] {
        let (status, body) =
            register(serde_json::json!({"ID": "c", "Name": "s", "Weights": weights})).await;
        assert_eq!(status, 400, "{weights}");
        assert!(body.contains(text), "{body}");
    }
}

#[test]
fn weight_and_meta_follow_consul_rules_at_start() {
    let with = |weight: u32, key: &str| RegistrationSettings {
        weight,
        meta: [(key.to_owned(), "x".to_owned())].into(),
        ..RegistrationSettings::default()
    };
    assert!(with(1, "zone").validate().is_ok());
    for (settings, named) in [
        (with(0, "zone"), "weight"),
        (with(65536, "zone"), "weight"),
        (with(1, "consul-x"), "meta.consul-x"),
        (with(1, "a.b"), "meta.a.b"),
        (with(1, "version"), "meta.version"),
    ] {
        let err = settings.validate().expect_err("refused").to_string();
        assert!(err.contains(named), "{err}");
    }
}

/// The keep-registered check asks for its own service (Consul 1.3+), and tells "unknown"
/// from "no such endpoint".
#[tokio::test]
async fn one_service_is_read_by_id() {
    let double = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    let client = discovery::ConsulClient::new(&ConsulSettings {
        addr: double.url(),
        ..ConsulSettings::default()
    })
    .expect("client");
    let r = reqwest::Client::new()
        .put(format!("{}/v1/agent/service/register", double.url()))
        .body(r#"{"ID":"s-1","Name":"s","Port":1}"#)
        .send()
        .await
        .expect("register");
    assert!(r.status().is_success());
    assert_eq!(client.agent_service("s-1").await.ok(), Some(Some(())));
    assert_eq!(client.agent_service("s-2").await.ok(), Some(None));
}
