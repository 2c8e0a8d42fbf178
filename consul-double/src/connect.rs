//! Consul Connect as a 1.10.3 dev agent answers it (`06-connect.json`): a built-in CA with
//! EC P-256 roots, leaf certificates whose only SAN is the service's SPIFFE URI, intentions by
//! name, `authorize`, and a CA rotation that cross-signs the new root and renews every leaf a
//! little later. The CA survives [`crate::ConsulDouble::restart`], as a server's CA does.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// A leaf lives this long (a dev agent's `LeafCertTTL`).
const LEAF_TTL: Duration = Duration::from_secs(72 * 3600);
/// Roots live ten years; a cross-signed root seven days.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const CROSS_SIGNED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Certificates are backdated this much, against clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct CaError(#[from] rcgen::Error);

struct Root {
    id: String,
    serial: u64,
    signing_key_id: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    pem: String,
    /// The previous root's signature over this root's key (after a rotation).
    intermediates: Vec<String>,
    params: CertificateParams,
    key: KeyPair,
    create_index: u64,
    modify_index: u64,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Leaf {
    serial: String,
    /// The leaf, then (after a rotation) the cross-signed root.
    chain_pem: String,
    key_pem: String,
    uri: String,
    valid_after: OffsetDateTime,
    valid_before: OffsetDateTime,
    root_id: String,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Clone)]
struct Intention {
    action: Action,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// The CA, the leaves it signed and the intentions.
#[derive(Debug)]
pub(crate) struct Ca {
    cluster_id: String,
    datacenter: String,
    roots: Vec<Root>,
    active: String,
    leaves: BTreeMap<String, Leaf>,
    /// By (source, destination).
    intentions: BTreeMap<(String, String), Intention>,
    /// The last private key a configuration PUT carried: the same key again rotates nothing.
    configured_key: Option<String>,
    next_serial: u64,
    /// Connect's own Raft-like counter: roots, leaves and intentions block on it.
    index: u64,
    roots_index: u64,
    intentions_index: u64,
}

fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
}

impl Ca {
    pub(crate) fn new(datacenter: &str) -> Result<Self, CaError> {
        let mut ca = Self {
            cluster_id: uuid::Uuid::new_v4().to_string(),
            datacenter: datacenter.to_owned(),
            roots: Vec::new(),
            active: String::new(),
            leaves: BTreeMap::new(),
            intentions: BTreeMap::new(),
            configured_key: None,
            next_serial: 7,
            index: 8,
            roots_index: 0,
            intentions_index: 0,
        };
        ca.add_root()?;
        Ok(ca)
    }

    fn trust_domain(&self) -> String {
        format!("{}.consul", self.cluster_id)
    }

    fn short_id(&self) -> &str {
        self.cluster_id.get(..8).unwrap_or(&self.cluster_id)
    }

    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    fn active_root(&self) -> Option<&Root> {
        self.roots.iter().find(|r| r.id == self.active)
    }

