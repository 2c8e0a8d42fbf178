//! Consul KV as the config center: a service's TOML document at `<prefix>/<service>/data`
//! and an optional `<prefix>/<service>,<profile>/data` are layered between the config file
//! and the environment, read at start and followed with blocking queries. A change to the
//! log filter or to the service's [`ServiceSettings::Live`] part is applied at once; any
//! other is logged and waits for a restart; a bad document is refused and the last good
//! settings stay.

use std::sync::{Arc, Mutex, MutexGuard};

use config::Map;
use discovery::{ConsulClient, KvEntry, blocking::BlockingLoop};
use tokio::{sync::watch, task::JoinHandle};

use super::{ConfigError, Document, ServerFlags, ServerSettings, ServiceSettings, env_map};

/// What the config center last did, for logs, tests and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Whether settings are taken from Consul KV at all.
    pub enabled: bool,
    /// The KV index the applied documents were read at; `None` until Consul has answered.
    pub index: Option<u64>,
    /// The keys whose documents are applied now.
    pub documents: Vec<String>,
    /// Why the current documents were refused (the last good settings stay).
    pub rejected: Option<String>,
    /// Settings that differ in KV from what runs, and need a restart to take effect.
    pub needs_restart: Vec<String>,
}

/// Loads settings with their Consul KV layer and, once a runtime runs, follows it.
#[derive(Debug)]
pub struct ConfigCenter<T> {
    inner: Arc<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    service: &'static str,
    /// The flags without `--config`: the file is read once, at start, into `file`.
    flags: ServerFlags,
    /// The config file's text as read at start, layered under the KV documents each time.
    file: Option<Document>,
    env: Map<String, String>,
    /// The settings running now (live changes included).
    applied: watch::Sender<T>,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    status: Status,
    /// The documents last seen, good or not.
    documents: Vec<Document>,
    /// The settings the last good documents make, restart-only changes included.
    wanted: T,
}

/// The running settings, kept current by the KV watch; dropping it stops the watch.
#[derive(Debug)]
pub struct Live<T> {
    inner: Arc<Inner<T>>,
    task: Option<JoinHandle<()>>,
}

