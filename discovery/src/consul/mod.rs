//! A thin client for the parts of Consul's HTTP API the project uses: agent service
//! registration, agent services, health (with blocking queries) and KV reads.
//! Unknown response fields are ignored so it works with Consul 1.0 through current releases.
//!
//! # Layout
//! - [`settings`]: where the agent is, the token, the config center's KV layout;
//! - [`wire`]: what goes over the wire, requests and named answers;
//! - `connect`: Connect's CA roots, leaf certificates, `authorize` and intentions;
//! - `http1`: the health watch's own connection, read straight into the watch's buffer;
//! - here: the client and its error.

mod connect;
mod http1;
mod settings;
mod wire;

pub use connect::{Authorization, CaRoot, CaRoots, LeafCert, NotAServiceId, SpiffeId};

pub use settings::{ConsulSettings, KvConfigSettings};
use wire::RawKvEntry;
pub use wire::{
    AgentService, CheckRegistration, CheckStatus, HealthAnswer, HealthQuery, KvAnswer, KvEntry,
    ServiceRegistration, TokenInfo, Weights, go_duration,
};

use std::{collections::HashMap, time::Duration};

use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("invalid Consul address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("Consul unreachable at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    #[error(
        "the Consul token cannot be sent in an HTTP header (a character other than visible ASCII)"
    )]
    InvalidToken,
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

#[derive(Debug, Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: Url,
    /// `X-Consul-Token`, marked sensitive (its `Debug` shows no secret).
    token: Option<http::HeaderValue>,
    timeout: Duration,
}

/// `host:port` or `http://host:port` → a base URL. `https://` is refused: this client is
/// built without TLS (an agent is reached on its local plain-HTTP port, as Consul advises).
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
    if url.scheme() == "https" {
        return Err(invalid(
            "https:// is not supported: reach the local agent over http://".into(),
        ));
    }
    if url.scheme() != "http" {
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
            token: settings
                .effective_token()?
                .map(|t| {
                    let mut value = http::HeaderValue::from_str(t.expose())
                        .map_err(|_| ConsulError::InvalidToken)?;
                    value.set_sensitive(true);
                    Ok::<_, ConsulError>(value)
                })
                .transpose()?,
            timeout: settings.timeout,
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// A plain GET; a status other than 2xx is an error.
    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        self.read(path, &[], Duration::ZERO, Accept::Success).await
    }

    /// A GET with `query` (a blocking one when `extra` is its longer timeout).
    async fn read(
        &self,
        path: &str,
        query: &[(&str, String)],
        extra: Duration,
        accept: Accept,
    ) -> Result<reqwest::Response> {
        self.send(Method::GET, path, query, None::<&()>, extra, accept)
            .await
    }

    /// Sends one request; `extra` lengthens the timeout for blocking queries. A status other
    /// than 2xx (or 404, where `accept` allows it) is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
        extra: Duration,
        accept: Accept,
    ) -> Result<reqwest::Response> {
        let mut url = self.base.clone();
        url.set_path(path);
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .query(query)
            .timeout(self.timeout + extra);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token.clone());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ConsulError::Unreachable {
                url: url.to_string(),
                source: source.into(),
            })?;
        let status = response.status();
        if status.is_success() || (accept == Accept::NotFound && status == StatusCode::NOT_FOUND) {
            return Ok(response);
        }
        Err(status_error(method, path, response).await)
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
            Accept::Success,
        )
        .await
        .map(drop)
    }

    /// Idempotent: Consul answers 200 for an unknown ID too.
    pub async fn deregister(&self, service_id: &str) -> Result<()> {
        let path = format!("/v1/agent/service/deregister/{service_id}");
        self.send(
            Method::PUT,
            &path,
            &[],
            None::<&()>,
            Duration::ZERO,
            Accept::Success,
        )
        .await
        .map(drop)
    }

    pub async fn agent_services(&self) -> Result<HashMap<String, AgentService>> {
        let path = "/v1/agent/services";
        let response = self.get(path).await?;
        Self::json(path, response).await
    }

    /// Whether this instance is registered with the agent: `GET /v1/agent/service/<id>`
    /// (Consul 1.3+). `Ok(None)` when the agent says `unknown service ID`; `Err` with
    /// [`ConsulError::is_unsupported`] from an agent without the endpoint (an empty 404).
    pub async fn agent_service(&self, id: &str) -> Result<Option<()>> {
        let path = format!("/v1/agent/service/{id}");
        match self.get(&path).await {
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
    pub async fn acl_token_self(&self) -> Result<TokenInfo> {
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
        let response = self.get(path).await?;
        let token: TokenSelf = Self::json(path, response).await?;
        Ok(TokenInfo {
            description: token.description,
            policies: token.policies.into_iter().map(|p| p.name).collect(),
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
    ) -> Result<KvAnswer> {
        let path = format!("/v1/kv/{folder}");
        let mut query = vec![("recurse", "true".to_owned())];
        let extra = blocking(&mut query, index, index.map(|_| wait));
        let response = self.read(&path, &query, extra, Accept::NotFound).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(KvAnswer {
                entries: Vec::new(),
                index: consul_index(&path, &response)?,
            });
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
        Ok(KvAnswer { entries, index })
    }

    /// A connection of its own for following `GET /v1/health/service/<name>`, whose
    /// answers go straight into the caller's buffer (see [`HealthReader`]).
    pub fn health_reader(&self) -> HealthReader {
        // `base_url` made sure of an http URL with a host.
        let host = self.base.host_str().unwrap_or_default();
        let port = self.base.port_or_known_default().unwrap_or(80);
        let authority = match self.base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        // An IPv6 host is written in brackets in a URL, without them in a socket address.
        let dial = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        HealthReader {
            client: self.clone(),
            authority,
            conn: http1::Conn::new(dial, port),
            request: Vec::new(),
        }
    }
}

/// The health watch's connection to the agent. At thousands of instances each answer is
/// megabytes, read at every change: this connection reads them from the socket straight
/// into a buffer the watch keeps, where a general HTTP client would copy them once more
/// out of fresh buffers of its own. One per watch; the rest of the client goes through
/// reqwest.
#[derive(Debug)]
pub struct HealthReader {
    client: ConsulClient,
    /// The `Host` header: the address as configured.
    authority: String,
    conn: http1::Conn,
    /// The request's bytes, kept to be written again.
    request: Vec<u8>,
}

impl HealthReader {
    /// Passing (or all) instances of `name`: Consul's answer, its body appended to `body`
    /// (a buffer the caller keeps, so that megabytes of answer need no fresh memory).
    pub async fn health_service(
        &mut self,
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
        let extra = blocking(&mut query, q.index, q.wait);
        let mut url = self.client.base.clone();
        url.set_path(&path);
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (k, v.as_str())));
        self.request.clear();
        self.request.extend_from_slice(b"GET ");
        self.request.extend_from_slice(url.path().as_bytes());
        if let Some(q) = url.query() {
            self.request.push(b'?');
            self.request.extend_from_slice(q.as_bytes());
        }
        self.request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.request.extend_from_slice(self.authority.as_bytes());
        self.request.extend_from_slice(b"\r\nAccept: */*\r\n");
        if let Some(token) = &self.client.token {
            self.request.extend_from_slice(b"X-Consul-Token: ");
            self.request.extend_from_slice(token.as_bytes());
            self.request.extend_from_slice(b"\r\n");
        }
        self.request.extend_from_slice(b"\r\n");
        let start = body.len();
        let timeout = self.client.timeout;
        let head = self
            .conn
            .get(&self.request, body, timeout, timeout + extra)
            .await
            .map_err(|e| match e {
                http1::Http1Error::Malformed(_) => ConsulError::Decode {
                    path: path.clone(),
                    reason: e.to_string(),
                },
                e => ConsulError::Unreachable {
                    url: url.to_string(),
                    source: e.into(),
                },
            })?;
        if !head.status.is_success() {
            let text = String::from_utf8_lossy(&body[start..]).into_owned();
            body.truncate(start);
            return Err(ConsulError::Status {
                method: Method::GET,
                path,
                status: head.status,
                body: text,
            });
        }
        let headers = &head.headers;
        let index = index_header(&path, headers)?;
        let acl_deny = headers
            .get("X-Consul-Default-Acl-Policy")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"deny"));
        let backend = headers
            .get("X-Consul-Query-Backend")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(HealthAnswer {
            index,
            acl_deny,
            backend,
        })
    }
}

