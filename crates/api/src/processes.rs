//! Starting and steering processes (contract §4.2, §4.3) and the definitions they follow.

use std::collections::HashMap;

use actix_web::http::header::LOCATION;
use actix_web::{HttpRequest, HttpResponse, web};
use async_engine_domain::{
    CommandError, ItemsError, ItemsPage, ItemsQuery, ListError, ListQuery, NewProcess, OutcomeFilter,
    ProcessId, RawJson, ReferenceId, Started, Status, StreamedStartError, TenantId,
};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::answering::resolve_target;
use crate::auth::Scope;
use crate::body::read_body;
use crate::clock::{now_micros, rfc3339};
use crate::envelope::{Envelope, Record, Shape};
use crate::error::ApiError;
use crate::params;
use crate::pool::blocking;
use crate::routing::resource;
use crate::state::AppState;
use crate::upload::{self, Format, UploadLimits};

const MAX_LIST_LIMIT: u32 = 1_000;
const MAX_IDEMPOTENCY_KEY: usize = 255;
const DEFAULT_ITEMS_LIMIT: u32 = 1_000;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    const GET: &str = "GET, HEAD";
    const POST: &str = "POST";
    cfg.service(
        resource("/v1/asyncprocesses", "GET, HEAD, POST")
            .route(web::get().to(list))
            .route(web::post().to(start)),
    )
    .service(resource("/v1/asyncprocesses/{id}/steps/{stepNumber}/items", GET).route(web::get().to(items)))
    .service(resource("/v1/asyncprocesses/{id}/deliveries", GET).route(web::get().to(deliveries)))
    .service(resource("/v1/asyncprocesses/{id}/cancel", POST).route(web::post().to(cancel)))
    .service(resource("/v1/asyncprocesses/{id}/retry", POST).route(web::post().to(retry)))
    .service(resource("/v1/processdefinitions", GET).route(web::get().to(definitions)));
}

struct StartRequest {
    name: String,
    reference_id: ReferenceId,
    items: Vec<RawJson>,
    additional_data: RawJson,
    callback_url: Option<String>,
    /// `startAt` as written: RFC 3339.
    start_at: Option<String>,
    /// Higher first (`priority`, within [`PRIORITIES`]).
    priority: i32,
    /// Started open: the items come in parts (`PUT .../parts/{n}`) until its close.
    open: bool,
}

/// The priorities a start may ask for; 0 unless it does.
const PRIORITIES: std::ops::RangeInclusive<i32> = -100..=100;

fn priority(value: Option<i64>) -> Result<i32, ApiError> {
    let Some(value) = value else { return Ok(0) };
    i32::try_from(value).ok().filter(|p| PRIORITIES.contains(p)).ok_or_else(bad_priority)
}

fn bad_priority() -> ApiError {
    ApiError::input(format!(
        "priority must be an integer from {} to {}",
        PRIORITIES.start(),
        PRIORITIES.end()
    ))
}

/// How far ahead a start may be delayed.
const MAX_START_DELAY_MICROS: i64 = 366 * 24 * 3_600 * 1_000_000;

/// `startAt` as microseconds: RFC 3339 with its offset, at most a year ahead. A time gone
/// by starts the process at once.
fn start_at_micros(text: &str, now: i64) -> Result<i64, ApiError> {
    let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        ApiError::input(format!(
            "startAt must be an RFC 3339 time with its offset, like 2026-12-05T10:00:00Z: {e}"
        ))
    })?;
    let micros = at.timestamp_micros();
    if micros > now.saturating_add(MAX_START_DELAY_MICROS) {
        return Err(ApiError::input("startAt must be at most 366 days ahead"));
    }
    Ok(micros)
}

