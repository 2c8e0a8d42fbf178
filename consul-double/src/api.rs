//! The HTTP face of the double: routes Consul's paths by hand so that unknown paths, wrong
//! methods, error bodies and headers come out exactly as the real agent's do.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, Method, StatusCode, Uri, header},
    response::Response,
};
use percent_encoding::percent_decode_str;
use rand::Rng;
use serde::Serialize;
use serde_json::Value;

use crate::{
    Shared, checks, decode,
    duration::{self, GoDuration},
    state::{State as Catalog, Status},
};

const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
const KV_MAX_VALUE: usize = 512 * 1024;

type Query = Vec<(String, String)>;

fn param<'a>(q: &'a Query, key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut buf,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    // Serializing a Value into a Vec cannot fail.
    let _ = value.serialize(&mut ser);
    buf.push(b'\n');
    buf
}

/// Consul's HTTP server (Go's) sends a body of more than about 2 KB chunked, without a
/// `Content-Length`, as one chunk; a smaller one with its length.
const CHUNKED_OVER: usize = 2048;

fn response(status: StatusCode, content_type: Option<&'static str>, body: Vec<u8>) -> Response {
    let body = if body.len() > CHUNKED_OVER {
        let whole = futures_util::stream::once(async {
            Ok::<_, std::convert::Infallible>(Bytes::from(body))
        });
        Body::from_stream(whole)
    } else {
        Body::from(body)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

fn json(shared: &Shared, value: &Value) -> Response {
    let body = if shared.config.pretty {
        pretty(value)
    } else {
        // Serializing a Value into a Vec cannot fail.
        serde_json::to_vec(value).unwrap_or_default()
    };
    response(StatusCode::OK, Some("application/json"), body)
}

/// Consul's errors: plain text, no trailing newline.
fn text(status: StatusCode, message: impl Into<String>) -> Response {
    response(
        status,
        Some("text/plain; charset=utf-8"),
        message.into().into_bytes(),
    )
}

fn empty(status: StatusCode) -> Response {
    response(status, None, Vec::new())
}

fn not_allowed(method: &Method, allow: &'static str) -> Response {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Index and leader headers of catalog, health (`consistency` set) and KV reads.
fn with_index(mut r: Response, index: u64, consistency: Option<&'static str>) -> Response {
    let h = r.headers_mut();
    h.insert("X-Consul-Index", HeaderValue::from(index));
    h.insert("X-Consul-Knownleader", HeaderValue::from_static("true"));
    h.insert("X-Consul-Lastcontact", HeaderValue::from_static("0"));
    if let Some(c) = consistency {
        h.insert(
            "X-Consul-Effective-Consistency",
            HeaderValue::from_static(c),
        );
    }
    r
}

fn consistency(q: &Query) -> &'static str {
    if param(q, "stale").is_some() {
        "stale"
    } else if param(q, "consistent").is_some() {
        "consistent"
    } else {
        "leader"
    }
}

/// Go's `strconv.ParseBool`, with a bare `?passing` meaning true.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `?index` and `?wait`: Some((index, wait)) when the call should block; Err is the 400 text.
fn blocking(q: &Query) -> Result<Option<(u64, Duration)>, &'static str> {
    let index = match param(q, "index") {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| "Invalid index")?),
    };
    let wait = match param(q, "wait") {
        None => None,
        Some(v) => Some(duration::parse(v).map_err(|_| "Invalid wait time")?),
    };
    let Some(index) = index.filter(|i| *i > 0) else {
        return Ok(None);
    };
    let wait = match wait {
        Some(GoDuration::NonNegative(d)) if !d.is_zero() => d.min(MAX_WAIT),
        _ => DEFAULT_WAIT,
    };
    Ok(Some((index, wait)))
}

/// Blocks until `index_of` moves away from its value at the start (when that value is not
/// already past `min`), or until `wait` plus up to `wait/16` of jitter. `Err` when the double
/// stopped meanwhile: a dying agent gives no answer, so the caller must not send one.
async fn block(
    shared: &Shared,
    q: Option<(u64, Duration)>,
    index_of: impl Fn(&Catalog) -> u64,
) -> Result<(), Response> {
    let stopped = || {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent is shutting down (consul-double stopped)",
        )
    };
    let Some((min, wait)) = q else {
        return Ok(());
    };
    let mut changes = shared.changes.subscribe();
    let mut alive = shared.alive.subscribe();
    let start = index_of(&shared.lock());
    if start > min {
        return Ok(());
    }
    let jitter = rand::rng().random_range(Duration::ZERO..=wait / 16);
    let deadline = tokio::time::sleep(wait + jitter);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return Ok(()),
            _ = alive.wait_for(|alive| !*alive) => return Err(stopped()),
            changed = changes.changed() => {
                if changed.is_err() || index_of(&shared.lock()) != start {
                    return Ok(());
                }
            }
        }
    }
}