/// Adds a blocking query's `index` and `wait`, and returns how much longer than a plain call
/// Consul may hold it: up to wait + wait/16.
fn blocking(
    query: &mut Vec<(&str, String)>,
    index: Option<u64>,
    wait: Option<Duration>,
) -> Duration {
    if let Some(index) = index {
        query.push(("index", index.to_string()));
    }
    wait.map_or(Duration::ZERO, |wait| {
        query.push(("wait", go_duration(wait)));
        wait + wait / 16
    })
}

/// Which answers besides 2xx a request takes as answers rather than errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    Success,
    /// 404 too: an empty KV folder, which still carries the index to block on.
    NotFound,
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
    index_header(path, response.headers())
}

fn index_header(path: &str, headers: &http::HeaderMap) -> Result<u64> {
    headers
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
    use crate::Secret;

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
        assert!(
            base_url("https://c.example").is_err(),
            "no TLS in this client"
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
    fn a_token_that_cannot_be_a_header_is_refused_at_start() {
        let settings = |token: &str| ConsulSettings {
            token: Some(Secret::new(token)),
            ..ConsulSettings::default()
        };
        assert!(ConsulClient::new(&settings("b1gs3cr3t-uuid")).is_ok());
        let e = ConsulClient::new(&settings("line\nbreak")).expect_err("not a header value");
        assert!(matches!(e, ConsulError::InvalidToken), "{e}");
        assert!(
            !e.to_string().contains("line"),
            "the error shows no part of the token"
        );
    }

    #[test]
    fn durations_are_written_as_go_parses_them() {
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }
}
