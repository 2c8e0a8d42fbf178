//! The deployment files of this folder (Dockerfiles, `docker-compose.yml`, `k8s/`) cannot be
//! run on every machine; `tests/manifests.rs` checks what can be checked without a container
//! engine: the YAML parses, and every environment variable set is one the binary reads.
