//! Consul Connect's agent API: the CA roots and a service's leaf certificate (both with
//! blocking queries), `authorize` against intentions, and intentions by name. Shapes as a
//! 1.10 agent answers them; SPIFFE service identities parsed and printed.

use std::{fmt, str::FromStr, time::Duration};

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{Accept, ConsulClient, Result, blocking, consul_index};
use crate::Secret;

/// `GET /v1/agent/connect/ca/roots`: every root to trust, and which one signs now.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaRoots {
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    pub trust_domain: String,
    pub roots: Vec<CaRoot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaRoot {
    #[serde(rename = "ID")]
    pub id: String,
    pub root_cert: String,
    /// After a rotation: the new root's key signed by the old root (`null` before).
    #[serde(default, deserialize_with = "null_is_empty")]
    pub intermediate_certs: Vec<String>,
    #[serde(default)]
    pub active: bool,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// `GET /v1/agent/connect/ca/leaf/<service>`: the service's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LeafCert {
    pub serial_number: String,
    /// The leaf, then (after a CA rotation) the cross-signed root: present all of it.
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    pub private_key_pem: Secret,
    pub service: String,
    #[serde(rename = "ServiceURI")]
    pub service_uri: String,
    pub valid_before: String,
    pub modify_index: u64,
}

/// `POST /v1/agent/connect/authorize`: always an answer (a deny is not an error).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Authorization {
    pub authorized: bool,
    pub reason: String,
}

/// A service's SPIFFE identity: `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub datacenter: String,
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Connect service identity: {0:?}")]
pub struct NotAServiceId(pub String);

impl FromStr for SpiffeId {
    type Err = NotAServiceId;

