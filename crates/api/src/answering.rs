//! Answering status reads: the per-client limit, the governor limit, rendering the envelope
//! and its ETag, and `If-None-Match`.

use actix_web::http::header::IF_NONE_MATCH;
use actix_web::{HttpRequest, HttpResponse};
use async_engine_domain::{Detail, IdKind, StatusQuery, TenantId};
use sha2::{Digest, Sha256};

use crate::answer::Answer;
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
    let reading = state.clone();
    let tenant = caller.tenant.clone();
    let answer = blocking(move || read_answer(&reading, &tenant, &request)).await??;
    if answer.matches(&if_none_match(req)) {
        return Ok(answer.not_modified());
    }
    Ok(answer.response())
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
    let marks = state.status.change_marks(&request.query(tenant))?;
    read_answer_at(state, tenant, request, marks)
}

/// [`read_answer`] with the change marks read already, before this call.
pub fn read_answer_at(
    state: &AppState,
    tenant: &TenantId,
    request: &StatusRequest,
    marks: Vec<(i64, i64)>,
) -> Result<Answer, ApiError> {
    if let Some(held) = state.answers.get(tenant, request, &marks) {
        return Ok(held);
    }
    let answer = render(state, tenant, request)?;
    // Read after the marks: if anything changed in between, the marks are older than the
    // answer, and the next read misses and reads again; a held answer is never older than
    // its marks.
    state.answers.put(tenant, request, marks, &answer);
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
