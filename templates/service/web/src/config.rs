//! @name@-web's settings: the kit's sections plus token signing, with this gateway's
//! defaults. Layered by [`kit::config::center`]: defaults → file → Consul KV
//! (`config/@name@-web/data`, when `consul.config.enabled`) → environment
//! (`@UPPER@_WEB__SECTION__KEY`, plus `CONSUL_HTTP_ADDR`/`CONSUL_HTTP_TOKEN`) → flags.

use discovery::{ConsulSettings, RegistrationSettings};
use kit::connect::ConnectSettings;
use kit::{
    config::{ServerSettings, ServiceSettings},
    http::auth::AuthSettings,
    upstream::{UpstreamLive, UpstreamSettings},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    /// The same secret as every other gateway of the system, so one login serves all.
    pub auth: AuthSettings,
    /// @name@-srv: how it is found and called.
    pub upstream: UpstreamSettings,
    pub consul: ConsulSettings,
    pub registration: RegistrationSettings,
    /// Consul Connect: mutual TLS with the agent's certificates, callers checked against
    /// intentions.
    pub connect: ConnectSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings {
                port: @web_port@,
                ..ServerSettings::default()
            },
            auth: AuthSettings::default(),
            upstream: UpstreamSettings::for_service("@name@-srv"),
            consul: ConsulSettings::default(),
            registration: RegistrationSettings {
                tags: vec!["web".to_owned(), "@name@".to_owned()],
                ..RegistrationSettings::default()
            },
            connect: ConnectSettings::default(),
        }
    }
}

impl ServiceSettings for Settings {
    const ENV_PREFIX: &'static str = "@UPPER@_WEB";

    /// Routing to @name@-srv changes live; [`crate::Application::follow_settings`] applies it.
    type Live = UpstreamLive;

    fn live(&self) -> UpstreamLive {
        self.upstream.live()
    }

    fn set_live(&mut self, live: UpstreamLive) {
        self.upstream.set_live(live);
    }

    fn server(&self) -> &ServerSettings {
        &self.server
    }

    fn server_mut(&mut self) -> &mut ServerSettings {
        &mut self.server
    }

    fn consul(&mut self) -> &mut ConsulSettings {
        &mut self.consul
    }

    fn validate(&self) -> Result<(), String> {
        self.auth
            .validate(Self::ENV_PREFIX)
            .map_err(|e| e.to_string())
    }
}
