//! The push runner against loopback receivers: bodies, answers, slots and every failure.

use super::*;
use async_engine_domain::TenantId;
use async_engine_domain::work::MockTaskStore;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;

fn task(id: i64, queue: &str) -> ClaimedTask {
    ClaimedTask {
        task_id: id,
        lease_token: format!("token-{id}"),
        tenant: TenantId::default_tenant(),
        async_process_id: "p1".into(),
        reference_id: "r1".into(),
        process_name: "P".into(),
        step_number: 1,
        step_name: "S".into(),
        queue: queue.into(),
        attempt: 2,
        lease_expires_at_micros: now_micros() + 30_000_000,
        additional_data: RawJson::from_value(&serde_json::json!({"k": 1})),
        items: vec![
            (3, RawJson::from_value(&serde_json::json!("a"))),
            (5, RawJson::from_value(&serde_json::json!({"b": 2}))),
        ],
    }
}

#[test]
fn the_body_is_the_claimed_task_without_its_lease() {
    let value: serde_json::Value = serde_json::from_str(&body(&task(9, "http:P/S"))).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "asyncProcessId": "p1", "referenceId": "r1", "asyncProcessName": "P", "stepNumber": 1,
            "stepName": "S", "taskId": 9, "attempt": 2, "additionalData": {"k": 1},
            "items": [{"index": 3, "item": "a"}, {"index": 5, "item": {"b": 2}}]
        })
    );
}

