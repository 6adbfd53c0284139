//! The API's one error type and the one table that maps each kind to an HTTP status and the
//! envelope's `statusMessage`. Internal details are logged here and never sent.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use async_engine_domain::RepositoryError;

use crate::envelope::Envelope;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The caller's mistake; the text is shown to the caller, so it never holds internals.
    #[error("{0}")]
    Input(String),
    #[error("no such route: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// No bearer token, or one that is not a key of this server.
    #[error("{0}")]
    Unauthorized(String),
    /// The key lacks the scope the call needs.
    #[error("{0}")]
    Forbidden(String),
    /// A stale or unknown task lease: nothing was recorded.
    #[error("{0}")]
    Conflict(String),
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body did not arrive within `server.body_timeout_secs`.
    #[error("the request body did not arrive within {secs} s (server.body_timeout_secs)")]
    BodyTimeout { secs: u64 },
    /// A `/v1` body that is not JSON: a page on another site can send those without asking.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A `Host` this server does not answer to (`server.allowed_hosts`).
    #[error("{0}")]
    MisdirectedRequest(String),
    #[error("the request target (path and query) is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The same status asked for again sooner than `limits.min_status_interval_secs`.
    #[error(
        "this process's status was asked for less than {interval_secs} s ago \
         (limits.min_status_interval_secs); ask again in {retry_after_secs} s, or wait for a \
         change with waitSeconds or the events stream"
    )]
    TooManyRequests { interval_secs: u64, retry_after_secs: u64 },
    /// Too many failed authentications from one client address (`auth.max_failures_per_minute`).
    #[error(
        "too many failed authentications from this address (auth.max_failures_per_minute); \
         try again in {retry_after_secs} s"
    )]
    AuthThrottled { retry_after_secs: u64 },
    /// A caller (its API key, or without auth its address) already holds
    /// `limits.max_waiting_claims_per_key` claims with `waitSeconds`, and nothing was due.
    #[error(
        "nothing is due, and this caller (its API key; without auth, its address) already has \
         {limit} claims waiting (limits.max_waiting_claims_per_key); try again in \
         {retry_after_secs} s"
    )]
    TooManyWaitingClaims { limit: usize, retry_after_secs: u64 },
    /// Anything that is not the caller's fault; the text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What callers see instead of an internal error's details.
const INTERNAL_TEXT: &str = "the server could not complete the request; the cause is in its log";

impl ApiError {
    /// The table: HTTP status and `statusMessage` of every error kind.
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Input(_) => (StatusCode::BAD_REQUEST, "Input Error"),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "Not Found"),
            ApiError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
            ApiError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
            }
            ApiError::MisdirectedRequest(_) => (StatusCode::MISDIRECTED_REQUEST, "Misdirected Request"),
            ApiError::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "URI Too Long"),
            ApiError::TooManyRequests { .. }
            | ApiError::AuthThrottled { .. }
            | ApiError::TooManyWaitingClaims { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Error"),
        }
    }

    pub fn input(text: impl Into<String>) -> Self {
        ApiError::Input(text.into())
    }
}

impl From<RepositoryError> for ApiError {
    fn from(error: RepositoryError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, status_message) = self.parts();
        let shown = match self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                INTERNAL_TEXT.to_owned()
            }
            other => other.to_string(),
        };
        let mut response = envelope_response(status, status_message, &shown);
        match self {
            ApiError::TooManyRequests { retry_after_secs, .. }
            | ApiError::AuthThrottled { retry_after_secs }
            | ApiError::TooManyWaitingClaims { retry_after_secs, .. } => {
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// An error envelope for any status; also used for errors raised outside the handlers.
pub fn envelope_response(status: StatusCode, status_message: &str, technical_message: &str) -> HttpResponse {
    HttpResponse::build(status).json(Envelope {
        code: status.as_u16(),
        status_message,
        technical_message: Some(technical_message),
        records: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.error_response();
        let status = response.status();
        let bytes = to_bytes(response.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[actix_web::test]
    async fn internal_details_stay_out_of_the_body() {
        let (status, body) = body(ApiError::Internal("disk I/O error at /secret/path.db".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["code"], 500);
        assert_eq!(body["statusMessage"], "Internal Error");
        assert!(!body.to_string().contains("/secret/path.db"));
        assert_eq!(body["AsyncProcessStatus"], serde_json::json!([]));
    }

    #[actix_web::test]
    async fn every_kind_has_its_code_in_the_body() {
        let kinds = [
            (ApiError::input("bad"), 400, "Input Error"),
            (ApiError::NotFound { method: "GET".into(), path: "/x".into() }, 404, "Not Found"),
            (
                ApiError::MethodNotAllowed { method: "PUT".into(), path: "/x".into() },
                405,
                "Method Not Allowed",
            ),
            (ApiError::Unauthorized("who".into()), 401, "Unauthorized"),
            (ApiError::Forbidden("no".into()), 403, "Forbidden"),
            (ApiError::Conflict("stale".into()), 409, "Conflict"),
            (ApiError::PayloadTooLarge { limit: 10 }, 413, "Payload Too Large"),
            (ApiError::BodyTimeout { secs: 3 }, 408, "Request Timeout"),
            (ApiError::UnsupportedMediaType("text/plain".into()), 415, "Unsupported Media Type"),
            (ApiError::MisdirectedRequest("evil.example".into()), 421, "Misdirected Request"),
            (ApiError::UriTooLong { limit: 8 }, 414, "URI Too Long"),
            (ApiError::TooManyRequests { interval_secs: 60, retry_after_secs: 5 }, 429, "Too Many Requests"),
            (ApiError::AuthThrottled { retry_after_secs: 6 }, 429, "Too Many Requests"),
            (ApiError::TooManyWaitingClaims { limit: 16, retry_after_secs: 1 }, 429, "Too Many Requests"),
        ];
        for (error, code, text) in kinds {
            let (status, body) = body(error).await;
            assert_eq!(status.as_u16(), code);
            assert_eq!(body["code"], code);
            assert_eq!(body["statusMessage"], text);
            assert!(body["technicalMessage"].as_str().is_some_and(|t| !t.is_empty()));
        }
    }
}
