//! The one error type of the REST edge and its JSON form
//! `{"error":{"code","message","fields"?}}`. gRPC statuses from upstream services map here,
//! once, for every gateway.

use std::{borrow::Cow, collections::BTreeMap};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic_types::StatusExt;
use utoipa::openapi::{self, RefOr};

/// Every failure a client can see, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed query or body, or a field the service refused (`fields` names them).
    #[error("{message}")]
    BadRequest {
        message: String,
        fields: BTreeMap<String, String>,
    },
    /// 401: no token, a bad or expired one, or wrong credentials.
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// 403: authenticated, but not allowed.
    #[error("not allowed")]
    Forbidden,
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 409: e.g. the mobile is already registered.
    #[error("{message}")]
    Conflict {
        message: String,
        fields: BTreeMap<String, String>,
    },
    /// 429: too many attempts from this client or for this account; `Retry-After` says when
    /// to try again.
    #[error("too many attempts; retry in {}s", retry_after_secs(*retry_after))]
    TooManyRequests { retry_after: std::time::Duration },
    /// 503: no instance of the named upstream service, or it cannot serve right now.
    #[error("{0} is unavailable")]
    Unavailable(Cow<'static, str>),
    /// 503 with `Retry-After`: the named service (this gateway, or every instance of an
    /// upstream) is over its concurrency limit and refused the call without doing it.
    #[error("{0} is overloaded; retry later")]
    Overloaded(Cow<'static, str>),
    /// 504: the named upstream service did not answer within the deadline.
    #[error("{0} did not answer in time")]
    Timeout(Cow<'static, str>),
    /// 500: details are logged, never returned.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            fields: BTreeMap::new(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Self::Unauthenticated { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden => (StatusCode::FORBIDDEN, "permission_denied"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict { .. } => (StatusCode::CONFLICT, "already_exists"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The `google.rpc.BadRequest` field violations a service attaches, by field.
fn field_violations(status: &tonic::Status) -> BTreeMap<String, String> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(status, "the upstream service")
    }
}

impl ApiError {
    /// What a status from upstream service `service` means to a REST client.
    pub fn from_status(status: tonic::Status, service: impl Into<Cow<'static, str>>) -> Self {
        match status.code() {
            Code::InvalidArgument => Self::BadRequest {
                message: status.message().to_owned(),
                fields: field_violations(&status),
            },
            Code::NotFound => Self::NotFound(status.message().to_owned()),
            Code::AlreadyExists => Self::Conflict {
                message: status.message().to_owned(),
                fields: field_violations(&status),
            },
            Code::Unauthenticated => Self::Unauthenticated {
                code: "unauthenticated",
                message: status.message().to_owned(),
            },
            Code::PermissionDenied => {
                // The upstream refused this gateway itself (Connect intentions): nothing the
                // client can change, so it is the upstream's absence to them.
                let service = service.into();
                tracing::error!(%service, status = %status.message(), "the upstream refused this gateway");
                Self::Unavailable(service)
            }
            Code::Unavailable => {
                let service = service.into();
                tracing::warn!(%service, status = %status.message(), "upstream unavailable");
                Self::Unavailable(service)
            }
            Code::DeadlineExceeded => Self::Timeout(service.into()),
            Code::ResourceExhausted => Self::Overloaded(service.into()),
            code => {
                let service = service.into();
                tracing::error!(%service, ?code, message = %status.message(), "upstream call failed");
                Self::Internal
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What any route that calls an upstream service may also answer, for its OpenAPI document
/// (`responses(…, UpstreamFailures)`): 503 `unavailable`, 503 `overloaded` with
/// `Retry-After` (this gateway or every instance of the upstream over its limit), 504.
#[derive(Debug)]
pub struct UpstreamFailures;

impl utoipa::IntoResponses for UpstreamFailures {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        use openapi::{
            ContentBuilder, HeaderBuilder, KnownFormat, ObjectBuilder, Ref, ResponseBuilder,
            ResponsesBuilder, SchemaFormat, Type,
        };
        let body = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build()
        };
        let retry_after = HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
            )
            .description(Some("seconds to wait, when overloaded"))
            .build();
        ResponsesBuilder::new()
            .response(
                "503",
                ResponseBuilder::new()
                    .description(
                        "the upstream service is unavailable (`unavailable`), or this gateway \
                         or the upstream is overloaded (`overloaded`, with Retry-After)",
                    )
                    .content("application/json", body())
                    .header("Retry-After", retry_after),
            )
            .response(
                "504",
                ResponseBuilder::new()
                    .description("the upstream service did not answer in time")
                    .content("application/json", body()),
            )
            .build()
            .into()
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_argument`, `not_found`.
    pub code: String,
    pub message: String,
    /// Per-field problems, when the request had invalid fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, String>>,
}

impl ApiError {
    /// Status, headers and JSON body of this error's answer: what [`IntoResponse`] sends, in
    /// parts that can be kept and sent again (the edge's prebuilt overload refusal).
    pub(crate) fn answer(&self) -> (StatusCode, HeaderMap, axum::body::Bytes) {
        let (status, code) = self.parts();
        let fields = match &self {
            Self::BadRequest { fields, .. } | Self::Conflict { fields, .. }
                if !fields.is_empty() =>
            {
                Some(fields.clone())
            }
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                fields,
            },
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let retry_after = match self {
            Self::TooManyRequests { retry_after } => Some(*retry_after),
            Self::Overloaded(_) => Some(OVERLOADED_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(retry_after)),
            );
        }
        // Serializing plain strings and maps cannot fail; an empty body is the fallback.
        let body = serde_json::to_vec(&body).map_or_else(|_| axum::body::Bytes::new(), Into::into);
        (status, headers, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.answer().into_response()
    }
}

/// How long a client refused for overload is asked to wait: long enough for the limit to
/// have moved many times, short enough that a passing burst costs little.
pub const OVERLOADED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Whole seconds, rounded up and at least 1, as `Retry-After` takes them.
fn retry_after_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}