fn query_of(uri: &Uri) -> Query {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn decoded(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// The answer of an agent without ACLs.
pub(crate) async fn route_inner(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let q = query_of(&uri);
    let get_only = |f: &dyn Fn() -> Response| {
        if method == Method::GET {
            f()
        } else {
            not_allowed(&method, "OPTIONS,GET")
        }
    };
    if let Some(rest) = path.strip_prefix("/v1/kv/") {
        return kv(&shared, &method, &decoded(rest), &q, body).await;
    }
    if path.starts_with("/v1/agent/connect/") || path.starts_with("/v1/connect/") {
        return connect(&shared, &method, &path, &q, &body).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/health/service/") {
        if method != Method::GET {
            return not_allowed(&method, "OPTIONS,GET");
        }
        return health_service(&shared, &decoded(rest), &q).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/agent/service/deregister/") {
        if method != Method::PUT {
            return not_allowed(&method, "OPTIONS,PUT");
        }
        return deregister(&shared, &decoded(rest));
    }
    if let Some(id) = path
        .strip_prefix("/v1/agent/service/")
        .filter(|rest| *rest != "register" && !rest.starts_with("deregister/"))
    {
        // 1.3+: one service of the agent, or 404 `unknown service ID: <id>`.
        let id = decoded(id);
        return get_only(&|| match shared.lock().agent_services().get(&id) {
            Some(service) => {
                let mut service = service.clone();
                if let Some(map) = service.as_object_mut() {
                    map.remove("CreateIndex");
                    map.remove("ModifyIndex");
                    map.insert(
                        "ContentHash".into(),
                        Value::String(format!("{:016x}", id.len())),
                    );
                }
                json(&shared, &service)
            }
            None => text(StatusCode::NOT_FOUND, format!("unknown service ID: {id}")),
        });
    }
    if let Some(rest) = path.strip_prefix("/v1/agent/check/") {
        if method != Method::PUT {
            return not_allowed(&method, "OPTIONS,PUT");
        }
        return check_update(&shared, rest, &q, &body);
    }
    if path.starts_with("/v1/acl/") {
        return text(StatusCode::UNAUTHORIZED, "ACL support disabled");
    }
    if let Some(name) = path.strip_prefix("/v1/health/checks/") {
        let name = decoded(name);
        return get_only(&|| {
            let state = shared.lock();
            with_index(
                json(&shared, &state.health_checks(&name)),
                state.index_of_service(&name),
                Some(consistency(&q)),
            )
        });
    }
    if let Some(name) = path.strip_prefix("/v1/catalog/service/") {
        let name = decoded(name);
        return get_only(&|| {
            let state = shared.lock();
            with_index(
                json(&shared, &state.catalog_service(&name, param(&q, "tag"))),
                state.index_of_service(&name),
                Some(consistency(&q)),
            )
        });
    }
    match path.as_str() {
        "/v1/agent/service/register" => {
            if method != Method::PUT {
                return not_allowed(&method, "OPTIONS,PUT");
            }
            register(&shared, &body)
        }
        "/v1/agent/services" => get_only(&|| json(&shared, &shared.lock().agent_services())),
        "/v1/agent/checks" => get_only(&|| json(&shared, &shared.lock().agent_checks())),
        "/v1/agent/self" => get_only(&|| {
            let state = shared.lock();
            json(
                &shared,
                &serde_json::json!({
                    "Config": {
                        "Datacenter": state.datacenter, "NodeName": state.node_name,
                        "NodeID": state.node_id, "Revision": "", "Server": true,
                        "Version": "1.0.8",
                    }
                }),
            )
        }),
        "/v1/status/leader" => get_only(&|| json(&shared, &Value::String("127.0.0.1:8300".into()))),
        "/v1/status/peers" => get_only(&|| json(&shared, &serde_json::json!(["127.0.0.1:8300"]))),
        "/v1/catalog/services" => {
            if method != Method::GET {
                return not_allowed(&method, "OPTIONS,GET");
            }
            let blocking = match blocking(&q) {
                Ok(b) => b,
                Err(why) => return text(StatusCode::BAD_REQUEST, why),
            };
            if let Err(r) = block(&shared, blocking, |s| s.services_index).await {
                return r;
            }
            let state = shared.lock();
            with_index(
                json(&shared, &state.catalog_services()),
                state.services_index,
                Some(consistency(&q)),
            )
        }
        "/v1/health/service/" | "/v1/catalog/service/" | "/v1/health/checks/" => {
            text(StatusCode::BAD_REQUEST, "Missing service name")
        }
        _ => empty(StatusCode::NOT_FOUND),
    }
}

fn register(shared: &Arc<Shared>, body: &[u8]) -> Response {
    let def = match decode::registration(body) {
        Ok(def) => def,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let mut state = shared.lock();
    let ids = state.register(def);
    let index = state.index;
    drop(state);
    for id in ids {
        if let Some(runner) = checks::spawn_probe(shared, &id)
            && let Some(check) = shared.lock().checks.get_mut(&id)
        {
            check.runner = Some(runner);
        }
    }
    shared.notify(index);
    empty(StatusCode::OK)
}

fn deregister(shared: &Shared, id: &str) -> Response {
    if id.is_empty() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "ServiceID missing");
    }
    let mut state = shared.lock();
    if state.deregister(id) {
        let index = state.index;
        drop(state);
        shared.notify(index);
    }
    empty(StatusCode::OK)
}

fn check_update(shared: &Shared, rest: &str, q: &Query, body: &[u8]) -> Response {
    let (op, id) = rest.split_once('/').unwrap_or((rest, ""));
    let id = decoded(id);
    let no_ttl = || {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("CheckID \"{id}\" does not have associated TTL"),
        )
    };
    let note = param(q, "note").unwrap_or("").to_owned();
    let (status, output) = match op {
        "pass" => (Status::Passing, note),
        "warn" => (Status::Warning, note),
        "fail" => (Status::Critical, note),
        "update" => {
            let value: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return text(StatusCode::BAD_REQUEST, decode::json_error(body, &e)),
            };
            let status = value.get("Status").and_then(Value::as_str).unwrap_or("");
            let Some(status) = Status::parse(status) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid check status: '{status}'"),
                );
            };
            let output = value.get("Output").and_then(Value::as_str).unwrap_or("");
            (status, output.to_owned())
        }
        _ => return empty(StatusCode::NOT_FOUND),
    };
    let mut state = shared.lock();
    if !state.update_ttl(&id, status, output) {
        return no_ttl();
    }
    let index = state.index;
    drop(state);
    shared.notify(index);
    empty(StatusCode::OK)
}

