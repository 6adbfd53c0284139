//! What a browser meets, through the real binary and its default configuration: failed tokens
//! throttled per address (429 with Retry-After, counted at `/metrics`), a sign-in that needs the
//! form's CSRF token and leaves an opaque, expiring session cookie (`Secure` under an https
//! `server.public_url`), and the pages' and API's security headers.

use std::time::Instant;

use crate::{BIN, start_with, temp_db};

fn header(response: &reqwest::blocking::Response, name: &str) -> String {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[test]
fn wrong_tokens_are_throttled_and_the_dashboard_signs_in_with_a_session() {
    let (dir, db) = temp_db();
    let output = std::process::Command::new(BIN)
        .args(["token", "--name", "ops", "--tenant", "acme", "--scopes", "admin"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (token, entry) = stdout.split_once('\n').unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!("[server]\npublic_url = \"https://async.example.com\"\n[auth]\nenabled = true\n\n{entry}"),
    )
    .unwrap();
    let server = start_with(&db, &["serve", "--config", file.to_str().unwrap()], &[]);
    let client =
        reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let list = |token: &str| {
        client.get(format!("{}/v1/asyncprocesses", server.base)).bearer_auth(token).send().unwrap()
    };

    // The dashboard first, before this address has failed: the form, its CSRF cookie and token.
    let form = client.get(format!("{}/login", server.base)).send().unwrap();
    assert_eq!(form.status().as_u16(), 401);
    assert!(header(&form, "content-security-policy").contains("frame-ancestors 'none'"));
    let csrf_cookie = header(&form, "set-cookie");
    assert!(csrf_cookie.starts_with("ae_csrf=") && csrf_cookie.contains("Secure"), "{csrf_cookie}");
    let csrf_cookie = csrf_cookie.split(';').next().unwrap().to_owned();
    let body = form.text().unwrap();
    let marker = "name=\"csrf\" value=\"";
    let at = body.find(marker).unwrap() + marker.len();
    let csrf = &body[at..at + body[at..].find('"').unwrap()];
    let sign_in = |fields: &str| {
        client
            .post(format!("{}/login", server.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", &csrf_cookie)
            // As a browser at server.public_url sends it, through a proxy that rewrote Host.
            .header("Origin", "https://async.example.com")
            .body(fields.to_owned())
            .send()
            .unwrap()
    };
    assert_eq!(sign_in(&format!("token={token}")).status().as_u16(), 403, "no CSRF token");
    let signed = sign_in(&format!("csrf={csrf}&token={token}"));
    assert_eq!(signed.status().as_u16(), 303);
    let session = header(&signed, "set-cookie");
    assert!(session.starts_with("ae_session=") && !session.contains(token), "{session}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Max-Age=28800"] {
        assert!(session.contains(attribute), "{attribute}: {session}");
    }
    let session = session.split(';').next().unwrap().to_owned();
    let api =
        client.get(format!("{}/v1/asyncprocesses", server.base)).header("Cookie", &session).send().unwrap();
    assert_eq!(api.status().as_u16(), 202, "the session reads");
    assert_eq!(header(&api, "cache-control"), "no-store");
    assert_eq!(header(&api, "x-content-type-options"), "nosniff");
    let write = client
        .post(format!("{}/v1/asyncprocesses", server.base))
        .header("Cookie", &session)
        .json(&serde_json::json!({ "asyncProcessName": "Noop", "referenceId": "r", "items": [] }))
        .send()
        .unwrap();
    assert_eq!(write.status().as_u16(), 401, "and never writes");

    // 300 wrong tokens as fast as they go: 10 are answered 401 (auth.max_failures_per_minute),
    // the rest 429 with Retry-After, while a good token from this address still works (a
    // guesser cannot lock out the other clients behind its proxy or NAT).
    let started = Instant::now();
    let statuses: Vec<u16> = (0..300).map(|n| list(&format!("ae_guess{n}")).status().as_u16()).collect();
    let seconds = started.elapsed().as_secs();
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    // One failure more per 6 s elapsed is allowed again.
    assert!((10..=10 + seconds as usize / 6 + 1).contains(&unauthorized), "{unauthorized} in {seconds} s");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 300 - unauthorized);
    assert_eq!(list(token).status().as_u16(), 202, "a good token while the address is throttled");
    let refused = list("ae_guess-again");
    assert_eq!(refused.status().as_u16(), 429);
    assert!(header(&refused, "retry-after").parse::<u64>().is_ok_and(|s| (1..=6).contains(&s)));
    let metrics = client.get(format!("{}/metrics", server.base)).send().unwrap().text().unwrap();
    let throttled =
        metrics.lines().find_map(|l| l.strip_prefix("async_engine_auth_failures_throttled_total "));
    assert!(throttled.is_some_and(|n| n.parse::<f64>().unwrap() >= 290.0), "{metrics}");
}
