//! user-srv's settings: the kit's server, database, Consul and registration sections, with
//! this service's defaults. Layered by [`kit::config::center`]: defaults → file →
//! Consul KV (`config/user-srv/data`, when `consul.config.enabled`) → environment
//! (`USER_SRV__SECTION__KEY`, plus sqlx's own `DATABASE_URL`) → flags.

use discovery::{ConsulSettings, RegistrationSettings};
use kit::connect::ConnectSettings;
use kit::{
    config::{ServerSettings, ServiceSettings},
    db::DatabaseSettings,
};
use serde::{Deserialize, Serialize};

/// Everything user-srv needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    /// The local Consul agent (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN` honoured).
    pub consul: ConsulSettings,
    /// How this instance registers itself in Consul.
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
                file: "users.db".to_owned(),
                ..DatabaseSettings::default()
            },
            consul: ConsulSettings::default(),
            registration: RegistrationSettings {
                tags: vec!["srv".to_owned(), "user".to_owned()],
                ..RegistrationSettings::default()
            },
            connect: ConnectSettings::default(),
        }
    }
}

impl ServiceSettings for Settings {
    const ENV_PREFIX: &'static str = "USER_SRV";
    const DATABASE_URL: bool = true;
    const OTHER_ENV: &'static [&'static str] = &["USER_SRV_ADMIN_PASSWORD"];

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

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use kit::config::{ConfigError, ServerFlags};

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
        assert_eq!(s.registration.tags, ["srv", "user"]);
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
                ..ServerFlags::default()
            },
            env(&[
                ("USER_SRV__DATABASE__MAX_CONNECTIONS", "9"),
                ("DATABASE_URL", "postgres://u:db-pa55@localhost/db"),
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
        assert_eq!(
            s.database.effective_url(),
            "postgres://u:db-pa55@localhost/db"
        );
        assert!(!format!("{s:?}").contains("db-pa55"), "redacted in Debug");
        assert_eq!(s.consul.addr, "http://consul:8500");
        assert_eq!(
            s.consul.token.as_ref().map(discovery::Secret::expose),
            Some("t0ken")
        );
        assert!(!format!("{s:?}").contains("t0ken"), "redacted in Debug");
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
            "USER_SRV__DATABASE__CHECK_INTERVAL",
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
