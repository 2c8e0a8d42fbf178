//! REST handlers under `/u/v1`, their JSON types and the OpenAPI document generated from
//! them. Handlers translate HTTP to user-srv calls and back; rules live in user-srv.

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use kit::{
    http::{
        AdminUser, ApiError, AuthUser, CallContext, ErrorBody, Json, JsonBody, QueryParams,
        UpstreamFailures,
    },
    page::PageQuery,
    upstream::Retry,
};
use proto::user_rules;
use proto::user_v1::{
    CreateUserInfo, IdRequest, PageInfo, UserInfoResponse, VerifyPasswordRequest,
};
use serde::{Deserialize, Serialize};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{RefOr, Schema},
};

use crate::state::AppState;

pub const LIST: &str = "/u/v1/user/list";
pub const REGISTER: &str = "/u/v1/user/register";
pub const PWD_LOGIN: &str = "/u/v1/user/pwd_login";
pub const USER: &str = "/u/v1/user/{id}";

/// The `/u/v1` routes with their state; the kit's edge adds the rest.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(LIST, get(list))
        .route(REGISTER, post(register))
        .route(PWD_LOGIN, post(pwd_login))
        .route(USER, get(get_user))
        .with_state(state)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub mobile: String,
    pub nick_name: String,
    /// `YYYY-MM-DD` (UTC), or null when unknown.
    pub birthday: Option<String>,
    /// `male` or `female`.
    pub gender: String,
    /// 1 user, 2 admin.
    pub role: i32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub total: i64,
    pub data: Vec<UserView>,
}

/// The document's pattern and lengths come from [`user_rules`] (see [`UserRules`]).
#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    #[schema(example = "13912345678")]
    pub mobile: String,
    #[schema(example = "s3cret-pass")]
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub id: i64,
    pub nick_name: String,
    /// Send as `Authorization: Bearer <token>` (or `x-token`).
    pub token: String,
    /// Unix seconds.
    pub expired_at: u64,
}

/// Unix seconds to their UTC calendar day, `YYYY-MM-DD`; `None` past the year 9999.
pub fn iso_date(unix_seconds: u64) -> Option<String> {
    let seconds = i64::try_from(unix_seconds).ok()?;
    let day = time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .date();
    Some(day.to_string())
}

impl From<UserInfoResponse> for UserView {
    fn from(u: UserInfoResponse) -> Self {
        Self {
            id: u.id,
            mobile: u.mobile,
            nick_name: u.nick_name,
            birthday: if u.birthday == 0 {
                None
            } else {
                iso_date(u.birthday)
            },
            gender: u.gender,
            role: u.role,
        }
    }
}

/// Counts one attempt against the client's and the mobile's limits (the client's first, so a
/// refused client spends nothing of the mobile's).
/// A signed-in user's answer: their id and nickname, and a token for them.
fn token_for(
    state: &AppState,
    id: i64,
    role: i32,
    nick_name: String,
) -> Result<TokenResponse, ApiError> {
    let (token, expired_at) = state.tokens.issue(id, role, &nick_name)?;
    Ok(TokenResponse {
        id,
        nick_name,
        token,
        expired_at,
    })
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthenticated {
        code: "invalid_credentials",
        message: "wrong mobile or password".into(),
    }
}

/// A page of users (admins only).
#[utoipa::path(get, path = "/u/v1/user/list", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, body = UserList),
        (status = 400, body = ErrorBody, description = "a malformed query, or psize above its maximum"),
        (status = 401, body = ErrorBody, description = "no token, or a bad or expired one"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        UpstreamFailures))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    ctx: CallContext,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<UserList>, ApiError> {
    let (pn, p_size) = q.checked()?;
    let page = PageInfo { pn, p_size };
    let list = state
        .users
        .call(&ctx, Retry::Idempotent, page, |mut c, r| async move {
            c.get_user_list(r).await
        })
        .await?;
    Ok(Json(UserList {
        total: list.total,
        data: list.data.into_iter().map(UserView::from).collect(),
    }))
}

/// What both routes that take [`Credentials`] may also answer.
#[derive(Debug, utoipa::IntoResponses)]
pub enum CredentialFailures {
    /// a malformed body, mobile or password
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// too many attempts from this client or for this mobile (each route counts its own)
    #[response(status = 429, headers(("Retry-After" = u64, description = "seconds to wait")))]
    Throttled(ErrorBody),
}

/// Creates a user and logs them in.
#[utoipa::path(post, path = "/u/v1/user/register", request_body = Credentials,
    responses((status = 201, body = TokenResponse),
        (status = 409, body = ErrorBody, description = "the mobile is already registered"),
        CredentialFailures, UpstreamFailures))]
pub async fn register(
    State(state): State<AppState>,
    ctx: CallContext,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    state.limits.register.admit(ctx.client_ip, &body.mobile)?;
    let request = CreateUserInfo {
        mobile: body.mobile,
        password: body.password,
        nick_name: String::new(),
    };
    let user = state
        .users
        .call(&ctx, Retry::Never, request, |mut c, r| async move {
            c.create_user(r).await
        })
        .await?;
    let token = token_for(&state, user.id, user.role, user.nick_name)?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Logs in with mobile and password.
#[utoipa::path(post, path = "/u/v1/user/pwd_login", request_body = Credentials,
    responses((status = 200, body = TokenResponse),
        (status = 401, body = ErrorBody, description = "wrong mobile or password (one answer for both)"),
        CredentialFailures, UpstreamFailures))]
