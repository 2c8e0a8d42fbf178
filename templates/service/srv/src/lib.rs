//! @name@-srv: the gRPC @name@ service, on the service kit.
//!
//! # Layout
//! - [`config`]: this service's settings and their defaults.
//! - [`app`]: [`app::Application`]: the kit's gRPC runner with `@snake@.v1.@Camel@` added.
//! - [`grpc`]: the transport; maps domain errors to gRPC codes, in one place.
//! - [`domain`]: what a valid item and page are, the error enum, and the [`domain::Store`]
//!   trait it needs from storage.
//! - [`repo`]: that trait in SQL, once for both dialects, and the migrations.
//!
//! Data flows one way: transport → domain → store (repo) → database.

pub mod app;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod repo;

pub use app::Application;
pub use config::Settings;
