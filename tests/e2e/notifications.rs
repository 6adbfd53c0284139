//! FinishProcess notifications through the real binary, received by a loopback webhook
//! receiver: signatures, retries after failures, the outbox across a SIGKILL, allowed hosts.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use async_engine_engine::notify::signature;
use serde_json::{Value, json};

use crate::engine::{call, serve, wait_final};
use crate::{metric, on_both_backends, signal};

const SECRET: &str = "e2e-secret";

/// One request the receiver took.
#[derive(Debug, Clone)]
struct Received {
    delivery: String,
    attempt: String,
    signature: Option<String>,
    body: Vec<u8>,
}

/// A webhook receiver on a loopback port that answers 503 to its first `failures` requests.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    stop: actix_web::dev::ServerHandle,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.stop.stop(false));
    }
}

impl Receiver {
    fn start(failures: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicUsize::new(failures));
        let (ready, handle) = std::sync::mpsc::channel();
        let (kept, left) = (received.clone(), failures.clone());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let (kept, left) = (kept.clone(), left.clone());
                    App::new().route(
                        "/hook",
                        web::post().to(move |req: HttpRequest, body: web::Bytes| {
                            let (kept, left) = (kept.clone(), left.clone());
                            async move {
                                let header = |name: &str| {
                                    req.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
                                };
                                kept.lock().unwrap().push(Received {
                                    delivery: header("X-Async-Engine-Delivery").unwrap_or_default(),
                                    attempt: header("X-Async-Engine-Attempt").unwrap_or_default(),
                                    signature: header("X-Async-Engine-Signature"),
                                    body: body.to_vec(),
                                });
                                let failing = left
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                    .is_ok();
                                if failing {
                                    HttpResponse::ServiceUnavailable().finish()
                                } else {
                                    HttpResponse::NoContent().finish()
                                }
                            }
                        }),
                    )
                })
                .workers(1)
                .listen(listener)
                .unwrap()
                .run();
                ready.send(server.handle()).unwrap();
                server.await
            })
        });
        Self { url, received, stop: handle.recv().unwrap() }
    }

    /// Waits until `n` requests have arrived.
    fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received.lock().unwrap().clone();
            if received.len() >= n {
                return received;
            }
            assert!(Instant::now() < deadline, "{} of {n} deliveries arrived in {within:?}", received.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn notifying<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("ASYNC_ENGINE__NOTIFICATIONS__ALLOWED_HOSTS", "127.0.0.1"),
        ("ASYNC_ENGINE__NOTIFICATIONS__SIGNING_SECRET", SECRET),
        ("ASYNC_ENGINE__NOTIFICATIONS__INITIAL_BACKOFF_MS", "50"),
        ("ASYNC_ENGINE__NOTIFICATIONS__POLL_MS", "50"),
    ];
    env.extend_from_slice(extra);
    env
}

fn start_with_callback(base: &str, url: &str) -> String {
    let body = json!({
        "asyncProcessName": "Noop", "referenceId": "hooked",
        "items": [{"n": 1}, {"n": 2}, {"n": 3}], "callbackUrl": url
    });
    let (status, answer) = call(base, "POST", "/v1/asyncprocesses", Some(body));
    assert_eq!(status, 202, "{answer}");
    answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
}

