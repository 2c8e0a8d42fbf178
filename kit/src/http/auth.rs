//! Bearer tokens: HS256 JWTs issued at login/registration and checked on protected routes
//! of every gateway. The token comes in `Authorization: Bearer …` or, as mxshop clients send
//! it, `x-token`. A gateway's state implements [`HasTokens`] to get the extractors.
//!
//! Checked on every token: the algorithm (HS256 only: `none` and HS512 are refused), the
//! signature, `exp`, `nbf` and `iat` (with a small leeway for clock skew), and the issuer
//! and audience the settings name. A secret shorter than 32 bytes is refused at start.
//! A token that passed is remembered by its SHA-256 (a client sends the same token with every
//! call, and the full check is most of what an authenticated request costs the gateway); a
//! remembered token still has its `exp` checked on every call.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::config::Secret;

/// The signing secret used when none is configured. Accepted only in dev mode.
pub const DEV_JWT_SECRET: &str = "dev-only-secret-change-me-in-production";

/// The shortest secret accepted: 256 bits, HS256's own key size.
pub const MIN_SECRET_BYTES: usize = 32;

/// Token signing of a gateway: every gateway of one system shares the secret, so a token
/// issued by one is honoured by all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthSettings {
    /// HS256 secret for the tokens this gateway issues and checks (at least 32 bytes).
    pub jwt_secret: Secret,
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// The `iss` every token carries and must carry.
    pub issuer: String,
    /// The `aud` every token carries and must carry.
    pub audience: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Allows the built-in development secret. Never in production.
    pub dev_mode: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::new(DEV_JWT_SECRET),
            token_ttl: Duration::from_secs(24 * 3600),
            issuer: "user-web".to_owned(),
            audience: "gateways".to_owned(),
            leeway: Duration::from_secs(5),
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
    #[error("auth.jwt_secret must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
}

impl AuthSettings {
    /// Refuses the development secret outside dev mode, and short secrets; `prefix` is the
    /// service's environment prefix, for the message.
    pub fn validate(&self, prefix: &str) -> Result<(), AuthConfigError> {
        if self.jwt_secret.expose() == DEV_JWT_SECRET && !self.dev_mode {
            return Err(AuthConfigError::DevSecret {
                prefix: prefix.to_owned(),
            });
        }
        if self.jwt_secret.expose().len() < MIN_SECRET_BYTES {
            return Err(AuthConfigError::WeakSecret);
        }
        Ok(())
    }

