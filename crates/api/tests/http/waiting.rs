//! Polling without overload (contract §6) over a real server: ETags and 304, long-polls,
//! the event stream, the per-client interval, and the paged items call. Processes are moved
//! on by claiming and completing their tasks through the store, as an external worker would.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use async_engine_api::ApiConfig;
use async_engine_domain::{
    ClaimRequest, ClaimedTask, FailurePolicy, FailureSnapshot, Handler, ProcessDefinition, StepDefinition,
    TaskReport, TaskStore,
};
use async_engine_persistence::testing::{self, TestDb};
use serde_json::{Value, json};

use super::TestServer;

/// One external step, so the test decides when the process moves.
pub(super) fn definitions(chunk: u32) -> Vec<ProcessDefinition> {
    vec![ProcessDefinition {
        name: "Q".into(),
        steps: vec![StepDefinition {
            name: "Work".into(),
            handler: Handler::Queue("q".into()),
            chunk_size: chunk,
            max_attempts: 3,
            timeout_secs: 60,
            on_item_failure: FailurePolicy::Skip,
            tolerance: Default::default(),
            max_in_flight: None,
        }],
        callback_url: None,
    }]
}

fn fast() -> ApiConfig {
    ApiConfig { watch_interval: Duration::from_millis(50), ..ApiConfig::default() }
}

impl TestServer {
    fn start_process(&self, items: usize) -> String {
        let items: Vec<Value> = (0..items).map(|n| json!({ "n": n })).collect();
        let (status, body) = self.post(
            "/v1/asyncprocesses",
            &json!({ "asyncProcessName": "Q", "referenceId": "w", "items": items }),
        );
        assert_eq!(status, 202, "{body}");
        body["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
    }

    fn claim(&self, max_tasks: u32) -> Vec<ClaimedTask> {
        self.store
            .claim(&ClaimRequest {
                tenant: None,
                queues: vec!["queue:q".into()],
                worker_id: "test".into(),
                max_tasks,
                lease_micros: 60_000_000,
                now_micros: now(),
            })
            .unwrap()
    }

    /// Completes a task; items whose index is a multiple of 7 fail.
    fn complete(&self, task: &ClaimedTask) {
        let (bad, good): (Vec<u64>, Vec<u64>) = task.items.iter().map(|(i, _)| *i).partition(|i| i % 7 == 0);
        let failures = vec![FailureSnapshot { code: 7007, status_message: "Seventh".into(), items: bad }];
        self.store
            .complete(None, task.task_id, &task.lease_token, &TaskReport { successes: good, failures }, now())
            .unwrap();
    }

    fn raw_get(&self, path: &str, etag: Option<&str>) -> reqwest::blocking::Response {
        let mut request = self.client.get(format!("{}{path}", self.base)).timeout(Duration::from_secs(90));
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        request.send().unwrap()
    }
}

fn now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_micros()).unwrap()
}

fn etag(response: &reqwest::blocking::Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_owned()
}

fn processed(body: &Value) -> u64 {
    body["AsyncProcessStatus"][0]["itemsProcessed"][0]["currentNumberOfItemsProccessed"].as_u64().unwrap()
}

on_both_backends! {
    fn a_matching_etag_is_a_304_and_each_shape_has_its_own(server: &TestServer) {
        server.seed_documented();
        let first = server.raw_get("/v1/asyncprocesses/12324", None);
        assert_eq!(first.status().as_u16(), 202);
        let tag = etag(&first);
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() > 10, "{tag}");
        let again = server.raw_get("/v1/asyncprocesses/12324", Some(&tag));
        assert_eq!((again.status().as_u16(), etag(&again)), (304, tag.clone()));
        assert!(again.bytes().unwrap().is_empty());
        for held in [format!("W/{tag}"), format!("\"other\", {tag}"), "*".to_owned()] {
            assert_eq!(server.raw_get("/v1/asyncprocesses/12324", Some(&held)).status().as_u16(), 304, "{held}");
        }
        let other = server.raw_get("/v1/asyncprocesses/12324?itemsList=false", Some(&tag));
        assert_eq!(other.status().as_u16(), 202, "another shape is another representation");
        assert_ne!(etag(&other), tag);
        assert_eq!(server.raw_get("/v1/asyncprocesses/12324", Some("\"stale\"")).status().as_u16(), 202);
    }

}

