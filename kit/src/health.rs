//! `grpc.health.v1.Health` for one server: the whole server (`""`) and every service added
//! to it, by the service type's own name. Unlike tonic-health's stock service, Watch streams
//! end once shutdown begins (after sending the final NOT_SERVING), so an open watcher such as
//! a load balancer cannot hold the process past its drain.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
};

use futures_util::{Stream, stream};
use tokio::sync::watch;
use tonic::{Request, Response, Status, server::NamedService};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_check_response::ServingStatus,
    health_server::{self, HealthServer},
};

/// Shared, cheaply cloned serving state of the server and its services.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    services: RwLock<HashMap<String, watch::Sender<ServingStatus>>>,
    /// Flipped to `true` once, at shutdown: every Watch stream ends after it.
    closed: watch::Sender<bool>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Knows the whole server (`""`), NOT_SERVING until told otherwise.
    pub fn new() -> Self {
        let services =
            HashMap::from([(String::new(), watch::channel(ServingStatus::NotServing).0)]);
        Self {
            inner: Arc::new(Inner {
                services: RwLock::new(services),
                closed: watch::channel(false).0,
            }),
        }
    }

    /// Answers for service `S` from now on, with the server's current status.
    pub fn add<S: NamedService>(&self) {
        let mut services = self
            .inner
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let current = services
            .get("")
            .map_or(ServingStatus::NotServing, |tx| *tx.borrow());
        services
            .entry(S::NAME.to_owned())
            .or_insert_with(|| watch::channel(current).0);
    }

    pub fn set_all(&self, status: ServingStatus) {
        let services = self
            .inner
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for tx in services.values() {
            tx.send_replace(status);
        }
    }

    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        let services = self
            .inner
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        services.get(service).map(|tx| *tx.borrow())
    }

    fn subscribe(&self, service: &str) -> Option<watch::Receiver<ServingStatus>> {
        let services = self
            .inner
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        services.get(service).map(watch::Sender::subscribe)
    }

    /// Ends every open Watch stream once it has delivered the latest status.
    pub fn close_watches(&self) {
        self.inner.closed.send_replace(true);
    }

    pub fn server(&self) -> HealthServer<Self> {
        HealthServer::new(self.clone())
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
        let mut rx = self.subscribe(&service);
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
