//! What handlers share: the @name@-srv upstream and the token keys. A leaf module.

use std::sync::Arc;

use kit::{
    http::{HasTokens, Tokens},
    upstream::Upstream,
};
use proto::@snake@::v1::@snake@_client::@Camel@Client;
use tonic::transport::Channel;

pub type AppState = Arc<Shared>;

#[derive(Debug)]
pub struct Shared {
    /// @name@-srv, found through Consul and balanced.
    pub @snake@: Upstream<@Camel@Client<Channel>>,
    pub tokens: Tokens,
}

impl HasTokens for Shared {
    fn tokens(&self) -> &Tokens {
        &self.tokens
    }
}
