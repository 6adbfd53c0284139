//! `cargo xtask measure-engine`: throughput of a 2-step `noop` process run by the real engine
//! (no HTTP in the way), in items per second per step: on a temporary SQLite database, or on a
//! fresh PostgreSQL database with one or more engine nodes, each with its own pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_engine::Settings;
use async_engine_domain::{
    Detail, IdKind, LookupId, NewProcess, ProcessId, ProcessStore, RawJson, ReferenceId, Status, StatusQuery,
    StatusReader, TenantId,
};
use async_engine_engine::{EngineConfig, Handlers, Waker, now_micros};
use async_engine_persistence::Store;
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

pub fn run(
    items: u32,
    workers: usize,
    chunk: u32,
    postgres: Option<String>,
    nodes: usize,
) -> anyhow::Result<()> {
    let measured = measure(items, workers, chunk, postgres.as_deref(), nodes)?;
    eprintln!(
        "stored {items} items in {:.2?} ({:.0} items/s)",
        measured.stored,
        f64::from(items) / measured.stored.as_secs_f64()
    );
    eprintln!(
        "ran 2 noop steps over {items} items on {} with {} node(s) of {workers} workers, chunk {chunk}: \
         {:.2?}, {:.0} items/s per step ({:.0} outcomes/s)",
        if postgres.is_some() { "PostgreSQL" } else { "SQLite" },
        nodes.max(1),
        measured.ran,
        measured.per_step,
        2.0 * measured.per_step
    );
    Ok(())
}

/// What one run of the engine took.
pub struct Measured {
    /// Storing the process.
    pub stored: Duration,
    /// Running both steps, start to Success.
    pub ran: Duration,
    pub per_step: f64,
}

/// One 2-step `noop` process of `items` run by the engine in this process (no HTTP), on a
/// temporary SQLite database or a fresh database of the PostgreSQL server `postgres`.
pub fn measure(
    items: u32,
    workers: usize,
    chunk: u32,
    postgres: Option<&str>,
    nodes: usize,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let (url, scratch) = match postgres {
        Some(server) => {
            let scratch = Scratch::create(server)?;
            (scratch.url.clone(), Some(scratch))
        }
        None => {
            (dir.path().join("engine.db").to_str().context("temporary path is not UTF-8")?.to_owned(), None)
        }
    };
    let store = Store::open(&url, 8)?;
    store.migrate()?;
    let mut definition = Settings::from_env(None)?
        .definitions()?
        .into_iter()
        .find(|d| d.name == "Noop")
        .context("config/default.toml defines no Noop process")?;
    for step in &mut definition.steps {
        step.chunk_size = chunk;
    }
    let started = Instant::now();
    let new = NewProcess {
        tenant: TenantId::default_tenant(),
        async_process_id: ProcessId::new("measure")?,
        reference_id: ReferenceId::new("measure")?,
        definition,
        items: (0..items).map(|i| RawJson::from_value(&serde_json::json!({ "n": i }))).collect(),
        additional_data: RawJson::empty_object(),
        idempotency_key: None,
        callback_url: None,
        now_micros: now_micros(),
        start_at_micros: None,
        priority: 0,
    };
    store.start(&new)?;
    let stored = started.elapsed();
    let config = EngineConfig {
        workers,
        lease: Duration::from_secs(60),
        idle_poll: Duration::from_millis(20),
        batch: 4,
        node: "measure".into(),
    };
    // Each node its own pool, as separate servers would have.
    let mut running = Vec::new();
    for node in 0..nodes.max(1) {
        let pool = if node == 0 { store.clone() } else { Store::open(&url, 8)? };
        let config = EngineConfig { node: format!("node{node}"), ..config.clone() };
        running.push(async_engine_engine::start(
            Arc::new(pool),
            Handlers::builtin(),
            config,
            Waker::default(),
        )?);
    }
    let query = StatusQuery {
        tenant: TenantId::default_tenant(),
        id: LookupId::new("measure")?,
        kind: IdKind::AsyncProcessId,
        detail: Detail::Process,
    };
    let run_started = Instant::now();
    loop {
        let status = store.find_status(&query)?.first().map(|p| p.status);
        if status.is_some_and(Status::is_final) {
            anyhow::ensure!(status == Some(Status::Success), "the process ended {status:?}");
            break;
        }
        anyhow::ensure!(run_started.elapsed() < Duration::from_secs(3_600), "still running after an hour");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ran = run_started.elapsed();
    for node in running {
        node.stop();
    }
    let per_step = f64::from(items) / ran.as_secs_f64();
    drop(store);
    drop(scratch);
    Ok(Measured { stored, ran, per_step })
}

/// A PostgreSQL database made for one measurement and dropped after it.
pub struct Scratch {
    server: String,
    name: String,
    pub url: String,
}

impl Scratch {
    pub fn create(server: &str) -> anyhow::Result<Self> {
        // Several may be in use at once within one run (the bench's own and its peers').
        static MADE: AtomicU32 = AtomicU32::new(0);
        let name = format!("ae_measure_{}_{}", std::process::id(), MADE.fetch_add(1, Ordering::Relaxed));
        let mut admin = PgConnection::establish(server).context("--postgres")?;
        // Two calls: PostgreSQL runs a multi-statement string as one transaction, which
        // these statements refuse.
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let (base, _) = server.rsplit_once('/').context("--postgres: no database in the URL")?;
        Ok(Self { server: server.to_owned(), url: format!("{base}/{name}"), name })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.server) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}