/// Reads the start body field by field, keeping items as the caller wrote them.
fn parse_start(body: &[u8]) -> Result<StartRequest, ApiError> {
    let fields: HashMap<String, Box<RawValue>> = serde_json::from_slice(body)
        .map_err(|e| ApiError::input(format!("the body must be a JSON object: {e}")))?;
    let text = |name: &str| -> Result<String, ApiError> {
        let raw = fields.get(name).ok_or_else(|| ApiError::input(format!("{name} is required")))?;
        serde_json::from_str(raw.get()).map_err(|_| ApiError::input(format!("{name} must be a string")))
    };
    let name = text("asyncProcessName")?;
    let reference_id = ReferenceId::new(text("referenceId")?).map_err(|e| ApiError::input(e.to_string()))?;
    let open = match fields.get("open") {
        None => false,
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|_| ApiError::input("open must be true or false"))?
        }
    };
    let items: Vec<Box<RawValue>> = match (open, fields.get("items")) {
        (true, Some(_)) => {
            return Err(ApiError::input(
                "an open process takes its items in parts (PUT /v1/asyncprocesses/{id}/parts/{n}): leave out items",
            ));
        }
        (true, None) => Vec::new(),
        (false, None) => {
            return Err(ApiError::input(
                "items is required (it may be []); or \"open\": true, to send the items in parts",
            ));
        }
        (false, Some(items)) => {
            serde_json::from_str(items.get()).map_err(|_| ApiError::input("items must be a JSON array"))?
        }
    };
    let additional_data = match fields.get("additionalData") {
        None => RawJson::empty_object(),
        Some(raw) if raw.get() == "null" => RawJson::empty_object(),
        Some(raw) if raw.get().starts_with('{') => {
            RawJson::from_input(raw.clone()).map_err(|e| ApiError::input(format!("additionalData {e}")))?
        }
        Some(_) => return Err(ApiError::input("additionalData must be a JSON object")),
    };
    let callback_url = match fields.get("callbackUrl") {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(_) => Some(text("callbackUrl")?),
    };
    let start_at = match fields.get("startAt") {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(_) => Some(text("startAt")?),
    };
    let priority = match fields.get("priority") {
        None => priority(None)?,
        Some(raw) if raw.get() == "null" => priority(None)?,
        Some(raw) => priority(Some(serde_json::from_str(raw.get()).map_err(|_| bad_priority())?))?,
    };
    Ok(StartRequest {
        name,
        reference_id,
        items: items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                RawJson::from_input(item).map_err(|e| ApiError::input(format!("item {index} {e}")))
            })
            .collect::<Result<_, _>>()?,
        additional_data,
        callback_url,
        start_at,
        priority,
        open,
    })
}

/// `POST /v1/asyncprocesses`
#[utoipa::path(post, path = "/v1/asyncprocesses", tag = "processes", operation_id = "startAsyncProcess",
    description = "The body is a JSON start (with \"open\": true and no items: a process that takes its items in parts, PUT /v1/asyncprocesses/{id}/parts/{n}, until POST /v1/asyncprocesses/{id}/close); or, for bulk uploads, the items alone as NDJSON (one JSON item a line; blank lines skipped) or CSV (RFC 4180, a header row naming each item's fields, values as strings) with the start's options in the query. An upload is read and checked as it arrives, up to limits.max_upload_bytes; a malformed line (named, with its column) or a body cut off leaves no process.",
    request_body(content(
        (crate::schema::StartBody = "application/json"),
        (String = "application/x-ndjson"),
        (String = "text/csv"))),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "A repeated key returns the first process"),
        ("asyncProcessName" = Option<String>, Query, min_length = 1, max_length = 255, description = "With an NDJSON or CSV body (then required): the definition's name"),
        ("referenceId" = Option<String>, Query, min_length = 1, max_length = 255, description = "With an NDJSON or CSV body (then required): the reference ID"),
        ("additionalData" = Option<String>, Query, description = "With an NDJSON or CSV body: the additionalData, a JSON object"),
        ("callbackUrl" = Option<String>, Query, max_length = 2048, description = "With an NDJSON or CSV body: where to POST the envelope when the process finishes"),
        ("startAt" = Option<String>, Query, format = DateTime, description = "With an NDJSON or CSV body: a delayed start, RFC 3339, at most 366 days ahead"),
        ("priority" = Option<i32>, Query, minimum = -100, maximum = 100, description = "With an NDJSON or CSV body: higher first, fair within a priority (default 0)")),
    responses(
        (status = 202, description = "Started (or the process of a repeated Idempotency-Key)", body = Envelope),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 413, description = "The body is larger than limits.max_body_bytes (an NDJSON or CSV upload: limits.max_upload_bytes)", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn start(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authorize(&req, Scope::ProcessesWrite)?;
    if let Some(format) = Format::of(&req) {
        return start_streamed(req, payload, state, caller.tenant, format).await;
    }
    let body = read_body(&req, payload, state.config.max_body_bytes).await?;
    let request = parse_start(&body)?;
    let open = request.open;
    let new = new_process(&req, &state, caller.tenant, request)?;
    let store = state.processes.clone();
    let started = blocking(move || if open { store.start_open(&new) } else { store.start(&new) }).await??;
    started_answer(&state, &started)
}

/// The start options of a streamed start, in its query.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StreamedQuery {
    async_process_name: String,
    reference_id: String,
    #[serde(default)]
    additional_data: Option<String>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    start_at: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
}

