//! Route handlers of the status API (contract §3) and the fallbacks that keep every other
//! answer in the envelope.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderName, HeaderValue, IF_NONE_MATCH};
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use async_engine_domain::{Detail, IdKind, StatusQuery, TenantId};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::auth::{Caller, Scope};
use crate::envelope::{Envelope, Record};
use crate::error::{ApiError, envelope_response};
use crate::params::{self, StatusRequest};
use crate::watch::{self, WatchKey};
use crate::{AppState, processes, tasks};

const STATUS_PREFIX: &str = "/v1/asyncprocesses/";

/// A route's resource, answering any method it has no route for with a 405 whose `Allow`
/// header is `allow`: the resource's methods, HEAD included for every GET route (served by
/// `guard::head_as_get`). The API's and the dashboard's routes are all made with this.
pub(crate) fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path.to_owned()).default_service(web::to(move |req| method_not_allowed(req, allow)))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    const GET: &str = "GET, HEAD";
    const POST: &str = "POST";
    cfg.service(
        resource("/v1/asyncprocesses", "GET, HEAD, POST")
            .route(web::get().to(processes::list))
            .route(web::post().to(processes::start)),
    )
    .service(resource(&format!("{STATUS_PREFIX}{{id}}"), GET).route(web::get().to(get_status)))
    .service(resource("/v1/asyncprocesses/{id}/events", GET).route(web::get().to(events)))
    .service(
        resource("/v1/asyncprocesses/{id}/steps/{stepNumber}/items", GET)
            .route(web::get().to(processes::items)),
    )
    .service(resource("/v1/asyncprocesses/{id}/deliveries", GET).route(web::get().to(processes::deliveries)))
    .service(resource("/v1/asyncprocesses/{id}/cancel", POST).route(web::post().to(processes::cancel)))
    .service(resource("/v1/asyncprocesses/{id}/retry", POST).route(web::post().to(processes::retry)))
    .service(resource("/v1/actions/getAsyncJobStatus", POST).route(web::post().to(action_status)))
    .service(resource("/v1/processdefinitions", GET).route(web::get().to(processes::definitions)))
    .service(resource("/v1/tasks/claim", POST).route(web::post().to(tasks::claim)))
    .service(resource("/v1/tasks/{taskId}/complete", POST).route(web::post().to(tasks::complete)))
    .service(resource("/v1/tasks/{taskId}/heartbeat", POST).route(web::post().to(tasks::heartbeat)))
    .service(resource("/v1/tasks/{taskId}/fail", POST).route(web::post().to(tasks::fail)))
    .service(resource("/metrics", GET).route(web::get().to(crate::metrics::render)))
    .service(resource("/healthz", GET).route(web::get().to(healthz)))
    .service(resource("/openapi.json", GET).route(web::get().to(crate::openapi::openapi_json)))
    .service(resource("/readyz", GET).route(web::get().to(readyz)));
}

/// Runs storage work on actix's blocking pool: diesel is synchronous.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    // In the request's span, so that what storage logs names the request id too.
    let span = tracing::Span::current();
    web::block(move || span.in_scope(work))
        .await
        .map_err(|e| ApiError::Internal(format!("storage work did not finish: {e}")))
}

/// `GET /v1/asyncprocesses/{id}`, plain, conditional (`If-None-Match`) or waiting
/// (`waitSeconds`, contract §6).
/// The status of processes by asyncProcessId or referenceId (contract §3, §6).
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}", tag = "status", operation_id = "getAsyncProcessStatus",
    params(("id" = String, Path, description = "An asyncProcessId or a referenceId", min_length = 1, max_length = 255),
        ("verbose" = Option<bool>, Query, description = "false: no itemsProcessed"),
        ("itemsList" = Option<bool>, Query, description = "false: steps without their item lists"),
        ("failMessage" = Option<bool>, Query, description = "false: failure groups without statusMessage"),
        ("idType" = Option<crate::openapi::IdType>, Query, description = "Read the ID only as an asyncProcessId or only as a referenceId"),
        ("waitSeconds" = Option<u32>, Query, minimum = 1, maximum = 60, description = "With If-None-Match: hold the answer until it changes, else 304"),
        ("If-None-Match" = Option<String>, Header, description = "ETags already held")),
    responses(
        (status = 202, description = "The records (api.success_code 202, as documented)", body = Envelope),
        (status = 200, description = "The records (api.success_code 200)", body = Envelope),
        (status = 304, description = "Not modified: the held ETag is current"),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 429, description = "Asked again sooner than limits.min_status_interval_secs", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub(crate) async fn get_status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authorize(&req, Scope::StatusRead)?;
    // The raw segment, not actix's match: actix has already decoded it, lossily for bytes
    // that are not UTF-8, and we decode exactly once ourselves.
    let raw = req.uri().path().strip_prefix(STATUS_PREFIX).unwrap_or_default();
    let id = params::parse_path_id(raw)?;
    let request = params::parse_status_query(id, req.query_string())?;
    let wait = params::parse_wait(req.query_string())?;
    let held = if_none_match(&req);
    match wait {
        Some(wait) if !held.is_empty() => {
            watch::long_poll(&state, WatchKey { tenant: caller.tenant, request }, &held, wait).await
        }
        _ => respond(&req, &state, &caller, request).await,
    }
}

