//! Spreads calls over the instances a [`Watcher`](crate::watcher::Watcher) publishes. One
//! lazily connected tonic `Channel` per instance, kept while the instance stays in the set,
//! with HTTP/2 keepalive pings so a connection whose peer stops answering is closed within
//! about a second. Round-robin (an exact rotation) by default; random, smooth weighted
//! round-robin over Consul weights, client-IP hash and least outstanding requests on request.
//!
//! Outlier detection, in the spirit of Envoy's: a refused or reset connection ejects an
//! instance at once; a streak of `consecutive_failures` timeouts ejects it only when it is
//! an outlier among its peers (its recent failure share is more than `peer_failure_factor`
//! times theirs), so a host that is slow for everyone (a busy machine) ejects no one. An
//! ejection lasts `base_ejection_time` × the number of times it has been ejected (up to
//! `max_ejection_time`); at most `max_ejection_percent` of the instances (and at least one)
//! are out at once. Once its time is up, an ejected instance comes back when a gRPC health
//! check answers SERVING within `probe_timeout`; a frozen process does not. Each instance's
//! recent latencies give the first attempt of a read a budget of a few times its recent
//! worst, after which the caller may hedge on another instance ([`Balancer::pick_other`]
//! never offers an ejected or refusing one).

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::{
    tasks::Tasks,
    watcher::{Change, Endpoint, Endpoints, patched},
};

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

/// How a gateway connects to the instances (needs a restart), and how it routes among them
/// ([`Routing`], which changes live).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BalancerSettings {
    /// Its keys sit beside the others (`balancer.policy`, `balancer.outlier.…`).
    #[serde(flatten)]
    pub routing: Routing,
    /// Bound on opening a connection to an instance.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval on each instance's connection, idle or not.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        Self {
            routing: Routing::default(),
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_millis(500),
            keepalive_timeout: Duration::from_millis(500),
        }
    }
}

/// What [`Balancer::reconfigure`] changes while running: which instance a call goes to, and
/// when one is taken out of rotation and brought back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Routing {
    pub policy: Policy,
    /// How often ejected instances are probed (a gRPC health check) to bring them back.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Bound on one probe's answer.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    pub outlier: OutlierSettings,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            policy: Policy::RoundRobin,
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(500),
            outlier: OutlierSettings::default(),
        }
    }
}

/// When an instance is taken out of rotation, for how long, and how fast its calls give up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutlierSettings {
    /// Timeouts in a row after which an instance is judged against its peers (0: never
    /// eject on timeouts; a refused connection still ejects at once).
    pub consecutive_failures: u32,
    /// A timed-out instance is ejected only when its recent failure share is more than
    /// this many times its peers' mean share (everyone slow: no one is ejected)...
    pub peer_failure_factor: u32,
    /// ...and at least this many other instances in rotation, each with `min_requests`
    /// recent outcomes, to judge it against (fewer: timeouts eject no one).
    pub min_peers: u32,
    pub min_requests: u32,
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
            peer_failure_factor: 2,
            min_peers: 1,
            min_requests: 8,
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

/// Whether each of an instance's last 64 attempts failed (a timeout or a transport
/// failure), newest in the lowest bit.
#[derive(Debug, Default)]
struct Outcomes {
    failed: AtomicU64,
    seen: AtomicU32,
}

impl Outcomes {
    fn record(&self, failed: bool) {
        let _ = self
            .failed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                Some((bits << 1) | u64::from(failed))
            });
        let _ = self
            .seen
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < 64).then_some(n + 1)
            });
    }

    /// (failures, outcomes) in the window.
    fn share(&self) -> (u32, u32) {
        let seen = self.seen.load(Ordering::Acquire);
        let mask = if seen >= 64 {
            u64::MAX
        } else {
            (1u64 << seen) - 1
        };
        (
            (self.failed.load(Ordering::Acquire) & mask).count_ones(),
            seen,
        )
    }
}

/// A connected stream to an instance, whatever carries it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxedIo = Box<dyn Io>;

type Dialling =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<BoxedIo>> + Send>>;

/// How a member's connections are made when not over plain TCP (Connect's mutual TLS).
#[derive(Clone)]
pub struct Dial(Arc<dyn Fn(&Endpoint) -> Dialling + Send + Sync>);

impl Dial {
    pub fn new(dial: impl Fn(&Endpoint) -> Dialling + Send + Sync + 'static) -> Self {
        Self(Arc::new(dial))
    }

