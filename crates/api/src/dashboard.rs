//! The web dashboard (contract §7, `GET /`): server-rendered pages from askama templates
//! compiled into the binary, plain HTML and CSS with a few lines of script for live progress
//! from the event stream (a served script: pages allow no inline script); nothing is fetched
//! from elsewhere. It honours auth and tenants like every other call: a browser signs in with
//! an API token once and then holds a signed, expiring session cookie (`auth.rs`), and every
//! form carries a CSRF token that is checked before anything else.

use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, HOST, HeaderName, LOCATION, ORIGIN, RETRY_AFTER};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use async_engine_domain::{
    Detail, FailureCount, IdKind, ItemsQuery, ListError, ListQuery, LookupId, OutcomeFilter, ProcessStatus,
    Status, StatusQuery, TenantId, Totals,
};

use crate::auth::{Auth, CSRF_COOKIE, CSRF_FIELD, Caller, SESSION_COOKIE, Scope};
use crate::body::read_body;
use crate::clock::now_micros;
use crate::error::ApiError;
use crate::params;
use crate::pool::blocking;
use crate::routing::resource;
use crate::state::AppState;

mod views;

use views::{
    DefinitionsPage, DeliveriesPage, DeliveryView, ItemView, ItemsPage, ListPage, MessagePage, ProcessPage,
    ProcessView, QueuesPage, SummaryView, html, id_path,
};

/// Processes per list page.
const PAGE: u32 = 25;
/// Items per items page.
const ITEMS_PAGE: u32 = 200;
/// A process page lists its failure groups when it has at most this many outcomes; larger ones
/// link to the items pages instead of reading every item.
const MAX_LISTED: u64 = 5_000;
/// The list's "finished lately" counts processes that finished this many minutes back.
const RECENT_MINUTES: i64 = 15;
/// The largest dashboard form (a token and a CSRF token).
const MAX_FORM_BYTES: usize = 4096;
/// The page script (live progress from the event stream) and style sheet, compiled in.
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");
/// Where the browser says a request comes from (Fetch Metadata): `same-origin`, `same-site`,
/// `cross-site` or `none`.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Resources, like the API's, so that a wrong method gets a 405 naming the right ones.
    const GET: &str = "GET, HEAD";
    const POST: &str = "POST";
    cfg.service(resource("/", GET).route(web::get().to(list)))
        .service(resource("/processes/{id}", GET).route(web::get().to(process)))
        .service(resource("/processes/{id}/steps/{step}/items", GET).route(web::get().to(items)))
        .service(resource("/processes/{id}/steps/{step}/results", GET).route(web::get().to(results)))
        .service(resource("/processes/{id}/deliveries", GET).route(web::get().to(deliveries)))
        .service(resource("/queues", GET).route(web::get().to(queues)))
        .service(resource("/definitions", GET).route(web::get().to(definitions)))
        .service(resource("/processes/{id}/cancel", POST).route(web::post().to(cancel)))
        .service(resource("/processes/{id}/retry", POST).route(web::post().to(retry)))
        .service(
            resource("/login", "GET, HEAD, POST")
                .route(web::get().to(login_form))
                .route(web::post().to(login)),
        )
        .service(resource("/logout", POST).route(web::post().to(logout)))
        .service(resource("/assets/dashboard.js", GET).route(web::get().to(script)))
        .service(resource("/assets/dashboard.css", GET).route(web::get().to(style)));
}

/// The browser's CSRF cookie (a new one when it has none) and the token its forms carry.
struct Csrf {
    cookie: String,
    fresh: bool,
    token: String,
}

impl Csrf {
    fn of(req: &HttpRequest, auth: &Auth) -> Self {
        let held = req
            .cookie(CSRF_COOKIE)
            .map(|c| c.value().to_owned())
            .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        let (cookie, fresh) = match held {
            Some(cookie) => (cookie, false),
            None => match Auth::new_csrf_cookie() {
                Ok(cookie) => (cookie, true),
                // Forms then fail their check (403) rather than the page.
                Err(error) => {
                    tracing::error!(%error, "no CSRF cookie could be made");
                    (String::new(), false)
                }
            },
        };
        let token = auth.csrf_token(&cookie, &session_cookie(req));
        Csrf { cookie, fresh, token }
    }
}

