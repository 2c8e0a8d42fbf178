//! Runs checks the way an agent does: each gRPC/HTTP/TCP check probes its target on its
//! interval (after a random first stagger), TTL checks expire, and the reaper removes
//! services that stayed critical past DeregisterCriticalServiceAfter.

use std::{sync::Arc, time::Duration};

use rand::Rng;
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    Shared,
    state::{Probe, Status},
};

/// Starts the probe task of check `id`, if it is one that probes.
pub(crate) fn spawn_probe(shared: &Arc<Shared>, id: &str) -> Option<tokio::task::AbortHandle> {
    let (probe, interval, timeout) = {
        let state = shared.lock();
        let c = state.checks.get(id)?;
        (c.probe.clone(), c.interval, c.timeout)
    };
    if probe == Probe::Ttl || interval.is_zero() {
        return None;
    }
    let shared = Arc::clone(shared);
    let id = id.to_owned();
    let task = tokio::spawn(async move {
        let stagger = rand::rng().random_range(Duration::ZERO..interval);
        tokio::time::sleep(stagger).await;
        loop {
            let (status, output) = run_probe(&shared, &probe, timeout).await;
            {
                let mut state = shared.lock();
                if !state.set_check(&id, status, output) {
                    return;
                }
                let index = state.index;
                drop(state);
                shared.notify(index);
            }
            tokio::time::sleep(interval).await;
        }
    });
    Some(task.abort_handle())
}

async fn run_probe(shared: &Shared, probe: &Probe, timeout: Duration) -> (Status, String) {
    match probe {
        Probe::Grpc { target, tls } => grpc(target, *tls, timeout).await,
        Probe::Http { url } => http(&shared.http, url, timeout).await,
        Probe::Tcp { addr } => tcp(addr, timeout).await,
        Probe::Ttl => (Status::Critical, String::new()),
    }
}

const GRPC_UNREACHABLE: &str =
    "rpc error: code = Unavailable desc = all SubConns are in TransientFailure";

async fn grpc(target: &str, tls: bool, timeout: Duration) -> (Status, String) {
    let (addr, service) = match target.split_once('/') {
        Some((addr, service)) => (addr, service.to_owned()),
        None => (target, String::new()),
    };
    // A plaintext-only probe cannot speak TLS: like Consul against a plaintext server, a TLS
    // check here fails as unreachable.
    let channel = if tls || !addr.contains(':') {
        None
    } else {
        match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
            Ok(endpoint) => {
                tokio::time::timeout(timeout, endpoint.connect_timeout(timeout).connect())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        }
    };
    let Some(channel) = channel else {
        return (Status::Critical, GRPC_UNREACHABLE.into());
    };
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest { service });
    match tokio::time::timeout(timeout, call).await {
        Err(_) => (
            Status::Critical,
            "rpc error: code = DeadlineExceeded desc = context deadline exceeded".into(),
        ),
        Ok(Err(status)) => (
            Status::Critical,
            format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            ),
        ),
        Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => {
            (Status::Passing, format!("gRPC check {target}: success"))
        }
        // Consul 1.10's wording (1.0.8 said "gRPC application didn't report service healthy").
        Ok(Ok(response)) => (
            Status::Critical,
            format!(
                "gRPC {target} serving status: {}",
                ServingStatus::try_from(response.get_ref().status)
                    .map_or("UNKNOWN", |s| s.as_str_name())
            ),
        ),
    }
}

async fn http(client: &reqwest::Client, url: &str, timeout: Duration) -> (Status, String) {
    let response = match client.get(url).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => return (Status::Critical, format!("Get {url}: {e}")),
    };
    let code = response.status();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(4096).collect();
    let status = if code.is_success() {
        Status::Passing
    } else if code.as_u16() == 429 {
        Status::Warning
    } else {
        Status::Critical
    };
    let reason = code.canonical_reason().unwrap_or("");
    (
        status,
        format!("HTTP GET {url}: {} {reason} Output: {body}", code.as_u16()),
    )
}

async fn tcp(addr: &str, timeout: Duration) -> (Status, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (Status::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (Status::Critical, format!("dial tcp {addr}: {e}")),
        Err(_) => (Status::Critical, format!("dial tcp {addr}: i/o timeout")),
    }
}

/// TTL expiry (checked every 50 ms) and the critical-service reaper (every `reap_interval`).
pub(crate) async fn ticker(shared: Arc<Shared>) {
    let mut last_reap = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut state = shared.lock();
        let before = state.index;
        state.expire_ttls(now.into_std());
        if now.duration_since(last_reap) >= shared.config.reap_interval {
            last_reap = now;
            for id in state.reapable(now.into_std(), shared.config.deregister_minimum) {
                tracing::info!(service_id = %id, "reaping a service critical for too long");
                state.deregister(&id);
            }
        }
        let after = state.index;
        drop(state);
        if after != before {
            shared.notify(after);
        }
    }
}
