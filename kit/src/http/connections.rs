//! The HTTP edge's accept loop: hyper with a header-read timeout (a client that sends half a
//! request head, or idles on a keep-alive connection, is closed after it), a cap on
//! connections served at once (beyond it, new ones wait in the listen queue, and the first
//! wait is logged), the client's address for handlers, and a graceful drain on stop.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo, http::Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};

use super::HttpMetrics;

/// The limits a server applies to its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` resolves, then lets open connections finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: HttpMetrics,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    metrics.connection_limit(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(stop);
    let mut full_since_logged = false;
    loop {
        // A slot first, then a connection: at the cap, clients wait in the listen queue.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                full_since_logged = false;
                permit
            }
            Err(_) => {
                if !full_since_logged {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                    full_since_logged = true;
                }
                tokio::select! {
                    () = &mut stop => break,
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, remote) = tokio::select! {
            () = &mut stop => break,
            accepted = crate::lifecycle::accept(&listener) => accepted,
        };
        let service =
            tower::ServiceExt::map_request(app.clone(), move |mut request: Request<_>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request
            });
        let service = tower::ServiceExt::map_err(service, |e: Infallible| match e {});
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        let open = metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection counted in the metrics while it is open.
#[derive(Debug)]
pub(crate) struct Open(HttpMetrics);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

impl HttpMetrics {
    pub(crate) fn connection_opened(&self) -> Open {
        self.connection_gauge().inc();
        Open(self.clone())
    }

    fn connection_closed(&self) {
        self.connection_gauge().dec();
    }
}
