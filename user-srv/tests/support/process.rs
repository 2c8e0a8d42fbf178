//! The user-srv binary as a child process: start it, read its bound address from its
//! `--ready-file` (the documented readiness contract), wait for its exit without blocking the
//! async runtime.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command},
    sync::mpsc,
    time::{Duration, Instant},
};

const DEADLINE: Duration = Duration::from_secs(20);

/// The binary with a clean environment for its settings (no inherited DATABASE_URL,
/// USER_SRV__*, CONSUL_HTTP_ADDR) and Consul registration off unless the caller turns it on.
pub fn user_srv(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_user-srv"));
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("LOG_FORMAT")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env("RUST_LOG", "info");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("USER_SRV__")) {
        cmd.env_remove(key);
    }
    cmd.env("USER_SRV__REGISTRATION__ENABLED", "false");
    cmd.arg("--ready-file").arg(ready_file(dir));
    cmd
}

/// Where a child started by [`user_srv`] in `dir` writes its address once serving.
pub fn ready_file(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("user-srv.ready")
}

/// Reads the child's stdout on a thread, and its address from the ready file in `dir`;
/// returns the address and the receiver of every log line.
pub async fn bound_address(
    child: &mut Child,
    dir: &std::path::Path,
) -> (SocketAddr, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the receiver is gone, so the child never writes to a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (
        test_support::ready_address(&ready_file(dir), DEADLINE).await,
        rx,
    )
}

/// Polls without blocking the runtime: the client's connection task must keep running to
/// answer the server's graceful-shutdown handshake (GOAWAY and PING).
pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "user-srv did not exit in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
