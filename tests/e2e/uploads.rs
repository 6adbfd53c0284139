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
        // Items are listed in recording order, and tasks finish in any order: each listed
        // item must be the one its index names.
        let (_, page) = call(&server.base, "GET", &format!("/v1/asyncprocesses/{id}/steps/0/items?limit=50"), None);
        let listed = page["items"].as_array().unwrap();
        assert_eq!(listed.len(), 50, "{page}");
        for entry in listed {
            assert_eq!(entry["item"], json!({ "n": entry["index"] }), "{page}");
        }

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

    fn result_files_list_each_item_once_by_outcome_as_csv_or_ndjson(_dir: &Path, db: &str) {
        let server = start(db, &[]);
        let lines = include_bytes!("../../examples/quote-lines.csv").to_vec();
        let query = "asyncProcessName=Bulk%20CPQ&referenceId=results-1";
        let (status, answer) = upload(&server.base, query, "text/csv", lines.clone(), None);
        assert_eq!(status, 202, "{answer}");
        let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        assert_eq!(wait_final(&server.base, &id, Duration::from_secs(30))["status"], "Failed");
        let download = |path: &str| {
            let response = reqwest::blocking::get(format!("{}/v1/asyncprocesses/{id}/steps/{path}", server.base)).unwrap();
            assert_eq!(response.status().as_u16(), 200, "{path}");
            let disposition = response.headers()["content-disposition"].to_str().unwrap().to_owned();
            (disposition, response.text().unwrap())
        };
        let (disposition, failed) = download("0/results?outcome=failed&format=csv");
        assert_eq!(disposition, format!("attachment; filename=\"{id}-step0-failed.csv\""));
        assert_eq!(
            failed,
            "index,outcome,code,statusMessage,productCode,quantity,note,item\n\
             2,failed,5001,Invalid status,DISCONTINUED-DSL,1,old line,\n\
             4,failed,5004,Missing data,MOBILE-5G,,no quantity given,\n"
        );
        // The dashboard's download link answers the same file.
        let page_link = reqwest::blocking::get(format!("{}/processes/{id}/steps/0/results?outcome=failed&format=csv", server.base)).unwrap();
        assert_eq!(page_link.text().unwrap(), failed);
        let (_, all) = download("1/results");
        let rows: Vec<Value> = all.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let outcomes: Vec<(u64, &str)> = rows.iter().map(|r| (r["index"].as_u64().unwrap(), r["outcome"].as_str().unwrap())).collect();
        assert_eq!(outcomes, [(0, "succeeded"), (1, "succeeded"), (2, "succeeded"), (3, "failed"), (4, "succeeded")], "{all}");
        assert_eq!((rows[3]["code"].as_i64(), rows[3]["item"]["productCode"].as_str()), (Some(6001), Some("IOT-SIM")));

        // A queue step nobody works on: everything is unprocessed there, also once cancelled.
        let (status, answer) = upload(&server.base, "asyncProcessName=External%20Pricing&referenceId=results-2", "text/csv", lines, None);
        assert_eq!(status, 202, "{answer}");
        let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        let (status, _) = call(&server.base, "POST", &format!("/v1/asyncprocesses/{id}/cancel"), None);
        assert_eq!(status, 202);
        let response = reqwest::blocking::get(format!("{}/v1/asyncprocesses/{id}/steps/1/results?outcome=unprocessed", server.base)).unwrap();
        let text = response.text().unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        let (status, refused) = call(&server.base, "GET", &format!("/v1/asyncprocesses/{id}/steps/9/results"), None);
        assert_eq!(status, 400);
        assert!(refused["technicalMessage"].as_str().unwrap().contains("no step 9"), "{refused}");
    }

    fn sub_resources_take_a_reference_id_that_names_one_process(_dir: &Path, db: &str) {
        let server = start(db, &[]);
        let base = &server.base;
        let start_one = |reference: &str| {
            let body = json!({ "asyncProcessName": "External Pricing", "referenceId": reference, "items": [{ "productCode": "TV", "quantity": 1 }] });
            let (status, answer) = call(base, "POST", "/v1/asyncprocesses", Some(body));
            assert_eq!(status, 202, "{answer}");
            answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
        };
        let only = start_one("only-one");
        for path in ["steps/0/items", "steps/0/results", "deliveries"] {
            let response = reqwest::blocking::get(format!("{base}/v1/asyncprocesses/only-one/{path}")).unwrap();
            assert_eq!(response.status().as_u16(), 200, "{path}");
        }
        let (status, cancelled) = call(base, "POST", "/v1/asyncprocesses/only-one/cancel", None);
        assert_eq!((status, cancelled["AsyncProcessStatus"][0]["asyncProcessId"].as_str()), (202, Some(only.as_str())));
        let (first, second) = (start_one("twice"), start_one("twice"));
        let (status, refused) = call(base, "POST", "/v1/asyncprocesses/twice/cancel", None);
        assert_eq!(status, 400);
        let message = refused["technicalMessage"].as_str().unwrap();
        assert!(message.starts_with("the referenceId 'twice' names 2 processes"), "{message}");
        assert!(message.contains(&first) && message.contains(&second), "{message}");
        // An asyncProcessId still names its process, and nothing else was touched.
        let (status, _) = call(base, "POST", &format!("/v1/asyncprocesses/{first}/cancel"), None);
        assert_eq!(status, 202);
        let (_, still) = call(base, "GET", &format!("/v1/asyncprocesses/{second}?verbose=false"), None);
        assert_ne!(still["AsyncProcessStatus"][0]["status"], "Aborted");
    }

    fn result_files_match_the_counters_after_a_skip_a_retry_and_an_abort(dir: &Path, db: &str) {
        let server = crate::engine::serve(dir, db, &[]);
        let base = &server.base;
        let results = |id: &str, step: u32| -> Vec<(u64, String)> {
            let text = reqwest::blocking::get(format!("{base}/v1/asyncprocesses/{id}/steps/{step}/results")).unwrap().text().unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .map(|r| (r["index"].as_u64().unwrap(), r["outcome"].as_str().unwrap().to_owned()))
                .collect()
        };
        let counted = |record: &Value, step: usize| record["itemsProcessed"][step]["currentNumberOfItemsProccessed"].as_u64().unwrap();
        let good = json!({ "productCode": "TV", "quantity": 1 });
        let bad = json!({ "productCode": "TV", "quantity": 0 });
        let start = |name: &str, items: Value| {
            let (status, answer) = call(base, "POST", "/v1/asyncprocesses", Some(json!({ "asyncProcessName": name, "referenceId": "files", "items": items })));
            assert_eq!(status, 202, "{answer}");
            answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
        };

        let skip = start("Skip", json!([good, bad, good]));
        wait_final(base, &skip, Duration::from_secs(30));
        let (status, _) = call(base, "POST", &format!("/v1/asyncprocesses/{skip}/retry"), None);
        assert_eq!(status, 202);
        let record = wait_final(base, &skip, Duration::from_secs(30));
        let owned = |rows: &[(u64, &str)]| rows.iter().map(|(i, o)| (*i, (*o).to_owned())).collect::<Vec<_>>();
        assert_eq!(results(&skip, 0), owned(&[(0, "succeeded"), (1, "failed"), (2, "succeeded")]), "once each after the retry");
        assert_eq!(results(&skip, 1), owned(&[(0, "succeeded"), (1, "unprocessed"), (2, "succeeded")]));
        assert_eq!((counted(&record, 0), counted(&record, 1)), (3, 2));

        let abort = start("Abort", json!([good, bad, good, good, good, good]));
        let record = wait_final(base, &abort, Duration::from_secs(30));
        assert_eq!(record["status"], "Failed");
        for step in [0, 1] {
            let rows = results(&abort, step);
            assert_eq!(rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5], "every item once");
            let recorded = rows.iter().filter(|(_, o)| o != "unprocessed").count() as u64;
            assert_eq!(recorded, counted(&record, step as usize), "step {step}: {rows:?} against {record}");
        }
        assert!(results(&abort, 0).contains(&(1, "failed".to_owned())));
    }
}

