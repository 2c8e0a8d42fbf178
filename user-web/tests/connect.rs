//! Zero trust between the tiers: with Connect (on by default wherever the agent has it)
//! user-srv serves mutual TLS with its Consul leaf certificate and authorizes each caller by
//! intentions, and user-web dials it with its own leaf. On the double, or on the agent at
//! `CONSUL_HTTP_ADDR`.

mod support;

use std::time::Duration;

use discovery::{ConsulClient, ConsulSettings};
use kit::connect::{Connect, ConnectSettings};
use proto::user_v1::{
    CreateUserInfo, MobileRequest, PageInfo, UpdateUserInfo, user_client::UserClient,
};
use support::{ADMIN_MOBILE, Stack, eventually, get, steady_load};
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(15);

fn consul(stack: &Stack) -> ConsulClient {
    ConsulClient::new(&ConsulSettings {
        addr: stack.consul_url.clone(),
        ..ConsulSettings::default()
    })
    .expect("consul client")
}

/// Another service's Connect identity, as a caller of user-srv would have it.
async fn connect_as(stack: &Stack, service: &str) -> Connect {
    let settings = ConnectSettings {
        enabled: Some(true),
        ..ConnectSettings::default()
    };
    let consul = ConsulSettings {
        addr: stack.consul_url.clone(),
        ..ConsulSettings::default()
    };
    Connect::start(&settings, &consul, service, true)
        .await
        .expect("a leaf from the agent")
        .expect("Connect on")
}