async fn health_service(shared: &Shared, name: &str, q: &Query) -> Response {
    if name.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing service name");
    }
    let passing = match param(q, "passing").map(parse_bool) {
        None => false,
        Some(Some(p)) => p,
        Some(None) => return text(StatusCode::BAD_REQUEST, "Invalid value for ?passing"),
    };
    if let Some(dc) = param(q, "dc")
        && dc != shared.lock().datacenter
    {
        let mut r = text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
        let h = r.headers_mut();
        h.insert("X-Consul-Index", HeaderValue::from_static("0"));
        h.insert("X-Consul-Knownleader", HeaderValue::from_static("false"));
        h.insert("X-Consul-Lastcontact", HeaderValue::from_static("0"));
        return r;
    }
    let blocking = match blocking(q) {
        Ok(b) => b,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    if let Err(r) = block(shared, blocking, |s| s.index_of_service(name)).await {
        return r;
    }
    let state = shared.lock();
    let mut r = with_index(
        json(
            shared,
            &state.health_service(name, param(q, "tag"), passing),
        ),
        state.index_of_service(name),
        Some(consistency(q)),
    );
    drop(state);
    // 1.10 answers a blocking health query (index > 0) from its streaming backend, and a
    // `?cached` read from the agent's cache, which already holds the view.
    let streaming = param(q, "index").is_some_and(|i| i.parse::<u64>().is_ok_and(|i| i > 0));
    let h = r.headers_mut();
    h.insert(
        "X-Consul-Query-Backend",
        HeaderValue::from_static(if streaming {
            "streaming"
        } else {
            "blocking-query"
        }),
    );
    if param(q, "cached").is_some() {
        h.insert(
            "X-Cache",
            HeaderValue::from_static(if streaming { "MISS" } else { "HIT" }),
        );
        if !streaming {
            h.insert("Age", HeaderValue::from_static("0"));
        }
    }
    r
}

