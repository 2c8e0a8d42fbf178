//! Decodes a service registration the way Consul does: keys match case-insensitively (and
//! snake_case works), durations are Go strings or nanoseconds, and every failure carries the
//! agent's recorded error text. Unknown fields are refused, as Consul 1.10 does (1.0.8
//! ignored them): a client that misspells a field finds out here, not on a real agent.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Map, Value};

use crate::{
    duration,
    state::{CheckDef, Probe, ServiceDef, Status},
};

/// Consul's own default for gRPC/HTTP/TCP check timeouts.
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

fn norm(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Looks `key` up the way Go's case-insensitive JSON decoding (plus Consul's snake_case
/// fix-ups) does.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let want = norm(key);
    obj.iter().find(|(k, _)| norm(k) == want).map(|(_, v)| v)
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// Go's `encoding/json` wording for the syntax errors the transcripts show.
pub fn json_error(body: &[u8], e: &serde_json::Error) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return "Request decode failed: EOF".into();
    }
    if e.is_eof() {
        return "Request decode failed: unexpected EOF".into();
    }
    let offending = String::from_utf8_lossy(body)
        .lines()
        .nth(e.line().saturating_sub(1))
        .and_then(|l| l.chars().nth(e.column().saturating_sub(1)))
        .unwrap_or('?');
    let looking_for = if e.to_string().starts_with("key must be a string") {
        "beginning of object key string"
    } else {
        "beginning of value"
    };
    format!("Request decode failed: invalid character '{offending}' looking for {looking_for}")
}

fn duration_field(obj: &Map<String, Value>, key: &str) -> Result<Option<Duration>, String> {
    match get(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => duration::parse(s)
            .map(|d| Some(d.or_zero()))
            .map_err(|e| format!("Request decode failed: invalid \"{key}\": {e}")),
        Some(Value::Number(n)) => Ok(Some(Duration::from_nanos(
            n.as_f64().unwrap_or(0.0).max(0.0) as u64,
        ))),
        Some(other) => Err(format!(
            "Request decode failed: invalid \"{key}\": json: cannot unmarshal {} into duration",
            go_type(other)
        )),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str, errors: &mut Vec<String>) -> String {
    match get(obj, key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            errors.push(format!(
                "'{key}' expected type 'string', got unconvertible type '{}'",
                go_type(other)
            ));
            String::new()
        }
    }
}

/// Everything the service registration can say about one check.
struct RawCheck<'a> {
    obj: &'a Map<String, Value>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    ttl: Option<Duration>,
    dcsa: Option<Duration>,
}

fn raw_check(obj: &Map<String, Value>) -> Result<RawCheck<'_>, String> {
    Ok(RawCheck {
        obj,
        interval: duration_field(obj, "Interval")?,
        timeout: duration_field(obj, "Timeout")?,
        ttl: duration_field(obj, "TTL")?,
        dcsa: duration_field(obj, "DeregisterCriticalServiceAfter")?,
    })
}

fn check_def(raw: &RawCheck<'_>, errors: &mut Vec<String>) -> Result<CheckDef, String> {
    let o = raw.obj;
    let status = match get(o, "Status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(
            Status::parse(s).ok_or("Status for checks must 'passing', 'warning', 'critical'")?,
        ),
        Some(_) => return Err("Status for checks must 'passing', 'warning', 'critical'".into()),
    };
    let grpc = string_field(o, "GRPC", errors);
    let http = string_field(o, "HTTP", errors);
    let tcp = string_field(o, "TCP", errors);
    let tls = matches!(get(o, "GRPCUseTLS"), Some(Value::Bool(true)));
    let interval = raw.interval.unwrap_or(Duration::ZERO);
    let probe = if let Some(ttl) = raw.ttl.filter(|t| !t.is_zero()) {
        if !interval.is_zero() {
            return Err("Invalid check: Interval and TTL cannot both be specified".into());
        }
        let _ = ttl;
        Probe::Ttl
    } else if !grpc.is_empty() || !http.is_empty() || !tcp.is_empty() {
        if interval.is_zero() {
            return Err(
                "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks".into(),
            );
        }
        if !grpc.is_empty() {
            Probe::Grpc { target: grpc, tls }
        } else if !http.is_empty() {
            Probe::Http { url: http }
        } else {
            Probe::Tcp { addr: tcp }
        }
    } else {
        return Err("Invalid check: TTL must be > 0 for TTL checks".into());
    };
    let check_id = string_field(o, "CheckID", errors);
    let name = string_field(o, "Name", errors);
    Ok(CheckDef {
        check_id: (!check_id.is_empty()).then_some(check_id),
        name: (!name.is_empty()).then_some(name),
        notes: string_field(o, "Notes", errors),
        status,
        probe,
        interval,
        timeout: raw
            .timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_CHECK_TIMEOUT),
        ttl: raw.ttl.filter(|t| !t.is_zero()),
        deregister_critical_after: raw.dcsa.filter(|d| !d.is_zero()),
    })
}

