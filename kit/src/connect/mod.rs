//! Consul Connect-native mutual TLS between the tiers, with no sidecar. The service's leaf
//! certificate and the CA roots are followed in the local agent (blocking queries), so they
//! rotate without a restart; servers ask the agent's intentions who may call them.
//!
//! # Layout
//! - here: [`ConnectSettings`], and [`Connect`], which gets and follows the certificates
//!   and turns them into rustls configurations;
//! - `verify`: the SPIFFE checks both sides make (Connect leaves have a URI SAN, no DNS name);
//! - `server`: the TLS accept loop and the per-call authorization layer;
//! - `client`: the dialer a balanced upstream connects with.

mod client;
mod server;
mod verify;

pub use server::{Authorizer, Peer, TlsIncoming};

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use arc_swap::ArcSwap;
use discovery::{
    ConsulClient, ConsulError, ConsulSettings,
    blocking::BlockingLoop,
    consul::{CaRoots, LeafCert, SpiffeId},
    tasks::Tasks,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Whether and how a service takes part in Connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectSettings {
    /// Unset: on whenever the service is in Consul and the agent has Connect (a `-dev`
    /// agent does). `true`: a service that cannot get its certificate does not start.
    /// `false`: plain text, logged as a warning, since anyone who can reach the port can
    /// then call it.
    pub enabled: Option<bool>,
    /// How often a server asks the agent again about each service that called it in the
    /// last minute (in the background; calls use the last answer): the bound on how long an
    /// intention change takes to reach open connections.
    #[serde(with = "humantime_serde")]
    pub authorize_ttl: Duration,
    /// A TLS handshake that takes longer is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        Self {
            enabled: None,
            authorize_ttl: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Connect is on, but the agent gives no CA roots: {0}")]
    Roots(#[source] ConsulError),
    #[error("Connect is on, but the agent gives no certificate for {service}: {source}")]
    Leaf {
        service: String,
        #[source]
        source: ConsulError,
    },
    #[error("the agent's Connect certificates are unusable: {0}")]
    Certificates(String),
}

/// How long a blocking query on the roots or the leaf waits at most.
const WAIT: Duration = Duration::from_secs(300);

/// The certificates in force and the rustls configurations made from them.
#[derive(Debug)]
struct Material {
    identity: SpiffeId,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

#[derive(Debug)]
struct Inner {
    service: String,
    consul: ConsulClient,
    provider: Arc<CryptoProvider>,
    material: ArcSwap<Material>,
    /// The last roots and leaf from the agent: a change to either rebuilds both configs.
    latest: Mutex<(CaRoots, LeafCert)>,
    /// Rung when the active root changes: the leaf is fetched afresh then.
    root_changed: Notify,
}

/// The service's place in Connect: its certificates, followed in Consul. Cheap to clone;
/// the followers stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Connect {
    inner: Arc<Inner>,
    _followers: Arc<Tasks>,
}

/// The answer of an agent without Connect (`connect { enabled = false }`).
fn connect_is_off(e: &ConsulError) -> bool {
    matches!(e, ConsulError::Status { body, .. } if body.contains("Connect must be enabled"))
        || e.is_unsupported()
}

impl Connect {
    /// Gets `service`'s certificate and the roots from the agent and starts following
    /// them; `None` when Connect is off (by setting, for a service outside Consul, or on
    /// an agent without it), which is logged as a warning.
    pub async fn start(
        settings: &ConnectSettings,
        consul: &ConsulSettings,
        service: &str,
        in_consul: bool,
    ) -> Result<Option<Self>, ConnectError> {
        let plain = |why: &str| {
            tracing::warn!(
                service,
                "Connect is off ({why}): plain text, so anyone who can reach this port can call it"
            );
            Ok(None)
        };
        match settings.enabled {
            Some(false) => return plain("connect.enabled = false"),
            None if !in_consul => return plain("the service is not in Consul"),
            _ => {}
        }
        let client = ConsulClient::new(consul).map_err(ConnectError::Roots)?;
        let roots = match client.connect_roots(None, None).await {
            Ok((roots, _)) => roots,
            Err(e) if settings.enabled.is_none() && connect_is_off(&e) => {
                return plain("the Consul agent has no Connect");
            }
            Err(e) => return Err(ConnectError::Roots(e)),
        };
        let (leaf, _) = client
            .connect_leaf(service, None, None)
            .await
            .map_err(|source| ConnectError::Leaf {
                service: service.to_owned(),
                source,
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = build(&provider, &roots, &leaf)?;
        tracing::info!(
            identity = %material.identity,
            roots = roots.roots.len(),
            valid_before = leaf.valid_before,
            "Connect on: mutual TLS with the agent's certificate"
        );
        let inner = Arc::new(Inner {
            service: service.to_owned(),
            consul: client,
            provider,
            material: ArcSwap::from_pointee(material),
            latest: Mutex::new((roots, leaf)),
            root_changed: Notify::new(),
        });
        let followers = Tasks(vec![
            tokio::spawn(follow_roots(Arc::clone(&inner))),
            tokio::spawn(follow_leaf(Arc::clone(&inner))),
        ]);
        Ok(Some(Self {
            inner,
            _followers: Arc::new(followers),
        }))
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.inner.material.load().server)
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.inner.material.load().client)
    }

    fn consul(&self) -> &ConsulClient {
        &self.inner.consul
    }

    fn service(&self) -> &str {
        &self.inner.service
    }
}

/// The rustls configurations for `leaf`, trusting every root in `roots`.
fn build(
    provider: &Arc<CryptoProvider>,
    roots: &CaRoots,
    leaf: &LeafCert,
) -> Result<Material, ConnectError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| ConnectError::Certificates(format!("{what}: {e}"));
    let mut store = RootCertStore::empty();
    for root in &roots.roots {
        let der = CertificateDer::from_pem_slice(root.root_cert.as_bytes())
            .map_err(|e| bad(&format!("root {}", root.id), &e))?;
        store
            .add(der)
            .map_err(|e| bad(&format!("root {}", root.id), &e))?;
    }
    let store = Arc::new(store);
    // The whole chain: a renewed leaf carries the new root cross-signed by the old one.
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("leaf certificate", &e))?;
    let identity = chain
        .first()
        .ok_or_else(|| bad("leaf certificate", &"empty"))
        .and_then(|cert| verify::spiffe_id(cert).map_err(|e| bad("leaf certificate", &e)))?;
    let key = || {
        PrivateKeyDer::from_pem_slice(leaf.private_key_pem.expose().as_bytes())
            .map_err(|e| bad("leaf key", &e))
    };
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&store), Arc::clone(provider))
            .build()
            .map_err(|e| bad("client verifier", &e))?;
    let versions = rustls::DEFAULT_VERSIONS;
    let mut server = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(versions)
        .map_err(|e| bad("server config", &e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key()?)
        .map_err(|e| bad("server config", &e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let server_verifier = verify::SpiffeServerVerifier::new(
        Arc::clone(&store),
        roots.trust_domain.clone(),
        Arc::clone(provider),
    );
    let mut client = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(versions)
        .map_err(|e| bad("client config", &e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(server_verifier))
        .with_client_auth_cert(chain, key()?)
        .map_err(|e| bad("client config", &e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Material {
        identity,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

impl Inner {
    /// Rebuilds the configurations after `change` updated the roots or the leaf; new
    /// connections use them, open ones keep theirs.
    fn update(&self, change: impl FnOnce(&mut (CaRoots, LeafCert))) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut latest);
        match build(&self.provider, &latest.0, &latest.1) {
            Ok(material) => {
                tracing::info!(
                    identity = %material.identity,
                    roots = latest.0.roots.len(),
                    active_root = latest.0.active_root_id,
                    valid_before = latest.1.valid_before,
                    "Connect certificates updated"
                );
                self.material.store(Arc::new(material));
            }
            Err(e) => tracing::error!(error = %e, "Connect certificates not updated"),
        }
    }
}

/// Follows the CA roots: a rotation adds a root (trusted at once) and makes it active.
async fn follow_roots(inner: Arc<Inner>) {
    let mut lp = BlockingLoop::new(5);
    loop {
        let index = lp.next_index().await;
        match inner.consul.connect_roots(Some(index), Some(WAIT)).await {
            Ok((roots, answered)) => {
                lp.answered(answered);
                let (changed, new_active) = {
                    let latest = inner.latest.lock().unwrap_or_else(PoisonError::into_inner);
                    (
                        latest.0 != roots,
                        latest.0.active_root_id != roots.active_root_id,
                    )
                };
                if changed {
                    inner.update(|latest| latest.0 = roots);
                }
                if new_active {
                    inner.root_changed.notify_one();
                }
            }
            Err(e) => {
                let pause = lp.failed();
                tracing::warn!(error = %e, retry_in = ?pause, "cannot follow the Connect CA roots");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Follows the service's leaf: the agent renews it before it expires and after a CA
/// rotation (after its own random delay). On a new active root the query is sent afresh,
/// since a 1.10 agent may never wake one that was pending across the rotation.
async fn follow_leaf(inner: Arc<Inner>) {
    let mut lp = BlockingLoop::new(5);
    loop {
        let index = lp.next_index().await;
        let answer = tokio::select! {
            answer = inner.consul.connect_leaf(&inner.service, Some(index), Some(WAIT)) => answer,
            () = inner.root_changed.notified() => continue,
        };
        match answer {
            Ok((leaf, answered)) => {
                lp.answered(answered);
                let changed = {
                    let latest = inner.latest.lock().unwrap_or_else(PoisonError::into_inner);
                    latest.1 != leaf
                };
                if changed {
                    inner.update(|latest| latest.1 = leaf);
                }
            }
            Err(e) => {
                let pause = lp.failed();
                tracing::warn!(error = %e, retry_in = ?pause, "cannot follow the Connect leaf certificate");
                tokio::time::sleep(pause).await;
            }
        }
    }
}
