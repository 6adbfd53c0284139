//! Security headers over a real server: pages allow no inline script and no framing and send
//! no `Referer`; `/v1` answers are never sniffed or stored, while ETags and 304s still work.

use async_engine_persistence::testing;
use reqwest::blocking::Response;

use super::TestServer;

fn header(response: &Response, name: &str) -> String {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

fn assert_page_headers(response: &Response, what: &str) {
    let policy = header(response, "content-security-policy");
    for part in ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"] {
        assert!(policy.contains(part), "{what}: {part} missing from {policy:?}");
    }
    assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{what}: {policy}");
    assert_eq!(header(response, "x-frame-options"), "DENY", "{what}");
    assert_eq!(header(response, "x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header(response, "referrer-policy"), "no-referrer", "{what}");
}

on_both_backends! {
    fn pages_forbid_inline_script_and_framing(server: &TestServer) {
        server.seed_documented();
        for path in ["/", "/processes/9876543", "/processes/9876543/steps/0/items", "/login", "/processes/nope"] {
            let response = server.client.get(format!("{}{path}", server.base)).send().unwrap();
            assert_page_headers(&response, path);
            assert_eq!(header(&response, "cache-control"), "no-store", "{path}");
            let body = response.text().unwrap();
            // Every script is a served file, which the policy allows; none is inline.
            assert!(!body.contains("<script>") && !body.contains("<style>"), "{path}: inline script or style");
            assert!(!body.contains(" style="), "{path}: inline style attribute");
        }
        let page = server.client.get(format!("{}/processes/9876543", server.base)).send().unwrap().text().unwrap();
        assert!(page.contains("<script src=\"/assets/dashboard.js\""), "{page}");
        for (path, kind) in [("/assets/dashboard.js", "text/javascript"), ("/assets/dashboard.css", "text/css")] {
            let response = server.client.get(format!("{}{path}", server.base)).send().unwrap();
            assert_eq!(response.status().as_u16(), 200, "{path}");
            assert!(header(&response, "content-type").starts_with(kind), "{path}");
            assert_page_headers(&response, path);
            assert!(!response.text().unwrap().is_empty());
        }
    }

    fn api_answers_are_not_sniffed_or_stored_and_still_revalidate(server: &TestServer) {
        server.seed_documented();
        for (path, code) in [
            ("/v1/asyncprocesses/9876543", 202),
            ("/v1/asyncprocesses?limit=1", 202),
            ("/v1/asyncprocesses/9876543?verbose=maybe", 400),
            ("/v1/nowhere", 404),
        ] {
            let response = server.client.get(format!("{}{path}", server.base)).send().unwrap();
            assert_eq!(response.status().as_u16(), code, "{path}");
            assert_eq!(header(&response, "x-content-type-options"), "nosniff", "{path}");
            assert_eq!(header(&response, "cache-control"), "no-store", "{path}");
        }
        let first = server.client.get(format!("{}/v1/asyncprocesses/9876543", server.base)).send().unwrap();
        let etag = header(&first, "etag");
        assert!(!etag.is_empty());
        let again = server
            .client
            .get(format!("{}/v1/asyncprocesses/9876543", server.base))
            .header("If-None-Match", &etag)
            .send()
            .unwrap();
        assert_eq!(again.status().as_u16(), 304);
        assert_eq!(header(&again, "cache-control"), "no-store");
    }
}
