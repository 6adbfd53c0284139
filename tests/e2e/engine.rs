//! The engine through the real binary: processes started over HTTP and run by the server's
//! built-in handlers or by external workers, cancel, retry, and SIGKILL at any moment.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Running, on_both_backends, start_with};

/// Definitions for these tests; they replace the defaults.
const DEFINITIONS: &str = r#"
[[processes]]
name = "Noop"
steps = [ { name = "First", handler = "builtin:noop", chunk_size = 500 },
          { name = "Second", handler = "builtin:noop", chunk_size = 500 } ]

[[processes]]
name = "Skip"
steps = [ { name = "Validate", handler = "builtin:validate", chunk_size = 2, on_item_failure = "skip" },
          { name = "Next", handler = "builtin:noop" } ]

[[processes]]
name = "Continue"
steps = [ { name = "Validate", handler = "builtin:validate", chunk_size = 2, on_item_failure = "continue" },
          { name = "Next", handler = "builtin:noop" } ]

[[processes]]
name = "Abort"
steps = [ { name = "Validate", handler = "builtin:validate", chunk_size = 1, on_item_failure = "abort" },
          { name = "Next", handler = "builtin:noop" } ]

[[processes]]
name = "Bears"
steps = [ { name = "Validate", handler = "builtin:validate", chunk_size = 2, tolerated_failure_percentage = 40 },
          { name = "Next", handler = "builtin:noop" } ]

[[processes]]
name = "Passes"
steps = [ { name = "Validate", handler = "builtin:validate", chunk_size = 2, tolerated_failure_count = 1 },
          { name = "Next", handler = "builtin:noop" } ]

[[processes]]
name = "Limited"
steps = [ { name = "Call", handler = "queue:limited", chunk_size = 1, max_in_flight = 3 } ]

[[processes]]
name = "External"
steps = [ { name = "Work", handler = "queue:work", chunk_size = 5, max_attempts = 3 } ]

[[processes]]
name = "Crash"
steps = [ { name = "First", handler = "builtin:noop", chunk_size = 25 },
          { name = "Second", handler = "builtin:noop", chunk_size = 25 } ]
"#;

pub(crate) fn serve(dir: &Path, db: impl AsRef<OsStr>, env: &[(&str, &str)]) -> Running {
    let file = dir.join("definitions.toml");
    std::fs::write(&file, DEFINITIONS).unwrap();
    // These tests check every outcome through full listings, past the default governor limit.
    let mut all = vec![
        ("ASYNC_ENGINE__ENGINE__IDLE_POLL_MS", "50"),
        ("ASYNC_ENGINE__LIMITS__MAX_ITEMS_PER_RESPONSE", "1000000"),
    ];
    all.extend_from_slice(env);
    start_with(db, &["serve", "--config", file.to_str().unwrap()], &all)
}

pub(crate) fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let request = match method {
        "GET" => client.get(format!("{base}{path}")),
        _ => client.post(format!("{base}{path}")).json(&body.unwrap_or(json!({}))),
    };
    let response = request.send().unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

