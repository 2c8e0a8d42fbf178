//! Layered settings: built-in defaults, then an optional TOML file, then the environment
//! (`USER_SRV__SECTION__KEY`, plus sqlx's own `DATABASE_URL`), then command-line flags.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

pub use bootstrap::ServerFlags;

use discovery::{ConsulSettings, RegistrationSettings};
use serde::{Deserialize, Serialize};

/// Everything user-srv needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    /// The local Consul agent (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN` honoured).
    #[serde(default)]
    pub consul: ConsulSettings,
    /// How this instance registers itself in Consul.
    #[serde(default)]
    pub registration: RegistrationSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSettings {
    /// Address to bind. 127.0.0.1 by default so a dev box exposes nothing.
    pub ip: IpAddr,
    /// 0 lets the OS pick a free port; the bound port is logged and registered.
    pub port: u16,
    /// How long in-flight calls get to finish after a stop signal.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often the database is pinged; a failed ping turns health NOT_SERVING (and so
    /// the Consul check critical) until one succeeds again.
    #[serde(with = "humantime_serde")]
    pub db_check_interval: Duration,
    /// Async runtime threads: 1 (the default) runs every connection on one thread, the
    /// cheapest per call for a service that scales by instances; 0 is one per CPU.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://…` or `postgres://…`. Unset: a SQLite file `users.db` in `data_dir`.
    pub url: Option<String>,
    /// Where the default SQLite file lives; created if missing.
    pub data_dir: PathBuf,
    /// Connections at most. Unset: 2 for SQLite (one writer at a time; each connection is a
    /// thread, and more of them only add context switches) and 16 for PostgreSQL.
    pub max_connections: Option<u32>,
    /// Bounds the wait for a free connection, so a stuck database shows up as
    /// `UNAVAILABLE` rather than a hung call.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Apply pending migrations when serving starts. Turn off where a separate
    /// `user-srv migrate` step runs them once for many replicas.
    pub migrate_on_start: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] bootstrap::ConfigError);

impl Settings {
    /// Loads defaults → `--config` file (if given) → environment → the other flags.
    pub fn load(flags: &ServerFlags) -> Result<Self, ConfigError> {
        Self::load_from(flags, std::env::vars())
    }

    /// As [`Settings::load`], with the environment passed in (tests use this).
    pub fn load_from(
        flags: &ServerFlags,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: bootstrap::Map<String, String> = env.into_iter().collect();
        let mut last: Vec<(&str, bootstrap::Value)> = Vec::new();
        if let Some(url) = env.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            last.push(("database.url", url.as_str().into()));
        }
        last.extend(flags.overrides());
        let layers = bootstrap::Layers {
            defaults: vec![
                ("server.ip", Ipv4Addr::LOCALHOST.to_string().into()),
                ("server.port", 0i64.into()),
                ("server.drain_timeout", "10s".into()),
                ("server.db_check_interval", "5s".into()),
                ("server.worker_threads", 1i64.into()),
                ("database.data_dir", "data".into()),
                ("database.acquire_timeout", "5s".into()),
                ("database.migrate_on_start", true.into()),
                ("registration.tags", vec!["srv", "user"].into()),
            ],
            file: flags.config.as_deref(),
            env_prefix: "USER_SRV",
            list_keys: &["registration.tags"],
            overrides: last,
        };
        let mut settings: Self = bootstrap::load_settings(layers, &env)?;
        settings.consul = settings.consul.with_consul_env(|k| env.get(k).cloned());
        Ok(settings)
    }
}

impl Settings {
    /// Every environment variable user-srv reads (deployment files are checked against it).
    pub fn env_names() -> Vec<String> {
        let mut names = Self::load_from(&ServerFlags::default(), std::iter::empty())
            .map(|s| bootstrap::env_names("USER_SRV", &s))
            .unwrap_or_default();
        names.extend(
            [
                "DATABASE_URL",
                "CONSUL_HTTP_ADDR",
                "CONSUL_HTTP_TOKEN",
                "USER_SRV_ADMIN_PASSWORD",
            ]
            .map(String::from),
        );
        names.extend(["RUST_LOG", "LOG_FORMAT"].map(String::from));
        names
    }
}

impl DatabaseSettings {
    /// The URL to connect to: the configured one, or the default SQLite file.
    pub fn effective_url(&self) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("users.db").display()
            ),
        }
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
    fn defaults_bind_loopback_on_a_free_port_with_sqlite() -> Result<(), ConfigError> {
        let s = Settings::load_from(&ServerFlags::default(), env(&[]))?;
        assert_eq!(s.server.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(s.server.port, 0);
        assert_eq!(s.server.drain_timeout, Duration::from_secs(10));
        assert_eq!(
            s.database.effective_url(),
            "sqlite://data/users.db?mode=rwc"
        );
        Ok(())
    }

    #[test]
    fn file_then_env_then_flags_each_win() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("user-srv.toml");
        std::fs::write(
            &file,
            "[server]\nport = 7000\ndrain_timeout = \"3s\"\n[database]\nmax_connections = 4\n",
        )?;
        let s = Settings::load_from(
            &ServerFlags {
                config: Some(file),
                ip: Some("0.0.0.0".parse()?),
                port: None,
            },
            env(&[
                ("USER_SRV__DATABASE__MAX_CONNECTIONS", "9"),
                ("DATABASE_URL", "postgres://u@localhost/db"),
                ("CONSUL_HTTP_ADDR", "http://consul:8500"),
                ("CONSUL_HTTP_TOKEN", "t0ken"),
                ("USER_SRV__REGISTRATION__TAGS", "srv,user,canary"),
                ("USER_SRV__REGISTRATION__CHECK_INTERVAL", "1s"),
            ]),
        )?;
        assert_eq!(s.server.port, 7000);
        assert_eq!(s.server.drain_timeout, Duration::from_secs(3));
        assert_eq!(s.server.ip.to_string(), "0.0.0.0");
        assert_eq!(s.database.max_connections, Some(9));
        assert_eq!(s.database.effective_url(), "postgres://u@localhost/db");
        assert_eq!(s.consul.addr, "http://consul:8500");
        assert_eq!(s.consul.token.as_deref(), Some("t0ken"));
        assert_eq!(s.registration.tags, ["srv", "user", "canary"]);
        assert_eq!(s.registration.check_interval, Duration::from_secs(1));
        Ok(())
    }

    #[test]
    fn env_names_follow_the_settings() {
        let names = Settings::env_names();
        for name in [
            "USER_SRV__SERVER__PORT",
            "USER_SRV__DATABASE__URL",
            "USER_SRV__REGISTRATION__TAGS",
            "USER_SRV__CONSUL__TOKEN",
            "DATABASE_URL",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
    }

    #[test]
    fn a_malformed_value_is_a_clear_error() {
        let err = Settings::load_from(
            &ServerFlags::default(),
            env(&[("USER_SRV__SERVER__DRAIN_TIMEOUT", "ten seconds")]),
        )
        .expect_err("bad duration must be rejected");
        assert!(err.to_string().contains("drain_timeout"), "{err}");
    }
}
