//! Layered settings for every service: the settings type's own `Default` → an optional TOML
//! file → TOML documents from Consul KV (see [`center`]) → `PREFIX__SECTION__KEY` environment
//! variables → overrides (flags, and well-known variables such as `DATABASE_URL`). A file or
//! document key that matches no setting is an error naming it; an environment variable with
//! the prefix that matches none is a warning naming it.

pub mod center;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use config::{FileFormat, Map, Source, Value, ValueKind};
use discovery::ConsulSettings;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use bootstrap::{Cli, ServerFlags};

/// A service's settings type: its defaults, its environment prefix, its Consul section.
/// [`ServiceSettings::load_from`] (and the config center, [`center::ConfigCenter`]) then
/// layers it the same way for every service.
pub trait ServiceSettings: Default + Serialize + DeserializeOwned {
    /// `PREFIX` of `PREFIX__SECTION__KEY`.
    const ENV_PREFIX: &'static str;
    /// Keys whose environment value is a comma-separated list.
    const LIST_KEYS: &'static [&'static str] = &["registration.tags"];
    /// Whether sqlx's `DATABASE_URL` sets `database.url` (services with a database).
    const DATABASE_URL: bool = false;
    /// Variables read beside the prefixed ones (e.g. a seed command's password).
    const OTHER_ENV: &'static [&'static str] = &[];
    /// The part of the settings that a change in Consul KV applies to the running process,
    /// beside `server.log_filter`, which the kit applies for every service; a change to
    /// anything else is logged and waits for a restart. The service applies it (see
    /// [`center::Live`]); `()` when nothing else changes live.
    type Live: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;

    /// The live part of these settings.
    fn live(&self) -> Self::Live;

    /// Takes `live` in, leaving every other setting as it is.
    fn set_live(&mut self, live: Self::Live);

    /// The server section, the same in every service.
    fn server(&self) -> &ServerSettings;
    fn server_mut(&mut self) -> &mut ServerSettings;

    /// The Consul section, which `CONSUL_HTTP_ADDR`/`CONSUL_HTTP_TOKEN` fill.
    fn consul(&mut self) -> &mut ConsulSettings;

    /// Checks across settings, after loading.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Defaults → `--config` file → `env` → the other flags (no Consul KV; the config center
    /// adds it, see [`center::ConfigCenter`]).
    fn load_from(
        flags: &ServerFlags,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = env_map(env);
        for name in unknown_env(
            &serde_json::to_value(Self::default())?,
            Self::ENV_PREFIX,
            &env,
        ) {
            tracing::warn!(
                variable = %name,
                "environment variable matches no setting and is ignored (a typo?)"
            );
        }
        Self::load_layers(flags, &env, &[])
    }

    /// Defaults → file → `documents` (Consul KV, lowest precedence first) → `env` → flags.
    fn load_layers(
        flags: &ServerFlags,
        env: &Map<String, String>,
        documents: &[Document],
    ) -> Result<Self, ConfigError> {
        let mut overrides = Vec::new();
        if let Some(filter) = env.get("RUST_LOG").filter(|f| !f.is_empty()) {
            overrides.push(("server.log_filter", filter.as_str().into()));
        }
        if let Some(url) = env
            .get("DATABASE_URL")
            .filter(|u| Self::DATABASE_URL && !u.is_empty())
        {
            overrides.push(("database.url", url.as_str().into()));
        }
        overrides.extend(flags.overrides());
        let sources = Sources {
            file: flags.config.as_deref(),
            documents,
            env_prefix: Self::ENV_PREFIX,
            list_keys: Self::LIST_KEYS,
            overrides,
        };
        let mut settings: Self = load(sources, env)?;
        let consul = std::mem::take(settings.consul());
        *settings.consul() = consul.with_consul_env(|k| env.get(k).cloned());
        settings.validate().map_err(ConfigError::Rejected)?;
        Ok(settings)
    }

    /// Every environment variable the service reads (deployment files are checked against it).
    fn env_names() -> Vec<String> {
        let mut names = env_names::<Self>(Self::ENV_PREFIX);
        let database: &[&str] = if Self::DATABASE_URL {
            &["DATABASE_URL"]
        } else {
            &[]
        };
        names.extend(
            [
                "CONSUL_HTTP_ADDR",
                "CONSUL_HTTP_TOKEN",
                "CONSUL_HTTP_TOKEN_FILE",
                "RUST_LOG",
                "LOG_FORMAT",
            ]
            .iter()
            .chain(database)
            .chain(bootstrap::telemetry::ENV)
            .chain(Self::OTHER_ENV)
            .map(|n| (*n).to_owned()),
        );
        names
    }
}

