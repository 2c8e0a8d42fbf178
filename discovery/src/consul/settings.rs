//! Where the Consul agent is and how to talk to it, and where the config center's documents
//! live in its KV store.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConsulError, Result};
use crate::Secret;

/// Where the agent is and how to talk to it; the defaults follow Consul's own CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsulSettings {
    /// `host:port` or a URL, as in `CONSUL_HTTP_ADDR`.
    pub addr: String,
    /// Sent as `X-Consul-Token` when set (`CONSUL_HTTP_TOKEN`).
    pub token: Option<Secret>,
    /// A file holding the token, read at start when no token is given
    /// (`CONSUL_HTTP_TOKEN_FILE`, as Consul's CLI reads it).
    pub token_file: Option<PathBuf>,
    /// Bound on every non-blocking request; blocking ones get their wait on top.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Settings kept in Consul KV (the config center); off by default.
    pub config: KvConfigSettings,
}

/// Where a service's settings live in Consul KV, after Spring Cloud Consul Config: the TOML
/// document at `<prefix>/<service>/data`, overridden by `<prefix>/<service>,<profile>/data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KvConfigSettings {
    /// Read the documents at start and follow them with blocking queries.
    pub enabled: bool,
    /// The folder holding one folder per service.
    pub prefix: String,
    /// An optional profile (e.g. `dev`, `canary`) whose document overrides the service's.
    pub profile: Option<String>,
    /// How long one blocking query waits for a change.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Answers read a second at most (see [`crate::blocking`]).
    pub max_rate: u32,
}

impl Default for KvConfigSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "config".into(),
            profile: None,
            wait: Duration::from_secs(60),
            max_rate: 10,
        }
    }
}

impl KvConfigSettings {
    /// The folder both of `service`'s documents live under (blocking on it sees either).
    pub fn folder(&self, service: &str) -> String {
        format!("{}/{service}", self.prefix.trim_end_matches('/'))
    }

    /// `service`'s keys, lowest precedence first.
    pub fn keys(&self, service: &str) -> Vec<String> {
        let folder = self.folder(service);
        let mut keys = vec![format!("{folder}/data")];
        if let Some(profile) = self.profile.as_deref().filter(|p| !p.is_empty()) {
            keys.push(format!("{folder},{profile}/data"));
        }
        keys
    }
}

impl Default for ConsulSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8500".into(),
            token: None,
            token_file: None,
            timeout: Duration::from_secs(5),
            config: KvConfigSettings::default(),
        }
    }
}

impl ConsulSettings {
    /// Applies `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN` and `CONSUL_HTTP_TOKEN_FILE` from
    /// `env` over `self`.
    pub fn with_consul_env(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(addr) = env("CONSUL_HTTP_ADDR").filter(|a| !a.is_empty()) {
            self.addr = addr;
        }
        if let Some(token) = env("CONSUL_HTTP_TOKEN").filter(|t| !t.is_empty()) {
            self.token = Some(Secret::new(token));
        }
        if let Some(file) = env("CONSUL_HTTP_TOKEN_FILE").filter(|f| !f.is_empty()) {
            self.token_file = Some(PathBuf::from(file));
        }
        self
    }

    /// The token to send: the one given, else the token file's content (trimmed), as
    /// Consul's CLI does.
    pub fn effective_token(&self) -> Result<Option<Secret>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(file) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| ConsulError::TokenFile {
            path: file.display().to_string(),
            reason: e.to_string(),
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ConsulError::TokenFile {
                path: file.display().to_string(),
                reason: "the file is empty".into(),
            });
        }
        Ok(Some(Secret::new(token)))
    }
}
