//! REST handlers under `/u/v1`, their JSON types and the OpenAPI document generated from
//! them. Handlers translate HTTP to user-srv calls and back; rules live in user-srv.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use kit::{
    http::{
        AdminUser, ApiError, AuthUser, CallContext, ErrorBody, JsonBody, QueryParams,
        throttle::Limiter,
    },
    upstream::Retry,
};
use proto::user_v1::{
    CreateUserInfo, IdRequest, PageInfo, UserInfoResponse, VerifyPasswordRequest,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

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

/// Largest page a REST client may ask for. user-srv caps larger sizes silently (mxshop's
/// rule, kept for gRPC clients); here they are refused, so a client never takes a short
/// page for the whole of what it asked.
pub const MAX_PAGE_SIZE: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page number, from 1 (0 or absent means 1).
    #[param(minimum = 0, maximum = 4294967295_u64, format = Int64)]
    pub pn: Option<u32>,
    /// Page size, at most 100 (0 or absent means 10); larger is a 400.
    #[param(minimum = 0, maximum = 100, format = Int32)]
    pub psize: Option<u32>,
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

#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    /// 11 digits starting with 1.
    #[schema(pattern = "^1[0-9]{10}$", example = "13912345678")]
    pub mobile: String,
    /// 6 to 64 characters.
    #[schema(min_length = 6, max_length = 64, example = "s3cret-pass")]
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

/// Unix seconds to a UTC calendar date (Howard Hinnant's civil-from-days).
pub fn iso_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

impl From<UserInfoResponse> for UserView {
    fn from(u: UserInfoResponse) -> Self {
        Self {
            id: u.id,
            mobile: u.mobile,
            nick_name: u.nick_name,
            birthday: (u.birthday != 0).then(|| iso_date(u.birthday)),
            gender: u.gender,
            role: u.role,
        }
    }
}

/// Counts one attempt against the client's and the mobile's limits (the client's first, so a
/// refused client spends nothing of the mobile's).
fn limit(
    per_ip: &Limiter,
    per_mobile: &Limiter,
    ctx: &CallContext,
    body: &Credentials,
) -> Result<(), ApiError> {
    if let Some(ip) = ctx.client_ip {
        per_ip.check(&ip.to_string())?;
    }
    // A mobile that cannot be valid is refused by user-srv anyway; only real ones take room.
    if body.mobile.len() <= 16 {
        per_mobile.check(&body.mobile)?;
    }
    Ok(())
}

fn invalid_credentials() -> ApiError {
    ApiError::Unauthenticated {
        code: "invalid_credentials",
        message: "wrong mobile or password".into(),
    }
}

/// A page of users (admins only).
#[utoipa::path(get, path = "/u/v1/user/list", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = UserList),
        (status = 400, body = ErrorBody, description = "a malformed query, or psize above 100"),
        (status = 401, body = ErrorBody, description = "no token, or a bad or expired one"),
        (status = 403, body = ErrorBody, description = "not an admin"),
        (status = 503, body = ErrorBody, description = "user-srv is unavailable (`unavailable`), or this gateway or user-srv is overloaded (`overloaded`, with Retry-After)",
            headers(("Retry-After" = u64, description = "seconds to wait, when overloaded"))),
        (status = 504, body = ErrorBody, description = "user-srv did not answer in time")))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    ctx: CallContext,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<UserList>, ApiError> {
    if let Some(size) = q.psize.filter(|s| *s > MAX_PAGE_SIZE) {
        let why = format!("must be at most {MAX_PAGE_SIZE}, got {size}");
        return Err(ApiError::BadRequest {
            message: format!("psize: {why}"),
            fields: [("psize".to_owned(), why)].into(),
        });
    }
    let page = PageInfo {
        // Absent is 0: the service applies its own defaults, kept in one place there.
        pn: q.pn.unwrap_or(0),
        p_size: q.psize.unwrap_or(0),
    };
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

/// Creates a user and logs them in.
#[utoipa::path(post, path = "/u/v1/user/register", request_body = Credentials,
    responses((status = 201, body = TokenResponse),
        (status = 400, body = ErrorBody, description = "a malformed body, mobile or password"),
        (status = 409, body = ErrorBody, description = "the mobile is already registered"),
        (status = 429, body = ErrorBody, description = "too many sign-ups from this client or for this mobile",
            headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 503, body = ErrorBody, description = "user-srv is unavailable (`unavailable`), or this gateway or user-srv is overloaded (`overloaded`, with Retry-After)",
            headers(("Retry-After" = u64, description = "seconds to wait, when overloaded"))),
        (status = 504, body = ErrorBody, description = "user-srv did not answer in time")))]
pub async fn register(
    State(state): State<AppState>,
    ctx: CallContext,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    limit(
        &state.limits.register_per_ip,
        &state.limits.register_per_mobile,
        &ctx,
        &body,
    )?;
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
    let (token, expired_at) = state.tokens.issue(user.id, user.role, &user.nick_name)?;
    Ok((
        StatusCode::CREATED,
        Json(TokenResponse {
            id: user.id,
            nick_name: user.nick_name,
            token,
            expired_at,
        }),
    ))
}

/// Logs in with mobile and password.
#[utoipa::path(post, path = "/u/v1/user/pwd_login", request_body = Credentials,
    responses((status = 200, body = TokenResponse),
        (status = 400, body = ErrorBody, description = "a malformed body, mobile or password"),
        (status = 401, body = ErrorBody, description = "wrong mobile or password (one answer for both)"),
        (status = 429, body = ErrorBody, description = "too many attempts from this client or for this mobile",
            headers(("Retry-After" = u64, description = "seconds to wait"))),
        (status = 503, body = ErrorBody, description = "user-srv is unavailable (`unavailable`), or this gateway or user-srv is overloaded (`overloaded`, with Retry-After)",
            headers(("Retry-After" = u64, description = "seconds to wait, when overloaded"))),
        (status = 504, body = ErrorBody, description = "user-srv did not answer in time")))]
pub async fn pwd_login(
    State(state): State<AppState>,
    ctx: CallContext,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<TokenResponse>, ApiError> {
    limit(
        &state.limits.login_per_ip,
        &state.limits.login_per_mobile,
        &ctx,
        &body,
    )?;
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
    let (token, expired_at) = state.tokens.issue(user.id, user.role, &user.nick_name)?;
    Ok(Json(TokenResponse {
        id: user.id,
        nick_name: user.nick_name,
        token,
        expired_at,
    }))
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
        (status = 503, body = ErrorBody, description = "user-srv is unavailable (`unavailable`), or this gateway or user-srv is overloaded (`overloaded`, with Retry-After)",
            headers(("Retry-After" = u64, description = "seconds to wait, when overloaded"))),
        (status = 504, body = ErrorBody, description = "user-srv did not answer in time")))]
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
    components(schemas(UserView, UserList, Credentials, TokenResponse, ErrorBody))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(646_790_400), "1990-07-01");
        assert_eq!(iso_date(951_782_400), "2000-02-29");
        assert_eq!(iso_date(4_102_444_799), "2099-12-31");
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
