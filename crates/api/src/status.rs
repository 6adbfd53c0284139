//! The status call (contract §3): `GET /v1/asyncprocesses/{id}`, plain, conditional or
//! waiting, and its action form `POST /v1/actions/getAsyncJobStatus`.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::answering::{if_none_match, respond};
use crate::auth::Scope;
use crate::body::read_body;
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::params;
use crate::routing::resource;
use crate::state::AppState;
use crate::watch::{self, WatchKey};

const STATUS_PREFIX: &str = "/v1/asyncprocesses/";
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    const GET: &str = "GET, HEAD";
    const POST: &str = "POST";
    cfg.service(resource(&format!("{STATUS_PREFIX}{{id}}"), GET).route(web::get().to(get_status)))
        .service(resource("/v1/actions/getAsyncJobStatus", POST).route(web::post().to(action_status)));
}

/// `GET /v1/asyncprocesses/{id}`, plain, conditional (`If-None-Match`) or waiting
/// (`waitSeconds`, contract §6).
/// The status of processes by asyncProcessId or referenceId (contract §3, §6).
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}", tag = "status", operation_id = "getAsyncProcessStatus",
    params(("id" = String, Path, description = "An asyncProcessId or a referenceId", min_length = 1, max_length = 255),
        ("verbose" = Option<bool>, Query, description = "false: no itemsProcessed"),
        ("itemsList" = Option<bool>, Query, description = "false: steps without their item lists"),
        ("failMessage" = Option<bool>, Query, description = "false: failure groups without statusMessage"),
        ("idType" = Option<crate::schema::IdType>, Query, description = "Read the ID only as an asyncProcessId or only as a referenceId"),
        ("waitSeconds" = Option<u32>, Query, minimum = 1, maximum = 60, description = "With If-None-Match: hold the answer until it changes, else 304"),
        ("If-None-Match" = Option<String>, Header, description = "ETags already held"),
        ("Cache-Control" = Option<String>, Header, description = "max-age=N (N >= 1): an answer held in memory, found current at most api.watch_interval_ms ago, may be sent without reading storage; it then carries Age")),
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

