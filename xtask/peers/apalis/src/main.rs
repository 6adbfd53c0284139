//! The apalis side of `cargo xtask bench`'s peer row P1: the engine's workload (a 2-step
//! process over ITEMS items, one outcome row per item and step, step 1 queued once step 0 is
//! done) built the way a user would build it on apalis 1.0 with its SQLite storage.
//!
//!   apalis-peer DATABASE_FILE chunk|item ITEMS
//!
//! chunk: one job per 500 items, inserting its 500 outcome rows in one statement
//! (`json_each`); item: one job per item, inserting one row. The storage is apalis's
//! event-driven one, its database as `SqliteStorage::setup` makes it (WAL). Prints, as its last line, items per second per step as the
//! engine's measurements count it: the items over the time both steps took.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use apalis::prelude::*;
use apalis_sqlite::{Config, SqliteStorage};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::sync::Notify;

const CHUNK: usize = 500;
/// Jobs run at once, and fetched per poll.
const CONCURRENCY: usize = 4;
const BATCH: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chunk {
    step: i64,
    items: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    step: i64,
    item: i64,
}

/// Jobs finished so far, and a signal for the one waiting on them.
#[derive(Clone, Default)]
struct Done(Arc<(AtomicUsize, Notify)>);

impl Done {
    fn one(&self) {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        self.0.1.notify_one();
    }

    async fn until(&self, count: usize) {
        while self.0.0.load(Ordering::SeqCst) < count {
            self.0.1.notified().await;
        }
    }
}

async fn chunk(job: Chunk, pool: Data<SqlitePool>, done: Data<Done>) -> Result<(), BoxDynError> {
    let items = serde_json::to_string(&job.items)?;
    sqlx::query("INSERT INTO peer_outcomes (step, item) SELECT ?1, value FROM json_each(?2)")
        .bind(job.step)
        .bind(items)
        .execute(&*pool)
        .await?;
    done.one();
    Ok(())
}

async fn item(job: Item, pool: Data<SqlitePool>, done: Data<Done>) -> Result<(), BoxDynError> {
    sqlx::query("INSERT INTO peer_outcomes (step, item) VALUES (?1, ?2)")
        .bind(job.step)
        .bind(job.item)
        .execute(&*pool)
        .await?;
    done.one();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxDynError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, form, items] = args.as_slice() else {
        eprintln!("usage: apalis-peer DATABASE_FILE chunk|item ITEMS");
        std::process::exit(2);
    };
    let items: i64 = items.parse()?;
    // The event-driven storage: SQLite's update hook wakes the worker on every new job, where
    // the polling one would sleep between looks.
    let (pool, listener) = SqliteStorage::connect_with_callback(&format!("sqlite://{file}?mode=rwc"))?;
    SqliteStorage::setup(&pool).await?;
    sqlx::query("CREATE TABLE peer_outcomes (step INTEGER NOT NULL, item INTEGER NOT NULL, PRIMARY KEY (step, item)) WITHOUT ROWID")
        .execute(&pool)
        .await?;
    let done = Done::default();
    let config = Config::default().batch_size(BATCH);
    let started = Instant::now();
    match form.as_str() {
        "chunk" => {
            let mut sink = SqliteStorage::<Chunk>::new(&pool).with_config(config.clone());
            let worker = WorkerBuilder::new("peer-chunk")
                .backend(SqliteStorage::<Chunk>::new(&pool).with_config(config).with_callback(listener))
                .data(pool.clone())
                .data(done.clone())
                .concurrency(CONCURRENCY)
                .build(chunk);
            tokio::spawn(worker.run());
            let mut jobs = 0;
            for step in 0..2 {
                let chunks: Vec<Chunk> = (0..items)
                    .collect::<Vec<_>>()
                    .chunks(CHUNK)
                    .map(|c| Chunk { step, items: c.to_vec() })
                    .collect();
                jobs += chunks.len();
                sink.push_bulk(chunks).await?;
                done.until(jobs).await;
            }
        }
        "item" => {
            let mut sink = SqliteStorage::<Item>::new(&pool).with_config(config.clone());
            let worker = WorkerBuilder::new("peer-item")
                .backend(SqliteStorage::<Item>::new(&pool).with_config(config).with_callback(listener))
                .data(pool.clone())
                .data(done.clone())
                .concurrency(CONCURRENCY)
                .build(item);
            tokio::spawn(worker.run());
            for step in 0..2 {
                sink.push_bulk((0..items).map(|item| Item { step, item }).collect()).await?;
                done.until(usize::try_from(items * (step + 1))?).await;
            }
        }
        other => {
            eprintln!("unknown form {other}: chunk or item");
            std::process::exit(2);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM peer_outcomes").fetch_one(&pool).await?;
    if rows != 2 * items {
        eprintln!("expected {} outcome rows, found {rows}", 2 * items);
        std::process::exit(1);
    }
    println!("{:.0}", items as f64 / seconds);
    Ok(())
}
