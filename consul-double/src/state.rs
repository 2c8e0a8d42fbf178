//! The double's catalog: services, checks and KV behind one Raft-like index counter, with
//! the per-service indexes that blocking queries watch. Views render the JSON shapes of
//! Consul 1.0.8 as recorded in the transcripts.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `host:port` or `host:port/service`.
    Grpc {
        target: String,
        tls: bool,
    },
    Http {
        url: String,
    },
    Tcp {
        addr: String,
    },
    Ttl,
}

impl Probe {
    /// The check's `Type` as 1.10's health view names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Grpc { .. } => "grpc",
            Self::Http { .. } => "http",
            Self::Tcp { .. } => "tcp",
            Self::Ttl => "ttl",
        }
    }
}

/// A check as registered (after validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDef {
    pub check_id: Option<String>,
    pub name: Option<String>,
    pub notes: String,
    pub status: Option<Status>,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub ttl: Option<Duration>,
    pub deregister_critical_after: Option<Duration>,
}

/// A service as registered (after validation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: i64,
    /// `None` when registered without Meta: the health view then says `null`.
    pub meta: Option<BTreeMap<String, String>>,
    /// `Weights {Passing, Warning}`; `{1, 1}` when registered without them (as 1.10 reports).
    pub weights: (i64, i64),
    pub enable_tag_override: bool,
    pub checks: Vec<CheckDef>,
}

#[derive(Debug)]
pub struct Service {
    pub def: ServiceDef,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub notes: String,
    pub status: Status,
    /// What `/v1/agent/checks` shows: every probe's latest output.
    pub output: String,
    /// What the catalog shows: updated only with a status change (Consul syncs output-only
    /// changes lazily).
    pub catalog_output: String,
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub ttl: Option<Duration>,
    pub ttl_deadline: Option<Instant>,
    pub deregister_critical_after: Option<Duration>,
    pub critical_since: Option<Instant>,
    pub create_index: u64,
    pub modify_index: u64,
    pub runner: Option<AbortHandle>,
}

#[derive(Debug, Clone)]
pub struct KvEntry {
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Everything a dev agent keeps in memory (and forgets on restart).
#[derive(Debug)]
pub struct State {
    pub index: u64,
    pub node_id: String,
    pub node_name: String,
    pub datacenter: String,
    pub services: BTreeMap<String, Service>,
    pub checks: BTreeMap<String, Check>,
    pub kv: BTreeMap<String, KvEntry>,
    /// Index of the last change to the KV table (a missing key reports it).
    pub kv_index: u64,
    /// Index of the last registration or deregistration of any service.
    pub services_index: u64,
    /// Index of the last change to each service name (instances or check statuses).
    pub service_index: HashMap<String, u64>,
    /// Index of the last change to each KV key, deletions included.
    pub key_index: HashMap<String, u64>,
}

/// The Raft index a fresh dev agent has reached once it has elected itself (as recorded).
const FRESH_INDEX: u64 = 6;

impl State {
    pub fn new(node_name: &str) -> Self {
        Self {
            index: FRESH_INDEX,
            node_id: uuid::Uuid::new_v4().to_string(),
            node_name: node_name.to_owned(),
            datacenter: "dc1".into(),
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
            kv: BTreeMap::new(),
            kv_index: FRESH_INDEX,
            services_index: FRESH_INDEX,
            service_index: HashMap::new(),
            key_index: HashMap::new(),
        }
    }

    /// Forgets everything, like a restarted dev agent: new node ID, small index again.
    pub fn reset(&mut self) {
        for check in self.checks.values() {
            if let Some(runner) = &check.runner {
                runner.abort();
            }
        }
        *self = Self::new(&self.node_name.clone());
    }

    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// The index a health/catalog query on `name` reports and blocks on.
    pub fn index_of_service(&self, name: &str) -> u64 {
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.services_index)
    }

    pub fn index_of_key(&self, key: &str) -> u64 {
        self.key_index.get(key).copied().unwrap_or(self.kv_index)
    }

    /// The index a `?recurse`/`?keys` read of `prefix` reports and blocks on: the last change
    /// under it (deletions included), so writes elsewhere do not wake it, as in Consul.
    pub fn index_of_prefix(&self, prefix: &str) -> u64 {
        self.key_index
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(self.kv_index)
    }