async fn kv(shared: &Shared, method: &Method, key: &str, q: &Query, body: Bytes) -> Response {
    match *method {
        Method::GET => {
            let blocking = match blocking(q) {
                Ok(b) => b,
                Err(why) => return text(StatusCode::BAD_REQUEST, why),
            };
            let recurse = param(q, "recurse").is_some();
            let keys = param(q, "keys").is_some();
            let index_of = |s: &Catalog| {
                if recurse || keys {
                    s.index_of_prefix(key)
                } else {
                    s.index_of_key(key)
                }
            };
            if let Err(r) = block(shared, blocking, index_of).await {
                return r;
            }
            let state = shared.lock();
            if recurse || keys {
                let matching: Vec<_> = state
                    .kv
                    .iter()
                    .filter(|(k, _)| k.starts_with(key))
                    .collect();
                let index = state.index_of_prefix(key);
                if matching.is_empty() {
                    return with_index(empty(StatusCode::NOT_FOUND), index, None);
                }
                let body: Value = if keys {
                    matching
                        .iter()
                        .map(|(k, _)| Value::String((*k).clone()))
                        .collect()
                } else {
                    matching.iter().map(|(k, e)| state.kv_json(k, e)).collect()
                };
                return with_index(json(shared, &body), index, None);
            }
            match state.kv.get(key) {
                None => with_index(empty(StatusCode::NOT_FOUND), state.index_of_key(key), None),
                Some(e) if param(q, "raw").is_some() => with_index(
                    response(
                        StatusCode::OK,
                        Some("text/plain; charset=utf-8"),
                        e.value.clone(),
                    ),
                    e.modify_index,
                    None,
                ),
                Some(e) => with_index(
                    json(shared, &Value::Array(vec![state.kv_json(key, e)])),
                    e.modify_index,
                    None,
                ),
            }
        }
        Method::PUT => {
            if key.is_empty() {
                return text(StatusCode::BAD_REQUEST, "Missing key name");
            }
            if body.len() > KV_MAX_VALUE {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("Value exceeds {KV_MAX_VALUE} byte limit"),
                );
            }
            let flags = param(q, "flags").and_then(|f| f.parse().ok()).unwrap_or(0);
            let cas = match param(q, "cas") {
                None => None,
                Some(c) => match c.parse::<u64>() {
                    Ok(c) => Some(c),
                    Err(_) => {
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("strconv.ParseUint: parsing {c:?}: invalid syntax"),
                        );
                    }
                },
            };
            let mut state = shared.lock();
            let ok = state.kv_put(key, body.to_vec(), flags, cas);
            let index = state.index;
            drop(state);
            shared.notify(index);
            json(shared, &Value::Bool(ok))
        }
        Method::DELETE => {
            let mut state = shared.lock();
            state.kv_delete(key, param(q, "recurse").is_some());
            let index = state.index;
            drop(state);
            shared.notify(index);
            json(shared, &Value::Bool(true))
        }
        _ => not_allowed(method, "OPTIONS,GET,PUT,DELETE"),
    }
}

/// Headers of Connect's cached agent reads (`X-Cache`) and of its blocking reads.
fn connect_headers(mut r: Response, index: Option<u64>, cache: Option<bool>) -> Response {
    let h = r.headers_mut();
    if let Some(index) = index {
        h.insert("X-Consul-Index", HeaderValue::from(index));
        h.insert("X-Consul-Knownleader", HeaderValue::from_static("false"));
        h.insert("X-Consul-Lastcontact", HeaderValue::from_static("0"));
        h.insert(
            "X-Consul-Query-Backend",
            HeaderValue::from_static("blocking-query"),
        );
    }
    if let Some(hit) = cache {
        h.insert(
            "X-Cache",
            HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
        );
    }
    r
}

