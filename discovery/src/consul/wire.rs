//! What goes over the wire to and from the agent: request bodies and queries, and each
//! answer as a named type.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};

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
    pub status: Option<CheckStatus>,
}

/// A check's status, as Consul spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
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

/// A `?recurse` read of a KV folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvAnswer {
    pub entries: Vec<KvEntry>,
    /// The index to block on next (`X-Consul-Index`).
    pub index: u64,
}

/// A key as Consul sends it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawKvEntry {
    pub key: String,
    /// Base64; `null` for a key stored with no value.
    pub value: Option<String>,
    pub modify_index: u64,
}

/// What `GET /v1/acl/token/self` says of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub description: String,
    /// The names of its policies.
    pub policies: Vec<String>,
}
