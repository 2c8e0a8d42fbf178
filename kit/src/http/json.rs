//! JSON answers, written into one buffer with room for a page of results. axum's `Json`
//! writes through a `BytesMut` writer that starts at 128 bytes and grows as it goes; this
//! one saves user-web ~15 k instructions on a list of ten users (8 % of the request,
//! `make bench-instructions`, `bench/RESULTS.md`).

use axum::{
    body::Bytes,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::ApiError;

/// Room for a typical answer: a page of ten users is ~1.2 KB. A larger one grows the buffer.
const INITIAL_CAPACITY: usize = 2048;

/// A `200` (or, in a tuple, any status) whose body is `T` as JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(INITIAL_CAPACITY);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                Bytes::from(body),
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "an answer could not be written as JSON");
                ApiError::Internal.into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::http::StatusCode;

    use super::*;

    async fn answer(r: Response) -> (StatusCode, Option<String>, String) {
        let status = r.status();
        let kind = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        (status, kind, body.unwrap_or_default())
    }

    #[tokio::test]
    async fn writes_what_serde_json_writes_small_or_past_the_first_buffer() {
        #[derive(Serialize)]
        struct Page {
            total: i64,
            data: Vec<String>,
        }
        for n in [0, 3, 500] {
            let page = Page {
                total: n,
                data: (0..n).map(|i| format!("user \"{i}\" ✓")).collect(),
            };
            let expected = serde_json::to_string(&page).unwrap_or_default();
            let (status, kind, body) = answer(Json(page).into_response()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(kind.as_deref(), Some("application/json"));
            assert_eq!(body, expected, "{n} entries");
        }
        let (status, _, _) = answer((StatusCode::CREATED, Json(1)).into_response()).await;
        assert_eq!(status, StatusCode::CREATED);
    }

    #[tokio::test]
    async fn a_value_json_cannot_hold_is_a_500_that_shows_nothing_of_it() {
        // JSON object keys are strings; a map keyed by pairs cannot be written.
        let mut map = BTreeMap::new();
        map.insert((1, 2), "secret");
        let (status, kind, body) = answer(Json(map).into_response()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(kind.as_deref(), Some("application/json"));
        assert!(body.contains("\"internal\""), "{body}");
        assert!(!body.contains("secret"), "{body}");
    }
}
