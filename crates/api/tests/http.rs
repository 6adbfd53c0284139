//! The status API through a real HTTP server on port 0 over a fresh SQLite file per test.
#![expect(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use async_engine_api::{ApiConfig, AppState, Auth, CallbackPolicy, serve};
use async_engine_domain::{ProcessDefinition, ProcessSnapshot, SnapshotWriter, TenantId};
use async_engine_persistence::Store;
use async_engine_persistence::testing::{self, TestDb};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../../../fixtures/documented-example.json");

struct TestServer {
    base: String,
    store: Store,
    client: reqwest::blocking::Client,
    _db: TestDb,
}

impl TestServer {
    fn start(db: TestDb) -> Self {
        Self::start_with(db, Vec::new(), ApiConfig::default())
    }

    fn start_with(db: TestDb, definitions: Vec<ProcessDefinition>, config: ApiConfig) -> Self {
        Self::start_full(db, definitions, config, Auth::disabled())
    }

    fn start_full(db: TestDb, definitions: Vec<ProcessDefinition>, config: ApiConfig, auth: Auth) -> Self {
        let state = AppState::new(
            db.store.clone(),
            definitions,
            CallbackPolicy::default(),
            auth,
            Arc::new(|| {}),
            config,
        );
        Self::start_state(db, state)
    }

    /// Serves `state`, which must have been made over `db`'s store.
    fn start_state(db: TestDb, state: AppState) -> Self {
        let store = db.store.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (ready, started) = mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = serve(listener, state, Duration::from_secs(1), 10_000).unwrap();
                ready.send(()).unwrap();
                server.await
            })
        });
        started.recv().unwrap();
        Self { base, store, client: reqwest::blocking::Client::new(), _db: db }
    }

    fn seed_documented(&self) {
        for (n, record) in documented().iter().enumerate() {
            self.import(record, n as i64);
        }
    }

    fn import(&self, record: &Value, created_at: i64) {
        let snapshot = ProcessSnapshot::from_documented_record(record, created_at).unwrap();
        self.store.import(&TenantId::default_tenant(), &snapshot).unwrap();
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.base)).send().unwrap();
        (response.status().as_u16(), response.json().unwrap())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(format!("{}{path}", self.base)).json(body).send().unwrap();
        (response.status().as_u16(), response.json().unwrap())
    }
}

/// Defines a test once per backend, `name::sqlite` and `name::postgres`, each against a
/// server over a fresh database (PostgreSQL ones only when `TEST_POSTGRES_URL` is set).
macro_rules! on_both_backends {
    ($(fn $name:ident($server:ident: &TestServer) $body:block)*) => {$(
        mod $name {
            use super::*;

            fn run($server: &TestServer) $body

            #[test]
            fn sqlite() {
                run(&TestServer::start(testing::sqlite()));
            }

            async_engine_persistence::postgres_test! {
                fn postgres() {
                    run(&TestServer::start(testing::postgres()));
                }
            }
        }
    )*};
    // Tests that start their own server (other definitions or configuration).
    ($(fn $name:ident($db:ident: TestDb) $body:block)*) => {$(
        mod $name {
            use super::*;

            fn run($db: TestDb) $body

            #[test]
            fn sqlite() {
                run(testing::sqlite());
            }

            async_engine_persistence::postgres_test! {
                fn postgres() {
                    run(testing::postgres());
                }
            }
        }
    )*};
}

// After the macro, which it uses. In a folder, so that cargo does not take it for a test binary.
#[path = "http/auth.rs"]
mod auth;
#[path = "http/dashboard.rs"]
mod dashboard;
#[path = "http/guards.rs"]
mod guards;
#[path = "http/headers.rs"]
mod headers;
#[path = "http/input.rs"]
mod input;
#[path = "http/tasks.rs"]
mod tasks;
#[path = "http/waiting.rs"]
mod waiting;

fn documented() -> Vec<Value> {
    let envelope: Value = serde_json::from_str(FIXTURE).unwrap();
    envelope["AsyncProcessStatus"].as_array().unwrap().clone()
}

/// The documented records with what the three parameters remove, removed.
fn shaped(records: &[Value], verbose: bool, items_list: bool, fail_message: bool) -> Vec<Value> {
    let mut records = records.to_vec();
    for record in &mut records {
        let record = record.as_object_mut().unwrap();
        if !verbose {
            record.remove("itemsProcessed");
            continue;
        }
        for step in record["itemsProcessed"].as_array_mut().unwrap() {
            let step = step.as_object_mut().unwrap();
            if !items_list {
                step.remove("successfully");
                step.remove("failed");
                continue;
            }
            if !fail_message {
                for group in step["failed"].as_array_mut().unwrap() {
                    group.as_object_mut().unwrap().remove("statusMessage");
                }
            }
        }
    }
    records
}

fn assert_success(answer: (u16, Value), expected: &[Value]) {
    let (status, body) = answer;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["code"], 202);
    assert_eq!(body["statusMessage"], "Success");
    assert_eq!(body["technicalMessage"], Value::Null);
    assert_eq!(body["AsyncProcessStatus"].as_array().unwrap(), expected);
}