pub use discovery::Secret;

/// A log filter in `RUST_LOG` syntax (`info,user_srv=debug`), checked when loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogFilter {
    type Error = String;

    fn try_from(directives: String) -> Result<Self, String> {
        bootstrap::parse_log_filter(&directives)?;
        Ok(Self(directives))
    }
}

impl From<LogFilter> for String {
    fn from(filter: LogFilter) -> Self {
        filter.0
    }
}

impl Default for LogFilter {
    fn default() -> Self {
        Self("info".to_owned())
    }
}

/// How a server binds, serves and stops; the same section in every service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSettings {
    /// Address to bind. 127.0.0.1 by default so a dev box exposes nothing.
    pub ip: IpAddr,
    /// 0 lets the OS pick a free port; the bound port is logged and registered.
    pub port: u16,
    /// How long in-flight calls get to finish after a stop signal.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Async runtime threads: 1 (the default) runs every connection on one thread, the
    /// cheapest per call for a service that scales by instances; 0 is one per CPU.
    pub worker_threads: usize,
    /// Largest request body accepted, in bytes (HTTP servers).
    pub body_limit: usize,
    /// A client must send a whole request head within this, or its connection is closed;
    /// it also bounds how long an idle keep-alive connection is kept (HTTP servers).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once (HTTP servers); beyond it new ones wait in the listen
    /// queue until one closes.
    pub max_connections: usize,
    /// Once serving, the bound address is written here (see `--ready-file`).
    pub ready_file: Option<PathBuf>,
    /// Which log lines are written; `RUST_LOG` overrides it. Changes in Consul KV apply live.
    pub log_filter: LogFilter,
    /// gRPC servers: the admin HTTP port serving Prometheus `/metrics` on `ip`; 0 lets the
    /// OS pick one, announced in the Consul registration's `metrics_port` meta.
    pub admin_port: u16,
    /// The adaptive concurrency limit: beyond it, calls are refused at once (HTTP: 503 with
    /// `Retry-After`; gRPC: RESOURCE_EXHAUSTED).
    pub limit: crate::overload::LimitSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            drain_timeout: Duration::from_secs(10),
            worker_threads: 1,
            body_limit: 16 * 1024,
            header_read_timeout: Duration::from_secs(5),
            max_connections: 4096,
            ready_file: None,
            log_filter: LogFilter::default(),
            admin_port: 0,
            limit: crate::overload::LimitSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("{file}: unknown setting(s) {}; check the spelling against the README", keys.join(", "))]
    UnknownKeys { file: String, keys: Vec<String> },
    #[error("the built-in defaults do not serialize: {0}")]
    Defaults(#[from] serde_json::Error),
    #[error("invalid configuration: {0}")]
    Rejected(String),
    #[error("{key}: {reason}")]
    Document { key: String, reason: String },
}

/// A TOML settings document and where it came from (a Consul KV key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub key: String,
    pub text: String,
}

/// One service's settings sources, lowest precedence first (its defaults are `T::default()`).
#[derive(Debug, Default)]
pub struct Sources<'a> {
    /// An optional TOML file; it must exist when given.
    pub file: Option<&'a Path>,
    /// TOML documents over the file (Consul KV), lowest precedence first.
    pub documents: &'a [Document],
    /// Environment prefix: `PREFIX__SECTION__KEY`.
    pub env_prefix: &'a str,
    /// Keys whose environment value is a comma-separated list.
    pub list_keys: &'a [&'a str],
    /// Last word (command-line flags, well-known variables such as `DATABASE_URL`).
    pub overrides: Vec<(&'a str, Value)>,
}