/// The gateway's registered name: its Connect identity, the source of intentions.
fn web_name(stack: &Stack) -> String {
    stack.service.replacen("user-srv", "user-web", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_reads_nothing_and_user_web_is_served() {
    let stack = Stack::start(1, &[]).await;
    let token = stack.admin_token().await;
    let (status, body) = get(&stack, "/u/v1/user/list?pn=1&psize=5", Some(&token)).await;
    assert_eq!(status, 200, "user-web is served over Connect: {body}");

    // The calls of a plain gRPC client, as anyone on the network could make them.
    let addr = stack.srvs[0].addr;
    let calls_before = stack.srvs[0].stats.service_calls();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut plain = UserClient::new(channel);
    let by_mobile = plain
        .get_user_by_mobile(MobileRequest {
            mobile: ADMIN_MOBILE.into(),
        })
        .await;
    let created = plain
        .create_user(CreateUserInfo {
            mobile: "13900000027".into(),
            password: "pwned-pass".into(),
            nick_name: "intruder".into(),
        })
        .await;
    let updated = plain
        .update_user(UpdateUserInfo {
            id: 1,
            nick_name: Some("pwned".into()),
            ..UpdateUserInfo::default()
        })
        .await;
    let list = plain.get_user_list(PageInfo { pn: 1, p_size: 5 }).await;
    for (call, result) in [
        ("GetUserByMobile", by_mobile.map(drop)),
        ("CreateUser", created.map(drop)),
        ("UpdateUser", updated.map(drop)),
        ("GetUserList", list.map(drop)),
    ] {
        // The handshake fails: a transport error (its code depends on how the client
        // reads the TLS alert, or whether the connection had already been refused), never
        // an answer from the service.
        let status = result.expect_err(&format!("{call} without a certificate was answered"));
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{call} got an answer of the service's own: {status:?}"
        );
    }
    assert_eq!(
        stack.srvs[0].stats.service_calls(),
        calls_before,
        "nothing reached the service"
    );
    let (_, body) = get(&stack, "/u/v1/user/list?pn=1&psize=100", Some(&token)).await;
    let users = body["data"].as_array().expect("users");
    assert!(
        users
            .iter()
            .all(|u| u["mobile"] != "13900000027" && u["nick_name"] != "pwned"),
        "nothing was created or changed: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_an_allow_intention_is_refused_under_default_deny() {
    let stack = Stack::start(1, &[]).await;
    let consul = consul(&stack);
    // Default deny for user-srv, as a `service-intentions` wildcard does, and user-web allowed.
    consul
        .put_intention("*", &stack.service, false)
        .await
        .expect("deny all");
    consul
        .put_intention(&web_name(&stack), &stack.service, true)
        .await
        .expect("allow user-web");

    let stranger = connect_as(&stack, &format!("goods-web-{}", &stack.service[9..])).await;
    let mut client = UserClient::new(stranger.channel(&stack.service, stack.srvs[0].addr));
    let refused = client
        .get_user_by_mobile(MobileRequest {
            mobile: ADMIN_MOBILE.into(),
        })
        .await
        .expect_err("a service with no allow intention was answered");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("goods-web"), "{refused:?}");

    let token = stack.admin_token().await;
    let (status, body) = get(&stack, "/u/v1/user/list?pn=1&psize=5", Some(&token)).await;
    assert_eq!(status, 200, "the allowed gateway is served: {body}");

    // A certificate for any other service is refused by the caller too: user-srv's address
    // dialled as if it were another service fails the handshake.
    let mut confused = UserClient::new(stranger.channel("order-srv", stack.srvs[0].addr));
    let status = confused
        .get_user_list(PageInfo { pn: 1, p_size: 5 })
        .await
        .expect_err("a server with another service's certificate was trusted");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_intention_cuts_user_web_off_and_removing_it_restores_service() {
    let stack = Stack::start(2, &[]).await;
    let consul = consul(&stack);
    let token = stack.admin_token().await;
    let path = "/u/v1/user/list?pn=1&psize=5";
    assert_eq!(get(&stack, path, Some(&token)).await.0, 200);

    consul
        .put_intention(&web_name(&stack), &stack.service, false)
        .await
        .expect("deny");
    eventually("user-web is cut off (503)", DEADLINE, || async {
        get(&stack, path, Some(&token)).await.0 == 503
    })
    .await;

    consul
        .delete_intention(&web_name(&stack), &stack.service)
        .await
        .expect("delete");
    eventually("user-web is served again", DEADLINE, || async {
        get(&stack, path, Some(&token)).await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotation_under_load_loses_no_request() {
    let stack = Stack::start(2, &[]).await;
    let consul = consul(&stack);
    let token = stack.admin_token().await;
    let (before, _) = consul.connect_roots(None, None).await.expect("roots");

    let (rotated_tx, rotated_rx) = tokio::sync::oneshot::channel::<()>();
    let load = steady_load(&stack, "/u/v1/user/list?pn=1&psize=5", &token, 4, async {
        let _ = rotated_rx.await;
    });
    let rotate = async {
        consul
            .rotate_ca(&consul_double::new_ca_key_pem())
            .await
            .expect("rotate");
        let (after, _) = consul.connect_roots(None, None).await.expect("roots");
        assert_ne!(after.active_root_id, before.active_root_id, "a new root");
        if stack.consul.double().is_some() {
            // The double renews leaves within 2 s (a real agent: 0-30 s, or, on 1.10.3, maybe
            // never): the renewed leaf chains to the new root through the cross-signed one.
            let service = stack.service.clone();
            eventually("user-srv's leaf is renewed", DEADLINE, || async {
                let (leaf, _) = consul
                    .connect_leaf(&service, None, None)
                    .await
                    .expect("leaf");
                leaf.cert_pem.matches("BEGIN CERTIFICATE").count() == 2
            })
            .await;
        }
        // A new instance with the certificate the agent gives now joins, and is called over
        // new connections.
        let added = support::start_srv(&stack.service, &stack.consul_url, &stack.db_url).await;
        let stats = added.stats.clone();
        eventually("the new instance is called", DEADLINE, || {
            let called = stats.service_calls() > 0;
            async move { called }
        })
        .await;
        let _ = rotated_tx.send(());
        added
    };
    let ((ok, failed), mut added) = tokio::join!(load, rotate);
    added.stop().await;
    assert!(ok > 0, "the load ran");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
}
