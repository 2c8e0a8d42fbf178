//! Spreads calls over the instances a [`Watcher`](crate::watcher::Watcher) publishes. One
//! lazily connected tonic `Channel` per instance, kept while the instance stays in the set,
//! with HTTP/2 keepalive pings so a connection whose peer stops answering is closed within
//! about a second. Round-robin (an exact rotation) by default; random, smooth weighted
//! round-robin over Consul weights, client-IP hash and least outstanding requests on request.
//!
//! Outlier detection, in the spirit of Envoy's: an instance whose calls fail at the
//! transport or time out `consecutive_failures` times in a row is ejected for
//! `base_ejection_time` × the number of times it has been ejected (up to
//! `max_ejection_time`); at most `max_ejection_percent` of the instances (and at least one)
//! are ejected at once, so a cause they share (a database outage) cannot empty the rotation.
//! Once its time is up, an ejected instance comes back when a gRPC health check answers
//! SERVING within `probe_timeout`; a frozen process, whose kernel still accepts connections,
//! does not. Each instance's recent latencies give the first attempt of a read a budget of
//! a few times its recent worst, rather than half the call's deadline.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
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
    /// How often ejected instances are probed (a gRPC health check) to bring them back.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Bound on one probe's answer.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// HTTP/2 PING interval on each instance's connection, idle or not.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    pub outlier: OutlierSettings,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        Self {
            policy: Policy::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_millis(500),
            keepalive_timeout: Duration::from_millis(500),
            outlier: OutlierSettings::default(),
        }
    }
}

/// When an instance is taken out of rotation, for how long, and how fast its calls give up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutlierSettings {
    /// Transport failures or timeouts in a row that eject an instance (0: never eject on
    /// them; a refused connection still ejects at once).
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long.
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Most of the instances that may be ejected at once, in percent (at least one is).
    pub max_ejection_percent: u32,
    /// A read's first attempt gets this many times the instance's recent worst latency...
    pub first_attempt_factor: u32,
    /// ...but never less than this (a cold instance, or a burst of fast calls)...
    #[serde(with = "humantime_serde")]
    pub min_first_attempt: Duration,
    /// ...nor more than this share of the call's deadline, in percent.
    pub max_first_attempt_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(2),
            max_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 50,
            first_attempt_factor: 4,
            min_first_attempt: Duration::from_millis(40),
            max_first_attempt_percent: 50,
        }
    }
}

/// The last few successful call latencies of one instance, in microseconds.
#[derive(Debug)]
struct Latencies {
    samples: [u32; 32],
    next: usize,
    filled: bool,
}

impl Latencies {
    fn record(&mut self, latency: Duration) {
        self.samples[self.next] = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % self.samples.len();
        self.filled |= self.next == 0;
    }

    /// The worst of the recent window (of 32 calls: about their p97), once it is full.
    fn recent_worst(&self) -> Option<Duration> {
        self.filled.then(|| {
            Duration::from_micros(u64::from(self.samples.iter().copied().max().unwrap_or(0)))
        })
    }
}

/// One instance in rotation.
#[derive(Debug)]
pub struct Member {
    pub endpoint: Endpoint,
    channel: Channel,
    in_flight: AtomicUsize,
    ejected: AtomicBool,
    /// Failures or timeouts since the last success.
    failures: AtomicU32,
    /// How often this instance has been ejected (it lengthens the next ejection).
    ejections: AtomicU32,
    /// Until when the current ejection lasts, at least.
    ejected_until: Mutex<Option<Instant>>,
    latencies: Mutex<Latencies>,
}

