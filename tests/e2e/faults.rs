//! Faults of one node among several on PostgreSQL: a node paused (SIGSTOP) inside a
//! transaction holds the others up by about one lease at most, and records nothing stale
//! when it resumes.

use std::process::Command;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::{Value, json};

use crate::{Running, start_with};

const LEASE_SECS: u64 = 2;

/// Small tasks, so that a process of 20,000 items is many transactions long.
const DEFINITIONS: &str = r#"
[[processes]]
name = "Big"
steps = [ { name = "First", handler = "builtin:noop", chunk_size = 20 },
          { name = "Second", handler = "builtin:noop", chunk_size = 20 } ]

[[processes]]
name = "Small"
steps = [ { name = "Only", handler = "builtin:noop", chunk_size = 10 } ]
"#;

/// A node whose sessions carry `name` as their application_name, to be found in
/// pg_stat_activity.
fn node(dir: &std::path::Path, url: &str, name: &str) -> Running {
    let file = dir.join("faults.toml");
    std::fs::write(&file, DEFINITIONS).unwrap();
    let lease = LEASE_SECS.to_string();
    let env = [
        ("ASYNC_ENGINE__ENGINE__LEASE_SECS", lease.as_str()),
        ("ASYNC_ENGINE__ENGINE__IDLE_POLL_MS", "50"),
        ("ASYNC_ENGINE__ENGINE__WORKERS", "2"),
    ];
    let url = format!("{url}?application_name={name}");
    start_with(url, &["serve", "--config", file.to_str().unwrap()], &env)
}

/// HTTP with a timeout: a call must never wait on a node that is stopped.
fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let request = match method {
        "GET" => client.get(format!("{base}{path}")),
        _ => client.post(format!("{base}{path}")).json(&body.unwrap_or(json!({}))),
    };
    let response = request.send().unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

fn start_process(base: &str, name: &str, items: u64) -> String {
    let items: Vec<Value> = (0..items).map(|n| json!({ "n": n })).collect();
    let body = json!({ "asyncProcessName": name, "referenceId": "faults", "items": items });
    let (status, body) = call(base, "POST", "/v1/asyncprocesses", Some(body));
    assert_eq!(status, 202, "{body}");
    body["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
}

fn status_of(base: &str, id: &str) -> Value {
    call(base, "GET", &format!("/v1/asyncprocesses/{id}?itemsList=false"), None).1["AsyncProcessStatus"][0]
        .clone()
}

fn kill(running: &Running, which: &str) {
    let pid = running.child.id().to_string();
    assert!(Command::new("kill").args([which, &pid]).status().unwrap().success(), "kill {which}");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Held {
    #[diesel(sql_type = Text)]
    query: String,
}

/// Outcomes recorded for the process at each step, and how many distinct items they name.
fn outcomes(db: &mut PgConnection, id: &str, step: i32) -> (i64, i64) {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        rows: i64,
        #[diesel(sql_type = BigInt)]
        items: i64,
    }
    let counts: Counts = diesel::sql_query(
        "SELECT count(*) AS rows, count(DISTINCT o.item_index) AS items FROM outcomes o \
         JOIN processes p ON p.id = o.process_id WHERE p.async_process_id = $1 AND o.step_number = $2",
    )
    .bind::<Text, _>(id)
    .bind::<diesel::sql_types::Integer, _>(step)
    .get_result(db)
    .unwrap();
    (counts.rows, counts.items)
}

fn recorded(db: &mut PgConnection, id: &str) -> i64 {
    outcomes(db, id, 0).0 + outcomes(db, id, 1).0
}

/// Sessions of `application` inside a transaction that holds a process lock and has written
/// (it has a transaction id), in `state` (`%` for any); the last statement of each.
fn holding_a_lock(db: &mut PgConnection, application: &str, state: &str) -> Vec<String> {
    let held: Vec<Held> = diesel::sql_query(
        "SELECT a.query AS query FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
         WHERE a.application_name = $1 AND a.state LIKE $2 \
         AND a.backend_xid IS NOT NULL AND l.locktype = 'advisory' AND l.granted",
    )
    .bind::<Text, _>(application)
    .bind::<Text, _>(state)
    .load(db)
    .unwrap();
    held.into_iter().map(|h| h.query).collect()
}

fn idle_holding_a_lock(db: &mut PgConnection, application: &str) -> Vec<String> {
    holding_a_lock(db, application, "idle in transaction")
}

fn sessions_in_a_transaction(db: &mut PgConnection, application: &str) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND xact_start IS NOT NULL",
    )
    .bind::<Text, _>(application)
    .get_result::<Count>(db)
    .unwrap()
    .n
}