/// `POST /v1/asyncprocesses` with NDJSON or CSV items: the options in the query, the items
/// read, checked and spooled as they arrive, then stored in one transaction.
async fn start_streamed(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    tenant: TenantId,
    format: Format,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<StreamedQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| {
            ApiError::input(format!(
                "a streamed start names its process in the query (asyncProcessName, referenceId; \
             additionalData, callbackUrl, startAt, priority optional): {e}"
            ))
        })?;
    let additional_data = match query.additional_data {
        None => RawJson::empty_object(),
        Some(text) => {
            let raw = serde_json::from_str::<Box<RawValue>>(&text)
                .ok()
                .filter(|raw| raw.get().starts_with('{'))
                .ok_or_else(|| ApiError::input("additionalData must be a JSON object"))?;
            RawJson::from_input(raw).map_err(|e| ApiError::input(format!("additionalData {e}")))?
        }
    };
    let request = StartRequest {
        name: query.async_process_name,
        reference_id: ReferenceId::new(query.reference_id).map_err(|e| ApiError::input(e.to_string()))?,
        items: Vec::new(),
        additional_data,
        callback_url: query.callback_url,
        start_at: query.start_at,
        priority: priority(query.priority)?,
        open: false,
    };
    // Everything the query decides is checked before the body is read.
    let new = new_process(&req, &state, tenant, request)?;
    let limits = UploadLimits {
        max_bytes: state.config.max_upload_bytes,
        max_item_bytes: state.config.max_body_bytes,
        idle: state.config.body_timeout,
    };
    let spooled = upload::spool(&req, payload, format, limits).await?;
    let store = state.processes.clone();
    let started = blocking(move || store.start_streamed(&new, &mut spooled.into_items())).await?.map_err(
        |e| match e {
            StreamedStartError::Items(why) => ApiError::Internal(why),
            StreamedStartError::Storage(e) => e.into(),
        },
    )?;
    started_answer(&state, &started)
}

