//! External workers' task calls over a real server: a lease token is worth nothing outside its
//! tenant, and waiting claims (`waitSeconds`) cost one shared check of their queue per
//! interval instead of a claim each, yet still get work made on this node or elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_engine_api::auth::{digest_hex, parse_digest};
use async_engine_api::{ApiConfig, ApiKey, AppState, Auth, CallbackPolicy, Scope};
use async_engine_domain::{
    ClaimRequest, ClaimedTask, Completion, NewProcess, ProcessId, ProcessStore, RawJson, ReferenceId,
    RepositoryError, TaskError, TaskReport, TaskStore, TenantId,
};
use async_engine_persistence::Store;
use async_engine_persistence::testing::{self, TestDb};
use serde_json::{Value, json};

use super::TestServer;
use super::waiting::definitions;

/// The store, counting what waiting claims ask of the database.
#[derive(Clone)]
struct Counting {
    store: Store,
    claims: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
}

impl Counting {
    fn new(store: Store) -> Self {
        Self { store, claims: Arc::default(), checks: Arc::default() }
    }

    fn claims(&self) -> usize {
        self.claims.load(Ordering::SeqCst)
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    /// Waits (at most 30 s) until `n` claims reached the store.
    fn until_claims(&self, n: usize) {
        let start = Instant::now();
        while self.claims() < n {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "only {} of {n} claims arrived",
                self.claims()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl TaskStore for Counting {
    fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedTask>, RepositoryError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.store.claim(request)
    }

    fn any_due(&self, request: &ClaimRequest) -> Result<bool, RepositoryError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        self.store.any_due(request)
    }

    fn complete(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        lease_token: &str,
        report: &TaskReport,
        now_micros: i64,
    ) -> Result<(), TaskError> {
        self.store.complete(tenant, task_id, lease_token, report, now_micros)
    }

    fn complete_all(
        &self,
        tenant: Option<TenantId>,
        completions: &[Completion],
        now_micros: i64,
    ) -> Result<Vec<Result<(), TaskError>>, RepositoryError> {
        self.store.complete_all(tenant, completions, now_micros)
    }

    fn heartbeat(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        lease_token: &str,
        lease_micros: i64,
        now_micros: i64,
    ) -> Result<i64, TaskError> {
        self.store.heartbeat(tenant, task_id, lease_token, lease_micros, now_micros)
    }

    fn fail(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        lease_token: &str,
        message: &str,
        retryable: bool,
        now_micros: i64,
    ) -> Result<(), TaskError> {
        self.store.fail(tenant, task_id, lease_token, message, retryable, now_micros)
    }
}

fn key(name: &str, tenant: &str) -> ApiKey {
    ApiKey {
        name: name.into(),
        tenant: TenantId::new(tenant).unwrap(),
        token_sha256: parse_digest(&digest_hex(&format!("{name}-token"))).unwrap(),
        scopes: vec![Scope::Admin],
    }
}

/// A server whose task calls go through a [`Counting`] store; one `queue:q` step of
/// `chunk` items per task.
fn counted(db: TestDb, chunk: u32, config: ApiConfig, auth: Auth) -> (TestServer, Counting) {
    let counting = Counting::new(db.store.clone());
    let mut state = AppState::new(
        db.store.clone(),
        definitions(chunk),
        CallbackPolicy::default(),
        auth,
        Arc::new(|| {}),
        config,
    );
    state.tasks = Arc::new(counting.clone());
    (TestServer::start_state(db, state), counting)
}

/// `(status, body, Retry-After)` of a POST made with `name`'s token (`None`: none).
fn post_as(base: &str, name: Option<&str>, path: &str, body: &Value) -> (u16, Value, Option<String>) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut request = client.post(format!("{base}{path}")).json(body);
    if let Some(name) = name {
        request = request.bearer_auth(format!("{name}-token"));
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().unwrap(), retry_after)
}

/// A claim on `queue:q` in a thread of its own, answering `(status, body)`.
fn claim_in_thread(
    server: &TestServer,
    name: Option<&str>,
    wait: u64,
    max_tasks: u32,
) -> JoinHandle<(u16, Value)> {
    let base = server.base.clone();
    let name = name.map(str::to_owned);
    std::thread::spawn(move || {
        let body = json!({ "queue": "q", "workerId": "w", "waitSeconds": wait, "maxTasks": max_tasks });
        let (status, body, _) = post_as(&base, name.as_deref(), "/v1/tasks/claim", &body);
        (status, body)
    })
}

fn start_over_http(server: &TestServer, name: Option<&str>, items: usize) -> String {
    let items: Vec<Value> = (0..items).map(|n| json!(n)).collect();
    let body = json!({ "asyncProcessName": "Q", "referenceId": "r", "items": items });
    let (status, answer, _) = post_as(&server.base, name, "/v1/asyncprocesses", &body);
    assert_eq!(status, 202, "{answer}");
    answer["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
}

/// A start that no one on this node hears of, as another node's would be.
fn start_elsewhere(server: &TestServer, id: &str, items: usize) {
    start_in(server, TenantId::DEFAULT, id, items);
}

/// [`start_elsewhere`] in `tenant`.
fn start_in(server: &TestServer, tenant: &str, id: &str, items: usize) {
    server
        .store
        .start(&NewProcess {
            tenant: TenantId::new(tenant).unwrap(),
            async_process_id: ProcessId::new(id).unwrap(),
            reference_id: ReferenceId::new("elsewhere").unwrap(),
            definition: definitions(1).remove(0),
            items: (0..items).map(|n| RawJson::from_value(&json!(n))).collect(),
            additional_data: RawJson::empty_object(),
            idempotency_key: None,
            callback_url: None,
            now_micros: now_micros(),
            start_at_micros: None,
            priority: 0,
        })
        .unwrap();
}

fn now_micros() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros())
        .unwrap()
}

