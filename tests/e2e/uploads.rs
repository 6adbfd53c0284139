//! Streamed starts through the real binary (issue 15): NDJSON and CSV bodies with the start's
//! options in the query, and every way an upload can go wrong leaving no process at all.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::{call, wait_final};
use crate::{on_both_backends, start};

fn upload(base: &str, query: &str, content_type: &str, body: Vec<u8>, key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{base}/v1/asyncprocesses?{query}"))
        .header("Content-Type", content_type)
        .body(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

/// How many processes have this reference ID.
fn processes_of(base: &str, reference: &str) -> usize {
    let (status, page) = call(base, "GET", &format!("/v1/asyncprocesses?referenceId={reference}"), None);
    assert_eq!(status, 202, "{page}");
    page["AsyncProcessStatus"].as_array().unwrap().len()
}

on_both_backends! {
    fn ndjson_and_csv_uploads_start_processes_over_every_item(_dir: &Path, db: &str) {
        let server = start(db, &[]);
        let lines: String = (0..20_000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
        let (status, answer) =
            upload(&server.base, "asyncProcessName=Noop&referenceId=nd-1", "application/x-ndjson", lines.into_bytes(), Some("nd-key"));
        assert_eq!(status, 202, "{answer}");
        let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        // More items than one status answer may list (the governor limit): counters only.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let record = loop {
            let (_, body) = call(&server.base, "GET", &format!("/v1/asyncprocesses/{id}?itemsList=false"), None);
            let record = body["AsyncProcessStatus"][0].clone();
            if record["status"] == "Success" {
                break record;
            }
            assert!(std::time::Instant::now() < deadline, "{body}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(record["itemsProcessed"][1]["currentNumberOfItemsProccessed"], 20_000);
        let (_, page) = call(&server.base, "GET", &format!("/v1/asyncprocesses/{id}/steps/0/items?limit=2"), None);
        assert_eq!(page["items"], json!([{ "index": 0, "item": { "n": 0 } }, { "index": 1, "item": { "n": 1 } }]));

        // The same Idempotency-Key again: the first process, nothing new.
        let (status, again) =
            upload(&server.base, "asyncProcessName=Noop&referenceId=nd-1", "application/x-ndjson", b"1\n".to_vec(), Some("nd-key"));
        assert_eq!((status, again["AsyncProcessStatus"][0]["asyncProcessId"].as_str()), (202, Some(id.as_str())));
        assert_eq!(processes_of(&server.base, "nd-1"), 1);

        // CSV with a BOM, CRLF, quoted commas, an embedded newline and doubled quotes; the
        // additional data in the query.
        let csv = "\u{feff}productCode,quantity\r\nTV-PREMIUM,2\r\n\"BUNDLE, \"\"GOLD\"\"\",\"1\"\r\n\"two\nlines\",3\r\n";
        let data = percent_encoding::utf8_percent_encode("{\"source\":\"upload\"}", percent_encoding::NON_ALPHANUMERIC);
        let (status, answer) =
            upload(&server.base, &format!("asyncProcessName=Noop&referenceId=csv-1&additionalData={data}"), "text/csv", csv.into(), None);
        assert_eq!(status, 202, "{answer}");
        let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        let record = wait_final(&server.base, &id, Duration::from_secs(30));
        assert_eq!(record["additionalData"], json!({ "source": "upload" }));
        assert_eq!(
            record["itemsProcessed"][0]["successfully"],
            json!([
                { "productCode": "TV-PREMIUM", "quantity": "2" },
                { "productCode": "BUNDLE, \"GOLD\"", "quantity": "1" },
                { "productCode": "two\nlines", "quantity": "3" }
            ])
        );
    }

    fn a_bad_upload_leaves_no_process_and_names_what_is_wrong(_dir: &Path, db: &str) {
        let server = start(db, &[("ASYNC_ENGINE__LIMITS__MAX_UPLOAD_BYTES", "2000000")]);
        let base = &server.base;
        let cases: [(&str, &str, Vec<u8>, u16, &str); 5] = [
            ("application/x-ndjson", "asyncProcessName=Noop&referenceId=bad", b"1\n2\n{oops\n4\n".to_vec(), 400, "line 3, column 2: not a JSON value"),
            ("text/csv", "asyncProcessName=Noop&referenceId=bad", b"a,b\n1,2\n3,4,5\n".to_vec(), 400, "line 3: 3 field(s), but the header row has 2"),
            ("application/x-ndjson", "asyncProcessName=Noop&referenceId=bad", "1\n".repeat(1_100_000).into_bytes(), 413, "larger than 2000000 bytes"),
            ("application/x-ndjson", "asyncProcessName=Nope&referenceId=bad", b"1\n".to_vec(), 400, "no process definition is named 'Nope'"),
            ("application/x-ndjson", "referenceId=bad", b"1\n".to_vec(), 400, "a streamed start names its process in the query"),
        ];
        for (content_type, query, body, code, text) in cases {
            let (status, answer) = upload(base, query, content_type, body, None);
            assert_eq!(status, code, "{answer}");
            let message = answer["technicalMessage"].as_str().unwrap_or_default();
            assert!(message.contains(text), "{content_type} {query}: {message}");
        }
        // A client that goes away mid-upload: half of what it announced, then gone.
        let address = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        let head = format!(
            "POST /v1/asyncprocesses?asyncProcessName=Noop&referenceId=bad HTTP/1.1\r\nHost: {address}\r\n\
             Content-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&"1\n".repeat(25_000).into_bytes()).unwrap();
        stream.flush().unwrap();
        drop(stream);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(processes_of(base, "bad"), 0, "no process from any bad upload");
        // And the server still takes a good one.
        let (status, _) = upload(base, "asyncProcessName=Noop&referenceId=good", "application/x-ndjson", b"1\n2\n".to_vec(), None);
        assert_eq!((status, processes_of(base, "good")), (202, 1));
    }
}
