//! @name@-web: the REST gateway in front of @name@-srv, on the service kit.
//!
//! # Layout
//! - [`config`]: this gateway's settings and their defaults.
//! - [`app`]: [`app::Application`]: the kit's HTTP edge around the routes, @name@-srv
//!   followed in Consul.
//! - [`routes`]: the `/@prefix@/v1/@name@` handlers, their JSON types and the OpenAPI document.
//! - [`state`]: what handlers share; a leaf.
//!
//! Data flows one way: routes → upstream (the kit's balanced client) → @name@-srv.

pub mod app;
pub mod config;
pub mod routes;
pub mod state;

pub use app::Application;
pub use config::Settings;
