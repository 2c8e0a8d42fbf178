//! user-web's settings: the kit's server, upstream, Consul and registration sections plus
//! token signing, with this gateway's defaults. Layered by [`kit::config::load`]: defaults →
//! file → environment (`USER_WEB__SECTION__KEY`, plus `CONSUL_HTTP_ADDR`/`CONSUL_HTTP_TOKEN`)
//! → flags.

use discovery::{ConsulSettings, RegistrationSettings};
use kit::{
    config::{ServerFlags, ServerSettings, Sources},
    http::auth::{AuthConfigError, AuthSettings},
    upstream::UpstreamSettings,
};
use serde::{Deserialize, Serialize};

/// The environment prefix of every user-web setting.
pub const ENV_PREFIX: &str = "USER_WEB";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    /// user-srv: how it is found and called.
    pub upstream: UpstreamSettings,
    pub consul: ConsulSettings,
    pub registration: RegistrationSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings {
                port: 8021,
                ..ServerSettings::default()
            },
            auth: AuthSettings::default(),
            upstream: UpstreamSettings::for_service("user-srv"),
            consul: ConsulSettings::default(),
            registration: RegistrationSettings {
                tags: vec!["web".to_owned(), "user".to_owned()],
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

    /// Every environment variable user-web reads (deployment files are checked against it).
    pub fn env_names() -> Vec<String> {
        let mut names = kit::config::env_names::<Self>(ENV_PREFIX);
        names.extend(
            [
                "CONSUL_HTTP_ADDR",
                "CONSUL_HTTP_TOKEN",
                "RUST_LOG",
                "LOG_FORMAT",
            ]
            .map(String::from),
        );
        names
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_dev_secret_needs_dev_mode() {
        let err = Settings::load_from(&ServerFlags::default(), env(&[]))
            .expect_err("refused without dev mode");
        assert!(
            matches!(err, ConfigError::Auth(AuthConfigError::DevSecret { .. })),
            "{err}"
        );
        assert!(
            err.to_string().contains("USER_WEB__AUTH__JWT_SECRET"),
            "{err}"
        );
        let s = Settings::load_from(
            &ServerFlags::default(),
            env(&[("USER_WEB__AUTH__DEV_MODE", "true")]),
        )
        .expect("dev mode accepts it");
        assert_eq!(s.server.port, 8021);
        assert_eq!(s.upstream.watch.service, "user-srv");
        assert_eq!(s.upstream.deadline, Duration::from_secs(3));
        assert_eq!(s.upstream.balancer.policy, discovery::Policy::RoundRobin);
    }

    #[test]
    fn env_names_follow_the_settings() {
        let names = Settings::env_names();
        for name in [
            "USER_WEB__AUTH__JWT_SECRET",
            "USER_WEB__UPSTREAM__TAG",
            "USER_WEB__UPSTREAM__BALANCER__POLICY",
            "USER_WEB__SERVER__BODY_LIMIT",
            "CONSUL_HTTP_ADDR",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
    }

    #[test]
    fn environment_and_flags_override() {
        let s = Settings::load_from(
            &ServerFlags {
                port: Some(0),
                ..ServerFlags::default()
            },
            env(&[
                (
                    "USER_WEB__AUTH__JWT_SECRET",
                    "a-production-secret-of-some-length",
                ),
                ("USER_WEB__UPSTREAM__TAG", "canary"),
                ("USER_WEB__UPSTREAM__BALANCER__POLICY", "least_request"),
                ("CONSUL_HTTP_ADDR", "10.0.0.2:8500"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.server.port, 0);
        assert_eq!(s.upstream.watch.tag.as_deref(), Some("canary"));
        assert_eq!(s.upstream.balancer.policy, discovery::Policy::LeastRequest);
        assert_eq!(s.consul.addr, "10.0.0.2:8500");
    }
}
