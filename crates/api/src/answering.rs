//! Answering status reads: the per-client limit, the governor limit, rendering the envelope
//! and its ETag, `If-None-Match`, and `Cache-Control: max-age`.

use std::time::{Duration, Instant};

use actix_web::http::header::{AGE, CACHE_CONTROL, HeaderValue, IF_NONE_MATCH};
use actix_web::{HttpRequest, HttpResponse};
use async_engine_domain::{Detail, IdKind, StatusQuery, TenantId};
use sha2::{Digest, Sha256};

use crate::answer::{Answer, Recent};
use crate::auth::Caller;
use crate::envelope::{Envelope, Record};
use crate::error::ApiError;
use crate::params::StatusRequest;
use crate::pool::blocking;
use crate::state::AppState;

pub(crate) async fn respond(
    req: &HttpRequest,
    state: &AppState,
    caller: &Caller,
    request: StatusRequest,
) -> Result<HttpResponse, ApiError> {
    if let Err(refused) = state.limiter.check(&state.auth.caller_key(req, caller), request.id.as_str()) {
        metrics::counter!("async_engine_status_reads_limited_total").increment(1);
        return Err(refused);
    }
    let recent = accepted_age(req, state.config.watch_interval)
        .and_then(|within| state.answers.recent(&caller.tenant, &request, within));
    if let Some(Recent { answer, age }) = recent {
        metrics::counter!("async_engine_status_reads_from_memory_total").increment(1);
        let mut response = conditional(&answer, req);
        response.headers_mut().insert(AGE, HeaderValue::from(age.as_secs()));
        return Ok(response);
    }
    let asked = Instant::now();
    // Where the marks can be read at once (SQLite), an unchanged lookup is answered here,
    // without handing the read to the blocking pool and back: that hop, two thread switches,
    // cost more than the read.
    let marks = state.status.change_marks_now(&request.query(&caller.tenant)).transpose()?;
    if let Some(marks) = &marks
        && let Some(held) = state.answers.get(&caller.tenant, &request, marks, asked)
    {
        return Ok(conditional(&held, req));
    }
    let (reading, tenant) = (state.clone(), caller.tenant.clone());
    let answer = blocking(move || match marks {
        Some(marks) => read_answer_at(&reading, &tenant, &request, marks, asked),
        None => read_answer(&reading, &tenant, &request),
    })
    .await??;
    Ok(conditional(&answer, req))
}

/// A 304 when the client holds the answer already, else the answer.
fn conditional(answer: &Answer, req: &HttpRequest) -> HttpResponse {
    if answer.matches(&if_none_match(req)) { answer.not_modified() } else { answer.response() }
}

/// How old an answer the caller accepts, sent without reading storage: its `Cache-Control:
/// max-age=N` (RFC 9111 §5.2.1.1), N of at least 1, held to `api.watch_interval_ms`, the
/// staleness waiting reads have too. None (every read validated, as by default) without it,
/// with `max-age=0` or `no-cache`, or with a value that is not a number of seconds.
pub(crate) fn accepted_age(req: &HttpRequest, watch_interval: Duration) -> Option<Duration> {
    let mut accepted: Option<u64> = None;
    for directive in
        req.headers().get_all(CACHE_CONTROL).filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
    {
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim();
        if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
            return None;
        }
        if name.eq_ignore_ascii_case("max-age") {
            // Several max-age directives: the strictest holds.
            let seconds: u64 = value.trim().trim_matches('"').parse().ok()?;
            accepted = Some(accepted.map_or(seconds, |held| held.min(seconds)));
        }
    }
    match accepted? {
        0 => None,
        seconds => Some(Duration::from_secs(seconds).min(watch_interval)),
    }
}

/// The entity tags of `If-None-Match`, weak or strong alike (a weak comparison, RFC 9110).
pub(crate) fn if_none_match(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all(IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/").to_owned())
        .filter(|tag| !tag.is_empty())
        .collect()
}

/// Reads and renders one status answer; storage work, so it runs on the blocking pool. An
/// unchanged lookup (its change marks as when its answer was last rendered) costs one small
/// read of the marks, and is answered with the bytes held.
pub fn read_answer(state: &AppState, tenant: &TenantId, request: &StatusRequest) -> Result<Answer, ApiError> {
    let asked = Instant::now();
    let marks = state.status.change_marks(&request.query(tenant))?;
    read_answer_at(state, tenant, request, marks, asked)
}

/// [`read_answer`] with the change marks read already, in a read begun at `asked`.
pub fn read_answer_at(
    state: &AppState,
    tenant: &TenantId,
    request: &StatusRequest,
    marks: Vec<(i64, i64)>,
    asked: Instant,
) -> Result<Answer, ApiError> {
    if let Some(held) = state.answers.get(tenant, request, &marks, asked) {
        return Ok(held);
    }
    let answer = render(state, tenant, request)?;
    // Read after the marks: if anything changed in between, the marks are older than the
    // answer, and the next read misses and reads again; a held answer is never older than
    // its marks.
    state.answers.put(tenant, request, marks, asked, &answer);
    Ok(answer)
}

/// The full read and its rendering.
fn render(state: &AppState, tenant: &TenantId, request: &StatusRequest) -> Result<Answer, ApiError> {
    let query = request.query(tenant);
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

/// The one process a sub-resource's `{id}` names (its items, results, deliveries, cancel,
/// retry): an asyncProcessId, or the referenceId of exactly one process, like the status call.
/// A referenceId of several is a 400 naming them; an ID that names none is passed on as it is,
/// for the call to answer as for a process that does not exist.
pub(crate) async fn resolve_target(
    state: &AppState,
    tenant: &TenantId,
    raw: &str,
) -> Result<String, ApiError> {
    let id = crate::params::parse_path_id(raw)?;
    let query =
        StatusQuery { tenant: tenant.clone(), id: id.clone(), kind: IdKind::Either, detail: Detail::Process };
    let status = state.status.clone();
    let records = blocking(move || status.find_status(&query)).await??;
    match records.as_slice() {
        [] => Ok(id.as_str().to_owned()),
        [one] => Ok(one.async_process_id.clone()),
        several => {
            let shown: Vec<&str> = several.iter().take(10).map(|r| r.async_process_id.as_str()).collect();
            let more =
                if several.len() > 10 { format!(" and {} more", several.len() - 10) } else { String::new() };
            Err(ApiError::input(format!(
                "the referenceId '{id}' names {} processes; name one by its asyncProcessId: {}{more}",
                several.len(),
                shown.join(", ")
            )))
        }
    }
}
