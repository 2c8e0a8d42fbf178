//! One instance's life in Consul: register once ready, stay registered (an agent restart in
//! dev mode forgets every service), deregister at shutdown. Consul being down never stops
//! the service: registration retries with backoff in the background.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    address::{NoAdvertiseAddress, advertise_address},
    backoff::Backoff,
    consul::{
        CheckRegistration, CheckStatus, ConsulClient, ConsulError, ConsulSettings,
        ServiceRegistration, Weights, go_duration,
    },
};

/// How an instance registers itself; every field can be set from config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistrationSettings {
    /// Off: the service runs without Consul.
    pub enabled: bool,
    /// The name to register under (instances are `<name>-<uuid>`); the service's own name
    /// when unset. Callers find the service by it, so a gateway's `upstream.service` follows.
    pub name: Option<String>,
    /// Defaults to the bind address; required (or detected) when binding to 0.0.0.0.
    pub advertise_address: Option<IpAddr>,
    pub tags: Vec<String>,
    /// `Weights.Passing` (1 to 65535): this instance's share under a weighted policy, next to
    /// the others' (`Warning` is 1: a warning instance gets a token share).
    pub weight: u32,
    /// `Meta` key/values (Consul's rules: keys of letters, digits, `_` and `-`, at most 128
    /// characters and not starting `consul-`; values at most 512 characters; 64 pairs with
    /// `version`, which the service sets to its own version).
    pub meta: BTreeMap<String, String>,
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Consul removes an instance whose check stayed critical this long (1 min minimum).
    #[serde(with = "humantime_serde")]
    pub deregister_critical_after: Duration,
    /// How often the instance verifies the agent still knows it.
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// Bound on the deregistration at shutdown; a failure is logged, never blocks exit.
    #[serde(with = "humantime_serde")]
    pub deregister_timeout: Duration,
}

impl Default for RegistrationSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            name: None,
            advertise_address: None,
            tags: Vec::new(),
            weight: 1,
            meta: BTreeMap::new(),
            check_interval: Duration::from_secs(5),
            check_timeout: Duration::from_secs(2),
            deregister_critical_after: Duration::from_secs(60),
            resync_interval: Duration::from_secs(3),
            deregister_timeout: Duration::from_secs(3),
        }
    }
}

/// What Consul should probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckTarget {
    /// `host:port`, probing gRPC health service `""`.
    Grpc(String),
    /// A URL answering 2xx when healthy.
    Http(String),
}

