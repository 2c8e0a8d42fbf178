//! @name@-srv's settings: the kit's sections with this service's defaults. Layered by
//! [`kit::config::center`]: defaults → file → Consul KV (`config/@name@-srv/data`, when
//! `consul.config.enabled`) → environment (`@UPPER@_SRV__SECTION__KEY`, plus `DATABASE_URL`)
//! → flags.

use discovery::{ConsulSettings, RegistrationSettings};
use kit::connect::ConnectSettings;
use kit::{
    config::{ServerSettings, ServiceSettings},
    db::DatabaseSettings,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub consul: ConsulSettings,
    pub registration: RegistrationSettings,
    /// Consul Connect: mutual TLS with the agent's certificates, callers checked against
    /// intentions.
    pub connect: ConnectSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            database: DatabaseSettings {
                file: "@snake@.db".to_owned(),
                ..DatabaseSettings::default()
            },
            consul: ConsulSettings::default(),
            registration: RegistrationSettings {
                tags: vec!["srv".to_owned(), "@name@".to_owned()],
                ..RegistrationSettings::default()
            },
            connect: ConnectSettings::default(),
        }
    }
}

impl ServiceSettings for Settings {
    const ENV_PREFIX: &'static str = "@UPPER@_SRV";
    const DATABASE_URL: bool = true;

    type Live = ();

    fn live(&self) {}

    fn set_live(&mut self, _: ()) {}

    fn server(&self) -> &ServerSettings {
        &self.server
    }

    fn server_mut(&mut self) -> &mut ServerSettings {
        &mut self.server
    }

    fn consul(&mut self) -> &mut ConsulSettings {
        &mut self.consul
    }
}
