//! The command-line client against a real server: `submit`, then `status --watch` whose exit
//! code says how the process ended; `--json`; and a wrong token as one clear line.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::BIN;
use crate::engine::serve;

fn client(base: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", base])
        .env_remove("ASYNC_ENGINE_TOKEN")
        .env_remove("ASYNC_ENGINE_SERVER")
        .output()
        .unwrap()
}

fn submit(dir: &Path, base: &str, name: &str, items: &[Value]) -> String {
    let file = dir.join(format!("{name}.ndjson"));
    let lines: Vec<String> = items.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let output =
        client(base, &["submit", name, "--reference-id", "cli", "--items", file.to_str().unwrap(), "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
}

#[test]
fn watch_exits_0_on_success_and_2_on_failure() {
    let (dir, db) = crate::temp_db();
    let server = serve(dir.path(), &db, &[]);
    let good =
        submit(dir.path(), &server.base, "Noop", &(0..50).map(|n| json!({ "n": n })).collect::<Vec<_>>());
    let watched = client(&server.base, &["status", &good, "--watch"]);
    assert_eq!(watched.status.code(), Some(0), "{}", String::from_utf8_lossy(&watched.stderr));
    let said = String::from_utf8_lossy(&watched.stdout);
    assert!(said.contains(&format!("{good} (Noop, reference cli): Success")), "{said}");
    assert!(said.contains("step 1 Second: 50/50 Success"), "{said}");

    let items =
        [json!({ "productCode": "TV", "quantity": 1 }), json!({ "productCode": "TV", "quantity": 0 })];
    let bad = submit(dir.path(), &server.base, "Skip", &items);
    let watched = client(&server.base, &["status", &bad, "--watch"]);
    assert_eq!(watched.status.code(), Some(2), "Failed: {}", String::from_utf8_lossy(&watched.stdout));

    let json_out = client(&server.base, &["status", &bad, "--json"]);
    assert!(json_out.status.success());
    let envelope: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(envelope["code"], 202);
    assert_eq!(envelope["AsyncProcessStatus"][0]["status"], "Failed");
    let groups = &envelope["AsyncProcessStatus"][0]["itemsProcessed"][0]["failed"];
    assert_eq!(
        groups[0]["items"],
        json!([{ "productCode": "TV", "quantity": 0 }]),
        "the envelope, items listed"
    );
}

#[test]
fn a_wrong_token_or_server_is_one_clear_line() {
    let (dir, db) = crate::temp_db();
    let output = Command::new(BIN).args(["token", "--name", "cli", "--scopes", "admin"]).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (token, entry) = stdout.split_once('\n').unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, format!("[auth]\nenabled = true\n{entry}")).unwrap();
    let server = crate::start_with(&db, &["serve", "--config", file.to_str().unwrap()], &[]);
    let refused = client(&server.base, &["status", "12324", "--token", "ae_wrong"]);
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert!(said.contains("401") && said.contains("not a key of this server"), "{said}");
    let admitted = client(&server.base, &["status", "nothing-here", "--token", token]);
    assert!(String::from_utf8_lossy(&admitted.stderr).contains("400"), "authenticated, then not found");
    let nowhere = client("http://127.0.0.1:9", &["status", "x"]);
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(said.contains("cannot reach") && said.trim().lines().count() == 1, "{said}");
}

#[test]
fn csv_in_failed_csv_out_fixed_and_submitted_again() {
    let (dir, db) = crate::temp_db();
    let server = crate::start(&db, &[]);
    let quotes = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quote-lines.csv");
    let first = client(
        &server.base,
        &["submit", "Bulk CPQ", "--reference-id", "csv-trip", "--items", quotes, "--json"],
    );
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let answer: Value = serde_json::from_slice(&first.stdout).unwrap();
    let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
    assert_eq!(client(&server.base, &["status", &id, "--watch"]).status.code(), Some(2));

    let failed = client(&server.base, &["results", &id, "--step", "0", "--failed", "--format", "csv"]);
    assert!(failed.status.success(), "{}", String::from_utf8_lossy(&failed.stderr));
    let text = String::from_utf8(failed.stdout).unwrap();
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some("index,outcome,code,statusMessage,productCode,quantity,note,item"));
    let failed: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(
        failed.iter().map(|r| (r[0], r[2], r[4])).collect::<Vec<_>>(),
        [("2", "5001", "DISCONTINUED-DSL"), ("4", "5004", "MOBILE-5G")]
    );

    // Fixed: the item columns only, a product that exists, a quantity.
    let fixed = dir.path().join("fixed.csv");
    std::fs::write(
        &fixed,
        "productCode,quantity,note\nBROADBAND-1G,1,old line\nMOBILE-5G,1,no quantity given\n",
    )
    .unwrap();
    let again = client(
        &server.base,
        &["submit", "Bulk CPQ", "--reference-id", "csv-trip-2", "--items", fixed.to_str().unwrap(), "--json"],
    );
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let answer: Value = serde_json::from_slice(&again.stdout).unwrap();
    let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
    assert_eq!(client(&server.base, &["status", &id, "--watch"]).status.code(), Some(0));
}

