//! Service discovery on Consul, shared by user-srv and user-web.
//!
//! # Layout
//! - [`consul`]: a typed client for the agent, health, KV and Connect endpoints used here.
//! - [`registration`]: an instance's register → keep registered → deregister lifecycle.
//! - [`blocking`]: the one loop of Consul blocking queries (index, pace, back-off).
//! - [`watcher`]: follows a service's passing instances with blocking queries.
//! - [`health`]: reads those answers incrementally, parsing only what changed.
//! - [`balancer`]: one channel per instance and the policies that choose among them.
//! - [`address`]: which address to advertise when bound to a wildcard.
//! - [`backoff`]: exponential backoff with jitter for retries.
//! - [`secret`]: a setting that logs as `[redacted]` (tokens, keys, passwords).
//! - [`tasks`]: background tasks that end with the handle that started them.

pub mod address;
pub mod backoff;
pub mod balancer;
pub mod blocking;
pub mod consul;
pub mod health;
pub mod registration;
pub mod secret;
pub mod tasks;
pub mod watcher;

pub use balancer::{Balancer, BalancerSettings, OutlierSettings, Policy, Routing};
pub use consul::{ConsulClient, ConsulError, ConsulSettings, KvConfigSettings, KvEntry};
pub use registration::{CheckTarget, PlanError, Planned, Registration, RegistrationSettings};
pub use secret::Secret;
pub use watcher::{Endpoint, Endpoints, WatchSettings, Watcher};