/// `GET /v1/asyncprocesses/{id}/events`
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}/events", tag = "status", operation_id = "streamAsyncProcessEvents",
    params(("id" = String, Path, description = "An asyncProcessId or a referenceId", min_length = 1, max_length = 255),
        ("idType" = Option<crate::openapi::IdType>, Query, description = "Read the ID only as an asyncProcessId or only as a referenceId"),
        ("verbose" = Option<bool>, Query, description = "false: no itemsProcessed")),
    responses(
        (status = 200, description = "Server-Sent Events: a status event (the envelope, itemsList=false) now and at each change; closed after a final state", content_type = "text/event-stream", body = String),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub(crate) async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authorize(&req, Scope::StatusRead)?;
    let raw = req.match_info().get("id").unwrap_or_default();
    let id = params::parse_path_id(raw)?;
    let mut request = params::parse_status_query(id, req.query_string())?;
    // Events carry the steps' counters, never item lists: a stream of a large process stays small.
    request.shape.items_list = false;
    watch::event_stream(&state, WatchKey { tenant: caller.tenant, request }).await
}

/// `POST /v1/actions/getAsyncJobStatus`: the page's `getAsyncJobStatus` action.
#[utoipa::path(post, path = "/v1/actions/getAsyncJobStatus", tag = "status", operation_id = "getAsyncJobStatus",
    request_body = crate::openapi::ActionBody,
    responses(
        (status = 202, description = "The records", body = Envelope),
        (status = 200, description = "The records (api.success_code 200)", body = Envelope),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 413, description = "The body is larger than limits.max_body_bytes", body = Envelope),
        (status = 429, description = "Asked again sooner than limits.min_status_interval_secs", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub(crate) async fn action_status(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authorize(&req, Scope::StatusRead)?;
    let body = read_body(&req, payload, state.config.max_body_bytes).await?;
    let request = params::parse_action_body(&body)?;
    respond(&req, &state, &caller, request).await
}

async fn respond(
    req: &HttpRequest,
    state: &AppState,
    caller: &Caller,
    request: StatusRequest,
) -> Result<HttpResponse, ApiError> {
    if let Err(refused) = state.limiter.check(&client(req, caller), request.id.as_str()) {
        metrics::counter!("async_engine_status_reads_limited_total").increment(1);
        return Err(refused);
    }
    let reading = state.clone();
    let tenant = caller.tenant.clone();
    let answer = blocking(move || read_answer(&reading, &tenant, &request)).await??;
    if answer.matches(&if_none_match(req)) {
        return Ok(answer.not_modified());
    }
    Ok(answer.response())
}

/// Who a caller is for the per-client limits (contract §6): its API key, else its address.
fn client(req: &HttpRequest, caller: &Caller) -> String {
    match &caller.key {
        Some(key) => format!("key:{key}"),
        None => req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
    }
}

/// The entity tags of `If-None-Match`, weak or strong alike (a weak comparison, RFC 9110).
fn if_none_match(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all(IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/").to_owned())
        .filter(|tag| !tag.is_empty())
        .collect()
}

/// A status answer ready to send: the same lookup at the same state gives the same bytes, so
/// the same ETag, on every node.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    /// `None` on an error answer.
    pub etag: Option<String>,
    /// Every process in the answer is in a final status: nothing will change any more.
    pub finished: bool,
}

impl Answer {
    pub fn input_error(text: &str) -> Self {
        let body = serde_json::to_vec(&Envelope {
            code: 400,
            status_message: "Input Error",
            technical_message: Some(text),
            records: Vec::new(),
        })
        .unwrap_or_default();
        Answer { status: StatusCode::BAD_REQUEST, body: body.into(), etag: None, finished: false }
    }

    /// The client holds this representation already (`*` holds any).
    pub fn matches(&self, held: &[String]) -> bool {
        self.etag.as_ref().is_some_and(|etag| held.iter().any(|tag| tag == etag || tag == "*"))
    }

    pub fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.content_type("application/json");
        if let Some(etag) = &self.etag {
            response.insert_header((ETAG, etag.as_str()));
        }
        response.body(self.body.clone())
    }

    pub fn not_modified(&self) -> HttpResponse {
        let mut response = HttpResponse::NotModified();
        if let Some(etag) = &self.etag {
            response.insert_header((ETAG, etag.as_str()));
        }
        response.finish()
    }
}

