//! What handlers share: the user-srv upstream, the token keys and the attempt limits. A leaf
//! module: routes and the application import it, it imports neither.

use std::sync::Arc;

use kit::{
    http::{HasTokens, Tokens, throttle::Limiter},
    upstream::Upstream,
};
use proto::user_v1::user_client::UserClient;
use tonic::transport::Channel;

/// One `Arc`, so the per-request clone is one atomic increment.
pub type AppState = Arc<Shared>;

#[derive(Debug)]
pub struct Shared {
    /// user-srv, found through Consul and balanced.
    pub users: Upstream<UserClient<Channel>>,
    pub tokens: Tokens,
    pub limits: Limits,
}

/// Attempts allowed on the routes a guesser hammers, per client IP and per mobile.
#[derive(Debug)]
pub struct Limits {
    pub login_per_ip: Limiter,
    pub login_per_mobile: Limiter,
    pub register_per_ip: Limiter,
    pub register_per_mobile: Limiter,
}

impl HasTokens for Shared {
    fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}
