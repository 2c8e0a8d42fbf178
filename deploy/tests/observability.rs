//! The observability files of `deploy/` against the binaries: the Grafana dashboard queries
//! only metrics the tiers expose, Prometheus finds every tier through Consul (user-srv by the
//! meta key it registers), and the compose stack sends both tiers' traces to its collector.

use std::{collections::BTreeSet, path::PathBuf};

use kit::{
    grpc::METRICS_PORT_META,
    health::Health,
    http::{HttpMetrics, throttle::Throttle},
    rpc_metrics::RpcMetrics,
};
use serde_yaml_ng::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The sample names in Prometheus text, from its `# TYPE` lines (a counter `x` is sampled
/// as `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`).
fn sample_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            out.insert(format!("{}{suffix}", name.trim_end_matches("_total")));
        }
    }
    out
}

/// Every metric either tier exposes: user-web's /metrics (with its throttle counters) and
/// user-srv's admin port.
fn exposed() -> BTreeSet<String> {
    let web = HttpMetrics::new();
    let _throttle = Throttle::new(&web, 1);
    let mut names = sample_names(&web.render());
    names.extend(sample_names(&RpcMetrics::new().render(
        &Health::new(),
        &kit::admission::Admission::new(kit::overload::Limiter::new(&Default::default())),
        None,
    )));
    names
}

/// Identifiers in a PromQL expression that name metrics: outside quotes, with an `_`, and
/// not a function.
fn metrics_in(expr: &str) -> Vec<String> {
    const FUNCTIONS: &[&str] = &["histogram_quantile", "label_replace", "count_over_time"];
    let mut out = Vec::new();
    let mut quoted = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.contains('_') && !FUNCTIONS.contains(&word.as_str()) {
            out.push(word.clone());
        }
        word.clear();
    }
    out
}

#[test]
fn the_dashboard_queries_only_metrics_the_tiers_expose() {
    let exposed = exposed();
    assert!(
        exposed.contains("http_requests_total") && exposed.contains("rpc_requests_total"),
        "{exposed:?}"
    );
    let path = "observability/grafana/dashboards/golden-signals.json";
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 8,
        "rate, errors, latency and saturation of both tiers"
    );
    let mut used = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let names = metrics_in(expr);
            assert!(!names.is_empty(), "no metric in {expr}");
            for name in names {
                assert!(
                    exposed.contains(&name),
                    "{name} (in {expr}) is exposed by no tier"
                );
                used.insert(name);
            }
        }
    }
    for signal in [
        "http_request_duration_seconds_bucket",
        "rpc_duration_seconds_bucket",
        "db_pool_connections",
    ] {
        assert!(used.contains(signal), "the dashboard does not use {signal}");
    }
}

#[test]
fn the_check_catches_a_metric_no_tier_exposes() {
    let names = metrics_in(
        r#"sum(rate(http_requests_totl{route="/a_b"}[1m])) / histogram_quantile(0.9, x)"#,
    );
    assert_eq!(names, ["http_requests_totl"]);
    assert!(!exposed().contains("http_requests_totl"));
}

#[test]
fn prometheus_finds_every_tier_through_consul() {
    let config = yaml("observability/prometheus.yml");
    let jobs = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job_name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name} job"))
    };
    for tier in ["user-web", "user-srv"] {
        let sd = &job(tier)["consul_sd_configs"][0];
        assert_eq!(sd["server"].as_str(), Some("consul:8500"));
        assert_eq!(sd["services"][0].as_str(), Some(tier));
    }
    let relabel = serde_yaml_ng::to_string(&job("user-srv")["relabel_configs"]).expect("yaml");
    assert!(
        relabel.contains(&format!(
            "__meta_consul_service_metadata_{METRICS_PORT_META}"
        )),
        "user-srv's admin port is its `{METRICS_PORT_META}` meta: {relabel}"
    );
}

#[test]
fn the_compose_stack_sends_traces_to_its_collector_and_mounts_files_that_exist() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    for tier in ["user-srv", "user-web"] {
        assert_eq!(
            services[tier]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(),
            Some("http://otel-collector:4317"),
            "{tier}"
        );
    }
    let collector = yaml("observability/otel-collector.yaml");
    assert_eq!(
        collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].as_str(),
        Some("0.0.0.0:4317")
    );
    let pipeline = &collector["service"]["pipelines"]["traces"];
    assert_eq!(pipeline["receivers"][0].as_str(), Some("otlp"));
    for exporter in pipeline["exporters"].as_sequence().expect("exporters") {
        let name = exporter.as_str().expect("name");
        assert!(
            !collector["exporters"][name].is_null(),
            "exporter {name} is not defined"
        );
    }
    for name in ["otel-collector", "prometheus", "grafana", "jaeger"] {
        let service = &services[name];
        assert!(!service.is_null(), "no {name} service");
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .expect("volume");
            assert!(
                deploy(source).exists(),
                "{name} mounts {source}, which is missing"
            );
        }
    }
}
