//! `cargo xtask bench`: the performance budget (issue 8), every figure a ratio against a
//! baseline measured in the same run on the same machine, on SQLite and, with
//! `TEST_POSTGRES_URL` (or `--postgres`), on PostgreSQL. Writes `BENCHMARKS.md` and exits
//! non-zero when a target is missed by more than the noise measured.

mod bulk;
mod own_work;
mod peers;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_engine::Settings;
use async_engine_api::{ApiConfig, AppState, Auth, CallbackPolicy};
use async_engine_domain::{
    Detail, FailurePolicy, Handler, IdKind, LookupId, NewProcess, ProcessDefinition, ProcessId, ProcessStore,
    RawJson, ReferenceId, SnapshotWriter, Status, StatusQuery, StatusReader, StepDefinition, TenantId,
};
use async_engine_engine::{EngineConfig, Handlers, Waker, now_micros};
use async_engine_persistence::Store;
use diesel::prelude::*;
use serde_json::{Value, json};

/// Where BENCHMARKS.md's hand-written part begins: a full run rewrites what is above it.
const KEPT: &str = "<!-- Written by hand below this line; cargo xtask bench keeps it. -->";

/// The new report above the old file's hand-written part (the profiles of what bounds the
/// rows that miss), or above an empty one with its marker.
fn with_kept(report: &str, old: Option<&str>) -> String {
    let kept = old.and_then(|old| old.find(KEPT).map(|at| &old[at..])).unwrap_or(KEPT);
    format!("{}\n\n{}\n", report.trim_end(), kept.trim_end())
}

/// Items of the process B3 creates, B4 records and the raw loop inserts.
const ITEMS: u32 = 100_000;
/// Items of the process B2, B5, B6 and B7 run or read.
const LARGE: u32 = 1_000_000;
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}

struct Row {
    id: &'static str,
    backend: &'static str,
    measured: String,
    baseline: String,
    ratio: f64,
    noise: f64,
    target: Target,
}

impl Row {
    fn met(&self) -> bool {
        match self.target {
            Target::AtLeast(t) => self.ratio >= t * (1.0 - self.noise),
            Target::AtMost(t) => self.ratio <= t * (1.0 + self.noise),
        }
    }
}

/// Median and relative spread ((max - min) / median) of a few runs.
fn spread(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let noise = if median > 0.0 { (values[values.len() - 1] - values[0]) / median } else { 0.0 };
    (median, noise)
}

/// Rows measured by `backend`'s core run (the own-work rows come from `own_work`).
const CORE: [&str; 8] = ["B1", "B1a", "B2", "B3", "B4", "B5", "B6", "B7"];
const OWN: [&str; 2] = ["B11", "B12"];
const BULK: [&str; 3] = ["B8", "B9", "B10"];
const PEERS: [&str; 4] = ["P1", "P2", "P3", "P4"];