impl RegistrationSettings {
    /// The registration body for one instance of version `version` with a fresh
    /// `<name>-<uuid v4>` ID (`name` unless [`Self::name`] is set). The check starts `passing`: an instance registers only once it
    /// is ready, so it joins the rotation at once rather than after the first probe.
    /// The name registered under: [`Self::name`], else the service's own `name`. It is
    /// also the service's Connect identity.
    pub fn service_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(name)
    }

    pub fn service(
        &self,
        name: &str,
        version: &str,
        address: IpAddr,
        port: u16,
        check: CheckTarget,
    ) -> ServiceRegistration {
        let name = self.service_name(name);
        let (grpc, http) = match check {
            CheckTarget::Grpc(target) => (Some(target), None),
            CheckTarget::Http(url) => (None, Some(url)),
        };
        ServiceRegistration {
            id: format!("{name}-{}", uuid::Uuid::new_v4()),
            name: name.to_owned(),
            address: address.to_string(),
            port,
            tags: self.tags.clone(),
            meta: self
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain([("version".to_owned(), version.to_owned())])
                .collect::<HashMap<_, _>>(),
            weights: Some(Weights {
                passing: self.weight,
                warning: 1,
            }),
            check: Some(CheckRegistration {
                grpc_use_tls: grpc.as_ref().map(|_| false),
                grpc,
                http,
                interval: Some(go_duration(self.check_interval)),
                timeout: Some(go_duration(self.check_timeout)),
                deregister_critical_service_after: Some(go_duration(
                    self.deregister_critical_after,
                )),
                status: Some(CheckStatus::Passing),
                ..CheckRegistration::default()
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error(transparent)]
    Advertise(#[from] NoAdvertiseAddress),
    #[error("registration.{0}")]
    Invalid(String),
}

impl RegistrationSettings {
    /// Consul's own rules for weights and meta, checked at start rather than refused by the
    /// agent on every registration attempt.
    pub fn validate(&self) -> Result<(), PlanError> {
        let invalid = |what: String| Err(PlanError::Invalid(what));
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 63
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            // Consul takes other names too, but only these resolve through its DNS interface.
            return invalid(format!(
                "name: {name:?} is not 1 to 63 letters, digits or '-'"
            ));
        }
        if !(1..=65535).contains(&self.weight) {
            return invalid(format!("weight: {} is not in 1..=65535", self.weight));
        }
        if self.meta.len() + 1 > 64 {
            return invalid(format!(
                "meta: {} pairs and `version` exceed Consul's 64",
                self.meta.len()
            ));
        }
        for (key, value) in &self.meta {
            if key == "version" {
                return invalid("meta.version: set by the service to its own version".into());
            }
            if key.is_empty()
                || key.len() > 128
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return invalid(format!(
                    "meta.{key}: keys are 1 to 128 letters, digits, '_' or '-'"
                ));
            }
            if key.starts_with("consul-") {
                return invalid(format!("meta.{key}: the prefix 'consul-' is Consul's"));
            }
            if value.chars().count() > 512 {
                return invalid(format!("meta.{key}: values are at most 512 characters"));
            }
        }
        Ok(())
    }
}

/// A registration worked out at start-up (address, ID, check), started once the instance
/// serves.
#[derive(Debug)]
pub struct Planned {
    client: ConsulClient,
    service: ServiceRegistration,
    resync: Duration,
    deregister_timeout: Duration,
}

impl RegistrationSettings {
    /// Works out how the instance bound to `bound` registers as `name` (its `version` in the
    /// `Meta`), with the check `check` makes from the advertised address; `None` when
    /// registration is off.
    pub fn plan(
        &self,
        consul: &ConsulSettings,
        name: &str,
        version: &str,
        bound: SocketAddr,
        check: impl FnOnce(SocketAddr) -> CheckTarget,
    ) -> Result<Option<Planned>, PlanError> {
        self.validate()?;
        if !self.enabled {
            tracing::info!("Consul registration disabled");
            return Ok(None);
        }
        let (ip, source) = advertise_address(bound.ip(), self.advertise_address)?;
        tracing::info!(address = %ip, source, "advertise address for Consul");
        let advertised = SocketAddr::new(ip, bound.port());
        Ok(Some(Planned {
            client: ConsulClient::new(consul)?,
            service: self.service(name, version, ip, bound.port(), check(advertised)),
            resync: self.resync_interval,
            deregister_timeout: self.deregister_timeout,
        }))
    }
}

impl Planned {
    /// The `<name>-<uuid>` ID the instance registers under.
    pub fn id(&self) -> &str {
        &self.service.id
    }

    pub fn start(self) -> Registration {
        let mut registration = Registration::start(self.client, self.service, self.resync);
        registration.deregister_timeout = self.deregister_timeout;
        registration
    }
}

/// A running registration, owned: it cannot outlive its owner. Call [`Registration::leave`]
/// at shutdown to deregister before draining; if it is dropped on any other path (a server
/// error, a panic unwinding), the keeper stops and a bounded, best-effort deregistration is
/// sent from a task of its own, so Consul is never left routing to a dead instance.
#[derive(Debug)]
pub struct Registration {
    client: ConsulClient,
    id: String,
    registered: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
    /// Bound used by [`Registration::leave`] and by the deregistration on drop.
    deregister_timeout: Duration,
    /// Set once deregistered on purpose; the drop then has nothing left to do.
    left: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
        if self.left {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(service_id = %self.id, "dropped outside a runtime; not deregistered");
            return;
        };
        let (client, id, timeout) = (
            self.client.clone(),
            self.id.clone(),
            self.deregister_timeout,
        );
        tracing::warn!(service_id = %id, "registration dropped without leaving; deregistering");
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, client.deregister(&id)).await {
                Ok(Ok(())) => tracing::info!(service_id = %id, "deregistered from Consul"),
                Ok(Err(e)) => tracing::warn!(service_id = %id, error = %e, "deregistration failed"),
                Err(_) => tracing::warn!(service_id = %id, ?timeout, "deregistration timed out"),
            }
        });
    }
}

