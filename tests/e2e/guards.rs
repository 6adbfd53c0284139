//! Strangers' requests against the real binary (issue 12, items 7 and 12): the settings
//! `server.allowed_hosts`, `server.cors_origins` and `server.body_timeout_secs` reach the
//! API, and the server says at start-up which Host names it answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::{seed, start, temp_db};

#[test]
fn the_configured_hosts_origins_and_body_timeout_are_applied_and_announced() {
    let (_dir, db) = temp_db();
    seed(&db);
    let server = start(
        &db,
        &[
            ("ASYNC_ENGINE__SERVER__ALLOWED_HOSTS", "async.example"),
            ("ASYNC_ENGINE__SERVER__CORS_ORIGINS", "https://ui.example"),
            ("ASYNC_ENGINE__SERVER__BODY_TIMEOUT_SECS", "1"),
        ],
    );
    let said = server.first_lines.join("\n");
    assert!(said.contains("answering Host localhost or an IP address, or async.example"), "{said}");
    assert!(said.contains("pages from https://ui.example may call /v1"), "{said}");
    let client = reqwest::blocking::Client::new();
    let status = |host: &str| {
        let response =
            client.get(format!("{}/v1/asyncprocesses/12324", server.base)).header("host", host).send();
        response.unwrap().status().as_u16()
    };
    assert_eq!(status("rebind.evil.example"), 421);
    assert_eq!(status("async.example:8080"), 202);
    let start = |content_type: &str, origin: Option<&str>| {
        let mut request = client
            .post(format!("{}/v1/asyncprocesses", server.base))
            .header("content-type", content_type)
            .body(r#"{"asyncProcessName": "Noop", "referenceId": "r", "items": []}"#);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().unwrap();
        let allowed =
            response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), allowed)
    };
    assert_eq!(start("text/plain", None), (415, None));
    assert_eq!(start("application/json", Some("https://evil.example")), (403, None));
    assert_eq!(
        start("application/json", Some("https://ui.example")),
        (202, Some("https://ui.example".to_owned()))
    );
    // A body that does not arrive within the second is cut off.
    let mut stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream
        .write_all(
            b"POST /v1/actions/getAsyncJobStatus HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"id\"",
        )
        .unwrap();
    let mut answer = [0_u8; 12];
    stream.read_exact(&mut answer).unwrap_or_else(|e| panic!("no answer within 15 s: {e}"));
    assert_eq!(&answer, b"HTTP/1.1 408");
}

#[test]
fn beyond_loopback_the_server_warns_that_unlisted_names_are_refused() {
    let (_dir, db) = temp_db();
    let server = start(
        &db,
        &[("ASYNC_ENGINE__SERVER__HOST", "0.0.0.0"), ("ASYNC_ENGINE__AUTH__ALLOW_ANONYMOUS_REMOTE", "true")],
    );
    let said = server.first_lines.join("\n");
    assert!(said.contains("WARN") && said.contains("by a DNS name get 421"), "{said}");
    assert!(said.contains("server.allowed_hosts"), "{said}");
}
