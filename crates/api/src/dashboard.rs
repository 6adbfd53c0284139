//! The web dashboard (contract §7, `GET /`): server-rendered pages from askama templates
//! compiled into the binary, plain HTML and CSS with a few lines of script for live progress
//! from the event stream; nothing is fetched from elsewhere. It honours auth and tenants like
//! every other call: a browser signs in with an API token kept in a SameSite=Strict cookie.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::http::header::{HOST, LOCATION, ORIGIN};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use async_engine_domain::{
    Detail, IdKind, ItemsQuery, ListError, ListQuery, LookupId, OutcomeFilter, ProcessStatus, Status,
    StatusQuery, TenantId,
};

use crate::AppState;
use crate::auth::{Caller, SESSION_COOKIE, Scope};
use crate::clock::{now_micros, rfc3339};
use crate::error::ApiError;
use crate::handlers::{blocking, read_body};
use crate::params;

/// Processes per list page.
const PAGE: u32 = 25;
/// Items per items page.
const ITEMS_PAGE: u32 = 200;
/// A process page lists its failure groups when it has at most this many outcomes; larger ones
/// link to the items pages instead of reading every item.
const MAX_LISTED: u64 = 5_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(list))
        .route("/processes/{id}", web::get().to(process))
        .route("/processes/{id}/steps/{step}/items", web::get().to(items))
        .route("/processes/{id}/cancel", web::post().to(cancel))
        .route("/processes/{id}/retry", web::post().to(retry))
        .route("/login", web::get().to(login_form))
        .route("/login", web::post().to(login))
        .route("/logout", web::post().to(logout));
}

struct StepView {
    number: u32,
    name: String,
    status: String,
    message: String,
    processed: u64,
    total: u64,
    /// `max` of the progress bar: never 0, which browsers draw as indeterminate.
    max: u64,
    groups: Vec<GroupView>,
    groups_shown: bool,
}

struct GroupView {
    code: i64,
    message: String,
    count: usize,
    sample: String,
}

struct ProcessView {
    id: String,
    id_path: String,
    name: String,
    reference: String,
    status: String,
    message: String,
    created: String,
    updated: String,
    duration: String,
    current_step: u32,
    total_steps: u32,
    steps: Vec<StepView>,
    additional_data: String,
}

impl ProcessView {
    fn new(process: &ProcessStatus, groups_shown: bool) -> Self {
        let end = if process.status.is_final() { process.updated_at_micros } else { now_micros() };
        let steps = process
            .steps
            .iter()
            .flatten()
            .map(|step| StepView {
                number: step.step_number,
                name: step.step_name.clone(),
                status: step.status.as_str().to_owned(),
                message: step.message.clone(),
                processed: step.processed,
                total: step.total,
                max: step.total.max(1),
                groups: step
                    .items
                    .iter()
                    .flat_map(|items| &items.failed)
                    .map(|group| GroupView {
                        code: group.code,
                        message: group.status_message.clone(),
                        count: group.items.len(),
                        sample: sample(group.items.iter().map(|i| i.as_str())),
                    })
                    .collect(),
                groups_shown,
            })
            .collect();
        ProcessView {
            id_path: percent_encoding::utf8_percent_encode(
                &process.async_process_id,
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string(),
            id: process.async_process_id.clone(),
            name: process.name.clone(),
            reference: process.reference_id.clone(),
            status: process.status.as_str().to_owned(),
            message: process.message.clone(),
            created: rfc3339(process.created_at_micros),
            updated: rfc3339(process.updated_at_micros),
            duration: duration(end.saturating_sub(process.created_at_micros)),
            current_step: process.current_step_number,
            total_steps: process.total_number_of_steps,
            steps,
            additional_data: serde_json::from_str::<serde_json::Value>(process.additional_data.as_str())
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| process.additional_data.as_str().to_owned()),
        }
    }
}

