//! `grpc.health.v1.Health` for this process. Unlike tonic-health's stock service, Watch
//! streams end once shutdown begins (after sending the final NOT_SERVING), so an open watcher
//! such as a load balancer cannot hold the process past its drain.

use std::{collections::HashMap, pin::Pin, sync::Arc};

use futures_util::{Stream, stream};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{self, HealthServer},
};

/// Shared, cheaply cloned serving state of a fixed set of service names.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    services: HashMap<String, watch::Sender<ServingStatus>>,
    /// Flipped to `true` once, at shutdown: every Watch stream ends after it.
    closed: watch::Sender<bool>,
}

impl Health {
    /// Knows `services` (use `""` for the whole server), all NOT_SERVING until told otherwise.
    pub fn new<'a>(services: impl IntoIterator<Item = &'a str>) -> Self {
        let services = services
            .into_iter()
            .map(|name| (name.to_owned(), watch::channel(ServingStatus::NotServing).0))
            .collect();
        Self {
            inner: Arc::new(Inner {
                services,
                closed: watch::channel(false).0,
            }),
        }
    }

    pub fn set_all(&self, status: ServingStatus) {
        for tx in self.inner.services.values() {
            tx.send_replace(status);
        }
    }

    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.inner.services.get(service).map(|tx| *tx.borrow())
    }

    /// Ends every open Watch stream once it has delivered the latest status.
    pub fn close_watches(&self) {
        self.inner.closed.send_replace(true);
    }

    pub fn server(&self) -> HealthServer<Self> {
        HealthServer::new(self.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(std::net::SocketAddr, String),
    #[error("{0} answered {1:?}")]
    NotServing(std::net::SocketAddr, ServingStatus),
}

/// Asks the health service at `addr` about the whole server (`""`), within 2 s.
pub async fn probe(addr: std::net::SocketAddr) -> Result<(), ProbeError> {
    use tonic_health::pb::health_client::HealthClient;
    let unreachable = |e: String| ProbeError::Unreachable(addr, e);
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok::<i32, ProbeError>(response.into_inner().status)
    };
    let status = tokio::time::timeout(std::time::Duration::from_secs(2), ask)
        .await
        .map_err(|_| unreachable("no answer within 2s".into()))??;
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(ProbeError::NotServing(addr, other)),
        Err(_) => Err(ProbeError::NotServing(addr, ServingStatus::Unknown)),
    }
}

fn reply(status: ServingStatus) -> Result<HealthCheckResponse, Status> {
    Ok(HealthCheckResponse {
        status: status as i32,
    })
}

/// The next status change, or `None` when the sender is gone. An unknown service never changes.
async fn next_change(rx: &mut Option<watch::Receiver<ServingStatus>>) -> Option<ServingStatus> {
    match rx {
        Some(rx) => rx.changed().await.ok().map(|()| *rx.borrow_and_update()),
        None => std::future::pending().await,
    }
}

type WatchState = (
    Option<watch::Receiver<ServingStatus>>,
    watch::Receiver<bool>,
);

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.status(&service) {
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: status as i32,
            })),
            None => Err(Status::not_found(format!("unknown service {service:?}"))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let mut rx = self
            .inner
            .services
            .get(&service)
            .map(watch::Sender::subscribe);
        let first = match &mut rx {
            Some(rx) => *rx.borrow_and_update(),
            None => ServingStatus::ServiceUnknown,
        };
        let closed = self.inner.closed.subscribe();
        let changes = stream::unfold(Some((rx, closed)), |state: Option<WatchState>| async move {
            let (mut rx, mut closed) = state?;
            let changed = tokio::select! {
                // A change that races with closing is still delivered first.
                biased;
                changed = next_change(&mut rx) => changed,
                _ = closed.wait_for(|closed| *closed) => None,
            };
            changed.map(|s| (reply(s), Some((rx, closed))))
        });
        let first = stream::iter([reply(first)]);
        Ok(Response::new(Box::pin(futures_util::StreamExt::chain(
            first, changes,
        ))))
    }
}
