//! The part of a server's life every runner shares: announce readiness, register, wait for
//! the stop signal or the server's own end, then, whatever ended it, leave Consul, stop
//! accepting and drain within a bound. The runners (`grpc`, `http`) only build the server.

use std::{future::Future, net::SocketAddr, path::Path, time::Duration};

use discovery::Planned;
use tokio::{
    sync::oneshot,
    task::{JoinError, JoinHandle},
};

/// The next connection on `listener`, with Nagle off (answers are small and latency-bound).
/// Accept errors (out of descriptors and the like) are logged and waited out, not spun on.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                return (stream, remote);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How a server's life ended.
#[derive(Debug)]
pub(crate) enum Ended<R> {
    /// The server task ended on its own (an error, or a panic) before any stop signal.
    Failed(Result<R, JoinError>),
    /// The ready file could not be written; the server was stopped.
    ReadyFile(std::io::Error),
    /// Stopped on the signal, and drained in time.
    Drained(Result<R, JoinError>),
    /// Stopped on the signal; the drain ran out of time and the rest was abandoned.
    DrainTimedOut,
}

/// A spawned server and what belongs to it until it ends.
#[derive(Debug)]
pub(crate) struct Serving<R> {
    pub server: JoinHandle<R>,
    /// Sent once, to make the server stop accepting and drain.
    pub stop_accepting: oneshot::Sender<()>,
    pub registration: Option<Planned>,
    pub drain: Duration,
}

impl<R> Serving<R> {
    /// Registers and writes the ready file, waits for `shutdown` or the server's end, runs
    /// `withdraw` (e.g. health NOT_SERVING), then leaves Consul (on every path), stops
    /// accepting and drains.
    pub async fn until_stopped(
        self,
        ready_file: Option<&Path>,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()>,
        withdraw: impl FnOnce(),
    ) -> Ended<R> {
        let mut server = self.server;
        let registration = self.registration.map(Planned::start);
        let early = match crate::announce_ready(ready_file, addr) {
            Err(e) => Some(Ended::ReadyFile(e)),
            Ok(()) => tokio::select! {
                () = shutdown => None,
                finished = &mut server => Some(Ended::Failed(finished)),
            },
        };
        tracing::info!("shutting down");
        withdraw();
        // Leave Consul before draining, so no new traffic is routed to an instance that is
        // about to go; on a failure too. A Consul failure never holds the exit.
        if let Some(registration) = registration {
            registration.leave().await;
        }
        let _ = self.stop_accepting.send(());
        if let Some(ended) = early {
            server.abort();
            return ended;
        }
        match tokio::time::timeout(self.drain, &mut server).await {
            Ok(finished) => Ended::Drained(finished),
            Err(_) => {
                server.abort();
                Ended::DrainTimedOut
            }
        }
    }
}
