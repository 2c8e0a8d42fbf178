//! user-web's settings: the kit's server, upstream, Consul and registration sections plus
//! token signing, with this gateway's defaults. Layered by [`kit::config::center`]:
//! defaults → file → Consul KV (`config/user-web/data`, when `consul.config.enabled`) →
//! environment (`USER_WEB__SECTION__KEY`, plus `CONSUL_HTTP_ADDR`/`CONSUL_HTTP_TOKEN`) → flags.

use discovery::{ConsulSettings, RegistrationSettings};
use kit::connect::ConnectSettings;
use std::time::Duration;

use kit::{
    config::{ServerSettings, ServiceSettings},
    http::{auth::AuthSettings, throttle::Rate},
    upstream::{UpstreamLive, UpstreamSettings},
};
use serde::{Deserialize, Serialize};

/// Attempts per client IP and per mobile on login and sign-up; beyond them, 429.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleSettings {
    pub login: RouteLimits,
    pub register: RouteLimits,
    /// Keys each limit remembers at most (expired ones are dropped first).
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteLimits {
    /// Per client address (the peer: behind a proxy, every client shares the proxy's).
    pub per_ip: Rate,
    /// Per mobile in the body, whoever sends it.
    pub per_mobile: Rate,
}

impl Default for RouteLimits {
    fn default() -> Self {
        Self {
            per_ip: Rate::new(30, Duration::from_secs(60)),
            per_mobile: Rate::new(5, Duration::from_secs(60)),
        }
    }
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            login: RouteLimits::default(),
            register: RouteLimits {
                per_ip: Rate::new(10, Duration::from_secs(60)),
                per_mobile: Rate::new(3, Duration::from_secs(60)),
            },
            max_keys: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    /// user-srv: how it is found and called.
    pub upstream: UpstreamSettings,
    pub consul: ConsulSettings,
    pub registration: RegistrationSettings,
    /// Consul Connect: mutual TLS with the agent's certificates, callers checked against
    /// intentions.
    pub connect: ConnectSettings,
    pub throttle: ThrottleSettings,
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
            connect: ConnectSettings::default(),
            throttle: ThrottleSettings::default(),
        }
    }
}

impl ServiceSettings for Settings {
    const ENV_PREFIX: &'static str = "USER_WEB";

    /// Routing to user-srv changes live; [`crate::Application::follow_settings`] applies it.
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
            .map_err(|e| e.to_string())?;
        let t = &self.throttle;
        t.login.per_ip.validate("throttle.login.per_ip")?;
        t.login.per_mobile.validate("throttle.login.per_mobile")?;
        t.register.per_ip.validate("throttle.register.per_ip")?;
        t.register
            .per_mobile
            .validate("throttle.register.per_mobile")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kit::config::{ConfigError, ServerFlags};

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The live part is exactly the settings the README lists as live: taking a live part
    /// with every field changed changes those keys and no other, and reads back whole.
    #[test]
    fn the_live_part_is_the_routing_and_nothing_else() {
        let base = Settings::default();
        let mut live = base.live();
        live.deadline += Duration::from_millis(1);
        live.retry_budget.percent += 1;
        live.retry_budget.min_per_second += 1;
        live.routing.policy = discovery::Policy::LeastRequest;
        live.routing.probe_interval += Duration::from_millis(1);
        live.routing.probe_timeout += Duration::from_millis(1);
        let o = &mut live.routing.outlier;
        o.consecutive_failures += 1;
        o.peer_failure_factor += 1;
        o.min_peers += 1;
        o.min_requests += 1;
        o.base_ejection_time += Duration::from_millis(1);
        o.max_ejection_time += Duration::from_millis(1);
        o.max_ejection_percent += 1;
        o.first_attempt_factor += 1;
        o.min_first_attempt += Duration::from_millis(1);
        o.max_first_attempt_percent += 1;

        let mut taken = base.clone();
        taken.set_live(live.clone());
        assert_eq!(taken.live(), live, "every live field is taken in");
        let outlier = [
            "base_ejection_time",
            "consecutive_failures",
            "first_attempt_factor",
            "max_ejection_percent",
            "max_ejection_time",
            "max_first_attempt_percent",
            "min_first_attempt",
            "min_peers",
            "min_requests",
            "peer_failure_factor",
        ]
        .map(|k| format!("upstream.balancer.outlier.{k}"));
        let mut want: Vec<String> = [
            "upstream.balancer.policy",
            "upstream.balancer.probe_interval",
            "upstream.balancer.probe_timeout",
            "upstream.deadline",
            "upstream.retry_budget.min_per_second",
            "upstream.retry_budget.percent",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(outlier)
        .collect();
        want.sort();
        assert_eq!(kit::config::center::live_paths(&base, live), want);
    }

    #[test]
    fn the_dev_secret_needs_dev_mode() {
        let err = Settings::load_from(&ServerFlags::default(), env(&[]))
            .expect_err("refused without dev mode");
        assert!(matches!(err, ConfigError::Rejected(_)), "{err}");
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
        assert_eq!(
            s.upstream.balancer.routing.policy,
            discovery::Policy::RoundRobin
        );
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
        assert_eq!(
            s.upstream.balancer.routing.policy,
            discovery::Policy::LeastRequest
        );
        assert_eq!(s.consul.addr, "10.0.0.2:8500");
    }
}
