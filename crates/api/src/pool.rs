//! Running storage work: diesel is synchronous, so every store call of a request runs on
//! actix's blocking pool, in the request's span.

use actix_web::web;

use crate::error::ApiError;

/// Runs storage work on actix's blocking pool: diesel is synchronous.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    // In the request's span, so that what storage logs names the request id too.
    let span = tracing::Span::current();
    web::block(move || span.in_scope(work))
        .await
        .map_err(|e| ApiError::Internal(format!("storage work did not finish: {e}")))
}