/// Connect: CA roots and configuration, leaf certificates, authorize and intentions.
async fn connect(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    q: &Query,
    body: &[u8],
) -> Response {
    let blocking = match blocking(q) {
        Ok(b) => b,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let acl_off = shared.config.acl_master_token.is_none();
    if let Some(service) = path.strip_prefix("/v1/agent/connect/ca/leaf/") {
        if *method != Method::GET {
            return not_allowed(method, "OPTIONS,GET");
        }
        if service.is_empty() {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "URI must be either service or agent",
            );
        }
        let service = decoded(service);
        if let Err(r) = block(shared, blocking, |_| shared.connect().leaf_index(&service)).await {
            return r;
        }
        return match shared.connect().leaf(&service) {
            Ok((leaf, index, hit)) => {
                let mut r =
                    connect_headers(json(shared, &leaf), None, Some(hit && blocking.is_none()));
                r.headers_mut()
                    .insert("X-Consul-Index", HeaderValue::from(index));
                r
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    }
    match path {
        "/v1/agent/connect/ca/roots" | "/v1/connect/ca/roots" => {
            if *method != Method::GET {
                return not_allowed(method, "OPTIONS,GET");
            }
            if let Err(r) = block(shared, blocking, |_| shared.connect().roots_index()).await {
                return r;
            }
            let ca = shared.connect();
            let agent = path.starts_with("/v1/agent/");
            let answer = if param(q, "pem").and_then(parse_bool) == Some(true) {
                response(
                    StatusCode::OK,
                    Some("application/pem-certificate-chain"),
                    ca.roots_pem().into_bytes(),
                )
            } else {
                json(shared, &ca.roots_json())
            };
            connect_headers(answer, Some(ca.roots_index()), agent.then_some(true))
        }
        "/v1/connect/ca/configuration" => match *method {
            Method::GET => json(shared, &shared.connect().configuration_json()),
            Method::PUT => {
                let key = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.pointer("/Config/PrivateKey")?.as_str().map(str::to_owned));
                let rotated = shared.connect().configure(key.as_deref());
                match rotated {
                    Ok(true) => {
                        shared.wake();
                        crate::connect::renew_later(shared, shared.config.leaf_renew_jitter);
                        empty(StatusCode::OK)
                    }
                    Ok(false) => empty(StatusCode::OK),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            _ => not_allowed(method, "GET,OPTIONS,PUT"),
        },
        "/v1/agent/connect/authorize" => {
            if *method != Method::POST {
                return not_allowed(method, "OPTIONS,POST");
            }
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields, rename_all = "PascalCase")]
            struct Authorize {
                #[serde(default)]
                target: String,
                #[serde(default, rename = "ClientCertURI")]
                client_cert_uri: String,
                #[serde(default)]
                #[allow(dead_code)]
                client_cert_serial: String,
            }
            let request: Authorize = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(_) if body.is_empty() => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "Bad request: Request decode failed: EOF",
                    );
                }
                Err(e) => {
                    let why = e.to_string();
                    let why = why
                        .split(" at line")
                        .next()
                        .unwrap_or(&why)
                        .replace('`', "\"");
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("Bad request: Request decode failed: json: {why}"),
                    );
                }
            };
            if request.target.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Bad request: Target service must be specified",
                );
            }
            match crate::connect::service_of(&request.client_cert_uri) {
                Ok(source) => connect_headers(
                    json(
                        shared,
                        &shared.connect().authorize(source, &request.target, acl_off),
                    ),
                    None,
                    Some(true),
                ),
                Err(why) => text(StatusCode::BAD_REQUEST, format!("Bad request: {why}")),
            }
        }
        "/v1/connect/intentions" => {
            if *method != Method::GET {
                return not_allowed(method, "OPTIONS,GET");
            }
            if let Err(r) = block(shared, blocking, |_| shared.connect().intentions_index()).await {
                return r;
            }
            let ca = shared.connect();
            connect_headers(
                json(shared, &ca.intentions_json()),
                Some(ca.intentions_index()),
                None,
            )
        }
        "/v1/connect/intentions/check" => {
            if *method != Method::GET {
                return not_allowed(method, "OPTIONS,GET");
            }
            let (Some(source), Some(destination)) = (param(q, "source"), param(q, "destination"))
            else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "required query parameter 'source' not set",
                );
            };
            json(
                shared,
                &serde_json::json!({
                    "Allowed": shared.connect().check(source, destination, acl_off)
                }),
            )
        }
        "/v1/connect/intentions/exact" => {
            let (Some(source), Some(destination)) = (param(q, "source"), param(q, "destination"))
            else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "required query parameter 'source' not set",
                );
            };
            match *method {
                Method::GET => match shared.connect().intention(source, destination) {
                    Some(i) => json(shared, &i),
                    None => text(StatusCode::NOT_FOUND, "Intention not found"),
                },
                Method::PUT => {
                    let action = serde_json::from_slice::<Value>(body)
                        .ok()
                        .and_then(|v| v.get("Action")?.as_str().map(str::to_owned));
                    let put =
                        shared
                            .connect()
                            .put_intention(source, destination, action.as_deref());
                    match put {
                        Ok(()) => {
                            shared.wake();
                            json(shared, &Value::Bool(true))
                        }
                        Err(why) => text(StatusCode::INTERNAL_SERVER_ERROR, why),
                    }
                }
                Method::DELETE => {
                    shared.connect().delete_intention(source, destination);
                    shared.wake();
                    json(shared, &Value::Bool(true))
                }
                _ => not_allowed(method, "DELETE,GET,OPTIONS,PUT"),
            }
        }
        _ => empty(StatusCode::NOT_FOUND),
    }
}
