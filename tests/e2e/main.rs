//! End-to-end tests: the real `async-engine` binary, started on port 0 over a fresh SQLite
//! file per test, driven over HTTP and by signals.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::zombie_processes,
    reason = "test helpers: a failed unwrap is a failed test; `Running` waits for its child on drop"
)]

mod browser;
mod cli;
mod dashboard;
mod engine;
mod faults;
mod guards;
mod notifications;
mod operations;
mod push;
mod resilience;
mod security;
mod uploads;
mod worker;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_engine_domain::{ProcessSnapshot, SnapshotWriter, TenantId};
use async_engine_persistence::Store;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_async-engine");
const FIXTURE: &str = include_str!("../../fixtures/documented-example.json");

/// A running server process; killed if a test fails before stopping it.
struct Running {
    child: Child,
    base: String,
    /// Log lines after the "listening" line, kept for assertions.
    log: mpsc::Receiver<String>,
    /// Log lines before it.
    first_lines: Vec<String>,
}

impl Running {
    /// The first log line from now on that `matches`, within 10 s: the server logs a request
    /// once it has answered it, so the line can come a moment after the answer.
    fn log_line(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            match self.log.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no such log line within 10 s; the server said: {seen:#?}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(db: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("ASYNC_ENGINE__DATABASE__URL", db.as_ref())
        .env("ASYNC_ENGINE__SERVER__HOST", "127.0.0.1")
        .env("ASYNC_ENGINE__SERVER__PORT", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// Starts `serve` and waits for the line that says where it listens.
fn start(db: impl AsRef<OsStr>, env: &[(&str, &str)]) -> Running {
    start_with(db, &["serve"], env)
}

fn start_with(db: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> Running {
    start_command(command(db, args, env))
}

/// Starts a prepared server command and waits for the line that says where it listens.
fn start_command(mut command: Command) -> Running {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the server did not say where it listens: {seen:#?}"));
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on ".len()..];
            let base: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
            return Running { child, base, log, first_lines: seen };
        }
        seen.push(line);
    }
}

fn seed(db: impl AsRef<OsStr>) {
    let store = Store::open(db.as_ref().to_str().unwrap(), 1).unwrap();
    store.migrate().unwrap();
    for (n, record) in documented()["AsyncProcessStatus"].as_array().unwrap().iter().enumerate() {
        // Created now: retention (30 days by default) must not take them.
        let snapshot = ProcessSnapshot::from_documented_record(record, now_micros() + n as i64).unwrap();
        store.import(&TenantId::default_tenant(), &snapshot).unwrap();
    }
}

fn now_micros() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_micros()).unwrap()
}

fn documented() -> Value {
    serde_json::from_str(FIXTURE).unwrap()
}

fn get(base: &str, path: &str) -> (u16, Value) {
    let response = reqwest::blocking::get(format!("{base}{path}")).unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// The value of the first `/metrics` line that starts with `name` (a series with its labels).
fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{base}/metrics")).unwrap().text().unwrap();
    let line =
        text.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// SIGTERM, then the exit status.
fn terminate(running: &mut Running) -> std::process::ExitStatus {
    signal(running, "-TERM")
}

fn signal(running: &mut Running, which: &str) -> std::process::ExitStatus {
    let pid = running.child.id().to_string();
    assert!(Command::new("kill").args([which, &pid]).status().unwrap().success());
    for _ in 0..100 {
        if let Some(status) = running.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server did not stop within 10 s of {which}");
}

/// Defines an end-to-end test once per backend, `name::sqlite` and `name::postgres`, each
/// given a scratch folder and the `database.url` of a fresh database (PostgreSQL ones only
/// when `TEST_POSTGRES_URL` is set).
macro_rules! on_both_backends {
    ($(fn $name:ident($dir:ident: &Path, $db:ident: &str) $body:block)*) => {$(
        mod $name {
            use super::*;

            fn run($dir: &Path, $db: &str) $body

            #[test]
            fn sqlite() {
                let (dir, db) = crate::temp_db();
                run(dir.path(), db.to_str().unwrap());
            }

            async_engine_persistence::postgres_test! {
                fn postgres() {
                    let database = async_engine_persistence::testing::postgres();
                    let dir = tempfile::tempdir().unwrap();
                    run(dir.path(), &database.url);
                }
            }
        }
    )*};
}
pub(crate) use on_both_backends;

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e2e.db");
    (dir, db)
}

on_both_backends! {
    fn serves_the_documented_example_and_keeps_it_across_a_restart(_dir: &Path, db: &str) {
        seed(db);
        let mut expected = documented();
        expected["code"] = 202.into();

        let mut server = start(db, &[]);
        assert_eq!(get(&server.base, "/v1/asyncprocesses/12324"), (202, expected.clone()));
        let status = terminate(&mut server);
        assert!(status.success(), "SIGTERM ends with exit 0, got {status}");

        let mut server = start(db, &[]);
        assert_eq!(get(&server.base, "/v1/asyncprocesses/12324"), (202, expected));
        assert!(terminate(&mut server).success());
    }

    fn the_success_code_can_be_200(_dir: &Path, db: &str) {
        seed(db);
        let server = start(db, &[("ASYNC_ENGINE__API__SUCCESS_CODE", "200")]);
        let (status, body) = get(&server.base, "/v1/asyncprocesses/9876543");
        assert_eq!((status, body["code"].as_u64()), (200, Some(200)));
    }
}

#[test]
fn a_config_file_is_layered_under_the_environment() {
    let (dir, db) = temp_db();
    seed(&db);
    let file = dir.path().join("server.toml");
    std::fs::write(&file, "[api]\nsuccess_code = 200\n[server]\nport = 1\n").unwrap();
    // The file asks for port 1; the environment's port 0 wins, and the file's code applies.
    let server = start_with(&db, &["serve", "--config", file.to_str().unwrap()], &[]);
    let (status, body) = get(&server.base, "/v1/asyncprocesses/12324");
    assert_eq!((status, body["code"].as_u64()), (200, Some(200)));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (_dir, db) = temp_db();
    seed(&db);
    let mut server = start(&db, &[("ASYNC_ENGINE__LOG__FORMAT", "json")]);
    let _ = get(&server.base, "/v1/asyncprocesses/12324");
    assert!(terminate(&mut server).success());
    let lines: Vec<String> = server.first_lines.iter().cloned().chain(server.log.try_iter()).collect();
    assert!(lines.len() >= 2, "{lines:?}");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(parsed.iter().all(|event| event.get("level").is_some()));
    let request = parsed.iter().find(|event| event["message"] == "request").expect("a request log line");
    assert_eq!(request["status"], 202);
    assert_eq!(request["path"], "/v1/asyncprocesses/12324");
}

#[test]
fn open_event_streams_and_long_polls_do_not_hold_up_a_stop() {
    use std::io::Read;
    let (_dir, db) = temp_db();
    seed(&db);
    let mut server = start(&db, &[]);
    // 9876543 is InProgress and never changes: its stream would stay open for ever.
    let mut stream =
        reqwest::blocking::get(format!("{}/v1/asyncprocesses/9876543/events", server.base)).unwrap();
    let mut first = [0_u8; 64];
    let read = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("event: status"));
    let url = format!("{}/v1/asyncprocesses/9876543?waitSeconds=60", server.base);
    let poll = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        client.get(url).header("If-None-Match", "*").send().unwrap().status().as_u16()
    });
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    assert!(terminate(&mut server).success());
    // Well within server.shutdown_timeout_secs (30), which held waits would use up.
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped after {:?}", stopping.elapsed());
    assert_eq!(poll.join().unwrap(), 304);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

#[test]
fn sigint_stops_as_gracefully_as_sigterm() {
    let (_dir, db) = temp_db();
    seed(&db);
    let mut server = start(&db, &[]);
    assert_eq!(get(&server.base, "/v1/asyncprocesses/9876543").0, 202);
    let status = signal(&mut server, "-INT");
    assert!(status.success(), "SIGINT ends with exit 0, got {status}");
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let (_dir, db) = temp_db();
    for (key, value, mention) in [
        ("ASYNC_ENGINE__SERVER__PORT", "http", "port"),
        ("ASYNC_ENGINE__API__SUCCESS_CODE", "201", "api.success_code"),
        ("ASYNC_ENGINE__DATABASE__URL", "mysql://db", "database.url"),
        ("ASYNC_ENGINE__SERVER__HOSTNAME", "x", "hostname"),
    ] {
        let output = command(&db, &["serve"], &[(key, value)]).output().unwrap();
        assert!(!output.status.success(), "{key}={value} must stop start-up");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{key}: {stderr}");
        assert!(stderr.contains(mention), "{key}: {stderr}");
    }
}

#[test]
fn migrate_applies_once_and_serve_can_refuse_an_old_schema() {
    let (_dir, db) = temp_db();
    let refused =
        command(&db, &["serve"], &[("ASYNC_ENGINE__DATABASE__MIGRATE_ON_START", "false")]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("async-engine migrate"));

    let first = command(&db, &["migrate"], &[]).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stderr).contains("applied"));
    let second = command(&db, &["migrate"], &[]).output().unwrap();
    assert!(String::from_utf8_lossy(&second.stderr).contains("current"));

    let server = start(&db, &[("ASYNC_ENGINE__DATABASE__MIGRATE_ON_START", "false")]);
    let (status, _) = get(&server.base, "/v1/asyncprocesses/anything");
    assert_eq!(status, 400);
}

#[test]
fn the_database_folder_is_created_when_missing() {
    let (dir, _) = temp_db();
    let db = dir.path().join("new/folder/data.db");
    let server = start(&db, &[]);
    assert!(db.exists());
    drop(server);
}