    /// A new self-signed root that becomes the active one; the old active root signs its key
    /// (the cross-signed certificate renewed leaves carry).
    fn add_root(&mut self) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let ski = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
        let serial = self.serial();
        let not_before = now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let random: String = uuid::Uuid::new_v4().simple().to_string()[..7].to_owned();
        dn.push(
            DnType::CommonName,
            format!("pri-{random}.consul.ca.{}.consul", self.short_id()),
        );
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = not_before;
        params.not_after = not_before + ROOT_TTL;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(ski.as_ref().to_vec());
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{}", self.trust_domain()).try_into()?,
        )];
        let cert = params.self_signed(&key)?;
        let id = colon_hex(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der()).as_ref(),
        );
        let mut intermediates = Vec::new();
        if let Some(old) = self.active_root() {
            let mut cross = params.clone();
            cross.not_before = not_before - BACKDATE;
            cross.not_after = not_before + CROSS_SIGNED_TTL;
            let issuer = Issuer::from_params(&old.params, &old.key);
            intermediates.push(cross.signed_by(&key, &issuer)?.pem());
        }
        let index = self.bump();
        for root in &mut self.roots {
            root.modify_index = index;
        }
        self.roots.push(Root {
            id: id.clone(),
            serial,
            signing_key_id: colon_hex(ski.as_ref()),
            not_before,
            not_after: not_before + ROOT_TTL,
            pem: cert.pem(),
            intermediates,
            params,
            key,
            create_index: index,
            modify_index: index,
        });
        // The list is ordered by ID, not by age, as Consul's is.
        self.roots.sort_by(|a, b| a.id.cmp(&b.id));
        self.active = id;
        self.roots_index = index;
        Ok(())
    }

    pub(crate) fn roots_index(&self) -> u64 {
        self.roots_index
    }

    pub(crate) fn intentions_index(&self) -> u64 {
        self.intentions_index
    }

    pub(crate) fn leaf_index(&self, service: &str) -> u64 {
        self.leaves.get(service).map_or(0, |l| l.modify_index)
    }

    pub(crate) fn roots_json(&self) -> Value {
        let td = self.trust_domain();
        let roots: Vec<Value> = self
            .roots
            .iter()
            .map(|r| {
                json!({
                    "ID": r.id,
                    "Name": "Consul CA Root Cert",
                    "SerialNumber": r.serial,
                    "SigningKeyID": r.signing_key_id,
                    "ExternalTrustDomain": self.cluster_id,
                    "NotBefore": rfc3339(r.not_before),
                    "NotAfter": rfc3339(r.not_after),
                    "RootCert": r.pem,
                    "IntermediateCerts": if r.intermediates.is_empty() { Value::Null } else { json!(r.intermediates) },
                    "Active": r.id == self.active,
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "CreateIndex": r.create_index,
                    "ModifyIndex": r.modify_index,
                })
            })
            .collect();
        json!({ "ActiveRootID": self.active, "TrustDomain": td, "Roots": roots })
    }

    /// `?pem=true`: every root, then the cross-signed certificates.
    pub(crate) fn roots_pem(&self) -> String {
        let mut out: String = self.roots.iter().map(|r| r.pem.as_str()).collect();
        for r in &self.roots {
            out.extend(r.intermediates.iter().map(String::as_str));
        }
        out
    }

    pub(crate) fn configuration_json(&self) -> Value {
        let mut config = json!({ "IntermediateCertTTL": "8760h", "LeafCertTTL": "72h" });
        if let (Some(key), Some(map)) = (&self.configured_key, config.as_object_mut()) {
            map.insert("PrivateKey".into(), json!(key));
            map.insert("RotationPeriod".into(), json!("2160h"));
        }
        json!({
            "Provider": "consul",
            "Config": config,
            "State": null,
            "ForceWithoutCrossSigning": false,
            "CreateIndex": 5,
            "ModifyIndex": self.roots_index,
        })
    }

    /// A configuration PUT: a private key not seen before makes a new active root. The
    /// double makes its own key for it (the effect a client sees is the same: a new root,
    /// cross-signed by the old one). Returns whether the CA rotated.
    pub(crate) fn configure(&mut self, private_key: Option<&str>) -> Result<bool, CaError> {
        let Some(key) = private_key.filter(|k| self.configured_key.as_deref() != Some(*k)) else {
            return Ok(false);
        };
        self.configured_key = Some(key.to_owned());
        self.add_root()?;
        Ok(true)
    }

    /// The service's leaf, signed by the active root on first request.
    pub(crate) fn leaf(&mut self, service: &str) -> Result<(Value, u64, bool), CaError> {
        let hit = self.leaves.contains_key(service);
        if !hit {
            self.sign_leaf(service)?;
        }
        let leaf = self
            .leaves
            .get(service)
            .ok_or(CaError(rcgen::Error::CouldNotParseCertificate))?;
        let body = json!({
            "SerialNumber": leaf.serial,
            "CertPEM": leaf.chain_pem,
            "PrivateKeyPEM": leaf.key_pem,
            "Service": service,
            "ServiceURI": leaf.uri,
            "ValidAfter": rfc3339(leaf.valid_after),
            "ValidBefore": rfc3339(leaf.valid_before),
            "CreateIndex": leaf.create_index,
            "ModifyIndex": leaf.modify_index,
        });
        Ok((body, leaf.modify_index, hit))
    }

    /// Leaves signed by a root that is no longer active: the agent renews them after a
    /// random delay (0–30 s on a real agent).
    pub(crate) fn stale_leaves(&self) -> Vec<String> {
        self.leaves
            .iter()
            .filter(|(_, l)| l.root_id != self.active)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Signs (or re-signs) `service`'s leaf with the active root.
    pub(crate) fn sign_leaf(&mut self, service: &str) -> Result<(), CaError> {
        let serial = self.serial();
        let uri = format!(
            "spiffe://{}/ns/default/dc/{}/svc/{service}",
            self.trust_domain(),
            self.datacenter
        );
        let common_name = format!(
            "{}.svc.default.{}.consul",
            service.replace('-', ""),
            self.short_id()
        );
        let Some(root) = self.active_root() else {
            return Err(CaError(rcgen::Error::CouldNotParseCertificate));
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let valid_after = now() - BACKDATE;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = valid_after;
        params.not_after = valid_after + LEAF_TTL;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DataEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.subject_alt_names = vec![SanType::URI(uri.clone().try_into()?)];
        let issuer = Issuer::from_params(&root.params, &root.key);
        let cert = params.signed_by(&key, &issuer)?;
        let mut chain_pem = cert.pem();
        for intermediate in &root.intermediates {
            chain_pem.push_str(intermediate);
        }
        let root_id = root.id.clone();
        let index = self.bump();
        let create_index = self.leaves.get(service).map_or(index, |l| l.create_index);
        self.leaves.insert(
            service.to_owned(),
            Leaf {
                serial: colon_hex(&[u8::try_from(serial % 256).unwrap_or(0)]),
                chain_pem,
                key_pem: sec1_pem(&key),
                uri,
                valid_after,
                valid_before: valid_after + LEAF_TTL,
                root_id,
                create_index,
                modify_index: index,
            },
        );
        Ok(())
    }

    /// `PUT /v1/connect/intentions/exact`: upserts. `Err` is Consul's 500 text.
    pub(crate) fn put_intention(
        &mut self,
        source: &str,
        destination: &str,
        action: Option<&str>,
    ) -> Result<(), &'static str> {
        let action = match action {
            Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            _ => return Err("Sources[0].Action must be set to 'allow' or 'deny'"),
        };
        let index = self.bump();
        let key = (source.to_owned(), destination.to_owned());
        let create_index = self.intentions.get(&key).map_or(index, |i| i.create_index);
        self.intentions.insert(
            key,
            Intention {
                action,
                create_index,
                modify_index: index,
            },
        );
        self.intentions_index = index;
        Ok(())
    }

    pub(crate) fn delete_intention(&mut self, source: &str, destination: &str) {
        if self
            .intentions
            .remove(&(source.to_owned(), destination.to_owned()))
            .is_some()
        {
            self.intentions_index = self.bump();
        }
    }

    fn intention_json(source: &str, destination: &str, i: &Intention) -> Value {
        json!({
            "SourceNS": "default",
            "SourceName": source,
            "DestinationNS": "default",
            "DestinationName": destination,
            "SourceType": "consul",
            "Action": i.action.as_str(),
            "Precedence": precedence(source),
            "CreateIndex": i.create_index,
            "ModifyIndex": i.modify_index,
        })
    }

    pub(crate) fn intention(&self, source: &str, destination: &str) -> Option<Value> {
        self.intentions
            .get(&(source.to_owned(), destination.to_owned()))
            .map(|i| Self::intention_json(source, destination, i))
    }

    pub(crate) fn intentions_json(&self) -> Value {
        Value::Array(
            self.intentions
                .iter()
                .map(|((s, d), i)| Self::intention_json(s, d, i))
                .collect(),
        )
    }

    /// The intention that decides `source` → `destination`: the exact one, else a
    /// wildcard source.
    fn matching(&self, source: &str, destination: &str) -> Option<(&str, &Intention)> {
        [source, "*"].into_iter().find_map(|s| {
            self.intentions
                .get_key_value(&(s.to_owned(), destination.to_owned()))
                .map(|((s, _), i)| (s.as_str(), i))
        })
    }

    /// `GET /v1/connect/intentions/check`.
    pub(crate) fn check(&self, source: &str, destination: &str, default_allow: bool) -> bool {
        self.matching(source, destination)
            .map_or(default_allow, |(_, i)| i.action == Action::Allow)
    }

    /// `POST /v1/agent/connect/authorize`: the decision and Consul's reason for it.
    pub(crate) fn authorize(&self, source: &str, target: &str, default_allow: bool) -> Value {
        let (authorized, reason) = match self.matching(source, target) {
            Some((s, i)) => (
                i.action == Action::Allow,
                format!(
                    "Matched L4 intention: default/{s} => default/{target} (Precedence: {}, Action: {})",
                    precedence(s),
                    i.action.as_str().to_uppercase()
                ),
            ),
            None if default_allow => (
                true,
                "ACLs disabled, access is allowed by default".to_owned(),
            ),
            None => (false, "Default behavior configured by ACLs".to_owned()),
        };
        json!({ "Authorized": authorized, "Reason": reason })
    }
}