fn valid_meta_key(key: &str) -> Result<(), &'static str> {
    if key.starts_with("consul-") {
        return Err("Key prefix 'consul-' is reserved for internal use");
    }
    if key.is_empty()
        || key.len() > 128
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("Key contains invalid characters");
    }
    Ok(())
}

/// The fields Consul 1.10 knows in a registration, a check and `Weights` (normalised).
const SERVICE_FIELDS: &[&str] = &[
    "kind",
    "id",
    "name",
    "tags",
    "port",
    "address",
    "socketpath",
    "taggedaddresses",
    "enabletagoverride",
    "meta",
    "weights",
    "check",
    "checks",
    "proxy",
    "connect",
    "namespace",
];
const CHECK_FIELDS: &[&str] = &[
    "checkid",
    "id",
    "name",
    "notes",
    "status",
    "serviceid",
    "scriptargs",
    "args",
    "dockercontainerid",
    "shell",
    "interval",
    "timeout",
    "ttl",
    "http",
    "header",
    "method",
    "body",
    "tcp",
    "grpc",
    "grpcusetls",
    "tlsservername",
    "tlsskipverify",
    "h2ping",
    "h2pingusetls",
    "aliasnode",
    "aliasservice",
    "deregistercriticalserviceafter",
    "outputmaxsize",
    "successbeforepassing",
    "failuresbeforecritical",
    "type",
    "definition",
    "namespace",
];
const WEIGHTS_FIELDS: &[&str] = &["passing", "warning"];

/// 1.10's `json: unknown field` refusal for the first key of `obj` not in `known`.
fn unknown_field(obj: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&norm(k).as_str())) {
        Some(key) => Err(format!(
            "Request decode failed: json: unknown field {key:?}"
        )),
        None => Ok(()),
    }
}

/// The registration in `body`, or the 400 text Consul answers with.
pub fn registration(body: &[u8]) -> Result<ServiceDef, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| json_error(body, &e))?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "Request decode failed: json: cannot unmarshal {} into Go value of type structs.ServiceDefinition",
            go_type(&value)
        ));
    };
    unknown_field(&obj, SERVICE_FIELDS)?;
    if let Some(Value::Object(check)) = get(&obj, "Check") {
        unknown_field(check, CHECK_FIELDS)?;
    }
    if let Some(Value::Array(checks)) = get(&obj, "Checks") {
        for check in checks.iter().filter_map(Value::as_object) {
            unknown_field(check, CHECK_FIELDS)?;
        }
    }
    if let Some(Value::Object(weights)) = get(&obj, "Weights") {
        unknown_field(weights, WEIGHTS_FIELDS)?;
    }

    // Durations are fixed up (and fail) before the structural decode, as in Consul.
    let mut raw_checks = Vec::new();
    if let Some(Value::Object(check)) = get(&obj, "Check")
        && !check.is_empty()
    {
        raw_checks.push(raw_check(check)?);
    }
    if let Some(Value::Array(checks)) = get(&obj, "Checks") {
        for check in checks {
            if let Value::Object(check) = check {
                raw_checks.push(raw_check(check)?);
            }
        }
    }

    let mut errors = Vec::new();
    let name = string_field(&obj, "Name", &mut errors);
    let id = string_field(&obj, "ID", &mut errors);
    let address = string_field(&obj, "Address", &mut errors);
    let port = match get(&obj, "Port") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(0),
        Some(other) => {
            errors.push(format!(
                "'Port' expected type 'int', got unconvertible type '{}'",
                go_type(other)
            ));
            0
        }
    };
    let tags = match get(&obj, "Tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                Value::String(s) => Some(s.clone()),
                other => {
                    errors.push(format!(
                        "'Tags[{i}]' expected type 'string', got unconvertible type '{}'",
                        go_type(other)
                    ));
                    None
                }
            })
            .collect(),
        Some(other) => {
            errors.push(format!(
                "'Tags': source data must be an array or slice, got {}",
                go_type(other)
            ));
            Vec::new()
        }
    };
    let meta = match get(&obj, "Meta") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(
            m.iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.clone(), s.clone())),
                    other => {
                        errors.push(format!(
                            "'Meta[{k}]' expected type 'string', got unconvertible type '{}'",
                            go_type(other)
                        ));
                        None
                    }
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        Some(other) => {
            errors.push(format!(
                "'Meta' expected a map, got '{}'",
                go_type(other).trim_start_matches("[]")
            ));
            None
        }
    };
    let weights = weights(get(&obj, "Weights"))?;
    let enable_tag_override = matches!(get(&obj, "EnableTagOverride"), Some(Value::Bool(true)));
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| format!("* {e}")).collect();
        return Err(format!(
            "Request decode failed: {} error(s) decoding:\n\n{}",
            errors.len(),
            list.join("\n")
        ));
    }
    if name.is_empty() {
        return Err("Missing service name".into());
    }
    if let Some(meta) = &meta {
        for (k, v) in meta {
            valid_meta_key(k).map_err(|why| {
                format!("Invalid Service Meta: Couldn't load metadata pair ('{k}', '{v}'): {why}")
            })?;
        }
    }
    let mut check_errors = Vec::new();
    let checks = raw_checks
        .iter()
        .map(|raw| check_def(raw, &mut check_errors))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServiceDef {
        id: if id.is_empty() { name.clone() } else { id },
        name,
        tags,
        address,
        port,
        meta,
        weights,
        enable_tag_override,
        checks,
    })
}

