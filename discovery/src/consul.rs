//! A thin client for the parts of Consul's HTTP API the project uses: agent service
//! registration, agent services, health (with blocking queries) and KV reads.
//! Unknown response fields are ignored so it works with Consul 1.0 through current releases.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("invalid Consul address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("Consul unreachable at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Consul answers errors in plain text; `body` keeps it as sent.
    #[error("Consul answered {status} to {method} {path}: {body}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("unexpected answer from Consul to {path}: {reason}")]
    Decode { path: String, reason: String },
    #[error("cannot read the Consul token file {path}: {reason}")]
    TokenFile { path: String, reason: String },
}

impl ConsulError {
    /// True when the agent could not be reached at all (as opposed to refusing a request).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// True for the empty 404 of an agent that lacks the endpoint (Consul before 1.3).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Status { status, body, .. }
            if *status == StatusCode::NOT_FOUND && body.trim().is_empty())
    }

    /// True when the agent refused the request's token (403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Status { status, .. } if *status == StatusCode::FORBIDDEN)
    }
}

pub type Result<T, E = ConsulError> = std::result::Result<T, E>;

/// `PUT /v1/agent/service/register` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: HashMap<String, String>,
    /// Sent only when set: an agent before 1.2.3 knows no weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRegistration>,
}

/// A check definition. Durations are Go duration strings ("5s").
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRegistration {
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    #[serde(rename = "GRPCUseTLS", skip_serializing_if = "Option::is_none")]
    pub grpc_use_tls: Option<bool>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
    /// Initial status; without it Consul starts a check as critical.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Formats a duration the way Consul parses it (Go's `time.ParseDuration`).
pub fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// An entry of `GET /v1/agent/services`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: u32,
    #[serde(default)]
    pub warning: u32,
}

/// Filters and blocking parameters of a health query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthQuery {
    pub passing: bool,
    pub tag: Option<String>,
    pub dc: Option<String>,
    /// With `wait`, blocks until the service's index moves past this value.
    pub index: Option<u64>,
    pub wait: Option<Duration>,
    /// `?cached`: the agent serves every watcher of the service on it from one view (its
    /// streaming backend, or its cache where streaming is off) instead of one server query
    /// each.
    pub cached: bool,
}

/// One answer to a health query; its body went into the caller's buffer, unparsed (see
/// [`crate::health`]).
#[derive(Debug, Clone)]
pub struct HealthAnswer {
    /// The index to block on next (`X-Consul-Index`).
    pub index: u64,
    /// The agent's ACLs deny by default (`X-Consul-Default-Acl-Policy: deny`): an empty list
    /// may then only mean the token cannot read the service.
    pub acl_deny: bool,
    /// `X-Consul-Query-Backend` (1.10+): `streaming` or `blocking-query`.
    pub backend: Option<String>,
}

/// One key of a `?recurse` read, its value decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawKvEntry {
    key: String,
    /// Base64; `null` for a key stored with no value.
    value: Option<String>,
    modify_index: u64,
}

#[derive(Debug, Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret>,
    timeout: Duration,
}

/// `host:port`, `http://host:port` or `https://…` → a base URL.
fn base_url(addr: &str) -> Result<Url> {
    let with_scheme = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let invalid = |reason: String| ConsulError::InvalidAddress {
        addr: addr.to_owned(),
        reason,
    };
    let url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
    if url.host().is_none() {
        return Err(invalid("no host".into()));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!("unsupported scheme {:?}", url.scheme())));
    }
    Ok(url)
}