/// An exact source ranks above a wildcard one.
fn precedence(source: &str) -> u32 {
    if source == "*" { 8 } else { 9 }
}

/// The key as Consul sends it: SEC1 (`EC PRIVATE KEY`), unwrapped from rcgen's PKCS#8
/// (`SEQUENCE { version, algorithm, OCTET STRING { ECPrivateKey } }`).
fn sec1_pem(key: &KeyPair) -> String {
    use base64::Engine as _;
    let pkcs8 = key.serialize_der();
    let Some(sec1) = pkcs8_inner(&pkcs8) else {
        return key.serialize_pem();
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(sec1);
    let mut pem = String::from("-----BEGIN EC PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END EC PRIVATE KEY-----\n");
    pem
}

pub(crate) fn new_key_pem() -> String {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map(|k| sec1_pem(&k))
        .unwrap_or_default()
}

/// One DER element at the start of `der`: (tag, content, rest).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        let (bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

fn pkcs8_inner(pkcs8: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = tlv(pkcs8)? else {
        return None;
    };
    let (0x02, _, rest) = tlv(body)? else {
        return None;
    };
    let (0x30, _, rest) = tlv(rest)? else {
        return None;
    };
    match tlv(rest)? {
        (0x04, inner, _) => Some(inner),
        _ => None,
    }
}

/// Why a SPIFFE URI is not a service's, as Consul words it; `Ok` is the service name.
pub(crate) fn service_of(uri: &str) -> Result<&str, &'static str> {
    const NOT_CONNECT: &str = "ClientCertURI not a valid Connect identifier";
    let rest = uri.strip_prefix("spiffe://").ok_or(NOT_CONNECT)?;
    let (_trust_domain, path) = rest.split_once('/').ok_or(NOT_CONNECT)?;
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["ns", _, "dc", _, "svc", service] if !service.is_empty() => Ok(service),
        ["agent", ..] => Err("ClientCertURI not a valid Service identifier"),
        _ => Err(NOT_CONNECT),
    }
}

/// After a rotation, renews each stale leaf after a random delay up to `jitter`, as the
/// agent does; pending leaf queries wake on the new index.
pub(crate) fn renew_later(shared: &Arc<crate::Shared>, jitter: Duration) {
    let stale = shared.connect().stale_leaves();
    for service in stale {
        let shared = Arc::clone(shared);
        let delay = rand::Rng::random_range(&mut rand::rng(), Duration::ZERO..=jitter);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut ca = shared.connect();
            if ca.stale_leaves().contains(&service)
                && let Err(e) = ca.sign_leaf(&service)
            {
                tracing::error!(error = %e, service, "leaf renewal failed");
            }
            drop(ca);
            shared.wake();
        });
    }
}
