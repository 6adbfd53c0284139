//! Who may do what (contract §8) over a real server: 401 without a known token, 403 without
//! the scope, and tenants that cannot see or touch each other's processes.

use async_engine_api::auth::{digest_hex, parse_digest};
use async_engine_api::{ApiConfig, ApiKey, Auth, Scope};
use async_engine_domain::TenantId;
use async_engine_persistence::testing::{self, TestDb};
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

fn secured(db: TestDb) -> TestServer {
    let keys = vec![
        key("acme", "acme", &[Scope::Admin]),
        key("globex", "globex", &[Scope::Admin]),
        key("reader", "acme", &[Scope::StatusRead]),
        key("writer", "acme", &[Scope::ProcessesWrite]),
        key("worker", "acme", &[Scope::TasksWork]),
    ];
    TestServer::start_full(db, definitions(10), ApiConfig::default(), Auth::with_keys(keys))
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
        let page = |path: &str, cookie: Option<&str>| {
            let mut request = server.client.get(format!("{}{path}", server.base));
            if let Some(cookie) = cookie {
                request = request.header("Cookie", cookie);
            }
            let response = request.send().unwrap();
            (response.status().as_u16(), response.text().unwrap())
        };
        let (status, body) = page("/", None);
        assert_eq!(status, 401);
        assert!(body.contains("name=\"token\""), "the sign-in form: {body}");
        let refused = server.client.post(format!("{}/login", server.base)).body("token=wrong").header("Content-Type", "application/x-www-form-urlencoded").send().unwrap();
        assert_eq!(refused.status().as_u16(), 401);
        let signed = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/login", server.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("token=reader-token")
            .send()
            .unwrap();
        assert_eq!(signed.status().as_u16(), 303);
        let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let (status, list) = page("/", Some(&cookie));
        assert_eq!(status, 200);
        assert!(list.contains(&mine) && !list.contains(&theirs), "only acme's processes");
        let (status, _) = page(&format!("/processes/{mine}"), Some(&cookie));
        assert_eq!(status, 200);
        let (status, _) = page(&format!("/processes/{theirs}"), Some(&cookie));
        assert_eq!(status, 400, "another tenant's process is not found");
        // The reader may look, not cancel: no button, and the form is refused.
        let (_, own) = page(&format!("/processes/{mine}"), Some(&cookie));
        assert!(!own.contains("/cancel"), "no cancel button without processes:write");
        let cancel = server.client.post(format!("{}/processes/{mine}/cancel", server.base)).header("Cookie", &cookie).send().unwrap();
        assert_eq!(cancel.status().as_u16(), 403);
    }
}