/// Merges `T::default()` → file → documents → environment (filtered by prefix) → overrides
/// into `T`. A document with a syntax error, an unknown key or a value of the wrong type is
/// refused with an error naming the document.
pub fn load<T>(sources: Sources<'_>, env: &Map<String, String>) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let defaults = serde_json::to_value(T::default())?;
    let mut builder = config::Config::builder();
    if let serde_json::Value::Object(map) = &defaults {
        for (key, value) in map {
            if let Some(value) = to_config(value) {
                builder = builder.set_default(key, value)?;
            }
        }
    }
    if let Some(file) = sources.file {
        let source = config::File::from(file).required(true);
        let unknown = unknown_keys(&defaults, &source.collect()?);
        if !unknown.is_empty() {
            return Err(ConfigError::UnknownKeys {
                file: file.display().to_string(),
                keys: unknown,
            });
        }
        builder = builder.add_source(source);
    }
    for document in sources.documents {
        let refused = |reason: String| ConfigError::Document {
            key: document.key.clone(),
            reason,
        };
        let source = config::File::from_str(&document.text, FileFormat::Toml);
        let table = source.collect().map_err(|e| refused(e.to_string()))?;
        let unknown = unknown_keys(&defaults, &table);
        if !unknown.is_empty() {
            return Err(refused(format!(
                "unknown setting(s) {}",
                unknown.join(", ")
            )));
        }
        // Alone over the defaults, so a wrong type is blamed on this document.
        builder
            .clone()
            .add_source(source.clone())
            .build()
            .and_then(|c| c.try_deserialize::<T>())
            .map_err(|e| refused(e.to_string()))?;
        builder = builder.add_source(source);
    }
    let mut environment = config::Environment::with_prefix(sources.env_prefix)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(env.clone()));
    for key in sources.list_keys {
        environment = environment.with_list_parse_key(key);
    }
    builder = builder.add_source(environment);
    for (key, value) in sources.overrides {
        builder = builder.set_override(key, value)?;
    }
    Ok(builder.build()?.try_deserialize()?)
}

/// A serialized default as a `config` value; `None` for null (an unset `Option`).
fn to_config(value: &serde_json::Value) -> Option<Value> {
    let kind = match value {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => ValueKind::Boolean(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ValueKind::I64(i),
            (None, Some(u), _) => ValueKind::U64(u),
            (_, _, Some(f)) => ValueKind::Float(f),
            _ => return None,
        },
        serde_json::Value::String(s) => ValueKind::String(s.clone()),
        serde_json::Value::Array(items) => {
            ValueKind::Array(items.iter().filter_map(to_config).collect())
        }
        serde_json::Value::Object(map) => ValueKind::Table(
            map.iter()
                .filter_map(|(k, v)| to_config(v).map(|v| (k.clone(), v)))
                .collect(),
        ),
    };
    Some(Value::new(None, kind))
}

/// Whether `path` names a setting of `defaults`. An empty table (a map setting) or an unset
/// option accepts whatever lies below it.
fn is_known(defaults: &serde_json::Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return true;
    };
    match defaults {
        serde_json::Value::Object(map) if map.is_empty() => true,
        serde_json::Value::Object(map) => map.get(first).is_some_and(|v| is_known(v, rest)),
        serde_json::Value::Null => true,
        _ => false,
    }
}

