//! P1-P4 (issue 17): the engine against the job queues users would build bulk work on
//! instead, on one workload: a 2-step process over 100,000 items with one recorded outcome per
//! item and step. The engine runs it in this process (2 workers, 500-item tasks); apalis 1.0
//! on SQLite (`xtask/peers/apalis`, its own workspace, built in release into `target/peers`)
//! and graphile-worker on PostgreSQL (Node, installed with npm into `target/peers/graphile`)
//! run it as one job per 500-item chunk inserting its 500 outcome rows, and as one job per
//! item; P3 is the same through the release server's API (start, run, poll), P4 the engine
//! on two nodes of one database. Rounds interleaved, medians. "Items/s per step" is counted
//! as the engine's measurements count it: the items over the time both steps took.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::own_work::to_success;
use super::{ROUNDS, Row, Target, release_server, spread};
use crate::engine::{Scratch, measure};

const ITEMS: u32 = 100_000;
/// Items of the peers' job-per-item forms: rates, measured on fewer items to keep the run
/// short (graphile-worker about 2,000 jobs/s here, apalis on SQLite about 250).
const PER_ITEM: u32 = 20_000;
const APALIS_PER_ITEM: u32 = 2_000;
const CHUNK: u32 = 500;
const WORKERS: usize = 2;
const GRAPHILE: &str = "graphile-worker 0.17.3";
const APALIS: &str = "apalis 1.0, SQLite";

pub fn rows(name: &'static str, url: &str, pg_server: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let (_server, base) = release_server(url, None, &[])?;
    let graphile = match pg_server {
        Some(_) => Some(install_graphile()?),
        None => None,
    };
    let apalis = match pg_server {
        Some(_) => None,
        None => Some(build_apalis()?),
    };
    let (mut engine, mut http, mut chunked, mut per_item, mut two_nodes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        engine.push(measure(ITEMS, WORKERS, CHUNK, pg_server, 1)?.per_step);
        let took = to_success(&client, &base, "Noop", &format!("peers-{round}"), ITEMS)?;
        http.push(f64::from(ITEMS) / took.as_secs_f64());
        if let (Some(server), Some(dir)) = (pg_server, &graphile) {
            chunked.push(run_graphile(dir, server, "chunk", ITEMS)?);
            per_item.push(run_graphile(dir, server, "item", PER_ITEM)?);
            two_nodes.push(measure(ITEMS, WORKERS, CHUNK, pg_server, 2)?.per_step);
        }
        if let Some(binary) = &apalis {
            chunked.push(run_apalis(binary, "chunk", ITEMS)?);
            per_item.push(run_apalis(binary, "item", APALIS_PER_ITEM)?);
        }
    }
    let (engine, engine_noise) = spread(engine);
    let (http, http_noise) = spread(http);
    eprintln!("P3 {name}: engine {engine:.0}, through the API {http:.0} items/s per step");
    let engine_text = format!("{engine:.0} items/s per step (engine, 2 workers)");
    let mut rows = vec![Row {
        id: "P3",
        backend: name,
        measured: format!("{http:.0} items/s per step (API: start, run, poll)"),
        baseline: engine_text.clone(),
        ratio: http / engine,
        noise: http_noise.max(engine_noise),
        target: Target::AtLeast(0.9),
    }];
    if apalis.is_some() {
        let (chunked, chunked_noise) = spread(chunked.clone());
        let (per_item, per_item_noise) = spread(per_item.clone());
        eprintln!("P1 {name}: apalis chunked {chunked:.0}, per item {per_item:.0}");
        for (baseline, noise, form) in
            [(chunked, chunked_noise, "500-item jobs"), (per_item, per_item_noise, "a job per item")]
        {
            rows.push(Row {
                id: "P1",
                backend: name,
                measured: engine_text.clone(),
                baseline: format!("{baseline:.0} items/s per step ({APALIS}, {form})"),
                ratio: engine / baseline,
                noise: engine_noise.max(noise),
                target: Target::AtLeast(1.0),
            });
        }
    }
    if graphile.is_some() {
        let (chunked, chunked_noise) = spread(chunked);
        let (per_item, per_item_noise) = spread(per_item);
        let (two_nodes, two_noise) = spread(two_nodes);
        eprintln!(
            "P2 {name}: graphile-worker chunked {chunked:.0}, per item {per_item:.0}; P4: 2 nodes {two_nodes:.0}"
        );
        rows.push(Row {
            id: "P2",
            backend: name,
            measured: engine_text.clone(),
            baseline: format!("{chunked:.0} items/s per step ({GRAPHILE}, 500-item jobs)"),
            ratio: engine / chunked,
            noise: engine_noise.max(chunked_noise),
            target: Target::AtLeast(1.0),
        });
        rows.push(Row {
            id: "P2",
            backend: name,
            measured: engine_text.clone(),
            baseline: format!("{per_item:.0} items/s per step ({GRAPHILE}, a job per item)"),
            ratio: engine / per_item,
            noise: engine_noise.max(per_item_noise),
            target: Target::AtLeast(1.0),
        });
        rows.push(Row {
            id: "P4",
            backend: name,
            measured: format!("{two_nodes:.0} items/s per step (2 nodes)"),
            baseline: format!("{engine:.0} items/s per step (1 node)"),
            ratio: two_nodes / engine,
            noise: two_noise.max(engine_noise),
            target: Target::AtLeast(1.0),
        });
    }
    Ok(rows)
}

