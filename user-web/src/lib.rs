//! user-web: the REST gateway in front of user-srv.
//!
//! # Layout
//! - [`config`]: layered settings (defaults → file → environment → flags).
//! - [`app`]: [`app::Application`]: binds, follows user-srv in Consul, registers, serves, drains.
//! - [`routes`]: the `/u/v1` handlers, their JSON types and the OpenAPI document.
//! - [`upstream`]: balanced calls to user-srv with deadline, request id, ejection and retry.
//! - [`auth`]: HS256 tokens and the authenticated-caller extractors.
//! - [`error`]: the error enum and its JSON form; gRPC → HTTP mapping.
//! - [`metrics`]: Prometheus metrics.
//!
//! Data flows one way: routes → upstream (discovery's balancer) → user-srv.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod upstream;

pub use app::Application;
pub use config::Settings;
