//! Push steps (`handler = "http"`) through the real binary, against a loopback receiver that
//! answers, fails with 503, times out, answers a body that is not a completion, or reports
//! a failure: every item ends with exactly one outcome per step, retries are made and counted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_engine_engine::notify::signature;
use serde_json::{Value, json};

use crate::engine::{call, wait_final};
use crate::{metric, on_both_backends, start_with};

const SECRET: &str = "push-e2e-secret";
const TOKEN: &str = "Bearer push-e2e-token";
const MAX_IN_FLIGHT: usize = 2;

/// One request the receiver took.
#[derive(Debug, Clone)]
struct Received {
    item: String,
    task: String,
    attempt: String,
    authorization: String,
    signed: bool,
}

/// A push receiver on a loopback port, one thread per connection; what each item's requests
/// get is decided by the item (a string naming the behaviour).
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    most_at_once: Arc<AtomicUsize>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let (at_once, most_at_once) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (kept, most) = (received.clone(), most_at_once.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (kept, at_once, most) = (kept.clone(), at_once.clone(), most.clone());
                std::thread::spawn(move || {
                    let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    answer(stream, &kept);
                    at_once.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { url, received, most_at_once }
    }

    fn requests_of(&self, item: &str) -> Vec<Received> {
        self.received.lock().unwrap().iter().filter(|r| r.item == item).cloned().collect()
    }
}

fn answer(mut stream: TcpStream, kept: &Mutex<Vec<Received>>) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0_u8; 8192];
    let (head, body) = loop {
        let n = stream.read(&mut buffer).unwrap_or(0);
        seen.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                break (text[..end].to_owned(), seen[end + 4..end + 4 + length].to_vec());
            }
        }
        assert!(n > 0, "the request broke off: {text}");
    };
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let task: Value = serde_json::from_slice(&body).unwrap();
    let [entry] = &task["items"].as_array().unwrap()[..] else { panic!("one item per task: {task}") };
    let (index, item) = (entry["index"].as_u64().unwrap(), entry["item"].as_str().unwrap().to_owned());
    let earlier = {
        let mut kept = kept.lock().unwrap();
        let earlier = kept.iter().filter(|r| r.item == item).count();
        kept.push(Received {
            item: item.clone(),
            task: header("x-async-engine-task"),
            attempt: header("x-async-engine-attempt"),
            authorization: header("authorization"),
            signed: header("x-async-engine-signature") == signature(SECRET, &body),
        });
        earlier
    };
    let ok = json!({ "successfully": [index] }).to_string();
    let (status, reply) = match item.as_str() {
        "ok" => (200, ok),
        "flaky" if earlier > 0 => (200, ok),
        "flaky" | "down" => (503, String::new()),
        "slow" => {
            // Past the request's timeout (four fifths of the 1 s lease): held until the
            // server gives up and closes the connection, which ends this request's count.
            stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = stream.read(&mut buffer);
            (200, ok)
        }
        "bad" => (200, "\"done\"".to_owned()),
        "reject" => (
            200,
            json!({ "failed": [{ "items": [index], "code": 42, "statusMessage": "rejected" }] }).to_string(),
        ),
        other => panic!("unknown item {other}"),
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    // The slow one's client has gone; nothing to tell it.
    let _ = stream.write_all(reply.as_bytes());
}

const ITEMS: [&str; 6] = ["ok", "flaky", "down", "slow", "bad", "reject"];