    /// A connection to `endpoint`.
    pub fn connect(&self, endpoint: &Endpoint) -> Dialling {
        (self.0)(endpoint)
    }
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dial")
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
    /// Its last attempt's connection was refused or reset (cleared by a success).
    refused: AtomicBool,
    outcomes: Outcomes,
    /// How often this instance has been ejected (it lengthens the next ejection).
    ejections: AtomicU32,
    /// Until when the current ejection lasts, at least.
    ejected_until: Mutex<Option<Instant>>,
    latencies: Mutex<Latencies>,
}

impl Member {
    fn new(endpoint: Endpoint, settings: &BalancerSettings, dial: Option<&Dial>) -> Self {
        // A socket address always makes a valid URI; connect_lazy defers all I/O.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", endpoint.addr))
            .map(|e| {
                let e = e
                    .connect_timeout(settings.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(settings.keepalive_interval)
                    .keep_alive_timeout(settings.keepalive_timeout)
                    .keep_alive_while_idle(true);
                match dial {
                    None => e.connect_lazy(),
                    Some(dial) => {
                        let (dial, endpoint) = (dial.clone(), endpoint.clone());
                        e.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                            let connecting = dial.connect(&endpoint);
                            async move { connecting.await.map(hyper_util::rt::TokioIo::new) }
                        }))
                    }
                }
            })
            .unwrap_or_else(|_| unreachable!("socket addresses are valid URIs"));
        Self {
            endpoint,
            channel,
            in_flight: AtomicUsize::new(0),
            ejected: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            refused: AtomicBool::new(false),
            outcomes: Outcomes::default(),
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

    /// Its last attempt's connection was refused or reset.
    pub fn is_refusing(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Neither ejected nor refusing: a fit target for a retry or a hedge.
    fn is_usable(&self) -> bool {
        !self.is_ejected() && !self.is_refusing()
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
    snapshot: ArcSwap<Snapshot>,
    next: AtomicUsize,
    /// The settings; changed only by [`Balancer::reconfigure`].
    settings: RwLock<BalancerSettings>,
    /// The instances last followed; held while a snapshot is rebuilt, so two rebuilds
    /// (a new list, a new policy) never cross.
    list: Mutex<Arc<Vec<Endpoint>>>,
    /// Ejections so far, all instances together (for metrics).
    ejections: AtomicU64,
    /// How members connect, when not over plain TCP.
    dial: Option<Dial>,
}

/// Cheap to clone; all clones share the rotation.
#[derive(Debug, Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
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

    /// The instance answered (whatever the answer) in `latency`: the failure streak ends.
    pub fn succeeded(&self, latency: Duration) {
        self.member.failures.store(0, Ordering::Relaxed);
        self.member.refused.store(false, Ordering::Relaxed);
        self.member.outcomes.record(false);
        self.member
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(latency);
    }

    /// The attempt timed out, lost to a hedge by being slow, or the instance said it cannot
    /// serve now. A streak of them ejects the instance if it is an outlier among its peers.
    pub fn failed(&self) {
        self.member.outcomes.record(true);
        let streak = self.member.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let threshold = self.snapshot.outlier.consecutive_failures;
        if threshold > 0
            && streak >= threshold
            && self.inner.is_outlier(&self.snapshot, &self.member)
        {
            self.inner
                .eject(&self.member, "timeouts in a row, more than its peers");
        }
    }

    /// Its connection was refused or reset: never a retry target again until it answers,
    /// and out of rotation at once (within the ejection cap).
    pub fn refused(&self) {
        self.member.outcomes.record(true);
        self.member.refused.store(true, Ordering::Relaxed);
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
    pub fn new(endpoints: watch::Receiver<Endpoints>, settings: BalancerSettings) -> Self {
        Self::dialing(endpoints, settings, None)
    }

    /// As [`Balancer::new`], with members connecting through `dial` when given.
    pub fn dialing(
        mut endpoints: watch::Receiver<Endpoints>,
        settings: BalancerSettings,
        dial: Option<Dial>,
    ) -> Self {
        let inner = Arc::new(Inner {
            dial,
            snapshot: ArcSwap::default(),
            next: AtomicUsize::new(0),
            settings: RwLock::new(settings),
            list: Mutex::default(),
            ejections: AtomicU64::new(0),
        });
        let follower = {
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                loop {
                    let (list, change) = {
                        let e = endpoints.borrow_and_update();
                        (e.list.clone(), e.change.clone())
                    };
                    inner.rebuild(Some(list), change.as_deref());
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
                    let interval = inner.settings().routing.probe_interval;
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

    /// Chooses an instance for a call's first attempt. Instances neither ejected nor
    /// refusing come first; a refusing one is used only when nothing else is, and an ejected
    /// one only when nothing else is left. `None`: no instance at all.
    pub fn pick(&self, client: Option<IpAddr>) -> Option<Picked> {
        let snapshot = self.inner.snapshot();
        let member = self
            .choose(&snapshot, client, |m| m.is_usable())
            .or_else(|| self.choose(&snapshot, client, |m| !m.is_ejected()))
            .or_else(|| self.choose(&snapshot, client, |_| true))?;
        Some(self.picked(member, snapshot))
    }

    /// Chooses a target for a retry or a hedge: never an instance in `tried`, ejected, or
    /// whose last connection was refused. `None`: no such instance; the caller keeps the
    /// attempt it has, or fails with that reason.
    pub fn pick_other(&self, client: Option<IpAddr>, tried: &[&str]) -> Option<Picked> {
        let snapshot = self.inner.snapshot();
        let member = self.choose(&snapshot, client, |m| {
            m.is_usable() && !tried.contains(&&*m.endpoint.id)
        })?;
        Some(self.picked(member, snapshot))
    }

    fn picked(&self, member: Arc<Member>, snapshot: Arc<Snapshot>) -> Picked {
        member.in_flight.fetch_add(1, Ordering::AcqRel);
        Picked {
            member,
            snapshot,
            inner: Arc::clone(&self.inner),
        }
    }

    /// The member `snapshot`'s policy chooses among those `fit` accepts.
    fn choose(
        &self,
        snapshot: &Snapshot,
        client: Option<IpAddr>,
        fit: impl Fn(&Member) -> bool,
    ) -> Option<Arc<Member>> {
        let members = &snapshot.members;
        let n = members.len();
        if n == 0 {
            return None;
        }
        match snapshot.policy {
            Policy::WeightedRoundRobin if !snapshot.weighted.is_empty() => {
                let order = &snapshot.weighted;
                let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
                (0..order.len())
                    .map(|k| &members[order[(start + k) % order.len()]])
                    .find(|m| fit(m))
                    .cloned()
            }
            Policy::LeastRequest => {
                let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| &members[(start + k) % n])
                    .filter(|m| fit(m))
                    .min_by_key(|m| m.in_flight())
                    .cloned()
            }
            policy => {
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
                    .find(|m| fit(m))
                    .cloned()
            }
        }
    }

    /// Applies new routing settings to the running balancer: the policy, the outlier
    /// detection and the probes. Connections already open keep their connect and keepalive
    /// settings (a restart applies those).
    pub fn reconfigure(&self, routing: &Routing) {
        self.inner
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .routing = routing.clone();
        self.inner.rebuild(None, None);
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
        self.snapshot.load_full()
    }

    fn settings(&self) -> BalancerSettings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A new snapshot from `list` (or the last list) and the current settings. A `change`
    /// from the list this balancer last followed is applied as such: members are looked up
    /// for the instances that left or joined only, however many stay.
    fn rebuild(&self, list: Option<Arc<Vec<Endpoint>>>, change: Option<&Change>) {
        let mut last = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let change = change.filter(|c| Arc::ptr_eq(&c.base, &last));
        if let Some(list) = list {
            *last = list;
        }
        let settings = self.settings();
        let snapshot = self.snapshot();
        let old = &snapshot.members;
        let new_member =
            |e: &Endpoint| Arc::new(Member::new(e.clone(), &settings, self.dial.as_ref()));
        let members = change
            .and_then(|c| patched(old, c, last.len(), |m| &m.endpoint, new_member))
            .unwrap_or_else(|| {
                // Both lists are sorted: one merge keeps every member whose endpoint did not
                // change (its channel, counters and ejection), without a lookup structure.
                let mut j = 0;
                last.iter()
                    .map(|e| {
                        while old.get(j).is_some_and(|m| m.endpoint < *e) {
                            j += 1;
                        }
                        match old.get(j) {
                            Some(m) if m.endpoint == *e => Arc::clone(m),
                            _ => new_member(e),
                        }
                    })
                    .collect()
            });
        let weighted = if settings.routing.policy == Policy::WeightedRoundRobin {
            smooth_weighted(&members)
        } else {
            Vec::new()
        };
        let snapshot = Arc::new(Snapshot {
            members,
            weighted,
            policy: settings.routing.policy,
            outlier: settings.routing.outlier,
        });
        self.snapshot.store(snapshot);
    }

    /// Whether `member` fails more than its peers: its share of failed recent attempts is
    /// above `peer_failure_factor` × their mean, with enough peers and outcomes to judge.
    fn is_outlier(&self, snapshot: &Snapshot, member: &Member) -> bool {
        let o = &snapshot.outlier;
        let (mut failed, mut seen, mut peers) = (0u64, 0u64, 0u32);
        for peer in snapshot
            .members
            .iter()
            .filter(|m| !std::ptr::eq(Arc::as_ptr(m), member) && !m.is_ejected())
        {
            let (f, n) = peer.outcomes.share();
            if n >= o.min_requests.max(1) {
                failed += u64::from(f);
                seen += u64::from(n);
                peers += 1;
            }
        }
        if peers < o.min_peers.max(1) {
            tracing::debug!(id = %member.endpoint.id, peers, "timeouts, but too few peers to judge against");
            return false;
        }
        let (f, n) = member.outcomes.share();
        // f/n > factor × failed/seen, in integers.
        let outlier =
            u64::from(f) * seen > u64::from(o.peer_failure_factor) * failed * u64::from(n.max(1));
        if !outlier {
            tracing::debug!(
                id = %member.endpoint.id, failed = f, of = n, peers_failed = failed, peers_of = seen,
                "timeouts, but its peers fail as often: not ejected"
            );
        }
        outlier
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
        let probe_timeout = self.settings().routing.probe_timeout;
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
                m.refused.store(false, Ordering::Relaxed);
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
            change: None,
        });
        let b = Balancer::new(
            rx,
            BalancerSettings {
                routing: Routing {
                    policy,
                    ..Routing::default()
                },
                ..BalancerSettings::default()
            },
        );
        (b, tx)
    }

    async fn settled(b: &Balancer, n: usize) {
        until(b, |members| members.len() == n).await;
    }

    /// Waits (up to a second) until the members satisfy `done`.
    async fn until(b: &Balancer, done: impl Fn(&[Arc<Member>]) -> bool) {
        for _ in 0..200 {
            if done(&b.members()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("balancer did not take the endpoints");
    }

    fn picks(b: &Balancer, n: usize, client: Option<IpAddr>) -> Vec<String> {
        (0..n)
            .map(|_| {
                b.pick(client)
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

    /// The member `id` as if a pick had chosen it.
    fn pick_id(b: &Balancer, id: &str) -> Picked {
        let snapshot = b.inner.snapshot();
        let member = snapshot
            .members
            .iter()
            .find(|m| &*m.endpoint.id == id)
            .cloned()
            .expect("a member with that id");
        b.picked(member, snapshot)
    }

    /// `n` answered attempts on each of `ids`.
    fn answered(b: &Balancer, ids: &[&str], n: usize) {
        for id in ids {
            let p = pick_id(b, id);
            for _ in 0..n {
                p.succeeded(Duration::from_millis(2));
            }
        }
    }

    #[tokio::test]
    async fn timeouts_in_a_row_eject_an_outlier_and_a_success_ends_the_streak() {
        let (b, _tx) = abc(Policy::RoundRobin).await;
        answered(&b, &["b", "c"], 8);
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
        assert!(
            b.members()[0].is_ejected(),
            "three in a row, peers fine: ejected"
        );
        assert_eq!((b.ejections(), b.members()[0].ejections()), (1, 1));
        drop(a);
        assert!(picks(&b, 6, None).iter().all(|id| id != "a"));
    }

    #[tokio::test]
    async fn when_everyone_is_slow_no_one_is_ejected_for_it() {
        let (b, _tx) = abc(Policy::RoundRobin).await;
        // b and c: 8 answered and 2 timed out each (20 %).
        answered(&b, &["b", "c"], 8);
        for id in ["b", "c"] {
            let p = pick_id(&b, id);
            p.failed();
            p.succeeded(Duration::from_millis(90));
            p.failed();
            p.succeeded(Duration::from_millis(90));
        }
        // a: 8 answered, then 3 timeouts in a row (27 %): not twice its peers' share.
        answered(&b, &["a"], 8);
        let a = pick_id(&b, "a");
        for _ in 0..3 {
            a.failed();
        }
        assert!(b.members().iter().all(|m| !m.is_ejected()), "no outlier");
        // Its streak goes on while the peers stay as they are: now it is one.
        for _ in 0..3 {
            a.failed();
        }
        assert!(
            b.members()[0].is_ejected(),
            "5 of 13 failed against 4 of 24"
        );
    }

    #[tokio::test]
    async fn a_lone_instance_is_never_ejected_for_timeouts_but_is_for_refusals() {
        let (b, _tx) = balancer(vec![endpoint("a", 1, 1)], Policy::RoundRobin);
        settled(&b, 1).await;
        let a = pick_id(&b, "a");
        for _ in 0..10 {
            a.failed();
        }
        assert!(!b.members()[0].is_ejected(), "no peer to be slower than");
        a.refused();
        assert!(b.members()[0].is_ejected(), "a refused connection ejects");
    }

    #[tokio::test]
    async fn a_retry_never_goes_to_an_ejected_or_refusing_instance() {
        let (b, _tx) = abc(Policy::RoundRobin).await;
        // a is ejected; b refused too, but the cap (one of three) keeps it in rotation.
        pick_id(&b, "a").refused();
        pick_id(&b, "b").refused();
        let state: Vec<(bool, bool)> = b
            .members()
            .iter()
            .map(|m| (m.is_ejected(), m.is_refusing()))
            .collect();
        assert_eq!(state, [(true, true), (false, true), (false, false)]);
        for _ in 0..6 {
            let p = b.pick_other(None, &[]).expect("c is usable");
            assert_eq!(p.id(), "c");
        }
        assert!(
            b.pick_other(None, &["c"]).is_none(),
            "after c failed, no usable instance is left: no retry"
        );
        // A first attempt prefers c too; b (refusing, not ejected) only without c.
        assert!(picks(&b, 6, None).iter().all(|id| id == "c"));
        // b answering again makes it a fit target once more.
        pick_id(&b, "b").succeeded(Duration::from_millis(1));
        assert_eq!(
            b.pick_other(None, &["c"]).map(|p| p.id().to_owned()),
            Some("b".to_owned())
        );
    }

    #[tokio::test]
    async fn at_most_the_capped_share_is_ejected_at_once() {
        let (b, _tx) = balancer(
            vec![endpoint("a", 1, 1), endpoint("b", 2, 1)],
            Policy::RoundRobin,
        );
        settled(&b, 2).await;
        pick_id(&b, "a").refused();
        pick_id(&b, "b").refused();
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
    async fn an_ejected_instance_is_skipped_and_a_first_attempt_uses_it_only_as_a_last_resort() {
        let (b, _tx) = balancer(vec![endpoint("a", 1, 1)], Policy::RoundRobin);
        settled(&b, 1).await;
        pick_id(&b, "a").refused();
        assert!(b.members()[0].is_ejected());
        assert!(b.pick_other(None, &[]).is_none(), "never a retry target");
        assert_eq!(
            b.pick(None).map(|p| p.id().to_owned()).as_deref(),
            Some("a"),
            "a first attempt with nothing else left still tries it"
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
        let busy = b.pick(None).expect("pick");
        let busy_id = busy.id().to_owned();
        let next: Vec<String> = (0..4)
            .map(|_| b.pick(None).map(|p| p.id().to_owned()).unwrap_or_default())
            .collect();
        assert!(next.iter().all(|id| *id != busy_id), "{next:?}");
    }

    #[tokio::test]
    async fn a_change_keeps_the_members_it_does_not_name() {
        let first = Arc::new(vec![
            endpoint("a", 1, 1),
            endpoint("b", 2, 1),
            endpoint("c", 3, 1),
        ]);
        let (tx, rx) = watch::channel(Endpoints {
            list: Arc::clone(&first),
            known: true,
            change: None,
        });
        let b = Balancer::new(rx, BalancerSettings::default());
        settled(&b, 3).await;
        let before = b.members();
        let (d, bb) = (endpoint("d", 4, 1), endpoint("b", 2, 1));
        tx.send_replace(Endpoints {
            list: Arc::new(vec![endpoint("a", 1, 1), endpoint("c", 3, 1), d.clone()]),
            known: true,
            change: Some(Arc::new(Change {
                base: first,
                added: vec![d],
                removed: vec![bb],
            })),
        });
        until(&b, |members| members.iter().any(|m| &*m.endpoint.id == "d")).await;
        let after = b.members();
        let ids: Vec<&str> = after.iter().map(|m| &*m.endpoint.id).collect();
        assert_eq!(ids, ["a", "c", "d"]);
        assert!(Arc::ptr_eq(&after[0], &before[0]) && Arc::ptr_eq(&after[1], &before[2]));
    }

    #[tokio::test]
    async fn channels_survive_unrelated_changes_and_an_empty_set_means_no_pick() {
        let (b, tx) = balancer(vec![endpoint("a", 1, 1)], Policy::RoundRobin);
        settled(&b, 1).await;
        let first = Arc::as_ptr(&b.members()[0]);
        tx.send_replace(Endpoints {
            list: Arc::new(vec![endpoint("a", 1, 1), endpoint("b", 2, 1)]),
            known: true,
            change: None,
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
            change: None,
        });
        settled(&b, 0).await;
        assert!(b.pick(None).is_none());
    }
}
