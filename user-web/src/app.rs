//! The running gateway: the kit's HTTP edge around the `/u/v1` routes, user-srv followed in
//! Consul. [`Application::build`] binds and starts following; [`Application::run_until_stopped`]
//! registers, serves, and on shutdown deregisters before draining.

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::Router;
use discovery::{ConsulClient, ConsulError};
use kit::{
    config::center::Live,
    connect::{Connect, ConnectError},
    http::{HttpMetrics, HttpServer, throttle::Throttle},
};
use proto::user_v1::{Role, user_client::UserClient};
use utoipa::OpenApi;

use crate::{
    config::{Settings, ThrottleSettings},
    routes::{self, ApiDoc},
    state::{AppState, Limits, RouteLimiters, Shared},
};

fn limits(settings: &ThrottleSettings, metrics: &HttpMetrics) -> Limits {
    let throttle = Throttle::new(metrics, settings.max_keys);
    Limits {
        login: RouteLimiters {
            per_ip: throttle.limiter("login_per_ip", settings.login.per_ip),
            per_mobile: throttle.limiter("login_per_mobile", settings.login.per_mobile),
        },
        register: RouteLimiters {
            per_ip: throttle.limiter("register_per_ip", settings.register.per_ip),
            per_mobile: throttle.limiter("register_per_mobile", settings.register.per_mobile),
        },
    }
}

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
        // Calls to user-srv go over Connect's mutual TLS whenever the agent has it.
        let name = settings.registration.service_name(identity.name);
        let connect = Connect::start(&settings.connect, &settings.consul, name, true).await?;
        let metrics = HttpMetrics::new();
        let state = Arc::new(Shared {
            users: kit::upstream::Upstream::follow(
                &consul,
                &settings.upstream,
                &metrics,
                connect.as_ref(),
                UserClient::new,
            ),
            tokens: settings.auth.tokens(Role::Admin as i32),
            limits: limits(&settings.throttle, &metrics),
        });
        let routes = routes::router(state.clone());
        let router = kit::http::edge(routes, ApiDoc::openapi(), &metrics, &settings.server)?;
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
        self.state.users.follow_settings(live, |s| &s.upstream);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The `user-web-<uuid>` ID this instance registers under, when registration is on.
    pub fn service_id(&self) -> Option<&str> {
        self.server.service_id()
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