fn start_process(base: &str, name: &str, items: Vec<Value>) -> String {
    let (status, body) = call(
        base,
        "POST",
        "/v1/asyncprocesses",
        Some(json!({ "asyncProcessName": name, "referenceId": "e2e", "items": items })),
    );
    assert_eq!(status, 202, "{body}");
    body["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
}

/// Polls until the process is final; returns its full record.
pub(crate) fn wait_final(base: &str, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, body) = call(base, "GET", &format!("/v1/asyncprocesses/{id}?itemsList=false"), None);
        let status = body["AsyncProcessStatus"][0]["status"].as_str().unwrap_or("").to_owned();
        if ["Success", "Failed", "Aborted"].contains(&status.as_str()) {
            return call(base, "GET", &format!("/v1/asyncprocesses/{id}"), None).1["AsyncProcessStatus"][0]
                .clone();
        }
        assert!(Instant::now() < deadline, "{id} not final in {within:?}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(status, processed, total, successes listed, failures listed)` per step.
fn steps(record: &Value) -> Vec<(String, u64, u64, usize, usize)> {
    record["itemsProcessed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let failed = s["failed"]
                .as_array()
                .map_or(0, |g| g.iter().map(|g| g["items"].as_array().unwrap().len()).sum());
            (
                s["status"].as_str().unwrap().to_owned(),
                s["currentNumberOfItemsProccessed"].as_u64().unwrap(),
                s["totalNumberOfItemsToBeProccessed"].as_u64().unwrap(),
                s["successfully"].as_array().map_or(0, Vec::len),
                failed,
            )
        })
        .collect()
}

fn ok(n: u64) -> Value {
    json!({ "productCode": "TV", "quantity": n })
}

fn numbers(n: u64) -> Vec<Value> {
    (0..n).map(|i| json!({ "n": i })).collect()
}

on_both_backends! {
    fn a_two_step_process_of_10000_items_succeeds_with_exact_counts(dir: &Path, db: &str) {
        let server = serve(dir, db, &[]);
        let id = start_process(&server.base, "Noop", numbers(10_000));
        let record = wait_final(&server.base, &id, Duration::from_secs(120));
        assert_eq!(record["status"], "Success");
        assert_eq!(record["currentStepNumber"], 1);
        let expected = ("Success".to_owned(), 10_000, 10_000, 10_000, 0);
        assert_eq!(steps(&record), [expected.clone(), expected]);
    }
}

on_both_backends! {
    fn each_failure_policy_on_a_process_with_failures(dir: &Path, db: &str) {
        let server = serve(dir, db, &[]);
        // Items 1 and 3 fail validation.
        let items = vec![ok(1), json!("not a quote line"), ok(2), ok(0), ok(3), ok(4)];
        let skip = start_process(&server.base, "Skip", items.clone());
        let cont = start_process(&server.base, "Continue", items.clone());
        let abort = start_process(&server.base, "Abort", items);
        let record = wait_final(&server.base, &skip, Duration::from_secs(30));
        assert_eq!(record["status"], "Failed");
        assert_eq!(steps(&record), [("Failed".into(), 6, 6, 4, 2), ("Success".into(), 4, 4, 4, 0)]);
        let record = wait_final(&server.base, &cont, Duration::from_secs(30));
        assert_eq!(steps(&record), [("Failed".into(), 6, 6, 4, 2), ("Success".into(), 6, 6, 6, 0)]);
        let record = wait_final(&server.base, &abort, Duration::from_secs(30));
        assert_eq!(record["status"], "Failed");
        let validate = &steps(&record)[0];
        assert_eq!(validate.0, "Aborted");
        assert_eq!(validate.4, 1, "the first failure stops it: {record}");
        assert_eq!(steps(&record)[1], ("Aborted".into(), 0, 0, 0, 0));
    }
}

on_both_backends! {
    fn a_step_bears_the_failures_it_tolerates_and_fails_its_process_past_them(dir: &Path, db: &str) {
        let server = serve(dir, db, &[]);
        let items = vec![ok(1), json!("not a quote line"), ok(2), ok(0), ok(3), ok(4)];
        let bears = start_process(&server.base, "Bears", items.clone());
        let passes = start_process(&server.base, "Passes", items);
        let record = wait_final(&server.base, &bears, Duration::from_secs(30));
        assert_eq!((record["status"].as_str(), record["message"].as_str()), (Some("Failed"), Some("Completed with errors")));
        assert_eq!(
            steps(&record),
            [("Failed".into(), 6, 6, 4, 2), ("Success".into(), 4, 4, 4, 0)],
            "2 of 6 is within 40 %"
        );
        let record = wait_final(&server.base, &passes, Duration::from_secs(30));
        assert_eq!(record["status"], "Failed");
        assert_eq!(
            record["message"],
            "Stopped: 2 of 6 items failed at step 0 (Validate), more than it tolerates",
            "{record}"
        );
        let validate = &steps(&record)[0];
        assert_eq!((validate.0.as_str(), validate.4), ("Failed", 2), "{record}");
        assert_eq!(steps(&record)[1], ("Aborted".into(), 0, 0, 0, 0), "the next step never starts");
        let (_, listed) = call(&server.base, "GET", "/v1/processdefinitions", None);
        let defined = listed["processDefinitions"].as_array().unwrap();
        let passes = defined.iter().find(|d| d["name"] == "Passes").unwrap();
        assert_eq!(passes["steps"][0]["toleratedFailureCount"], 1);
        assert!(passes["steps"][0].get("toleratedFailurePercentage").is_none(), "{passes}");
    }
}

on_both_backends! {
    fn external_workers_fail_items_and_take_over_an_expired_lease(dir: &Path, db: &str) {
        let server = serve(dir, db, &[]);
        let base = &server.base;
        let id = start_process(base, "External", numbers(10));
        let claim = |worker: &str, lease: u64, wait: u64| {
            let body = json!({ "queue": "work", "workerId": worker, "maxTasks": 1, "leaseSeconds": lease, "waitSeconds": wait });
            let (status, body) = call(base, "POST", "/v1/tasks/claim", Some(body));
            assert_eq!(status, 200, "{body}");
            body["tasks"].as_array().unwrap().clone()
        };
        // Worker A takes the first task and goes silent.
        let a = claim("a", 1, 0).remove(0);
        assert_eq!(a["asyncProcessId"], id.as_str());
        assert_eq!(a["items"][0], json!({ "index": 0, "item": { "n": 0 } }));
        // Worker B takes the second, then waits until A's lease expires and takes the first too.
        let b2 = claim("b", 30, 0).remove(0);
        let b1 = claim("b", 30, 5).remove(0);
        assert_eq!((b1["taskId"].clone(), b1["attempt"].clone()), (a["taskId"].clone(), json!(2)));
        let indices = |task: &Value| {
            task["items"].as_array().unwrap().iter().map(|i| i["index"].clone()).collect::<Vec<_>>()
        };
        let complete = |task: &Value, body: Value| {
            let mut body = body;
            body["leaseToken"] = task["leaseToken"].clone();
            call(base, "POST", &format!("/v1/tasks/{}/complete", task["taskId"]), Some(body))
        };
        // A wakes up: its lease is stale, nothing is recorded.
        let (status, body) = complete(&a, json!({ "successfully": indices(&a) }));
        assert_eq!((status, body["code"].clone()), (409, json!(409)));
        // An incomplete report is refused.
        assert_eq!(complete(&b1, json!({ "successfully": [0] })).0, 400);
        assert_eq!(complete(&b1, json!({ "successfully": [0, 1, 2], "failed": [{ "items": [3, 4], "code": 42, "statusMessage": "No stock" }] })).0, 200);
        assert_eq!(complete(&b2, json!({ "successfully": indices(&b2) })).0, 200);
        let record = wait_final(base, &id, Duration::from_secs(10));
        assert_eq!(record["status"], "Failed");
        assert_eq!(steps(&record), [("Failed".into(), 10, 10, 8, 2)]);
        assert_eq!(
            record["itemsProcessed"][0]["failed"][0],
            json!({ "items": [{"n": 3}, {"n": 4}], "code": 42, "statusMessage": "No stock" })
        );

        // Retry runs only the two failed items again; counts are fixed, not added to.
        let (status, body) = call(base, "POST", &format!("/v1/asyncprocesses/{id}/retry"), None);
        assert_eq!(status, 202, "{body}");
        let again = claim("c", 30, 0).remove(0);
        assert_eq!(indices(&again), [json!(3), json!(4)]);
        assert_eq!(complete(&again, json!({ "successfully": [3, 4] })).0, 200);
        let record = wait_final(base, &id, Duration::from_secs(10));
        assert_eq!(record["status"], "Success");
        assert_eq!(steps(&record), [("Success".into(), 10, 10, 10, 0)]);
    }
}

on_both_backends! {
    fn cancel_stops_new_tasks(dir: &Path, db: &str) {
        let server = serve(dir, db, &[]);
        let base = &server.base;
        let id = start_process(base, "External", numbers(20));
        let claim = || {
            let body = json!({ "queue": "queue:work", "workerId": "w", "maxTasks": 1 });
            call(base, "POST", "/v1/tasks/claim", Some(body)).1["tasks"].as_array().unwrap().clone()
        };
        let in_flight = claim().remove(0);
        let (status, body) = call(base, "POST", &format!("/v1/asyncprocesses/{id}/cancel"), None);
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["AsyncProcessStatus"][0]["status"], "Aborted");
        assert!(claim().is_empty(), "no task starts after the answer");
        let complete = json!({ "leaseToken": in_flight["leaseToken"], "successfully": [0, 1, 2, 3, 4] });
        assert_eq!(
            call(base, "POST", &format!("/v1/tasks/{}/complete", in_flight["taskId"]), Some(complete)).0,
            409
        );
        let (status, body) = call(base, "POST", &format!("/v1/asyncprocesses/{id}/cancel"), None);
        assert_eq!(status, 409, "a finished process cannot be cancelled: {body}");
        assert_eq!(wait_final(base, &id, Duration::from_secs(5))["status"], "Aborted");
    }
}

