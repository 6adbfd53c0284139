//! The external workers' calls (contract §4.4): claim, complete, heartbeat, fail. Answers are
//! plain JSON; errors use the envelope.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use async_engine_domain::{ClaimRequest, ClaimedTask, FailureSnapshot, RawJson, TaskError, TaskReport};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Scope;
use crate::body::read_body;
use crate::clock::{now_micros, rfc3339};
use crate::error::ApiError;
use crate::pool::blocking;
use crate::routing::resource;
use crate::state::AppState;

const MAX_TASKS: u32 = 100;
/// Lease tokens are 32 hex digits; anything much longer is not one of ours.
const MAX_TOKEN_CHARS: usize = 128;
const MAX_LEASE_SECS: u64 = 3_600;
const MAX_WAIT_SECS: u64 = 30;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    const POST: &str = "POST";
    cfg.service(resource("/v1/tasks/claim", POST).route(web::post().to(claim)))
        .service(resource("/v1/tasks/{taskId}/complete", POST).route(web::post().to(complete)))
        .service(resource("/v1/tasks/{taskId}/heartbeat", POST).route(web::post().to(heartbeat)))
        .service(resource("/v1/tasks/{taskId}/fail", POST).route(web::post().to(fail)));
}

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

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimBody {
    /// The NAME of a `queue:NAME` step handler (the prefix may be given too).
    #[schema(pattern = r"^(queue:)?[A-Za-z0-9._-]{1,100}$")]
    queue: String,
    #[schema(min_length = 1, max_length = 255)]
    worker_id: String,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    max_tasks: Option<u32>,
    /// Default `engine.lease_secs`; a step's `timeout_secs` caps it.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    lease_seconds: Option<u64>,
    /// Hold the claim this long when nothing is due.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 30)]
    wait_seconds: Option<u64>,
}

/// `POST /v1/tasks/claim`
#[utoipa::path(post, path = "/v1/tasks/claim", tag = "tasks", operation_id = "claimTasks",
    request_body = ClaimBody,
    responses((status = 200, description = "Leased tasks; empty when none was due within waitSeconds", body = ClaimOut),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = crate::envelope::Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = crate::envelope::Envelope),
        (status = 403, description = "The key lacks the scope", body = crate::envelope::Envelope),
        (status = 413, description = "The body is larger than limits.max_body_bytes", body = crate::envelope::Envelope),
        (status = 429, description = "With waitSeconds: the caller (its API key; without auth, its client address) already has limits.max_waiting_claims_per_key claims waiting, and nothing was due; try again after Retry-After",
            body = crate::envelope::Envelope, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 500, description = "The server failed; the cause is in its log", body = crate::envelope::Envelope)))]
pub async fn claim(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authorize(&req, Scope::TasksWork)?;
    let body: ClaimBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    let name = body.queue.strip_prefix("queue:").unwrap_or(&body.queue);
    if name.is_empty()
        || name.len() > 100
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let request = ClaimRequest {
        queues: vec![format!("queue:{name}")],
        tenant: Some(caller.tenant.clone()),
        worker_id: body.worker_id,
        max_tasks,
        lease_micros: i64::try_from(lease * 1_000_000).unwrap_or(i64::MAX),
        now_micros: 0,
    };
    let answer = |tasks: Vec<ClaimedTask>| {
        let tasks: Vec<TaskOut> = tasks.iter().map(TaskOut::new).collect();
        HttpResponse::Ok().json(ClaimOut { tasks })
    };
    // Counted from before the first look, so that work made between that look and the wait
    // wakes it. Over the caller's cap it still looks once, and is refused only if that found
    // nothing: a worker with work to do is never held back by the others' waits.
    let waiting = match wait {
        0 => None,
        _ => {
            let key = state.auth.caller_key(&req, &caller);
            match state.claims.enter(&state.tasks, &key, &caller.tenant, &request.queues[0]) {
                Ok(waiting) => waiting,
                Err(over_cap) => {
                    let tasks = claim_now(&state, &request).await?;
                    return if tasks.is_empty() { Err(over_cap) } else { Ok(answer(tasks)) };
                }
            }
        }
    };
    let Some(waiting) = waiting else {
        return Ok(answer(claim_now(&state, &request).await?));
    };
    loop {
        let ready = waiting.ready();
        let woken = ready.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let tasks = claim_now(&state, &request).await?;
        if !tasks.is_empty() {
            if tasks.len() >= usize::try_from(max_tasks).unwrap_or(usize::MAX) {
                waiting.pass_on();
            }
            return Ok(answer(tasks));
        }
        // No look at the deadline: any work made meanwhile would have woken us.
        if tokio::time::timeout_at(deadline, woken).await.is_err() || waiting.closed() {
            return Ok(answer(Vec::new()));
        }
    }
}

/// One claim, on the blocking pool; a waiting claim asks only when woken.
async fn claim_now(state: &AppState, request: &ClaimRequest) -> Result<Vec<ClaimedTask>, ApiError> {
    let request = ClaimRequest { now_micros: now_micros(), ..request.clone() };
    let store = state.tasks.clone();
    Ok(blocking(move || store.claim(&request)).await??)
}