/// `POST /v1/actions/getAsyncJobStatus`: the page's `getAsyncJobStatus` action.
#[utoipa::path(post, path = "/v1/actions/getAsyncJobStatus", tag = "status", operation_id = "getAsyncJobStatus",
    request_body = crate::schema::ActionBody,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::test::TestRequest;
    use async_engine_domain::repository::MockStatusReader;
    use async_engine_domain::{
        Detail, FailureGroup, IdKind, ProcessStatus, RawJson, RepositoryError, Status, StepItems, StepReport,
    };
    use serde_json::{Value, json};

    use crate::state::{ApiConfig, AppState, SuccessCode};
    use crate::test_support;

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
            runnable: true,
        }
    }

    async fn call(reader: MockStatusReader, config: ApiConfig, request: TestRequest) -> (u16, Value) {
        let state = AppState { status: Arc::new(reader), config, ..test_support::state() };
        test_support::send(state, request).await
    }

    async fn get(reader: MockStatusReader, uri: &str) -> (u16, Value) {
        call(reader, ApiConfig::default(), TestRequest::get().uri(uri)).await
    }

    /// A reader whose lookups all have the same change marks.
    fn marked() -> MockStatusReader {
        let mut reader = MockStatusReader::new();
        reader.expect_change_marks().returning(|_| Ok(vec![(1, 1)]));
        reader.expect_change_marks_now().returning(|_| None);
        reader
    }

    fn returning(records: Vec<ProcessStatus>) -> MockStatusReader {
        let mut reader = marked();
        reader.expect_find_status().returning(move |_| Ok(records.clone()));
        reader
    }

    fn untouched() -> MockStatusReader {
        let mut reader = marked();
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
            let mut reader = marked();
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
    async fn an_unchanged_lookup_is_answered_from_the_held_answer_and_a_changed_one_read_again() {
        use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
        let version = Arc::new(AtomicI64::new(1));
        let reads = Arc::new(AtomicUsize::new(0));
        let mut reader = MockStatusReader::new();
        let marks = version.clone();
        // Read at once, as on SQLite: the reads below never go to the blocking pool for them.
        reader.expect_change_marks().never();
        reader
            .expect_change_marks_now()
            .returning(move |_| Some(Ok(vec![(7, marks.load(Ordering::SeqCst))])));
        let counted = reads.clone();
        reader.expect_find_status().returning(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(vec![sample()])
        });
        let state = AppState { status: Arc::new(reader), ..test_support::state() };
        let get = |uri: &'static str| test_support::send(state.clone(), TestRequest::get().uri(uri));
        let (status, first) = get("/v1/asyncprocesses/p1?itemsList=false").await;
        assert_eq!((status, reads.load(Ordering::SeqCst)), (202, 1));
        let (status, again) = get("/v1/asyncprocesses/p1?itemsList=false").await;
        assert_eq!((status, reads.load(Ordering::SeqCst)), (202, 1), "the marks did not move");
        assert_eq!(first, again);
        // Another shape of the same lookup is an answer of its own.
        get("/v1/asyncprocesses/p1?itemsList=false&failMessage=false").await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        version.store(2, Ordering::SeqCst);
        get("/v1/asyncprocesses/p1?itemsList=false").await;
        assert_eq!(reads.load(Ordering::SeqCst), 3, "the process changed: read again");
    }

    #[actix_web::test]
    async fn a_caller_that_sends_max_age_is_answered_from_memory_within_the_watch_interval() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        use actix_web::test::{call_service, init_service, read_body};
        let marks_read = Arc::new(AtomicUsize::new(0));
        let mut reader = MockStatusReader::new();
        let counted = marks_read.clone();
        reader.expect_change_marks().returning(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(vec![(7, 1)])
        });
        reader.expect_change_marks_now().returning(|_| None);
        reader.expect_find_status().times(1).returning(|_| Ok(vec![sample()]));
        let interval = Duration::from_millis(300);
        let config = ApiConfig { watch_interval: interval, ..ApiConfig::default() };
        let service = init_service(crate::router::app(AppState {
            status: Arc::new(reader),
            config,
            ..test_support::state()
        }))
        .await;
        let uri = "/v1/asyncprocesses/p1?itemsList=false";
        let send = |headers: &[(&'static str, &str)]| {
            let mut request = TestRequest::get().uri(uri);
            for (name, value) in headers {
                request = request.insert_header((*name, value.to_string()));
            }
            call_service(&service, request.to_request())
        };
        let first = send(&[("Cache-Control", "max-age=60")]).await;
        assert_eq!(first.status(), 202);
        assert!(first.headers().get("age").is_none(), "read from storage: no Age");
        let etag = first.headers().get("etag").unwrap().to_str().unwrap().to_owned();
        let body = read_body(first).await;
        assert_eq!(marks_read.load(Ordering::SeqCst), 1, "nothing held yet");

        let again = send(&[("Cache-Control", "max-age=60")]).await;
        assert_eq!(
            (again.status().as_u16(), again.headers().get("age").unwrap().to_str().unwrap()),
            (202, "0")
        );
        assert_eq!(read_body(again).await, body);
        let unchanged = send(&[("cache-control", "no-transform, max-age=1"), ("If-None-Match", &etag)]).await;
        assert_eq!(unchanged.status(), 304);
        assert!(unchanged.headers().get("age").is_some());
        assert_eq!(marks_read.load(Ordering::SeqCst), 1, "answered with no read at all");

        // Without it, or asking for a fresh answer, or with a value that is no number: validated.
        for headers in [
            &[][..],
            &[("Cache-Control", "max-age=0")][..],
            &[("Cache-Control", "max-age=60, no-cache")][..],
            &[("Cache-Control", "max-age=soon")][..],
            &[("Cache-Control", "max-age=60"), ("Cache-Control", "max-age=0")][..],
        ] {
            let before = marks_read.load(Ordering::SeqCst);
            let response = send(headers).await;
            assert_eq!(response.status(), 202, "{headers:?}");
            assert!(response.headers().get("age").is_none(), "{headers:?}");
            assert_eq!(marks_read.load(Ordering::SeqCst), before + 1, "{headers:?}");
        }
        // A caller may accept any age; the server gives at most the watch interval's.
        actix_web::rt::time::sleep(interval + Duration::from_millis(50)).await;
        let later = send(&[("Cache-Control", "max-age=3600")]).await;
        assert!(later.headers().get("age").is_none());
        assert_eq!(marks_read.load(Ordering::SeqCst), 7);
    }

    #[actix_web::test]
    async fn the_action_call_answers_like_the_get() {
        let mut reader = marked();
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
        let mut reader = marked();
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
            let mut reader = marked();
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