fn deliveries(base: &str, id: &str) -> Vec<Value> {
    let (status, body) = call(base, "GET", &format!("/v1/asyncprocesses/{id}/deliveries"), None);
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

/// Polls the operators' view until the one delivery is in `state`.
fn wait_state(base: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = deliveries(base, id);
        if all.len() == 1 && all[0]["state"] == state {
            return all[0].clone();
        }
        assert!(Instant::now() < deadline, "no delivery of {id} became {state}: {all:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

on_both_backends! {
    fn a_finished_process_is_announced_once_with_a_valid_signature(dir: &Path, db: &str) {
        let receiver = Receiver::start(0);
        let server = serve(dir, db, &notifying(&[]));
        let id = start_with_callback(&server.base, &receiver.url);
        let [delivery] = &receiver.wait_for(1, Duration::from_secs(20))[..] else { unreachable!() };
        assert_eq!(delivery.signature.as_deref(), Some(signature(SECRET, &delivery.body).as_str()));
        assert_eq!(delivery.attempt, "1");
        let body: Value = serde_json::from_slice(&delivery.body).unwrap();
        let record = &body["AsyncProcessStatus"][0];
        assert_eq!((body["code"].as_u64(), record["asyncProcessId"].as_str()), (Some(202), Some(id.as_str())));
        assert_eq!(record["status"], "Success");
        assert!(record["itemsProcessed"][0].get("successfully").is_none(), "itemsList=false: {body}");
        let seen = wait_state(&server.base, &id, "delivered");
        assert_eq!((seen["attempts"].as_u64(), seen["lastStatusCode"].as_u64()), (Some(1), Some(204)));
        assert_eq!(seen["deliveryId"], delivery.delivery.as_str());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(receiver.received.lock().unwrap().len(), 1, "delivered once");
        assert_eq!(metric(&server.base, "async_engine_notification_attempts_total{outcome=\"delivered\"}"), 1.0);
    }

    fn a_receiver_that_fails_twice_gets_the_third_attempt(dir: &Path, db: &str) {
        let receiver = Receiver::start(2);
        let server = serve(dir, db, &notifying(&[]));
        let id = start_with_callback(&server.base, &receiver.url);
        let attempts = receiver.wait_for(3, Duration::from_secs(20));
        let numbers: Vec<&str> = attempts.iter().map(|r| r.attempt.as_str()).collect();
        assert_eq!(numbers, ["1", "2", "3"]);
        assert!(attempts.iter().all(|r| r.delivery == attempts[0].delivery && r.body == attempts[0].body));
        let seen = wait_state(&server.base, &id, "delivered");
        assert_eq!((seen["attempts"].as_u64(), seen["lastStatusCode"].as_u64()), (Some(3), Some(204)));
        assert_eq!(metric(&server.base, "async_engine_notification_attempts_total{outcome=\"retry\"}"), 2.0);
    }

    fn a_delivery_not_sent_before_a_kill_is_sent_after_the_restart(dir: &Path, db: &str) {
        let receiver = Receiver::start(0);
        // This node sends nothing: the finish waits in the outbox when the node is killed.
        let mut server = serve(dir, db, &notifying(&[("ASYNC_ENGINE__NOTIFICATIONS__ENABLED", "false")]));
        let id = start_with_callback(&server.base, &receiver.url);
        wait_final(&server.base, &id, Duration::from_secs(20));
        let pending = wait_state(&server.base, &id, "pending");
        assert_eq!(pending["attempts"].as_u64(), Some(0));
        signal(&mut server, "-KILL");
        assert!(receiver.received.lock().unwrap().is_empty());
        let server = serve(dir, db, &notifying(&[]));
        let [delivery] = &receiver.wait_for(1, Duration::from_secs(20))[..] else { unreachable!() };
        assert_eq!(delivery.delivery, pending["deliveryId"].as_str().unwrap());
        wait_state(&server.base, &id, "delivered");
    }
}

#[test]
fn a_callback_host_that_is_not_allowed_is_refused_at_start() {
    let (dir, db) = crate::temp_db();
    let server = serve(dir.path(), &db, &notifying(&[]));
    let body = json!({
        "asyncProcessName": "Noop", "referenceId": "r", "items": [1],
        "callbackUrl": "http://example.com/hook"
    });
    let (status, answer) = call(&server.base, "POST", "/v1/asyncprocesses", Some(body));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["technicalMessage"].as_str().unwrap().contains("allowed_hosts"), "{answer}");
    let (_, list) = call(&server.base, "GET", "/v1/asyncprocesses", None);
    assert_eq!(list["AsyncProcessStatus"], json!([]), "nothing was started");
}

#[test]
fn a_host_removed_from_the_allowed_list_gets_nothing_more() {
    let (dir, db) = crate::temp_db();
    let receiver = Receiver::start(0);
    let mut server = serve(dir.path(), &db, &notifying(&[("ASYNC_ENGINE__NOTIFICATIONS__ENABLED", "false")]));
    let id = start_with_callback(&server.base, &receiver.url);
    wait_final(&server.base, &id, Duration::from_secs(20));
    assert!(crate::terminate(&mut server).success());
    // The operators narrowed the list while the delivery waited in the outbox.
    let server =
        serve(dir.path(), &db, &notifying(&[("ASYNC_ENGINE__NOTIFICATIONS__ALLOWED_HOSTS", "hooks.test")]));
    let refused = wait_state(&server.base, &id, "failed");
    assert!(refused["lastError"].as_str().unwrap().contains("allowed_hosts"), "{refused}");
    assert!(receiver.received.lock().unwrap().is_empty());
}
