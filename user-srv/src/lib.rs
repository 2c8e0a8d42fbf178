//! user-srv: the gRPC user service.
//!
//! # Layout
//! - [`config`]: layered settings (defaults → file → environment → flags).
//! - [`app`]: [`app::Application`], which binds once, serves, and shuts down in order.
//! - [`grpc`]: the `user.v1.User` transport; maps domain errors to gRPC codes.
//! - [`domain`]: validation, paging, password hashing, the error enum.
//! - [`repo`] and [`db`]: SQL through sqlx (SQLite or PostgreSQL, chosen by URL).
//! - [`health`], [`telemetry`]: health service, per-RPC logs and call counters.
//! - [`seed`]: idempotent demo data.
//!
//! Data flows one way: transport → domain → repo → database.

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