pub fn run(postgres: Option<String>, only: &[String]) -> anyhow::Result<bool> {
    let known = |r: &String| [&CORE[..], &BULK, &OWN, &PEERS].iter().any(|set| set.contains(&r.as_str()));
    if let Some(unknown) = only.iter().find(|r| !known(r)) {
        bail!(
            "--only: no row {unknown} (rows: {}, {}, {}, {})",
            CORE.join(", "),
            BULK.join(", "),
            OWN.join(", "),
            PEERS.join(", ")
        );
    }
    if cfg!(debug_assertions) {
        // Figures of an unoptimised build say nothing: run the release build instead.
        let mut args =
            vec!["run".to_owned(), "--quiet".into(), "--release".into(), "-p".into(), "xtask".into()];
        args.extend(["--".into(), "bench".into()]);
        if let Some(url) = &postgres {
            args.extend(["--postgres".into(), url.clone()]);
        }
        if !only.is_empty() {
            args.extend(["--only".into(), only.join(",")]);
        }
        let status = Command::new(env!("CARGO")).args(&args).status().context("running the release build")?;
        return Ok(status.success());
    }
    let wanted = |set: &[&str]| only.is_empty() || only.iter().any(|r| set.contains(&r.as_str()));
    if wanted(&CORE) {
        ensure_wrk()?;
    }
    let started = Instant::now();
    build_server()?;
    let mut rows = Vec::new();
    eprintln!("== SQLite");
    let dir = tempfile::tempdir()?;
    let sqlite = dir.path().join("bench.db");
    let measure = |name: &'static str, url: &str, pg_server: Option<&str>| -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        if wanted(&CORE) {
            rows.extend(backend(name, url, pg_server)?);
        }
        if wanted(&BULK) {
            rows.extend(bulk::rows(name, url)?);
        }
        if wanted(&OWN) {
            rows.extend(own_work::rows(name, url)?);
        }
        if wanted(&PEERS) {
            rows.extend(peers::rows(name, url, pg_server)?);
        }
        rows.retain(|row| only.is_empty() || only.iter().any(|r| r == row.id));
        Ok(rows)
    };
    rows.extend(measure("SQLite", sqlite.to_str().context("temporary path")?, None)?);
    let postgres = postgres.or_else(|| std::env::var("TEST_POSTGRES_URL").ok());
    if let Some(server) = postgres {
        eprintln!("== PostgreSQL");
        let scratch = crate::engine::Scratch::create(&server)?;
        rows.extend(measure("PostgreSQL", &scratch.url, Some(&server))?);
    }
    let report = report(&rows, started.elapsed());
    if only.is_empty() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
        let old = std::fs::read_to_string(path).ok();
        std::fs::write(path, with_kept(&report, old.as_deref()))?;
    } else {
        eprintln!("(--only: BENCHMARKS.md is left as the last full run wrote it)");
    }
    eprintln!("{report}");
    Ok(rows.iter().all(Row::met))
}

fn ensure_wrk() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("installing wrk (Debian package) for the HTTP load");
    let ok = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk"])
        .status()?
        .success();
    if !ok {
        bail!("wrk is needed for B1 and B2; install it (apt-get install wrk)");
    }
    Ok(())
}

fn build_server() -> anyhow::Result<()> {
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "-p", "async-engine"])
        .status()?
        .success();
    if !ok {
        bail!("building the release server for B7 failed");
    }
    Ok(())
}

fn server_binary() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/async-engine").to_owned()
}

/// Definitions of the run: 2-step noop (B5) and one external step (B4).
fn definitions() -> anyhow::Result<Vec<ProcessDefinition>> {
    let mut all = Settings::from_env(None)?.definitions()?;
    for definition in &mut all {
        for step in &mut definition.steps {
            step.chunk_size = 500;
        }
    }
    all.push(ProcessDefinition {
        name: "Bench".into(),
        steps: vec![StepDefinition {
            name: "Work".into(),
            handler: Handler::Queue("bench".into()),
            chunk_size: 500,
            max_attempts: 3,
            timeout_secs: 600,
            on_item_failure: FailurePolicy::Skip,
            tolerance: Default::default(),
            max_in_flight: None,
        }],
        callback_url: None,
    });
    Ok(all)
}

/// A server in this process over `store`, with one more route: the same bytes as the status
/// answer, from memory (B1's baseline).
fn serve(store: &Store, body: Arc<Vec<u8>>) -> anyhow::Result<String> {
    let config =
        ApiConfig { max_body_bytes: 64 << 20, max_items_per_response: 10_000_000, ..ApiConfig::default() };
    let state = AppState::new(
        store.clone(),
        definitions()?,
        CallbackPolicy::default(),
        Auth::disabled(),
        Arc::new(|| {}),
        config,
    );
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = actix_web::HttpServer::new(move || {
                let body = body.clone();
                // Matched first, so that routing costs the baseline the least.
                async_engine_api::app_with(state.clone(), move |routes| {
                    routes.route(
                        "/bench/static",
                        actix_web::web::get().to(move || {
                            let body = body.clone();
                            async move {
                                actix_web::HttpResponse::Accepted()
                                    .content_type("application/json")
                                    .body(body.to_vec())
                            }
                        }),
                    );
                })
            })
            .listen(listener)?
            .run();
            server.await
        })
    });
    Ok(base)
}