    /// Adds or replaces a service. Checks that already exist keep their status and output,
    /// as Consul does on re-registration. Returns the IDs of the checks that need a runner.
    pub fn register(&mut self, def: ServiceDef) -> Vec<String> {
        let index = self.bump();
        let create_index = self.services.get(&def.id).map_or(index, |s| s.create_index);
        let many = def.checks.len() > 1;
        let mut new_ids = Vec::new();
        for (i, c) in def.checks.iter().enumerate() {
            let id = c.check_id.clone().unwrap_or_else(|| {
                if many {
                    format!("service:{}:{}", def.id, i + 1)
                } else {
                    format!("service:{}", def.id)
                }
            });
            let old = self.checks.remove(&id);
            if let Some(runner) = old.as_ref().and_then(|o| o.runner.as_ref()) {
                runner.abort();
            }
            let status = old
                .as_ref()
                .map(|o| o.status)
                .or(c.status)
                .unwrap_or(Status::Critical);
            let now = Instant::now();
            let check = Check {
                id: id.clone(),
                name: c
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("Service '{}' check", def.name)),
                notes: c.notes.clone(),
                status,
                output: old.as_ref().map(|o| o.output.clone()).unwrap_or_default(),
                catalog_output: old
                    .as_ref()
                    .map(|o| o.catalog_output.clone())
                    .unwrap_or_default(),
                service_id: def.id.clone(),
                service_name: def.name.clone(),
                service_tags: def.tags.clone(),
                probe: c.probe.clone(),
                interval: c.interval,
                timeout: c.timeout,
                ttl: c.ttl,
                ttl_deadline: c.ttl.map(|ttl| now + ttl),
                deregister_critical_after: c.deregister_critical_after,
                critical_since: match old.as_ref() {
                    Some(o) => o.critical_since,
                    None => (status == Status::Critical).then_some(now),
                },
                create_index: old.as_ref().map_or(index, |o| o.create_index),
                modify_index: index,
                runner: None,
            };
            self.checks.insert(id.clone(), check);
            new_ids.push(id);
        }
        // Checks of an earlier registration that this one no longer declares go away.
        let stale: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.service_id == def.id && !new_ids.contains(&c.id))
            .map(|c| c.id.clone())
            .collect();
        for id in stale {
            self.remove_check(&id);
        }
        self.service_index.insert(def.name.clone(), index);
        self.services_index = index;
        self.services.insert(
            def.id.clone(),
            Service {
                def,
                create_index,
                modify_index: index,
            },
        );
        new_ids
    }

    fn remove_check(&mut self, id: &str) {
        if let Some(check) = self.checks.remove(id)
            && let Some(runner) = check.runner
        {
            runner.abort();
        }
    }

    /// Removes a service and all its checks; `false` when it was not there (still fine).
    pub fn deregister(&mut self, id: &str) -> bool {
        let Some(service) = self.services.remove(id) else {
            return false;
        };
        let ids: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.service_id == id)
            .map(|c| c.id.clone())
            .collect();
        for check in ids {
            self.remove_check(&check);
        }
        let index = self.bump();
        self.service_index.insert(service.def.name, index);
        self.services_index = index;
        true
    }

    /// Records a check result. A status change bumps the index (waking blockers) and reaches
    /// the catalog; an output-only change shows in the agent view alone.
    pub fn set_check(&mut self, id: &str, status: Status, output: String) -> bool {
        let Some(check) = self.checks.get(id) else {
            return false;
        };
        if check.status == status {
            if let Some(check) = self.checks.get_mut(id) {
                check.output = output;
            }
            return true;
        }
        let index = self.bump();
        let Some(check) = self.checks.get_mut(id) else {
            return false;
        };
        check.status = status;
        check.output = output.clone();
        check.catalog_output = output;
        check.modify_index = index;
        check.critical_since = (status == Status::Critical).then(Instant::now);
        let name = check.service_name.clone();
        self.service_index.insert(name, index);
        true
    }

    /// pass/warn/fail/update on a TTL check: the status, and a fresh TTL deadline.
    pub fn update_ttl(&mut self, id: &str, status: Status, output: String) -> bool {
        match self.checks.get_mut(id) {
            Some(check) if check.ttl.is_some() => {
                check.ttl_deadline = check.ttl.map(|ttl| Instant::now() + ttl);
            }
            _ => return false,
        }
        self.set_check(id, status, output)
    }

    /// Turns expired TTL checks critical.
    pub fn expire_ttls(&mut self, now: Instant) {
        let expired: Vec<(String, String)> = self
            .checks
            .values()
            .filter(|c| c.ttl_deadline.is_some_and(|d| d <= now))
            .map(|c| (c.id.clone(), c.output.clone()))
            .collect();
        for (id, last) in expired {
            if let Some(check) = self.checks.get_mut(&id) {
                check.ttl_deadline = None;
            }
            self.set_check(
                &id,
                Status::Critical,
                format!("TTL expired (last output before timeout follows): {last}"),
            );
        }
    }

    /// Services whose check has been critical longer than its DeregisterCriticalServiceAfter
    /// (never less than `minimum`).
    pub fn reapable(&self, now: Instant, minimum: Duration) -> Vec<String> {
        let mut ids: Vec<String> = self
            .checks
            .values()
            .filter_map(|c| {
                let after = c.deregister_critical_after?.max(minimum);
                let since = c.critical_since?;
                (now.duration_since(since) >= after).then(|| c.service_id.clone())
            })
            .collect();
        ids.dedup();
        ids
    }

    // ---- views ------------------------------------------------------------------------

    fn node_json(&self) -> Value {
        json!({
            "ID": self.node_id, "Node": self.node_name, "Address": "127.0.0.1",
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": "127.0.0.1", "lan_ipv4": "127.0.0.1",
                "wan": "127.0.0.1", "wan_ipv4": "127.0.0.1"},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 5, "ModifyIndex": 6,
        })
    }

    fn serf_check_json(&self) -> Value {
        json!({
            "Node": self.node_name, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
            "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "", "Interval": "",
            "Timeout": "", "ExposedPort": 0, "Definition": {},
            "CreateIndex": 5, "ModifyIndex": 5,
        })
    }

    /// `agent` selects the agent view (live output, zero indexes) over the catalog's.
    pub fn check_json(&self, c: &Check, agent: bool) -> Value {
        json!({
            "Node": self.node_name, "CheckID": c.id, "Name": c.name,
            "Status": c.status.as_str(), "Notes": c.notes,
            "Output": if agent { &c.output } else { &c.catalog_output },
            "ServiceID": c.service_id, "ServiceName": c.service_name,
            "ServiceTags": c.service_tags, "Definition": {},
            "CreateIndex": if agent { 0 } else { c.create_index },
            "ModifyIndex": if agent { 0 } else { c.modify_index },
        })
    }

    pub fn agent_services(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .services
            .values()
            .map(|s| {
                let d = &s.def;
                (
                    d.id.clone(),
                    json!({
                        "ID": d.id, "Service": d.name, "Tags": d.tags, "Address": d.address,
                        "Meta": d.meta.clone().unwrap_or_default(), "Port": d.port,
                        "Weights": {"Passing": d.weights.0, "Warning": d.weights.1},
                        "EnableTagOverride": d.enable_tag_override,
                        "CreateIndex": 0, "ModifyIndex": 0,
                    }),
                )
            })
            .collect();
        Value::Object(map)
    }

    pub fn agent_checks(&self) -> Value {
        Value::Object(
            self.checks
                .values()
                .map(|c| (c.id.clone(), self.check_json(c, true)))
                .collect(),
        )
    }

    fn instances<'a>(
        &'a self,
        name: &'a str,
        tag: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Service> {
        self.services
            .values()
            .filter(move |s| s.def.name == name)
            .filter(move |s| tag.is_none_or(|t| s.def.tags.iter().any(|x| x == t)))
    }

    /// Entries in 1.10's shape (`TaggedAddresses`, `Proxy`, `Connect`, the checks' `Type`…),
    /// ordered by service ID as Consul orders one node's: a client sees the bytes a real agent
    /// would send, instance for instance.
    pub fn health_service(&self, name: &str, tag: Option<&str>, passing: bool) -> Value {
        // One pass over the checks, not one per instance: thousands of instances stay cheap.
        let mut checks_by_service: HashMap<&str, Vec<&Check>> = HashMap::new();
        for c in self.checks.values() {
            checks_by_service
                .entry(c.service_id.as_str())
                .or_default()
                .push(c);
        }
        let node = self.node_json();
        let serf = self.serf_check_json();
        let entries: Vec<Value> = self
            .instances(name, tag)
            .filter_map(|s| {
                let d = &s.def;
                let own = checks_by_service
                    .get(d.id.as_str())
                    .map_or(&[][..], Vec::as_slice);
                if passing && own.iter().any(|c| c.status != Status::Passing) {
                    return None;
                }
                let mut checks = vec![serf.clone()];
                checks.extend(own.iter().map(|c| {
                    let mut check = self.check_json(c, false);
                    for (k, v) in [
                        ("Type", json!(c.probe.kind())),
                        ("Interval", json!("")),
                        ("Timeout", json!("")),
                        ("ExposedPort", json!(0)),
                    ] {
                        check[k] = v;
                    }
                    check
                }));
                let mut service = json!({
                    "ID": d.id, "Service": d.name, "Tags": d.tags, "Address": d.address,
                });
                if !d.address.is_empty() {
                    let tagged = json!({"Address": d.address, "Port": d.port});
                    service["TaggedAddresses"] = json!({"lan_ipv4": tagged, "wan_ipv4": tagged});
                }
                for (k, v) in [
                    ("Meta", json!(d.meta)),
                    ("Port", json!(d.port)),
                    (
                        "Weights",
                        json!({"Passing": d.weights.0, "Warning": d.weights.1}),
                    ),
                    ("EnableTagOverride", json!(d.enable_tag_override)),
                    (
                        "Proxy",
                        json!({"Mode": "", "MeshGateway": {}, "Expose": {}}),
                    ),
                    ("Connect", json!({})),
                    ("CreateIndex", json!(s.create_index)),
                    ("ModifyIndex", json!(s.modify_index)),
                ] {
                    service[k] = v;
                }
                Some(json!({"Node": node, "Service": service, "Checks": checks}))
            })
            .collect();
        Value::Array(entries)
    }

    pub fn health_checks(&self, name: &str) -> Value {
        Value::Array(
            self.checks
                .values()
                .filter(|c| c.service_name == name)
                .map(|c| self.check_json(c, false))
                .collect(),
        )
    }

    pub fn catalog_services(&self) -> Value {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        map.insert("consul".into(), Vec::new());
        for s in self.services.values() {
            let tags = map.entry(s.def.name.clone()).or_default();
            for t in &s.def.tags {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
        }
        json!(map)
    }

    pub fn catalog_service(&self, name: &str, tag: Option<&str>) -> Value {
        Value::Array(
            self.instances(name, tag)
                .map(|s| {
                    let d = &s.def;
                    json!({
                        "ID": self.node_id, "Node": self.node_name, "Address": "127.0.0.1",
                        "Datacenter": self.datacenter,
                        "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                        "NodeMeta": {"consul-network-segment": ""},
                        "ServiceID": d.id, "ServiceName": d.name, "ServiceTags": d.tags,
                        "ServiceAddress": d.address,
                        "ServiceMeta": d.meta.clone().unwrap_or_default(),
                        "ServicePort": d.port,
                        "ServiceWeights": {"Passing": d.weights.0, "Warning": d.weights.1},
                        "ServiceEnableTagOverride": d.enable_tag_override,
                        "CreateIndex": s.create_index, "ModifyIndex": s.modify_index,
                    })
                })
                .collect(),
        )
    }

    // ---- KV ---------------------------------------------------------------------------

    pub fn kv_put(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: Option<u64>) -> bool {
        let existing = self.kv.get(key).map(|e| e.modify_index);
        match (cas, existing) {
            (Some(0), Some(_)) => return false,
            (Some(c), Some(m)) if c != 0 && c != m => return false,
            (Some(c), None) if c != 0 => return false,
            _ => {}
        }
        let index = self.bump();
        let create_index = self.kv.get(key).map_or(index, |e| e.create_index);
        self.kv.insert(
            key.to_owned(),
            KvEntry {
                value,
                flags,
                create_index,
                modify_index: index,
            },
        );
        self.kv_index = index;
        self.key_index.insert(key.to_owned(), index);
        true
    }

    pub fn kv_delete(&mut self, key: &str, recurse: bool) {
        let keys: Vec<String> = if recurse {
            self.kv
                .keys()
                .filter(|k| k.starts_with(key))
                .cloned()
                .collect()
        } else {
            self.kv
                .contains_key(key)
                .then(|| key.to_owned())
                .into_iter()
                .collect()
        };
        if keys.is_empty() {
            return;
        }
        let index = self.bump();
        for k in keys {
            self.kv.remove(&k);
            self.key_index.insert(k, index);
        }
        self.kv_index = index;
    }

    pub fn kv_json(&self, key: &str, e: &KvEntry) -> Value {
        use base64::Engine;
        let value = if e.value.is_empty() {
            Value::Null
        } else {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value))
        };
        json!({
            "LockIndex": 0, "Key": key, "Flags": e.flags, "Value": value,
            "CreateIndex": e.create_index, "ModifyIndex": e.modify_index,
        })
    }
}
