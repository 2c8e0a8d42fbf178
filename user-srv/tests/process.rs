//! The real binary as an operator runs it: `seed`, then `user-srv --port 0` with no other
//! set-up (SQLite under ./data), its logged address, and a clean exit on SIGTERM and SIGINT.

mod support;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use proto::user_v1::{PageInfo, user_client::UserClient};

const DEADLINE: Duration = Duration::from_secs(20);

fn user_srv(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_user-srv"));
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("LOG_FORMAT")
        .env("RUST_LOG", "info");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("USER_SRV__")) {
        cmd.env_remove(key);
    }
    cmd
}

/// Reads the child's stdout on a thread; returns the address from the "listening" line and
/// the receiver of every later line.
fn bound_address(child: &mut Child) -> (SocketAddr, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the receiver is gone, so the child never writes to a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("a 'listening' log line in time");
        if line.contains("user-srv listening") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .expect("addr= in the listening line");
            return (addr.parse().expect("a socket address"), rx);
        }
    }
}

/// Polls without blocking the runtime: the client's connection task must keep running to
/// answer the server's graceful-shutdown handshake (GOAWAY and PING).
async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "user-srv did not exit in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    let (addr, logs) = bound_address(&mut child);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert!(
        dir.path().join("data/users.db").exists(),
        "default SQLite file created"
    );

    let mut client = UserClient::new(support::channel(addr).await);
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