#[derive(Serialize, ToSchema)]
struct ClaimOut<'a> {
    tasks: Vec<TaskOut<'a>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Completed {
    task_id: i64,
    /// Outcomes recorded.
    recorded: usize,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Extended {
    task_id: i64,
    lease_expires_at: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct GivenBack {
    task_id: i64,
    retryable: bool,
}

/// A claimed task as workers receive it, fields in the contract's order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TaskOut<'a> {
    task_id: i64,
    lease_token: &'a str,
    async_process_id: &'a str,
    reference_id: &'a str,
    async_process_name: &'a str,
    step_number: u32,
    step_name: &'a str,
    attempt: u32,
    lease_expires_at: String,
    #[schema(value_type = Object)]
    additional_data: &'a RawJson,
    items: Vec<ItemOut<'a>>,
}

/// One item of a claimed task.
#[derive(Serialize, ToSchema)]
#[schema(as = TaskItem)]
struct ItemOut<'a> {
    index: u64,
    #[schema(value_type = Value)]
    item: &'a RawJson,
}

impl<'a> TaskOut<'a> {
    fn new(task: &'a ClaimedTask) -> Self {
        TaskOut {
            task_id: task.task_id,
            lease_token: &task.lease_token,
            async_process_id: &task.async_process_id,
            reference_id: &task.reference_id,
            async_process_name: &task.process_name,
            step_number: task.step_number,
            step_name: &task.step_name,
            attempt: task.attempt,
            lease_expires_at: rfc3339(task.lease_expires_at_micros),
            additional_data: &task.additional_data,
            items: task.items.iter().map(|(index, item)| ItemOut { index: *index, item }).collect(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailedGroup {
    items: Vec<u64>,
    #[serde(alias = "statusCode")]
    code: i64,
    #[schema(min_length = 1, max_length = 1000)]
    status_message: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CompleteBody {
    #[schema(min_length = 1, max_length = 128)]
    lease_token: String,
    #[serde(default)]
    successfully: Vec<u64>,
    #[serde(default)]
    failed: Vec<FailedGroup>,
}

/// `POST /v1/tasks/{taskId}/complete`
#[utoipa::path(post, path = "/v1/tasks/{taskId}/complete", tag = "tasks", operation_id = "completeTask",
    params(("taskId" = i64, Path, description = "The claimed task")), request_body = CompleteBody,
    responses((status = 200, description = "Recorded", body = Completed),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = crate::envelope::Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = crate::envelope::Envelope),
        (status = 403, description = "The key lacks the scope", body = crate::envelope::Envelope),
        (status = 409, description = "A stale or unknown lease: nothing was recorded", body = crate::envelope::Envelope),
        (status = 413, description = "The body is larger than limits.max_body_bytes", body = crate::envelope::Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = crate::envelope::Envelope)))]
pub async fn complete(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The lease token is the capability: only the worker that claimed the task knows it, and
    // only within its tenant (another tenant's task answers like one that does not exist).
    let tenant = state.auth.authorize(&req, Scope::TasksWork)?.tenant;
    let id = task_id(&req)?;
    let body: CompleteBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    check_text("leaseToken", &body.lease_token, MAX_TOKEN_CHARS)?;
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
    blocking(move || store.complete(Some(tenant), id, &body.lease_token, &report, now_micros()))
        .await?
        .map_err(task_error)?;
    metrics::counter!("async_engine_items_recorded_total", "by" => "worker").increment(recorded as u64);
    (state.on_new_work)();
    Ok(HttpResponse::Ok().json(Completed { task_id: id, recorded }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeartbeatBody {
    #[schema(min_length = 1, max_length = 128)]
    lease_token: String,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    lease_seconds: Option<u64>,
}

/// `POST /v1/tasks/{taskId}/heartbeat`
#[utoipa::path(post, path = "/v1/tasks/{taskId}/heartbeat", tag = "tasks", operation_id = "extendTaskLease",
    params(("taskId" = i64, Path, description = "The claimed task")), request_body = HeartbeatBody,
    responses((status = 200, description = "The lease's new expiry", body = Extended),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = crate::envelope::Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = crate::envelope::Envelope),
        (status = 403, description = "The key lacks the scope", body = crate::envelope::Envelope),
        (status = 409, description = "A stale or unknown lease: nothing was recorded", body = crate::envelope::Envelope),
        (status = 413, description = "The body is larger than limits.max_body_bytes", body = crate::envelope::Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = crate::envelope::Envelope)))]
pub async fn heartbeat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::TasksWork)?.tenant;
    let id = task_id(&req)?;
    let body: HeartbeatBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    check_text("leaseToken", &body.lease_token, MAX_TOKEN_CHARS)?;
    let lease = body.lease_seconds.unwrap_or(state.config.default_lease_secs);
    if !(1..=MAX_LEASE_SECS).contains(&lease) {
        return Err(ApiError::input(format!("leaseSeconds must be 1..={MAX_LEASE_SECS}")));
    }
    let micros = i64::try_from(lease * 1_000_000).unwrap_or(i64::MAX);
    let store = state.tasks.clone();
    let expires =
        blocking(move || store.heartbeat(Some(tenant), id, &body.lease_token, micros, now_micros()))
            .await?
            .map_err(task_error)?;
    Ok(HttpResponse::Ok().json(Extended { task_id: id, lease_expires_at: rfc3339(expires) }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailBody {
    #[schema(min_length = 1, max_length = 128)]
    lease_token: String,
    #[schema(min_length = 1, max_length = 1000)]
    status_message: String,
    #[serde(default)]
    retryable: bool,
}

/// `POST /v1/tasks/{taskId}/fail`
#[utoipa::path(post, path = "/v1/tasks/{taskId}/fail", tag = "tasks", operation_id = "failTask",
    params(("taskId" = i64, Path, description = "The claimed task")), request_body = FailBody,
    responses((status = 200, description = "Given back", body = GivenBack),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = crate::envelope::Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = crate::envelope::Envelope),
        (status = 403, description = "The key lacks the scope", body = crate::envelope::Envelope),
        (status = 409, description = "A stale or unknown lease: nothing was recorded", body = crate::envelope::Envelope),
        (status = 413, description = "The body is larger than limits.max_body_bytes", body = crate::envelope::Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = crate::envelope::Envelope)))]