async_engine_persistence::postgres_test! {
    /// Two nodes share a database; one is paused with SIGSTOP while it holds a 20,000-item
    /// process's lock inside a transaction, for four leases. Meanwhile the other keeps recording
    /// that process (the paused session is ended by `idle_in_transaction_session_timeout`, its task
    /// leases expire) and claims and finishes a process started during the pause. Resumed, the
    /// paused node records nothing twice: every item ends with exactly one outcome per step.
    fn a_node_paused_inside_a_transaction_does_not_stall_the_others() {
        let db = async_engine_persistence::testing::postgres();
        let dir = tempfile::tempdir().unwrap();
        let test_started = Instant::now();
        let mut watch = PgConnection::establish(&db.url).unwrap();
        let mut paused = node(dir.path(), &db.url, "ae-paused");
        let other = node(dir.path(), &db.url, "ae-other");
        let items = 20_000_u64;
        let big = start_process(&other.base, "Big", items);
        let deadline = Instant::now() + Duration::from_secs(30);
        while recorded(&mut watch, &big) == 0 {
            assert!(Instant::now() < deadline, "no progress: {}", status_of(&other.base, &big));
            std::thread::sleep(Duration::from_millis(20));
        }

        // Pause the node at a moment when one of its sessions holds the process lock inside a
        // transaction that has written: stopped, it cannot end that transaction itself. It is
        // watched for such a moment, paused, and the pause kept only if the session is still
        // there once idle (the transaction may have ended in between).
        let mut caught = None;
        let mut attempts = 0;
        for attempt in 0..200 {
            attempts = attempt + 1;
            let watching = Instant::now();
            while holding_a_lock(&mut watch, "ae-paused", "%").is_empty()
                && watching.elapsed() < Duration::from_millis(500)
            {}
            kill(&paused, "-STOP");
            let looked = Instant::now();
            while caught.is_none() && looked.elapsed() < Duration::from_millis(300) {
                caught = idle_holding_a_lock(&mut watch, "ae-paused").into_iter().next();
                if caught.is_none() && sessions_in_a_transaction(&mut watch, "ae-paused") == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if caught.is_some() {
                break;
            }
            kill(&paused, "-CONT");
            assert!(
                recorded(&mut watch, &big) < 2 * items as i64,
                "finished before a pause caught a transaction"
            );
            std::thread::sleep(Duration::from_millis(15 + (attempt % 7) * 11));
        }
        let last_statement =
            caught.expect("never paused the node inside a transaction that holds a process lock and has written");
        let paused_at = Instant::now();
        let before = recorded(&mut watch, &big);
        assert!(before < 2 * items as i64, "the process was finished already");
        let small = start_process(&other.base, "Small", 50);

        // Four leases of pause. The other node must move on long before it ends.
        let pause = Duration::from_secs(4 * LEASE_SECS);
        let mut small_done_after = None;
        while paused_at.elapsed() < pause {
            if small_done_after.is_none() && status_of(&other.base, &small)["status"] == "Success" {
                small_done_after = Some(paused_at.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let during = recorded(&mut watch, &big);
        let lingering = idle_holding_a_lock(&mut watch, "ae-paused");
        assert!(
            during > before,
            "nothing of the process was recorded during {pause:?} of pause ({before} outcomes before and after); \
             the paused session's last statement: {last_statement}"
        );
        assert!(
            small_done_after.is_some(),
            "a process started during the pause was not run: {}",
            status_of(&other.base, &small)
        );
        assert!(lingering.is_empty(), "the paused node's transaction outlived the pause: {lingering:?}");
        kill(&paused, "-CONT");

        let deadline = Instant::now() + Duration::from_secs(60);
        let record = loop {
            let record = status_of(&other.base, &big);
            if ["Success", "Failed", "Aborted"].contains(&record["status"].as_str().unwrap_or("")) {
                break record;
            }
            assert!(Instant::now() < deadline, "not final within a minute of the resume: {record}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(record["status"], "Success", "{record}");
        for (step, counters) in record["itemsProcessed"].as_array().unwrap().iter().enumerate() {
            assert_eq!(counters["currentNumberOfItemsProccessed"], items, "step {step}: {record}");
            assert_eq!(counters["totalNumberOfItemsToBeProccessed"], items, "step {step}: {record}");
            let step = i32::try_from(step).unwrap();
            assert_eq!(
                outcomes(&mut watch, &big, step),
                (items as i64, items as i64),
                "one outcome per item, step {step}"
            );
        }
        assert_eq!(outcomes(&mut watch, &small, 0), (50, 50));
        // Resumed, the paused node serves again, its ended sessions replaced.
        assert_eq!(
            call(&paused.base, "GET", &format!("/v1/asyncprocesses/{big}?itemsList=false"), None).1["AsyncProcessStatus"]
                [0]["status"],
            "Success"
        );
        assert!(crate::terminate(&mut paused).success());
        // What it found when it resumed: its transaction ended by the server, rolled back.
        let log: Vec<String> = paused.log.try_iter().collect();
        assert!(
            // libpq says it one of three ways, depending on when it notices the session is gone.
            log.iter().any(|line| line.contains("idle-in-transaction timeout")
                || line.contains("server closed the connection")
                || line.contains("no connection to the server")),
            "the paused node did not find its transaction ended: {log:#?}"
        );
        eprintln!(
            "paused {pause:?} at attempt {attempts} after {before} outcomes (last statement: {last_statement}); {during} by the end of the pause; \
             the other process finished {small_done_after:?} into it; whole test {:?}",
            test_started.elapsed()
        );
    }
}
