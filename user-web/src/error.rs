//! The one error type of the REST edge and its JSON form
//! `{"error":{"code","message","fields"?}}`. gRPC statuses from user-srv map here once.

use std::collections::BTreeMap;

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic_types::StatusExt;

/// Every failure a client can see, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a malformed query or body, or a field user-srv refused (`fields` names them).
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
    /// 503: no user-srv instance, or user-srv cannot serve right now.
    #[error("the user service is unavailable")]
    Unavailable,
    /// 504: user-srv did not answer within the deadline.
    #[error("the user service did not answer in time")]
    Timeout,
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
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The `google.rpc.BadRequest` field violations user-srv attaches, by field.
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
            Code::PermissionDenied => Self::Forbidden,
            Code::Unavailable => {
                tracing::warn!(status = %status.message(), "user-srv unavailable");
                Self::Unavailable
            }
            Code::DeadlineExceeded => Self::Timeout,
            code => {
                tracing::error!(?code, message = %status.message(), "user-srv call failed");
                Self::Internal
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
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
        (status, Json(body)).into_response()
    }
}