on_both_backends! {
    fn a_push_step_records_answers_and_retries_every_other_outcome(dir: &Path, db: &str) {
        let receiver = Receiver::start();
        let file = dir.join("push.toml");
        std::fs::write(
            &file,
            format!(
                "[[processes]]\nname = \"Push\"\n\
                 [[processes.steps]]\nname = \"Call\"\nhandler = \"http\"\nurl = \"{}\"\nchunk_size = 1\n\
                 max_attempts = 3\ntimeout_secs = 1\nmax_in_flight = {MAX_IN_FLIGHT}\non_item_failure = \"continue\"\n\
                 headers = {{ Authorization = \"PUSH_E2E_TOKEN\" }}\n\
                 [[processes.steps]]\nname = \"After\"\nhandler = \"builtin:noop\"\n",
                receiver.url
            ),
        )
        .unwrap();
        let env = [
            ("ASYNC_ENGINE__ENGINE__PUSH_ALLOWED_HOSTS", "127.0.0.1"),
            ("ASYNC_ENGINE__ENGINE__PUSH_CONCURRENCY", "4"),
            ("ASYNC_ENGINE__ENGINE__IDLE_POLL_MS", "50"),
            ("ASYNC_ENGINE__NOTIFICATIONS__SIGNING_SECRET", SECRET),
            ("PUSH_E2E_TOKEN", TOKEN),
        ];
        let server = start_with(db, &["serve", "--config", file.to_str().unwrap()], &env);
        let body = json!({ "asyncProcessName": "Push", "referenceId": "pushed", "items": ITEMS });
        let (status, answer) = call(&server.base, "POST", "/v1/asyncprocesses", Some(body));
        assert_eq!(status, 202, "{answer}");
        let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        let record = wait_final(&server.base, &id, Duration::from_secs(60));

        let push = &record["itemsProcessed"][0];
        assert_eq!(push["successfully"], json!(["ok", "flaky"]), "{record}");
        let mut failed: HashMap<String, (i64, String)> = HashMap::new();
        for group in push["failed"].as_array().unwrap() {
            for item in group["items"].as_array().unwrap() {
                let message = group["statusMessage"].as_str().unwrap().to_owned();
                let earlier = failed.insert(item.as_str().unwrap().to_owned(), (group["code"].as_i64().unwrap(), message));
                assert!(earlier.is_none(), "{item} failed twice: {record}");
            }
        }
        assert_eq!(failed.len(), 4, "{record}");
        assert_eq!(failed["reject"], (42, "rejected".to_owned()));
        for (item, mention) in
            [("down", "the endpoint answered 503"), ("slow", "no answer within"), ("bad", "not a complete body")]
        {
            let (code, message) = &failed[item];
            assert_eq!(*code, 1000, "{item}: given up after max_attempts");
            assert!(message.contains(mention), "{item}: the last error is kept: {message}");
        }
        // Failed items continue: the next step has every item exactly once.
        let after = &record["itemsProcessed"][1];
        assert_eq!(after["successfully"].as_array().unwrap().len(), ITEMS.len(), "{record}");
        assert_eq!(after["failed"], json!([]));

        for (item, attempts) in [("ok", 1), ("flaky", 2), ("down", 3), ("slow", 3), ("bad", 3), ("reject", 1)] {
            let requests = receiver.requests_of(item);
            let numbers: Vec<String> = requests.iter().map(|r| r.attempt.clone()).collect();
            let expected: Vec<String> = (1..=attempts).map(|n| n.to_string()).collect();
            assert_eq!(numbers, expected, "{item}: {requests:?}");
            assert!(!requests[0].task.is_empty(), "{item}: {requests:?}");
            assert!(requests.iter().all(|r| r.task == requests[0].task), "one task id across attempts: {requests:?}");
            assert!(requests.iter().all(|r| r.signed && r.authorization == TOKEN), "{requests:?}");
        }
        let tasks: std::collections::HashSet<String> =
            receiver.received.lock().unwrap().iter().map(|r| r.task.clone()).collect();
        assert_eq!(tasks.len(), ITEMS.len(), "one task per item");
        let most = receiver.most_at_once.load(Ordering::SeqCst);
        assert!(most <= MAX_IN_FLIGHT, "{most} requests at once, over max_in_flight");

        let count = |outcome: &str| metric(&server.base, &format!("async_engine_push_attempts_total{{outcome=\"{outcome}\"}}"));
        assert_eq!(count("completed"), 3.0, "ok, flaky's second attempt, reject");
        assert_eq!(count("http_error"), 4.0, "flaky's first attempt, down's three");
        assert_eq!(count("timeout"), 3.0);
        assert_eq!(count("bad_answer"), 3.0);
        assert_eq!(metric(&server.base, "async_engine_push_attempt_seconds_count"), 13.0);
    }
}

#[test]
fn a_push_url_on_a_host_not_allowed_stops_start_up_naming_the_step() {
    let (dir, db) = crate::temp_db();
    let file = dir.path().join("push.toml");
    std::fs::write(
        &file,
        "[[processes]]\nname = \"Push\"\n[[processes.steps]]\nname = \"Call\"\nhandler = \"http\"\nurl = \"http://example.com/x\"\n",
    )
    .unwrap();
    let output = crate::command(&db, &["serve", "--config", file.to_str().unwrap()], &[]).output().unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains(
            "processes[0].steps[0].url: url host 'example.com' is not in engine.push_allowed_hosts"
        ),
        "{text}"
    );
}