fn assert_input_error(answer: (u16, Value)) -> String {
    let (status, body) = answer;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 400);
    assert_eq!(body["statusMessage"], "Input Error");
    assert_eq!(body["AsyncProcessStatus"], json!([]));
    body["technicalMessage"].as_str().unwrap().to_owned()
}

/// A one-step process whose only item succeeded.
fn simple(id: &str, reference: &str) -> Value {
    json!({
        "referenceId": reference, "asyncProcessName": "Simple", "asyncProcessId": id,
        "status": "Success", "message": "Completed", "stepName": "Only",
        "currentStepNumber": 0, "totalNumberOfSteps": 1,
        "itemsProcessed": [{ "stepNumber": 0, "stepName": "Only", "status": "Success",
            "currentNumberOfItemsProccessed": 1, "totalNumberOfItemsToBeProccessed": 1,
            "message": "Completed", "successfully": [id], "failed": [] }],
        "additionalData": {}
    })
}

on_both_backends! {
    fn the_documented_example_by_reference_and_by_each_id(server: &TestServer) {
        server.seed_documented();
        let records = documented();
        assert_success(server.get("/v1/asyncprocesses/12324"), &records);
        assert_success(server.get("/v1/asyncprocesses/9876543"), &records[..1]);
        assert_success(server.get("/v1/asyncprocesses/64221481"), &records[1..]);
    }
}

