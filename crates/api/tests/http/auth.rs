//! Who may do what (contract §8) over a real server: 401 without a known token, 403 without
//! the scope, and tenants that cannot see or touch each other's processes; and what a browser
//! holds: the dashboard's session cookie (opaque, expiring, reads only through the API), the
//! CSRF tokens of its forms, and the throttle of failed tokens.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use async_engine_api::auth::{WebSettings, digest_hex, origin_of, parse_digest, parse_proxies};
use async_engine_api::{ApiConfig, ApiKey, Auth, Scope};
use async_engine_domain::TenantId;
use async_engine_persistence::testing::{self, TestDb};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::TestServer;
use super::waiting::definitions;

fn key(name: &str, tenant: &str, scopes: &[Scope]) -> ApiKey {
    ApiKey {
        name: name.into(),
        tenant: TenantId::new(tenant).unwrap(),
        token_sha256: parse_digest(&digest_hex(&format!("{name}-token"))).unwrap(),
        scopes: scopes.to_vec(),
    }
}

fn keys() -> Vec<ApiKey> {
    vec![
        key("acme", "acme", &[Scope::Admin]),
        key("globex", "globex", &[Scope::Admin]),
        key("reader", "acme", &[Scope::StatusRead]),
        key("writer", "acme", &[Scope::ProcessesWrite]),
        key("worker", "acme", &[Scope::TasksWork]),
    ]
}

fn secured(db: TestDb) -> TestServer {
    secured_with(db, WebSettings::default())
}

fn secured_with(db: TestDb, web: WebSettings) -> TestServer {
    TestServer::start_full(db, definitions(10), ApiConfig::default(), Auth::with_keys(keys()).with_web(web))
}

/// A browser: its cookies, kept from `Set-Cookie` as a browser would, and redirects not
/// followed (their status is what is checked).
struct Browser<'a> {
    server: &'a TestServer,
    client: reqwest::blocking::Client,
    cookies: RefCell<BTreeMap<String, String>>,
    /// The cookies set `SameSite=Strict`, which a browser keeps from other sites' links.
    strict: RefCell<BTreeSet<String>>,
}

/// What a browser got: status, headers and body.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Got {
    /// The CSRF token of the page's forms.
    fn csrf(&self) -> String {
        const FIELD: &str = "name=\"csrf\" value=\"";
        let at = self.body.find(FIELD);
        assert!(at.is_some(), "no CSRF field: {}", self.body);
        let rest = &self.body[at.unwrap() + FIELD.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// The `Set-Cookie` of `name`, whole.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with(&format!("{name}=")))
    }
}

impl<'a> Browser<'a> {
    fn new(server: &'a TestServer) -> Self {
        let client =
            reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { server, client, cookies: RefCell::new(BTreeMap::new()), strict: RefCell::new(BTreeSet::new()) }
    }

    fn cookie_header(&self) -> String {
        self.cookies.borrow().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// Follows a link on another site's page to `path`: a top-level `GET` that carries the
    /// cookies that are not `SameSite=Strict`, and keeps what it sets, as a browser does.
    fn arrive_from_elsewhere(&self, path: &str) -> Got {
        let strict = self.strict.borrow().clone();
        let held: BTreeMap<String, String> = self.cookies.borrow().clone();
        let sent: Vec<String> = held
            .iter()
            .filter(|(name, _)| !strict.contains(*name))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut request =
            self.client.get(format!("{}{path}", self.server.base)).header("Sec-Fetch-Site", "cross-site");
        if !sent.is_empty() {
            request = request.header("Cookie", sent.join("; "));
        }
        // Sent as built: `send` would add every cookie.
        let cookies = std::mem::take(&mut *self.cookies.borrow_mut());
        let got = self.send(request);
        let mut kept = cookies;
        kept.extend(std::mem::take(&mut *self.cookies.borrow_mut()));
        *self.cookies.borrow_mut() = kept;
        got
    }

    /// The session cookie, as `name=value` for a request of another client.
    fn session(&self) -> String {
        format!("ae_session={}", self.cookies.borrow()["ae_session"])
    }

    fn send(&self, request: reqwest::blocking::RequestBuilder) -> Got {
        let request = if self.cookies.borrow().is_empty() {
            request
        } else {
            request.header("Cookie", self.cookie_header())
        };
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for value in headers.get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let (pair, attributes) = value.split_once(';').unwrap_or((value, ""));
            let (name, cookie) = pair.split_once('=').unwrap();
            if cookie.is_empty() || attributes.contains("Max-Age=0") {
                self.cookies.borrow_mut().remove(name);
            } else {
                self.cookies.borrow_mut().insert(name.to_owned(), cookie.to_owned());
            }
            if attributes.to_ascii_lowercase().contains("samesite=strict") {
                self.strict.borrow_mut().insert(name.to_owned());
            } else {
                self.strict.borrow_mut().remove(name);
            }
        }
        Got { status, headers, body: response.text().unwrap() }
    }