#[test]
fn answers_must_have_the_complete_shape() {
    let good =
        report(br#"{"successfully":[3],"failed":[{"items":[5],"code":7,"statusMessage":"no"}]}"#).unwrap();
    assert_eq!(good.successes, [3]);
    assert_eq!(good.failures, [FailureSnapshot { code: 7, status_message: "no".into(), items: vec![5] }]);
    for (bad, mention) in [
        (&b"ok"[..], "not a complete body"),
        (br#"{"succeeded":[3]}"#, "unknown field"),
        (br#"{"failed":[{"items":[5],"code":7}]}"#, "statusMessage"),
        (br#"{"failed":[{"items":[5],"code":7,"statusMessage":""}]}"#, "1 to 1000"),
    ] {
        let error = report(bad).map(drop).unwrap_err();
        assert!(error.contains(mention), "{error}");
    }
}

#[test]
fn a_step_never_has_more_than_its_max_in_flight() {
    let target = |name: &str, max_in_flight| PushTarget {
        name: name.into(),
        url: "http://h/".into(),
        max_in_flight,
        headers: vec![],
        signing_secret: None,
    };
    let targets: HashMap<String, PushTarget> =
        [("http:a".to_owned(), target("a", 1)), ("http:b".to_owned(), target("b", 2))].into();
    let slots = Slots::new(&targets);
    assert_eq!(slots.reserve(), ["http:a", "http:b"]);
    assert_eq!(slots.reserve(), ["http:b"], "a's only slot is taken");
    assert!(slots.reserve().is_empty());
    slots.release("http:a");
    assert_eq!(slots.reserve(), ["http:a"]);
}

/// A receiver that answers each connection with `answers[n]` (status, body) and sends
/// what it was asked back through the channel.
fn receiver(answers: Vec<(u16, &'static str)>) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/push?token=secret", listener.local_addr().unwrap());
    let (sender, requests) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (status, answer) in answers {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0_u8; 4096];
            // Headers, then the body of the length they announce.
            loop {
                let n = stream.read(&mut buffer).unwrap();
                seen.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&seen).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            sender.send(String::from_utf8_lossy(&seen).to_string()).unwrap();
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (url, requests)
}

fn run(
    url: &str,
    tasks: Vec<ClaimedTask>,
    mut store: MockTaskStore,
    allowed: Allowed,
    done: impl Fn() -> bool,
) {
    let mut first = Some(tasks);
    let batch = Arc::new(Mutex::new(Vec::new()));
    store.expect_claim().returning(move |request| {
        assert_eq!((request.max_tasks, request.tenant.as_ref()), (1, None));
        assert_eq!(request.queues, ["http:P/S"], "push threads claim only http: queues");
        if let Some(tasks) = first.take() {
            batch.lock().unwrap().extend(tasks);
        }
        Ok(batch.lock().unwrap().pop().into_iter().collect())
    });
    let target = PushTarget {
        name: "P/S".into(),
        url: url.into(),
        max_in_flight: 1,
        headers: vec![("Authorization".into(), "Bearer t0ken".into())],
        signing_secret: Some("step-secret".into()),
    };
    let config = PushConfig {
        concurrency: 2,
        lease: Duration::from_secs(30),
        idle_poll: Duration::from_millis(5),
        node: "t".into(),
        signing_secret: Some("global".into()),
    };
    let running = start_pusher(Arc::new(store), vec![target], allowed, config, Waker::default()).unwrap();
    for _ in 0..1000 {
        if done() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    running.stop();
}

fn any_host() -> Allowed {
    Arc::new(|_: &str| Ok(()))
}

#[test]
fn a_2xx_complete_answer_is_recorded_and_the_request_is_signed() {
    let (url, requests) = receiver(vec![(200, r#"{"successfully":[3,5]}"#)]);
    let mut store = MockTaskStore::new();
    let completed = Arc::new(AtomicUsize::new(0));
    let seen = completed.clone();
    store.expect_complete().times(1).returning(move |tenant, id, token, report, _| {
        assert_eq!((tenant, id, token), (None, 4, "token-4"));
        assert_eq!(report.successes, [3, 5]);
        seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    run(&url, vec![task(4, "http:P/S")], store, any_host(), || completed.load(Ordering::SeqCst) == 1);
    assert_eq!(completed.load(Ordering::SeqCst), 1);
    let request = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    let lower = request.to_ascii_lowercase();
    assert!(lower.starts_with("post /push?token=secret "), "{request}");
    assert!(
        lower.contains("x-async-engine-task: 4\r\n") && lower.contains("x-async-engine-attempt: 2\r\n"),
        "{request}"
    );
    assert!(lower.contains("authorization: bearer t0ken\r\n"), "{request}");
    let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
    let signed = format!("x-async-engine-signature: {}\r\n", signature("step-secret", body.as_bytes()));
    assert!(lower.contains(&signed), "the step's own secret signs: {request}");
}

/// Runs one task against one answer and returns the message it was failed with.
fn failed_with(answers: Vec<(u16, &'static str)>, allowed: Allowed) -> String {
    let (url, _requests) = receiver(answers);
    let mut store = MockTaskStore::new();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = failures.clone();
    store.expect_fail().returning(move |_, id, _, message, retryable, _| {
        assert_eq!(id, 4);
        assert!(retryable, "push failures are retried like other steps'");
        seen.lock().unwrap().push(message.to_owned());
        Ok(())
    });
    store.expect_complete().returning(|_, _, _, _, _| Err(TaskError::Invalid("item 5 is missing".into())));
    run(&url, vec![task(4, "http:P/S")], store, allowed, || !failures.lock().unwrap().is_empty());
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    failures[0].clone()
}

#[test]
fn anything_but_a_fitting_2xx_answer_fails_the_attempt_as_retryable() {
    assert_eq!(failed_with(vec![(503, "busy")], any_host()), "the endpoint answered 503");
    assert!(failed_with(vec![(200, "ok")], any_host()).contains("not a complete body"));
    assert_eq!(
        failed_with(vec![(200, r#"{"successfully":[3]}"#)], any_host()),
        "the answer does not fit the task: item 5 is missing"
    );
    let redirect = failed_with(vec![(302, "")], any_host());
    assert_eq!(redirect, "the endpoint answered 302", "redirects are not followed");
    let refused: Allowed = Arc::new(|_: &str| Err("host '127.0.0.1' is not allowed".into()));
    assert_eq!(failed_with(vec![], refused), "not sent: host '127.0.0.1' is not allowed");
}

#[test]
fn idle_threads_share_one_look_per_interval_and_a_wake_rouses_one() {
    let mut store = MockTaskStore::new();
    let claims = Arc::new(AtomicUsize::new(0));
    let counter = claims.clone();
    store.expect_claim().returning(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(vec![])
    });
    let target = PushTarget {
        name: "P/S".into(),
        url: "http://h/".into(),
        max_in_flight: 8,
        headers: vec![],
        signing_secret: None,
    };
    let config = PushConfig {
        concurrency: 8,
        lease: Duration::from_secs(30),
        idle_poll: Duration::from_millis(20),
        node: "t".into(),
        signing_secret: None,
    };
    let waker = Waker::default();
    let running = start_pusher(Arc::new(store), vec![target], any_host(), config, waker.clone()).unwrap();
    // Each thread looks once as it starts; then about one look per 20 ms among them all
    // (eight threads polling on their own would make 160 in this time).
    // The bounds follow the time that really passed: on a loaded machine a sleep lasts longer,
    // and the shared look comes round more often in it.
    let looks = |since: Instant| since.elapsed().as_millis() as usize / 20 + 1;
    let begun = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    let idle = claims.load(Ordering::SeqCst);
    let allowed = 8 + looks(begun) + 6;
    assert!((8..=allowed).contains(&idle), "{idle} claims, at most {allowed}");
    // Burst of wakes while one look is due at most: far fewer claims than wakes x threads.
    let burst = Instant::now();
    for _ in 0..10 {
        waker.wake();
    }
    std::thread::sleep(Duration::from_millis(100));
    let woken = claims.load(Ordering::SeqCst) - idle;
    // Under a full test run a look begun before the burst may land in it, and a thread may
    // take a moment to sleep again: a margin of 8 still tells one look per wake from the 80
    // of every thread rousing at each.
    let allowed = 10 + looks(burst) + 8;
    running.stop();
    assert!(woken <= allowed, "{woken} claims after 10 wakes, at most {allowed}");
}

#[test]
fn an_endpoint_that_does_not_answer_within_the_lease_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (_stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let mut store = MockTaskStore::new();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = failures.clone();
    store.expect_fail().returning(move |_, _, _, message, retryable, _| {
        assert!(retryable);
        seen.lock().unwrap().push(message.to_owned());
        Ok(())
    });
    // One second of lease left: the request gets four fifths of it.
    let short = ClaimedTask { lease_expires_at_micros: now_micros() + 1_000_000, ..task(4, "http:P/S") };
    run(&url, vec![short], store, any_host(), || !failures.lock().unwrap().is_empty());
    let message = failures.lock().unwrap()[0].clone();
    // 0.8 s, or a little less when the thread started late.
    assert!(message.starts_with("no answer within 0."), "{message}");
}

#[test]
fn a_refused_connection_fails_the_attempt_without_the_url() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut store = MockTaskStore::new();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = failures.clone();
    store.expect_fail().returning(move |_, _, _, message, _, _| {
        seen.lock().unwrap().push(message.to_owned());
        Ok(())
    });
    let url = format!("http://127.0.0.1:{port}/push?token=secret");
    run(&url, vec![task(4, "http:P/S")], store, any_host(), || !failures.lock().unwrap().is_empty());
    let message = failures.lock().unwrap()[0].clone();
    assert!(message.starts_with("could not reach the endpoint"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}
