//! Contract tests: the recorded exchanges with a real Consul 1.0.8 agent (tests/transcripts,
//! see its README) replayed in order against a fresh double. Status codes, the headers that
//! carry meaning, plain-text bodies and JSON shapes must match.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use consul_double::{ConsulDouble, DoubleConfig};
use serde_json::Value;

/// Exchanges left out of the replay, each with its reason.
fn skip_reason(exchange: &Value) -> Option<&'static str> {
    let request = &exchange["request"];
    let path = request["path"].as_str().unwrap_or("");
    let headers = &request["headers"];
    if exchange["response"].is_null() {
        return Some("the recording has no response (client gave up or connection refused)");
    }
    if exchange["label"]
        .as_str()
        .is_some_and(|l| l.ends_with("not-in-1.0.8"))
    {
        return Some(
            "an endpoint 1.0.8 lacks and the double answers as 1.10 does (v1.10/README.md)",
        );
    }

    if headers.get("Accept-Encoding").and_then(Value::as_str) == Some("gzip") {
        return Some("gzip responses are not implemented by the double");
    }
    if path.contains("index=") || path.contains("wait=") {
        return Some("blocking queries are timed: covered by the blocking tests");
    }
    if [
        "since_pass_s",
        "since_register_s",
        "since_stop_s",
        "since_restart_s",
        "since_last_event_s",
    ]
    .iter()
    .any(|k| exchange.get(*k).is_some())
    {
        return Some("a polled timeline: covered by the check timing tests");
    }
    if path.contains("near=") {
        return Some("?near sorting is not implemented");
    }
    if path.starts_with("/v1/health/state") || path == "/v1/health/checks" {
        return Some("endpoint not used by the project");
    }
    None
}

/// Removes the fields only newer agents send.
fn strip_newer_fields(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for newer in [
                "Weights",
                "ServiceWeights",
                "Proxy",
                "Connect",
                "Type",
                "Interval",
                "Timeout",
                "ExposedPort",
                "lan_ipv4",
                "wan_ipv4",
            ] {
                map.remove(newer);
            }
            // 1.10 adds a service's own tagged addresses (objects); a node's are strings.
            if map
                .get("TaggedAddresses")
                .and_then(Value::as_object)
                .is_some_and(|t| t.values().any(Value::is_object))
            {
                map.remove("TaggedAddresses");
            }
            map.values_mut().for_each(strip_newer_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_newer_fields),
        _ => {}
    }
}

/// A JSON value's shape: object keys, array element shapes (order-free), scalar types.
fn shape(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(items) => {
            let mut shapes: Vec<String> = items.iter().map(shape).collect();
            shapes.sort();
            format!("[{}]", shapes.join(","))
        }
        Value::Object(map) => {
            let fields: BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, shape(v))).collect();
            let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", parts.join(","))
        }
    }
}

/// Whether the recorder trimmed this body beyond what a comparison can use (its note says so).
fn body_trimmed(exchange: &Value) -> bool {
    let note = exchange["note"].as_str().unwrap_or("").to_lowercase();
    ["heavily trimmed", "truncated"]
        .iter()
        .any(|w| note.contains(w))
}

/// Exchanges whose recorded body depends on a live check target the replay cannot have (a
/// gRPC health server on the recorded port made instance A pass): status and headers are
/// still compared, the body is not.
const LIVE_TARGET_BODIES: [&str; 5] = [
    "04-catalog-health-queries.json#12",
    "04-catalog-health-queries.json#13",
    "04-catalog-health-queries.json#14",
    "04-catalog-health-queries.json#19",
    "04-catalog-health-queries.json#21",
];

