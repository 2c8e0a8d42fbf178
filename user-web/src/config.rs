//! Layered settings for user-web: defaults, then an optional TOML file, then the environment
//! (`USER_WEB__SECTION__KEY`, plus Consul's `CONSUL_HTTP_ADDR`/`CONSUL_HTTP_TOKEN`), then flags.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

pub use bootstrap::ServerFlags;

use discovery::{BalancerSettings, ConsulSettings, RegistrationSettings, WatchSettings};
use serde::{Deserialize, Serialize};

/// The signing secret used when none is configured. Accepted only in dev mode.
pub const DEV_JWT_SECRET: &str = "dev-only-secret-change-me";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub upstream: UpstreamSettings,
    #[serde(default)]
    pub consul: ConsulSettings,
    #[serde(default)]
    pub registration: RegistrationSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSettings {
    pub ip: IpAddr,
    /// 0 lets the OS pick.
    pub port: u16,
    /// Bound on finishing in-flight requests after a stop signal.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Async runtime threads: 1 (the default) serves every connection on one thread, the
    /// cheapest per request; 0 is one per CPU, for a gateway that must use a whole machine.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthSettings {
    /// HS256 secret for the tokens this gateway issues and checks.
    pub jwt_secret: String,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Allows the built-in development secret. Never in production.
    pub dev_mode: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpstreamSettings {
    /// Which service to find in Consul, and how to watch it.
    #[serde(flatten)]
    pub watch: WatchSettings,
    /// Deadline of every call to user-srv.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    #[serde(default)]
    pub balancer: BalancerSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] bootstrap::ConfigError),
    #[error(
        "auth.jwt_secret is the built-in development secret: set USER_WEB__AUTH__JWT_SECRET \
         (or USER_WEB__AUTH__DEV_MODE=true for local development only)"
    )]
    DevSecret,
    #[error("auth.jwt_secret must be at least 16 bytes")]
    WeakSecret,
}

impl Settings {
    pub fn load(flags: &ServerFlags) -> Result<Self, ConfigError> {
        Self::load_from(flags, std::env::vars())
    }

    pub fn load_from(
        flags: &ServerFlags,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: bootstrap::Map<String, String> = env.into_iter().collect();
        let mut last: Vec<(&str, bootstrap::Value)> = Vec::new();
        last.extend(flags.overrides());
        let layers = bootstrap::Layers {
            defaults: vec![
                ("server.ip", Ipv4Addr::LOCALHOST.to_string().into()),
                ("server.port", 8021i64.into()),
                ("server.drain_timeout", "10s".into()),
                ("server.body_limit", 16_384i64.into()),
                ("server.worker_threads", 1i64.into()),
                ("auth.jwt_secret", DEV_JWT_SECRET.into()),
                ("auth.token_ttl", "24h".into()),
                ("auth.dev_mode", false.into()),
                ("upstream.service", "user-srv".into()),
                ("upstream.wait", "30s".into()),
                ("upstream.deadline", "3s".into()),
                ("registration.tags", vec!["web", "user"].into()),
            ],
            file: flags.config.as_deref(),
            env_prefix: "USER_WEB",
            list_keys: &["registration.tags"],
            overrides: last,
        };
        let mut settings: Self = bootstrap::load_settings(layers, &env)?;
        settings.consul = settings.consul.with_consul_env(|k| env.get(k).cloned());
        if settings.auth.jwt_secret == DEV_JWT_SECRET && !settings.auth.dev_mode {
            return Err(ConfigError::DevSecret);
        }
        if settings.auth.jwt_secret.len() < 16 {
            return Err(ConfigError::WeakSecret);
        }
        Ok(settings)
    }
}

impl Settings {
    /// Every environment variable user-web reads (deployment files are checked against it).
    pub fn env_names() -> Vec<String> {
        let env = [("USER_WEB__AUTH__DEV_MODE".to_owned(), "true".to_owned())];
        let mut names = Self::load_from(&ServerFlags::default(), env)
            .map(|s| bootstrap::env_names("USER_WEB", &s))
            .unwrap_or_default();
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
        assert!(matches!(err, ConfigError::DevSecret), "{err}");
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
