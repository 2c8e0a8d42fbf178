//! Follows a service's passing instances in Consul with blocking queries and publishes the
//! set on a `watch` channel, on the [`crate::blocking`] loop, with how it differs from the set
//! before (so a follower applies a few joins and leaves without comparing every instance).
//! Spurious wake-ups (same body, new index) publish nothing; while Consul is unreachable the
//! last known set stays in place, and an empty answer from a reachable Consul empties it.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

pub use crate::health::Endpoint;
use crate::{
    blocking::BlockingLoop,
    consul::{ConsulClient, HealthQuery},
    health::HealthEntries,
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
    /// Answers read a second at most (a token bucket of as many): changes that come faster
    /// are taken together.
    pub max_rate: u32,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            service: String::new(),
            tag: None,
            dc: None,
            wait: Duration::from_secs(30),
            max_rate: 10,
        }
    }
}

/// The published set, sorted by ID, plus whether Consul has answered at least once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub list: Arc<Vec<Endpoint>>,
    pub known: bool,
    /// How `list` differs from the set published before it, when that is a few instances
    /// and exact (`base` with it applied is `list`): a follower holding `base` applies the
    /// change instead of comparing whole lists.
    pub change: Option<Arc<Change>>,
}

/// The instances that left and joined between `base` and the list published with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub base: Arc<Vec<Endpoint>>,
    pub added: Vec<Endpoint>,
    pub removed: Vec<Endpoint>,
}

/// A change of more instances than this is applied by rebuilding the whole list: each one
/// applied alone moves half the list on average.
const PATCHED_AT_MOST: usize = 16;

/// `base` (sorted by `key`, no element twice) with `change` applied, kept sorted: O(changed)
/// lookups and one copy of `base`, not a comparison of every element. `None` when the change
/// is too large to pay off, removes an element `base` lacks, adds one it has, or does not end
/// with `len` elements (the new answer lists an instance twice, which a set difference
/// cannot count): rebuild the list then.
pub(crate) fn patched<T: Clone>(
    base: &[T],
    change: &Change,
    len: usize,
    key: impl Fn(&T) -> &Endpoint,
    mut make: impl FnMut(&Endpoint) -> T,
) -> Option<Vec<T>> {
    if change.added.len() + change.removed.len() > PATCHED_AT_MOST {
        return None;
    }
    // Room for the joins up front: growing a copy of thousands would copy it again.
    let mut out = Vec::with_capacity(base.len() + change.added.len());
    out.extend_from_slice(base);
    for e in &change.removed {
        let i = out.binary_search_by(|t| key(t).cmp(e)).ok()?;
        out.remove(i);
    }
    for e in &change.added {
        let i = out.binary_search_by(|t| key(t).cmp(e)).err()?;
        out.insert(i, make(e));
    }
    (out.len() == len).then_some(out)
}

/// A few IDs for a log line, and how many more there are.
fn some_ids(list: &[Endpoint]) -> String {
    const SHOWN: usize = 8;
    let mut ids: Vec<&str> = list.iter().take(SHOWN).map(|e| &*e.id).collect();
    let more = list.len().saturating_sub(SHOWN);
    let more = (more > 0).then(|| format!("… {more} more"));
    ids.extend(more.as_deref());
    ids.join(", ")
}

/// A running watch. Dropping it stops the watch.
#[derive(Debug)]
pub struct Watcher {
    rx: watch::Receiver<Endpoints>,
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
        let task = tokio::spawn(follow(client, settings, tx));
        Self { rx, task }
    }

    pub fn subscribe(&self) -> watch::Receiver<Endpoints> {
        self.rx.clone()
    }
}

/// Why an empty answer from a default-deny agent is likely the token's doing: what `client`'s
/// token may lack to read `service`. The watch logs it once when such an answer comes.
pub async fn why_empty(client: &ConsulClient, service: &str) -> String {
    let lacks = format!("the token may lack service:read on {service}");
    if !client.has_token() {
        return format!(
            "Consul's ACLs deny by default and no token is set (CONSUL_HTTP_TOKEN or \
             CONSUL_HTTP_TOKEN_FILE): {lacks}"
        );
    }
    match client.acl_token_self().await {
        Ok(token) => format!(
            "Consul's ACLs deny by default and {lacks} (token {:?}, policies {:?})",
            token.description, token.policies
        ),
        Err(e) => {
            format!("Consul's ACLs deny by default and the token is not accepted ({e}): {lacks}")
        }
    }
}