/// The IDs a body lists: object keys (agent views) or each entry's service ID.
fn ids(v: &Value) -> Option<Vec<String>> {
    let mut ids: Vec<String> = match v {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => items
            .iter()
            .map(|e| {
                e.get("Service")
                    .and_then(|s| s.get("ID"))
                    .or_else(|| e.get("ServiceID"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    ids.sort();
    Some(ids)
}

/// Compares a body with its recording. The recorder sometimes reduced a body to its list of
/// IDs, or filtered an agent view to the services of interest: both are compared as such.
fn compare_body(got: &Value, recorded: &Value) -> Result<(), String> {
    // The double answers with the fields a 1.10 agent adds (weights); a 1.0.8 recording
    // has none of them, and is compared without them.
    let mut got = got.clone();
    if !recorded.to_string().contains("Weights") {
        strip_newer_fields(&mut got);
    }
    let got = &got;
    let recorded_is_id_list = matches!(recorded, Value::Array(items)
        if !items.is_empty() && items.iter().all(Value::is_string));
    if recorded_is_id_list
        && !matches!(got, Value::Array(items) if items.iter().all(Value::is_string))
    {
        let mut want: Vec<String> = recorded
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        want.sort();
        return match ids(got) {
            Some(got) if got == want => Ok(()),
            other => Err(format!("IDs {other:?}, recorded (as IDs) {want:?}")),
        };
    }
    if let (Value::Object(g), Value::Object(r)) = (got, recorded)
        && r.keys().all(|k| g.contains_key(k))
        && r.iter().all(|(k, v)| shape(&g[k]) == shape(v))
    {
        // Equal, or the recording is the filtered subset of the same view.
        return Ok(());
    }
    if shape(got) == shape(recorded) {
        Ok(())
    } else {
        Err(format!(
            "JSON shape differs\n  got      {}\n  recorded {}",
            shape(got),
            shape(recorded)
        ))
    }
}

const MEANINGFUL_HEADERS: [&str; 6] = [
    "Content-Type",
    "X-Consul-Index",
    "X-Consul-Knownleader",
    "X-Consul-Lastcontact",
    "X-Consul-Effective-Consistency",
    "Allow",
];

async fn replay(file: &str) -> (usize, Vec<String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/transcripts")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("transcript");
    let exchanges: Vec<Value> = serde_json::from_str(&text).expect("transcript JSON");
    let double = ConsulDouble::start(DoubleConfig::default())
        .await
        .expect("double");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for (i, ex) in exchanges.iter().enumerate() {
        if ex.get("request").is_none() || skip_reason(ex).is_some() {
            continue;
        }
        let req = &ex["request"];
        let label = format!(
            "{file}#{i} {} {} {}",
            ex["label"].as_str().unwrap_or(""),
            req["method"].as_str().unwrap_or(""),
            req["path"].as_str().unwrap_or("")
        );
        let method: reqwest::Method = req["method"]
            .as_str()
            .unwrap_or("GET")
            .parse()
            .expect("method");
        let url = format!("{}{}", double.url(), req["path"].as_str().unwrap_or("/"));
        let mut builder = http.request(method, url);
        if let Some(headers) = req["headers"].as_object() {
            for (k, v) in headers {
                builder = builder.header(k, v.as_str().unwrap_or(""));
            }
        }
        builder = match &req["body"] {
            Value::Null => builder,
            Value::String(s)
                if s.starts_with('<') && s.ends_with('>') && s.contains("bytes of") =>
            {
                builder.body(vec![b'x'; 524_289])
            }
            Value::String(s) => builder.body(s.clone()),
            // 1.0.8 ignored an unknown field; 1.10, and so the double, refuses it: the
            // replay sends the registration without it (and expects 1.0.8's 200).
            Value::Object(body) if ex["label"] == "register-unknown-field" => {
                let mut body = body.clone();
                body.remove("Foo");
                builder.body(Value::Object(body).to_string())
            }
            other => builder.body(other.to_string()),
        };
        let response = builder.send().await.expect("the double answers");
        let want = &ex["response"];
        compared += 1;
        let status = response.status().as_u16();
        if Some(u64::from(status)) != want["status"].as_u64() {
            mismatches.push(format!(
                "{label}: status {status}, recorded {}",
                want["status"]
            ));
        }
        for name in MEANINGFUL_HEADERS {
            let got = response.headers().get(name).and_then(|v| v.to_str().ok());
            let recorded = want["headers"].get(name).and_then(Value::as_str);
            let same = match name {
                // Index values are per-run Raft indexes: presence is the contract.
                "X-Consul-Index" => got.is_some() == recorded.is_some(),
                _ => got == recorded,
            };
            if !same {
                mismatches.push(format!(
                    "{label}: header {name} = {got:?}, recorded {recorded:?}"
                ));
            }
        }
        let body = response.text().await.expect("body");
        if let Some(recorded) = want.get("body_text").and_then(Value::as_str)
            && want.get("body").is_none()
        {
            if body != recorded {
                mismatches.push(format!("{label}: body {body:?}, recorded {recorded:?}"));
            }
        } else if let Some(recorded) = want.get("body")
            && !body_trimmed(ex)
            && !LIVE_TARGET_BODIES.contains(&format!("{file}#{i}").as_str())
        {
            match serde_json::from_str::<Value>(&body) {
                Ok(got) => {
                    if let Err(why) = compare_body(&got, recorded) {
                        mismatches.push(format!("{label}: {why}"));
                    }
                }
                Err(_) => mismatches.push(format!("{label}: body is not JSON: {body:?}")),
            }
        }
    }
    double.stop().await;
    (compared, mismatches)
}

macro_rules! contract {
    ($($name:ident => $file:literal),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (compared, mismatches) = replay($file).await;
            assert!(compared >= 5, "too few exchanges replayed from {}: {compared}", $file);
            assert!(mismatches.is_empty(), "{} of {compared} exchanges differ:\n{}", mismatches.len(), mismatches.join("\n"));
        }
    )*};
}

contract!(
    status_endpoints => "01-status.json",
    registration_and_errors => "02-register.json",
    catalog_and_health_queries => "04-catalog-health-queries.json",
    ttl_updates_and_deregistration => "06-deregister-and-ttl.json",
    key_value_store => "08-kv.json",
    tokens_without_acls => "09-acl-token.json",
);
