//! Extractors of the REST edge: JSON bodies and queries whose rejections are 400 JSON errors,
//! and [`CallContext`], what an upstream call needs from the request that caused it.

use std::net::{IpAddr, SocketAddr};

use axum::{
    Json,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request},
    http::request::Parts,
};
use serde::de::DeserializeOwned;
use tower_http::request_id::RequestId;

use super::error::ApiError;

/// `Json<T>` whose rejections (bad JSON, wrong types, too large) are 400 JSON errors.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Self(v))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// `Query<T>` whose rejections are 400 JSON errors.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// What an upstream call needs from the HTTP request that caused it: the request id (sent
/// on as `x-request-id` metadata) and the client's address (for hash-by-client balancing).
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
}

impl CallContext {
    pub fn from_parts(parts: &Parts) -> Self {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let client_ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Self {
            request_id,
            client_ip,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CallContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}