    fn get(&self, path: &str) -> Got {
        self.send(self.client.get(format!("{}{path}", self.server.base)))
    }

    fn post(&self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Got {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let mut request = self
            .client
            .post(format!("{}{path}", self.server.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request)
    }

    /// Signs in through the form, as a person would: the form's page, then the form.
    fn sign_in(&self, token: &str) -> Got {
        let form = self.get("/login");
        assert_eq!(form.status, 401, "the sign-in page");
        self.post("/login", &[("csrf", &form.csrf()), ("token", token)], &[])
    }
}

impl TestServer {
    /// `(status, body)` of a call made with `name`'s token (`None`: no Authorization header).
    fn call_as(&self, name: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.client.get(url),
            _ => self.client.post(url).json(&body.unwrap_or(json!({}))),
        };
        if let Some(name) = name {
            request = request.bearer_auth(format!("{name}-token"));
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        if response.headers().get("content-type").is_some_and(|v| v == "text/event-stream") {
            // An open stream: its status is the answer; its body would not end.
            return (status, Value::Null);
        }
        (status, response.json().unwrap_or(Value::Null))
    }

    fn start_as(&self, name: &str, reference: &str) -> String {
        let body = json!({ "asyncProcessName": "Q", "referenceId": reference, "items": [1, 2] });
        let (status, answer) = self.call_as(Some(name), "POST", "/v1/asyncprocesses", Some(body));
        assert_eq!(status, 202, "{answer}");
        answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
    }
}

/// Every /v1 call, with a body where it takes one.
fn calls(id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", format!("/v1/asyncprocesses/{id}"), None),
        ("GET", format!("/v1/asyncprocesses/{id}/events"), None),
        ("GET", format!("/v1/asyncprocesses/{id}/steps/0/items"), None),
        ("GET", format!("/v1/asyncprocesses/{id}/deliveries"), None),
        ("GET", "/v1/asyncprocesses".to_owned(), None),
        ("GET", "/v1/processdefinitions".to_owned(), None),
        ("POST", "/v1/actions/getAsyncJobStatus".to_owned(), Some(json!({ "id": id }))),
        (
            "POST",
            "/v1/asyncprocesses".to_owned(),
            Some(json!({ "asyncProcessName": "Q", "referenceId": "r", "items": [] })),
        ),
        ("POST", format!("/v1/asyncprocesses/{id}/cancel"), None),
        ("POST", format!("/v1/asyncprocesses/{id}/retry"), None),
        ("POST", "/v1/tasks/claim".to_owned(), Some(json!({ "queue": "q", "workerId": "w" }))),
        ("POST", "/v1/tasks/1/complete".to_owned(), Some(json!({ "leaseToken": "x", "successfully": [] }))),
        ("POST", "/v1/tasks/1/heartbeat".to_owned(), Some(json!({ "leaseToken": "x" }))),
        (
            "POST",
            "/v1/tasks/1/fail".to_owned(),
            Some(json!({ "leaseToken": "x", "statusMessage": "m", "retryable": true })),
        ),
    ]
}

/// The scope each call of [`calls`] needs, in the same order.
const NEEDS: [Scope; 14] = [
    Scope::StatusRead,
    Scope::StatusRead,
    Scope::StatusRead,
    Scope::StatusRead,
    Scope::StatusRead,
    Scope::StatusRead,
    Scope::StatusRead,
    Scope::ProcessesWrite,
    Scope::ProcessesWrite,
    Scope::ProcessesWrite,
    Scope::TasksWork,
    Scope::TasksWork,
    Scope::TasksWork,
    Scope::TasksWork,
];

on_both_backends! {
    fn no_token_or_an_unknown_one_is_401_and_a_missing_scope_403(db: TestDb) {
        let server = secured(db);
        let id = server.start_as("acme", "r1");
        for (method, path, body) in calls(&id) {
            for caller in [None, Some("stranger")] {
                let (status, answer) = server.call_as(caller, method, &path, body.clone());
                assert_eq!(status, 401, "{method} {path} as {caller:?}: {answer}");
                assert_eq!((answer["code"].as_u64(), answer["statusMessage"].as_str()), (Some(401), Some("Unauthorized")));
            }
        }
        for ((method, path, body), needs) in calls(&id).into_iter().zip(NEEDS) {
            for (name, has) in [("reader", Scope::StatusRead), ("writer", Scope::ProcessesWrite), ("worker", Scope::TasksWork)] {
                let (status, answer) = server.call_as(Some(name), method, &path, body.clone());
                if has == needs {
                    assert_ne!(status, 403, "{method} {path} as {name}: {answer}");
                    assert_ne!(status, 401, "{method} {path} as {name}: {answer}");
                } else {
                    assert_eq!(status, 403, "{method} {path} as {name}: {answer}");
                    assert!(answer["technicalMessage"].as_str().unwrap().contains(needs.as_str()), "{answer}");
                }
            }
        }
    }

    fn a_tenant_cannot_see_or_touch_another_tenant_s_processes(db: TestDb) {
        let server = secured(db);
        let id = server.start_as("acme", "shared-ref");
        let (_, theirs) = server.call_as(Some("acme"), "GET", &format!("/v1/asyncprocesses/{id}"), None);
        for (method, path, body) in calls(&id).into_iter().filter(|(_, path, _)| path.contains(&id) || path.contains("action")) {
            let (status, answer) = server.call_as(Some("globex"), method, &path, body);
            assert_eq!(status, 400, "{method} {path}: {answer}");
            let text = answer["technicalMessage"].as_str().unwrap();
            assert!(text.contains(&id) && !text.contains("tenant"), "answers like a missing ID: {text}");
        }
        let (_, by_reference) = server.call_as(Some("globex"), "GET", "/v1/asyncprocesses/shared-ref", None);
        assert_eq!(by_reference["code"], 400);
        let (_, list) = server.call_as(Some("globex"), "GET", "/v1/asyncprocesses", None);
        assert_eq!(list["AsyncProcessStatus"], json!([]));
        // Its tasks go to its own tenant's workers only.
        let claim = Some(json!({ "queue": "q", "workerId": "w", "maxTasks": 10 }));
        let (_, none) = server.call_as(Some("globex"), "POST", "/v1/tasks/claim", claim.clone());
        assert_eq!(none["tasks"], json!([]));
        let (_, mine) = server.call_as(Some("worker"), "POST", "/v1/tasks/claim", claim);
        assert_eq!(mine["tasks"][0]["asyncProcessId"], id.as_str());
        // And the owner still sees it as it was.
        let (_, again) = server.call_as(Some("acme"), "GET", &format!("/v1/asyncprocesses/{id}?itemsList=false"), None);
        assert_eq!(again["AsyncProcessStatus"][0]["asyncProcessId"], theirs["AsyncProcessStatus"][0]["asyncProcessId"]);
        // The same reference ID in another tenant is another process.
        let other = server.start_as("globex", "shared-ref");
        let (_, seen) = server.call_as(Some("globex"), "GET", "/v1/asyncprocesses/shared-ref", None);
        let ids: Vec<&str> = seen["AsyncProcessStatus"].as_array().unwrap().iter().map(|r| r["asyncProcessId"].as_str().unwrap()).collect();
        assert_eq!(ids, [other.as_str()]);
    }
}

#[test]
fn without_auth_every_caller_is_the_default_tenant() {
    let server = TestServer::start_with(testing::sqlite(), definitions(10), ApiConfig::default());
    let id = server.start_as("anyone", "r");
    let (status, _) = server.call_as(None, "GET", &format!("/v1/asyncprocesses/{id}"), None);
    assert_eq!(status, 202);
}

on_both_backends! {
    fn the_dashboard_signs_in_with_a_token_and_shows_only_the_tenant_s_processes(db: TestDb) {
        let server = secured(db);
        let mine = server.start_as("acme", "mine");
        let theirs = server.start_as("globex", "theirs");
        let browser = Browser::new(&server);
        let front = browser.get("/");
        assert_eq!(front.status, 401);
        assert!(front.body.contains("name=\"token\""), "the sign-in form: {}", front.body);
        let refused = browser.post("/login", &[("csrf", &front.csrf()), ("token", "wrong")], &[]);
        assert_eq!(refused.status, 401);
        let signed = browser.sign_in("reader-token");
        assert_eq!(signed.status, 303);
        let cookie = signed.set_cookie("ae_session").unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
        let list = browser.get("/");
        assert_eq!(list.status, 200);
        assert!(list.body.contains(&mine) && !list.body.contains(&theirs), "only acme's processes");
        assert_eq!(browser.get(&format!("/processes/{mine}")).status, 200);
        assert_eq!(browser.get(&format!("/processes/{theirs}")).status, 400, "another tenant's process is not found");
        // The reader may look, not cancel: no button, and the form is refused by scope, its
        // CSRF token being right.
        let own = browser.get(&format!("/processes/{mine}"));
        assert!(!own.body.contains("/cancel"), "no cancel button without processes:write");
        let cancel = browser.post(&format!("/processes/{mine}/cancel"), &[("csrf", &own.csrf())], &[]);
        assert_eq!(cancel.status, 403);
        assert!(cancel.body.contains("processes:write"), "{}", cancel.body);
    }

    fn the_session_cookie_reads_through_the_api_and_never_writes(db: TestDb) {
        let server = secured(db);
        let id = server.start_as("acme", "r1");
        let browser = Browser::new(&server);
        assert_eq!(browser.sign_in("acme-token").status, 303);
        // The page's event stream and the other reads go with the cookie alone.
        for (method, path, body) in calls(&id) {
            let url = format!("{}{path}", server.base);
            let request = match method {
                "GET" => browser.client.get(url),
                _ => browser.client.post(url).json(&body.unwrap_or(json!({}))),
            };
            let response = request.header("Cookie", browser.session()).send().unwrap();
            let status = response.status().as_u16();
            if method == "GET" {
                assert!(status == 200 || status == 202, "{method} {path}: {status}");
            } else {
                // Writes (and the read by POST) as if no token was sent, so another page that
                // made the browser send them could do nothing.
                assert_eq!(status, 401, "{method} {path}");
                let answer: Value = response.json().unwrap();
                assert_eq!(answer["statusMessage"], "Unauthorized");
            }
        }
        let (_, still) = server.call_as(Some("acme"), "GET", &format!("/v1/asyncprocesses/{id}"), None);
        assert_eq!(still["AsyncProcessStatus"][0]["status"], "WaitingToProcess", "the cancel did nothing");
    }

    fn every_dashboard_form_needs_its_csrf_token_whatever_origin_says(db: TestDb) {
        let server = secured(db);
        let id = server.start_as("acme", "r1");
        let same_origin = [("Origin", server.base.as_str()), ("Referer", server.base.as_str())];
        let no_origin: [(&str, &str); 0] = [];
        let foreign = [("Referer", "https://elsewhere.test/page")];
        let browser = Browser::new(&server);
        let form = browser.get("/login");
        let token = form.csrf();
        // Sign-in: without the token, with a wrong one, or one of another cookie: refused.
        for headers in [&same_origin[..], &no_origin[..], &foreign[..]] {
            for csrf in [None, Some("00"), Some("not-hex")] {
                let mut fields = vec![("token", "acme-token")];
                fields.extend(csrf.map(|c| ("csrf", c)));
                let refused = browser.post("/login", &fields, headers);
                assert_eq!(refused.status, 403, "{csrf:?} {headers:?}: {}", refused.body);
                assert!(refused.body.contains("CSRF"), "{}", refused.body);
            }
        }
        let stranger = Browser::new(&server);
        assert_eq!(stranger.post("/login", &[("csrf", &token), ("token", "acme-token")], &[]).status, 403, "another browser's token");
        assert_eq!(browser.post("/login", &[("csrf", &token), ("token", "acme-token")], &[]).status, 303);
        // Cancel, retry and sign-out likewise.
        let page = browser.get(&format!("/processes/{id}"));
        assert!(page.body.contains("/cancel"), "an admin sees Cancel");
        for path in [format!("/processes/{id}/cancel"), format!("/processes/{id}/retry"), "/logout".to_owned()] {
            for headers in [&same_origin[..], &no_origin[..], &foreign[..]] {
                assert_eq!(browser.post(&path, &[], headers).status, 403, "{path} {headers:?}");
                assert_eq!(browser.post(&path, &[("csrf", &token)], headers).status, 403, "{path}: the token from before the sign-in");
            }
        }
        let (_, still) = server.call_as(Some("acme"), "GET", &format!("/v1/asyncprocesses/{id}"), None);
        assert_eq!(still["AsyncProcessStatus"][0]["status"], "WaitingToProcess", "nothing was cancelled");
        assert_eq!(browser.get("/").status, 200, "still signed in");
        // With the page's token they work.
        let cancelled = browser.post(&format!("/processes/{id}/cancel"), &[("csrf", &page.csrf())], &same_origin);
        assert_eq!(cancelled.status, 303, "{}", cancelled.body);
        let (_, after) = server.call_as(Some("acme"), "GET", &format!("/v1/asyncprocesses/{id}"), None);
        assert_eq!(after["AsyncProcessStatus"][0]["status"], "Aborted");
        // Signing out ends the session: the cookie, sent again, no longer works anywhere.
        let session = browser.session();
        let out = browser.post("/logout", &[("csrf", &browser.get("/").csrf())], &[]);
        assert_eq!(out.status, 303);
        assert!(out.set_cookie("ae_session").unwrap().contains("Max-Age=0"), "the cookie is dropped");
        let replayed = server.client.get(format!("{}/", server.base)).header("Cookie", &session).send().unwrap();
        assert_eq!(replayed.status().as_u16(), 401, "the ended session");
        let api = server.client.get(format!("{}/v1/asyncprocesses/{id}", server.base)).header("Cookie", &session).send().unwrap();
        assert_eq!(api.status().as_u16(), 401);
    }

    fn the_session_cookie_is_opaque_expiring_and_secure_behind_tls(db: TestDb) {
        let web = WebSettings { trusted_proxies: parse_proxies(&["127.0.0.1".into()]).unwrap(), ..WebSettings::default() };
        let server = secured_with(db, web);
        let browser = Browser::new(&server);
        let signed = browser.sign_in("acme-token");
        assert_eq!(signed.status, 303);
        let cookie = signed.set_cookie("ae_session").unwrap();
        let value = cookie.split(';').next().unwrap();
        assert!(!value.contains("acme-token") && !value.contains(&digest_hex("acme-token")), "no token in {cookie}");
        assert!(cookie.contains("Max-Age=28800"), "expires after auth.session_ttl_secs: {cookie}");
        assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
        // Behind a trusted proxy that says the browser used TLS, every cookie is Secure.
        let form = browser.get("/login");
        let tls = [("X-Forwarded-Proto", "https")];
        let signed = browser.post("/login", &[("csrf", &form.csrf()), ("token", "acme-token")], &tls);
        assert!(signed.set_cookie("ae_session").unwrap().contains("Secure"), "{:?}", signed.headers);
        let fresh = Browser::new(&server);
        let page = fresh.send(fresh.client.get(format!("{}/login", server.base)).header("X-Forwarded-Proto", "https"));
        assert!(page.set_cookie("ae_csrf").unwrap().contains("Secure"));
    }
}

on_both_backends! {
    fn a_public_https_url_makes_the_cookies_secure_and_untrusted_peers_cannot(db: TestDb) {
        let server = secured_with(db, WebSettings { public_https: true, ..WebSettings::default() });
        let browser = Browser::new(&server);
        let signed = browser.sign_in("reader-token");
        assert!(signed.set_cookie("ae_session").unwrap().contains("Secure"));
        // Not trusted: what a peer says about TLS does not count.
        let plain = TestServer::start_full(testing::sqlite(), definitions(10), ApiConfig::default(), Auth::with_keys(keys()));
        let browser = Browser::new(&plain);
        let page = browser.send(browser.client.get(format!("{}/login", plain.base)).header("X-Forwarded-Proto", "https"));
        assert!(!page.set_cookie("ae_csrf").unwrap().contains("Secure"));
    }

    fn failed_tokens_are_throttled_per_address_with_retry_after(db: TestDb) {
        let server = secured_with(db, WebSettings { max_failures_per_minute: 5, ..WebSettings::default() });
        // The recorder is installed by the first scrape.
        server.client.get(format!("{}/metrics", server.base)).send().unwrap();
        // Successes never count.
        for _ in 0..30 {
            assert_eq!(server.call_as(Some("acme"), "GET", "/v1/asyncprocesses", None).0, 202);
        }
        for _ in 0..5 {
            assert_eq!(server.call_as(Some("stranger"), "GET", "/v1/asyncprocesses", None).0, 401);
        }
        let response = server.client.get(format!("{}/v1/asyncprocesses", server.base)).bearer_auth("guess").send().unwrap();
        assert_eq!(response.status().as_u16(), 429);
        let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=12).contains(&wait), "{wait}");
        let answer: Value = response.json().unwrap();
        assert_eq!((answer["code"].as_u64(), answer["statusMessage"].as_str()), (Some(429), Some("Too Many Requests")));
        assert!(answer["technicalMessage"].as_str().unwrap().contains("auth.max_failures_per_minute"), "{answer}");
        // While over the limit, the other clients of this address (behind one proxy or NAT)
        // keep working: a good token passes, and only failures are refused.
        for _ in 0..3 {
            assert_eq!(server.call_as(Some("acme"), "GET", "/v1/asyncprocesses", None).0, 202, "a good token");
            assert_eq!(server.call_as(Some("stranger"), "GET", "/v1/asyncprocesses", None).0, 429);
        }
        // /login shares the count, and answers with a page.
        // Asking for the page presents no token, so it is no failure.
        let browser = Browser::new(&server);
        let form = browser.get("/login");
        assert_eq!(form.status, 401);
        let page = browser.post("/login", &[("csrf", &form.csrf()), ("token", "wrong")], &[]);
        assert_eq!(page.status, 429);
        assert!(page.headers.contains_key("retry-after") && page.body.contains("Too many attempts"), "{}", page.body);
        let signed = browser.post("/login", &[("csrf", &form.csrf()), ("token", "acme-token")], &[]);
        assert_eq!(signed.status, 303, "a good token signs in while the address is throttled: {}", signed.body);
        let metrics = server.client.get(format!("{}/metrics", server.base)).send().unwrap().text().unwrap();
        let throttled = metrics.lines().find_map(|l| l.strip_prefix("async_engine_auth_failures_throttled_total "));
        assert!(throttled.is_some(), "no throttle counter in {metrics}");
        let throttled: f64 = throttled.unwrap().parse().unwrap();
        // The sixth failure, three more by token and one at /login (other tests of this binary
        // may add theirs: the recorder is global).
        assert!(throttled >= 5.0, "{throttled}");
    }
}