pub async fn fail(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::TasksWork)?.tenant;
    let id = task_id(&req)?;
    let body: FailBody = parse(&read_body(&req, payload, state.config.max_body_bytes).await?)?;
    check_text("leaseToken", &body.lease_token, MAX_TOKEN_CHARS)?;
    check_text("statusMessage", &body.status_message, 1_000)?;
    let store = state.tasks.clone();
    blocking(move || {
        store.fail(Some(tenant), id, &body.lease_token, &body.status_message, body.retryable, now_micros())
    })
    .await?
    .map_err(task_error)?;
    (state.on_new_work)();
    Ok(HttpResponse::Ok().json(GivenBack { task_id: id, retryable: body.retryable }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::test::TestRequest;
    use async_engine_domain::work::MockTaskStore;
    use async_engine_domain::{RepositoryError, TaskError};
    use serde_json::json;

    use crate::state::AppState;
    use crate::test_support::{send, state};

    async fn post(tasks: MockTaskStore, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let state = AppState { tasks: Arc::new(tasks), ..state() };
        send(state, TestRequest::post().uri(path).set_json(body)).await
    }

    #[actix_web::test]
    async fn claims_are_checked_before_the_store_is_asked() {
        for (body, mention) in [
            (json!({ "queue": "builtin:noop", "workerId": "w" }), "queue"),
            (json!({ "queue": "", "workerId": "w" }), "queue"),
            (json!({ "queue": "q", "workerId": "" }), "workerId"),
            (json!({ "queue": "q", "workerId": "w", "maxTasks": 0 }), "maxTasks"),
            (json!({ "queue": "q", "workerId": "w", "leaseSeconds": 0 }), "leaseSeconds"),
            (json!({ "queue": "q", "workerId": "w", "waitSeconds": 31 }), "waitSeconds"),
            (json!({ "queue": "q" }), "workerId"),
            (json!({ "queue": "q", "workerId": "w", "typo": 1 }), "typo"),
        ] {
            let (status, answer) = post(MockTaskStore::new(), "/v1/tasks/claim", body.clone()).await;
            assert_eq!(status, 400, "{body}");
            assert!(answer["technicalMessage"].as_str().unwrap().contains(mention), "{body}: {answer}");
        }
    }

    #[actix_web::test]
    async fn a_claim_asks_for_the_named_queue_and_answers_plain_json() {
        let mut tasks = MockTaskStore::new();
        tasks
            .expect_claim()
            .withf(|r| r.queues == ["queue:pricing"] && r.max_tasks == 2 && r.lease_micros == 5_000_000)
            .returning(|_| Ok(vec![]));
        let body = json!({ "queue": "pricing", "workerId": "w", "maxTasks": 2, "leaseSeconds": 5 });
        assert_eq!(post(tasks, "/v1/tasks/claim", body).await, (200, json!({ "tasks": [] })));
    }

    #[actix_web::test]
    async fn task_errors_map_to_409_400_and_500() {
        let cases = [
            (TaskError::Conflict("stale".into()), 409),
            (TaskError::Invalid("missing".into()), 400),
            (TaskError::Storage(RepositoryError::Failed("disk /secret".into())), 500),
        ];
        for (error, code) in cases {
            let mut tasks = MockTaskStore::new();
            tasks.expect_complete().returning(move |_, _, _, _, _| Err(error.clone()));
            let body = json!({ "leaseToken": "t", "successfully": [0] });
            let (status, answer) = post(tasks, "/v1/tasks/7/complete", body).await;
            assert_eq!((status, answer["code"].as_u64()), (code, Some(u64::from(code))));
            assert!(!answer.to_string().contains("secret"));
        }
        let (status, _) =
            post(MockTaskStore::new(), "/v1/tasks/x/complete", json!({ "leaseToken": "t" })).await;
        assert_eq!(status, 400, "taskId must be a number");
    }
}
