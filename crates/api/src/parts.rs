//! Uploads in parts (issue 15): `PUT /v1/asyncprocesses/{id}/parts/{n}` stores one part of an
//! open process's items (streamed like a start; a part put again is replaced), `GET .../parts`
//! lists them for a client that resumes, and `POST .../close` fixes their order and starts the
//! process.

use actix_web::{HttpRequest, HttpResponse, web};
use async_engine_domain::parts::part_number;
use async_engine_domain::{PartError, PartInfo, PartUpload, Status};
use serde::Serialize;
use utoipa::ToSchema;

use crate::answering::resolve_target;
use crate::auth::Scope;
use crate::clock::{now_micros, rfc3339};
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::pool::blocking;
use crate::routing::resource;
use crate::state::AppState;
use crate::upload::{self, Format, UploadLimits};

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/asyncprocesses/{id}/parts/{part}", "PUT").route(web::put().to(put_part)))
        .service(resource("/v1/asyncprocesses/{id}/parts", "GET, HEAD").route(web::get().to(parts)))
        .service(resource("/v1/asyncprocesses/{id}/close", "POST").route(web::post().to(close)));
}

fn part_error(error: PartError) -> ApiError {
    match error {
        PartError::Storage(error) => error.into(),
        PartError::NotFound(_) => ApiError::Input(error.to_string()),
        PartError::NotOpen { .. } | PartError::NotRunnable(_) => ApiError::Conflict(error.to_string()),
        // The spooled upload could not be read back: the server's failure, not the caller's.
        PartError::Items(why) => ApiError::Internal(why),
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PartOut {
    /// 1 to 10000.
    #[schema(minimum = 1, maximum = 10_000)]
    part: u32,
    /// The items the part holds.
    items: u64,
    /// The size of the upload it came from.
    bytes: u64,
    #[schema(format = DateTime)]
    received_at: String,
}

impl From<PartInfo> for PartOut {
    fn from(info: PartInfo) -> Self {
        Self {
            part: info.part,
            items: info.items,
            bytes: info.bytes,
            received_at: rfc3339(info.received_at_micros),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PutPartOut {
    async_process_id: String,
    #[serde(flatten)]
    part: PartOut,
    /// The part had been put before: these items replaced its earlier ones.
    replaced: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PartsOut {
    async_process_id: String,
    /// Still taking parts. False once closed (its items are then the process's), cancelled or
    /// expired; `parts` is then empty.
    open: bool,
    #[schema(value_type = crate::schema::StatusName)]
    status: &'static str,
    /// Items in every part so far.
    items: u64,
    /// In part order, which is the order of the items at the close.
    parts: Vec<PartOut>,
}

/// `PUT /v1/asyncprocesses/{id}/parts/{part}`
#[utoipa::path(put, path = "/v1/asyncprocesses/{id}/parts/{part}", tag = "processes", operation_id = "putAsyncProcessPart",
    description = "Stores one part of the items of a process started open, streamed and checked like a streamed start (NDJSON, or CSV with its own header row), up to limits.max_upload_bytes. Putting a part again replaces its items; a malformed or cut-off part leaves the part as it was. At the close, the items are numbered in part order.",
    request_body(content((String = "application/x-ndjson"), (String = "text/csv"))),
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255),
        ("part" = u32, Path, description = "The part's number", minimum = 1, maximum = 10000)),
    responses(
        (status = 200, description = "The part replaced an earlier one of the same number", body = PutPartOut),
        (status = 201, description = "The part is stored", body = PutPartOut),
        (status = 400, description = "A caller's mistake, named in technicalMessage (a malformed item is named by line and column; also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 409, description = "The process is not open for parts (closed, cancelled, expired, or not started open)", body = Envelope),
        (status = 413, description = "The part is larger than limits.max_upload_bytes", body = Envelope),
        (status = 415, description = "The body is not Content-Type: application/x-ndjson or text/csv (application/json included)", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn put_part(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::ProcessesWrite)?.tenant;
    let part = part_number(req.match_info().get("part").unwrap_or_default()).map_err(ApiError::Input)?;
    let format = Format::of(&req).ok_or_else(|| {
        ApiError::UnsupportedMediaType(
            "a part's items come as Content-Type: application/x-ndjson or text/csv".to_owned(),
        )
    })?;
    let id = resolve_target(&state, &tenant, req.match_info().get("id").unwrap_or_default()).await?;
    let limits = UploadLimits {
        max_bytes: state.config.max_upload_bytes,
        max_item_bytes: state.config.max_body_bytes,
        idle: state.config.body_timeout,
    };
    let spooled = upload::spool(&req, payload, format, limits).await?;
    let upload =
        PartUpload { tenant, async_process_id: id, part, bytes: spooled.bytes, now_micros: now_micros() };
    let store = state.processes.clone();
    let async_process_id = upload.async_process_id.clone();
    let receipt =
        blocking(move || store.put_part(&upload, &mut spooled.into_items())).await?.map_err(part_error)?;
    let mut answer = if receipt.replaced { HttpResponse::Ok() } else { HttpResponse::Created() };
    Ok(answer.json(PutPartOut { async_process_id, part: receipt.info.into(), replaced: receipt.replaced }))
}

/// `GET /v1/asyncprocesses/{id}/parts`
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}/parts", tag = "processes", operation_id = "listAsyncProcessParts",
    description = "The parts an open process holds so far, for a client that resumes an upload: a part listed with the items and bytes it sent is in.",
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255)),
    responses((status = 200, description = "Its parts, in part order", body = PartsOut),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 409, description = "The process was imported as a record of history", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn parts(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::StatusRead)?.tenant;
    let id = resolve_target(&state, &tenant, req.match_info().get("id").unwrap_or_default()).await?;
    let store = state.processes.clone();
    let parts = blocking(move || store.parts(&tenant, &id)).await?.map_err(part_error)?;
    let status: Status = parts.status;
    Ok(HttpResponse::Ok().json(PartsOut {
        async_process_id: parts.async_process_id,
        open: parts.open,
        status: status.as_str(),
        items: parts.parts.iter().map(|p| p.items).sum(),
        parts: parts.parts.into_iter().map(PartOut::from).collect(),
    }))
}

/// `POST /v1/asyncprocesses/{id}/close`
#[utoipa::path(post, path = "/v1/asyncprocesses/{id}/close", tag = "processes", operation_id = "closeAsyncProcess",
    description = "Ends the upload of an open process: its parts' items, in part order, become its items (numbered from 0) and step 0 starts.",
    params(("id" = String, Path, description = "An asyncProcessId, or a referenceId that names one process", min_length = 1, max_length = 255)),
    responses((status = 202, description = "Closed: the process runs", body = Envelope),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 409, description = "The process is not open (closed already, cancelled, expired, or not started open)", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub async fn close(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tenant = state.auth.authorize(&req, Scope::ProcessesWrite)?.tenant;
    let id = resolve_target(&state, &tenant, req.match_info().get("id").unwrap_or_default()).await?;
    let store = state.processes.clone();
    let record = blocking(move || store.close(&tenant, &id, now_micros())).await?.map_err(part_error)?;
    (state.on_new_work)();
    Ok(HttpResponse::Accepted().json(Envelope::accepted(&[record])))
}