/// The first few items of a group, as written.
fn sample<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut items = items.peekable();
    let mut shown: Vec<&str> = Vec::new();
    while let Some(item) = items.next() {
        if shown.len() == 3 {
            return format!("{}, …", shown.join(", "));
        }
        shown.push(item);
        if items.peek().is_none() {
            break;
        }
    }
    shown.join(", ")
}

fn duration(micros: i64) -> String {
    let seconds = micros.max(0) / 1_000_000;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3_600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3_600, (seconds % 3_600) / 60),
    }
}

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage {
    signed_in: bool,
    statuses: Vec<&'static str>,
    filter_status: String,
    filter_name: String,
    filter_reference: String,
    processes: Vec<ProcessView>,
    next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "process.html")]
struct ProcessPage {
    signed_in: bool,
    process: ProcessView,
    running: bool,
    can_cancel: bool,
    can_retry: bool,
}

struct ItemView {
    index: u64,
    item: String,
    code: String,
    message: String,
}

#[derive(Template)]
#[template(path = "items.html")]
struct ItemsPage {
    signed_in: bool,
    id: String,
    id_path: String,
    step: u32,
    outcome: Option<&'static str>,
    items: Vec<ItemView>,
    next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    signed_in: bool,
    title: String,
    text: String,
    login: bool,
}

fn html(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(body) => HttpResponse::build(status).content_type("text/html; charset=utf-8").body(body),
        Err(error) => {
            tracing::error!(%error, "a dashboard page could not be rendered");
            HttpResponse::InternalServerError()
                .content_type("text/html; charset=utf-8")
                .body("Internal error")
        }
    }
}

/// An error as a page: the sign-in form for a missing or unknown token, else the text.
fn error_page(state: &AppState, error: ApiError) -> HttpResponse {
    let signed_in = state.auth.enabled();
    let (status, title, text, login) = match error {
        ApiError::Unauthorized(_) => {
            (StatusCode::UNAUTHORIZED, "Sign in", "This server asks for an API token.".to_owned(), true)
        }
        ApiError::Forbidden(text) => (StatusCode::FORBIDDEN, "Not allowed", text, false),
        ApiError::Input(text) => (StatusCode::BAD_REQUEST, "Not found", text, false),
        ApiError::Internal(detail) => {
            tracing::error!(error = %detail, "dashboard request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The server could not complete the request; the cause is in its log.".to_owned(),
                false,
            )
        }
        other => (StatusCode::BAD_REQUEST, "Cannot do that", other.to_string(), false),
    };
    html(status, &MessagePage { signed_in: signed_in && !login, title: title.to_owned(), text, login })
}

fn query_pairs(req: &HttpRequest) -> Vec<(String, String)> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `GET /`: the process list, newest first, filtered and paged.
async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&state, error),
    };
    match list_page(&req, &state, caller.tenant).await {
        Ok(page) => html(StatusCode::OK, &page),
        Err(error) => error_page(&state, error),
    }
}

async fn list_page(req: &HttpRequest, state: &AppState, tenant: TenantId) -> Result<ListPage, ApiError> {
    let mut query = ListQuery {
        tenant,
        status: None,
        name: None,
        reference_id: None,
        limit: PAGE,
        cursor: None,
        with_steps: true,
    };
    for (name, value) in query_pairs(req) {
        // An empty form field means no filter.
        if !value.is_empty() {
            crate::processes::list_filter(&mut query, &name, &value)?;
        }
    }
    let filters = query.clone();
    let store = state.processes.clone();
    let page = blocking(move || store.list(&query)).await?.map_err(|e| match e {
        ListError::BadCursor => ApiError::input("that page link is not one this server gave out"),
        ListError::Storage(error) => error.into(),
    })?;
    let next_page = page.next_cursor.map(|cursor| {
        let mut link = format!("/?cursor={}", encode(&cursor));
        if let Some(status) = filters.status {
            link.push_str(&format!("&status={}", status.as_str()));
        }
        if let Some(name) = &filters.name {
            link.push_str(&format!("&asyncProcessName={}", encode(name)));
        }
        if let Some(reference) = &filters.reference_id {
            link.push_str(&format!("&referenceId={}", encode(reference)));
        }
        link
    });
    Ok(ListPage {
        signed_in: state.auth.enabled(),
        statuses: Status::ALL.iter().map(|s| s.as_str()).collect(),
        filter_status: filters.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        filter_name: filters.name.unwrap_or_default(),
        filter_reference: filters.reference_id.unwrap_or_default(),
        processes: page.records.iter().map(|p| ProcessView::new(p, false)).collect(),
        next_page,
    })
}