fn put_part(base: &str, id: &str, part: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .put(format!("{base}/v1/asyncprocesses/{id}/parts/{part}"))
        .header("Content-Type", content_type)
        .body(body.to_owned())
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

/// `(part, items)` of each part the process holds, and whether it is open.
fn parts_of(base: &str, id: &str) -> (bool, Vec<(u64, u64)>) {
    let (status, body) = call(base, "GET", &format!("/v1/asyncprocesses/{id}/parts"), None);
    assert_eq!(status, 200, "{body}");
    let parts = body["parts"].as_array().unwrap().iter();
    (
        body["open"].as_bool().unwrap(),
        parts.map(|p| (p["part"].as_u64().unwrap(), p["items"].as_u64().unwrap())).collect(),
    )
}

on_both_backends! {
    fn an_upload_in_parts_is_replaced_resumed_and_closed_in_part_order(_dir: &Path, db: &str) {
        let server = start(db, &[]);
        let base = &server.base;
        let open = json!({ "asyncProcessName": "Noop", "referenceId": "in-parts", "open": true });
        let (status, answer) = call(base, "POST", "/v1/asyncprocesses", Some(open.clone()));
        assert_eq!(status, 202, "{answer}");
        let record = &answer["AsyncProcessStatus"][0];
        let id = record["asyncProcessId"].as_str().unwrap().to_owned();
        assert_eq!(record["status"], "WaitingToProcess");
        let (status, refused) = call(base, "POST", "/v1/asyncprocesses", Some(json!({ "asyncProcessName": "Noop", "referenceId": "x", "open": true, "items": [] })));
        assert_eq!(status, 400, "{refused}");

        // Out of order, CSV parts with their own header rows, one put twice.
        assert_eq!(put_part(base, &id, "2", "text/csv", "sku,qty\r\nC,3\r\nD,4\r\n").0, 201);
        assert_eq!(put_part(base, &id, "1", "text/csv", "sku,qty\nX,9\n").0, 201);
        let (status, replaced) = put_part(base, &id, "1", "text/csv", "sku,qty\nA,1\nB,2\n");
        assert_eq!(status, 200, "{replaced}");
        assert_eq!((replaced["items"].as_u64(), replaced["replaced"].as_bool()), (Some(2), Some(true)));
        // Bad parts change nothing, and say why.
        let (status, bad) = put_part(base, &id, "3", "application/x-ndjson", "{\"sku\":\"E\"}\n{oops\n");
        assert_eq!(status, 400, "{bad}");
        assert!(bad["technicalMessage"].as_str().unwrap().contains("line 2, column 2"), "{bad}");
        assert_eq!(put_part(base, &id, "0", "text/csv", "a\n1\n").0, 400);
        assert_eq!(put_part(base, &id, "10001", "text/csv", "a\n1\n").0, 400);
        assert_eq!(put_part(base, &id, "3", "application/json", "[1]").0, 415);
        // A client that goes away mid-part leaves part 2 as it was.
        let address = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        let head = format!(
            "PUT /v1/asyncprocesses/{id}/parts/2 HTTP/1.1\r\nHost: {address}\r\n\
             Content-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&"1\n".repeat(25_000).into_bytes()).unwrap();
        drop(stream);
        std::thread::sleep(Duration::from_millis(500));
        // Listed by the reference ID too, for a client that resumes.
        assert_eq!(parts_of(base, "in-parts"), (true, vec![(1, 2), (2, 2)]));
        let (_, waiting) = call(base, "GET", &format!("/v1/asyncprocesses/{id}"), None);
        assert_eq!(waiting["AsyncProcessStatus"][0]["message"], "Waiting for items: open for parts until closed (2 parts so far, 4 items)");
        // The open start again with its key: the same process, still open (a resume).
        let key = reqwest::blocking::Client::new()
            .post(format!("{base}/v1/asyncprocesses"))
            .header("Idempotency-Key", "parts-key")
            .json(&open);
        let first: Value = key.try_clone().unwrap().send().unwrap().json().unwrap();
        let again: Value = key.send().unwrap().json().unwrap();
        assert_eq!(first["AsyncProcessStatus"][0]["asyncProcessId"], again["AsyncProcessStatus"][0]["asyncProcessId"]);

        let (status, closed) = call(base, "POST", &format!("/v1/asyncprocesses/{id}/close"), None);
        assert_eq!(status, 202, "{closed}");
        let done = wait_final(base, &id, Duration::from_secs(30));
        assert_eq!(done["status"], "Success", "{done}");
        let (_, page) = call(base, "GET", &format!("/v1/asyncprocesses/{id}/steps/0/items"), None);
        let skus: Vec<&str> = page["items"].as_array().unwrap().iter().map(|i| i["item"]["sku"].as_str().unwrap()).collect();
        assert_eq!(skus, ["A", "B", "C", "D"]);
        assert_eq!(parts_of(base, &id), (false, vec![]));
        let (status, late) = call(base, "POST", &format!("/v1/asyncprocesses/{id}/close"), None);
        assert_eq!(status, 409, "{late}");
        assert_eq!(put_part(base, &id, "3", "text/csv", "sku\nE\n").0, 409);
    }

    fn an_open_process_can_be_cancelled(_dir: &Path, db: &str) {
        let server = start(db, &[]);
        let base = &server.base;
        let open = json!({ "asyncProcessName": "Noop", "referenceId": "cancel-open", "open": true });
        let (_, answer) = call(base, "POST", "/v1/asyncprocesses", Some(open));
        let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        assert_eq!(put_part(base, &id, "1", "application/x-ndjson", "1\n2\n").0, 201);
        let (status, cancelled) = call(base, "POST", "/v1/asyncprocesses/cancel-open/cancel", None);
        assert_eq!(status, 202, "{cancelled}");
        assert_eq!(cancelled["AsyncProcessStatus"][0]["status"], "Aborted");
        assert_eq!(parts_of(base, &id), (false, vec![]));
        let (status, refused) = put_part(base, &id, "2", "application/x-ndjson", "3\n");
        assert_eq!(status, 409, "{refused}");
        assert!(refused["technicalMessage"].as_str().unwrap().contains("not open"), "{refused}");
    }
}