on_both_backends! {
    fn dashboard_forms_go_by_fetch_metadata_and_take_a_null_origin(db: TestDb) {
        let web = WebSettings { public_origin: origin_of("https://async.example.com"), ..WebSettings::default() };
        let server = secured_with(db, web);
        let first = server.start_as("acme", "r1");
        let second = server.start_as("acme", "r2");
        let browser = Browser::new(&server);
        let form = browser.get("/login");
        let sign_in = [("csrf", form.csrf()), ("token", "acme-token".to_owned())];
        let sign_in: Vec<(&str, &str)> = sign_in.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // Another site, as the browser tells it, is refused even with the right CSRF token,
        // whatever Origin says; so is a foreign Origin from a browser without Fetch Metadata.
        for headers in [
            &[("Sec-Fetch-Site", "cross-site")][..],
            &[("Sec-Fetch-Site", "same-site")],
            &[("Sec-Fetch-Site", "cross-site"), ("Origin", server.base.as_str())],
            &[("Sec-Fetch-Site", "cross-site"), ("Origin", "null")],
            &[("Origin", "https://elsewhere.test")],
            &[("Origin", "https://async.example.com.elsewhere.test")],
        ] {
            let refused = browser.post("/login", &sign_in, headers);
            assert_eq!(refused.status, 403, "{headers:?}: {}", refused.body);
            assert!(refused.body.contains("another site"), "{}", refused.body);
        }
        // What Chromium and Firefox send for a page's own form under `Referrer-Policy:
        // no-referrer`: `Origin: null`, with `Sec-Fetch-Site: same-origin` (Firefox before
        // Fetch Metadata: `Origin: null` alone). The CSRF token decides.
        let signed = browser.post("/login", &sign_in, &[("Origin", "null")]);
        assert_eq!(signed.status, 303, "{}", signed.body);
        let own_form = [("Origin", "null"), ("Sec-Fetch-Site", "same-origin")];
        let page = browser.get(&format!("/processes/{first}"));
        let cross = browser.post(&format!("/processes/{first}/cancel"), &[("csrf", &page.csrf())], &[("Sec-Fetch-Site", "cross-site")]);
        assert_eq!(cross.status, 403, "{}", cross.body);
        let cancelled = browser.post(&format!("/processes/{first}/cancel"), &[("csrf", &page.csrf())], &own_form);
        assert_eq!(cancelled.status, 303, "{}", cancelled.body);
        let (_, after) = server.call_as(Some("acme"), "GET", &format!("/v1/asyncprocesses/{first}"), None);
        assert_eq!(after["AsyncProcessStatus"][0]["status"], "Aborted");
        // Behind a proxy that rewrites Host, the origin of server.public_url is this server's.
        let page = browser.get(&format!("/processes/{second}"));
        let proxied = [("Origin", "https://async.example.com")];
        let cancelled = browser.post(&format!("/processes/{second}/cancel"), &[("csrf", &page.csrf())], &proxied);
        assert_eq!(cancelled.status, 303, "{}", cancelled.body);
        // A sign-out typed by hand (`none`) is the user's own doing.
        let out = browser.post("/logout", &[("csrf", &browser.get("/").csrf())], &[("Sec-Fetch-Site", "none")]);
        assert_eq!(out.status, 303, "{}", out.body);
    }

    fn a_link_from_another_site_arrives_signed_in_and_its_forms_work(db: TestDb) {
        let server = secured(db);
        let id = server.start_as("acme", "r1");
        let browser = Browser::new(&server);
        assert_eq!(browser.sign_in("acme-token").status, 303);
        // A link in a chat message or a ticket: a top-level GET from another site.
        let page = browser.arrive_from_elsewhere(&format!("/processes/{id}"));
        assert_eq!(page.status, 200, "still signed in: {}", page.body);
        let own_form = [("Origin", "null"), ("Sec-Fetch-Site", "same-origin")];
        let cancelled = browser.post(&format!("/processes/{id}/cancel"), &[("csrf", &page.csrf())], &own_form);
        assert_eq!(cancelled.status, 303, "{}", cancelled.body);
        // The sign-in page reached by a link: signing in (again, or as another key) works.
        let form = browser.arrive_from_elsewhere("/login");
        let again = browser.post("/login", &[("csrf", &form.csrf()), ("token", "reader-token")], &own_form);
        assert_eq!(again.status, 303, "{}", again.body);
        assert_eq!(browser.get("/").status, 200);
        // Another site's own post still carries no session, nor a token it could read.
        let stranger = browser.client.post(format!("{}/logout", server.base)).header("Sec-Fetch-Site", "cross-site").send().unwrap();
        assert_eq!(stranger.status().as_u16(), 403);
        assert_eq!(browser.get("/").status, 200, "not signed out");
    }
}