fn processed(server: &TestServer, name: &str, id: &str) -> u64 {
    let client = reqwest::blocking::Client::new();
    let response = client
        .get(format!("{}/v1/asyncprocesses/{id}?itemsList=false", server.base))
        .bearer_auth(format!("{name}-token"))
        .send()
        .unwrap();
    let answer: Value = response.json().unwrap();
    answer["AsyncProcessStatus"][0]["itemsProcessed"][0]["currentNumberOfItemsProccessed"].as_u64().unwrap()
}

on_both_backends! {
    fn a_leaked_lease_token_is_worth_nothing_in_another_tenant(db: TestDb) {
        let auth = Auth::with_keys(vec![key("acme", "acme"), key("globex", "globex")]);
        let (server, _) = counted(db, 10, ApiConfig::default(), auth);
        let id = start_over_http(&server, Some("acme"), 2);
        let claim = json!({ "queue": "q", "workerId": "acme-1", "leaseSeconds": 1 });
        let (_, claimed, _) = post_as(&server.base, Some("acme"), "/v1/tasks/claim", &claim);
        let task = &claimed["tasks"][0];
        let (task_id, token) = (task["taskId"].as_i64().unwrap(), task["leaseToken"].as_str().unwrap().to_owned());
        let calls = |task_id: i64| {
            [
                ("heartbeat", json!({ "leaseToken": token, "leaseSeconds": 3600 })),
                ("complete", json!({ "leaseToken": token, "successfully": [0, 1] })),
                ("fail", json!({ "leaseToken": token, "statusMessage": "no", "retryable": false })),
            ]
            .map(|(call, body)| {
                let (status, answer, _) = post_as(&server.base, Some("globex"), &format!("/v1/tasks/{task_id}/{call}"), &body);
                // The answer with the task id taken out: the same for both, or it tells.
                (status, answer.to_string().replace(&format!("task {task_id} "), "task N "))
            })
        };
        let missing = task_id + 1_000;
        let (theirs, unknown) = (calls(task_id), calls(missing));
        assert_eq!(theirs, unknown, "another tenant's task answers like a missing one");
        assert!(theirs.iter().all(|(status, _)| *status == 409), "{theirs:?}");
        // Nothing was recorded or given back, and the lease was not extended: once its one
        // second is over, acme's next claim takes the task over and completes it.
        assert_eq!(processed(&server, "acme", &id), 0);
        std::thread::sleep(Duration::from_millis(1_500));
        let (_, again, _) = post_as(&server.base, Some("acme"), "/v1/tasks/claim", &json!({ "queue": "q", "workerId": "acme-2" }));
        let task = &again["tasks"][0];
        assert_eq!((task["taskId"].as_i64(), task["attempt"].as_u64()), (Some(task_id), Some(2)), "{again}");
        let body = json!({ "leaseToken": task["leaseToken"], "successfully": [0, 1] });
        let (status, answer, _) = post_as(&server.base, Some("acme"), &format!("/v1/tasks/{task_id}/complete"), &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(processed(&server, "acme", &id), 2);
    }

    fn waiting_claims_cost_a_shared_check_per_interval_not_a_claim_each(db: TestDb) {
        let config = ApiConfig { claim_poll: Duration::from_millis(100), max_waiting_claims_per_key: 64, ..ApiConfig::default() };
        let (server, counting) = counted(db, 1, config, Auth::disabled());
        let waiters = 20;
        let threads: Vec<_> = (0..waiters).map(|_| claim_in_thread(&server, None, 4, 1)).collect();
        // Each looks once when it starts waiting.
        counting.until_claims(waiters);
        let (claims, checks) = (counting.claims(), counting.checks());
        std::thread::sleep(Duration::from_millis(1_500));
        let (claims, checks) = (counting.claims() - claims, counting.checks() - checks);
        // Polling each on its own (every 200 ms) would have cost 150 claims.
        assert_eq!(claims, 0, "nothing was due, so no waiting claim asked");
        assert!((1..=32).contains(&checks), "one check of the one waited-on queue per 100 ms: {checks}");
        for thread in threads {
            assert_eq!(thread.join().unwrap(), (200, json!({ "tasks": [] })));
        }
    }

    fn a_waiting_claim_gets_work_made_elsewhere_within_the_shared_check(db: TestDb) {
        let config = ApiConfig { claim_poll: Duration::from_millis(100), ..ApiConfig::default() };
        let (server, counting) = counted(db, 1, config, Auth::disabled());
        let waiting = claim_in_thread(&server, None, 20, 1);
        counting.until_claims(1);
        start_elsewhere(&server, "elsewhere", 1);
        let (status, answer) = waiting.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["tasks"][0]["asyncProcessId"], "elsewhere", "{answer}");
    }

    fn work_started_on_this_node_wakes_waiting_claims_at_once(db: TestDb) {
        // No periodic check within the test: only this node's own signal can wake them.
        let config = ApiConfig { claim_poll: Duration::from_secs(600), ..ApiConfig::default() };
        let (server, counting) = counted(db, 1, config, Auth::disabled());
        let waiting: Vec<_> = (0..2).map(|_| claim_in_thread(&server, None, 20, 1)).collect();
        counting.until_claims(2);
        // Two tasks: the claim woken first leases all it asked for and wakes the next one.
        let id = start_over_http(&server, None, 2);
        let mut leased = Vec::new();
        for thread in waiting {
            let (status, answer) = thread.join().unwrap();
            assert_eq!(status, 200);
            assert_eq!(answer["tasks"][0]["asyncProcessId"], id.as_str(), "{answer}");
            leased.push(answer["tasks"][0]["taskId"].as_i64().unwrap());
        }
        leased.sort_unstable();
        leased.dedup();
        assert_eq!(leased.len(), 2, "each its own task");
    }
}