    /// The token keys these settings describe.
    pub fn tokens(&self, admin_role: i32) -> Tokens {
        Tokens::new(self, admin_role)
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
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Not before, unix seconds (the issue time).
    pub nbf: u64,
    pub iss: String,
    pub aud: String,
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
    issuer: String,
    audience: String,
    /// The `role` claim [`AdminUser`] requires.
    admin_role: i32,
    verified: Arc<Verified>,
}

/// How many verified tokens are remembered at most.
const VERIFIED_SLOTS: usize = 1024;

type Slot = Mutex<Option<([u8; 32], Claims)>>;

/// Tokens that passed every check, by the SHA-256 of their text (so the comparison leaks
/// nothing about a token's bytes). Direct-mapped: a token whose slot is taken replaces the
/// one there, so memory stays bounded whatever clients send.
struct Verified {
    slots: Box<[Slot]>,
}

impl Verified {
    fn new() -> Self {
        Self {
            slots: (0..VERIFIED_SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn digest(token: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    fn slot(&self, digest: &[u8; 32]) -> &Slot {
        let at = usize::from(u16::from_le_bytes([digest[0], digest[1]])) % self.slots.len();
        &self.slots[at]
    }

    fn get(&self, digest: &[u8; 32]) -> Option<Claims> {
        let slot = self
            .slot(digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|(d, _)| d == digest)
            .map(|(_, claims)| claims.clone())
    }

    fn put(&self, digest: [u8; 32], claims: &Claims) {
        let mut slot = self
            .slot(&digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *slot = Some((digest, claims.clone()));
    }
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

    /// The tokens `settings` describe; `admin_role` is the role number of an admin (the user
    /// contract's `Role.ROLE_ADMIN`).
    pub fn new(settings: &AuthSettings, admin_role: i32) -> Self {
        // HS256 only: the header's `alg` is checked against this list, so `none` or another
        // algorithm never reaches the signature check.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.required_spec_claims = ["exp", "nbf", "sub", "iss", "aud"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let secret = settings.jwt_secret.expose().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl: settings.token_ttl,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            admin_role,
            verified: Arc::new(Verified::new()),
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
            nbf: iat,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| {
            tracing::error!(error = %e, "cannot sign a token");
            ApiError::Internal
        })?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let invalid = || ApiError::Unauthenticated {
            code: "invalid_token",
            message: "the token is not valid".into(),
        };
        let expired = || ApiError::Unauthenticated {
            code: "token_expired",
            message: "the token has expired; log in again".into(),
        };
        let digest = Verified::digest(token);
        if let Some(claims) = self.verified.get(&digest) {
            // Everything else it passed still holds: `nbf` and `iat` only look back.
            if claims.exp.saturating_add(self.validation.leeway) < now() {
                return Err(expired());
            }
            return Ok(claims);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => expired(),
                _ => invalid(),
            })?;
        // jsonwebtoken does not check `iat`: a token issued in the future is forged or from
        // a broken clock.
        if claims.iat > now() + self.validation.leeway {
            return Err(invalid());
        }
        self.verified.put(digest, &claims);
        Ok(claims)
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

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    fn settings(secret: &str) -> AuthSettings {
        AuthSettings {
            jwt_secret: Secret::new(secret),
            token_ttl: Duration::from_secs(60),
            ..AuthSettings::default()
        }
    }

    /// A token signed with SECRET whose claims are `edit`ed from a valid user's.
    fn forged(edit: impl FnOnce(&mut Claims)) -> String {
        let t = now();
        let mut claims = Claims {
            sub: "7".into(),
            role: 1,
            nick_name: "u".into(),
            exp: t + 60,
            iat: t,
            nbf: t,
            iss: "user-web".into(),
            aud: "gateways".into(),
        };
        edit(&mut claims);
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
    }

    fn code(result: Result<Claims, ApiError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(ApiError::Unauthenticated { code, .. }) => code,
            Err(_) => "other",
        }
    }

    #[test]
    fn a_token_verifies_only_with_its_secret_issuer_audience_and_times() {
        let tokens = settings(SECRET).tokens(2);
        let (token, exp) = tokens.issue(7, 2, "admin").expect("issue");
        let claims = tokens.verify(&token).expect("valid");
        assert_eq!(
            (claims.user_id(), claims.role, claims.exp),
            (Some(7), 2, exp)
        );
        let other = settings("another-secret-of-at-least-32-bytes").tokens(2);
        assert_eq!(code(other.verify(&token)), "invalid_token");

        assert_eq!(code(tokens.verify(&forged(|_| {}))), "ok");
        assert_eq!(
            code(tokens.verify(&forged(|c| {
                c.exp = now() - 10;
                c.iat = now() - 70;
                c.nbf = c.iat;
            }))),
            "token_expired"
        );
        for (what, token) in [
            ("another issuer", forged(|c| c.iss = "elsewhere".into())),
            ("another audience", forged(|c| c.aud = "elsewhere".into())),
            ("not valid yet", forged(|c| c.nbf = now() + 60)),
            ("issued in the future", forged(|c| c.iat = now() + 60)),
        ] {
            assert_eq!(code(tokens.verify(&token)), "invalid_token", "{what}");
        }
        // Within the leeway, a little clock skew is fine.
        assert_eq!(code(tokens.verify(&forged(|c| c.nbf = now() + 2))), "ok");
    }

    #[test]
    fn a_remembered_token_is_served_only_to_its_exact_text_and_still_expires() {
        let tokens = settings(SECRET).tokens(2);
        let (token, _) = tokens.issue(7, 2, "admin").expect("issue");
        let first = tokens.verify(&token).expect("valid");
        assert_eq!(tokens.verify(&token).expect("remembered"), first);
        // One character changed in the signature: checked in full, and refused.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(code(tokens.verify(&tampered)), "invalid_token");
        assert_eq!(code(tokens.verify(&token)), "ok");
        // The same token, remembered with a time that has passed, is refused as expired.
        let past = Claims {
            exp: now() - 60,
            ..first
        };
        tokens.verified.put(Verified::digest(&token), &past);
        assert_eq!(code(tokens.verify(&token)), "token_expired");
    }

    #[test]
    fn short_and_development_secrets_are_refused_and_secrets_never_print() {
        assert!(matches!(
            settings("short-secret-of-31-bytes-......").validate("X"),
            Err(AuthConfigError::WeakSecret)
        ));
        assert!(settings(SECRET).validate("X").is_ok());
        assert!(matches!(
            AuthSettings::default().validate("X"),
            Err(AuthConfigError::DevSecret { .. })
        ));
        let text = format!("{:?} {:?}", settings(SECRET), settings(SECRET).tokens(2));
        assert!(!text.contains(SECRET), "{text}");
    }
}
