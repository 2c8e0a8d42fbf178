//! Spreads calls over the instances a [`Watcher`](crate::watcher::Watcher) publishes. One
//! lazily connected tonic `Channel` per instance, kept while the instance stays in the set.
//! Round-robin (an exact rotation) by default; random, smooth weighted round-robin over
//! Consul weights, client-IP hash and least outstanding requests on request. An instance
//! that fails to connect is ejected at once and probed back in.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::Channel;

use crate::watcher::{Endpoint, Endpoints};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    RoundRobin,
    Random,
    WeightedRoundRobin,
    IpHash,
    LeastRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancerSettings {
    pub policy: Policy,
    /// Bound on opening a connection to an instance.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often ejected instances are probed (a TCP connect) to bring them back.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        Self {
            policy: Policy::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// One instance in rotation.
#[derive(Debug)]
pub struct Member {
    pub endpoint: Endpoint,
    channel: Channel,
    in_flight: AtomicUsize,
    ejected: AtomicBool,
}

impl Member {
    fn new(endpoint: Endpoint, connect_timeout: Duration) -> Self {
        // A socket address always makes a valid URI; connect_lazy defers all I/O.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", endpoint.addr))
            .map(|e| {
                e.connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .unwrap_or_else(|_| unreachable!("socket addresses are valid URIs"));
        Self {
            endpoint,
            channel,
            in_flight: AtomicUsize::new(0),
            ejected: AtomicBool::new(false),
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    members: Vec<Arc<Member>>,
    /// Smooth weighted round-robin order (indexes into `members`), for that policy.
    weighted: Vec<usize>,
}

#[derive(Debug)]
struct Inner {
    snapshot: RwLock<Arc<Snapshot>>,
    next: AtomicUsize,
    settings: BalancerSettings,
}

/// Cheap to clone; all clones share the rotation.
#[derive(Debug, Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

#[derive(Debug)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The member chosen for one call; holds its in-flight count until dropped.
#[derive(Debug)]
pub struct Picked {
    member: Arc<Member>,
}

impl Picked {
    pub fn id(&self) -> &str {
        &self.member.endpoint.id
    }

    pub fn channel(&self) -> Channel {
        self.member.channel.clone()
    }

    /// Takes the instance out of rotation until a probe (or the watcher) brings it back.
    pub fn eject(&self) {
        if !self.member.ejected.swap(true, Ordering::AcqRel) {
            tracing::warn!(id = %self.member.endpoint.id, addr = %self.member.endpoint.addr, "instance ejected");
        }
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.member.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// nginx's smooth weighted round-robin: spreads heavy members through the cycle instead of
/// sending their whole share in a burst.
fn smooth_weighted(members: &[Arc<Member>]) -> Vec<usize> {
    let weights: Vec<i64> = members
        .iter()
        .map(|m| i64::from(m.endpoint.weight.clamp(1, 1000)))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some(best) = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

impl Balancer {
    /// Follows `endpoints`, keeping each instance's channel while it stays in the set.
    pub fn new(mut endpoints: watch::Receiver<Endpoints>, settings: BalancerSettings) -> Self {
        let inner = Arc::new(Inner {
            snapshot: RwLock::new(Arc::default()),
            next: AtomicUsize::new(0),
            settings,
        });
        let follower = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                loop {
                    let list = endpoints.borrow_and_update().list.clone();
                    inner.rebuild(&list);
                    if endpoints.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        let prober = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(inner.settings.probe_interval).await;
                    inner.probe_ejected().await;
                }
            })
        };
        Self {
            inner,
            _tasks: Arc::new(Tasks(vec![follower, prober])),
        }
    }

    /// Chooses an instance, skipping `exclude` (the one a retry just failed on). Ejected
    /// instances are used only when nothing else is left. `None`: no instance at all.
    pub fn pick(&self, client: Option<IpAddr>, exclude: Option<&str>) -> Option<Picked> {
        let snapshot = self.inner.snapshot();
        let members = &snapshot.members;
        let n = members.len();
        if n == 0 {
            return None;
        }
        let usable = |m: &Arc<Member>, allow_ejected: bool| {
            Some(m.endpoint.id.as_str()) != exclude && (allow_ejected || !m.is_ejected())
        };
        let policy = self.inner.settings.policy;
        let choose = |allow_ejected: bool| -> Option<Arc<Member>> {
            match policy {
                Policy::WeightedRoundRobin if !snapshot.weighted.is_empty() => {
                    let order = &snapshot.weighted;
                    let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
                    (0..order.len())
                        .map(|k| &members[order[(start + k) % order.len()]])
                        .find(|m| usable(m, allow_ejected))
                        .cloned()
                }
                Policy::LeastRequest => {
                    let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
                    (0..n)
                        .map(|k| &members[(start + k) % n])
                        .filter(|m| usable(m, allow_ejected))
                        .min_by_key(|m| m.in_flight())
                        .cloned()
                }
                _ => {
                    let start = match policy {
                        Policy::Random => rand::rng().random_range(0..n),
                        Policy::IpHash => {
                            let mut h = DefaultHasher::new();
                            client.hash(&mut h);
                            h.finish() as usize
                        }
                        _ => self.inner.next.fetch_add(1, Ordering::Relaxed),
                    };
                    (0..n)
                        .map(|k| &members[(start + k) % n])
                        .find(|m| usable(m, allow_ejected))
                        .cloned()
                }
            }
        };
        let member = choose(false).or_else(|| choose(true))?;
        member.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Picked { member })
    }

    /// The instances in rotation (for metrics and logs).
    pub fn members(&self) -> Vec<Arc<Member>> {
        self.inner.snapshot().members.clone()
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    fn rebuild(&self, list: &[Endpoint]) {
        let old: HashMap<String, Arc<Member>> = self
            .snapshot()
            .members
            .iter()
            .map(|m| (m.endpoint.id.clone(), Arc::clone(m)))
            .collect();
        let members: Vec<Arc<Member>> = list
            .iter()
            .map(|e| match old.get(&e.id) {
                Some(m) if m.endpoint == *e => Arc::clone(m),
                _ => Arc::new(Member::new(e.clone(), self.settings.connect_timeout)),
            })
            .collect();
        let weighted = if self.settings.policy == Policy::WeightedRoundRobin {
            smooth_weighted(&members)
        } else {
            Vec::new()
        };
        let snapshot = Arc::new(Snapshot { members, weighted });
        match self.snapshot.write() {
            Ok(mut s) => *s = snapshot,
            Err(e) => *e.into_inner() = snapshot,
        }
    }

    async fn probe_ejected(&self) {
        for m in self.snapshot().members.iter().filter(|m| m.is_ejected()) {
            let connect = tokio::net::TcpStream::connect(m.endpoint.addr);
            if let Ok(Ok(_)) = tokio::time::timeout(self.settings.connect_timeout, connect).await {
                m.ejected.store(false, Ordering::Release);
                tracing::info!(id = %m.endpoint.id, "ejected instance answers again; back in rotation");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, port: u16, weight: u32) -> Endpoint {
        Endpoint {
            id: id.into(),
            addr: ([127, 0, 0, 1], port).into(),
            weight,
        }
    }

    fn balancer(list: Vec<Endpoint>, policy: Policy) -> (Balancer, watch::Sender<Endpoints>) {
        let (tx, rx) = watch::channel(Endpoints {
            list: Arc::new(list),
            known: true,
        });
        let b = Balancer::new(
            rx,
            BalancerSettings {
                policy,
                ..BalancerSettings::default()
            },
        );
        (b, tx)
    }

    async fn settled(b: &Balancer, n: usize) {
        for _ in 0..200 {
            if b.members().len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("balancer did not take the endpoints");
    }

    fn picks(b: &Balancer, n: usize, client: Option<IpAddr>) -> Vec<String> {
        (0..n)
            .map(|_| {
                b.pick(client, None)
                    .map(|p| p.id().to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test]
    async fn round_robin_is_an_exact_rotation() {
        let (b, _tx) = balancer(
            vec![
                endpoint("a", 1, 1),
                endpoint("b", 2, 1),
                endpoint("c", 3, 1),
            ],
            Policy::RoundRobin,
        );
        settled(&b, 3).await;
        let got = picks(&b, 30, None);
        for id in ["a", "b", "c"] {
            assert_eq!(got.iter().filter(|g| *g == id).count(), 10, "{got:?}");
        }
        assert!(
            got.windows(3)
                .all(|w| w[0] != w[1] && w[1] != w[2] && w[0] != w[2])
        );
    }

    #[tokio::test]
    async fn an_ejected_instance_is_skipped_and_used_only_as_a_last_resort() {
        let (b, _tx) = balancer(
            vec![endpoint("a", 1, 1), endpoint("b", 2, 1)],
            Policy::RoundRobin,
        );
        settled(&b, 2).await;
        let a = loop {
            let p = b.pick(None, None).expect("pick");
            if p.id() == "a" {
                break p;
            }
        };
        a.eject();
        drop(a);
        assert!(picks(&b, 6, None).iter().all(|id| id == "b"));
        // With "b" excluded (a retry after it failed) only the ejected one is left.
        assert_eq!(
            b.pick(None, Some("b"))
                .map(|p| p.id().to_owned())
                .as_deref(),
            Some("a")
        );
    }

    #[tokio::test]
    async fn weighted_round_robin_follows_consul_weights_smoothly() {
        let (b, _tx) = balancer(
            vec![endpoint("a", 1, 3), endpoint("b", 2, 1)],
            Policy::WeightedRoundRobin,
        );
        settled(&b, 2).await;
        let got = picks(&b, 8, None);
        assert_eq!(got.iter().filter(|g| *g == "a").count(), 6, "{got:?}");
        assert!(
            !got.windows(4).any(|w| w.iter().all(|g| g == "a")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn ip_hash_sticks_and_least_request_prefers_the_idle() {
        let (b, _tx) = balancer(
            vec![
                endpoint("a", 1, 1),
                endpoint("b", 2, 1),
                endpoint("c", 3, 1),
            ],
            Policy::IpHash,
        );
        settled(&b, 3).await;
        let ip: IpAddr = "10.0.0.7".parse().expect("ip");
        let got = picks(&b, 5, Some(ip));
        assert!(got.iter().all(|g| *g == got[0]), "{got:?}");

        let (b, _tx) = balancer(
            vec![endpoint("a", 1, 1), endpoint("b", 2, 1)],
            Policy::LeastRequest,
        );
        settled(&b, 2).await;
        let busy = b.pick(None, None).expect("pick");
        let busy_id = busy.id().to_owned();
        let next: Vec<String> = (0..4)
            .map(|_| {
                b.pick(None, None)
                    .map(|p| p.id().to_owned())
                    .unwrap_or_default()
            })
            .collect();
        assert!(next.iter().all(|id| *id != busy_id), "{next:?}");
    }

    #[tokio::test]
    async fn channels_survive_unrelated_changes_and_an_empty_set_means_no_pick() {
        let (b, tx) = balancer(vec![endpoint("a", 1, 1)], Policy::RoundRobin);
        settled(&b, 1).await;
        let first = Arc::as_ptr(&b.members()[0]);
        tx.send_replace(Endpoints {
            list: Arc::new(vec![endpoint("a", 1, 1), endpoint("b", 2, 1)]),
            known: true,
        });
        settled(&b, 2).await;
        assert_eq!(
            Arc::as_ptr(&b.members()[0]),
            first,
            "the member for a is reused"
        );
        tx.send_replace(Endpoints {
            list: Arc::new(Vec::new()),
            known: true,
        });
        settled(&b, 0).await;
        assert!(b.pick(None, None).is_none());
    }
}