/// Requests per second over 64 connections for `seconds`, each request with `headers`.
fn wrk(url: &str, seconds: u64, headers: &[&str]) -> anyhow::Result<f64> {
    let output = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s")])
        .args(headers.iter().flat_map(|header| ["-H", header]))
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let non_2xx = text.lines().find(|l| l.contains("Non-2xx"));
    if let Some(line) = non_2xx {
        bail!("wrk saw failures on {url}: {line}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

fn backend(name: &'static str, url: &str, pg_server: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let _ = pg_server;
    let store = Store::open(url, 8)?;
    store.migrate()?;
    for snapshot in async_engine::seed::documented_snapshots(now_micros())? {
        store.import(&TenantId::default_tenant(), &snapshot)?;
    }
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build()?;
    // The bytes the static route repeats: the answer itself.
    let warm = format!("{}/v1/asyncprocesses/12324", serve(&store, Arc::new(Vec::new()))?);
    let body = client.get(&warm).send()?.bytes()?.to_vec();
    let base = serve(&store, Arc::new(body))?;
    let status_url = format!("{base}/v1/asyncprocesses/12324");
    let static_url = format!("{base}/bench/static");
    let mut rows = Vec::new();

    // B1: the status answer against the same bytes from memory, every read validated (B1)
    // and from callers that accept an answer up to `api.watch_interval_ms` old (B1a).
    let (mut ratios, mut accepting_ratios) = (Vec::new(), Vec::new());
    let (mut alone, mut accepting) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let status = wrk(&status_url, 4, &[])?;
        let fixed = wrk(&static_url, 4, &[])?;
        let accepted = wrk(&status_url, 4, &["Cache-Control: max-age=1"])?;
        alone.push(status);
        ratios.push(status / fixed);
        accepting.push(accepted);
        accepting_ratios.push(accepted / fixed);
    }
    let (b1, b1_noise) = spread(ratios);
    let (b1_rps, _) = spread(alone.clone());
    let (b1a, b1a_noise) = spread(accepting_ratios);
    let (b1a_rps, _) = spread(accepting);
    eprintln!("B1 {name}: {b1:.2} ({b1_rps:.0} req/s); B1a {b1a:.2} ({b1a_rps:.0} req/s)");
    rows.push(Row {
        id: "B1",
        backend: name,
        measured: format!("{b1_rps:.0} req/s"),
        baseline: format!("{:.0} req/s (static)", b1_rps / b1),
        ratio: b1,
        noise: b1_noise,
        target: Target::AtLeast(0.40),
    });
    rows.push(Row {
        id: "B1a",
        backend: name,
        measured: format!("{b1a_rps:.0} req/s (Cache-Control: max-age=1)"),
        baseline: format!("{:.0} req/s (static)", b1a_rps / b1a),
        ratio: b1a,
        noise: b1a_noise,
        target: Target::AtLeast(0.40),
    });

    // The raw loop: the same item rows, one prepared statement, one transaction.
    let mut raws = Vec::new();
    for round in 0..ROUNDS {
        raws.push(raw_loop(&store, url, round)?);
    }
    let (raw, raw_noise) = spread(raws);
    eprintln!("raw loop {name}: {raw:.0} rows/s");

    // B3: POST to committed, 100,000 items.
    let items: Vec<Value> = (0..ITEMS).map(|n| json!({ "n": n })).collect();
    let mut creates = Vec::new();
    for round in 0..ROUNDS {
        let body =
            json!({ "asyncProcessName": "Bench", "referenceId": format!("b3-{round}"), "items": items });
        let begun = Instant::now();
        let response = client.post(format!("{base}/v1/asyncprocesses")).json(&body).send()?;
        anyhow::ensure!(response.status().as_u16() == 202, "B3: {}", response.text()?);
        creates.push(f64::from(ITEMS) / begun.elapsed().as_secs_f64());
    }
    let (b3, b3_noise) = spread(creates);
    rows.push(Row {
        id: "B3",
        backend: name,
        measured: format!("{b3:.0} items/s"),
        baseline: format!("{raw:.0} rows/s (raw loop)"),
        ratio: b3 / raw,
        noise: b3_noise.max(raw_noise),
        target: Target::AtLeast(0.25),
    });

    // B4: 8 external workers complete every task of those processes through the API.
    let begun = Instant::now();
    let recorded = workers(&base, 8)?;
    let b4 = recorded as f64 / begun.elapsed().as_secs_f64();
    rows.push(Row {
        id: "B4",
        backend: name,
        measured: format!("{b4:.0} items/s ({recorded} outcomes)"),
        baseline: format!("{raw:.0} rows/s (raw loop)"),
        ratio: b4 / raw,
        noise: raw_noise,
        target: Target::AtLeast(0.25),
    });

    // B5: a 2-step noop process of 1,000,000 items, start to Success, alone.
    let ran = run_large(&store, "large", |_| Ok(()))?;
    let b5 = f64::from(LARGE) / ran.as_secs_f64();
    rows.push(Row {
        id: "B5",
        backend: name,
        measured: format!("{b5:.0} items/s per step ({ran:.1?} for 2 steps)"),
        baseline: format!("{raw:.0} rows/s (raw loop)"),
        ratio: b5 / raw,
        noise: raw_noise,
        target: Target::AtLeast(0.20),
    });

    // B2: B1 while another such process runs.
    let mut during = Vec::new();
    run_large(&store, "large-2", |finished| {
        while !finished.load(Ordering::SeqCst) && during.len() < ROUNDS {
            during.push(wrk(&status_url, 4, &[])?);
        }
        Ok(())
    })?;
    let (b2_rps, b2_noise) = spread(during);
    rows.push(Row {
        id: "B2",
        backend: name,
        measured: format!("{b2_rps:.0} req/s while the engine runs"),
        baseline: format!("{b1_rps:.0} req/s (B1 alone)"),
        ratio: b2_rps / b1_rps,
        noise: b2_noise.max(b1_noise),
        target: Target::AtLeast(0.60),
    });

    // B6: the status without item lists, large against small.
    let mut times = Vec::new();
    for (id, label) in [("large", "large"), ("9876543", "small")] {
        let query = lookup(id, Detail::Steps)?;
        let mut samples = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            store.find_status(&query)?;
            samples.push(t.elapsed().as_secs_f64());
        }
        let (median, noise) = spread(samples[..].chunks(100).map(|c| spread(c.to_vec()).0).collect());
        eprintln!("B6 {name} {label}: {:.1} µs", median * 1e6);
        times.push((median, noise));
    }
    rows.push(Row {
        id: "B6",
        backend: name,
        measured: format!("{:.1} µs (1,000,000 items)", times[0].0 * 1e6),
        baseline: format!("{:.1} µs (6 items)", times[1].0 * 1e6),
        ratio: times[0].0 / times[1].0,
        noise: times[0].1.max(times[1].1),
        target: Target::AtMost(1.5),
    });

    // B7: the real server's peak memory while the items call pages through the large step.
    let (idle, peak) = page_memory(url)?;
    rows.push(Row {
        id: "B7",
        backend: name,
        measured: format!("{:.1} MiB peak", peak as f64 / 1024.0),
        baseline: format!("{:.1} MiB idle", idle as f64 / 1024.0),
        ratio: (peak.saturating_sub(idle)) as f64 / 1024.0,
        noise: 0.0,
        target: Target::AtMost(64.0),
    });
    Ok(rows)
}

/// Runs a 2-step noop process of `LARGE` items through the engine (2 workers, 500 items per
/// task) to Success, calling `during` meanwhile with the flag that says it finished; returns
/// the time from the engine's start to Success.
fn run_large(
    store: &Store,
    id: &str,
    during: impl FnOnce(&AtomicBool) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let definition = definitions()?.into_iter().find(|d| d.name == "Noop").context("no Noop definition")?;
    store.start(&NewProcess {
        tenant: TenantId::default_tenant(),
        async_process_id: ProcessId::new(id)?,
        reference_id: ReferenceId::new(id)?,
        definition,
        items: (0..LARGE).map(|n| RawJson::from_value(&json!({ "n": n }))).collect(),
        additional_data: RawJson::empty_object(),
        idempotency_key: None,
        callback_url: None,
        now_micros: now_micros(),
        start_at_micros: None,
        priority: 0,
    })?;
    let engine = async_engine_engine::start(
        Arc::new(store.clone()),
        Handlers::builtin(),
        EngineConfig {
            workers: 2,
            lease: Duration::from_secs(120),
            idle_poll: Duration::from_millis(20),
            batch: 4,
            node: "bench".into(),
        },
        Waker::default(),
    )?;
    let begun = Instant::now();
    let finished = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, finished, query) = (store.clone(), finished.clone(), lookup(id, Detail::Process)?);
        std::thread::spawn(move || -> anyhow::Result<Duration> {
            loop {
                let status = store.find_status(&query)?.first().map(|p| p.status);
                if status.is_some_and(Status::is_final) {
                    let ran = begun.elapsed();
                    finished.store(true, Ordering::SeqCst);
                    anyhow::ensure!(status == Some(Status::Success), "the process ended {status:?}");
                    return Ok(ran);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let measured = during(&finished);
    let ran = watcher.join().map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
    engine.stop();
    measured?;
    ran
}

fn lookup(id: &str, detail: Detail) -> anyhow::Result<StatusQuery> {
    Ok(StatusQuery {
        tenant: TenantId::default_tenant(),
        id: LookupId::new(id)?,
        kind: IdKind::AsyncProcessId,
        detail,
    })
}

/// Inserts `ITEMS` item rows with one prepared statement in one transaction, through the same
/// database library, under a process made for it; returns rows per second.
fn raw_loop(store: &Store, url: &str, round: usize) -> anyhow::Result<f64> {
    use async_engine_persistence::schema::{items, processes};
    let definition = definitions()?.into_iter().find(|d| d.name == "Bench").context("no Bench definition")?;
    let id = format!("raw-{round}");
    store.start(&NewProcess {
        tenant: TenantId::default_tenant(),
        async_process_id: ProcessId::new(id.clone())?,
        reference_id: ReferenceId::new("raw")?,
        definition,
        items: Vec::new(),
        additional_data: RawJson::empty_object(),
        idempotency_key: None,
        callback_url: None,
        now_micros: now_micros(),
        start_at_micros: None,
        priority: 0,
    })?;
    let values: Vec<String> = (0..ITEMS).map(|n| json!({ "n": n }).to_string()).collect();
    macro_rules! insert_all {
        ($conn:expr) => {{
            let conn = $conn;
            let process: i64 = processes::table
                .filter(processes::async_process_id.eq(&id))
                .select(processes::id)
                .first(conn)?;
            let begun = Instant::now();
            conn.transaction(|conn| {
                for (n, value) in values.iter().enumerate() {
                    diesel::insert_into(items::table)
                        .values((
                            items::process_id.eq(process),
                            items::item_index.eq(n as i64 + 1),
                            items::value.eq(value),
                        ))
                        .execute(conn)?;
                }
                diesel::QueryResult::Ok(())
            })?;
            begun.elapsed()
        }};
    }
    let took = if url.starts_with("postgres") {
        insert_all!(&mut PgConnection::establish(url)?)
    } else {
        let mut conn = SqliteConnection::establish(url)?;
        diesel::connection::SimpleConnection::batch_execute(
            &mut conn,
            "PRAGMA busy_timeout = 30000; PRAGMA synchronous = NORMAL;",
        )?;
        insert_all!(&mut conn)
    };
    Ok(f64::from(ITEMS) / took.as_secs_f64())
}

/// `threads` workers claiming and completing every `queue:bench` task through the API, with
/// the project's Rust client as a worker written in Rust would (items kept as raw JSON, not
/// parsed into maps the worker would never look at); returns the outcomes recorded.
fn workers(base: &str, threads: usize) -> anyhow::Result<u64> {
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let client = async_engine_client::Client::new(base);
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let client = client?;
                let claim = async_engine_client::Claim {
                    queue: "bench".into(),
                    worker_id: format!("w{n}"),
                    max_tasks: 1,
                    lease_seconds: None,
                    wait_seconds: 0,
                };
                let mut recorded = 0;
                loop {
                    let Some(task) = client.claim(&claim)?.pop() else { return Ok(recorded) };
                    recorded += task.items.len() as u64;
                    client.complete(&task, &async_engine_client::Outcomes::all_succeeded(&task))?;
                }
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(total)
}

fn vm_hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// The release server on `url`: its peak resident memory idle, then after paging through the
/// large process's first step with the items call.
/// A child process killed when dropped, so that a failed bench leaves nothing running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release server over `url` (with `config` layered on the defaults, and `env`); its base URL.
fn release_server(
    url: &str,
    config: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> anyhow::Result<(Killed, String)> {
    let mut command = Command::new(server_binary());
    command.arg("serve");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .env("ASYNC_ENGINE__DATABASE__URL", url)
        .env("ASYNC_ENGINE__SERVER__PORT", "0")
        .env("ASYNC_ENGINE__RETENTION__DAYS", "0")
        .env("ASYNC_ENGINE__LIMITS__MAX_BODY_BYTES", (64 << 20).to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let child = Killed(child);
    // Drained for the server's whole life: a closed pipe would fail its logging.
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let base = log
        .iter()
        .find_map(|line| {
            line.split("listening on ")
                .nth(1)
                .map(|rest| rest.split_whitespace().next().unwrap_or("").trim_matches('"').to_owned())
        })
        .context("the server did not start")?;
    Ok((child, base))
}

fn page_memory(url: &str) -> anyhow::Result<(u64, u64)> {
    let (server, base) = release_server(url, None, &[("ASYNC_ENGINE__ENGINE__ENABLED", "false")])?;
    let child = &server.0;
    let client = reqwest::blocking::Client::new();
    client.get(format!("{base}/v1/asyncprocesses/large?itemsList=false")).send()?;
    let idle = vm_hwm_kib(child.id())?;
    let mut cursor: Option<String> = None;
    let mut seen = 0_u64;
    loop {
        let after = cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page: Value = client
            .get(format!("{base}/v1/asyncprocesses/large/steps/0/items?limit=10000{after}"))
            .send()?
            .json()?;
        seen += page["items"].as_array().map_or(0, |i| i.len() as u64);
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    anyhow::ensure!(seen == u64::from(LARGE), "paged {seen} items, not {LARGE}");
    Ok((idle, vm_hwm_kib(child.id())?))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|m| m.trim().to_owned())))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {memory} memory")
}

fn report(rows: &[Row], took: Duration) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# Benchmarks\n");
    let _ = writeln!(
        text,
        "The last run of `cargo xtask bench` (release build), {}, on {}; it took {:.0} s. Each\n\
         figure is a ratio against a baseline measured in the same run, so that the machine's own\n\
         speed cancels out; noise is the relative spread of the repeated measurements, and a target\n\
         counts as missed only beyond it. Re-run with `cargo xtask bench` (PostgreSQL rows too with\n\
         `TEST_POSTGRES_URL` set, or `--postgres URL`); it installs `wrk` if it is missing.\n",
        chrono_now(),
        machine(),
        took.as_secs_f64()
    );
    let _ = writeln!(text, "| # | backend | measured | baseline | ratio | target | noise | met |");
    let _ = writeln!(text, "| --- | --- | --- | --- | ---: | --- | ---: | --- |");
    for row in rows {
        let target = match row.target {
            Target::AtLeast(t) => format!("≥ {t}"),
            Target::AtMost(t) if row.id == "B7" || row.id == "B9" => format!("≤ +{t} MiB"),
            Target::AtMost(t) => format!("≤ {t}×"),
        };
        let ratio = if row.id == "B7" || row.id == "B9" {
            format!("+{:.1} MiB", row.ratio)
        } else {
            format!("{:.2}", row.ratio)
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {:.0}% | {} |",
            row.id,
            row.backend,
            row.measured,
            row.baseline,
            ratio,
            target,
            row.noise * 100.0,
            if row.met() { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(
        text,
        "\nB1: `GET /v1/asyncprocesses/12324` (full, verbose) with wrk, 2 threads, 64 connections,\n\
         against a route of the same server answering the same bytes from memory; each read is\n\
         validated by its change marks. B1a: the same with `Cache-Control: max-age=1`, answered\n\
         from memory while the marks were found current within `api.watch_interval_ms` (250). B2: the same\n\
         while the engine runs B5's process. B3: `POST /v1/asyncprocesses` of {ITEMS} items, sent to\n\
         committed (202). B4: 8 workers claiming and completing 500-item tasks over HTTP with the project's Rust client (`crates/client`). B5: a\n\
         2-step `noop` process of {LARGE} items, start to Success, per step. The raw loop inserts\n\
         {ITEMS} item rows with one prepared statement in one transaction through the same database\n\
         library. B6: the status with `itemsList=false` on B5's process against the 6-item example\n\
         (median of medians). B7: the release server's peak resident memory (VmHWM) after paging\n\
         through step 0 of B5's process with the items call (10,000 per page), against its peak\n\
         when idle. B8: a streamed NDJSON start (`POST /v1/asyncprocesses`, application/x-ndjson)\n\
         of 1000000 items of about 100 bytes, first byte to committed (202), against the raw loop;\n\
         B9: the release server's peak resident memory after those starts against its peak when\n\
         idle; B10: the step's result file as CSV (every item, 1000000 rows) read to its end,\n\
         against one plain statement reading the same rows. B11 and B12: a team's own work on the release server, a 1-step process of\n\
         100000 items in 500-item tasks from the start's answer to Success, against the same\n\
         process on `builtin:noop`: B11 an `http` push step to a loopback endpoint answering every\n\
         index a success (4 in flight), B12 `async-engine worker --concurrency 4` running a\n\
         Python 3 program (`python3 -S`, the interpreter itself, not a version manager's shim) that\n\
         echoes every index as a success, a program start per task. P1-P4 (issue 17): a 2-step\n\
         process of 100000 items, one outcome row per item and step, run by the engine in-process\n\
         (2 workers, 500-item tasks; items/s per step: the items over the time both steps took)\n\
         against the same built on a job queue, with one job per 500-item chunk inserting its 500\n\
         rows in one statement, and with one job per item: P1 apalis 1.0 with its event-driven\n\
         SQLite storage (xtask/peers/apalis, 4 jobs at once, 2000 items per item), P2\n\
         graphile-worker 0.17.3 (Node, npm into target/peers/graphile; 24 concurrent jobs, local\n\
         queue of 500, completions batched, as its performance page tunes it; 20000 items per\n\
         item); P3 the same process through the release server's API (start, run, poll every\n\
         10 ms) against the engine alone; P4 the engine on 2 nodes (each its own pool) of one\n\
         PostgreSQL database against 1.\n\n\
         What bounds the rows that miss, with their profiles: below (written by hand, kept by each\n\
         run); why the figures are what they are: [ARCHITECTURE.md, How far it\n\
         scales](ARCHITECTURE.md#how-far-it-scales)."
    );
    text
}

fn chrono_now() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_rewrites_the_report_and_keeps_the_hand_written_part() {
        let old = format!("# old report\n| B1 | 0.1 |\n\n{KEPT}\n## What bounds\nprofiles\n");
        let new = with_kept("# new report\n| B1 | 0.5 |", Some(&old));
        assert_eq!(new, format!("# new report\n| B1 | 0.5 |\n\n{KEPT}\n## What bounds\nprofiles\n"));
        assert_eq!(with_kept("# r", None), format!("# r\n\n{KEPT}\n"), "a first run adds the marker");
        assert_eq!(with_kept("# r", Some("# no marker")), format!("# r\n\n{KEPT}\n"));
    }
}