impl Member {
    fn new(endpoint: Endpoint, settings: &BalancerSettings) -> Self {
        // A socket address always makes a valid URI; connect_lazy defers all I/O.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", endpoint.addr))
            .map(|e| {
                e.connect_timeout(settings.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(settings.keepalive_interval)
                    .keep_alive_timeout(settings.keepalive_timeout)
                    .keep_alive_while_idle(true)
                    .connect_lazy()
            })
            .unwrap_or_else(|_| unreachable!("socket addresses are valid URIs"));
        Self {
            endpoint,
            channel,
            in_flight: AtomicUsize::new(0),
            ejected: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            latencies: Mutex::new(Latencies {
                samples: [0; 32],
                next: 0,
                filled: false,
            }),
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How many times this instance has been ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    members: Vec<Arc<Member>>,
    /// Smooth weighted round-robin order (indexes into `members`), for that policy.
    weighted: Vec<usize>,
    /// The live settings, read by every pick, with the members they apply to.
    policy: Policy,
    outlier: OutlierSettings,
}

#[derive(Debug)]
struct Inner {
    snapshot: RwLock<Arc<Snapshot>>,
    next: AtomicUsize,
    /// The settings; changed only by [`Balancer::reconfigure`].
    settings: RwLock<BalancerSettings>,
    /// The instances last followed; held while a snapshot is rebuilt, so two rebuilds
    /// (a new list, a new policy) never cross.
    list: Mutex<Arc<Vec<Endpoint>>>,
    /// Ejections so far, all instances together (for metrics).
    ejections: AtomicU64,
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
    snapshot: Arc<Snapshot>,
    inner: Arc<Inner>,
}

impl Picked {
    pub fn id(&self) -> &str {
        &self.member.endpoint.id
    }

    pub fn channel(&self) -> Channel {
        self.member.channel.clone()
    }

    /// The budget of a retryable first attempt, out of `left` of the call's deadline: a few
    /// times this instance's recent worst latency, within the configured bounds.
    pub fn first_attempt_budget(&self, left: Duration) -> Duration {
        let o = &self.snapshot.outlier;
        let cap = left * o.max_first_attempt_percent.min(100) / 100;
        let recent = self
            .member
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recent_worst();
        let wanted = recent.map_or(cap, |worst| {
            (worst * o.first_attempt_factor).max(o.min_first_attempt)
        });
        wanted.min(cap)
    }

    /// The call succeeded in `latency`: the failure streak ends.
    pub fn succeeded(&self, latency: Duration) {
        self.member.failures.store(0, Ordering::Relaxed);
        self.member
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(latency);
    }

    /// The call failed at the transport or timed out; enough of them in a row eject.
    pub fn failed(&self) {
        let streak = self.member.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let threshold = self.snapshot.outlier.consecutive_failures;
        if threshold > 0 && streak >= threshold {
            self.inner
                .eject(&self.member, "consecutive failures or timeouts");
        }
    }

    /// Takes the instance out of rotation at once (its connection was refused or reset),
    /// within the ejection cap.
    pub fn eject(&self) {
        self.inner.eject(&self.member, "transport failure");
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
            settings: RwLock::new(settings),
            list: Mutex::default(),
            ejections: AtomicU64::new(0),
        });
        let follower = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                loop {
                    let list = endpoints.borrow_and_update().list.clone();
                    inner.rebuild(Some(list));
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
                    let interval = inner.settings().probe_interval;
                    tokio::time::sleep(interval).await;
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
        let policy = snapshot.policy;
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
        Some(Picked {
            member,
            snapshot,
            inner: Arc::clone(&self.inner),
        })
    }

    /// Applies new routing settings to the running balancer: the policy, the outlier
    /// detection and the probes. Connections already open keep their connect and keepalive
    /// settings (a restart applies those).
    pub fn reconfigure(&self, new: &BalancerSettings) {
        {
            let mut s = self
                .inner
                .settings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            s.policy = new.policy;
            s.outlier = new.outlier.clone();
            s.probe_interval = new.probe_interval;
            s.probe_timeout = new.probe_timeout;
        }
        self.inner.rebuild(None);
    }

    /// The policy picks follow now.
    pub fn policy(&self) -> Policy {
        self.inner.snapshot().policy
    }

    /// The instances in rotation (for metrics and logs).
    pub fn members(&self) -> Vec<Arc<Member>> {
        self.inner.snapshot().members.clone()
    }

    /// Ejections so far, all instances together.
    pub fn ejections(&self) -> u64 {
        self.inner.ejections.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    fn settings(&self) -> BalancerSettings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new snapshot from `list` (or the last list) and the current settings.
    fn rebuild(&self, list: Option<Arc<Vec<Endpoint>>>) {
        let mut last = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = list {
            *last = list;
        }
        let settings = self.settings();
        let old: HashMap<String, Arc<Member>> = self
            .snapshot()
            .members
            .iter()
            .map(|m| (m.endpoint.id.clone(), Arc::clone(m)))
            .collect();
        let members: Vec<Arc<Member>> = last
            .iter()
            .map(|e| match old.get(&e.id) {
                Some(m) if m.endpoint == *e => Arc::clone(m),
                _ => Arc::new(Member::new(e.clone(), &settings)),
            })
            .collect();
        let weighted = if settings.policy == Policy::WeightedRoundRobin {
            smooth_weighted(&members)
        } else {
            Vec::new()
        };
        let snapshot = Arc::new(Snapshot {
            members,
            weighted,
            policy: settings.policy,
            outlier: settings.outlier,
        });
        match self.snapshot.write() {
            Ok(mut s) => *s = snapshot,
            Err(e) => *e.into_inner() = snapshot,
        }
    }

    /// Ejects `member` unless it already is, or the cap is reached.
    fn eject(&self, member: &Member, why: &'static str) {
        let snapshot = self.snapshot();
        let total = snapshot.members.len();
        let ejected = snapshot.members.iter().filter(|m| m.is_ejected()).count();
        let o = &snapshot.outlier;
        let cap = (total * o.max_ejection_percent as usize / 100).max(1);
        if member.is_ejected() {
            return;
        }
        if ejected >= cap {
            tracing::warn!(
                id = %member.endpoint.id, ejected, cap, why,
                "not ejecting: the share of instances that may be out at once is reached"
            );
            return;
        }
        if member.ejected.swap(true, Ordering::AcqRel) {
            return;
        }
        let n = member.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let length = (o.base_ejection_time * n).min(o.max_ejection_time);
        *member
            .ejected_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + length);
        member.failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            id = %member.endpoint.id, addr = %member.endpoint.addr, why, ejection = n,
            at_least = ?length, "instance ejected"
        );
    }

    /// Brings back each ejected instance whose time is up and whose health check answers
    /// SERVING in time.
    async fn probe_ejected(&self) {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let now = Instant::now();
        let probe_timeout = self.settings().probe_timeout;
        for m in self.snapshot().members.iter().filter(|m| m.is_ejected()) {
            let until = *m
                .ejected_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if until.is_some_and(|until| until > now) {
                continue;
            }
            let mut client = HealthClient::new(m.channel.clone());
            let check = client.check(HealthCheckRequest::default());
            let serving = matches!(
                tokio::time::timeout(probe_timeout, check).await,
                Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
            );
            if serving {
                m.failures.store(0, Ordering::Relaxed);
                m.ejected.store(false, Ordering::Release);
                tracing::info!(id = %m.endpoint.id, "ejected instance is healthy again; back in rotation");
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
        let (b, _tx) = abc(Policy::RoundRobin).await;
        let got = picks(&b, 30, None);
        for id in ["a", "b", "c"] {
            assert_eq!(got.iter().filter(|g| *g == id).count(), 10, "{got:?}");
        }
        assert!(
            got.windows(3)
                .all(|w| w[0] != w[1] && w[1] != w[2] && w[0] != w[2])
        );
    }

    /// Instances a, b and c (weight 1 each) under `policy`, taken in.
    async fn abc(policy: Policy) -> (Balancer, watch::Sender<Endpoints>) {
        let (b, tx) = balancer(
            vec![
                endpoint("a", 1, 1),
                endpoint("b", 2, 1),
                endpoint("c", 3, 1),
            ],
            policy,
        );
        settled(&b, 3).await;
        (b, tx)
    }

    fn pick_id(b: &Balancer, id: &str) -> Picked {
        loop {
            let p = b.pick(None, None).expect("pick");
            if p.id() == id {
                return p;
            }
        }
    }

    #[tokio::test]
    async fn timeouts_in_a_row_eject_and_a_success_ends_the_streak() {
        let (b, _tx) = abc(Policy::RoundRobin).await;
        let a = pick_id(&b, "a");
        a.failed();
        a.failed();
        a.succeeded(Duration::from_millis(2));
        a.failed();
        a.failed();
        assert!(
            !b.members()[0].is_ejected(),
            "the success ended the first streak"
        );
        a.failed();
        assert!(b.members()[0].is_ejected(), "three in a row eject");
        assert_eq!((b.ejections(), b.members()[0].ejections()), (1, 1));
        drop(a);
        assert!(picks(&b, 6, None).iter().all(|id| id != "a"));
    }

    #[tokio::test]
    async fn at_most_the_capped_share_is_ejected_at_once() {
        let (b, _tx) = balancer(
            vec![endpoint("a", 1, 1), endpoint("b", 2, 1)],
            Policy::RoundRobin,
        );
        settled(&b, 2).await;
        pick_id(&b, "a").eject();
        pick_id(&b, "b").eject();
        let ejected: Vec<bool> = b.members().iter().map(|m| m.is_ejected()).collect();
        assert_eq!(
            ejected,
            [true, false],
            "50 % of two: one may be out, not both"
        );
    }

    #[tokio::test]
    async fn the_first_attempt_follows_the_recent_worst_latency_within_bounds() {
        let (b, _tx) = balancer(vec![endpoint("a", 1, 1)], Policy::RoundRobin);
        settled(&b, 1).await;
        let a = pick_id(&b, "a");
        let deadline = Duration::from_secs(3);
        assert_eq!(
            a.first_attempt_budget(deadline),
            deadline / 2,
            "no history yet"
        );
        for ms in [2, 3, 5, 2] {
            for _ in 0..8 {
                a.succeeded(Duration::from_millis(ms));
            }
        }
        assert_eq!(
            a.first_attempt_budget(deadline),
            Duration::from_millis(40),
            "4 x 5 ms is below the 40 ms floor"
        );
        for _ in 0..32 {
            a.succeeded(Duration::from_millis(30));
        }
        assert_eq!(a.first_attempt_budget(deadline), Duration::from_millis(120));
        assert_eq!(
            a.first_attempt_budget(Duration::from_millis(100)),
            Duration::from_millis(50),
            "never more than half of what is left"
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
