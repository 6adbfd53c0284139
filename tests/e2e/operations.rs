//! Operating the real binary (contract §7): health and readiness, request ids, metrics that
//! move, and retention.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::{call, wait_final};
use crate::{command, on_both_backends, seed, start, temp_db};

/// The value of the first `/metrics` sample whose line starts with `prefix`, or 0.
fn sample(base: &str, prefix: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{base}/metrics")).unwrap().text().unwrap();
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn health_readiness_request_ids_and_moving_metrics() {
    let (_dir, db) = temp_db();
    seed(&db);
    let server = start(&db, &[]);
    let client = reqwest::blocking::Client::new();
    let (status, body) = crate::get(&server.base, "/healthz");
    assert_eq!((status, body), (200, json!({ "status": "ok" })));
    let (status, body) = crate::get(&server.base, "/readyz");
    assert_eq!((status, body), (200, json!({ "status": "ready" })));

    let echoed = client
        .get(format!("{}/v1/asyncprocesses/12324", server.base))
        .header("X-Request-Id", "trace-4711")
        .send()
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-4711");
    let made = client.get(format!("{}/v1/asyncprocesses/12324", server.base)).send().unwrap();
    let made = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 36, "a UUID: {made}");
    server.log_line(|l| l.contains("trace-4711") && l.contains("request"));

    let route =
        "async_engine_http_requests_total{route=\"/v1/asyncprocesses/{id}\",method=\"GET\",status=\"202\"}";
    let before = sample(&server.base, route);
    assert!(before >= 2.0, "{before}");
    let _ = crate::get(&server.base, "/v1/asyncprocesses/12324");
    assert_eq!(sample(&server.base, route), before + 1.0);
    assert_eq!(sample(&server.base, "async_engine_processes{status=\"Success\"}"), 1.0);
    let (_, started) = call(
        &server.base,
        "POST",
        "/v1/asyncprocesses",
        Some(json!({ "asyncProcessName": "Noop", "referenceId": "m", "items": [1, 2] })),
    );
    let id = started["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
    wait_final(&server.base, &id, Duration::from_secs(20));
    assert_eq!(sample(&server.base, "async_engine_processes{status=\"Success\"}"), 2.0);
    assert_eq!(
        sample(&server.base, "async_engine_items_recorded_total{by=\"engine\"}"),
        4.0,
        "2 items, 2 steps"
    );
    assert_eq!(sample(&server.base, "async_engine_database_up"), 1.0);
    assert!(sample(&server.base, "async_engine_http_request_duration_seconds_count") >= 1.0);
}

async_engine_persistence::postgres_test! {
    fn readiness_is_false_when_the_database_goes_away() {
        let database = async_engine_persistence::testing::postgres();
        let server = start(&database.url, &[]);
        assert_eq!(crate::get(&server.base, "/readyz").0, 200);
        assert!(database.drop_now());
        let response = reqwest::blocking::get(format!("{}/readyz", server.base)).unwrap();
        assert_eq!(response.status().as_u16(), 503);
        let body: Value = response.json().unwrap();
        assert_eq!(body["reason"], "the database cannot be reached", "{body}");
        assert_eq!(crate::get(&server.base, "/healthz").0, 200, "alive all the same");
    }
}

#[test]
fn purge_and_migrate_refuse_a_database_file_that_does_not_exist_and_create_none() {
    let (dir, db) = temp_db();
    for args in [&["purge"][..], &["migrate"]] {
        let output = command(&db, args, &[]).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&format!("there is no database at {}", db.display())), "{args:?}: {said}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{args:?}: nothing created");
    }
    // Asked to, migrate makes it.
    let made = command(&db, &["migrate", "--create"], &[]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(db.exists());
}

