//! `async-engine worker -- PROGRAM` and the client library's worker loop against the real
//! server: Python 3 scripts as programs (one that prices, ones that crash, hang, print garbage
//! or report the wrong items), a worker SIGKILLed mid-task, stops with and without grace, and
//! a server that is not there.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::engine::{call, wait_final};
use crate::{BIN, on_both_backends, start_with};

/// Prices quote lines: a quantity over 100 fails with 7001.
const PRICER: &str = r#"
import json, sys
for line in sys.stdin:
    entry = json.loads(line)
    if entry["item"]["quantity"] > 100:
        print(json.dumps({"index": entry["index"], "code": 7001, "statusMessage": "Quantity over 100"}))
    else:
        print(json.dumps({"index": entry["index"]}))
"#;

/// A server whose `Scripted` process has a queue step (`scripted`) and then a noop step.
fn serve_scripted(dir: &Path, db: &str, chunk: u32, max_attempts: u32) -> crate::Running {
    let file = dir.join("worker.toml");
    std::fs::write(
        &file,
        format!(
            "[[processes]]\nname = \"Scripted\"\n\
             [[processes.steps]]\nname = \"Price\"\nhandler = \"queue:scripted\"\nchunk_size = {chunk}\nmax_attempts = {max_attempts}\non_item_failure = \"continue\"\n\
             [[processes.steps]]\nname = \"After\"\nhandler = \"builtin:noop\"\n"
        ),
    )
    .unwrap();
    start_with(
        db,
        &["serve", "--config", file.to_str().unwrap()],
        &[("ASYNC_ENGINE__ENGINE__IDLE_POLL_MS", "50")],
    )
}

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `async-engine worker`, its standard error lines collected.
struct WorkerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WorkerProcess {
    fn start(base: &str, args: &[&str], program: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["worker", "--server", base, "--queue", "scripted"])
            .args(args)
            .arg("--")
            .args(program)
            .env_remove("ASYNC_ENGINE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut worker = Self { child, lines, seen: Vec::new() };
        // Signal handlers are in place once it says it claims.
        worker.wait_for("claiming tasks of queue 'scripted'");
        worker
    }

    /// Waits for a standard error line containing `text`; returns it.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("the worker never said '{text}': {:#?}", self.seen),
            }
        }
    }

    /// Waits up to `within` for the worker to exit by itself.
    fn exit_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.try_iter());
                return status;
            }
            assert!(Instant::now() < deadline, "the worker did not exit within {within:?}: {:#?}", self.seen);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, which: &str) {
        assert!(Command::new("kill").args([which, &self.child.id().to_string()]).status().unwrap().success());
    }
}

fn start_scripted(base: &str, reference: &str, items: &[Value]) -> String {
    let body = json!({ "asyncProcessName": "Scripted", "referenceId": reference, "items": items });
    let (status, answer) = call(base, "POST", "/v1/asyncprocesses", Some(body));
    assert_eq!(status, 202, "{answer}");
    answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
}

/// The sorted `line` numbers of a list of quote items.
fn lines(items: &Value) -> Vec<u64> {
    let mut lines: Vec<u64> = items.as_array().unwrap().iter().map(|i| i["line"].as_u64().unwrap()).collect();
    lines.sort_unstable();
    lines
}

fn quotes(quantities: &[u64]) -> Vec<Value> {
    quantities.iter().enumerate().map(|(n, q)| json!({ "line": n, "quantity": q })).collect()
}

