//! The running gateway: the kit's HTTP edge around the routes, @name@-srv followed in Consul.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::Router;
use discovery::{ConsulClient, ConsulError};
use kit::{
    config::center::Live,
    connect::{Connect, ConnectError},
    http::{HttpMetrics, HttpServer},
    upstream::Upstream,
};
use proto::{@snake@::v1::@snake@_client::@Camel@Client, user_v1::Role};
use utoipa::OpenApi;

use crate::{
    config::Settings,
    routes::{self, ApiDoc},
    state::{AppState, Shared},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Server(#[from] kit::StartError),
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot render the OpenAPI document: {0}")]
    OpenApi(#[from] serde_json::Error),
}

#[derive(Debug)]
pub struct Application {
    server: HttpServer,
    state: AppState,
    router: Router,
    metrics: HttpMetrics,
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let identity = kit::identity!();
        let server = HttpServer::bind(
            identity,
            &settings.server,
            &settings.consul,
            &settings.registration,
        )
        .await?;
        let consul = ConsulClient::new(&settings.consul)?;
        // Calls to @name@-srv go over Connect's mutual TLS whenever the agent has it.
        let name = settings.registration.service_name(identity.name);
        let connect = Connect::start(&settings.connect, &settings.consul, name, true).await?;
        let metrics = HttpMetrics::new();
        let state = Arc::new(Shared {
            @snake@: Upstream::follow(
                &consul,
                &settings.upstream,
                &metrics,
                connect.as_ref(),
                @Camel@Client::new,
            ),
            tokens: settings.auth.tokens(Role::Admin as i32),
        });
        let router = kit::http::edge(
            routes::router(state.clone()),
            ApiDoc::openapi(),
            &metrics,
            &settings.server,
        )?;
        Ok(Self {
            server,
            state,
            router,
            metrics,
        })
    }

    /// Applies live settings changes (from Consul KV) to the upstream: its deadline, balancer
    /// policy and outlier detection. Ends with `live`.
    pub fn follow_settings(&self, live: &Live<Settings>) {
        self.state.@snake@.follow_settings(live, |s| &s.upstream);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.server
            .serve(self.router, &self.metrics, shutdown)
            .await
    }
}