async fn follow(client: ConsulClient, settings: WatchSettings, tx: watch::Sender<Endpoints>) {
    // Whether the current run of empty answers from a default-deny agent was explained.
    let mut explained = false;
    let mut blocking = BlockingLoop::new(settings.max_rate);
    let mut reader = client.health_reader();
    let mut entries = HealthEntries::default();
    let mut body = Vec::new();
    let mut backend = None;
    let mut unreachable = false;
    // What the answers since the last published change cost, for its log line.
    let (mut answers, mut bytes, mut parsed) = (0u32, 0usize, 0usize);
    // Whether the published list holds no instance twice: only such a list is patched, so
    // that a change published with a list is exact.
    let mut distinct = true;
    loop {
        let index = blocking.next_index().await;
        let query = HealthQuery {
            passing: true,
            tag: settings.tag.clone(),
            dc: settings.dc.clone(),
            index: Some(index),
            wait: Some(settings.wait),
            cached: true,
        };
        body.clear();
        let answer = reader
            .health_service(&settings.service, &query, &mut body)
            .await
            .and_then(|answer| {
                let read = body.len();
                let delta =
                    entries
                        .update(&mut body)
                        .map_err(|e| crate::consul::ConsulError::Decode {
                            path: format!("/v1/health/service/{}", settings.service),
                            reason: e.to_string(),
                        })?;
                Ok((answer, delta, read))
            });
        match answer {
            Ok((answer, delta, read)) => {
                let empty = entries.endpoints().next().is_none();
                if empty && answer.acl_deny && !explained {
                    let why = why_empty(&client, &settings.service).await;
                    tracing::warn!(service = %settings.service, "no instances: {why}");
                    explained = true;
                } else if !empty {
                    explained = false;
                }
                if unreachable {
                    tracing::info!(service = %settings.service, "Consul reachable again");
                    unreachable = false;
                }
                if answer.backend.is_some() && answer.backend != backend {
                    tracing::debug!(service = %settings.service, backend = ?answer.backend, "Consul's query backend");
                    backend = answer.backend;
                }
                blocking.answered(answer.index);
                tracing::debug!(
                    service = %settings.service, bytes = read, parsed = delta.parsed,
                    index = blocking.index(), "Consul answered"
                );
                answers += 1;
                bytes += read;
                parsed += delta.parsed;
                let base = tx.borrow().clone();
                if base.known && delta.is_empty() {
                    continue;
                }
                let len = entries.endpoints().count();
                let change = Change {
                    base: base.list,
                    added: delta.added,
                    removed: delta.removed,
                };
                let list = distinct
                    .then(|| patched(&change.base, &change, len, |e| e, Endpoint::clone))
                    .flatten();
                let exact = list.is_some();
                let list = list.unwrap_or_else(|| {
                    let mut list: Vec<Endpoint> = entries.endpoints().cloned().collect();
                    list.sort();
                    distinct = list.windows(2).all(|w| w[0] != w[1]);
                    list
                });
                tracing::info!(
                    service = %settings.service,
                    instances = list.len(),
                    added = %some_ids(&change.added),
                    removed = %some_ids(&change.removed),
                    answers, bytes, parsed,
                    "instances changed"
                );
                (answers, bytes, parsed) = (0, 0, 0);
                tx.send_replace(Endpoints {
                    list: Arc::new(list),
                    known: true,
                    change: exact.then(|| Arc::new(change)),
                });
            }
            Err(e) => {
                let delay = blocking.failed();
                if e.is_forbidden() {
                    tracing::warn!(
                        service = %settings.service, error = %e, retry_in = ?delay,
                        "Consul refuses the token (check CONSUL_HTTP_TOKEN or \
                         CONSUL_HTTP_TOKEN_FILE); keeping the last known instances"
                    );
                } else if !unreachable || !e.is_unreachable() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, port: u16) -> Endpoint {
        Endpoint {
            id: id.into(),
            addr: ([127, 0, 0, 1], port).into(),
            weight: 1,
        }
    }

    #[test]
    fn a_few_instances_are_patched_in_and_anything_else_is_left_to_a_rebuild() {
        let base = Arc::new(vec![e("a", 1), e("c", 3), e("d", 4)]);
        let change = Change {
            base: Arc::clone(&base),
            added: vec![e("e", 5), e("b", 2)],
            removed: vec![e("c", 3)],
        };
        let patch = |change: &Change, len| patched(&base, change, len, |x| x, Endpoint::clone);
        assert_eq!(
            patch(&change, 4),
            Some(vec![e("a", 1), e("b", 2), e("d", 4), e("e", 5)]),
            "sorted, as a rebuild would be"
        );
        assert_eq!(patch(&change, 5), None, "a count the change cannot explain");
        let unknown = Change {
            removed: vec![e("z", 9)],
            ..change
        };
        assert_eq!(patch(&unknown, 2), None, "an instance the base lacks");
        let present = Change {
            base: Arc::clone(&base),
            added: vec![e("a", 1)],
            removed: Vec::new(),
        };
        assert_eq!(patch(&present, 4), None, "an instance the base has");
        let many = Change {
            base: Arc::clone(&base),
            added: (0..=PATCHED_AT_MOST as u16)
                .map(|i| e("m", 100 + i))
                .collect(),
            removed: Vec::new(),
        };
        assert_eq!(patch(&many, 3 + PATCHED_AT_MOST + 1), None, "too many");
    }
}