fn session_cookie(req: &HttpRequest) -> String {
    req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()).unwrap_or_default()
}

/// HttpOnly, SameSite=Lax, for the whole site; `Secure` when the request came over TLS.
///
/// Lax, not Strict: a browser following a link from another site (a chat message, a ticket)
/// then arrives with its session and CSRF cookies, instead of seeing the sign-in page with a
/// CSRF token made for no session, which its own next post (Strict cookies and all) would fail.
/// Lax cookies go with other sites' top-level `GET`s only, never their posts or scripts' calls:
/// the session then authorizes reads, whose answers the other site cannot see (no framing, no
/// CORS), and forms, which need the CSRF token of a page that site cannot read.
fn cookie(req: &HttpRequest, auth: &Auth, name: &'static str, value: String) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(auth.over_tls(req))
        .finish()
}

/// A page, with the CSRF cookie its forms' tokens were made from when the browser lacked one.
fn page(
    req: &HttpRequest,
    state: &AppState,
    csrf: &Csrf,
    status: StatusCode,
    page: &impl Template,
) -> HttpResponse {
    let mut response = html(status, page);
    if csrf.fresh {
        add_cookie(&mut response, &cookie(req, &state.auth, CSRF_COOKIE, csrf.cookie.clone()));
    }
    response
}

fn add_cookie(response: &mut HttpResponse, cookie: &Cookie<'_>) {
    if let Err(error) = response.add_cookie(cookie) {
        tracing::error!(%error, "a dashboard cookie could not be set");
    }
}

/// Refuses a form whose CSRF token is not the one of this browser's cookies, whatever its
/// `Origin` or `Referer` say: another site can make a browser send a form, not read the token.
fn check_csrf(req: &HttpRequest, auth: &Auth, form: &[(String, String)]) -> Result<(), ApiError> {
    let csrf_cookie = req.cookie(CSRF_COOKIE).map(|c| c.value().to_owned()).unwrap_or_default();
    let token = form.iter().find(|(name, _)| name == CSRF_FIELD).map_or("", |(_, value)| value.as_str());
    if auth.csrf_matches(&csrf_cookie, &session_cookie(req), token) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "this form's CSRF token is missing or out of date; reload the page and send it again".into(),
        ))
    }
}

/// A form's fields, once its origin (`same_origin`) and its CSRF token have been checked.
async fn checked_form(
    req: &HttpRequest,
    payload: web::Payload,
    auth: &Auth,
) -> Result<Vec<(String, String)>, ApiError> {
    // The headers first: a post from another site is refused before its body is read.
    same_origin(req, auth)?;
    let body = read_body(req, payload, MAX_FORM_BYTES).await?;
    let form: Vec<(String, String)> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    check_csrf(req, auth, &form)?;
    Ok(form)
}

