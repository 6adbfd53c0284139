//! Strangers' requests and HTTP details over a real server (issue 12, items 7, 12, 15): a page
//! on another site can neither drive the API (bodies that are not JSON, foreign origins) nor
//! read it through DNS rebinding (a foreign Host); listed origins get CORS answers; a body
//! trickled in is cut off with 408; a 405 says what is allowed; HEAD answers like GET.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use async_engine_api::{ApiConfig, AppState, Auth, CallbackPolicy, CorsOrigins, HostPolicy, RequestGuard};
use async_engine_persistence::testing::{self, TestDb};
use reqwest::Method;
use reqwest::blocking::RequestBuilder;
use serde_json::{Value, json};

use super::TestServer;
use super::waiting::definitions;

const START: &str = r#"{"asyncProcessName": "Q", "referenceId": "from-a-stranger", "items": [1]}"#;

fn guarded(db: TestDb, guard: RequestGuard, config: ApiConfig) -> TestServer {
    let mut state = AppState::new(
        db.store.clone(),
        definitions(10),
        CallbackPolicy::default(),
        Auth::disabled(),
        Arc::new(|| {}),
        config,
    );
    state.guard = Arc::new(guard);
    TestServer::start_state(db, state)
}

fn listing(hosts: &[&str], origins: &[&str]) -> RequestGuard {
    let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    RequestGuard {
        hosts: HostPolicy::new(&strings(hosts)).unwrap(),
        origins: CorsOrigins::new(&strings(origins)).unwrap(),
    }
}

impl TestServer {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// The address part of the base URL, as a browser's `Host` (and same-site `Origin`) has it.
    fn authority(&self) -> &str {
        self.base.strip_prefix("http://").unwrap()
    }

    fn processes_named(&self, reference: &str) -> usize {
        let (status, body) = self.get(&format!("/v1/asyncprocesses?referenceId={reference}"));
        assert_eq!(status, 202, "{body}");
        body["AsyncProcessStatus"].as_array().unwrap().len()
    }

    /// Sends raw bytes on a connection of its own and reads the whole answer (`Connection:
    /// close` is the caller's to send).
    fn raw(&self, request: &str) -> String {
        let mut stream = TcpStream::connect(self.authority()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }
}

/// `(status, body)` of a refusal, checked to be the envelope with a message naming `mention`.
fn refused(response: reqwest::blocking::Response, code: u16, mention: &str) {
    assert_eq!(response.status().as_u16(), code);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["AsyncProcessStatus"], json!([]));
    let text = body["technicalMessage"].as_str().unwrap();
    assert!(text.contains(mention), "'{text}' should mention '{mention}'");
}

on_both_backends! {
    fn only_json_bodies_reach_the_v1_writes(db: TestDb) {
        let server = guarded(db, RequestGuard::default(), ApiConfig::default());
        // What a form or fetch() of another site sends without a preflight: text/plain, form
        // encoding, or a typeless Blob. None of them starts, cancels or claims anything.
        for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), None] {
            for path in ["/v1/asyncprocesses", "/v1/actions/getAsyncJobStatus", "/v1/tasks/claim"] {
                let mut request = server.request(Method::POST, path).body(START);
                if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                let mention = if content_type.is_some() { "must be Content-Type: application/json" } else { "needs Content-Type" };
                refused(request.send().unwrap(), 415, mention);
            }
        }
        assert_eq!(server.processes_named("from-a-stranger"), 0);
        // A command without a body needs no type (`curl -X POST …/cancel`), but an empty
        // text/plain form is refused like a full one.
        let (status, answer) = server.post("/v1/asyncprocesses", &json!({ "asyncProcessName": "Q", "referenceId": "mine", "items": [1] }));
        assert_eq!(status, 202, "{answer}");
        let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        let text = server.request(Method::POST, &format!("/v1/asyncprocesses/{id}/cancel")).header("content-type", "text/plain").send().unwrap();
        refused(text, 415, "text/plain");
        // The upload types start processes only: elsewhere they are refused like any other.
        for content_type in ["text/csv", "application/x-ndjson"] {
            let claim = server.request(Method::POST, "/v1/tasks/claim").header("content-type", content_type).body("{}").send().unwrap();
            refused(claim, 415, content_type);
        }
        let bare = server.request(Method::POST, &format!("/v1/asyncprocesses/{id}/cancel")).send().unwrap();
        assert_eq!(bare.status().as_u16(), 202);
        // JSON with parameters, in any case, is JSON.
        let response = server
            .request(Method::POST, "/v1/asyncprocesses")
            .header("content-type", "Application/JSON; charset=utf-8")
            .body(START)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        assert_eq!(server.processes_named("from-a-stranger"), 1);
        // Outside /v1 (the dashboard's own forms), form encoding is still what forms send.
        let login = server.request(Method::POST, "/login").header("content-type", "application/x-www-form-urlencoded").body("token=x").send().unwrap();
        assert_ne!(login.status().as_u16(), 415);
    }
}