on_both_backends! {
    fn a_long_poll_answers_soon_after_a_change_and_304_after_its_timeout(db: TestDb) {
        let server = TestServer::start_with(db, definitions(2), fast());
        let id = server.start_process(4);
        let path = format!("/v1/asyncprocesses/{id}?itemsList=false");
        let tag = etag(&server.raw_get(&path, None));
        let started = Instant::now();
        let unchanged = server.raw_get(&format!("{path}&waitSeconds=1"), Some(&tag));
        let waited = started.elapsed();
        assert_eq!((unchanged.status().as_u16(), etag(&unchanged)), (304, tag.clone()));
        assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
        std::thread::scope(|scope| {
            let poll = scope.spawn(|| {
                let response = server.raw_get(&format!("{path}&waitSeconds=30"), Some(&tag));
                (Instant::now(), response.status().as_u16(), response.json::<Value>().unwrap())
            });
            std::thread::sleep(Duration::from_millis(500));
            // The claim is the first change (WaitingToProcess to InProgress); the completion may
            // land in the same watch interval or the next.
            let changed = Instant::now();
            let task = server.claim(1).remove(0);
            server.complete(&task);
            let (answered, status, body) = poll.join().unwrap();
            assert_eq!(status, 202, "{body}");
            assert_eq!(body["AsyncProcessStatus"][0]["status"], "InProgress", "{body}");
            assert!([0, 2].contains(&processed(&body)), "{body}");
            assert!(answered.duration_since(changed) < Duration::from_secs(1), "answered late");
        });
        // waitSeconds is bounded, and without If-None-Match it is a plain read.
        for bad in ["0", "61", "x"] {
            let (status, body) = server.get(&format!("{path}&waitSeconds={bad}"));
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(body["technicalMessage"].as_str().unwrap().contains("waitSeconds"));
        }
        assert_eq!(server.raw_get(&format!("{path}&waitSeconds=5"), None).status().as_u16(), 202);
    }

    fn an_event_stream_shows_progress_and_closes_after_the_final_state(db: TestDb) {
        let server = TestServer::start_with(db, definitions(3), fast());
        let id = server.start_process(6);
        let (events, seen) = std::sync::mpsc::channel::<(String, Value)>();
        let stream = server.raw_get(&format!("/v1/asyncprocesses/{id}/events"), None);
        assert_eq!(stream.status().as_u16(), 200);
        assert_eq!(stream.headers()["content-type"], "text/event-stream");
        let reader = std::thread::spawn(move || {
            let mut kind = String::new();
            let mut data = String::new();
            for line in BufReader::new(stream).lines() {
                let line = line.unwrap();
                if let Some(value) = line.strip_prefix("event: ") {
                    kind = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                } else if line.is_empty() && !data.is_empty() {
                    events.send((kind.clone(), serde_json::from_str(&data).unwrap())).unwrap();
                    data.clear();
                }
            }
            // The loop ends only when the server closes the stream.
        });
        let next = || seen.recv_timeout(Duration::from_secs(10)).unwrap();
        let (kind, first) = next();
        assert_eq!(kind, "status");
        assert_eq!(first["AsyncProcessStatus"][0]["status"], "WaitingToProcess");
        assert!(first["AsyncProcessStatus"][0]["itemsProcessed"][0].get("successfully").is_none());
        let mut statuses = Vec::new();
        let mut counts = vec![0];
        for task in server.claim(2) {
            std::thread::sleep(Duration::from_millis(200));
            server.complete(&task);
        }
        loop {
            let (_, event) = next();
            let status = event["AsyncProcessStatus"][0]["status"].as_str().unwrap().to_owned();
            counts.push(processed(&event));
            statuses.push(status.clone());
            if status == "Failed" || status == "Success" {
                break;
            }
        }
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "progress only moves forward: {counts:?}");
        assert_eq!(counts.last(), Some(&6));
        assert!(counts.contains(&3), "the first task's progress is an event of its own: {counts:?}");
        // Item 0 fails (a multiple of 7): the step completes with errors.
        assert_eq!(statuses.last().map(String::as_str), Some("Failed"));
        reader.join().unwrap();
        assert!(seen.try_recv().is_err(), "nothing after the final state");
    }

    fn reading_faster_than_the_interval_is_a_429_with_retry_after(db: TestDb) {
        let config = ApiConfig { min_status_interval_secs: 60, ..fast() };
        let server = TestServer::start_with(db, Vec::new(), config);
        server.seed_documented();
        let first = server.raw_get("/v1/asyncprocesses/12324", None);
        assert_eq!(first.status().as_u16(), 202);
        let tag = etag(&first);
        let refused = server.raw_get("/v1/asyncprocesses/12324", None);
        assert_eq!(refused.status().as_u16(), 429);
        let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((59..=60).contains(&wait), "{wait}");
        let body: Value = refused.json().unwrap();
        assert_eq!((body["code"].as_u64(), body["statusMessage"].as_str()), (Some(429), Some("Too Many Requests")));
        assert!(body["technicalMessage"].as_str().unwrap().contains("waitSeconds"));
        // Another ID is counted apart, and a waiting read is not counted at all.
        assert_eq!(server.raw_get("/v1/asyncprocesses/9876543", None).status().as_u16(), 202);
        let waiting = server.raw_get("/v1/asyncprocesses/12324?waitSeconds=1", Some(&tag));
        assert_eq!(waiting.status().as_u16(), 304);
    }

    fn the_items_call_pages_through_a_large_step_listing_each_item_once(db: TestDb) {
        let server = TestServer::start_with(db, definitions(10_000), fast());
        let total = 50_000;
        let id = server.start_process(total);
        for task in server.claim(10) {
            server.complete(&task);
        }
        let mut seen = vec![0_u8; total];
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let after = cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default();
            let (status, page) = server.get(&format!("/v1/asyncprocesses/{id}/steps/0/items?limit=4000{after}"));
            assert_eq!(status, 200, "{page}");
            pages += 1;
            for entry in page["items"].as_array().unwrap() {
                let index = entry["index"].as_u64().unwrap();
                assert_eq!(entry["item"], json!({ "n": index }));
                assert_eq!(entry.get("code").is_some(), index % 7 == 0, "{entry}");
                seen[usize::try_from(index).unwrap()] += 1;
            }
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(pages, total.div_ceil(4000));
        assert!(seen.iter().all(|&n| n == 1), "every item exactly once");
        let (_, failed) = server.get(&format!("/v1/asyncprocesses/{id}/steps/0/items?outcome=failed&limit=3"));
        assert_eq!(failed["items"][1], json!({ "index": 7, "item": { "n": 7 }, "code": 7007, "statusMessage": "Seventh" }));
        assert!(failed["nextCursor"].is_string());
        // The full answer is over the governor limit, and says where to go instead.
        let (status, body) = server.get(&format!("/v1/asyncprocesses/{id}"));
        assert_eq!(status, 400);
        assert!(body["technicalMessage"].as_str().unwrap().contains("/steps/{stepNumber}/items"), "{body}");
        for (query, mention) in [
            ("steps/1/items", "no step 1"),
            ("steps/2147483648/items", "no step 2147483648"),
            ("steps/x/items", "stepNumber"),
            ("steps/0/items?outcome=maybe", "outcome"),
            ("steps/0/items?limit=10001", "limit"),
            ("steps/0/items?cursor=abc", "cursor"),
        ] {
            let (status, body) = server.get(&format!("/v1/asyncprocesses/{id}/{query}"));
            assert_eq!(status, 400, "{query}: {body}");
            assert!(body["technicalMessage"].as_str().unwrap().contains(mention), "{query}: {body}");
        }
        let (status, _) = server.get("/v1/asyncprocesses/nope/steps/0/items");
        assert_eq!(status, 400);
    }
}