/// An error as a page: the sign-in form for a missing or unknown token, else the text.
fn error_page(req: &HttpRequest, state: &AppState, error: ApiError) -> HttpResponse {
    let csrf = Csrf::of(req, &state.auth);
    let signed_in = state.auth.enabled();
    let retry_after = match &error {
        ApiError::AuthThrottled { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    let (status, title, text, login) = match error {
        ApiError::Unauthorized(_) => {
            (StatusCode::UNAUTHORIZED, "Sign in", "This server asks for an API token.".to_owned(), true)
        }
        error @ ApiError::AuthThrottled { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, "Too many attempts", error.to_string(), false)
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
    let message = MessagePage {
        signed_in: signed_in && !login,
        csrf: csrf.token.clone(),
        title: title.to_owned(),
        text,
        login,
    };
    let mut response = page(req, state, &csrf, status, &message);
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(RETRY_AFTER, seconds.into());
    }
    response
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
    let caller = match state.auth.authorize_page(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&req, &state, error),
    };
    let csrf = Csrf::of(&req, &state.auth);
    match list_page(&req, &state, caller.tenant, csrf.token.clone()).await {
        Ok(list) => page(&req, &state, &csrf, StatusCode::OK, &list),
        Err(error) => error_page(&req, &state, error),
    }
}

async fn list_page(
    req: &HttpRequest,
    state: &AppState,
    tenant: TenantId,
    csrf: String,
) -> Result<ListPage, ApiError> {
    let mut query = ListQuery {
        tenant,
        status: None,
        name: None,
        reference_id: None,
        limit: PAGE,
        cursor: None,
        with_steps: true,
        prefix: true,
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
    let totals = read_totals(state, filters.tenant.clone()).await?;
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
        csrf,
        summary: SummaryView::new(&totals, RECENT_MINUTES),
        statuses: Status::ALL.iter().map(|s| s.as_str()).collect(),
        filter_status: filters.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        filter_name: filters.name.unwrap_or_default(),
        filter_reference: filters.reference_id.unwrap_or_default(),
        processes: page.records.iter().map(|p| ProcessView::new(p, false)).collect(),
        next_page,
    })
}

/// The tenant's processes by status, and those finished in the last [`RECENT_MINUTES`].
async fn read_totals(state: &AppState, tenant: TenantId) -> Result<Totals, ApiError> {
    let ops = state.ops.clone();
    let since = now_micros().saturating_sub(RECENT_MINUTES * 60 * 1_000_000);
    Ok(blocking(move || ops.totals(&tenant, since)).await??)
}

/// `GET /queues`: the tenant's queues (depth, leases, the oldest due task) and the workers
/// holding leases, with their latest claim or heartbeat.
async fn queues(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize_page(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&req, &state, error),
    };
    let csrf = Csrf::of(&req, &state.auth);
    let (ops, now) = (state.ops.clone(), now_micros());
    match blocking(move || ops.loads(&caller.tenant, now)).await {
        Ok(Ok(loads)) => {
            let queues = QueuesPage::new(state.auth.enabled(), csrf.token.clone(), &loads, now);
            page(&req, &state, &csrf, StatusCode::OK, &queues)
        }
        Ok(Err(error)) => error_page(&req, &state, error.into()),
        Err(error) => error_page(&req, &state, error),
    }
}

/// `GET /definitions`: the definitions this server runs, each step's handler and policies.
async fn definitions(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(error) = state.auth.authorize_page(&req, Scope::StatusRead) {
        return error_page(&req, &state, error);
    }
    let csrf = Csrf::of(&req, &state.auth);
    let definitions = DefinitionsPage::new(state.auth.enabled(), csrf.token.clone(), &state.definitions);
    page(&req, &state, &csrf, StatusCode::OK, &definitions)
}

/// `GET /processes/{id}/deliveries`: a process's FinishProcess notifications and how each went.
async fn deliveries(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize_page(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&req, &state, error),
    };
    let csrf = Csrf::of(&req, &state.auth);
    let shown = async {
        let id = path_id(&req)?;
        let store = state.deliveries.clone();
        let lookup = id.as_str().to_owned();
        let records = blocking(move || store.deliveries(&caller.tenant, &lookup))
            .await??
            .ok_or_else(|| ApiError::input("no process has this asyncProcessId"))?;
        Ok::<_, ApiError>(DeliveriesPage {
            signed_in: state.auth.enabled(),
            csrf: csrf.token.clone(),
            id_path: id_path(id.as_str()),
            id: id.as_str().to_owned(),
            deliveries: records.iter().map(DeliveryView::new).collect(),
        })
    };
    match shown.await {
        Ok(deliveries) => page(&req, &state, &csrf, StatusCode::OK, &deliveries),
        Err(error) => error_page(&req, &state, error),
    }
}

fn path_id(req: &HttpRequest) -> Result<LookupId, ApiError> {
    params::parse_path_id(req.match_info().get("id").unwrap_or_default())
}

