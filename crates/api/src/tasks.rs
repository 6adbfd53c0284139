//! The external workers' calls (contract §4.4): claim, complete, heartbeat, fail. Answers are
//! plain JSON; errors use the envelope.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use async_engine_domain::{ClaimRequest, FailureSnapshot, TaskError, TaskReport};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::clock::{now_micros, rfc3339};
use crate::error::ApiError;
use crate::handlers::{blocking, read_body};

const MAX_TASKS: u32 = 100;
const MAX_LEASE_SECS: u64 = 3_600;
const MAX_WAIT_SECS: u64 = 30;
/// How often a waiting claim looks again.
const WAIT_POLL: Duration = Duration::from_millis(200);

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::input(format!("invalid body: {e}")))
}

fn task_error(error: TaskError) -> ApiError {
    match error {
        TaskError::Conflict(text) => ApiError::Conflict(text),
        TaskError::Invalid(text) => ApiError::Input(text),
        TaskError::Storage(error) => error.into(),
    }
}

fn task_id(req: &HttpRequest) -> Result<i64, ApiError> {
    req.match_info()
        .get("taskId")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| ApiError::input("taskId must be a whole number"))
}

fn check_text(name: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::input(format!(
            "{name} must have 1 to {max} characters and no control characters"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimBody {
    queue: String,
    worker_id: String,
    #[serde(default)]
    max_tasks: Option<u32>,
    #[serde(default)]
    lease_seconds: Option<u64>,
    #[serde(default)]
    wait_seconds: Option<u64>,
}

/// `POST /v1/tasks/claim`
pub async fn claim(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: ClaimBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    let name = body.queue.strip_prefix("queue:").unwrap_or(&body.queue);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(ApiError::input("queue must be the NAME of a queue:NAME step handler"));
    }
    check_text("workerId", &body.worker_id, 255)?;
    let max_tasks = body.max_tasks.unwrap_or(1);
    if !(1..=MAX_TASKS).contains(&max_tasks) {
        return Err(ApiError::input(format!("maxTasks must be 1..={MAX_TASKS}")));
    }
    let lease = body.lease_seconds.unwrap_or(state.config.default_lease_secs);
    if !(1..=MAX_LEASE_SECS).contains(&lease) {
        return Err(ApiError::input(format!("leaseSeconds must be 1..={MAX_LEASE_SECS}")));
    }
    let wait = body.wait_seconds.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::input(format!("waitSeconds must be 0..={MAX_WAIT_SECS}")));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    let queue = format!("queue:{name}");
    loop {
        let request = ClaimRequest {
            queues: vec![queue.clone()],
            worker_id: body.worker_id.clone(),
            max_tasks,
            lease_micros: i64::try_from(lease * 1_000_000).unwrap_or(i64::MAX),
            now_micros: now_micros(),
        };
        let store = state.tasks.clone();
        let tasks = blocking(move || store.claim(&request)).await??;
        if !tasks.is_empty() || Instant::now() >= deadline {
            let tasks: Vec<_> = tasks
                .iter()
                .map(|t| {
                    json!({
                        "taskId": t.task_id,
                        "leaseToken": t.lease_token,
                        "asyncProcessId": t.async_process_id,
                        "referenceId": t.reference_id,
                        "asyncProcessName": t.process_name,
                        "stepNumber": t.step_number,
                        "stepName": t.step_name,
                        "attempt": t.attempt,
                        "leaseExpiresAt": rfc3339(t.lease_expires_at_micros),
                        "additionalData": t.additional_data,
                        "items": t.items.iter().map(|(index, item)| json!({ "index": index, "item": item })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            return Ok(HttpResponse::Ok().json(json!({ "tasks": tasks })));
        }
        actix_web::rt::time::sleep(WAIT_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailedGroup {
    items: Vec<u64>,
    #[serde(alias = "statusCode")]
    code: i64,
    status_message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CompleteBody {
    lease_token: String,
    #[serde(default)]
    successfully: Vec<u64>,
    #[serde(default)]
    failed: Vec<FailedGroup>,
}

/// `POST /v1/tasks/{taskId}/complete`
pub async fn complete(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&req)?;
    let body: CompleteBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    for group in &body.failed {
        check_text("statusMessage", &group.status_message, 1_000)?;
    }
    let report = TaskReport {
        successes: body.successfully,
        failures: body
            .failed
            .into_iter()
            .map(|g| FailureSnapshot { code: g.code, status_message: g.status_message, items: g.items })
            .collect(),
    };
    let recorded = report.successes.len() + report.failures.iter().map(|f| f.items.len()).sum::<usize>();
    let store = state.tasks.clone();
    blocking(move || store.complete(id, &body.lease_token, &report, now_micros()))
        .await?
        .map_err(task_error)?;
    (state.on_new_work)();
    Ok(HttpResponse::Ok().json(json!({ "taskId": id, "recorded": recorded })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeartbeatBody {
    lease_token: String,
    #[serde(default)]
    lease_seconds: Option<u64>,
}

/// `POST /v1/tasks/{taskId}/heartbeat`
pub async fn heartbeat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&req)?;
    let body: HeartbeatBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    let lease = body.lease_seconds.unwrap_or(state.config.default_lease_secs);
    if !(1..=MAX_LEASE_SECS).contains(&lease) {
        return Err(ApiError::input(format!("leaseSeconds must be 1..={MAX_LEASE_SECS}")));
    }
    let micros = i64::try_from(lease * 1_000_000).unwrap_or(i64::MAX);
    let store = state.tasks.clone();
    let expires = blocking(move || store.heartbeat(id, &body.lease_token, micros, now_micros()))
        .await?
        .map_err(task_error)?;
    Ok(HttpResponse::Ok().json(json!({ "taskId": id, "leaseExpiresAt": rfc3339(expires) })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailBody {
    lease_token: String,
    status_message: String,
    #[serde(default)]
    retryable: bool,
}

/// `POST /v1/tasks/{taskId}/fail`
pub async fn fail(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&req)?;
    let body: FailBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    check_text("statusMessage", &body.status_message, 1_000)?;
    let store = state.tasks.clone();
    blocking(move || store.fail(id, &body.lease_token, &body.status_message, body.retryable, now_micros()))
        .await?
        .map_err(task_error)?;
    (state.on_new_work)();
    Ok(HttpResponse::Ok().json(json!({ "taskId": id, "retryable": body.retryable })))
}
