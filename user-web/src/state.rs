//! What handlers share: the user-srv upstream and the token keys. A leaf module: routes and
//! the application import it, it imports neither.

use std::sync::Arc;

use kit::{
    http::{HasTokens, Tokens},
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
}

impl HasTokens for Shared {
    fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}