fn path_id(req: &HttpRequest) -> Result<LookupId, ApiError> {
    params::parse_path_id(req.match_info().get("id").unwrap_or_default())
}

/// `GET /processes/{id}`: one process, its steps, failure groups and additional data.
async fn process(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&state, error),
    };
    match process_page(&req, &state, &caller).await {
        Ok(page) => html(StatusCode::OK, &page),
        Err(error) => error_page(&state, error),
    }
}

async fn process_page(req: &HttpRequest, state: &AppState, caller: &Caller) -> Result<ProcessPage, ApiError> {
    let id = path_id(req)?;
    let query = StatusQuery {
        tenant: caller.tenant.clone(),
        id,
        kind: IdKind::AsyncProcessId,
        detail: Detail::Steps,
    };
    let reader = state.status.clone();
    let process = blocking(move || -> Result<Option<ProcessStatus>, ApiError> {
        let Some(summary) = reader.find_status(&query)?.into_iter().next() else {
            return Ok(None);
        };
        let outcomes: u64 = summary.steps.iter().flatten().map(|s| s.processed).sum();
        if outcomes > MAX_LISTED {
            return Ok(Some(summary));
        }
        let full = StatusQuery { detail: Detail::Items, ..query };
        Ok(reader.find_status(&full)?.into_iter().next().or(Some(summary)))
    })
    .await??
    .ok_or_else(|| ApiError::input("no process has this asyncProcessId"))?;
    let groups_shown = process.steps.iter().flatten().all(|s| s.items.is_some());
    let status = process.status;
    Ok(ProcessPage {
        signed_in: state.auth.enabled(),
        process: ProcessView::new(&process, groups_shown),
        running: !status.is_final(),
        can_cancel: caller.may(Scope::ProcessesWrite) && !status.is_final(),
        can_retry: caller.may(Scope::ProcessesWrite) && status == Status::Failed,
    })
}

/// `GET /processes/{id}/steps/{step}/items`: a page of one step's items.
async fn items(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&state, error),
    };
    match items_page(&req, &state, caller.tenant).await {
        Ok(page) => html(StatusCode::OK, &page),
        Err(error) => error_page(&state, error),
    }
}

async fn items_page(req: &HttpRequest, state: &AppState, tenant: TenantId) -> Result<ItemsPage, ApiError> {
    let id = path_id(req)?;
    let step = req
        .match_info()
        .get("step")
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| ApiError::input("the step must be a whole number"))?;
    let mut query = ItemsQuery {
        tenant,
        async_process_id: id.as_str().to_owned(),
        step_number: step,
        outcome: OutcomeFilter::Any,
        limit: ITEMS_PAGE,
        cursor: None,
    };
    let mut outcome = None;
    for (name, value) in query_pairs(req) {
        match (name.as_str(), value.as_str()) {
            ("outcome", "failed") => (query.outcome, outcome) = (OutcomeFilter::Failed, Some("failed")),
            ("outcome", "successful") => {
                (query.outcome, outcome) = (OutcomeFilter::Successful, Some("successful"))
            }
            ("cursor", cursor) => query.cursor = Some(params::bounded("cursor", cursor)?),
            _ => {}
        }
    }
    let page = crate::processes::read_items(state, query).await?;
    let id_path =
        percent_encoding::utf8_percent_encode(id.as_str(), percent_encoding::NON_ALPHANUMERIC).to_string();
    let next_page = page.next_cursor.map(|cursor| {
        let filter = outcome.map(|o| format!("&outcome={o}")).unwrap_or_default();
        format!("/processes/{id_path}/steps/{step}/items?cursor={}{filter}", encode(&cursor))
    });
    Ok(ItemsPage {
        signed_in: state.auth.enabled(),
        id: id.as_str().to_owned(),
        id_path,
        step,
        outcome,
        items: page
            .items
            .into_iter()
            .map(|listed| ItemView {
                index: listed.index,
                item: listed.item.as_str().to_owned(),
                code: listed.failure.as_ref().map(|f| f.0.to_string()).unwrap_or_default(),
                message: listed.failure.map(|f| f.1).unwrap_or_default(),
            })
            .collect(),
        next_page,
    })
}