pub async fn pwd_login(
    State(state): State<AppState>,
    ctx: CallContext,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<TokenResponse>, ApiError> {
    state.limits.login.admit(ctx.client_ip, &body.mobile)?;
    let request = VerifyPasswordRequest {
        mobile: body.mobile,
        password: body.password,
    };
    // user-srv answers an unknown mobile and a wrong password alike, in the same time.
    let user = state
        .users
        .call(&ctx, Retry::Idempotent, request, |mut c, r| async move {
            c.verify_password(r).await
        })
        .await
        .map_err(|e| match e {
            ApiError::Unauthenticated { .. } => invalid_credentials(),
            e => e,
        })?;
    Ok(Json(token_for(&state, user.id, user.role, user.nick_name)?))
}

/// One user: the user themself or an admin.
#[utoipa::path(get, path = "/u/v1/user/{id}",
    params(("id" = i64, Path, minimum = 1, description = "the user's id")),
    security(("bearer" = [])),
    responses((status = 200, body = UserView),
        (status = 400, body = ErrorBody, description = "an id that is not a positive 64-bit integer"),
        (status = 401, body = ErrorBody, description = "no token, or a bad or expired one"),
        (status = 403, body = ErrorBody, description = "another user's record, and not an admin"),
        (status = 404, body = ErrorBody, description = "no such user"),
        UpstreamFailures))]
pub async fn get_user(
    State(state): State<AppState>,
    AuthUser(claims): AuthUser,
    ctx: CallContext,
    path: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<UserView>, ApiError> {
    let Path(id) = path.map_err(|r| ApiError::bad_request(r.body_text()))?;
    if claims.user_id() != Some(id) && !state.tokens.is_admin(&claims) {
        return Err(ApiError::Forbidden);
    }
    let user = state
        .users
        .call(
            &ctx,
            Retry::Idempotent,
            IdRequest { id },
            |mut c, r| async move { c.get_user_by_id(r).await },
        )
        .await?;
    Ok(Json(UserView::from(user)))
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "user-web", description = "REST gateway of the user service"),
    paths(list, register, pwd_login, get_user),
    components(schemas(UserView, UserList, Credentials, TokenResponse, ErrorBody)),
    modifiers(&UserRules)
)]
pub struct ApiDoc;

/// States the rules user-srv enforces on [`Credentials`] from [`user_rules`] itself: derive
/// attributes take only literals, which would repeat them.
struct UserRules;

impl Modify for UserRules {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let credentials = doc
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("Credentials"));
        let Some(RefOr::T(Schema::Object(credentials))) = credentials else {
            return;
        };
        if let Some(RefOr::T(Schema::Object(mobile))) = credentials.properties.get_mut("mobile") {
            mobile.pattern = Some(user_rules::mobile_pattern());
            mobile.description = Some(format!("{}.", user_rules::mobile_rule()));
        }
        if let Some(RefOr::T(Schema::Object(password))) = credentials.properties.get_mut("password")
        {
            password.min_length = Some(user_rules::PASSWORD_MIN_CHARS);
            password.max_length = Some(user_rules::PASSWORD_MAX_CHARS);
            password.description = Some(format!(
                "{} to {} characters.",
                user_rules::PASSWORD_MIN_CHARS,
                user_rules::PASSWORD_MAX_CHARS
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(iso_date(0).as_deref(), Some("1970-01-01"));
        assert_eq!(iso_date(646_790_400).as_deref(), Some("1990-07-01"));
        assert_eq!(iso_date(951_782_400).as_deref(), Some("2000-02-29"));
        assert_eq!(iso_date(4_102_444_799).as_deref(), Some("2099-12-31"));
        assert_eq!(
            iso_date(u64::MAX),
            None,
            "beyond what a calendar date holds"
        );
    }

    #[test]
    fn the_openapi_document_states_the_enforced_rules() {
        let doc = serde_json::to_value(kit::http::document(ApiDoc::openapi())).expect("json");
        let credentials = &doc["components"]["schemas"]["Credentials"]["properties"];
        assert_eq!(
            credentials["mobile"]["pattern"],
            user_rules::mobile_pattern()
        );
        assert_eq!(
            credentials["password"]["minLength"],
            user_rules::PASSWORD_MIN_CHARS
        );
        assert_eq!(
            credentials["password"]["maxLength"],
            user_rules::PASSWORD_MAX_CHARS
        );
        let psize = doc["paths"]["/u/v1/user/list"]["get"]["parameters"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "psize"))
            .expect("psize")
            .clone();
        assert_eq!(psize["schema"]["maximum"], kit::page::MAX_SIZE);
        for path in ["/u/v1/user/list", "/u/v1/user/register", "/u/v1/user/{id}"] {
            let responses = doc["paths"][path]
                .as_object()
                .and_then(|ops| ops.values().next())
                .map(|op| op["responses"].clone())
                .expect("an operation");
            assert!(
                responses["503"]["headers"]["Retry-After"].is_object(),
                "{path}: {responses}"
            );
            assert_eq!(
                responses["504"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{path}"
            );
        }
    }

    #[test]
    fn both_credential_routes_document_the_bad_body_and_the_throttle() {
        let doc = serde_json::to_value(kit::http::document(ApiDoc::openapi())).expect("json");
        for path in ["/u/v1/user/register", "/u/v1/user/pwd_login"] {
            let responses = &doc["paths"][path]["post"]["responses"];
            for status in ["400", "429"] {
                assert_eq!(
                    responses[status]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{path} {status}: {responses}"
                );
            }
            assert!(
                responses["429"]["headers"]["Retry-After"].is_object(),
                "{path}: {responses}"
            );
        }
    }

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc = kit::http::document(ApiDoc::openapi());
        for path in [
            "/u/v1/user/list",
            "/u/v1/user/register",
            "/u/v1/user/pwd_login",
            "/u/v1/user/{id}",
            "/health",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path}");
        }
    }
}
