//! A default-deny ACL agent, as Consul 1.10 answers with `acl { enabled = true,
//! default_policy = "deny", tokens { master = "…" } }` (transcript `v1.10/03-acl.json`):
//! the master token may do everything; no token (or an empty one) reads empty lists and is
//! refused writes with `Permission denied: Missing service:write on <name>`; any other token
//! is `403 ACL not found`. Every answer says `X-Consul-Default-Acl-Policy: deny`. Policies
//! and tokens other than the master are not implemented.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::Response,
};

use crate::{Shared, decode};

/// Who a request is, under ACLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The master token: a management token.
    Management,
    /// No token, or an empty one: the anonymous token, which the deny policy allows nothing.
    Anonymous,
    /// A token the agent does not know.
    Unknown,
}

/// The token of a request: `X-Consul-Token`, `?token=`, or `Authorization: Bearer`.
fn token<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<String> {
    let header = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    header.or(query).or(bearer)
}

fn caller(master: &str, headers: &HeaderMap, uri: &Uri) -> Caller {
    match token(headers, uri) {
        None => Caller::Anonymous,
        Some(t) if t.is_empty() => Caller::Anonymous,
        Some(t) if t == master => Caller::Management,
        Some(_) => Caller::Unknown,
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    let mut r = Response::new(Body::from(message));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn denied(service: &str) -> Response {
    plain(
        StatusCode::FORBIDDEN,
        format!("Permission denied: Missing service:write on {service}"),
    )
}

/// `/v1/acl/token/self` for the master token.
fn master_token_self(master: &str) -> Response {
    let body = serde_json::json!({
        "AccessorID": "3fabd3e2-7dd0-21c1-8379-d52622cf3f2a",
        "SecretID": master,
        "Description": "Master Token",
        "Policies": [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}],
        "Local": false,
        "CreateTime": "2021-10-01T00:00:00Z",
        "Hash": "",
        "CreateIndex": 8,
        "ModifyIndex": 8
    });
    let mut r = Response::new(Body::from(format!("{body:#}\n")));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An empty body of the same kind as `path`'s answer (a list or a map).
fn empty_view(path: &str) -> Option<&'static str> {
    if path.starts_with("/v1/health/service/") || path.starts_with("/v1/catalog/service/") {
        Some("[]\n")
    } else if path == "/v1/agent/services"
        || path == "/v1/agent/checks"
        || path == "/v1/catalog/services"
    {
        Some("{}\n")
    } else {
        None
    }
}

/// `"keys"` or `"recurse"` for a KV listing read.
fn kv_listing(path: &str, uri: &Uri) -> Option<&'static str> {
    path.strip_prefix("/v1/kv/")?;
    let query = uri.query().unwrap_or("");
    let has = |name: &str| form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == name);
    if has("keys") {
        Some("keys")
    } else if has("recurse") {
        Some("recurse")
    } else {
        None
    }
}

/// Every request lands here: under ACLs when the double has a master token, else as an
/// agent without them.
pub(crate) async fn dispatch(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match shared.config.acl_master_token.clone() {
        Some(master) => route(shared, &master, method, uri, headers, body).await,
        None => crate::api::route_inner(shared, method, uri, body).await,
    }
}

/// Answers under ACLs: decides what the caller may do, then lets `route` answer.
pub(crate) async fn route(
    shared: Arc<Shared>,
    master: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let roots = path == "/v1/agent/connect/ca/roots" || path == "/v1/connect/ca/roots";
    let mut answer = match caller(master, &headers, &uri) {
        // CA roots are public: no token needed, and a bogus one is ignored.
        _ if roots => crate::api::route_inner(shared, method, uri, body).await,
        Caller::Unknown => plain(StatusCode::FORBIDDEN, "ACL not found".into()),
        Caller::Management if path == "/v1/acl/token/self" => master_token_self(master),
        Caller::Management => {
            if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/")
                && !shared.lock().services.contains_key(id)
            {
                // With ACLs on, an unknown ID is a 500 (1.0.8 and ACLs off: 200).
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Unknown service {id:?}"),
                )
            } else {
                crate::api::route_inner(shared, method, uri, body).await
            }
        }
        Caller::Anonymous => {
            if path == "/v1/acl/token/self" {
                plain(StatusCode::FORBIDDEN, "ACL not found".into())
            } else if path == "/v1/agent/service/register" && method == Method::PUT {
                match decode::registration(&body) {
                    Ok(def) => denied(&def.name),
                    Err(message) => plain(StatusCode::BAD_REQUEST, message),
                }
            } else if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
                let name = shared.lock().services.get(id).map(|s| s.def.name.clone());
                match name {
                    Some(name) => denied(&name),
                    None => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("Unknown service {id:?}"),
                    ),
                }
            } else if let Some(listing) = kv_listing(&path, &uri).filter(|_| method == Method::GET)
            {
                // A KV listing is filtered too: `?recurse` finds nothing (404), `?keys` an
                // empty list, both with the prefix's index (and blocking) as usual.
                let mut r = crate::api::route_inner(shared, method, uri, body).await;
                if r.status().is_success() || r.status() == StatusCode::NOT_FOUND {
                    r.headers_mut().remove(header::CONTENT_LENGTH);
                    if listing == "keys" {
                        *r.status_mut() = StatusCode::OK;
                        *r.body_mut() = Body::from("[]");
                    } else {
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r.headers_mut().remove(header::CONTENT_TYPE);
                        *r.body_mut() = Body::empty();
                    }
                }
                r
            } else if let Some(empty) = empty_view(&path).filter(|_| method == Method::GET) {
                // Reads are filtered, not refused: the same answer (and blocking) with
                // nothing in it.
                let mut r = crate::api::route_inner(shared, method, uri, body).await;
                if r.status() == StatusCode::OK {
                    *r.body_mut() = Body::from(empty);
                    r.headers_mut().remove(header::CONTENT_LENGTH);
                }
                r
            } else if path.starts_with("/v1/status/") {
                crate::api::route_inner(shared, method, uri, body).await
            } else {
                plain(StatusCode::FORBIDDEN, "Permission denied".into())
            }
        }
    };
    answer.headers_mut().insert(
        "x-consul-default-acl-policy",
        HeaderValue::from_static("deny"),
    );
    answer
}
