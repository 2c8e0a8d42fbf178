//! user-web: the REST gateway in front of user-srv, on the service kit.
//!
//! # Layout
//! - [`config`]: this gateway's settings and their defaults.
//! - [`app`]: [`app::Application`]: the kit's HTTP edge around the routes, user-srv followed
//!   in Consul.
//! - [`routes`]: the `/u/v1` handlers, their JSON types and the OpenAPI document.
//! - [`state`]: what handlers share (the user-srv upstream, the token keys); a leaf.
//!
//! Data flows one way: routes → upstream (the kit's balanced client) → user-srv.

pub mod app;
pub mod config;
pub mod routes;
pub mod state;

pub use app::Application;
pub use config::Settings;