/// `GET /processes/{id}`: one process, its steps, failure groups and additional data.
async fn process(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize_page(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&req, &state, error),
    };
    let csrf = Csrf::of(&req, &state.auth);
    match process_page(&req, &state, &caller, csrf.token.clone()).await {
        Ok(process) => page(&req, &state, &csrf, StatusCode::OK, &process),
        Err(error) => error_page(&req, &state, error),
    }
}

/// A process as its page shows it, and its failure groups' counts when it is too large to list.
type Shown = (ProcessStatus, Option<Vec<FailureCount>>);

async fn process_page(
    req: &HttpRequest,
    state: &AppState,
    caller: &Caller,
    csrf: String,
) -> Result<ProcessPage, ApiError> {
    let id = path_id(req)?;
    let query = StatusQuery {
        tenant: caller.tenant.clone(),
        id,
        kind: IdKind::AsyncProcessId,
        detail: Detail::Steps,
    };
    let (reader, ops) = (state.status.clone(), state.ops.clone());
    let (process, counts) = blocking(move || -> Result<Option<Shown>, ApiError> {
        let Some(summary) = reader.find_status(&query)?.into_iter().next() else {
            return Ok(None);
        };
        let outcomes: u64 = summary.steps.iter().flatten().map(|s| s.processed).sum();
        if outcomes > MAX_LISTED {
            // Too many to list: the groups are counted instead.
            let counts = ops.failure_counts(&query.tenant, &summary.async_process_id)?;
            return Ok(Some((summary, Some(counts))));
        }
        let full = StatusQuery { detail: Detail::Items, ..query };
        Ok(Some((reader.find_status(&full)?.into_iter().next().unwrap_or(summary), None)))
    })
    .await??
    .ok_or_else(|| ApiError::input("no process has this asyncProcessId"))?;
    let groups_shown = process.steps.iter().flatten().all(|s| s.items.is_some());
    let view = ProcessView::new(&process, groups_shown);
    let view = match &counts {
        Some(counts) => view.with_counts(counts),
        None => view,
    };
    let status = process.status;
    let (running, writer) = (process.runnable && !status.is_final(), caller.may(Scope::ProcessesWrite));
    Ok(ProcessPage {
        signed_in: state.auth.enabled(),
        csrf,
        process: view,
        running,
        can_cancel: writer && running,
        can_retry: writer && process.runnable && status == Status::Failed,
    })
}

/// `GET /processes/{id}/steps/{step}/items`: a page of one step's items.
async fn items(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize_page(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&req, &state, error),
    };
    let csrf = Csrf::of(&req, &state.auth);
    match items_page(&req, &state, caller.tenant, csrf.token.clone()).await {
        Ok(items) => page(&req, &state, &csrf, StatusCode::OK, &items),
        Err(error) => error_page(&req, &state, error),
    }
}

/// `GET /processes/{id}/steps/{step}/results?outcome=&format=`: a step's result file, for the
/// page's download links (the session's key, as for every page).
async fn results(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let caller = match state.auth.authorize_page(&req, Scope::StatusRead) {
        Ok(caller) => caller,
        Err(error) => return error_page(&req, &state, error),
    };
    let step = req.match_info().get("step").unwrap_or_default().to_owned();
    match crate::results::results_file(&req, &state, &caller.tenant, &step).await {
        Ok(file) => file,
        Err(error) => error_page(&req, &state, error),
    }
}

