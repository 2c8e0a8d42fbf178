//! Bearer tokens: HS256 JWTs issued at login/registration and checked on protected routes
//! of every gateway. The token comes in `Authorization: Bearer …` or, as mxshop clients send
//! it, `x-token`. A gateway's state implements [`HasTokens`] to get the extractors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// The signing secret used when none is configured. Accepted only in dev mode.
pub const DEV_JWT_SECRET: &str = "dev-only-secret-change-me";

/// Token signing of a gateway: every gateway of one system shares the secret, so a token
/// issued by one is honoured by all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthSettings {
    /// HS256 secret for the tokens this gateway issues and checks.
    pub jwt_secret: String,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Allows the built-in development secret. Never in production.
    pub dev_mode: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: DEV_JWT_SECRET.to_owned(),
            token_ttl: Duration::from_secs(24 * 3600),
            dev_mode: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "auth.jwt_secret is the built-in development secret: set {prefix}__AUTH__JWT_SECRET \
         (or {prefix}__AUTH__DEV_MODE=true for local development only)"
    )]
    DevSecret { prefix: String },
    #[error("auth.jwt_secret must be at least 16 bytes")]
    WeakSecret,
}

impl AuthSettings {
    /// Refuses the development secret outside dev mode, and short secrets; `prefix` is the
    /// service's environment prefix, for the message.
    pub fn validate(&self, prefix: &str) -> Result<(), AuthConfigError> {
        if self.jwt_secret == DEV_JWT_SECRET && !self.dev_mode {
            return Err(AuthConfigError::DevSecret {
                prefix: prefix.to_owned(),
            });
        }
        if self.jwt_secret.len() < 16 {
            return Err(AuthConfigError::WeakSecret);
        }
        Ok(())
    }

    /// The token keys these settings describe.
    pub fn tokens(&self, admin_role: i32) -> Tokens {
        Tokens::new(&self.jwt_secret, self.token_ttl, admin_role)
    }
}

/// What a gateway's state gives the [`AuthUser`] and [`AdminUser`] extractors.
pub trait HasTokens {
    fn tokens(&self) -> &Tokens;
}

impl<T: HasTokens> HasTokens for std::sync::Arc<T> {
    fn tokens(&self) -> &Tokens {
        (**self).tokens()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id (a string, as JWT's `sub` is).
    pub sub: String,
    pub role: i32,
    pub nick_name: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    pub iat: u64,
}

impl Claims {
    pub fn user_id(&self) -> Option<i64> {
        self.sub.parse().ok()
    }
}

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// The `role` claim [`AdminUser`] requires.
    admin_role: i32,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Tokens {
    /// Whether the claims are an admin's.
    pub fn is_admin(&self, claims: &Claims) -> bool {
        claims.role == self.admin_role
    }

    /// Tokens signed with `secret`, valid for `ttl`; `admin_role` is the role number of an
    /// admin (the user contract's `Role.ROLE_ADMIN`).
    pub fn new(secret: &str, ttl: Duration, admin_role: i32) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl,
            admin_role,
        }
    }

    /// A token for this user, and its expiry (unix seconds).
    pub fn issue(&self, id: i64, role: i32, nick_name: &str) -> Result<(String, u64), ApiError> {
        let iat = now();
        let claims = Claims {
            sub: id.to_string(),
            role,
            nick_name: nick_name.to_owned(),
            exp: iat + self.ttl.as_secs(),
            iat,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| {
            tracing::error!(error = %e, "cannot sign a token");
            ApiError::Internal
        })?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::Unauthenticated {
                    code: "token_expired",
                    message: "the token has expired; log in again".into(),
                },
                _ => ApiError::Unauthenticated {
                    code: "invalid_token",
                    message: "the token is not valid".into(),
                },
            })
    }
}

/// The caller, from a valid token. Rejects with 401 otherwise.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Claims);

/// The caller, who must be an admin. 401 without a valid token, 403 otherwise.
#[derive(Debug, Clone)]
pub struct AdminUser(pub Claims);

fn bearer(parts: &Parts) -> Option<&str> {
    let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| header("x-token"))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

impl<S: HasTokens + Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthenticated {
            code: "missing_token",
            message: "send a token in 'Authorization: Bearer <token>' or 'x-token'".into(),
        })?;
        state.tokens().verify(token).map(AuthUser)
    }
}

impl<S: HasTokens + Send + Sync> FromRequestParts<S> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let AuthUser(claims) = AuthUser::from_request_parts(parts, state).await?;
        if claims.role == state.tokens().admin_role {
            Ok(Self(claims))
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_with_its_secret_and_until_it_expires() {
        let tokens = Tokens::new("a-secret-of-sixteen+", Duration::from_secs(60), 2);
        let (token, exp) = tokens.issue(7, 2, "admin").expect("issue");
        let claims = tokens.verify(&token).expect("valid");
        assert_eq!(
            (claims.user_id(), claims.role, claims.exp),
            (Some(7), 2, exp)
        );

        let other = Tokens::new("another-secret-of-16", Duration::from_secs(60), 2);
        assert!(matches!(
            other.verify(&token),
            Err(ApiError::Unauthenticated {
                code: "invalid_token",
                ..
            })
        ));
        let past = Claims {
            sub: "7".into(),
            role: 1,
            nick_name: "u".into(),
            exp: now() - 10,
            iat: now() - 70,
        };
        let key = EncodingKey::from_secret(b"a-secret-of-sixteen+");
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &past, &key).expect("sign");
        assert!(matches!(
            tokens.verify(&token),
            Err(ApiError::Unauthenticated {
                code: "token_expired",
                ..
            })
        ));
    }
}