on_both_backends! {
    fn a_foreign_origin_may_not_write_unless_listed(db: TestDb) {
        let server = guarded(db, listing(&[], &["https://ui.example.com"]), ApiConfig::default());
        let start = |origin: &str| {
            server
                .request(Method::POST, "/v1/asyncprocesses")
                .header("content-type", "application/json")
                .header("origin", origin)
                .body(START)
                .send()
                .unwrap()
        };
        refused(start("https://evil.example"), 403, "'https://evil.example'");
        refused(start("null"), 403, "server.cors_origins");
        assert_eq!(server.processes_named("from-a-stranger"), 0);
        // The server's own pages, and the listed origin (which gets the CORS headers).
        assert_eq!(start(&format!("http://{}", server.authority())).status().as_u16(), 202);
        let listed = start("https://ui.example.com");
        assert_eq!(listed.status().as_u16(), 202);
        assert_eq!(listed.headers()["access-control-allow-origin"], "https://ui.example.com");
        assert!(listed.headers()["access-control-expose-headers"].to_str().unwrap().contains("etag"));
        assert_eq!(server.processes_named("from-a-stranger"), 2);
        // Reads carry CORS headers for the listed origin only.
        let read = |origin: &str| server.request(Method::GET, "/v1/processdefinitions").header("origin", origin).send().unwrap();
        assert_eq!(read("https://ui.example.com").headers()["access-control-allow-origin"], "https://ui.example.com");
        let foreign = read("https://evil.example");
        assert_eq!(foreign.status().as_u16(), 200);
        assert!(foreign.headers().get("access-control-allow-origin").is_none());
        // Preflights: answered for the listed origin, refused in the envelope for others.
        let preflight = |origin: &str| {
            server
                .request(Method::OPTIONS, "/v1/asyncprocesses")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "authorization, content-type")
                .send()
                .unwrap()
        };
        let answer = preflight("https://ui.example.com");
        assert!(answer.status().is_success(), "{}", answer.status());
        assert_eq!(answer.headers()["access-control-allow-origin"], "https://ui.example.com");
        assert!(answer.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
        let allowed_headers = answer.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"));
        let answer = preflight("https://evil.example");
        assert_eq!(answer.status().as_u16(), 400);
        assert!(answer.headers().get("access-control-allow-origin").is_none());
        assert_eq!(answer.json::<Value>().unwrap()["code"], 400);
    }
}

on_both_backends! {
    fn a_rebound_host_reads_nothing(db: TestDb) {
        let server = guarded(db, RequestGuard::default(), ApiConfig::default());
        server.seed_documented();
        let get = |path: &str, host: &str| server.request(Method::GET, path).header("host", host).send().unwrap();
        for host in ["rebind.evil.example", "rebind.evil.example:8080", "REBIND.evil.example."] {
            refused(get("/v1/asyncprocesses/12324", host), 421, "server.allowed_hosts");
            refused(get("/v1/asyncprocesses", host), 421, "server.allowed_hosts");
            // The dashboard's pages hold the same data.
            assert_eq!(get("/", host).status().as_u16(), 421);
            assert_eq!(get("/processes/9876543", host).status().as_u16(), 421);
        }
        let port = server.authority().rsplit_once(':').unwrap().1.to_owned();
        for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "LocalHost".to_owned()] {
            assert_eq!(get("/v1/asyncprocesses/12324", &host).status().as_u16(), 202, "{host}");
        }
        // Probes answer whatever the Host: they carry no process data.
        assert_eq!(get("/healthz", "lb-probe.internal").status().as_u16(), 200);
        assert_eq!(get("/readyz", "lb-probe.internal").status().as_u16(), 200);
        // An HTTP/1.0 request without Host is no browser's: answered.
        let answer = server.raw("GET /v1/asyncprocesses/12324?verbose=false HTTP/1.0\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.0 202"), "{answer}");
    }
}