/// The process a start request makes, once its name, callback and key are checked.
fn new_process(
    req: &HttpRequest,
    state: &AppState,
    tenant: TenantId,
    request: StartRequest,
) -> Result<NewProcess, ApiError> {
    let idempotency_key = match req.headers().get("Idempotency-Key") {
        None => None,
        Some(value) => {
            let key = value.to_str().map_err(|_| ApiError::input("Idempotency-Key must be visible ASCII"))?;
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(ApiError::input(format!(
                    "Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )));
            }
            Some(key.to_owned())
        }
    };
    let definition = state.definitions.iter().find(|d| d.name == request.name).cloned().ok_or_else(|| {
        let known: Vec<&str> = state.definitions.iter().map(|d| d.name.as_str()).collect();
        ApiError::input(format!(
            "no process definition is named '{}'; defined: {}",
            params::shorten(&request.name),
            known.join(", ")
        ))
    })?;
    // Checked now, not at delivery: a host the operators did not allow is the caller's mistake.
    let callback_url = match request.callback_url.or_else(|| definition.callback_url.clone()) {
        None => None,
        Some(url) => Some(state.callbacks.check(&url).map_err(ApiError::Input)?.to_string()),
    };
    let now = now_micros();
    let start_at_micros = request.start_at.as_deref().map(|text| start_at_micros(text, now)).transpose()?;
    let id = ProcessId::new(uuid::Uuid::now_v7().simple().to_string())
        .map_err(|e| ApiError::Internal(format!("generated ID refused: {e}")))?;
    Ok(NewProcess {
        tenant,
        async_process_id: id,
        reference_id: request.reference_id,
        definition,
        items: request.items,
        additional_data: request.additional_data,
        idempotency_key,
        callback_url,
        now_micros: now,
        start_at_micros,
        priority: request.priority,
    })
}

/// 202 with the new (or the idempotency key's earlier) process and its `Location`.
fn started_answer(state: &AppState, started: &Started) -> Result<HttpResponse, ApiError> {
    let (Started::Created(record) | Started::Existing(record)) = started;
    if matches!(started, Started::Created(_)) {
        (state.on_new_work)();
    }
    let location = format!("/v1/asyncprocesses/{}", record.async_process_id);
    let mut response = HttpResponse::Accepted().json(Envelope::accepted(std::slice::from_ref(record)));
    response
        .headers_mut()
        .insert(LOCATION, location.parse().map_err(|_| ApiError::Internal("location header".into()))?);
    Ok(response)
}

/// No such process is the caller's mistake (400, as for the status call); a command the
/// process's state refuses is a conflict with that state (409).
pub(crate) fn command_error(error: CommandError) -> ApiError {
    match error {
        CommandError::Storage(error) => error.into(),
        CommandError::NotFound(_) => ApiError::Input(error.to_string()),
        CommandError::Refused(_) | CommandError::NotRunnable(_) => ApiError::Conflict(error.to_string()),
    }
}

async fn command_target(req: &HttpRequest, state: &AppState, tenant: &TenantId) -> Result<String, ApiError> {
    resolve_target(state, tenant, req.match_info().get("id").unwrap_or_default()).await
}

/// `POST /v1/asyncprocesses/{id}/cancel`
#[utoipa::path(post, path = "/v1/asyncprocesses/{id}/cancel", tag = "processes", operation_id = "cancelAsyncProcess",
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255)),
    responses((status = 202, description = "Aborted", body = Envelope), (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 409, description = "Only a waiting or running process can be cancelled: this one has finished, or is a record of history", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn cancel(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::ProcessesWrite)?.tenant;
    let id = command_target(&req, &state, &tenant).await?;
    let store = state.processes.clone();
    let record = blocking(move || store.cancel(&tenant, &id, now_micros())).await?.map_err(command_error)?;
    Ok(HttpResponse::Accepted().json(Envelope::accepted(&[record])))
}

/// `POST /v1/asyncprocesses/{id}/retry`
#[utoipa::path(post, path = "/v1/asyncprocesses/{id}/retry", tag = "processes", operation_id = "retryAsyncProcess",
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255)),
    responses((status = 202, description = "Its failed items run again", body = Envelope), (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 409, description = "Only a failed process can be retried: this one is running, succeeded or was cancelled, or is a record of history", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn retry(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::ProcessesWrite)?.tenant;
    let id = command_target(&req, &state, &tenant).await?;
    let store = state.processes.clone();
    let record = blocking(move || store.retry(&tenant, &id, now_micros())).await?.map_err(command_error)?;
    (state.on_new_work)();
    Ok(HttpResponse::Accepted().json(Envelope::accepted(&[record])))
}

/// One parameter of the process list (`status`, `asyncProcessName`, `referenceId`, `cursor`)
/// into `query`; others are ignored. Shared by the API's list and the dashboard's.
pub(crate) fn list_filter(query: &mut ListQuery, name: &str, value: &str) -> Result<(), ApiError> {
    match name {
        "status" => {
            query.status = Some(value.parse::<Status>().map_err(|e| ApiError::input(format!("status: {e}")))?)
        }
        "asyncProcessName" => query.name = Some(params::bounded("asyncProcessName", value)?),
        "referenceId" => query.reference_id = Some(params::bounded("referenceId", value)?),
        "cursor" => query.cursor = Some(params::bounded("cursor", value)?),
        _ => {}
    }
    Ok(())
}

/// A page of a step's items; a refusal (no such process, step or cursor) is the caller's
/// mistake. Shared by the API's items call and the dashboard's items pages.
pub(crate) async fn read_items(state: &AppState, query: ItemsQuery) -> Result<ItemsPage, ApiError> {
    let store = state.processes.clone();
    blocking(move || store.items(&query)).await?.map_err(|e| match e {
        ItemsError::Storage(error) => error.into(),
        refused => ApiError::Input(refused.to_string()),
    })
}

/// `limit` of a paged call: 1 to `max`.
fn page_limit(value: &str, max: u32) -> Result<u32, ApiError> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::input(format!("limit must be a whole number from 1 to {max}")))
}

