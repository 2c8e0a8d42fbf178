//! What handlers share: the user-srv upstream, the token keys and the attempt limits. A leaf
//! module: routes and the application import it, it imports neither.

use std::{net::IpAddr, sync::Arc};

use kit::{
    http::{ApiError, HasTokens, Tokens, throttle::Limiter},
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

/// Attempts allowed on the routes a guesser hammers.
#[derive(Debug)]
pub struct Limits {
    pub login: RouteLimiters,
    pub register: RouteLimiters,
}

/// One route's attempts, per client IP and per mobile.
#[derive(Debug)]
pub struct RouteLimiters {
    pub per_ip: Limiter,
    pub per_mobile: Limiter,
}

impl RouteLimiters {
    /// Takes one attempt from the client's and the mobile's allowance, or answers 429.
    pub fn admit(&self, client_ip: Option<IpAddr>, mobile: &str) -> Result<(), ApiError> {
        if let Some(ip) = client_ip {
            self.per_ip.check(&ip.to_string())?;
        }
        // A mobile that cannot be valid is refused by user-srv anyway; only real ones take room.
        if proto::user_rules::is_mobile(mobile) {
            self.per_mobile.check(mobile)?;
        }
        Ok(())
    }
}

impl HasTokens for Shared {
    fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}
