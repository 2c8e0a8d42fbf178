//! Follows a service's passing instances in Consul with blocking queries and publishes the
//! set on a `watch` channel. Spurious wake-ups (same body, new index) publish nothing; an
//! index that goes backwards (agent restart) resets to 0; while Consul is unreachable the
//! last known set stays in place, and an empty answer from a reachable Consul empties it.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    backoff::Backoff,
    consul::{ConsulClient, HealthQuery, ServiceEntry},
};

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WatchSettings {
    /// The service's name in Consul; each caller names its own (no default service).
    pub service: String,
    /// Only instances carrying this tag.
    pub tag: Option<String>,
    /// Another datacenter than the agent's.
    pub dc: Option<String>,
    /// How long one blocking query may wait for a change.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            service: String::new(),
            tag: None,
            dc: None,
            wait: Duration::from_secs(30),
        }
    }
}

/// One passing instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub id: String,
    pub addr: SocketAddr,
    /// Consul `Weights.Passing`; 1 when Consul does not send weights.
    pub weight: u32,
}

/// The published set, sorted by ID, plus whether Consul has answered at least once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub list: Arc<Vec<Endpoint>>,
    pub known: bool,
}

fn endpoints(entries: &[ServiceEntry]) -> Vec<Endpoint> {
    let mut list: Vec<Endpoint> = entries
        .iter()
        .filter_map(|e| {
            // An instance registered without an address is reached at its node's.
            let host = if e.service.address.is_empty() {
                &e.node.address
            } else {
                &e.service.address
            };
            let ip = host.parse().ok().or_else(|| {
                tracing::warn!(service_id = %e.service.id, address = %host, "instance address is not an IP; skipped");
                None
            })?;
            Some(Endpoint {
                id: e.service.id.clone(),
                addr: SocketAddr::new(ip, e.service.port),
                weight: e.service.weights.map_or(1, |w| w.passing.max(1)),
            })
        })
        .collect();
    list.sort();
    list
}

/// A running watch. Dropping it stops the watch.
#[derive(Debug)]
pub struct Watcher {
    rx: watch::Receiver<Endpoints>,
    /// Why the list may be empty when it should not be (an ACL token that cannot read it).
    diagnosis: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    pub fn start(client: ConsulClient, settings: WatchSettings) -> Self {
        let (tx, rx) = watch::channel(Endpoints::default());
        let (diagnose, diagnosis) = watch::channel(None);
        let task = tokio::spawn(follow(client, settings, tx, diagnose));
        Self {
            rx,
            diagnosis,
            task,
        }
    }

    /// Set while Consul lists no instance and its ACLs deny by default: what the token may
    /// lack (also logged as a warning).
    pub fn diagnosis(&self) -> Option<String> {
        self.diagnosis.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Endpoints> {
        self.rx.clone()
    }

    pub fn current(&self) -> Endpoints {
        self.rx.borrow().clone()
    }
}

/// Why an empty answer from a default-deny agent is likely the token's doing.
async fn acl_diagnosis(client: &ConsulClient, service: &str) -> String {
    let lacks = format!("the token may lack service:read on {service}");
    if !client.has_token() {
        return format!(
            "Consul's ACLs deny by default and no token is set (CONSUL_HTTP_TOKEN or \
             CONSUL_HTTP_TOKEN_FILE): {lacks}"
        );
    }
    match client.acl_token_self().await {
        Ok((description, policies)) => format!(
            "Consul's ACLs deny by default and {lacks} (token {description:?}, policies {policies:?})"
        ),
        Err(e) => {
            format!("Consul's ACLs deny by default and the token is not accepted ({e}): {lacks}")
        }
    }
}

async fn follow(
    client: ConsulClient,
    settings: WatchSettings,
    tx: watch::Sender<Endpoints>,
    diagnose: watch::Sender<Option<String>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut index = 0;
    let mut unreachable = false;
    loop {
        let query = HealthQuery {
            passing: true,
            tag: settings.tag.clone(),
            dc: settings.dc.clone(),
            index: Some(index),
            wait: Some(settings.wait),
        };
        match client.health_service(&settings.service, &query).await {
            Ok((entries, new_index, acl_deny)) => {
                if entries.is_empty() && acl_deny {
                    if diagnose.borrow().is_none() {
                        let why = acl_diagnosis(&client, &settings.service).await;
                        tracing::warn!(service = %settings.service, "no instances: {why}");
                        diagnose.send_replace(Some(why));
                    }
                } else if !entries.is_empty() && diagnose.borrow().is_some() {
                    diagnose.send_replace(None);
                }
                if unreachable {
                    tracing::info!(service = %settings.service, "Consul reachable again");
                    unreachable = false;
                }
                backoff.reset();
                // A lower index means the agent's state was rebuilt: start over.
                index = if new_index < index { 0 } else { new_index };
                let list = endpoints(&entries);
                tx.send_if_modified(|current| {
                    if current.known && *current.list == list {
                        return false;
                    }
                    tracing::info!(
                        service = %settings.service,
                        instances = list.len(),
                        ids = ?list.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
                        "instances changed"
                    );
                    *current = Endpoints {
                        list: Arc::new(list),
                        known: true,
                    };
                    true
                });
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if e.is_forbidden() {
                    diagnose.send_replace(Some(format!(
                        "Consul refuses the token (check CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE): {e}"
                    )));
                }
                if !unreachable || !e.is_unreachable() {
                    tracing::warn!(
                        service = %settings.service, error = %e, retry_in = ?delay,
                        "cannot query Consul; keeping the last known instances"
                    );
                }
                unreachable = e.is_unreachable();
                tokio::time::sleep(delay).await;
            }
        }
    }
}
