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
    let planned = RegistrationSettings::default()
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

    drop(registration);
    test_support::eventually(
        "withdrawn after the drop",
        Duration::from_secs(10),
        || async { agent_services(&url).await.get(&id).is_none() },
    )
    .await;
}