on_both_backends! {
    fn listed_hosts_or_any_are_answered(db: TestDb) {
        let server = guarded(db, listing(&["async.example.com"], &[]), ApiConfig::default());
        let status = |host: &str| {
            server.request(Method::GET, "/v1/processdefinitions").header("host", host).send().unwrap().status().as_u16()
        };
        assert_eq!(status("async.example.com"), 200);
        assert_eq!(status("Async.Example.Com:443"), 200);
        assert_eq!(status("evil.async.example.com"), 421);
        let any = guarded(testing::sqlite(), listing(&["*"], &[]), ApiConfig::default());
        let answer = any.request(Method::GET, "/v1/processdefinitions").header("host", "whatever.example").send().unwrap();
        assert_eq!(answer.status().as_u16(), 200);
    }
}

on_both_backends! {
    fn a_body_sent_a_byte_at_a_time_is_cut_off_with_408(db: TestDb) {
        let config = ApiConfig { body_timeout: Duration::from_secs(1), ..ApiConfig::default() };
        let server = guarded(db, RequestGuard::default(), config);
        let mut stream = TcpStream::connect(server.authority()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let body = br#"{"asyncProcessName": "Q", "referenceId": "slow", "items": [1, 2, 3, 4, 5, 6, 7, 8]}"#;
        let head = format!(
            "POST /v1/asyncprocesses HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            server.authority(),
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut writer = stream.try_clone().unwrap();
        // One byte every 250 ms: the whole body would take 20 s. Stops when the server hangs up.
        let trickle = std::thread::spawn(move || {
            for byte in body {
                if writer.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let mut answer = Vec::new();
        let mut buffer = [0_u8; 4096];
        // Read until the answer's body is complete (the server may keep the socket open).
        loop {
            // A read timing out (no answer within 15 s) fails the test.
            let n = stream.read(&mut buffer).unwrap();
            answer.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&answer);
            if n == 0 || text.split_once("\r\n\r\n").is_some_and(|(_, body)| body.ends_with('}')) {
                break;
            }
        }
        drop(stream);
        trickle.join().unwrap();
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["code"], 408);
        assert_eq!(body["statusMessage"], "Request Timeout");
        assert!(body["technicalMessage"].as_str().unwrap().contains("server.body_timeout_secs"));
        assert_eq!(server.processes_named("slow"), 0);
    }
}

on_both_backends! {
    fn a_405_names_the_allowed_methods(server: &TestServer) {
        let routes = [
            ("/v1/asyncprocesses", "GET, HEAD, POST"),
            ("/v1/asyncprocesses/12324", "GET, HEAD"),
            ("/v1/asyncprocesses/12324/events", "GET, HEAD"),
            ("/v1/asyncprocesses/12324/steps/0/items", "GET, HEAD"),
            ("/v1/asyncprocesses/12324/deliveries", "GET, HEAD"),
            ("/v1/asyncprocesses/12324/cancel", "POST"),
            ("/v1/asyncprocesses/12324/retry", "POST"),
            ("/v1/actions/getAsyncJobStatus", "POST"),
            ("/v1/processdefinitions", "GET, HEAD"),
            ("/v1/tasks/claim", "POST"),
            ("/v1/tasks/1/complete", "POST"),
            ("/v1/tasks/1/heartbeat", "POST"),
            ("/v1/tasks/1/fail", "POST"),
            ("/metrics", "GET, HEAD"),
            ("/healthz", "GET, HEAD"),
            ("/readyz", "GET, HEAD"),
            ("/openapi.json", "GET, HEAD"),
        ];
        for (path, allow) in routes {
            for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"] {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                // Events streams stay open: their status is enough.
                let path = if path.ends_with("/events") { format!("{path}?idType=asyncProcessId") } else { path.to_owned() };
                let response = server
                    .request(method.clone(), &path)
                    .header("content-type", "application/json")
                    .body(if method == Method::POST { "{}" } else { "" })
                    .timeout(Duration::from_secs(10))
                    .send()
                    .unwrap();
                let listed = allow.split(", ").any(|m| m == method.as_str());
                if listed {
                    assert_ne!(response.status().as_u16(), 405, "{method} {path}");
                    continue;
                }
                assert_eq!(response.status().as_u16(), 405, "{method} {path}");
                assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap()), Some(allow), "{method} {path}");
                if method != Method::HEAD {
                    assert_eq!(response.json::<Value>().unwrap()["code"], 405);
                }
            }
        }
    }
}