/// `Weights` as Consul 1.10 takes it: absent or null is `{1, 1}`, an omitted `Warning` is 0
/// (not 1), and the recorded 400 texts for the rest.
fn weights(value: Option<&Value>) -> Result<(i64, i64), String> {
    let obj = match value {
        None | Some(Value::Null) => return Ok((1, 1)),
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(format!(
                "Request decode failed: json: cannot unmarshal {} into Go struct field .Weights of type api.AgentWeights",
                go_type(other)
            ));
        }
    };
    let number = |key: &str| -> Result<i64, String> {
        match get(obj, key) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or(0)),
            Some(other) => Err(format!(
                "Request decode failed: json: cannot unmarshal {} into Go struct field AgentWeights.Weights.{key} of type int",
                match other {
                    Value::Number(_) => "number",
                    other => go_type(other),
                }
            )),
        }
    };
    let (passing, warning) = (number("Passing")?, number("Warning")?);
    if passing <= 0 {
        return Err("Invalid Weights: Passing must be greater than 0".into());
    }
    if warning < 0 {
        return Err("Invalid Weights: Warning must be greater or equal than 0".into());
    }
    if passing > 65535 || warning > 65535 {
        return Err("Invalid Weights: DNS Weight must be between 0 and 65535".into());
    }
    Ok((passing, warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_keys_default_id_and_numeric_durations() {
        let def = registration(
            br#"{"name":"lower-srv","port":1,"check":{"ttl":"10s","deregister_critical_service_after":"1m"}}"#,
        )
        .expect("valid");
        assert_eq!((def.id.as_str(), def.port), ("lower-srv", 1));
        assert_eq!(def.checks[0].ttl, Some(Duration::from_secs(10)));
        assert_eq!(
            def.checks[0].deregister_critical_after,
            Some(Duration::from_secs(60))
        );
        let def =
            registration(br#"{"ID":"n","Name":"n","Check":{"TTL":15000000000}}"#).expect("valid");
        assert_eq!(def.checks[0].ttl, Some(Duration::from_secs(15)));
        let def = registration(br#"{"ID":"e","Name":"e","Check":{}}"#).expect("valid");
        assert!(def.checks.is_empty(), "an empty Check is ignored");
    }

    #[test]
    fn errors_use_the_recorded_texts() {
        let err = |b: &[u8]| registration(b).expect_err("invalid");
        assert_eq!(err(b""), "Request decode failed: EOF");
        assert_eq!(
            err(br#"{"ID":"x1","Name":"user-srv","#),
            "Request decode failed: unexpected EOF"
        );
        assert_eq!(err(br#"{"ID":"x1"}"#), "Missing service name");
        assert_eq!(
            err(br#"{"ID":"x1","Name":"u","Port":"50051"}"#),
            "Request decode failed: 1 error(s) decoding:\n\n* 'Port' expected type 'int', got unconvertible type 'string'"
        );
        assert_eq!(
            err(br#"{"Name":"u","Check":{"GRPC":"127.0.0.1:1","Interval":"1 sec"}}"#),
            r#"Request decode failed: invalid "Interval": time: unknown unit " sec" in duration "1 sec""#
        );
        assert_eq!(
            err(br#"{"Name":"u","Check":{"GRPC":"127.0.0.1:1"}}"#),
            "Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks"
        );
        assert_eq!(
            err(br#"{"Name":"u","Meta":{"consul-version":"1"}}"#),
            "Invalid Service Meta: Couldn't load metadata pair ('consul-version', '1'): Key prefix 'consul-' is reserved for internal use"
        );
    }

    #[test]
    fn unknown_fields_are_refused_as_1_10_does() {
        let err = |b: &[u8]| registration(b).expect_err("refused");
        for body in [
            br#"{"Name":"u","Bogus":1}"#.as_slice(),
            br#"{"Name":"u","Check":{"TTL":"30s","Bogus":1}}"#,
            br#"{"Name":"u","Weights":{"Passing":2,"Bogus":1}}"#,
        ] {
            assert_eq!(
                err(body),
                "Request decode failed: json: unknown field \"Bogus\""
            );
        }
        // Case and snake_case variants of known fields are still fine.
        let def = registration(
            br#"{"name":"u","enable_tag_override":true,"check":{"ttl":"30s","deregister_critical_service_after":"90s"}}"#,
        )
        .expect("accepted");
        assert!(def.enable_tag_override);
    }
}