async fn items_page(
    req: &HttpRequest,
    state: &AppState,
    tenant: TenantId,
    csrf: String,
) -> Result<ItemsPage, ApiError> {
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
    let id_path = id_path(id.as_str());
    let next_page = page.next_cursor.map(|cursor| {
        let filter = outcome.map(|o| format!("&outcome={o}")).unwrap_or_default();
        format!("/processes/{id_path}/steps/{step}/items?cursor={}{filter}", encode(&cursor))
    });
    Ok(ItemsPage {
        signed_in: state.auth.enabled(),
        csrf,
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

/// A form POST from another site must not act for a signed-in (or local) user: on top of the
/// CSRF token (the check that holds), what the browser says of the form's origin must not be
/// another site. `Sec-Fetch-Site` decides where browsers send it (`same-origin`, or `none` for
/// the user's own doing); else an `Origin` must name this server, by `Host` or by
/// `server.public_url` (a proxy may rewrite `Host`). `Origin: null` is what browsers send for
/// a page's own form under the pages' `Referrer-Policy: no-referrer`: it says nothing, so it
/// counts as absent.
fn same_origin(req: &HttpRequest, auth: &Auth) -> Result<(), ApiError> {
    let header = |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let from_elsewhere = || Err(ApiError::Forbidden("this form was sent from another site".into()));
    if let Some(site) = header(SEC_FETCH_SITE) {
        return if site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none") {
            Ok(())
        } else {
            // `cross-site`, `same-site` (another host of the same site), or nothing a browser sends.
            from_elsewhere()
        };
    }
    let Some(origin) = header(ORIGIN).filter(|origin| !origin.eq_ignore_ascii_case("null")) else {
        return Ok(());
    };
    let host = header(HOST).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    if (!host.is_empty() && origin_host.eq_ignore_ascii_case(host)) || auth.is_public_origin(origin) {
        Ok(())
    } else {
        from_elsewhere()
    }
}

fn back_to(id: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((LOCATION, format!("/processes/{}", id_path(id)))).finish()
}

async fn command(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    retry: bool,
) -> HttpResponse {
    let run = async {
        checked_form(&req, payload, &state.auth).await?;
        let caller = state.auth.authorize_page(&req, Scope::ProcessesWrite)?;
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
    run.await.unwrap_or_else(|error| error_page(&req, &state, error))
}

async fn cancel(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    command(req, payload, state, false).await
}

async fn retry(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    command(req, payload, state, true).await
}

async fn login_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    error_page(&req, &state, ApiError::Unauthorized(String::new()))
}

/// `POST /login`: a token that is a key of this server starts a session, whose signed cookie
/// names the key (never the token) and expires after `auth.session_ttl_secs`. Failed tokens
/// count towards the address's throttle like the API's.
async fn login(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let run = async {
        let form = checked_form(&req, payload, &state.auth).await?;
        let home = HttpResponse::SeeOther().insert_header((LOCATION, "/")).finish();
        if !state.auth.enabled() {
            return Ok(home);
        }
        let token = form.iter().find(|(name, _)| name == "token").map_or("", |(_, value)| value.trim());
        let caller = state.auth.check_token(&req, Some(token))?;
        caller.require(Scope::StatusRead)?;
        let (session, lasts) = state.auth.start_session(&caller)?;
        let mut session = cookie(&req, &state.auth, SESSION_COOKIE, session);
        session.set_max_age(time::Duration::seconds(i64::try_from(lasts.as_secs()).unwrap_or(i64::MAX)));
        let mut response = home;
        add_cookie(&mut response, &session);
        Ok::<_, ApiError>(response)
    };
    run.await.unwrap_or_else(|error| error_page(&req, &state, error))
}

/// `POST /logout`: ends the session (on this node at once; the cookie is dropped everywhere).
async fn logout(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let run = async {
        checked_form(&req, payload, &state.auth).await?;
        if let Some(session) = req.cookie(SESSION_COOKIE) {
            state.auth.end_session(session.value());
        }
        let mut removal = cookie(&req, &state.auth, SESSION_COOKIE, String::new());
        removal.make_removal();
        let mut response = HttpResponse::SeeOther().insert_header((LOCATION, "/")).finish();
        add_cookie(&mut response, &removal);
        Ok::<_, ApiError>(response)
    };
    run.await.unwrap_or_else(|error| error_page(&req, &state, error))
}

/// `GET /assets/dashboard.js`: static, so revalidated rather than stored for long (a new
/// binary may bring a new one).
async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(SCRIPT)
}

/// `GET /assets/dashboard.css`.
async fn style() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(STYLE)
}