on_both_backends! {
    fn a_405_on_a_dashboard_page_names_the_allowed_methods(server: &TestServer) {
        server.seed_documented();
        let pages = [
            ("/", "GET, HEAD"),
            ("/processes/12324", "GET, HEAD"),
            ("/processes/12324/steps/0/items", "GET, HEAD"),
            ("/processes/12324/cancel", "POST"),
            ("/processes/12324/retry", "POST"),
            ("/login", "GET, HEAD, POST"),
            ("/logout", "POST"),
            ("/assets/dashboard.js", "GET, HEAD"),
            ("/assets/dashboard.css", "GET, HEAD"),
        ];
        for (path, allow) in pages {
            for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"] {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let response = server.request(method.clone(), path).timeout(Duration::from_secs(10)).send().unwrap();
                if allow.split(", ").any(|m| m == method.as_str()) {
                    assert_ne!(response.status().as_u16(), 405, "{method} {path}");
                    continue;
                }
                assert_eq!(response.status().as_u16(), 405, "{method} {path}");
                assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap()), Some(allow), "{method} {path}");
                if method != Method::HEAD {
                    assert_eq!(response.json::<Value>().unwrap()["code"], 405, "{method} {path}");
                }
            }
        }
        // On the wire as well: DELETE /login and PUT / name what they may be.
        for (request_line, allow) in [("DELETE /login", "GET, HEAD, POST"), ("PUT /", "GET, HEAD")] {
            let answer = server.raw(&format!(
                "{request_line} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                server.authority()
            ));
            let (head, _) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 405"), "{request_line}: {answer}");
            assert!(head.to_ascii_lowercase().contains(&format!("\r\nallow: {}\r\n", allow.to_ascii_lowercase())), "{request_line}: {head}");
        }
    }
}

on_both_backends! {
    fn head_answers_like_get_without_the_body(server: &TestServer) {
        server.seed_documented();
        let get = server.request(Method::GET, "/v1/asyncprocesses/12324").send().unwrap();
        let etag = get.headers()["etag"].to_str().unwrap().to_owned();
        let length = get.bytes().unwrap().len();
        let answer = server.raw(&format!(
            "HEAD /v1/asyncprocesses/12324 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.authority()
        ));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 202"), "{answer}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains(&format!("content-length: {length}\r\n")), "{head}");
        assert!(head.contains(&format!("etag: {etag}")), "{head}");
        assert_eq!(body, "", "HEAD has no body");
        // An event stream answers its headers and ends, rather than streaming nothing for ever.
        let answer = server.raw(&format!(
            "HEAD /v1/asyncprocesses/9876543/events HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.authority()
        ));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{answer}");
        assert_eq!(body, "");
        let health = server.request(Method::HEAD, "/healthz").send().unwrap();
        assert_eq!(health.status().as_u16(), 200);
        // An unknown path is still 404.
        assert_eq!(server.request(Method::HEAD, "/v1/nothing").send().unwrap().status().as_u16(), 404);
    }
}

on_both_backends! {
    fn a_target_over_the_limit_is_an_envelope(server: &TestServer) {
        let long = format!("/v1/asyncprocesses/12324?pad={}", "x".repeat(9_000));
        refused(server.request(Method::GET, &long).send().unwrap(), 414, "8192 bytes");
        // actix-http answers some malformed requests itself, before any of the application runs
        // (an empty body, which no middleware can reach): too many headers, a request line it
        // cannot parse, a target over 64 KiB. They still get their status and a closed
        // connection, never a hang.
        let mut many = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", server.authority());
        for n in 0..100 {
            many.push_str(&format!("x-h{n}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert!(server.raw(&many).starts_with("HTTP/1.1 431"));
        assert!(server.raw("GET /he llo HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    }
}