impl Registration {
    /// Starts registering `service` in the background and keeps it registered.
    pub fn start(client: ConsulClient, service: ServiceRegistration, resync: Duration) -> Self {
        let (tx, registered) = watch::channel(false);
        let id = service.id.clone();
        let keeper = tokio::spawn(keep_registered(client.clone(), service, resync, tx));
        Self {
            client,
            id,
            registered,
            keeper,
            deregister_timeout: RegistrationSettings::default().deregister_timeout,
            left: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the last attempt left the instance registered.
    pub fn is_registered(&self) -> bool {
        *self.registered.borrow()
    }

    /// Stops keeping the registration, then removes it within `timeout`. Errors are for the
    /// log: the caller goes on shutting down either way.
    pub async fn deregister(mut self, timeout: Duration) -> Result<(), DeregisterError> {
        self.keeper.abort();
        self.left = true;
        match tokio::time::timeout(timeout, self.client.deregister(&self.id)).await {
            Ok(result) => result.map_err(DeregisterError::Consul),
            Err(_) => Err(DeregisterError::Timeout(timeout)),
        }
    }
}

impl Registration {
    /// Deregisters within the configured bound and logs the outcome; never fails, because
    /// a shutdown goes on either way.
    pub async fn leave(self) {
        let (id, timeout) = (self.id.clone(), self.deregister_timeout);
        match self.deregister(timeout).await {
            Ok(()) => tracing::info!(service_id = %id, "deregistered from Consul"),
            Err(e) => tracing::warn!(service_id = %id, error = %e, "deregistration failed"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeregisterError {
    #[error(transparent)]
    Consul(ConsulError),
    #[error("Consul did not answer within {0:?}")]
    Timeout(Duration),
}

/// Whether the agent's service list holds `id` (agents without `/v1/agent/service/<id>`).
async fn listed(client: &ConsulClient, id: &str) -> Result<bool, ConsulError> {
    client
        .agent_services()
        .await
        .map(|services| services.contains_key(id))
}

async fn keep_registered(
    client: ConsulClient,
    service: ServiceRegistration,
    resync: Duration,
    registered: watch::Sender<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let id = service.id.as_str();
    // `GET /v1/agent/service/<id>` (one service) where the agent has it, else the list.
    let mut by_id = true;
    loop {
        match client.register(&service).await {
            Ok(()) => {
                tracing::info!(service_id = id, consul = %client.base_url(), "registered in Consul");
                registered.send_replace(true);
                backoff.reset();
            }
            Err(e) => {
                registered.send_replace(false);
                let delay = backoff.next_delay();
                tracing::warn!(
                    service_id = id, error = %e, retry_in = ?delay,
                    "cannot register in Consul; serving anyway and retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        // Registered: check now and then that the agent still knows us.
        loop {
            tokio::time::sleep(resync).await;
            let known = if by_id {
                match client.agent_service(id).await {
                    Err(e) if e.is_unsupported() => {
                        tracing::info!(
                            "the agent has no /v1/agent/service/<id>; reading its service list"
                        );
                        by_id = false;
                        listed(&client, id).await
                    }
                    other => other.map(|found| found.is_some()),
                }
            } else {
                listed(&client, id).await
            };
            match known {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        service_id = id,
                        "Consul no longer knows this instance (agent restarted?); registering again"
                    );
                    registered.send_replace(false);
                    break;
                }
                Err(e) => {
                    tracing::warn!(service_id = id, error = %e, "cannot reach Consul to verify the registration");
                }
            }
        }
    }
}
