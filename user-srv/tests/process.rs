//! The real binary as an operator runs it: `seed`, then `user-srv --port 0` with no other
//! set-up (SQLite under ./data), its logged address, and a clean exit on SIGTERM and SIGINT.

mod support;

use std::{process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use proto::user_v1::{PageInfo, user_client::UserClient};
use support::process::{bound_address, user_srv, wait_exit};

const DEADLINE: Duration = Duration::from_secs(20);

async fn seed_serve_and_stop(signal: Signal) {
    let dir = tempfile::tempdir().expect("temp dir");
    let seeded = user_srv(dir.path())
        .args(["seed", "--users", "3", "--admin-mobile", "18800000000"])
        .args(["--admin-password", "admin-pass"])
        .output()
        .expect("run seed");
    assert!(seeded.status.success(), "{seeded:?}");

    let mut child = user_srv(dir.path())
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start user-srv");
    let (addr, logs) = bound_address(&mut child, dir.path()).await;
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert!(
        dir.path().join("data/users.db").exists(),
        "default SQLite file created"
    );

    let mut client = UserClient::new(support::channel(addr));
    let list = client
        .get_user_list(PageInfo { pn: 1, p_size: 10 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.total, 4, "3 demo users and the admin");

    nix::sys::signal::kill(Pid::from_raw(child.id() as i32), signal).expect("signal");
    let status = wait_exit(&mut child).await;
    assert_eq!(status.code(), Some(0), "exit status after {signal}");
    // The reader thread ends at EOF, which the exit brings: this collects every last line.
    let logs: Vec<String> = std::iter::from_fn(|| logs.recv_timeout(DEADLINE).ok()).collect();
    assert!(
        logs.iter().any(|l| l.contains("user-srv stopped")),
        "{logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("drain timed out")),
        "an idle client connection must not hold the drain: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_with_no_setup_and_exits_zero_on_sigterm() {
    seed_serve_and_stop(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_zero_on_sigint() {
    seed_serve_and_stop(Signal::SIGINT).await;
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = user_srv(dir.path())
        .args(["--port", &port])
        .output()
        .expect("run user-srv");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}