/// Every leaf key of a file (`section.key`) that names no setting.
fn unknown_keys(defaults: &serde_json::Value, file: &Map<String, Value>) -> Vec<String> {
    fn walk(
        defaults: &serde_json::Value,
        prefix: &mut Vec<String>,
        table: &Map<String, Value>,
        out: &mut Vec<String>,
    ) {
        for (key, value) in table {
            prefix.push(key.clone());
            if !is_known(defaults, prefix) {
                out.push(prefix.join("."));
            } else if let ValueKind::Table(inner) = &value.kind {
                walk(defaults, prefix, inner, out);
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(defaults, &mut Vec::new(), file, &mut out);
    out.sort();
    out
}

/// Every `PREFIX__…` variable in `env` that names no setting.
fn unknown_env(
    defaults: &serde_json::Value,
    prefix: &str,
    env: &Map<String, String>,
) -> Vec<String> {
    let head = format!("{prefix}__");
    let mut out: Vec<String> = env
        .keys()
        .filter_map(|name| {
            let rest = name.strip_prefix(&head)?;
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            (!is_known(defaults, &path)).then(|| name.clone())
        })
        .collect();
    out.sort();
    out
}

/// The environment variables a settings type reads: `PREFIX__SECTION__KEY` for every leaf of
/// its defaults (so a new field is listed without anyone keeping a list).
pub fn env_names<T: Default + Serialize>(prefix: &str) -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    walk(&format!("{prefix}__{}", k.to_uppercase()), v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::to_value(T::default()) {
        walk(prefix, &value, &mut out);
    }
    out.sort();
    out
}

/// The environment as a map, for [`load`].
pub fn env_map(env: impl IntoIterator<Item = (String, String)>) -> Map<String, String> {
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Demo {
        server: ServerSettings,
        tags: Vec<String>,
        meta: std::collections::HashMap<String, String>,
    }

    fn sources<'a>(file: Option<&'a Path>) -> Sources<'a> {
        Sources {
            file,
            documents: &[],
            env_prefix: "DEMO",
            list_keys: &["tags"],
            overrides: Vec::new(),
        }
    }

    #[test]
    fn typed_defaults_then_file_then_env() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("demo.toml");
        std::fs::write(&file, "[server]\nport = 7000\n[meta]\nzone = \"a\"\n")?;
        let env = env_map([
            ("DEMO__SERVER__DRAIN_TIMEOUT".to_owned(), "3s".to_owned()),
            ("DEMO__TAGS".to_owned(), "a,b".to_owned()),
        ]);
        let demo: Demo = load(sources(Some(&file)), &env)?;
        assert_eq!(demo.server.port, 7000);
        assert_eq!(demo.server.drain_timeout, Duration::from_secs(3));
        assert_eq!(demo.server.worker_threads, 1);
        assert_eq!(demo.tags, ["a", "b"]);
        assert_eq!(demo.meta.get("zone").map(String::as_str), Some("a"));
        Ok(())
    }

    #[test]
    fn an_unknown_file_key_is_an_error_that_names_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("demo.toml");
        std::fs::write(&file, "[server]\nprot = 7000\n[sever]\nip = \"0.0.0.0\"\n")?;
        let err = load::<Demo>(sources(Some(&file)), &Map::new()).expect_err("unknown keys");
        let text = err.to_string();
        assert!(
            text.contains("server.prot") && text.contains("sever"),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn unknown_environment_names_are_found() {
        let env = env_map([
            ("DEMO__SERVER__PROT".to_owned(), "1".to_owned()),
            ("DEMO__SERVER__PORT".to_owned(), "1".to_owned()),
            ("DEMO__META__ANYTHING".to_owned(), "x".to_owned()),
            ("OTHER__X".to_owned(), "1".to_owned()),
        ]);
        let defaults = serde_json::to_value(Demo::default()).expect("serializes");
        assert_eq!(unknown_env(&defaults, "DEMO", &env), ["DEMO__SERVER__PROT"]);
    }

    #[test]
    fn env_names_cover_every_leaf() {
        let names = env_names::<Demo>("DEMO");
        for name in [
            "DEMO__SERVER__PORT",
            "DEMO__SERVER__READY_FILE",
            "DEMO__TAGS",
            "DEMO__META",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
    }
}
