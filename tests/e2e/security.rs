//! Safe defaults and keys through the real binary: no anonymous server beyond loopback, and
//! the token helper's output admitted by the server it is pasted into.

use std::process::Stdio;

use crate::{BIN, command, start, start_with, temp_db};

#[test]
fn an_anonymous_server_refuses_a_non_loopback_address_unless_told_otherwise() {
    let (_dir, db) = temp_db();
    let output = command(&db, &["serve"], &[("ASYNC_ENGINE__SERVER__HOST", "0.0.0.0")])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("server.host") && text.contains("auth.enabled"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    let on_purpose =
        [("ASYNC_ENGINE__SERVER__HOST", "0.0.0.0"), ("ASYNC_ENGINE__AUTH__ALLOW_ANONYMOUS_REMOTE", "true")];
    let server = start(&db, &on_purpose);
    assert!(server.base.contains("0.0.0.0"), "{}", server.base);
}

#[test]
fn a_token_from_the_helper_is_admitted_and_no_other() {
    let (dir, db) = temp_db();
    let output = std::process::Command::new(BIN)
        .args(["token", "--name", "ci", "--tenant", "acme", "--scopes", "status:read,processes:write"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (token, entry) = stdout.split_once('\n').unwrap();
    assert!(token.starts_with("ae_") && token.len() == 67, "{token}");
    assert!(!entry.contains(token), "only the digest is in the entry");
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, format!("[auth]\nenabled = true\n\n{entry}")).unwrap();
    let server = start_with(&db, &["serve", "--config", file.to_str().unwrap()], &[]);
    let client = reqwest::blocking::Client::new();
    let list = |token: Option<&str>| {
        let mut request = client.get(format!("{}/v1/asyncprocesses", server.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(list(Some(token)), 202);
    assert_eq!(list(None), 401);
    assert_eq!(list(Some(&format!("{token}x"))), 401);
    let start = client
        .post(format!("{}/v1/asyncprocesses", server.base))
        .bearer_auth(token)
        .json(&serde_json::json!({ "asyncProcessName": "Noop", "referenceId": "r", "items": [] }))
        .send()
        .unwrap();
    assert_eq!(start.status().as_u16(), 202);
}
