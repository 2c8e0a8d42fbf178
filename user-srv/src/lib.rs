//! user-srv: the gRPC user service.
//!
//! # Layout
//! - [`config`]: layered settings (defaults → file → environment → flags).
//! - [`app`]: [`app::Application`], which binds once, serves, and shuts down in order.
//! - [`grpc`]: the `user.v1.User` transport; maps domain errors to gRPC codes.
//! - [`domain`]: validation, paging, password hashing, the error enum, and the
//!   [`domain::UserStore`] trait it needs from storage.
//! - [`repo`]: that trait in SQL, once for both dialects; [`db`]: opens SQLite or PostgreSQL
//!   (chosen by URL) on sqlx's native drivers and hands out the store.
//! - [`health`], [`telemetry`]: health service, per-RPC logs and call counters.
//! - [`seed`]: idempotent demo data.
//!
//! Data flows one way: transport → domain → store (repo) → database.

pub mod app;
pub mod config;
pub mod db;
pub mod domain;
pub mod grpc;
pub mod health;
pub mod repo;
pub mod seed;
pub mod telemetry;

pub use app::Application;
pub use config::Settings;