#[test]
fn waiting_claims_are_capped_per_key() {
    let auth = Auth::with_keys(vec![key("a1", "acme"), key("a2", "acme")]);
    // No periodic check within the test: work made below wakes none of the waiting claims.
    let config = ApiConfig {
        max_waiting_claims_per_key: 2,
        claim_poll: Duration::from_secs(600),
        ..ApiConfig::default()
    };
    let (server, counting) = counted(testing::sqlite(), 1, config, auth);
    let waiting: Vec<_> = (0..2).map(|_| claim_in_thread(&server, Some("a1"), 3, 1)).collect();
    counting.until_claims(2);
    let claim = |name, wait| {
        let body = json!({ "queue": "q", "workerId": "w", "waitSeconds": wait });
        post_as(&server.base, Some(name), "/v1/tasks/claim", &body)
    };
    let (status, answer, retry_after) = claim("a1", 3);
    assert_eq!(
        (status, answer["code"].as_u64(), retry_after.as_deref()),
        (429, Some(429), Some("1")),
        "{answer}"
    );
    assert_eq!(answer["statusMessage"], "Too Many Requests");
    assert!(
        answer["technicalMessage"].as_str().unwrap().contains("limits.max_waiting_claims_per_key"),
        "{answer}"
    );
    assert_eq!(counting.claims(), 3, "refused after one look that found nothing");
    // Over the cap with work due, the claim gets it instead of a 429.
    start_in(&server, "acme", "due", 1);
    let (status, answer, _) = claim("a1", 3);
    assert_eq!((status, answer["tasks"][0]["asyncProcessId"].as_str()), (200, Some("due")), "{answer}");
    // Another key, and a claim that does not wait, are not held back.
    assert_eq!(claim("a2", 1).0, 200);
    assert_eq!(claim("a1", 0).0, 200);
    for thread in waiting {
        assert_eq!(thread.join().unwrap(), (200, json!({ "tasks": [] })));
    }
    // The finished waits made room.
    assert_eq!(claim("a1", 1).0, 200);
}

#[test]
fn without_auth_waiting_claims_are_capped_per_client_address() {
    let config = ApiConfig {
        max_waiting_claims_per_key: 1,
        claim_poll: Duration::from_secs(600),
        ..ApiConfig::default()
    };
    let (server, counting) = counted(testing::sqlite(), 1, config, Auth::disabled());
    let waiting = claim_in_thread(&server, None, 3, 1);
    counting.until_claims(1);
    // From another address of the loopback network, as a worker on another machine would.
    let claim_from = |address: &str| {
        let client = reqwest::blocking::Client::builder()
            .local_address(address.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let body = json!({ "queue": "q", "workerId": "w", "waitSeconds": 1 });
        let response = client.post(format!("{}/v1/tasks/claim", server.base)).json(&body).send().unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    assert_eq!(claim_from("127.0.0.2"), (200, json!({ "tasks": [] })), "its own cap");
    let (status, answer) = claim_from("127.0.0.1");
    assert_eq!(status, 429, "{answer}");
    assert_eq!(waiting.join().unwrap(), (200, json!({ "tasks": [] })));
}