impl ConsulClient {
    pub fn new(settings: &ConsulSettings) -> Result<Self> {
        let base = base_url(&settings.addr)?;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ConsulError::InvalidAddress {
                addr: settings.addr.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            base,
            token: settings.effective_token()?,
            timeout: settings.timeout,
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Sends one request; `extra` lengthens the timeout for blocking queries. A status other
    /// than 2xx is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
        extra: Duration,
    ) -> Result<reqwest::Response> {
        let response = self
            .send_any(method.clone(), path, query, body, extra)
            .await?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(status_error(method, path, response).await)
    }

    /// As [`Self::send`], with the response whatever its status.
    async fn send_any(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
        extra: Duration,
    ) -> Result<reqwest::Response> {
        let mut url = self.base.clone();
        url.set_path(path);
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .query(query)
            .timeout(self.timeout + extra);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token.expose());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
            .await
            .map_err(|source| ConsulError::Unreachable {
                url: url.to_string(),
                source,
            })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        path: &str,
        response: reqwest::Response,
    ) -> Result<T> {
        let bytes = response.bytes().await.map_err(|e| ConsulError::Decode {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ConsulError::Decode {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    pub async fn register(&self, service: &ServiceRegistration) -> Result<()> {
        self.send(
            Method::PUT,
            "/v1/agent/service/register",
            &[],
            Some(service),
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// Idempotent: Consul answers 200 for an unknown ID too.
    pub async fn deregister(&self, service_id: &str) -> Result<()> {
        let path = format!("/v1/agent/service/deregister/{service_id}");
        self.send(Method::PUT, &path, &[], None::<&()>, Duration::ZERO)
            .await
            .map(drop)
    }

    pub async fn agent_services(&self) -> Result<HashMap<String, AgentService>> {
        let path = "/v1/agent/services";
        let response = self
            .send(Method::GET, path, &[], None::<&()>, Duration::ZERO)
            .await?;
        Self::json(path, response).await
    }

    /// Whether this instance is registered with the agent: `GET /v1/agent/service/<id>`
    /// (Consul 1.3+). `Ok(None)` when the agent says `unknown service ID`; `Err` with
    /// [`ConsulError::is_unsupported`] from an agent without the endpoint (an empty 404).
    pub async fn agent_service(&self, id: &str) -> Result<Option<()>> {
        let path = format!("/v1/agent/service/{id}");
        match self
            .send(Method::GET, &path, &[], None::<&()>, Duration::ZERO)
            .await
        {
            Ok(_) => Ok(Some(())),
            Err(ConsulError::Status { status, body, .. })
                if status == StatusCode::NOT_FOUND && !body.trim().is_empty() =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether requests carry a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `GET /v1/acl/token/self`: the token's description and policy names.
    pub async fn acl_token_self(&self) -> Result<(String, Vec<String>)> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Policy {
            name: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct TokenSelf {
            #[serde(default)]
            description: String,
            #[serde(default)]
            policies: Vec<Policy>,
        }
        let path = "/v1/acl/token/self";
        let response = self
            .send(Method::GET, path, &[], None::<&()>, Duration::ZERO)
            .await?;
        let token: TokenSelf = Self::json(path, response).await?;
        Ok((
            token.description,
            token.policies.into_iter().map(|p| p.name).collect(),
        ))
    }

    /// Passing (or all) instances of `name`: Consul's answer, its body appended to `body`
    /// (a buffer the caller keeps, so that megabytes of answer need no fresh memory).
    pub async fn health_service(
        &self,
        name: &str,
        q: &HealthQuery,
        body: &mut Vec<u8>,
    ) -> Result<HealthAnswer> {
        let path = format!("/v1/health/service/{name}");
        let mut query = Vec::new();
        if q.passing {
            query.push(("passing", "true".to_owned()));
        }
        if q.cached {
            query.push(("cached", String::new()));
        }
        if let Some(tag) = &q.tag {
            query.push(("tag", tag.clone()));
        }
        if let Some(dc) = &q.dc {
            query.push(("dc", dc.clone()));
        }
        if let Some(index) = q.index {
            query.push(("index", index.to_string()));
        }
        let mut extra = Duration::ZERO;
        if let Some(wait) = q.wait {
            query.push(("wait", go_duration(wait)));
            // Consul may hold a blocking call up to wait + wait/16.
            extra = wait + wait / 16;
        }
        let response = self
            .send(Method::GET, &path, &query, None::<&()>, extra)
            .await?;
        let index = consul_index(&path, &response)?;
        let headers = response.headers();
        let acl_deny = headers
            .get("X-Consul-Default-Acl-Policy")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"deny"));
        let backend = headers
            .get("X-Consul-Query-Backend")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| ConsulError::Decode {
            path: path.clone(),
            reason: e.to_string(),
        })? {
            body.extend_from_slice(&chunk);
        }
        Ok(HealthAnswer {
            index,
            acl_deny,
            backend,
        })
    }

    /// Every key under `folder` (`?recurse`) and the index to block on next. With `index`
    /// and `wait`, blocks until something under the folder changes. A folder with nothing
    /// in it (or nothing the token may read) is an empty list, as Consul's 404 says.
    pub async fn kv_folder(
        &self,
        folder: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(Vec<KvEntry>, u64)> {
        let path = format!("/v1/kv/{folder}");
        let mut query = vec![("recurse", "true".to_owned())];
        let mut extra = Duration::ZERO;
        if let Some(index) = index {
            query.push(("index", index.to_string()));
            query.push(("wait", go_duration(wait)));
            extra = wait + wait / 16;
        }
        let response = self
            .send_any(Method::GET, &path, &query, None::<&()>, extra)
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok((Vec::new(), consul_index(&path, &response)?));
        }
        if !status.is_success() {
            return Err(status_error(Method::GET, &path, response).await);
        }
        let index = consul_index(&path, &response)?;
        let raw: Vec<RawKvEntry> = Self::json(&path, response).await?;
        let entries = raw
            .into_iter()
            .map(|e| {
                use base64::Engine as _;
                let value = match e.value {
                    None => Vec::new(),
                    Some(v) => base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .map_err(|err| ConsulError::Decode {
                            path: path.clone(),
                            reason: format!("{}: {err}", e.key),
                        })?,
                };
                Ok(KvEntry {
                    key: e.key,
                    value,
                    modify_index: e.modify_index,
                })
            })
            .collect::<Result<_>>()?;
        Ok((entries, index))
    }
}

/// A non-2xx answer as an error, with Consul's own text.
async fn status_error(method: Method, path: &str, response: reqwest::Response) -> ConsulError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    ConsulError::Status {
        method,
        path: path.to_owned(),
        status,
        body,
    }
}

fn consul_index(path: &str, response: &reqwest::Response) -> Result<u64> {
    response
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ConsulError::Decode {
            path: path.to_owned(),
            reason: "missing or invalid X-Consul-Index".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_the_forms_consul_accepts() {
        let url = |a: &str| base_url(a).map(|u| u.to_string());
        assert_eq!(
            url("127.0.0.1:8500").ok().as_deref(),
            Some("http://127.0.0.1:8500/")
        );
        assert_eq!(
            url("http://consul:8500").ok().as_deref(),
            Some("http://consul:8500/")
        );
        assert_eq!(
            url("https://c.example").ok().as_deref(),
            Some("https://c.example/")
        );
        assert!(base_url("unix:///tmp/consul.sock").is_err());
        assert!(base_url("").is_err());
    }

    #[test]
    fn consul_env_names_override_settings() {
        let env = |k: &str| match k {
            "CONSUL_HTTP_ADDR" => Some("http://10.0.0.5:8500".to_owned()),
            "CONSUL_HTTP_TOKEN" => Some("s3cret".to_owned()),
            _ => None,
        };
        let s = ConsulSettings::default().with_consul_env(env);
        assert_eq!(s.addr, "http://10.0.0.5:8500");
        assert_eq!(s.token.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "the token is redacted in Debug"
        );
    }

    #[test]
    fn durations_are_written_as_go_parses_them() {
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }
}