on_both_backends! {
    fn a_python_script_prices_every_item_exactly_once(dir: &Path, db: &str) {
        let server = serve_scripted(dir, db, 3, 3);
        let items = quotes(&[1, 500, 2, 3, 101, 4, 5, 6, 7, 1000]);
        let id = start_scripted(&server.base, "scripted-1", &items);
        let pricer = script(dir, "price.py", PRICER);
        // 10 items in tasks of 3: 4 tasks, then the worker exits 0 by itself.
        let mut worker = WorkerProcess::start(
            &server.base,
            &["--concurrency", "2", "--max-tasks", "4"],
            &["python3", pricer.to_str().unwrap()],
        );
        let status = worker.exit_within(Duration::from_secs(60));
        assert!(status.success(), "{status}: {:#?}", worker.seen);
        let last = worker.seen.last().unwrap();
        assert!(last.ends_with("stopped: 4 task(s) completed (7 item(s) succeeded, 3 failed), 0 failed, 0 given up"), "{last}");
        assert_eq!(worker.seen.iter().filter(|l| l.contains("succeeded,") && l.contains("step 0 Price, attempt 1")).count(), 4);

        let record = wait_final(&server.base, &id, Duration::from_secs(30));
        let price = &record["itemsProcessed"][0];
        assert_eq!((price["currentNumberOfItemsProccessed"].as_u64(), price["status"].as_str()), (Some(10), Some("Failed")));
        assert_eq!(price["successfully"].as_array().unwrap().len(), 7, "{record}");
        let group = &price["failed"][0];
        assert_eq!((price["failed"].as_array().unwrap().len(), &group["code"], &group["statusMessage"]), (1, &json!(7001), &json!("Quantity over 100")));
        assert_eq!(lines(&group["items"]), [1, 4, 9], "in recording order, which concurrency decides");
        assert_eq!(record["itemsProcessed"][1]["currentNumberOfItemsProccessed"], 10, "failed items continue");
    }

    fn a_worker_killed_mid_task_is_taken_over_and_counts_every_item_once(dir: &Path, db: &str) {
        let server = serve_scripted(dir, db, 5, 3);
        let marker = dir.join("hung.pid");
        // The first run anywhere hangs (and says so by writing its process ID); the rest price.
        let hanger = script(
            dir,
            "hang-once.py",
            &format!(
                "import os, sys, time\nmarker = {marker:?}\n\
                 if not os.path.exists(marker):\n    open(marker, 'w').write(str(os.getpid()))\n    time.sleep(120)\n{PRICER}"
            ),
        );
        let id = start_scripted(&server.base, "killed", &quotes(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
        let program = ["python3", hanger.to_str().unwrap()];
        let first = WorkerProcess::start(&server.base, &["--lease-secs", "2"], &program);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !marker.exists() || std::fs::read_to_string(&marker).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the first program never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        first.signal("-KILL");
        drop(first);
        // A SIGKILLed worker cannot end its program; the test does, so that nothing outlives it.
        let orphan = std::fs::read_to_string(&marker).unwrap();
        let _ = Command::new("kill").args(["-KILL", orphan.trim()]).status();

        let mut second = WorkerProcess::start(&server.base, &["--lease-secs", "2", "--max-tasks", "2"], &program);
        assert!(second.exit_within(Duration::from_secs(30)).success(), "{:#?}", second.seen);
        assert!(second.seen.iter().any(|l| l.contains("attempt 2")), "the hung task was taken over: {:#?}", second.seen);
        let record = wait_final(&server.base, &id, Duration::from_secs(30));
        let price = &record["itemsProcessed"][0];
        assert_eq!(price["currentNumberOfItemsProccessed"], 10, "{record}");
        assert_eq!(price["successfully"].as_array().unwrap().len(), 10, "each item once: {record}");
        assert_eq!(record["status"], "Success");
    }
}

#[test]
fn programs_that_crash_hang_or_print_garbage_fail_their_tasks_with_the_reason() {
    let (dir, db) = crate::temp_db();
    // One item per task, one attempt: each item's failure message is its task's last error.
    let server = serve_scripted(dir.path(), db.to_str().unwrap(), 1, 1);
    let program = script(
        dir.path(),
        "misbehave.py",
        r#"
import json, sys, time
entry = json.loads(sys.stdin.readline())
i, what = entry["index"], entry["item"]
if what == "crash":
    print("loading the price list", file=sys.stderr)
    print("boom: no price list", file=sys.stderr)
    sys.exit(3)
elif what == "hang":
    time.sleep(60)
elif what == "garbage":
    print("hello, world")
elif what == "twice":
    print(json.dumps({"index": i})); print(json.dumps({"index": i}))
elif what == "stranger":
    print(json.dumps({"index": i + 1000}))
elif what == "silent":
    pass
else:
    print(json.dumps({"index": i}))
"#,
    );
    let kinds = ["crash", "hang", "garbage", "twice", "stranger", "silent", "ok"];
    let items: Vec<Value> = kinds.iter().map(|k| json!(k)).collect();
    let id = start_scripted(&server.base, "misbehaving", &items);
    let mut worker = WorkerProcess::start(
        &server.base,
        &["--concurrency", "4", "--timeout", "1", "--max-tasks", "7"],
        &["python3", program.to_str().unwrap()],
    );
    assert!(worker.exit_within(Duration::from_secs(60)).success(), "{:#?}", worker.seen);
    let record = wait_final(&server.base, &id, Duration::from_secs(30));
    let price = &record["itemsProcessed"][0];
    assert_eq!(price["successfully"], json!(["ok"]), "{record}");
    let mut reasons = std::collections::HashMap::new();
    for group in price["failed"].as_array().unwrap() {
        assert_eq!(group["code"], 1000, "given up after max_attempts: {group}");
        for item in group["items"].as_array().unwrap() {
            reasons.insert(
                item.as_str().unwrap().to_owned(),
                group["statusMessage"].as_str().unwrap().to_owned(),
            );
        }
    }
    for (kind, reason) in [
        ("crash", "the program exited with status 3: boom: no price list"),
        ("hang", "the program ran longer than --timeout 1s and was killed"),
        ("garbage", "the program's output: line 1 is not an outcome"),
        ("twice", "the program's output: line 2: item 3 has an outcome already"),
        ("stranger", "the program's output: line 1: item 1004 is not in task"),
        ("silent", "the program's output: no outcome for item(s) 5"),
    ] {
        let message = reasons.get(kind).unwrap_or_else(|| panic!("{kind} did not fail: {record}"));
        assert!(message.contains(reason), "{kind}: {message}");
    }
    assert_eq!(reasons.len(), 6);
}

#[test]
fn sigterm_lets_a_running_program_finish_and_past_the_grace_gives_its_task_back() {
    let (dir, db) = crate::temp_db();
    let server = serve_scripted(dir.path(), db.to_str().unwrap(), 10, 3);
    let started = dir.path().join("started");
    let slow = |secs: u32| {
        format!(
            "import time\nopen({started:?}, 'w').write('x')\ntime.sleep({secs})\n{PRICER}",
            started = started.to_str().unwrap()
        )
    };
    let wait_started = |started: &Path| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the program never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Within the grace: the program finishes, its outcomes are recorded, exit 0.
    let program = script(dir.path(), "slow.py", &slow(1));
    let id = start_scripted(&server.base, "finishes", &quotes(&[1, 2, 3]));
    let mut worker = WorkerProcess::start(&server.base, &[], &["python3", program.to_str().unwrap()]);
    wait_started(&started);
    worker.signal("-TERM");
    assert!(worker.exit_within(Duration::from_secs(15)).success(), "{:#?}", worker.seen);
    assert!(worker.seen.iter().any(|l| l.contains("3 succeeded, 0 failed")), "{:#?}", worker.seen);
    assert_eq!(wait_final(&server.base, &id, Duration::from_secs(10))["status"], "Success");

    // Past the grace: the program is killed and its task given back to be retried at once.
    std::fs::remove_file(&started).unwrap();
    let program = script(dir.path(), "stuck.py", &slow(60));
    let id = start_scripted(&server.base, "given-back", &quotes(&[1, 2]));
    let mut worker =
        WorkerProcess::start(&server.base, &["--grace-secs", "0.5"], &["python3", program.to_str().unwrap()]);
    wait_started(&started);
    let begun = Instant::now();
    worker.signal("-TERM");
    assert!(worker.exit_within(Duration::from_secs(15)).success(), "{:#?}", worker.seen);
    assert!(begun.elapsed() < Duration::from_secs(5), "stopped in {:?}", begun.elapsed());
    assert!(worker.seen.iter().any(|l| l.contains("given up: the worker stopped")), "{:#?}", worker.seen);
    assert!(worker.seen.last().unwrap().ends_with("0 failed, 1 given up"), "{:#?}", worker.seen);
    let claim = json!({ "queue": "scripted", "workerId": "after", "waitSeconds": 10 });
    let (status, claimed) = call(&server.base, "POST", "/v1/tasks/claim", Some(claim));
    assert_eq!(status, 200);
    let task = &claimed["tasks"][0];
    assert_eq!(
        (task["asyncProcessId"].as_str(), task["attempt"].as_u64()),
        (Some(id.as_str()), Some(2)),
        "{claimed}"
    );
}

#[test]
fn a_server_that_is_not_there_is_retried_and_the_worker_still_stops_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut worker = WorkerProcess::start(&format!("http://127.0.0.1:{port}"), &[], &["true"]);
    worker.wait_for("cannot reach");
    worker.wait_for("trying again in 1.0 s");
    worker.signal("-INT");
    let status = worker.exit_within(Duration::from_secs(10));
    assert!(status.success(), "{status}: {:#?}", worker.seen);
}

#[test]
fn the_worker_command_line_is_checked_before_it_claims() {
    let output = Command::new(BIN)
        .args(["worker", "--queue", "q", "--", "no-such-program-anywhere"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("'no-such-program-anywhere' is not a file"));
    let output = Command::new(BIN).args(["worker", "--queue", "q"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "no PROGRAM is a usage error");
}

#[test]
fn the_client_library_runs_a_worker_loop_against_the_real_server() {
    use async_engine_client::{Client, Event, Outcomes, Worker};
    let (dir, db) = crate::temp_db();
    let server = serve_scripted(dir.path(), db.to_str().unwrap(), 4, 3);
    let items = quotes(&[1, 200, 3, 4, 5, 600, 7, 8, 9]);
    let id = start_scripted(&server.base, "library", &items);
    let panicked = std::sync::atomic::AtomicBool::new(false);
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let worker = Worker::new(Client::new(&server.base).unwrap(), "scripted")
        .concurrency(2)
        .max_tasks(4)
        .on_event(move |event| {
            if let Event::Failed { message, .. } = event {
                seen.lock().unwrap().push(message.to_string());
            }
        });
    let summary = worker
        .run(|task| {
            // The first task panics once: given back, retried, recorded once.
            if !panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
                panic!("a bug in the handler");
            }
            let mut outcomes = Outcomes::new();
            for entry in &task.items {
                let quote: Value = entry.parse().unwrap();
                if quote["quantity"].as_u64().unwrap() > 100 {
                    outcomes.fail(entry.index, 7001, "Quantity over 100");
                } else {
                    outcomes.succeed(entry.index);
                }
            }
            Ok(outcomes)
        })
        .unwrap();
    // 3 tasks, the first one twice.
    assert_eq!((summary.completed, summary.failed, summary.given_up), (3, 1, 0), "{summary:?}");
    assert_eq!((summary.items_succeeded, summary.items_failed), (7, 2));
    assert_eq!(*events.lock().unwrap(), ["the handler panicked"]);
    let record = wait_final(&server.base, &id, Duration::from_secs(30));
    let price = &record["itemsProcessed"][0];
    assert_eq!(price["currentNumberOfItemsProccessed"], 9, "{record}");
    assert_eq!(lines(&price["failed"][0]["items"]), [1, 5]);
}