/// graphile-worker as `xtask/peers/graphile` pins it (package-lock.json), installed once into
/// `target/peers/graphile` with `npm ci`.
fn install_graphile() -> anyhow::Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/graphile");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers/graphile");
    std::fs::create_dir_all(&dir)?;
    for file in ["package.json", "package-lock.json", "bench.mjs"] {
        std::fs::copy(source.join(file), dir.join(file)).with_context(|| format!("copying {file}"))?;
    }
    if !dir.join("node_modules/graphile-worker").is_dir() {
        eprintln!("installing {GRAPHILE} (npm ci) into {}", dir.display());
        let ok = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .context("running npm (Node.js and npm are needed for P2)")?
            .success();
        if !ok {
            bail!("npm ci in {} failed", dir.display());
        }
    }
    Ok(dir)
}

/// The apalis peer, built in release from its own workspace (its own Cargo.lock) into
/// `target/peers/apalis`, apart from the product's build.
fn build_apalis() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/apalis/Cargo.toml");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers/apalis");
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()?
        .success();
    if !ok {
        bail!("building the apalis peer ({}) failed", manifest.display());
    }
    Ok(target.join("release/apalis-peer"))
}

/// One run of the apalis peer on a fresh SQLite file: its items per second per step.
fn run_apalis(binary: &Path, form: &str, items: u32) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(binary)
        .arg(dir.path().join("peer.db"))
        .arg(form)
        .arg(items.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running the apalis peer")?;
    rate(output, "apalis", form)
}

/// The rate a peer printed as its last line, once it exited well.
fn rate(output: std::process::Output, peer: &str, form: &str) -> anyhow::Result<f64> {
    if !output.status.success() {
        bail!("{peer} ({form}) failed: {}", output.status);
    }
    let text = String::from_utf8(output.stdout)?;
    text.lines().last().and_then(|l| l.trim().parse().ok()).with_context(|| format!("{peer} printed no rate"))
}

/// One run of graphile-worker on a fresh database: its items per second per step.
fn run_graphile(dir: &Path, server: &str, form: &str, items: u32) -> anyhow::Result<f64> {
    let scratch = Scratch::create(server)?;
    let output = Command::new("node")
        .arg("bench.mjs")
        .arg(&scratch.url)
        .arg(form)
        .arg(items.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running node")?;
    rate(output, "graphile-worker", form)
}