/// Reads and renders one status answer; storage work, so it runs on the blocking pool.
pub fn read_answer(state: &AppState, tenant: &TenantId, request: &StatusRequest) -> Result<Answer, ApiError> {
    let query = StatusQuery {
        tenant: tenant.clone(),
        id: request.id.clone(),
        kind: request.kind,
        detail: request.detail(),
    };
    if query.detail == Detail::Items {
        check_governor_limit(state, &query)?;
    }
    let records = state.status.find_status(&query)?;
    if records.is_empty() {
        let what = match request.kind {
            IdKind::Either => "asyncProcessId or referenceId",
            IdKind::AsyncProcessId => "asyncProcessId",
            IdKind::ReferenceId => "referenceId",
        };
        return Err(ApiError::input(format!("no process has the {what} '{}'", request.id)));
    }
    let code = state.config.success_code.status();
    let body = serde_json::to_vec(&Envelope {
        code: code.as_u16(),
        status_message: "Success",
        technical_message: None,
        records: records.iter().map(|r| Record::new(r, request.shape)).collect(),
    })
    .map_err(|e| ApiError::Internal(format!("the answer could not be written: {e}")))?;
    let digest = Sha256::digest(&body);
    let etag = format!("\"{}\"", hex::encode(&digest[..16]));
    let finished = records.iter().all(|r| r.status.is_final());
    Ok(Answer { status: code, body: body.into(), etag: Some(etag), finished })
}

/// Refuses, before any item is read, an answer that would list more items than
/// `limits.max_items_per_response`: the step counters (a read of a few rows) tell how many.
fn check_governor_limit(state: &AppState, query: &StatusQuery) -> Result<(), ApiError> {
    let limit = state.config.max_items_per_response;
    let counting = StatusQuery { detail: Detail::Steps, ..query.clone() };
    let summary = state.status.find_status(&counting)?;
    let listed: u64 = summary.iter().flat_map(|r| r.steps.iter().flatten()).map(|s| s.processed).sum();
    if listed > limit {
        return Err(ApiError::input(format!(
            "the answer would list {listed} items, over the limit of {limit} \
             (limits.max_items_per_response); ask with itemsList=false or verbose=false, or page \
             through a step's items with GET /v1/asyncprocesses/{{asyncProcessId}}/steps/{{stepNumber}}/items"
        )));
    }
    Ok(())
}

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
        .map_or_else(|| crate::ApiConfig::default().body_timeout, |state| state.config.body_timeout);
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

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound { method: req.method().to_string(), path: req.path().to_owned() })
}

