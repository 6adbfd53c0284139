//! The middleware in front of every route, other than CORS and the security headers: the
//! request guard, the request log and metrics, and the envelope for answers actix made itself.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{ResponseError, web};
use tracing::Instrument;

use crate::error::envelope_response;
use crate::guard::refuse;
use crate::state::AppState;

/// The middleware: refuses, in the envelope, what a foreign page or a confused client could
/// send; everything else goes on unchanged.
pub async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refusal = req.app_data::<web::Data<AppState>>().and_then(|state| refuse(&req, &state.guard).err());
    match refusal {
        Some(error) => {
            let response = error.error_response();
            Ok(req.into_response(response).map_into_right_body())
        }
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// The request id header, taken from the caller when it sends a sensible one.
const REQUEST_ID: &str = "x-request-id";

/// Every request: an id (the caller's `X-Request-Id` when it is 1 to 128 visible ASCII
/// characters, else a new one), echoed in the answer; a span carrying it, so every log line of
/// the request names it; one log line at the end; and the request metrics, by route pattern
/// (bounded, unlike paths) and status.
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let method = req.method().clone();
    // A label per standard method only: callers can invent methods, and each would be a new
    // series.
    let method_label = match method.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method.as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let path = req.path().to_owned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HeaderName::from_static(REQUEST_ID), value);
    }
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    let labels = [("route", route), ("method", method_label), ("status", status.to_string())];
    metrics::counter!("async_engine_http_requests_total", &labels).increment(1);
    metrics::histogram!("async_engine_http_request_duration_seconds", &labels).record(seconds);
    let millis = seconds * 1000.0;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(%method, %path, status, millis, "request");
        } else {
            tracing::info!(%method, %path, status, millis, "request");
        }
    });
    Ok(response)
}

/// Last line of defence: an error answer that is not already our JSON envelope (one produced
/// by actix itself) is replaced by the envelope for its status.
pub fn ensure_envelope<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // The dashboard's own error pages are HTML on purpose.
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (req, _) = res.into_parts();
    let status_message = match status {
        StatusCode::BAD_REQUEST => "Input Error",
        s if s.is_server_error() => "Internal Error",
        s => s.canonical_reason().unwrap_or("Error"),
    };
    let reason = status.canonical_reason().unwrap_or("request failed");
    let response = envelope_response(status, status_message, reason);
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, response).map_into_right_body()))
}
