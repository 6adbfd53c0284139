//! The dashboard's operator pages over a real server: totals and what finished lately, queues
//! and the workers holding leases, definitions, deliveries, the prefix search, and failure
//! groups counted for a process too large to list item by item.

use async_engine_api::ApiConfig;
use async_engine_persistence::testing::{self, TestDb};
use serde_json::{Value, json};

use super::TestServer;
use super::waiting::definitions;

impl TestServer {
    fn page(&self, path: &str) -> (u16, String) {
        let answer = self.client.get(format!("{}{path}", self.base)).send().unwrap();
        (answer.status().as_u16(), answer.text().unwrap())
    }

    fn text(&self, path: &str) -> String {
        let (status, text) = self.page(path);
        assert_eq!(status, 200, "{path}: {text}");
        text
    }

    fn start_items(&self, reference: &str, items: usize) -> String {
        let items: Vec<Value> = (0..items).map(|n| json!(n)).collect();
        let (status, body) = self.post(
            "/v1/asyncprocesses",
            &json!({ "asyncProcessName": "Q", "referenceId": reference, "items": items }),
        );
        assert_eq!(status, 202, "{body}");
        body["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned()
    }

    /// Claims one task of queue `q` as `worker`: (task id, lease token, item indices).
    fn claim_one(&self, worker: &str) -> (i64, String, Vec<u64>) {
        let (status, body) =
            self.post("/v1/tasks/claim", &json!({ "queue": "q", "workerId": worker, "maxTasks": 1 }));
        assert_eq!(status, 200, "{body}");
        let task = &body["tasks"][0];
        let items = task["items"].as_array().unwrap().iter().map(|i| i["index"].as_u64().unwrap()).collect();
        (task["taskId"].as_i64().unwrap(), task["leaseToken"].as_str().unwrap().to_owned(), items)
    }

    fn fail_all(&self, (task, token, items): (i64, String, Vec<u64>)) {
        let body = json!({ "leaseToken": token, "successfully": [],
            "failed": [{ "items": items, "code": 9, "statusMessage": "Nine" }] });
        let (status, answer) = self.post(&format!("/v1/tasks/{task}/complete"), &body);
        assert_eq!(status, 200, "{answer}");
    }
}

on_both_backends! {
    fn operators_see_totals_queues_workers_definitions_and_deliveries(db: TestDb) {
        let server = TestServer::start_with(db, definitions(2), ApiConfig::default());
        // Five items in tasks of two: one task failed, one held by a worker, one queued.
        let id = server.start_items("Order-77/Zürich", 5);
        server.fail_all(server.claim_one("pricer-7"));
        let (held, token, _) = server.claim_one("pricer-7");

        let list = server.text("/");
        assert!(list.contains(r#"<span class="status InProgress">1</span> InProgress"#), "{list}");
        assert!(list.contains(r#"<span class="status Success">0</span> Success"#), "{list}");
        assert!(list.contains("Finished in the last 15 minutes: none"), "{list}");
        assert!(list.contains(r#"data-refresh="5""#), "{list}");
        assert!(list.contains("running for"), "{list}");
        // The search: a prefix of the reference or the name, in any case.
        for hit in ["/?referenceId=order-77", "/?referenceId=ORDER-77%2Fz", "/?asyncProcessName=q&referenceId=Ord"] {
            assert!(server.text(hit).contains(&id), "{hit}");
        }
        for miss in ["/?referenceId=order-78", "/?referenceId=%25", "/?asyncProcessName=x"] {
            let page = server.text(miss);
            assert!(!page.contains(&id) && page.contains("No process matches."), "{miss}: {page}");
        }

        let queues = server.text("/queues");
        assert!(queues.contains("<tr><td><code>queue:q</code></td><td>1</td><td>1</td>"), "{queues}");
        assert!(queues.contains("<td>pricer-7</td><td>1</td>"), "{queues}");
        assert!(queues.contains(" s ago</td>"), "{queues}");

        let definitions = server.text("/definitions");
        assert!(definitions.contains("<td>Work</td><td><code>queue:q</code></td><td>2</td><td>3</td><td>60 s</td><td>skip</td>"), "{definitions}");
        assert!(definitions.contains(r#"href="/?asyncProcessName=Q""#), "{definitions}");

        let process = server.text(&format!("/processes/{id}"));
        assert!(process.contains(r#"class="InProgress" value="2""#), "{process}");
        assert!(process.contains("<code>9</code> Nine <span class=\"muted\">(2 items: 0, 1)</span>"), "{process}");
        assert!(process.contains(&format!(r#"href="/processes/{id}/deliveries""#)), "{process}");
        let deliveries = server.text(&format!("/processes/{id}/deliveries"));
        assert!(deliveries.contains("This process has no notifications"), "{deliveries}");
        let (status, missing) = server.page("/processes/nope/deliveries");
        assert_eq!(status, 400);
        assert!(missing.contains("no process has this asyncProcessId"), "{missing}");

        // The last task fails too, the held one succeeds: the process is Failed, its bar red,
        // its finish counted.
        server.fail_all(server.claim_one("pricer-8"));
        let body = json!({ "leaseToken": token, "successfully": [2, 3], "failed": [] });
        assert_eq!(server.post(&format!("/v1/tasks/{held}/complete"), &body).0, 200);
        let list = server.text("/");
        assert!(list.contains(r#"<span class="status Failed">1</span> Failed"#), "{list}");
        assert!(list.contains("Finished in the last 15 minutes: 1 process (1 Failed), 5 items"), "{list}");
        assert!(list.contains(r#"<progress class="Failed""#), "{list}");
        let queues = server.text("/queues");
        assert!(queues.contains("No open tasks.") && queues.contains("No worker holds a lease."), "{queues}");
    }
}

on_both_backends! {
    fn failure_groups_are_counted_for_a_process_too_large_to_list(db: TestDb) {
        // One task of 5,001 items, more than a process page lists item by item.
        let server = TestServer::start_with(db, definitions(6_000), ApiConfig::default());
        let id = server.start_items("big", 5_001);
        server.fail_all(server.claim_one("w"));
        let process = server.text(&format!("/processes/{id}"));
        assert!(process.contains("<code>9</code> Nine <span class=\"muted\">(5001 items)</span>"), "{process}");
        assert!(!process.contains("see the failed items"), "{process}");
    }
}
