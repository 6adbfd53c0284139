//! Reading request bodies: bounded in size and in time.

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;

use crate::error::ApiError;
use crate::state::AppState;

/// Reads a request body of at most `limit` bytes, refusing a larger one before reading it
/// when its length is declared, and one that takes longer than `server.body_timeout_secs` to
/// arrive (a client trickling bytes would otherwise hold its connection for ever).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map_or_else(|| crate::state::ApiConfig::default().body_timeout, |state| state.config.body_timeout);
    let reading = async {
        let mut body = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = payload.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::input(format!("the request body could not be read: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match tokio::time::timeout(timeout, reading).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::BodyTimeout { secs: timeout.as_secs() }),
    }
}
