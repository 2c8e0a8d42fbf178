//! @name@-web's settings: the kit's sections plus token signing, with this gateway's
//! defaults. Environment: `@UPPER@_WEB__SECTION__KEY`, plus `CONSUL_HTTP_ADDR`/`CONSUL_HTTP_TOKEN`.

use discovery::{ConsulSettings, RegistrationSettings};
use kit::{
    config::{ServerFlags, ServerSettings, Sources},
    http::auth::{AuthConfigError, AuthSettings},
    upstream::UpstreamSettings,
};
use serde::{Deserialize, Serialize};

/// The environment prefix of every @name@-web setting.
pub const ENV_PREFIX: &str = "@UPPER@_WEB";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    /// The same secret as every other gateway of the system, so one login serves all.
    pub auth: AuthSettings,
    /// @name@-srv: how it is found and called.
    pub upstream: UpstreamSettings,
    pub consul: ConsulSettings,
    pub registration: RegistrationSettings,
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Invalid(#[from] kit::config::ConfigError),
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
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
        let sources = Sources {
            file: flags.config.as_deref(),
            env_prefix: ENV_PREFIX,
            list_keys: &["registration.tags"],
            overrides: flags.overrides(),
        };
        let mut settings: Self = kit::config::load(sources, &env)?;
        settings.consul = settings.consul.with_consul_env(|k| env.get(k).cloned());
        settings.auth.validate(ENV_PREFIX)?;
        Ok(settings)
    }

    /// Every environment variable @name@-web reads (deployment files are checked against it).
    pub fn env_names() -> Vec<String> {
        let mut names = kit::config::env_names::<Self>(ENV_PREFIX);
        names.extend(
            ["CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "RUST_LOG", "LOG_FORMAT"].map(String::from),
        );
        names
    }
}