on_both_backends! {
    fn starting_checks_its_input_and_honours_idempotency_keys(dir: &Path, db: &str) {
        let server = serve(dir, db, &[("ASYNC_ENGINE__ENGINE__ENABLED", "false")]);
        let base = &server.base;
        for (body, mention) in [
            (json!({ "asyncProcessName": "Nope", "referenceId": "r", "items": [] }), "Nope"),
            (json!({ "asyncProcessName": "Noop", "items": [] }), "referenceId"),
            (json!({ "asyncProcessName": "Noop", "referenceId": "r", "items": {} }), "items"),
            (
                json!({ "asyncProcessName": "Noop", "referenceId": "r", "items": [], "additionalData": [1] }),
                "additionalData",
            ),
        ] {
            let (status, answer) = call(base, "POST", "/v1/asyncprocesses", Some(body));
            assert_eq!(status, 400);
            assert!(answer["technicalMessage"].as_str().unwrap().contains(mention), "{answer}");
        }
        let client = reqwest::blocking::Client::new();
        let post = || {
            client
                .post(format!("{base}/v1/asyncprocesses"))
                .header("Idempotency-Key", "order-77")
                .json(&json!({ "asyncProcessName": "Noop", "referenceId": "r", "items": [123456789012345678901234567890_u128.to_string()], "additionalData": {"a": 1} }))
                .send()
                .unwrap()
        };
        let first = post();
        assert_eq!(first.status().as_u16(), 202);
        let location = first.headers()["location"].to_str().unwrap().to_owned();
        let first: Value = first.json().unwrap();
        let id = first["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap();
        assert_eq!(location, format!("/v1/asyncprocesses/{id}"));
        assert_eq!(first["AsyncProcessStatus"][0]["status"], "WaitingToProcess", "no engine runs here");
        let second: Value = post().json().unwrap();
        assert_eq!(second["AsyncProcessStatus"][0]["asyncProcessId"], id);
        let (_, listed) = call(base, "GET", "/v1/asyncprocesses?referenceId=r", None);
        assert_eq!(listed["AsyncProcessStatus"].as_array().unwrap().len(), 1);
        assert_eq!(listed["nextCursor"], Value::Null);
        let (status, definitions) = call(base, "GET", "/v1/processdefinitions", None);
        assert_eq!(status, 200);
        assert_eq!(definitions["processDefinitions"][0]["steps"][0]["handler"], "builtin:noop");
    }
}

// SIGKILL the server again and again while a process runs; restart it each time. In the
// end every item has exactly one outcome per step and the counts are exact.
on_both_backends! {
    fn killing_the_server_at_any_moment_loses_and_duplicates_nothing(dir: &Path, db: &str) {
        let env = [("ASYNC_ENGINE__ENGINE__LEASE_SECS", "1"), ("ASYNC_ENGINE__ENGINE__WORKERS", "3")];
        let items = 20_000_u64;
        let mut server = serve(dir, db, &env);
        let id = start_process(&server.base, "Crash", numbers(items));
        let mut kills = 0;
        for delay_ms in [120, 250, 60, 400, 180] {
            std::thread::sleep(Duration::from_millis(delay_ms));
            let (_, body) = call(&server.base, "GET", &format!("/v1/asyncprocesses/{id}?verbose=false"), None);
            if body["AsyncProcessStatus"][0]["status"] == "Success" {
                break;
            }
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            kills += 1;
            server = serve(dir, db, &env);
        }
        assert!(kills >= 2, "the process finished before the server could be killed twice");
        let record = wait_final(&server.base, &id, Duration::from_secs(120));
        assert_eq!(record["status"], "Success", "{}", record["message"]);
        for step in record["itemsProcessed"].as_array().unwrap() {
            assert_eq!(step["currentNumberOfItemsProccessed"], items);
            assert_eq!(step["totalNumberOfItemsToBeProccessed"], items);
            let listed: Vec<u64> =
                step["successfully"].as_array().unwrap().iter().map(|i| i["n"].as_u64().unwrap()).collect();
            let distinct: HashSet<u64> = listed.iter().copied().collect();
            assert_eq!((listed.len(), distinct.len()), (items as usize, items as usize), "one outcome per item");
        }
    }
}

async_engine_persistence::postgres_test! {
    /// Six external workers claim from two servers on one PostgreSQL database, two tasks a
    /// claim, holding each a while: a step with max_in_flight = 3 never has more than three
    /// of its tasks out at once, counted on the workers' side (which sees less than the
    /// database holds), and every item is recorded once.
    fn max_in_flight_holds_over_nodes_and_workers() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let db = async_engine_persistence::testing::postgres();
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Running> = (0..2).map(|_| serve(dir.path(), &db.url, &[])).collect();
        let items = 60;
        let id = start_process(&nodes[0].base, "Limited", numbers(items));
        let (held, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|threads| {
            for worker in 0..6 {
                let base = nodes[worker % 2].base.clone();
                let (held, most, id) = (&held, &most, &id);
                threads.spawn(move || loop {
                    let body = json!({ "queue": "limited", "workerId": format!("w{worker}"), "maxTasks": 2, "leaseSeconds": 30 });
                    let (status, body) = call(&base, "POST", "/v1/tasks/claim", Some(body));
                    assert_eq!(status, 200, "{body}");
                    let tasks = body["tasks"].as_array().unwrap().clone();
                    if tasks.is_empty() {
                        let (_, now) = call(&base, "GET", &format!("/v1/asyncprocesses/{id}?verbose=false"), None);
                        if now["AsyncProcessStatus"][0]["status"] == "Success" {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    most.fetch_max(held.fetch_add(tasks.len(), SeqCst) + tasks.len(), SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    held.fetch_sub(tasks.len(), SeqCst);
                    for task in &tasks {
                        let indices: Vec<Value> = task["items"].as_array().unwrap().iter().map(|i| i["index"].clone()).collect();
                        let done = json!({ "leaseToken": task["leaseToken"], "successfully": indices });
                        let (status, body) = call(&base, "POST", &format!("/v1/tasks/{}/complete", task["taskId"]), Some(done));
                        assert_eq!(status, 200, "{body}");
                    }
                });
            }
        });
        let most = most.load(SeqCst);
        assert_eq!(most, 3, "at most 3 at once, reached only when claims overlap");
        let record = wait_final(&nodes[1].base, &id, Duration::from_secs(10));
        assert_eq!(steps(&record), [("Success".into(), items, items, items as usize, 0)]);
        let (_, listed) = call(&nodes[1].base, "GET", "/v1/processdefinitions", None);
        let limited = listed["processDefinitions"].as_array().unwrap().iter().find(|d| d["name"] == "Limited").cloned();
        assert_eq!(limited.unwrap()["steps"][0]["maxInFlight"], 3);
    }
}

async_engine_persistence::postgres_test! {
    /// Three servers on one PostgreSQL database run a 20,000-item process; one is SIGKILLed
    /// mid-way; the other two finish it; every item has exactly one outcome per step; the
    /// surviving nodes answer the status call identically.
    fn three_nodes_share_a_postgres_database_and_survive_losing_one() {
        let db = async_engine_persistence::testing::postgres();
        let dir = tempfile::tempdir().unwrap();
        let env = [("ASYNC_ENGINE__ENGINE__LEASE_SECS", "1")];
        let mut nodes: Vec<Running> = (0..3).map(|_| serve(dir.path(), &db.url, &env)).collect();
        let items = 20_000_u64;
        let id = start_process(&nodes[0].base, "Crash", numbers(items));
        let started = Instant::now();
        loop {
            let (_, body) =
                call(&nodes[2].base, "GET", &format!("/v1/asyncprocesses/{id}?itemsList=false"), None);
            let processed =
                body["AsyncProcessStatus"][0]["itemsProcessed"][0]["currentNumberOfItemsProccessed"].as_u64();
            if processed.is_some_and(|n| n > 0) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no progress: {body}");
            std::thread::sleep(Duration::from_millis(20));
        }
        nodes[1].child.kill().unwrap();
        nodes[1].child.wait().unwrap();
        let record = wait_final(&nodes[0].base, &id, Duration::from_secs(180));
        assert_eq!(record["status"], "Success", "{}", record["message"]);
        for step in record["itemsProcessed"].as_array().unwrap() {
            assert_eq!(
                (
                    step["currentNumberOfItemsProccessed"].as_u64(),
                    step["totalNumberOfItemsToBeProccessed"].as_u64()
                ),
                (Some(items), Some(items))
            );
            let listed: HashSet<u64> =
                step["successfully"].as_array().unwrap().iter().map(|i| i["n"].as_u64().unwrap()).collect();
            assert_eq!(listed.len() as u64, items, "one outcome per item");
        }
        let path = format!("/v1/asyncprocesses/{id}");
        assert_eq!(call(&nodes[0].base, "GET", &path, None), call(&nodes[2].base, "GET", &path, None));
    }
}
