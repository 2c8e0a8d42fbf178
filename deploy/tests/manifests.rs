//! The deployment files parse, and every environment variable they set for a service binary
//! is one that binary reads (a typo such as `USER_SRV__SERVR__PORT` would otherwise be
//! ignored silently and the default used). Every file under `k8s/`, the compose file and
//! every target of `Dockerfile` are checked; `make new-service` adds its binaries to
//! [`BINARIES`].

use std::{collections::BTreeSet, path::PathBuf};

use kit::config::ServiceSettings;
use serde_yaml_ng::Value;

/// What a binary's settings say it reads (`Settings::env_names`).
type EnvNames = fn() -> Vec<String>;

/// Every service binary, and the environment variables it reads.
const BINARIES: &[(&str, EnvNames)] = &[
    ("user-srv", user_srv::Settings::env_names),
    ("user-web", user_web::Settings::env_names),
    // new-service: binaries
];

/// A service binary, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Binary(&'static str);

impl Binary {
    fn known(self) -> Vec<String> {
        BINARIES
            .iter()
            .find(|(name, _)| *name == self.0)
            .map(|(_, names)| names())
            .unwrap_or_default()
    }

    /// Which binary an image or Dockerfile name is about (the longest name it contains).
    fn of(name: &str) -> Option<Self> {
        BINARIES
            .iter()
            .map(|(binary, _)| *binary)
            .filter(|binary| name.contains(binary))
            .max_by_key(|binary| binary.len())
            .map(Self)
    }
}

/// The files of `dir` (relative to deploy/) whose names end in `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(deploy_dir().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(suffix))
        .map(|name| {
            if dir == "." {
                name
            } else {
                format!("{dir}/{name}")
            }
        })
        .collect();
    out.sort();
    out
}

/// One environment variable set for one binary, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Setting {
    binary: Binary,
    name: String,
    place: String,
}

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{path} does not parse: {e}"));
            if let Err(e) = Value::apply_merge(&mut value) {
                panic!("{path}: bad merge key: {e}");
            }
            value
        })
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `$(NAME)` references inside env values: those names only feed other values.
fn referenced(values: &[String]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| {
            v.split("$(")
                .skip(1)
                .filter_map(|r| r.split_once(')').map(|(n, _)| n.to_owned()))
        })
        .collect()
}

fn kubernetes(path: &str, out: &mut Vec<Setting>) {
    let docs = documents(path);
    assert!(!docs.is_empty(), "{path} is empty");
    let mut config_maps = Vec::new();
    for doc in ["k8s/configmap.yaml"].iter().flat_map(|p| documents(p)) {
        if str_of(&doc, "kind") == Some("ConfigMap") {
            config_maps.push(doc);
        }
    }
    for doc in &docs {
        let containers = doc
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_sequence);
        for container in containers.into_iter().flatten() {
            let Some(binary) = str_of(container, "image").and_then(Binary::of) else {
                continue;
            };
            let env = container
                .get("env")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            let values: Vec<String> = env
                .iter()
                .filter_map(|e| str_of(e, "value").map(str::to_owned))
                .collect();
            let helpers = referenced(&values);
            for e in &env {
                let name = str_of(e, "name")
                    .expect("env entries have a name")
                    .to_owned();
                if !helpers.contains(&name) {
                    out.push(Setting {
                        binary,
                        name,
                        place: format!("{path} env"),
                    });
                }
            }
            let from = container
                .get("envFrom")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for source in from {
                let Some(cm) = source.get("configMapRef").and_then(|r| str_of(r, "name")) else {
                    continue;
                };
                let map = config_maps
                    .iter()
                    .find(|m| m.get("metadata").and_then(|md| str_of(md, "name")) == Some(cm))
                    .unwrap_or_else(|| {
                        panic!("{path}: ConfigMap {cm} is not in k8s/configmap.yaml")
                    });
                for key in map
                    .get("data")
                    .and_then(Value::as_mapping)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, _)| k.as_str())
                {
                    out.push(Setting {
                        binary,
                        name: key.to_owned(),
                        place: format!("{path} ConfigMap {cm}"),
                    });
                }
            }
        }
    }
}

fn compose(out: &mut Vec<Setting>) {
    let docs = documents("docker-compose.yml");
    let services = docs[0]
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    for (name, service) in services {
        let image = str_of(service, "image").unwrap_or_default();
        let Some(binary) = Binary::of(image) else {
            continue;
        };
        let env = service
            .get("environment")
            .and_then(Value::as_mapping)
            .cloned()
            .unwrap_or_default();
        for key in env.keys().filter_map(Value::as_str) {
            out.push(Setting {
                binary,
                name: key.to_owned(),
                place: format!(
                    "docker-compose.yml service {}",
                    name.as_str().unwrap_or("?")
                ),
            });
        }
    }
}

/// `ENV` lines of `Dockerfile`'s stages, each for the binary its stage is named after
/// (`FROM runtime AS user-srv`); the shared stages set none.
fn dockerfile(out: &mut Vec<Setting>) {
    let path = "Dockerfile";
    let text = read(path).replace("\\\n", " ");
    let mut binary = None;
    for line in text.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            let stage = from.rsplit_once(" AS ").map(|(_, name)| name.trim());
            binary = stage.and_then(|name| Binary::of(name).filter(|b| b.0 == name));
            continue;
        }
        let Some(pairs) = line.strip_prefix("ENV ") else {
            continue;
        };
        let binary = binary.unwrap_or_else(|| panic!("{path}: ENV outside a service's stage"));
        for pair in pairs.split_whitespace() {
            let (name, _) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("{path}: ENV {pair}"));
            out.push(Setting {
                binary,
                name: name.to_owned(),
                place: format!("{path} (target {})", binary.0),
            });
        }
    }
}

fn unknown(settings: &[Setting]) -> Vec<&Setting> {
    settings
        .iter()
        .filter(|s| !s.binary.known().contains(&s.name))
        .collect()
}

#[test]
fn every_variable_the_deployment_files_set_is_read_by_its_binary() {
    let mut settings = Vec::new();
    for path in files("k8s", ".yaml") {
        kubernetes(&path, &mut settings);
    }
    compose(&mut settings);
    dockerfile(&mut settings);
    for (name, _) in BINARIES {
        for place in ["k8s/", "docker-compose", "Dockerfile"] {
            assert!(
                settings
                    .iter()
                    .any(|s| s.binary == Binary(name) && s.place.contains(place)),
                "no {name} settings found in {place}: the check would pass vacuously"
            );
        }
    }
    let bad = unknown(&settings);
    assert!(bad.is_empty(), "variables no binary reads: {bad:#?}");
}

#[test]
fn the_check_catches_a_misspelt_variable() {
    let settings = vec![
        Setting {
            binary: Binary("user-srv"),
            name: "USER_SRV__SERVER__PORT".into(),
            place: "t".into(),
        },
        Setting {
            binary: Binary("user-srv"),
            name: "USER_SRV__SERVR__PORT".into(),
            place: "t".into(),
        },
        Setting {
            binary: Binary("user-web"),
            name: "USER_SRV__SERVER__PORT".into(),
            place: "t".into(),
        },
    ];
    let bad: Vec<&str> = unknown(&settings).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(bad, ["USER_SRV__SERVR__PORT", "USER_SRV__SERVER__PORT"]);
}

#[test]
fn every_yaml_file_parses() {
    let mut paths = files("k8s", ".yaml");
    paths.push("docker-compose.yml".to_owned());
    assert!(paths.len() > 4, "{paths:?}");
    for path in paths {
        assert!(!documents(&path).is_empty(), "{path}");
    }
}