    fn from_str(uri: &str) -> std::result::Result<Self, Self::Err> {
        let bad = || NotAServiceId(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(bad)?;
        let mut parts = path.split('/');
        let mut field = |name: &str| match (parts.next(), parts.next()) {
            (Some(key), Some(value)) if key == name && !value.is_empty() => Ok(value.to_owned()),
            _ => Err(bad()),
        };
        let id = Self {
            trust_domain: trust_domain.to_owned(),
            namespace: field("ns")?,
            datacenter: field("dc")?,
            service: field("svc")?,
        };
        if trust_domain.is_empty() || parts.next().is_some() {
            return Err(bad());
        }
        Ok(id)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/dc/{}/svc/{}",
            self.trust_domain, self.namespace, self.datacenter, self.service
        )
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AuthorizeRequest<'a> {
    target: &'a str,
    #[serde(rename = "ClientCertURI")]
    client_cert_uri: &'a str,
    client_cert_serial: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct IntentionAction {
    action: &'static str,
}

impl ConsulClient {
    /// The CA roots and the index to block on; with `index` and `wait`, blocks until they
    /// change (a CA rotation).
    pub async fn connect_roots(
        &self,
        index: Option<u64>,
        wait: Option<Duration>,
    ) -> Result<(CaRoots, u64)> {
        let path = "/v1/agent/connect/ca/roots";
        self.blocking_json(path, index, wait).await
    }

    /// `service`'s leaf certificate and the index to block on; with `index` and `wait`,
    /// blocks until the agent renews it.
    pub async fn connect_leaf(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Option<Duration>,
    ) -> Result<(LeafCert, u64)> {
        let path = format!("/v1/agent/connect/ca/leaf/{service}");
        self.blocking_json(&path, index, wait).await
    }

    async fn blocking_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        index: Option<u64>,
        wait: Option<Duration>,
    ) -> Result<(T, u64)> {
        let mut query = Vec::new();
        let extra = blocking(&mut query, index, wait);
        let response = self.read(path, &query, extra, Accept::Success).await?;
        let index = consul_index(path, &response)?;
        Ok((Self::json(path, response).await?, index))
    }

    /// Whether the service `client` may call `target`, by the intentions (and, with ACLs,
    /// their default policy). Needs `service:write` on `target` under default deny.
    pub async fn connect_authorize(
        &self,
        target: &str,
        client: &SpiffeId,
        serial: &str,
    ) -> Result<Authorization> {
        let path = "/v1/agent/connect/authorize";
        let uri = client.to_string();
        let body = AuthorizeRequest {
            target,
            client_cert_uri: &uri,
            client_cert_serial: serial,
        };
        let response = self
            .send(
                Method::POST,
                path,
                &[],
                Some(&body),
                Duration::ZERO,
                Accept::Success,
            )
            .await?;
        Self::json(path, response).await
    }

    /// Upserts the intention `source` → `destination` (needs `intentions:write`).
    pub async fn put_intention(&self, source: &str, destination: &str, allow: bool) -> Result<()> {
        let body = IntentionAction {
            action: if allow { "allow" } else { "deny" },
        };
        self.exact_intention(Method::PUT, source, destination, Some(&body))
            .await
    }

    /// Deletes the intention `source` → `destination` (a missing one too).
    pub async fn delete_intention(&self, source: &str, destination: &str) -> Result<()> {
        self.exact_intention(Method::DELETE, source, destination, None)
            .await
    }

    async fn exact_intention(
        &self,
        method: Method,
        source: &str,
        destination: &str,
        body: Option<&IntentionAction>,
    ) -> Result<()> {
        let query = [
            ("source", source.to_owned()),
            ("destination", destination.to_owned()),
        ];
        let path = "/v1/connect/intentions/exact";
        self.send(method, path, &query, body, Duration::ZERO, Accept::Success)
            .await
            .map(drop)
    }

    /// Rotates the CA to a new root (what `PUT /v1/connect/ca/configuration` with a new
    /// `PrivateKey` does); `private_key_pem` is an EC P-256 key.
    pub async fn rotate_ca(&self, private_key_pem: &str) -> Result<()> {
        let body = serde_json::json!({
            "Provider": "consul",
            "Config": {
                "LeafCertTTL": "72h",
                "RotationPeriod": "2160h",
                "IntermediateCertTTL": "8760h",
                "PrivateKey": private_key_pem,
            }
        });
        self.send(
            Method::PUT,
            "/v1/connect/ca/configuration",
            &[],
            Some(&body),
            Duration::ZERO,
            Accept::Success,
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_and_print_back() {
        let uri =
            "spiffe://a9caa5b8-c905-f12c-03b7-f8afe3a81f70.consul/ns/default/dc/dc1/svc/user-srv";
        let id: SpiffeId = uri.parse().expect("a service id");
        assert_eq!(id.service, "user-srv");
        assert_eq!(id.datacenter, "dc1");
        assert_eq!(id.to_string(), uri);
        for bad in [
            "https://x/ns/default/dc/dc1/svc/a",
            "spiffe://td/agent/client/dc/dc1/id/node",
            "spiffe://td/ns/default/dc/dc1/svc/",
            "spiffe://td/ns/default/dc/dc1/svc/a/extra",
            "spiffe:///ns/default/dc/dc1/svc/a",
            "garbage",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn roots_and_leaf_decode_as_recorded() {
        let roots: CaRoots = serde_json::from_str(
            r#"{"ActiveRootID": "10:82", "TrustDomain": "a9.consul", "Roots": [
                {"ID": "10:82", "Name": "Consul CA Root Cert", "SerialNumber": 7,
                 "RootCert": "PEM", "IntermediateCerts": null, "Active": true,
                 "CreateIndex": 9, "ModifyIndex": 9}]}"#,
        )
        .expect("roots");
        assert_eq!(roots.roots[0].intermediate_certs, Vec::<String>::new());
        assert!(roots.roots[0].active);
        let leaf: LeafCert = serde_json::from_str(
            r#"{"SerialNumber": "08", "CertPEM": "C", "PrivateKeyPEM": "K", "Service": "user-srv",
                "ServiceURI": "spiffe://a9.consul/ns/default/dc/dc1/svc/user-srv",
                "ValidAfter": "2026-12-03T07:53:59Z", "ValidBefore": "2026-12-06T07:53:59Z",
                "CreateIndex": 15, "ModifyIndex": 15}"#,
        )
        .expect("leaf");
        assert_eq!(leaf.private_key_pem.expose(), "K");
        assert!(
            !format!("{leaf:?}").contains("\"K\""),
            "the key is redacted"
        );
    }
}
