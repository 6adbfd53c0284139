//! `cargo xtask measure-waiting`: what clients waiting on one running process cost the
//! database. A real server (in this process, on a temporary SQLite file) answers status reads
//! while a driver completes one task of a running process every 100 ms; repository reads are
//! counted per second, for a handful of plain pollers and for growing numbers of long-polls.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_engine_api::{ApiConfig, AppState, Auth, CallbackPolicy, StatusLimiter, Watcher};
use async_engine_domain::{
    ClaimRequest, FailurePolicy, Handler, NewProcess, ProcessDefinition, ProcessId, ProcessStatus,
    ProcessStore, RawJson, ReferenceId, RepositoryError, StatusQuery, StatusReader, StepDefinition,
    TaskReport, TaskStore, TenantId,
};
use async_engine_engine::now_micros;
use async_engine_persistence::Store;

/// Counts what the API asks of storage.
struct Counting {
    store: Store,
    answers: AtomicU64,
    marks: AtomicU64,
}

impl StatusReader for Counting {
    fn find_status(&self, query: &StatusQuery) -> Result<Vec<ProcessStatus>, RepositoryError> {
        self.answers.fetch_add(1, Ordering::Relaxed);
        self.store.find_status(query)
    }

    fn change_marks(&self, query: &StatusQuery) -> Result<Vec<(i64, i64)>, RepositoryError> {
        self.marks.fetch_add(1, Ordering::Relaxed);
        self.store.change_marks(query)
    }
}

enum Clients {
    /// Plain reads, each client once per interval.
    Polling { clients: usize, every: Duration },
    /// `waitSeconds=30` with the last ETag, asked again as soon as answered.
    LongPolling { clients: usize },
}

pub fn run(clients: Vec<usize>, seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("waiting.db").to_str().context("temporary path")?, 8)?;
    store.migrate()?;
    let counting =
        Arc::new(Counting { store: store.clone(), answers: AtomicU64::new(0), marks: AtomicU64::new(0) });
    let definition = ProcessDefinition {
        name: "Measured".into(),
        steps: vec![StepDefinition {
            name: "Work".into(),
            handler: Handler::Queue("measure".into()),
            chunk_size: 10,
            max_attempts: 3,
            timeout_secs: 600,
            on_item_failure: FailurePolicy::Skip,
            tolerance: Default::default(),
            max_in_flight: None,
        }],
        callback_url: None,
    };
    store.start(&NewProcess {
        tenant: TenantId::default_tenant(),
        async_process_id: ProcessId::new("watched")?,
        reference_id: ReferenceId::new("watched")?,
        definition: definition.clone(),
        items: (0..100_000).map(|n| RawJson::from_value(&serde_json::json!({ "n": n }))).collect(),
        additional_data: RawJson::empty_object(),
        idempotency_key: None,
        callback_url: None,
        now_micros: now_micros(),
        start_at_micros: None,
        priority: 0,
    })?;
    let config = ApiConfig::default();
    let state = AppState {
        status: counting.clone(),
        processes: Arc::new(store.clone()),
        tasks: Arc::new(store.clone()),
        deliveries: Arc::new(store.clone()),
        ops: Arc::new(store.clone()),
        definitions: Arc::new(vec![definition]),
        callbacks: Arc::new(CallbackPolicy::default()),
        watcher: Watcher::new(config.watch_interval),
        answers: Arc::default(),
        limiter: Arc::new(StatusLimiter::new(0)),
        auth: Arc::new(Auth::disabled()),
        on_new_work: Arc::new(|| {}),
        claims: Default::default(),
        guard: Arc::default(),
        config,
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let base = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match async_engine_api::serve(listener, state, Duration::from_secs(1), 10_000) {
                Ok(server) => server.await,
                Err(error) => Err(error),
            }
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || drive(&store, &stop))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let url = format!("{base}/v1/asyncprocesses/watched?itemsList=false");
    let mut cases = vec![
        Clients::Polling { clients: 5, every: Duration::from_secs(1) },
        Clients::Polling { clients: 5, every: ApiConfig::default().watch_interval },
    ];
    cases.extend(clients.into_iter().map(|clients| Clients::LongPolling { clients }));
    eprintln!(
        "A task of a running process completes every 100 ms; watch interval {} ms; {seconds} s per case.",
        ApiConfig::default().watch_interval.as_millis()
    );
    eprintln!("| clients | answer reads/s | change-mark reads/s | answers sent/s |");
    eprintln!("| --- | ---: | ---: | ---: |");
    for case in cases {
        let label = match &case {
            Clients::Polling { clients, every } => {
                format!("{clients} pollers, every {} ms", every.as_millis())
            }
            Clients::LongPolling { clients } => format!("{clients} long-polls"),
        };
        let sent = Arc::new(AtomicU64::new(0));
        // Let waiters settle (first reads, watch start) before counting.
        let measure = runtime.block_on(run_clients(
            &url,
            case,
            Duration::from_secs(seconds),
            sent.clone(),
            &counting,
        ))?;
        let per_second = |n: u64| n as f64 / measure.as_secs_f64();
        eprintln!(
            "| {label} | {:.1} | {:.1} | {:.1} |",
            per_second(counting.answers.swap(0, Ordering::Relaxed)),
            per_second(counting.marks.swap(0, Ordering::Relaxed)),
            per_second(sent.load(Ordering::Relaxed)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    driver.join().map_err(|_| anyhow::anyhow!("the driver panicked"))??;
    Ok(())
}

/// Completes one task every 100 ms, so the process changes ten times a second.
fn drive(store: &Store, stop: &AtomicBool) -> anyhow::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let request = ClaimRequest {
            tenant: None,
            queues: vec!["queue:measure".into()],
            worker_id: "driver".into(),
            max_tasks: 1,
            lease_micros: 60_000_000,
            now_micros: now_micros(),
        };
        for task in store.claim(&request)? {
            let successes = task.items.iter().map(|(i, _)| *i).collect();
            store
                .complete(
                    None,
                    task.task_id,
                    &task.lease_token,
                    &TaskReport { successes, failures: vec![] },
                    now_micros(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs the clients for a warm-up second, zeroes the counters, then runs them for `length`;
/// returns the counted span.
async fn run_clients(
    url: &str,
    case: Clients,
    length: Duration,
    sent: Arc<AtomicU64>,
    counting: &Counting,
) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let end = tokio::time::Instant::now() + length + Duration::from_secs(1);
    let mut tasks = Vec::new();
    let (count, every) = match case {
        Clients::Polling { clients, every } => (clients, Some(every)),
        Clients::LongPolling { clients } => (clients, None),
    };
    for _ in 0..count {
        let (client, url, sent) = (client.clone(), url.to_owned(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut etag: Option<String> = None;
            while tokio::time::Instant::now() < end {
                let mut request =
                    client.get(if every.is_none() { format!("{url}&waitSeconds=30") } else { url.clone() });
                if every.is_none()
                    && let Some(etag) = &etag
                {
                    request = request.header("If-None-Match", etag);
                }
                let answer = tokio::time::timeout_at(end, request.send()).await;
                let Ok(Ok(response)) = answer else { break };
                if response.status().as_u16() != 304 {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
                if let Some(every) = every {
                    tokio::time::sleep(every).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.answers.store(0, Ordering::Relaxed);
    counting.marks.store(0, Ordering::Relaxed);
    sent.store(0, Ordering::Relaxed);
    let started = Instant::now();
    for task in tasks {
        task.await?;
    }
    Ok(started.elapsed())
}