impl<T> Drop for Live<T> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl<T: ServiceSettings + Clone + PartialEq + Send + Sync + 'static> ConfigCenter<T> {
    /// From the process: [`ConfigCenter::start`] on a short-lived runtime of its own, for
    /// `main`, which needs the settings before it builds the server's runtime.
    pub fn load(service: &'static str, flags: &ServerFlags) -> Result<Self, ConfigError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ConfigError::Rejected(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(Self::start(service, flags, std::env::vars()))
    }

    /// Defaults → file → Consul KV → `env` → flags. When KV is enabled but Consul does not
    /// answer, the service starts on the other layers and the watch applies KV later.
    pub async fn start(
        service: &'static str,
        flags: &ServerFlags,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = env_map(env);
        let mut settings = T::load_from(flags, env.clone())?;
        // Read once: a KV change re-layers settings without touching the disk, and an edited
        // file waits for a restart like any other start-up input.
        let file = match &flags.config {
            Some(path) => Some(Document {
                key: path.display().to_string(),
                text: std::fs::read_to_string(path).map_err(|e| ConfigError::Document {
                    key: path.display().to_string(),
                    reason: e.to_string(),
                })?,
            }),
            None => None,
        };
        let flags = &ServerFlags {
            config: None,
            ..flags.clone()
        };
        let consul = settings.consul().clone();
        let mut status = Status {
            enabled: consul.config.enabled,
            ..Status::default()
        };
        let mut documents = Vec::new();
        if status.enabled {
            let client =
                ConsulClient::new(&consul).map_err(|e| ConfigError::Rejected(e.to_string()))?;
            let folder = consul.config.folder(service);
            match client.kv_folder(&folder, None, consul.config.wait).await {
                Ok(answer) => {
                    status.index = Some(answer.index);
                    documents = select(&answer.entries, &consul.config.keys(service));
                    if documents.is_empty() {
                        tracing::info!(keys = ?consul.config.keys(service),
                            "no settings document in Consul KV yet (with ACLs on, a token \
                             without `key_prefix` read on them sees none)");
                    }
                    match T::load_layers(flags, &env, &with_file(&file, &documents)) {
                        Ok(s) => {
                            status.documents = documents.iter().map(|d| d.key.clone()).collect();
                            settings = s;
                        }
                        Err(e) => {
                            let why = refusal(&documents, &e);
                            tracing::error!(error = %why,
                                "Consul KV settings refused; starting on file and environment settings");
                            status.rejected = Some(why);
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    folder = %folder, error = %e,
                    "Consul KV unavailable at start; starting on file and environment \
                     settings, KV applies once Consul answers"
                ),
            }
        }
        set_log_filter(settings.server());
        let (applied, _) = watch::channel(settings.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                service,
                flags: flags.clone(),
                file,
                env,
                applied,
                state: Mutex::new(State {
                    status,
                    documents,
                    wanted: settings,
                }),
            }),
        })
    }

    /// The settings to start with.
    pub fn settings(&self) -> T {
        self.inner.applied.borrow().clone()
    }

    /// Starts following Consul KV (when enabled) on the current runtime.
    pub fn watch(self) -> Live<T> {
        let enabled = self.inner.lock().status.enabled;
        let task = enabled.then(|| tokio::spawn(follow(Arc::clone(&self.inner))));
        Live {
            inner: self.inner,
            task,
        }
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Clone> Live<T> {
    /// The settings running now.
    pub fn settings(&self) -> T {
        self.inner.applied.borrow().clone()
    }

    /// Wakes on every applied change; the service applies its own live settings from it.
    pub fn subscribe(&self) -> watch::Receiver<T> {
        self.inner.applied.subscribe()
    }

    pub fn status(&self) -> Status {
        self.inner.lock().status.clone()
    }
}

/// The config file (if any) under the KV documents.
fn with_file(file: &Option<Document>, documents: &[Document]) -> Vec<Document> {
    file.iter().chain(documents).cloned().collect()
}

/// Why `documents` were refused, naming the key: a document's own error names it already;
/// a check across settings names every document.
fn refusal(documents: &[Document], error: &ConfigError) -> String {
    match error {
        ConfigError::Document { .. } => error.to_string(),
        _ => {
            let keys: Vec<&str> = documents.iter().map(|d| d.key.as_str()).collect();
            format!("{}: {error}", keys.join(" + "))
        }
    }
}

/// The service's documents among the folder's entries, lowest precedence first.
fn select(entries: &[KvEntry], keys: &[String]) -> Vec<Document> {
    keys.iter()
        .filter_map(|key| {
            let entry = entries.iter().find(|e| &e.key == key)?;
            Some(Document {
                key: key.clone(),
                text: String::from_utf8_lossy(&entry.value).into_owned(),
            })
        })
        .collect()
}

async fn follow<T: ServiceSettings + Clone + PartialEq + Send + Sync + 'static>(
    inner: Arc<Inner<T>>,
) {
    let consul = inner.applied.borrow().clone().consul().clone();
    let kv = consul.config.clone();
    let folder = kv.folder(inner.service);
    let keys = kv.keys(inner.service);
    let client = match ConsulClient::new(&consul) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow Consul KV settings");
            return;
        }
    };
    let mut blocking = BlockingLoop::new(kv.max_rate);
    if let Some(index) = inner.lock().status.index {
        blocking.answered(index);
    }
    loop {
        let index = blocking.next_index().await;
        match client
            .kv_folder(&folder, (index > 0).then_some(index), kv.wait)
            .await
        {
            Ok(answer) => {
                blocking.answered(answer.index);
                inner.update(select(&answer.entries, &keys), answer.index);
            }
            Err(e) => {
                let delay = blocking.failed();
                tracing::warn!(folder = %folder, error = %e, retry_in = ?delay,
                    "cannot read settings from Consul KV");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl<T: ServiceSettings + Clone + PartialEq> Inner<T> {
    /// Applies what `documents` change: live settings now, the rest logged for a restart.
    fn update(&self, documents: Vec<Document>, index: u64) {
        let mut state = self.lock();
        state.status.index = Some(index);
        if documents == state.documents {
            return;
        }
        state.documents = documents;
        let layers = with_file(&self.file, &state.documents);
        let wanted = match T::load_layers(&self.flags, &self.env, &layers) {
            Ok(w) => w,
            Err(e) => {
                let why = refusal(&state.documents, &e);
                tracing::error!(error = %why,
                    "Consul KV settings refused; the last good settings stay");
                state.status.rejected = Some(why);
                return;
            }
        };
        state.status.rejected = None;
        state.status.documents = state.documents.iter().map(|d| d.key.clone()).collect();
        // The running settings with the new live part: typed, so nothing outside
        // `T::Live` (and the log filter) can change while running.
        let running = self.applied.borrow().clone();
        let mut next = running.clone();
        next.set_live(wanted.live());
        next.server_mut().log_filter = wanted.server().log_filter.clone();
        // The trees only name what changed, for the log and the status.
        let (before, after) = (tree(&state.wanted), tree(&wanted));
        let applied = changed_paths(&tree(&running), &tree(&next));
        let needs_restart = changed_paths(&tree(&next), &after);
        for path in changed_paths(&before, &after) {
            if applied.contains(&path) {
                tracing::info!(setting = %path, "setting changed in Consul KV; applied");
            } else if needs_restart.contains(&path) {
                tracing::warn!(setting = %path,
                    "setting changed in Consul KV; it needs a restart and is not applied");
            } else {
                tracing::info!(setting = %path, "setting in Consul KV is back to the running value");
            }
        }
        state.status.needs_restart = needs_restart;
        state.wanted = wanted;
        if next.server().log_filter != running.server().log_filter {
            set_log_filter(next.server());
        }
        self.applied.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
    }
}

/// Installs `server.log_filter`, the one live setting every service has.
fn set_log_filter(server: &ServerSettings) {
    if let Err(e) = bootstrap::set_log_filter(server.log_filter.as_str()) {
        tracing::error!(error = %e, "cannot apply the log filter");
    }
}

/// The settings `live` changes when taken into `settings`, as dotted paths: for a service's
/// test to hold against the keys it documents as live.
pub fn live_paths<T: ServiceSettings + Clone>(settings: &T, live: T::Live) -> Vec<String> {
    let mut next = settings.clone();
    next.set_live(live);
    changed_paths(&tree(settings), &tree(&next))
}

/// Settings as a JSON tree, only to name what differs (`Null` if they cannot be shown).
fn tree(settings: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(settings).unwrap_or_default()
}

/// Dotted paths of the leaves that differ between two settings trees (a key present on one
/// side only counts).
fn changed_paths(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    fn walk(
        a: Option<&serde_json::Value>,
        b: Option<&serde_json::Value>,
        path: &str,
        out: &mut Vec<String>,
    ) {
        use serde_json::Value::Object;
        match (a, b) {
            (Some(Object(x)), Some(Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x.get(k), y.get(k), &sub, out);
                }
            }
            (x, y) if x != y => out.push(path.to_owned()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(Some(a), Some(b), "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn changed_paths_name_each_leaf_that_differs() {
        let a = json!({"server": {"port": 1, "ip": "x"}, "meta": {"a": "1"}, "list": [1]});
        let b = json!({"server": {"port": 2, "ip": "x"}, "meta": {"b": "2"}, "list": [1, 2]});
        assert_eq!(
            changed_paths(&a, &b),
            ["list", "meta.a", "meta.b", "server.port"]
        );
        assert!(changed_paths(&a, &a).is_empty());
    }

    #[test]
    fn the_profile_document_comes_last() {
        let entry = |key: &str, text: &str| KvEntry {
            key: key.to_owned(),
            value: text.as_bytes().to_vec(),
            modify_index: 1,
        };
        let entries = [
            entry("config/web,dev/data", "b"),
            entry("config/web/data", "a"),
            entry("config/web-admin/data", "x"),
        ];
        let keys = [
            "config/web/data".to_owned(),
            "config/web,dev/data".to_owned(),
        ];
        let docs = select(&entries, &keys);
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
    }
}
