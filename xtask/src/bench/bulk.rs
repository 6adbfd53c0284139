//! B8, B9 and B10: bulk in and out on the real release server (issue 15). B8: a streamed NDJSON
//! start of 1,000,000 items (about 100 MB), first byte to committed, against the raw insert
//! loop; B9: the server's peak memory during B8 against its idle peak; B10: exporting those
//! 1,000,000 results as CSV against a raw read of the same rows.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_engine_persistence::Store;
use diesel::prelude::*;

use super::{ROUNDS, Row, Target, raw_loop, release_server, spread, vm_hwm_kib};

const ITEMS: u32 = 1_000_000;

pub fn rows(name: &'static str, url: &str) -> anyhow::Result<Vec<Row>> {
    let store = Store::open(url, 4)?;
    store.migrate()?;
    let mut raw_inserts = Vec::new();
    for round in 0..ROUNDS {
        raw_inserts.push(raw_loop(&store, url, 100 + round)?);
    }
    let (raw_insert, raw_insert_noise) = spread(raw_inserts);
    drop(store);

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bulk.toml");
    // A queue nobody works: the process stays as the upload left it, every result unprocessed.
    std::fs::write(
        &config,
        "[[processes]]\nname = \"Bulk\"\n[[processes.steps]]\nname = \"Load\"\nhandler = \"queue:bulk-bench\"\nchunk_size = 500\n",
    )?;
    let (server, base) = release_server(url, Some(&config), &[])?;
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(900)).build()?;
    client.get(format!("{base}/healthz")).send()?;
    let idle = vm_hwm_kib(server.0.id())?;
    // About 100 bytes a line, as quote lines are.
    let mut body = Vec::with_capacity(ITEMS as usize * 100);
    for n in 0..ITEMS {
        body.extend_from_slice(
            format!("{{\"productCode\":\"TV-PREMIUM-{n:07}\",\"quantity\":{},\"note\":\"a quote line of about one hundred bytes\"}}\n", 1 + n % 100)
                .as_bytes(),
        );
    }
    let megabytes = body.len() as f64 / 1e6;
    let mut starts = Vec::new();
    let mut id = String::new();
    for round in 0..ROUNDS {
        let begun = Instant::now();
        let answer = client
            .post(format!("{base}/v1/asyncprocesses?asyncProcessName=Bulk&referenceId=bulk-{round}"))
            .header("Content-Type", "application/x-ndjson")
            .body(body.clone())
            .send()?;
        anyhow::ensure!(answer.status().as_u16() == 202, "B8: {}", answer.text()?);
        starts.push(f64::from(ITEMS) / begun.elapsed().as_secs_f64());
        let answer: serde_json::Value = answer.json()?;
        id = answer["AsyncProcessStatus"][0]["asyncProcessId"]
            .as_str()
            .context("no asyncProcessId")?
            .to_owned();
    }
    let peak = vm_hwm_kib(server.0.id())?;
    let (b8, b8_noise) = spread(starts);
    eprintln!("B8 {name}: {b8:.0} items/s ({megabytes:.0} MB), raw insert {raw_insert:.0} rows/s");

    let mut exports = Vec::new();
    let mut raw_reads = Vec::new();
    for _ in 0..ROUNDS {
        let begun = Instant::now();
        let mut file =
            client.get(format!("{base}/v1/asyncprocesses/{id}/steps/0/results?format=csv")).send()?;
        anyhow::ensure!(file.status().as_u16() == 200, "B10: {}", file.status());
        let mut lines = 0_u64;
        let mut buffer = vec![0_u8; 1 << 16];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            lines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        anyhow::ensure!(lines == u64::from(ITEMS) + 1, "B10: {lines} lines, not a header and {ITEMS} rows");
        exports.push(f64::from(ITEMS) / begun.elapsed().as_secs_f64());
        raw_reads.push(raw_read(url, &id)?);
    }
    let (b10, b10_noise) = spread(exports);
    let (raw_read, raw_read_noise) = spread(raw_reads);
    eprintln!("B10 {name}: {b10:.0} rows/s, raw read {raw_read:.0} rows/s");
    drop(server);
    Ok(vec![
        Row {
            id: "B8",
            backend: name,
            measured: format!("{b8:.0} items/s (NDJSON, {megabytes:.0} MB)"),
            baseline: format!("{raw_insert:.0} rows/s (raw loop)"),
            ratio: b8 / raw_insert,
            noise: b8_noise.max(raw_insert_noise),
            target: Target::AtLeast(0.25),
        },
        Row {
            id: "B9",
            backend: name,
            measured: format!("{:.1} MiB peak", peak as f64 / 1024.0),
            baseline: format!("{:.1} MiB idle", idle as f64 / 1024.0),
            ratio: (peak.saturating_sub(idle)) as f64 / 1024.0,
            noise: 0.0,
            target: Target::AtMost(64.0),
        },
        Row {
            id: "B10",
            backend: name,
            measured: format!("{b10:.0} rows/s (CSV)"),
            baseline: format!("{raw_read:.0} rows/s (raw read)"),
            ratio: b10 / raw_read,
            noise: b10_noise.max(raw_read_noise),
            target: Target::AtLeast(0.30),
        },
    ])
}

/// Rows per second of one plain statement reading the process's items in order.
fn raw_read(url: &str, id: &str) -> anyhow::Result<f64> {
    use async_engine_persistence::schema::{items, processes};
    macro_rules! read_all {
        ($conn:expr) => {{
            let conn = $conn;
            let process: i64 = processes::table
                .filter(processes::async_process_id.eq(id))
                .select(processes::id)
                .first(conn)?;
            let begun = Instant::now();
            let rows: Vec<(i64, String)> = items::table
                .filter(items::process_id.eq(process))
                .order(items::item_index.asc())
                .select((items::item_index, items::value))
                .load(conn)?;
            (rows.len(), begun.elapsed())
        }};
    }
    let (rows, took) = if url.starts_with("postgres") {
        read_all!(&mut PgConnection::establish(url)?)
    } else {
        read_all!(&mut SqliteConnection::establish(url)?)
    };
    anyhow::ensure!(rows == ITEMS as usize, "raw read: {rows} rows");
    Ok(rows as f64 / took.as_secs_f64())
}
