//! @name@-srv's settings: the kit's sections with this service's defaults. Layered by
//! [`kit::config::load`]: defaults → file → environment (`@UPPER@_SRV__SECTION__KEY`, plus
//! `DATABASE_URL`) → flags.

use discovery::{ConsulSettings, RegistrationSettings};
use kit::{
    config::{ConfigError, ServerFlags, ServerSettings, Sources},
    db::DatabaseSettings,
};
use serde::{Deserialize, Serialize};

/// The environment prefix of every @name@-srv setting.
pub const ENV_PREFIX: &str = "@UPPER@_SRV";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub consul: ConsulSettings,
    pub registration: RegistrationSettings,
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
        }
    }
}

impl Settings {
    pub fn load(flags: &ServerFlags) -> Result<Self, ConfigError> {
        Self::load_from(flags, std::env::vars())
    }

    pub fn load_from(
        flags: &ServerFlags,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = kit::config::env_map(env);
        let mut overrides = Vec::new();
        if let Some(url) = env.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            overrides.push(("database.url", url.as_str().into()));
        }
        overrides.extend(flags.overrides());
        let sources = Sources {
            file: flags.config.as_deref(),
            env_prefix: ENV_PREFIX,
            list_keys: &["registration.tags"],
            overrides,
        };
        let mut settings: Self = kit::config::load(sources, &env)?;
        settings.consul = settings.consul.with_consul_env(|k| env.get(k).cloned());
        Ok(settings)
    }

    /// Every environment variable @name@-srv reads (deployment files are checked against it).
    pub fn env_names() -> Vec<String> {
        let mut names = kit::config::env_names::<Self>(ENV_PREFIX);
        names.extend(
            ["DATABASE_URL", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "RUST_LOG", "LOG_FORMAT"]
                .map(String::from),
        );
        names
    }
}
