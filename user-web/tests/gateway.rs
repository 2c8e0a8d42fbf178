//! user-web end to end: Consul-resolved round-robin over real user-srv instances, instances
//! joining, leaving (SIGTERM-equivalent) and dying (SIGKILL) under load, and Consul going
//! away and coming back.

mod support;

use std::{process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use support::{Stack, eventually, get, login, steady_load, user_srv_binary};

const LIST: &str = "/u/v1/user/list?pn=1&psize=10";

/// Not one request of the load failed.
fn assert_none_failed(ok: usize, failed: &[String]) {
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_as_admin_and_list_users_through_three_instances() {
    let stack = Stack::start(3, &[]).await;
    let (status, body) = login(&stack, support::ADMIN_MOBILE, support::ADMIN_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nick_name"], "admin");
    assert!(body["expired_at"].as_u64().is_some());
    let token = body["token"].as_str().expect("token");

    let (status, list) = get(&stack, LIST, Some(token)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], u64::from(support::DEMO_USERS) + 1);
    let data = list["data"].as_array().expect("data");
    assert_eq!(data.len(), 10);
    assert_eq!(data[0]["mobile"], support::ADMIN_MOBILE);
    assert_eq!(data[0]["birthday"], serde_json::Value::Null);
    let birthday = data[1]["birthday"].as_str().expect("a demo birthday");
    assert!(
        birthday.len() == 10 && birthday.as_bytes()[4] == b'-',
        "{birthday}"
    );
    assert!(
        data.iter().all(|u| u.get("password").is_none()),
        "no hashes leave user-web"
    );

    // A new user registers, reads themself, and may not list.
    let r = support::http()
        .post(stack.url("/u/v1/user/register"))
        .json(&serde_json::json!({"mobile": "13912345678", "password": "new-user-pass"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status().as_u16(), 201);
    let created: serde_json::Value = r.json().await.expect("json");
    let user_token = created["token"].as_str().expect("token");
    let id = created["id"].as_i64().expect("id");
    let (status, me) = get(&stack, &format!("/u/v1/user/{id}"), Some(user_token)).await;
    assert_eq!((status, me["mobile"].as_str()), (200, Some("13912345678")));
    assert_eq!(get(&stack, LIST, Some(user_token)).await.0, 403);
}

/// `n` list calls as the admin, each answered 200; the calls each instance served for them.
async fn lists_served(stack: &Stack, n: usize) -> Vec<u64> {
    let token = stack.admin_token().await;
    let before: Vec<u64> = stack.srvs.iter().map(|s| s.stats.service_calls()).collect();
    for _ in 0..n {
        assert_eq!(get(stack, LIST, Some(&token)).await.0, 200);
    }
    stack
        .srvs
        .iter()
        .zip(&before)
        .map(|(s, b)| s.stats.service_calls() - b)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_calls_over_three_instances_are_ten_each() {
    let stack = Stack::start(3, &[]).await;
    let served = lists_served(&stack, 30).await;
    assert_eq!(served, [10, 10, 10], "counted on the user-srv side");
}

/// Two instances registered with weights 3 and 1, once both are in rotation.
async fn weights_3_and_1(stack: &mut Stack) -> (usize, usize) {
    let heavy = stack
        .add_srv_with(&[("USER_SRV__REGISTRATION__WEIGHT", "3")])
        .await;
    let light = stack
        .add_srv_with(&[("USER_SRV__REGISTRATION__WEIGHT", "1")])
        .await;
    let ids = [stack.srvs[heavy].id.clone(), stack.srvs[light].id.clone()];
    eventually("both in rotation", Duration::from_secs(10), || {
        let rotation = stack.rotation();
        let ok = ids.iter().all(|id| rotation.contains(id));
        async move { ok }
    })
    .await;
    (heavy, light)
}

/// Weights registered from each instance's settings reach user-web through Consul: under
/// `weighted_round_robin`, weights 3 and 1 split the calls 3:1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_weights_3_and_1_split_the_calls_3_to_1() {
    let mut stack = Stack::start(
        0,
        &[(
            "USER_WEB__UPSTREAM__BALANCER__POLICY",
            "weighted_round_robin",
        )],
    )
    .await;
    let (heavy, light) = weights_3_and_1(&mut stack).await;
    let served = lists_served(&stack, 40).await;
    assert_eq!(
        (served[heavy], served[light]),
        (30, 10),
        "counted on the user-srv side"
    );
}

/// The config center: the balancer policy changes live through Consul KV. Before, round-robin
/// splits 40 calls 20/20 over weights 3 and 1; after one PUT, weighted round-robin splits
/// them 30/10, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_put_in_consul_kv_changes_the_split_live() {
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let mut stack = Stack::start(
        0,
        &[
            ("USER_WEB__CONSUL__CONFIG__ENABLED", "true"),
            ("USER_WEB__CONSUL__CONFIG__PREFIX", &prefix),
            ("USER_WEB__CONSUL__CONFIG__WAIT", "5s"),
        ],
    )
    .await;
    let (heavy, light) = weights_3_and_1(&mut stack).await;
    let served = lists_served(&stack, 40).await;
    assert_eq!((served[heavy], served[light]), (20, 20), "round-robin");

    let key = format!("{prefix}/user-web/data");
    let put = support::http()
        .put(format!("{}/v1/kv/{key}", stack.consul_url))
        .body("[upstream.balancer]\npolicy = \"weighted_round_robin\"\n")
        .send()
        .await
        .expect("consul answers");
    assert!(put.status().is_success(), "{put:?}");
    eventually("the new policy is applied", Duration::from_secs(10), || {
        let ok = stack.web.users.balancer().policy() == discovery::Policy::WeightedRoundRobin;
        async move { ok }
    })
    .await;
    assert_eq!(stack.live.status().documents, std::slice::from_ref(&key));
    let served = lists_served(&stack, 40).await;
    assert_eq!(
        (served[heavy], served[light]),
        (30, 10),
        "weighted round-robin, counted on the user-srv side"
    );
    let _ = support::http()
        .delete(format!("{}/v1/kv/{key}", stack.consul_url))
        .send()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_instance_is_in_rotation_within_a_second_of_passing() {
    let mut stack = Stack::start(2, &[]).await;
    let i = stack.add_srv().await;
    let id = stack.srvs[i].id.clone();
    let url = format!(
        "{}/v1/health/service/{}?passing",
        stack.consul_url, stack.service
    );
    eventually("passing in Consul", Duration::from_secs(10), || async {
        let body: serde_json::Value = support::http()
            .get(&url)
            .send()
            .await
            .expect("consul")
            .json()
            .await
            .expect("json");
        body.as_array()
            .is_some_and(|a| a.iter().any(|e| e["Service"]["ID"] == id.as_str()))
    })
    .await;
    eventually("in user-web's rotation", Duration::from_secs(1), || {
        let ok = stack.rotation().contains(&id);
        async move { ok }
    })
    .await;
    let token = stack.admin_token().await;
    let before = stack.srvs[i].stats.service_calls();
    for _ in 0..6 {
        assert_eq!(get(&stack, LIST, Some(&token)).await.0, 200);
    }
    assert_eq!(
        stack.srvs[i].stats.service_calls() - before,
        2,
        "its share of a 3-way rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_shut_down_under_load_loses_no_request() {
    let mut stack = Stack::start(3, &[]).await;
    let token = stack.admin_token().await;
    let mut leaving = stack.srvs.remove(0);
    let stats = leaving.stats.clone();
    let before = stats.service_calls();
    let stack_ref = &stack;
    let (ok, failed) = steady_load(stack_ref, LIST, &token, 4, async {
        // It stops while it has its share of the load, not before the load reached it.
        eventually(
            "the leaving instance serves the load",
            Duration::from_secs(10),
            || {
                let served = stats.service_calls() - before;
                async move { served >= 10 }
            },
        )
        .await;
        leaving.stop().await;
        let after = stack_ref.srvs[0].stats.service_calls();
        eventually("the others serve on", Duration::from_secs(10), || {
            let served = stack_ref.srvs[0].stats.service_calls() - after;
            async move { served >= 10 }
        })
        .await;
    })
    .await;
    assert!(stats.service_calls() - before >= 10, "it had traffic");
    assert_none_failed(ok, &failed);
}

/// `upstream_calls_total` for one instance, with outcome `OK` (or any), from `/metrics`.
async fn calls_to(stack: &Stack, instance: &str, ok_only: bool) -> u64 {
    let text = stack.metrics().await;
    let needle = format!("instance=\"{instance}\",code=\"");
    text.lines()
        .filter(|l| l.starts_with("upstream_calls_total") && l.contains(&needle))
        .filter(|l| !ok_only || l.contains("code=\"OK\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn ok_calls_to(stack: &Stack, instance: &str) -> u64 {
    calls_to(stack, instance, true).await
}

/// A user-srv binary registered in the stack's Consul, in rotation, and its instance ID.
async fn child_srv(stack: &Stack, dir: &std::path::Path) -> (std::process::Child, String) {
    let child = std::process::Command::new(user_srv_binary())
        .current_dir(dir)
        .envs(support::srv_env(
            &stack.service,
            &stack.consul_url,
            &stack.db_url,
        ))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start user-srv");
    let known: Vec<String> = stack.srvs.iter().map(|s| s.id.clone()).collect();
    let want = known.len() + 1;
    eventually(
        "the process instance in rotation",
        Duration::from_secs(10),
        || {
            let n = stack.rotation().len();
            async move { n == want }
        },
    )
    .await;
    let id = stack
        .rotation()
        .into_iter()
        .find(|id| !known.contains(id))
        .expect("the child's instance ID");
    (child, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_under_load_loses_no_request() {
    let stack = Stack::start(2, &[]).await;
    let token = stack.admin_token().await;
    let dir = tempfile::tempdir().expect("dir");
    let (mut child, victim) = child_srv(&stack, dir.path()).await;
    let pid = Pid::from_raw(child.id() as i32);
    let stack_ref = &stack;
    let (ok, failed) = steady_load(stack_ref, LIST, &token, 4, async {
        eventually(
            "the doomed instance serves the load",
            Duration::from_secs(10),
            || async { ok_calls_to(stack_ref, &victim).await >= 10 },
        )
        .await;
        nix::sys::signal::kill(pid, Signal::SIGKILL).expect("kill");
        let after: u64 = stack_ref.srvs.iter().map(|s| s.stats.service_calls()).sum();
        eventually("the others serve on", Duration::from_secs(10), || {
            let served: u64 = stack_ref.srvs.iter().map(|s| s.stats.service_calls()).sum();
            async move { served >= after + 40 }
        })
        .await;
    })
    .await;
    let _ = child.wait();
    assert!(ok_calls_to(&stack, &victim).await >= 10, "it had traffic");
    assert_none_failed(ok, &failed);
}

/// A frozen process still accepts connections, so its calls hang: its first timeouts eject
/// it, it gets no new call while frozen (at most the few already in flight end after the
/// ejection), and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_is_ejected_after_its_first_timeouts_and_loses_no_request() {
    const WORKERS: usize = 4;
    let stack = Stack::start(2, &[]).await;
    let token = stack.admin_token().await;
    let dir = tempfile::tempdir().expect("dir");
    let (mut child, victim) = child_srv(&stack, dir.path()).await;
    let pid = Pid::from_raw(child.id() as i32);
    let stack_ref = &stack;
    let victim_ref = victim.as_str();
    let mut after_ejection = 0;
    let (ok, failed) = steady_load(stack_ref, LIST, &token, WORKERS, async {
        eventually(
            "the instance serves the load",
            Duration::from_secs(10),
            || async { ok_calls_to(stack_ref, victim_ref).await >= 10 },
        )
        .await;
        nix::sys::signal::kill(pid, Signal::SIGSTOP).expect("stop");
        eventually("ejected", Duration::from_secs(5), || {
            let out = !stack_ref.rotation().iter().any(|id| id == victim_ref);
            async move { out }
        })
        .await;
        let at_ejection = calls_to(stack_ref, victim_ref, false).await;
        let served: u64 = stack_ref.srvs.iter().map(|s| s.stats.service_calls()).sum();
        eventually("the others serve on", Duration::from_secs(10), || {
            let now: u64 = stack_ref.srvs.iter().map(|s| s.stats.service_calls()).sum();
            async move { now >= served + 60 }
        })
        .await;
        after_ejection = calls_to(stack_ref, victim_ref, false).await - at_ejection;
        nix::sys::signal::kill(pid, Signal::SIGCONT).expect("continue");
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        after_ejection <= WORKERS as u64,
        "{after_ejection} calls reached the frozen instance after its ejection"
    );
    assert_none_failed(ok, &failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_while_consul_is_away_and_the_watch_resumes() {
    let mut stack = Stack::start(2, &[]).await;
    let Some(double) = stack.consul.take_double() else {
        return;
    };
    let token = stack.admin_token().await;
    let addr = double.addr();
    double.stop().await;
    for _ in 0..10 {
        assert_eq!(
            get(&stack, LIST, Some(&token)).await.0,
            200,
            "served from the last known instances"
        );
    }
    let double =
        consul_double::ConsulDouble::start_on(addr, consul_double::DoubleConfig::default())
            .await
            .expect("Consul back");
    // The instances register again (resync 3 s) and the watcher picks them up.
    let ids: Vec<String> = stack.srvs.iter().map(|s| s.id.clone()).collect();
    eventually(
        "rotation rebuilt from the returned agent",
        Duration::from_secs(15),
        || {
            let rotation = stack.rotation();
            let ok = ids.iter().all(|id| rotation.contains(id));
            async move { ok }
        },
    )
    .await;
    let joined = stack.add_srv().await;
    let id = stack.srvs[joined].id.clone();
    eventually(
        "a new instance joins via the resumed watch",
        Duration::from_secs(10),
        || {
            let ok = stack.rotation().contains(&id);
            async move { ok }
        },
    )
    .await;
    // A new double is a new Consul cluster with a CA of its own (as a restarted dev agent
    // is): every tier follows its roots and gets a new leaf, and calls succeed again.
    eventually(
        "served by the new CA's certificates",
        Duration::from_secs(20),
        || async { get(&stack, LIST, Some(&token)).await.0 == 200 },
    )
    .await;
    drop(double);
}