#[test]
fn finished_processes_past_retention_are_purged_with_what_they_own() {
    let (_dir, db) = temp_db();
    let store = async_engine_persistence::Store::open(db.to_str().unwrap(), 1).unwrap();
    store.migrate().unwrap();
    // The documented example as of 1970: one finished process, one still in progress.
    for (n, record) in crate::documented()["AsyncProcessStatus"].as_array().unwrap().iter().enumerate() {
        let snapshot =
            async_engine_domain::ProcessSnapshot::from_documented_record(record, n as i64).unwrap();
        async_engine_domain::SnapshotWriter::import(
            &store,
            &async_engine_domain::TenantId::default_tenant(),
            &snapshot,
        )
        .unwrap();
    }
    let kept = command(&db, &["purge"], &[("ASYNC_ENGINE__RETENTION__DAYS", "0")]).output().unwrap();
    assert!(String::from_utf8_lossy(&kept.stderr).contains("purged 0 process(es)"));
    let output = command(&db, &["purge"], &[]).output().unwrap();
    assert!(output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("purged 1 process(es) finished more than 30 day(s) ago"), "{said}");
    let server = start(&db, &[]);
    let (_, body) = crate::get(&server.base, "/v1/asyncprocesses/12324");
    let ids: Vec<&str> = body["AsyncProcessStatus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["asyncProcessId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["9876543"], "the unfinished one stays");
}

// `async-engine seed --demo`: live processes the engine runs once the server serves, seen
// moving and then finished by the demo rules; a second seeding creates nothing.
on_both_backends! {
    fn seed_demo_starts_live_processes_that_the_engine_runs(_dir: &Path, db: &str) {
        let seeded = command(db, &["seed", "--demo", "3", "--history", "6", "--items", "60"], &[]).output().unwrap();
        let said = String::from_utf8_lossy(&seeded.stderr);
        assert!(seeded.status.success(), "{said}");
        assert!(said.contains("11 process(es) created, 0 already present"), "{said}");
        let server = start(db, &[]);
        let (status, live) = crate::get(&server.base, "/v1/asyncprocesses?asyncProcessName=Demo%20CPQ");
        assert_eq!(status, 202, "{live}");
        let ids: Vec<String> = live["AsyncProcessStatus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["asyncProcessId"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 3, "{live}");
        // 3 x 60 items x 2 steps at 20 ms an item on the engine's thread apart: about 7 s,
        // seen part-way; and meanwhile a Noop process runs on the other workers at once.
        let (_, quick) = call(&server.base, "POST", "/v1/asyncprocesses", Some(json!({ "asyncProcessName": "Noop", "referenceId": "meanwhile", "items": [1, 2, 3] })));
        let quick = quick["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        let quick = wait_final(&server.base, &quick, Duration::from_secs(3));
        assert_eq!(quick["status"], "Success", "not held up by the demo: {quick}");
        let mut seen_moving = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let finals = loop {
            let records: Vec<Value> = ids
                .iter()
                .map(|id| crate::get(&server.base, &format!("/v1/asyncprocesses/{id}?itemsList=false")).1["AsyncProcessStatus"][0].clone())
                .collect();
            seen_moving |= records.iter().any(|r| {
                let done = r["itemsProcessed"][0]["currentNumberOfItemsProccessed"].as_u64().unwrap_or(0);
                r["status"] == "InProgress" && done > 0 && done < 60
            });
            if records.iter().all(|r| ["Success", "Failed"].contains(&r["status"].as_str().unwrap())) {
                break records;
            }
            assert!(std::time::Instant::now() < deadline, "{records:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(seen_moving, "never seen part-way");
        // By the rules: process 0's items are clean, the others' are not.
        assert_eq!(finals.iter().map(|r| r["status"].as_str().unwrap()).collect::<Vec<_>>(), ["Failed", "Failed", "Success"], "newest first");
        for record in &finals {
            assert_eq!(record["itemsProcessed"][1]["currentNumberOfItemsProccessed"], 60, "{record}");
        }
        drop(server);
        let again = command(db, &["seed", "--demo", "3", "--history", "6", "--items", "60"], &[]).output().unwrap();
        let said = String::from_utf8_lossy(&again.stderr);
        assert!(said.contains("0 process(es) created, 11 already present"), "{said}");
    }
}