async fn method_not_allowed(req: HttpRequest, allow: &'static str) -> HttpResponse {
    let error = ApiError::MethodNotAllowed { method: req.method().to_string(), path: req.path().to_owned() };
    let mut response = actix_web::ResponseError::error_response(&error);
    let (name, value) = crate::guard::allow_header(allow);
    response.headers_mut().insert(name, value);
    response
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

/// `GET /healthz`: the process is alive and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "getHealth",
    responses((status = 200, description = "Alive", body = crate::openapi::Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers and its schema is current; else 503 with the reason
/// (in words for operators; details in the log).
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "getReadiness",
    responses((status = 200, description = "Ready for traffic", body = crate::openapi::Health),
        (status = 503, description = "Not ready: the database or its schema", body = crate::openapi::Health),
        (status = 500, description = "The check itself failed", body = Envelope)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ops = state.ops.clone();
    // A database that does not answer at all must not hold the probe: 503 after 3 s.
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(3), blocking(move || ops.readiness())).await;
    let checked = match answer {
        Ok(checked) => checked?,
        Err(_) => Err(async_engine_domain::NotReady::Unreachable("no answer within 3 s".into())),
    };
    match checked {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))),
        Err(reason) => {
            tracing::warn!(?reason, "not ready");
            Ok(HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "not ready", "reason": reason.to_string() })))
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::test::TestRequest;
    use async_engine_domain::repository::MockStatusReader;
    use async_engine_domain::{
        Detail, FailureGroup, IdKind, ProcessStatus, RawJson, RepositoryError, Status, StepItems, StepReport,
    };
    use serde_json::{Value, json};

    use crate::{ApiConfig, AppState, SuccessCode, test_support};

    const JSON: (&str, &str) = ("content-type", "application/json");

    fn raw(value: Value) -> RawJson {
        RawJson::from_value(&value)
    }

    fn sample() -> ProcessStatus {
        ProcessStatus {
            async_process_id: "p1".into(),
            reference_id: "r1".into(),
            name: "Bulk CPQ".into(),
            status: Status::InProgress,
            message: "In progress".into(),
            step_name: "Validate".into(),
            current_step_number: 0,
            total_number_of_steps: 1,
            steps: Some(vec![StepReport {
                step_number: 0,
                step_name: "Validate".into(),
                status: Status::InProgress,
                message: "In progress".into(),
                processed: 2,
                total: 3,
                items: Some(StepItems {
                    successfully: vec![raw(json!("a"))],
                    failed: vec![FailureGroup {
                        items: vec![raw(json!({"k": 1}))],
                        code: 5001,
                        status_message: "Invalid status".into(),
                    }],
                }),
            }]),
            additional_data: raw(json!({"x": 1})),
            created_at_micros: 0,
            updated_at_micros: 0,
        }
    }

    async fn call(reader: MockStatusReader, config: ApiConfig, request: TestRequest) -> (u16, Value) {
        let state = AppState { status: Arc::new(reader), config, ..test_support::state() };
        test_support::send(state, request).await
    }

    async fn get(reader: MockStatusReader, uri: &str) -> (u16, Value) {
        call(reader, ApiConfig::default(), TestRequest::get().uri(uri)).await
    }

    fn returning(records: Vec<ProcessStatus>) -> MockStatusReader {
        let mut reader = MockStatusReader::new();
        reader.expect_find_status().returning(move |_| Ok(records.clone()));
        reader
    }

    fn untouched() -> MockStatusReader {
        let mut reader = MockStatusReader::new();
        reader.expect_find_status().never();
        reader
    }

    fn assert_input_error(status: u16, body: &Value, mention: &str) {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["code"], 400);
        assert_eq!(body["statusMessage"], "Input Error");
        assert_eq!(body["AsyncProcessStatus"], json!([]));
        let text = body["technicalMessage"].as_str().unwrap();
        assert!(text.contains(mention), "'{text}' should mention '{mention}'");
    }

    #[actix_web::test]
    async fn success_is_202_with_the_documented_envelope() {
        let (status, body) = get(returning(vec![sample()]), "/v1/asyncprocesses/p1").await;
        assert_eq!(status, 202);
        assert_eq!(
            body,
            json!({
                "code": 202, "statusMessage": "Success", "technicalMessage": null,
                "AsyncProcessStatus": [{
                    "referenceId": "r1", "asyncProcessName": "Bulk CPQ", "asyncProcessId": "p1",
                    "status": "InProgress", "message": "In progress", "stepName": "Validate",
                    "currentStepNumber": 0, "totalNumberOfSteps": 1,
                    "itemsProcessed": [{
                        "stepNumber": 0, "stepName": "Validate", "status": "InProgress",
                        "currentNumberOfItemsProccessed": 2, "totalNumberOfItemsToBeProccessed": 3,
                        "message": "In progress", "successfully": ["a"],
                        "failed": [{ "items": [{"k": 1}], "code": 5001, "statusMessage": "Invalid status" }]
                    }],
                    "additionalData": {"x": 1}
                }]
            })
        );
    }

    #[actix_web::test]
    async fn success_code_200_when_configured() {
        let config = ApiConfig { success_code: SuccessCode::Ok, ..ApiConfig::default() };
        let (status, body) =
            call(returning(vec![sample()]), config, TestRequest::get().uri("/v1/asyncprocesses/p1")).await;
        assert_eq!((status, body["code"].as_u64()), (200, Some(200)));
    }

    #[actix_web::test]
    async fn parameters_choose_the_detail_read_and_the_reading_of_the_id() {
        let cases = [
            ("", Detail::Items, IdKind::Either),
            ("?itemsList=false", Detail::Steps, IdKind::Either),
            ("?verbose=false&itemsList=true", Detail::Process, IdKind::Either),
            ("?failMessage=false&idType=referenceId", Detail::Items, IdKind::ReferenceId),
            ("?idType=asyncProcessId", Detail::Items, IdKind::AsyncProcessId),
        ];
        for (query, detail, kind) in cases {
            let mut reader = MockStatusReader::new();
            if detail == Detail::Items {
                // The governor limit counts items from the steps first.
                reader
                    .expect_find_status()
                    .withf(|q| q.detail == Detail::Steps)
                    .times(1)
                    .returning(|_| Ok(vec![sample()]));
            }
            reader
                .expect_find_status()
                .withf(move |q| {
                    q.detail == detail
                        && q.kind == kind
                        && q.tenant.as_str() == "default"
                        && q.id.as_str() == "p 1"
                })
                .times(1)
                .returning(|_| Ok(vec![sample()]));
            let (status, _) = get(reader, &format!("/v1/asyncprocesses/p%201{query}")).await;
            assert_eq!(status, 202, "{query}");
        }
    }

    #[actix_web::test]
    async fn parameters_remove_the_documented_keys() {
        let (_, body) = get(returning(vec![sample()]), "/v1/asyncprocesses/p1?verbose=false").await;
        assert!(body["AsyncProcessStatus"][0].get("itemsProcessed").is_none());
        assert_eq!(body["AsyncProcessStatus"][0]["additionalData"], json!({"x": 1}));
        let (_, body) = get(returning(vec![sample()]), "/v1/asyncprocesses/p1?itemsList=false").await;
        let step = &body["AsyncProcessStatus"][0]["itemsProcessed"][0];
        assert!(step.get("successfully").is_none() && step.get("failed").is_none());
        assert_eq!(step["currentNumberOfItemsProccessed"], 2);
        let (_, body) = get(returning(vec![sample()]), "/v1/asyncprocesses/p1?failMessage=false").await;
        let failed = &body["AsyncProcessStatus"][0]["itemsProcessed"][0]["failed"][0];
        assert_eq!(failed, &json!({ "items": [{"k": 1}], "code": 5001 }));
    }

    #[actix_web::test]
    async fn each_input_error_is_a_400_envelope() {
        let (status, body) = get(untouched(), "/v1/asyncprocesses/p1?verbose=maybe").await;
        assert_input_error(status, &body, "verbose");
        let (status, body) = get(untouched(), "/v1/asyncprocesses/p1?itemsList=").await;
        assert_input_error(status, &body, "itemsList");
        let (status, body) = get(untouched(), "/v1/asyncprocesses/p1?failMessage=no").await;
        assert_input_error(status, &body, "failMessage");
        let (status, body) = get(untouched(), "/v1/asyncprocesses/p1?idType=tenant").await;
        assert_input_error(status, &body, "idType");
        let (status, body) = get(untouched(), &format!("/v1/asyncprocesses/{}", "9".repeat(300))).await;
        assert_input_error(status, &body, "255");
        let (status, body) = get(untouched(), "/v1/asyncprocesses/%FF").await;
        assert_input_error(status, &body, "UTF-8");
        let (status, body) = get(returning(vec![]), "/v1/asyncprocesses/nope").await;
        assert_input_error(status, &body, "'nope'");
    }

    #[actix_web::test]
    async fn each_action_input_error_is_a_400_envelope() {
        for (payload, mention) in [
            (&b"{}"[..], "exactly one"),
            (br#"{"id":"1","verbose":"maybe"}"#, "verbose"),
            (br#"{"id":5}"#, "id must be a string"),
            (b"{not json", "not valid JSON"),
            (b"[]", "JSON object"),
        ] {
            let request = TestRequest::post()
                .uri("/v1/actions/getAsyncJobStatus")
                .set_payload(payload.to_vec())
                .insert_header(JSON);
            let (status, body) = call(untouched(), ApiConfig::default(), request).await;
            assert_input_error(status, &body, mention);
        }
    }

    #[actix_web::test]
    async fn the_action_call_answers_like_the_get() {
        let mut reader = MockStatusReader::new();
        reader
            .expect_find_status()
            .withf(|q| q.kind == IdKind::AsyncProcessId && q.detail == Detail::Steps)
            .returning(|_| Ok(vec![sample()]));
        let request = TestRequest::post()
            .uri("/v1/actions/getAsyncJobStatus")
            .set_json(json!({"asyncProcessId": "p1", "itemsList": false}));
        let (status, body) = call(reader, ApiConfig::default(), request).await;
        assert_eq!(status, 202);
        assert_eq!(body["AsyncProcessStatus"][0]["asyncProcessId"], "p1");
    }

    #[actix_web::test]
    async fn an_answer_over_the_governor_limit_is_refused_before_items_are_read() {
        let mut reader = MockStatusReader::new();
        // Only the counting read happens; the sample lists 2 processed items per record.
        reader
            .expect_find_status()
            .withf(|q| q.detail == Detail::Steps)
            .times(1)
            .returning(|_| Ok(vec![sample(), sample()]));
        let config = ApiConfig { max_items_per_response: 3, ..ApiConfig::default() };
        let (status, body) = call(reader, config, TestRequest::get().uri("/v1/asyncprocesses/r1")).await;
        assert_input_error(status, &body, "would list 4 items, over the limit of 3");
        assert!(body["technicalMessage"].as_str().unwrap().contains("itemsList=false"));
        // At the limit, or without item lists, the answer is given.
        let config = ApiConfig { max_items_per_response: 4, ..ApiConfig::default() };
        let (status, _) = call(
            returning(vec![sample(), sample()]),
            config,
            TestRequest::get().uri("/v1/asyncprocesses/r1"),
        )
        .await;
        assert_eq!(status, 202);
        let config = ApiConfig { max_items_per_response: 1, ..ApiConfig::default() };
        let request = TestRequest::get().uri("/v1/asyncprocesses/r1?itemsList=false");
        assert_eq!(call(returning(vec![sample(), sample()]), config, request).await.0, 202);
    }

    #[actix_web::test]
    async fn a_failing_repository_is_a_500_without_its_details() {
        for error in [
            RepositoryError::Failed("disk I/O error in /var/secret/db.sqlite".into()),
            RepositoryError::Unavailable("pool timed out /var/secret".into()),
        ] {
            let mut reader = MockStatusReader::new();
            reader.expect_find_status().returning(move |_| Err(error.clone()));
            let (status, body) = get(reader, "/v1/asyncprocesses/p1").await;
            assert_eq!(status, 500);
            assert_eq!(body["code"], 500);
            assert_eq!(body["statusMessage"], "Internal Error");
            assert!(!body.to_string().contains("secret"), "{body}");
        }
    }

    #[actix_web::test]
    async fn unknown_routes_wrong_methods_and_large_bodies_keep_the_envelope() {
        let (status, body) = get(untouched(), "/v1/nothing-here").await;
        assert_eq!((status, body["code"].as_u64()), (404, Some(404)));
        let (status, body) =
            call(untouched(), ApiConfig::default(), TestRequest::delete().uri("/v1/asyncprocesses/p1")).await;
        assert_eq!((status, body["code"].as_u64()), (405, Some(405)));
        let (status, _) =
            call(untouched(), ApiConfig::default(), TestRequest::get().uri("/v1/actions/getAsyncJobStatus"))
                .await;
        assert_eq!(status, 405);
        let config = ApiConfig { max_body_bytes: 300, ..ApiConfig::default() };
        let big = format!(r#"{{"id":"{}"}}"#, "x".repeat(400));
        let request =
            TestRequest::post().uri("/v1/actions/getAsyncJobStatus").set_payload(big).insert_header(JSON);
        let (status, body) = call(untouched(), config, request).await;
        assert_eq!((status, body["statusMessage"].as_str()), (413, Some("Payload Too Large")));
    }
}