#[derive(Serialize, ToSchema)]
struct ListEnvelope<'a> {
    #[serde(flatten)]
    envelope: Envelope<'a>,
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

/// `GET /v1/asyncprocesses?status=&asyncProcessName=&referenceId=&limit=&cursor=`
#[utoipa::path(get, path = "/v1/asyncprocesses", tag = "processes", operation_id = "listAsyncProcesses",
    params(("status" = Option<crate::schema::StatusName>, Query),
        ("asyncProcessName" = Option<String>, Query, min_length = 1, max_length = 255),
        ("referenceId" = Option<String>, Query, min_length = 1, max_length = 255),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, min_length = 1, max_length = 255, description = "nextCursor of the previous page")),
    responses(
        (status = 202, description = "A page, newest first", body = ListEnvelope),
        (status = 200, description = "A page (api.success_code 200)", body = ListEnvelope),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::StatusRead)?.tenant;
    let mut query = ListQuery {
        tenant,
        status: None,
        name: None,
        reference_id: None,
        limit: 100,
        cursor: None,
        with_steps: false,
        prefix: false,
    };
    for (name, value) in form_urlencoded::parse(req.query_string().as_bytes()) {
        if name == "limit" {
            query.limit = page_limit(&value, MAX_LIST_LIMIT)?;
        } else {
            list_filter(&mut query, &name, &value)?;
        }
    }
    let store = state.processes.clone();
    let page = blocking(move || store.list(&query)).await?.map_err(|e| match e {
        ListError::BadCursor => ApiError::input("cursor is not one this server gave out"),
        ListError::Storage(error) => error.into(),
    })?;
    let code = state.config.success_code.status();
    let shape = Shape { verbose: false, ..Shape::default() };
    Ok(HttpResponse::build(code).json(ListEnvelope {
        envelope: Envelope {
            code: code.as_u16(),
            status_message: "Success",
            technical_message: None,
            records: page.records.iter().map(|r| Record::new(r, shape)).collect(),
        },
        next_cursor: page.next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ItemsOut<'a> {
    items: Vec<ItemOut<'a>>,
    next_cursor: Option<String>,
}

/// One item of a step, with its failure's code and message when it failed there.
#[derive(Serialize, ToSchema)]
#[schema(as = StepItem)]
#[serde(rename_all = "camelCase")]
struct ItemOut<'a> {
    index: u64,
    #[schema(value_type = Value)]
    item: &'a RawJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_message: Option<&'a str>,
}

/// `GET /v1/asyncprocesses/{id}/steps/{stepNumber}/items?outcome=&limit=&cursor=` (contract §6)
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}/steps/{stepNumber}/items", tag = "status", operation_id = "listStepItems",
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255),
        ("stepNumber" = u32, Path, description = "0 for the first step"),
        ("outcome" = Option<crate::schema::Outcome>, Query, description = "Only the items that succeeded, or only those that failed, at this step"),
        ("limit" = Option<u32>, Query, minimum = 1, description = "At most limits.max_items_per_response"),
        ("cursor" = Option<String>, Query, min_length = 1, max_length = 255, description = "nextCursor of the previous page")),
    responses((status = 200, description = "A page of the step's items in recording order", body = ItemsOut),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn items(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::StatusRead)?.tenant;
    let id = command_target(&req, &state, &tenant).await?;
    let step = req
        .match_info()
        .get("stepNumber")
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| ApiError::input("stepNumber must be a whole number: 0 for the first step"))?;
    let max = u32::try_from(state.config.max_items_per_response).unwrap_or(u32::MAX).max(1);
    let mut query = ItemsQuery {
        tenant,
        async_process_id: id,
        step_number: step,
        outcome: OutcomeFilter::Any,
        limit: DEFAULT_ITEMS_LIMIT.min(max),
        cursor: None,
    };
    for (name, value) in form_urlencoded::parse(req.query_string().as_bytes()) {
        match name.as_ref() {
            "outcome" => {
                query.outcome = match value.as_ref() {
                    "successful" => OutcomeFilter::Successful,
                    "failed" => OutcomeFilter::Failed,
                    _ => return Err(ApiError::input("outcome must be successful or failed")),
                }
            }
            "cursor" => query.cursor = Some(params::bounded("cursor", &value)?),
            "limit" => query.limit = page_limit(&value, max)?,
            _ => {}
        }
    }
    let page = read_items(&state, query).await?;
    Ok(HttpResponse::Ok().json(ItemsOut {
        items: page
            .items
            .iter()
            .map(|listed| ItemOut {
                index: listed.index,
                item: &listed.item,
                code: listed.failure.as_ref().map(|f| f.0),
                status_message: listed.failure.as_ref().map(|f| f.1.as_str()),
            })
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DeliveryOut {
    delivery_id: String,
    url: String,
    finished_status: String,
    state: String,
    attempts: u32,
    next_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct DeliveriesOut {
    deliveries: Vec<DeliveryOut>,
}

/// `GET /v1/asyncprocesses/{id}/deliveries`: the FinishProcess notifications of a process and
/// how each attempt went, for operators.
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}/deliveries", tag = "processes", operation_id = "listDeliveries",
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255)),
    responses((status = 200, description = "The process's FinishProcess notifications and their attempts", body = DeliveriesOut),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn deliveries(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::StatusRead)?.tenant;
    let id = command_target(&req, &state, &tenant).await?;
    let store = state.deliveries.clone();
    let lookup = id.clone();
    let records = blocking(move || store.deliveries(&tenant, &lookup))
        .await??
        .ok_or_else(|| ApiError::Input(CommandError::NotFound(id).to_string()))?;
    let deliveries: Vec<DeliveryOut> = records
        .into_iter()
        .map(|d| DeliveryOut {
            delivery_id: d.delivery_id,
            url: d.url,
            finished_status: d.finished_status,
            state: d.state,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at_micros.map(rfc3339),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: rfc3339(d.created_at_micros),
            delivered_at: d.delivered_at_micros.map(rfc3339),
        })
        .collect();
    Ok(HttpResponse::Ok().json(DeliveriesOut { deliveries }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DefinitionsOut<'a> {
    process_definitions: Vec<DefinitionOut<'a>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DefinitionOut<'a> {
    name: &'a str,
    steps: Vec<StepOut<'a>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct StepOut<'a> {
    step_number: usize,
    name: &'a str,
    /// `builtin:NAME` (run in the server), `queue:NAME` (run by workers that claim its
    /// tasks), or `http:PROCESS/STEP` (a push step: the server POSTs each task to the step's
    /// URL, which is never shown).
    #[schema(pattern = r"^(builtin|queue|http):.+$")]
    handler: String,
    chunk_size: u32,
    max_attempts: u32,
    timeout_secs: u64,
    on_item_failure: &'static str,
    /// The most failed items the step bears; one more fails the process. Absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    tolerated_failure_count: Option<u64>,
    /// The largest share (0 to 100) of the items that entered the step that may fail.
    /// Absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    tolerated_failure_percentage: Option<f64>,
    /// The most tasks of the step's queue leased at once across every node and worker.
    /// Absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    max_in_flight: Option<u32>,
}

/// `GET /v1/processdefinitions`
#[utoipa::path(get, path = "/v1/processdefinitions", tag = "processes", operation_id = "listProcessDefinitions",
    responses((status = 200, description = "The configured definitions", body = DefinitionsOut),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn definitions(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.auth.authorize(&req, Scope::StatusRead)?;
    let out: Vec<DefinitionOut> = state
        .definitions
        .iter()
        .map(|d| DefinitionOut {
            name: &d.name,
            steps: d
                .steps
                .iter()
                .enumerate()
                .map(|(n, s)| StepOut {
                    step_number: n,
                    name: &s.name,
                    handler: s.handler.to_string(),
                    chunk_size: s.chunk_size,
                    max_attempts: s.max_attempts,
                    timeout_secs: s.timeout_secs,
                    on_item_failure: s.on_item_failure.as_str(),
                    tolerated_failure_count: s.tolerance.count,
                    tolerated_failure_percentage: s.tolerance.percent(),
                    max_in_flight: s.max_in_flight,
                })
                .collect(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(DefinitionsOut { process_definitions: out }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use actix_web::test::TestRequest;
    use async_engine_domain::lifecycle::Refused;
    use async_engine_domain::work::MockProcessStore;
    use async_engine_domain::{CommandError, RepositoryError, Status, StreamedStartError};
    use serde_json::json;

    use crate::state::AppState;
    use crate::test_support::{send, state};

    async fn call(processes: MockProcessStore, request: TestRequest) -> (u16, serde_json::Value) {
        // No process is found by its ID first: the command is asked with the ID as given.
        let mut status = async_engine_domain::repository::MockStatusReader::new();
        status.expect_find_status().returning(|_| Ok(Vec::new()));
        send(AppState { processes: Arc::new(processes), status: Arc::new(status), ..state() }, request).await
    }

    #[actix_web::test]
    async fn start_bodies_are_checked_before_the_store_is_asked() {
        for (body, mention) in [
            (json!({ "asyncProcessName": "Nope", "referenceId": "r", "items": [] }), "'Nope'"),
            (json!({ "referenceId": "r", "items": [] }), "asyncProcessName is required"),
            (json!({ "asyncProcessName": "P", "items": [] }), "referenceId is required"),
            (json!({ "asyncProcessName": "P", "referenceId": "", "items": [] }), "referenceId is empty"),
            (json!({ "asyncProcessName": "P", "referenceId": "r" }), "items is required"),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": "x" }),
                "items must be a JSON array",
            ),
            (
                json!({ "asyncProcessName": 5, "referenceId": "r", "items": [] }),
                "asyncProcessName must be a string",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "additionalData": "x" }),
                "additionalData",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "callbackUrl": "http://x" }),
                "callbackUrl",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "startAt": "tomorrow" }),
                "startAt must be an RFC 3339 time",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "startAt": "2026-12-05T10:00:00" }),
                "with its offset",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "startAt": "9999-01-01T00:00:00Z" }),
                "at most 366 days ahead",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "startAt": 5 }),
                "startAt must be a string",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "priority": 101 }),
                "priority must be an integer from -100 to 100",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "priority": 1.5 }),
                "priority",
            ),
            (
                json!({ "asyncProcessName": "P", "referenceId": "r", "items": [], "priority": "high" }),
                "priority",
            ),
            (json!([1]), "JSON object"),
        ] {
            let request = TestRequest::post().uri("/v1/asyncprocesses").set_json(&body);
            let (status, answer) = call(MockProcessStore::new(), request).await;
            assert_eq!(status, 400, "{body}");
            assert!(answer["technicalMessage"].as_str().unwrap().contains(mention), "{body}: {answer}");
        }
        let request = TestRequest::post()
            .uri("/v1/asyncprocesses")
            .insert_header(("Idempotency-Key", "k".repeat(256)))
            .set_json(json!({ "asyncProcessName": "P", "referenceId": "r", "items": [] }));
        assert_eq!(call(MockProcessStore::new(), request).await.0, 400);
    }

    #[actix_web::test]
    async fn a_delayed_start_and_a_priority_reach_the_store() {
        let soon = chrono::Utc::now() + chrono::Duration::hours(1);
        let expected = soon.timestamp_micros();
        for (request, how) in [
            (
                TestRequest::post().uri("/v1/asyncprocesses").set_json(json!({
                    "asyncProcessName": "P", "referenceId": "r", "items": [], "priority": -7,
                    "startAt": soon.with_timezone(&chrono::FixedOffset::east_opt(3_600).unwrap()).to_rfc3339(),
                })),
                "JSON, written in another offset",
            ),
            (
                TestRequest::post()
                    .uri(&format!(
                        "/v1/asyncprocesses?asyncProcessName=P&referenceId=r&priority=-7&startAt={}",
                        soon.to_rfc3339().replace('+', "%2B")
                    ))
                    .insert_header(("Content-Type", "application/x-ndjson"))
                    .set_payload("1\n"),
                "NDJSON, in the query",
            ),
        ] {
            // Asked with anything else, the mock panics and nothing is marked.
            let asked = Arc::new(AtomicBool::new(false));
            let mut processes = MockProcessStore::new();
            let accepted = move |new: &async_engine_domain::NewProcess| (new.start_at_micros, new.priority) == (Some(expected), -7);
            let marked = asked.clone();
            processes.expect_start().withf(accepted).returning(move |_| {
                marked.store(true, Ordering::SeqCst);
                Err(RepositoryError::Unavailable("stop".into()))
            });
            let marked = asked.clone();
            processes.expect_start_streamed().withf(move |new, _| accepted(new)).returning(move |_, _| {
                marked.store(true, Ordering::SeqCst);
                Err(StreamedStartError::Storage(RepositoryError::Unavailable("stop".into())))
            });
            call(processes, request).await;
            assert!(asked.load(Ordering::SeqCst), "{how}: the store was asked with the instant");
        }
    }

    #[actix_web::test]
    async fn list_parameters_are_checked() {
        for query in ["limit=0", "limit=1001", "limit=x", "status=Done", "referenceId=", "cursor="] {
            let request = TestRequest::get().uri(&format!("/v1/asyncprocesses?{query}"));
            assert_eq!(call(MockProcessStore::new(), request).await.0, 400, "{query}");
        }
    }

    #[actix_web::test]
    async fn refused_commands_are_conflicts_and_unknown_processes_input_errors() {
        let mut processes = MockProcessStore::new();
        processes.expect_cancel().returning(|_, _, _| {
            Err(CommandError::Refused(Refused {
                command: "cancel",
                status: Status::Success,
                why: "it has already finished",
            }))
        });
        let (status, answer) = call(processes, TestRequest::post().uri("/v1/asyncprocesses/p1/cancel")).await;
        assert_eq!((status, answer["statusMessage"].as_str()), (409, Some("Conflict")));
        assert!(answer["technicalMessage"].as_str().unwrap().contains("already finished"));
        let mut processes = MockProcessStore::new();
        processes.expect_retry().returning(|_, id, _| Err(CommandError::NotRunnable(id.to_owned())));
        let (status, answer) = call(processes, TestRequest::post().uri("/v1/asyncprocesses/h1/retry")).await;
        assert_eq!(status, 409);
        assert!(answer["technicalMessage"].as_str().unwrap().contains("record of history"));
        let mut processes = MockProcessStore::new();
        processes.expect_retry().returning(|_, id, _| Err(CommandError::NotFound(id.to_owned())));
        let (status, answer) = call(processes, TestRequest::post().uri("/v1/asyncprocesses/zz/retry")).await;
        assert_eq!(status, 400);
        assert!(answer["technicalMessage"].as_str().unwrap().contains("'zz'"));
    }

    #[actix_web::test]
    async fn definitions_are_listed() {
        let (status, answer) =
            call(MockProcessStore::new(), TestRequest::get().uri("/v1/processdefinitions")).await;
        assert_eq!(status, 200);
        assert_eq!(
            answer["processDefinitions"][0],
            json!({ "name": "P", "steps": [{ "stepNumber": 0, "name": "S", "handler": "queue:q", "chunkSize": 10,
                     "maxAttempts": 3, "timeoutSecs": 60, "onItemFailure": "skip",
                     "toleratedFailureCount": 5, "toleratedFailurePercentage": 2.5, "maxInFlight": 2 }] })
        );
    }
}
