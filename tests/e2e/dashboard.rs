//! The dashboard in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/run`). Built as ignored where no
//! browser is installed (`crates/server/build.rs`). It saves the docs' screenshots (`docs/dashboard.png`,
//! `docs/dashboard-list.png`, `docs/dashboard-queues.png`) and sends a page's own form as a
//! browser does (its `Origin`, `Sec-Fetch-Site` and cookies).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::engine::{call, serve};

const DRIVER: &str = "/usr/bin/chromedriver";
const BROWSER: &str = "/usr/bin/chromium";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn text(client: &Client) -> String {
    client.find(Locator::Css("main")).await.unwrap().text().await.unwrap()
}

async fn script(client: &Client, code: &str) -> Value {
    client.execute(code, vec![]).await.unwrap()
}

#[test]
#[cfg_attr(
    not(browser),
    ignore = "needs /usr/bin/chromium and /usr/bin/chromedriver (Debian packages chromium, chromium-driver) when the tests are built"
)]
fn the_dashboard_shows_the_documented_example_and_a_running_process_live_and_its_forms_work() {
    let (dir, db) = crate::temp_db();
    crate::seed(&db);
    let server = serve(dir.path(), &db, &[]);
    let (_, started) = call(
        &server.base,
        "POST",
        "/v1/asyncprocesses",
        Some(
            json!({ "asyncProcessName": "External", "referenceId": "live", "items": (0..10).collect::<Vec<_>>() }),
        ),
    );
    let running = started["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();

    let port = free_port();
    let driver = Driver(
        Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": BROWSER, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"] }),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::native().capabilities(capabilities.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("chromedriver did not start: {error}"),
            }
        };

        // The list: both documented processes and the running one, under the totals.
        client.goto(&format!("{}/", server.base)).await.unwrap();
        let list = text(&client).await;
        for expected in ["9876543", "64221481", "12324", "Bulk CPQ", &running, "1 Success", "Finished in the last 15 minutes"] {
            assert!(list.contains(expected), "{expected} missing from the list:\n{list}");
        }
        // It refreshes itself: a process started meanwhile shows up without a reload.
        script(&client, "window.stayed = 'yes'; return null;").await;
        let (_, later) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let body = json!({ "asyncProcessName": "External", "referenceId": "later", "items": [1] });
                    call(&server.base, "POST", "/v1/asyncprocesses", Some(body))
                })
                .join()
                .unwrap()
        });
        let later = later["AsyncProcessStatus"][0]["asyncProcessId"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = script(&client, "return [document.querySelector('main').innerText, window.stayed || null];").await;
            if seen[0].as_str().unwrap_or_default().contains(&later) && seen[1] == json!("yes") {
                break;
            }
            assert!(Instant::now() < deadline, "the list did not refresh in place: {seen}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let png = client.screenshot().await.unwrap();
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard-list.png"), png).unwrap();

        // The documented example's process page: steps, counts, failure codes and messages.
        client.goto(&format!("{}/processes/9876543", server.base)).await.unwrap();
        let page = text(&client).await;
        for expected in ["Validate", "Price", "6 / 6", "3 / 6", "5001", "Invalid status", "5004", "Missing data", "InProgress"] {
            assert!(page.contains(expected), "{expected} missing from the process page:\n{page}");
        }
        // A failed step's bar is drawn red, not in the platform's blue.
        let red = script(
            &client,
            "return [...document.querySelectorAll('progress.Failed')].map(b => getComputedStyle(b).accentColor);",
        )
        .await;
        assert_eq!(red, json!(["rgb(179, 38, 30)"]), "the failed step's bar");
        let png = client.screenshot().await.unwrap();
        let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard.png");
        std::fs::write(shot, png).unwrap();

        // A running process: its bar advances from the event stream, without a reload.
        client.goto(&format!("{}/processes/{running}", server.base)).await.unwrap();
        script(&client, "window.stayed = 'yes'; return null;").await;
        assert_eq!(script(&client, "return document.getElementById('bar-0').value;").await, json!(0));
        // A worker finishes one task of two: blocking HTTP, so on a thread of its own.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let (_, claimed) = call(
                        &server.base,
                        "POST",
                        "/v1/tasks/claim",
                        Some(json!({ "queue": "work", "workerId": "browser-test", "maxTasks": 1 })),
                    );
                    let task = &claimed["tasks"][0];
                    let indices: Vec<Value> = task["items"].as_array().unwrap().iter().map(|i| i["index"].clone()).collect();
                    let (status, _) = call(
                        &server.base,
                        "POST",
                        &format!("/v1/tasks/{}/complete", task["taskId"]),
                        Some(json!({ "leaseToken": task["leaseToken"], "successfully": indices })),
                    );
                    assert_eq!(status, 200);
                })
                .join()
                .unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = script(&client, "return [document.getElementById('bar-0').value, window.stayed || null];").await;
            if seen == json!([5, "yes"]) {
                break;
            }
            assert!(Instant::now() < deadline, "the bar did not advance in place: {seen}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(text(&client).await.contains("5 / 10"));

        // The queues page: the other task, leased by a worker that holds it.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let claim = json!({ "queue": "work", "workerId": "pricing-worker-1", "maxTasks": 1 });
                    let (status, claimed) = call(&server.base, "POST", "/v1/tasks/claim", Some(claim));
                    assert_eq!((status, claimed["tasks"].as_array().map(Vec::len)), (200, Some(1)), "{claimed}");
                })
                .join()
                .unwrap();
        });
        client.goto(&format!("{}/queues", server.base)).await.unwrap();
        let queues = text(&client).await;
        for expected in ["queue:work", "pricing-worker-1", "s ago"] {
            assert!(queues.contains(expected), "{expected} missing from the queues page:\n{queues}");
        }
        let png = client.screenshot().await.unwrap();
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dashboard-queues.png"), png).unwrap();
        client.goto(&format!("{}/processes/{running}", server.base)).await.unwrap();

        // The page's own form, as a person sends it: Cancel posts back to this server (under the
        // pages' `Referrer-Policy: no-referrer` Chromium says `Origin: null`, with
        // `Sec-Fetch-Site: same-origin`) and lands on the process's page again, aborted.
        client.find(Locator::Css("form[action$='/cancel'] button")).await.unwrap().click().await.unwrap();
        let path = format!("/processes/{running}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = client
                .execute(
                    "const s = document.getElementById('status'), m = document.querySelector('main');\
                     return [location.pathname, s ? s.textContent : null, m ? m.innerText : null];",
                    vec![],
                )
                .await;
            // Mid-navigation the script may find no document to run in.
            if let Ok(seen) = &seen
                && seen[0] == json!(path)
                && seen[1] == json!("Aborted")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the Cancel form did not go through: {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = std::thread::scope(|scope| {
            scope.spawn(|| call(&server.base, "GET", &format!("/v1/asyncprocesses/{running}"), None).1).join().unwrap()
        });
        assert_eq!(status["AsyncProcessStatus"][0]["status"], "Aborted", "{status}");
        client.close().await.unwrap();
    });
    drop(driver);
}
