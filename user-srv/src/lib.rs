//! user-srv: the gRPC user service, on the service kit.
//!
//! # Layout
//! - [`config`]: this service's settings and their defaults.
//! - [`app`]: [`app::Application`]: the kit's gRPC runner with `user.v1.User` added.
//! - [`grpc`]: the `user.v1.User` transport; maps domain errors to gRPC codes.
//! - [`domain`]: validation, paging, password hashing, the error enum, and the
//!   [`domain::UserStore`] trait it needs from storage.
//! - [`repo`]: that trait in SQL, once for both dialects, and the migrations.
//! - [`seed`]: idempotent demo data.
//!
//! Data flows one way: transport → domain → store (repo) → database.

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod repo;
pub mod seed;

pub use app::Application;
pub use config::Settings;