on_both_backends! {
    fn the_dashboard_labels_records_of_history_and_offers_them_no_commands(server: &TestServer) {
        server.seed_documented();
        let text = |path: &str| server.client.get(format!("{}{path}", server.base)).send().unwrap().text().unwrap();
        // 9876543 says InProgress, as imported: nothing runs it.
        let page = text("/processes/9876543");
        assert!(page.contains("A record of history, imported as it was"), "{page}");
        assert!(!page.contains("Running for"), "{page}");
        assert!(!page.contains("/cancel") && !page.contains("/retry"), "{page}");
        assert!(page.contains(r#"data-running="false""#), "no live updates for a record: {page}");
        let list = text("/");
        assert_eq!(list.matches(r#"<span class="history""#).count(), 2, "{list}");
    }
}

on_both_backends! {
    fn every_combination_of_the_three_parameters(server: &TestServer) {
        server.seed_documented();
        let records = documented();
        for verbose in [true, false] {
            for items_list in [true, false] {
                for fail_message in [true, false] {
                    let path = format!(
                        "/v1/asyncprocesses/12324?verbose={verbose}&itemsList={items_list}&failMessage={fail_message}"
                    );
                    let expected = shaped(&records, verbose, items_list, fail_message);
                    assert_success(server.get(&path), &expected);
                    let action = json!({ "referenceId": "12324", "verbose": verbose, "itemsList": items_list, "failMessage": fail_message });
                    assert_success(server.post("/v1/actions/getAsyncJobStatus", &action), &expected);
                }
            }
        }
    }
}

on_both_backends! {
    fn a_reference_id_shared_by_several_processes_lists_them_oldest_first(server: &TestServer) {
        // Stored newest first, so insertion order alone would give the wrong answer.
        server.import(&simple("c-third", "shared"), 30);
        server.import(&simple("a-first", "shared"), 10);
        server.import(&simple("b-second", "shared"), 20);
        server.import(&simple("z-same-time", "shared"), 20);
        server.import(&simple("other", "not-shared"), 15);
        let (status, body) = server.get("/v1/asyncprocesses/shared?verbose=false");
        assert_eq!(status, 202);
        let ids: Vec<&str> = body["AsyncProcessStatus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["asyncProcessId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a-first", "b-second", "z-same-time", "c-third"]);
    }
}

on_both_backends! {
    fn an_async_process_id_wins_over_an_equal_reference_id(server: &TestServer) {
        server.import(&simple("X1", "ref-of-x1"), 1);
        server.import(&simple("other", "X1"), 2);
        let only = |answer: (u16, Value)| {
            assert_eq!(answer.0, 202);
            let records = answer.1["AsyncProcessStatus"].as_array().unwrap().clone();
            assert_eq!(records.len(), 1);
            records[0]["asyncProcessId"].as_str().unwrap().to_owned()
        };
        assert_eq!(only(server.get("/v1/asyncprocesses/X1")), "X1");
        assert_eq!(only(server.get("/v1/asyncprocesses/X1?idType=referenceId")), "other");
        assert_eq!(only(server.get("/v1/asyncprocesses/X1?idType=asyncProcessId")), "X1");
        assert_eq!(only(server.post("/v1/actions/getAsyncJobStatus", &json!({"referenceId": "X1"}))), "other");
        assert_input_error(server.get("/v1/asyncprocesses/ref-of-x1?idType=asyncProcessId"));
    }
}

on_both_backends! {
    fn percent_encoded_ids_with_spaces_reserved_and_non_ascii_characters(server: &TestServer) {
        for (n, (reference, encoded)) in [
            ("order 42 – Zürich", "order%2042%20%E2%80%93%20Z%C3%BCrich"),
            ("a/b?c#d", "a%2Fb%3Fc%23d"),
            ("100%", "100%25"),
            ("plus+sign", "plus+sign"),
            ("日本語", "%E6%97%A5%E6%9C%AC%E8%AA%9E"),
        ]
        .into_iter()
        .enumerate()
        {
            server.import(&simple(&format!("p{n}"), reference), n as i64);
            let (status, body) = server.get(&format!("/v1/asyncprocesses/{encoded}"));
            assert_eq!(status, 202, "{reference}: {body}");
            assert_eq!(body["AsyncProcessStatus"][0]["referenceId"], reference);
        }
    }
}

on_both_backends! {
    fn input_errors(server: &TestServer) {
        server.seed_documented();
        assert!(assert_input_error(server.get("/v1/asyncprocesses/12324?verbose=maybe")).contains("verbose"));
        assert!(assert_input_error(server.get("/v1/asyncprocesses/12324?itemsList=")).contains("itemsList"));
        assert!(assert_input_error(server.get("/v1/asyncprocesses/does-not-exist")).contains("does-not-exist"));
        assert!(
            assert_input_error(server.get(&format!("/v1/asyncprocesses/{}", "9".repeat(300)))).contains("255")
        );
        // 255 characters is a valid ID that simply does not exist.
        assert!(
            assert_input_error(server.get(&format!("/v1/asyncprocesses/{}", "9".repeat(255))))
                .contains("no process")
        );
        assert_input_error(server.post("/v1/actions/getAsyncJobStatus", &json!({})));
        assert_input_error(
            server.post("/v1/actions/getAsyncJobStatus", &json!({"id": "12324", "verbose": "maybe"})),
        );
        let response = server
            .client
            .post(format!("{}/v1/actions/getAsyncJobStatus", server.base))
            .header("content-type", "application/json")
            .body("{\"id\": ")
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
    }
}

on_both_backends! {
    fn other_failures_keep_the_envelope(server: &TestServer) {
        let (status, body) = server.get("/v1/no-such-route");
        assert_eq!((status, body["code"].as_u64()), (404, Some(404)));
        let response = server.client.put(format!("{}/v1/asyncprocesses/12324", server.base)).send().unwrap();
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(response.json::<Value>().unwrap()["code"], 405);
        let big = json!({ "id": "x".repeat(2 * 1024 * 1024) });
        let (status, body) = server.post("/v1/actions/getAsyncJobStatus", &big);
        assert_eq!((status, body["code"].as_u64()), (413, Some(413)));
    }
}

on_both_backends! {
    fn another_tenants_process_answers_like_a_missing_one(server: &TestServer) {
        let snapshot = ProcessSnapshot::from_documented_record(&simple("hidden", "hidden-ref"), 1).unwrap();
        server.store.import(&TenantId::new("other-tenant").unwrap(), &snapshot).unwrap();
        let hidden = assert_input_error(server.get("/v1/asyncprocesses/hidden"));
        let missing = assert_input_error(server.get("/v1/asyncprocesses/absent"));
        assert_eq!(hidden.replace("hidden", "X"), missing.replace("absent", "X"));
    }
}

on_both_backends! {
    fn step_counters_of_a_large_process_need_no_item_rows(server: &TestServer) {
        let items: Vec<Value> = (0..20_000).map(|i| json!({ "n": i })).collect();
        let record = json!({
            "referenceId": "big", "asyncProcessName": "Big", "asyncProcessId": "big-1",
            "status": "InProgress", "message": "In progress", "stepName": "Only",
            "currentStepNumber": 0, "totalNumberOfSteps": 1,
            "itemsProcessed": [{ "stepNumber": 0, "stepName": "Only", "status": "InProgress",
                "currentNumberOfItemsProccessed": 15_000, "totalNumberOfItemsToBeProccessed": 20_000,
                "message": "In progress", "successfully": items[..14_000], "failed": [
                    { "items": items[14_000..15_000], "code": 7, "statusMessage": "Seven" }
                ] }],
            "items": items
        });
        server.import(&record, 1);
        let (status, body) = server.get("/v1/asyncprocesses/big-1?itemsList=false");
        assert_eq!(status, 202);
        let step = &body["AsyncProcessStatus"][0]["itemsProcessed"][0];
        assert_eq!(step["currentNumberOfItemsProccessed"], 15_000);
        assert_eq!(step["totalNumberOfItemsToBeProccessed"], 20_000);
        // Listing all 15,000 recorded items is over the default governor limit of 10,000:
        // refused with the count and the way out.
        let refused = assert_input_error(server.get("/v1/asyncprocesses/big-1"));
        assert!(refused.contains("15000 items, over the limit of 10000"), "{refused}");
        assert!(refused.contains("itemsList=false"), "{refused}");
    }
}