/// A form POST from another site must not act for a signed-in (or local) user: browsers send
/// `Origin` with such requests, and it must name this server.
fn same_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = req.headers().get(HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    if origin_host == host {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this form was sent from another site".into()))
    }
}

fn back_to(id: &str) -> HttpResponse {
    let path = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    HttpResponse::SeeOther().insert_header((LOCATION, format!("/processes/{path}"))).finish()
}

async fn command(req: HttpRequest, state: web::Data<AppState>, retry: bool) -> HttpResponse {
    let caller = match state.auth.authorize(&req, Scope::ProcessesWrite) {
        Ok(caller) => caller,
        Err(error) => return error_page(&state, error),
    };
    let run = async {
        same_origin(&req)?;
        let id = path_id(&req)?.as_str().to_owned();
        let store = state.processes.clone();
        let target = id.clone();
        let tenant = caller.tenant.clone();
        blocking(move || {
            if retry {
                store.retry(&tenant, &target, now_micros())
            } else {
                store.cancel(&tenant, &target, now_micros())
            }
        })
        .await?
        .map_err(crate::processes::command_error)?;
        if retry {
            (state.on_new_work)();
        }
        Ok::<_, ApiError>(back_to(&id))
    };
    run.await.unwrap_or_else(|error| error_page(&state, error))
}

async fn cancel(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    command(req, state, false).await
}

async fn retry(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    command(req, state, true).await
}

async fn login_form(state: web::Data<AppState>) -> HttpResponse {
    error_page(&state, ApiError::Unauthorized(String::new()))
}

/// `POST /login`: a token that is a key of this server becomes the browser's session cookie.
async fn login(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let run = async {
        same_origin(&req)?;
        let body = read_body(&req, payload, 4096).await?;
        let token = form_urlencoded::parse(&body)
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default();
        state.auth.authenticate(Some(&token))?.require(Scope::StatusRead)?;
        let cookie = Cookie::build(SESSION_COOKIE, token)
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .finish();
        Ok::<_, ApiError>(HttpResponse::SeeOther().insert_header((LOCATION, "/")).cookie(cookie).finish())
    };
    run.await.unwrap_or_else(|error| error_page(&state, error))
}

async fn logout() -> HttpResponse {
    let mut cookie =
        Cookie::build(SESSION_COOKIE, "").path("/").http_only(true).same_site(SameSite::Strict).finish();
    cookie.make_removal();
    HttpResponse::SeeOther().insert_header((LOCATION, "/")).cookie(cookie).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_durations_read_well() {
        assert_eq!(sample(["1", "2"].into_iter()), "1, 2");
        assert_eq!(sample(["1", "2", "3", "4"].into_iter()), "1, 2, 3, …");
        assert_eq!(sample(std::iter::empty()), "");
        assert_eq!(duration(59_000_000), "59 s");
        assert_eq!(duration(61_000_000), "1 min 1 s");
        assert_eq!(duration(7_260_000_000), "2 h 1 min");
    }
}