#[test]
fn a_file_larger_than_one_json_body_is_streamed() {
    let (dir, db) = crate::temp_db();
    let server = crate::start(&db, &[]);
    // 25,000 quote lines: about 1.4 MB, past the 1 MiB a JSON start may have.
    let lines: Vec<String> = (0..25_000)
        .map(|n| json!({ "productCode": format!("TV-PREMIUM-{n:05}"), "quantity": 1 + n % 100 }).to_string())
        .collect();
    let file = dir.path().join("quotes.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    assert!(std::fs::metadata(&file).unwrap().len() > 1 << 20);
    let output = client(
        &server.base,
        &["submit", "Bulk CPQ", "--reference-id", "big", "--items", file.to_str().unwrap(), "--json"],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    let id = answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
    let watched = client(&server.base, &["status", &id, "--watch"]);
    assert_eq!(watched.status.code(), Some(0), "{}", String::from_utf8_lossy(&watched.stdout));
    assert!(String::from_utf8_lossy(&watched.stdout).contains("step 1 Price: 25000/25000 Success"));
}

#[test]
fn a_submit_in_parts_resumes_sending_only_what_the_server_lacks() {
    let (dir, db) = crate::temp_db();
    let server = crate::start(&db, &[]);
    let base = &server.base;
    // 30 lines of 20 bytes: parts of 200 bytes hold 10 lines each.
    let lines: String = (0..30).map(|n| format!("{{\"n\":{n:>13}}}\n")).collect();
    assert_eq!(lines.len(), 600);
    let file = dir.path().join("lines.ndjson");
    std::fs::write(&file, &lines).unwrap();
    // An earlier run that stopped: part 1 sent whole, part 2 with other bytes.
    let http = reqwest::blocking::Client::new();
    let started: Value = http
        .post(format!("{base}/v1/asyncprocesses"))
        .header("Idempotency-Key", "resume-1")
        .json(&json!({ "asyncProcessName": "Noop", "referenceId": "resume", "open": true }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = started["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
    for (part, body) in [(1, lines[..200].to_owned()), (2, "{\"n\":\"stale\"}\n".to_owned())] {
        let put = http
            .put(format!("{base}/v1/asyncprocesses/{id}/parts/{part}"))
            .header("Content-Type", "application/x-ndjson")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(put.status().as_u16(), 201);
    }
    let args = [
        "submit",
        "Noop",
        "--reference-id",
        "resume",
        "--items",
        file.to_str().unwrap(),
        "--part-size",
        "200",
        "--idempotency-key",
        "resume-1",
        "--json",
    ];
    let output = client(base, &args);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains(&format!("resuming process {id}: 1 of 3 part(s) are in")), "{said}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["AsyncProcessStatus"][0]["asyncProcessId"], id.as_str());
    let watched = client(base, &["status", &id, "--watch"]);
    assert_eq!(watched.status.code(), Some(0), "{}", String::from_utf8_lossy(&watched.stdout));
    let page: Value = http
        .get(format!("{base}/v1/asyncprocesses/{id}/steps/0/items?limit=100"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    // Listed in recording order: sorted by index, each item must be the line its index names.
    let mut numbers: Vec<(u64, u64)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["index"].as_u64().unwrap(), i["item"]["n"].as_u64().unwrap()))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..30).map(|n| (n, n)).collect::<Vec<_>>(), "every line once, in file order");

    // Run again: the process is closed, nothing is sent twice.
    let again = client(base, &args);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to send"));
    // A CSV file in parts, each with the header, and the key derived from the command.
    let csv = dir.path().join("quotes.csv");
    let rows: String = (0..1_000).map(|n| format!("TV-{n:04},\"{}\"\r\n", n % 7 + 1)).collect();
    std::fs::write(&csv, format!("productCode,quantity\r\n{rows}")).unwrap();
    let output = client(
        base,
        &[
            "submit",
            "Noop",
            "--reference-id",
            "csv-parts",
            "--items",
            csv.to_str().unwrap(),
            "--part-size",
            "4K",
            "--json",
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer["AsyncProcessStatus"][0]["itemsProcessed"][0]["totalNumberOfItemsToBeProccessed"], 1_000,
        "{answer}"
    );
}

/// An operator's session with flags before the subcommand: list, items, a refused cancel,
/// retry, and the definitions.
#[test]
fn an_operator_lists_reads_items_cancels_and_retries_with_flags_anywhere() {
    let (dir, db) = crate::temp_db();
    let server = serve(dir.path(), &db, &[]);
    let base = server.base.as_str();
    let before = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(["--server", base])
            .args(args)
            .env_remove("ASYNC_ENGINE_TOKEN")
            .env_remove("ASYNC_ENGINE_SERVER")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let items =
        [json!({ "productCode": "TV", "quantity": 1 }), json!({ "productCode": "TV", "quantity": 0 })];
    let bad = submit(dir.path(), base, "Skip", &items);
    assert_eq!(client(base, &["status", &bad, "--watch"]).status.code(), Some(2));

    let (code, listed, said) = before(&["list", "--status", "Failed"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        listed.lines().next(),
        Some(format!("{bad} (Skip, reference cli): Failed, Completed with errors").as_str()),
        "{listed}"
    );
    submit(dir.path(), base, "Noop", &[json!(1)]);
    let (_, page, _) = before(&["list", "--limit", "1"]);
    assert!(page.lines().last().unwrap().starts_with("more: --cursor "), "{page}");

    let (code, failed, said) = before(&["items", &bad, "--failed"]);
    assert_eq!(code, Some(0), "{said}");
    let failed: Vec<Value> = failed.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["index"], 1);
    assert_eq!(failed[0]["item"], items[1]);
    assert!(failed[0]["code"].is_i64() && failed[0]["statusMessage"].is_string(), "{failed:?}");
    let (_, all, _) = before(&["items", &bad, "--limit", "1"]);
    assert_eq!(all.lines().count(), 1, "{all}");

    // A finished process cannot be cancelled: the server's 409, in one line.
    let (code, _, said) = before(&["cancel", &bad]);
    assert_eq!(code, Some(1));
    assert!(said.contains("409") && said.contains("already finished"), "{said}");
    let (code, retried, said) = before(&["retry", &bad]);
    assert_eq!(code, Some(0), "{said}");
    assert!(retried.starts_with(&format!("{bad} (Skip, reference cli): ")), "{retried}");

    let (code, definitions, said) = before(&["definitions"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(definitions.lines().any(|line| line == "Skip"), "{definitions}");
    assert!(definitions.contains("  step 0 "), "{definitions}");

    // Client commands take no server configuration; server commands take no client flags' place.
    let (code, _, said) = before(&["status", &bad, "--config", "x.toml"]);
    assert_eq!(code, Some(2), "{said}");
}
