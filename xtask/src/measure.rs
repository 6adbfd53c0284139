//! `cargo xtask measure-lookup`: status reads without item lists on a process of many items
//! should cost about what they cost on the 6-item documented example.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_engine_domain::{Detail, IdKind, LookupId, SnapshotWriter, StatusQuery, StatusReader, TenantId};
use async_engine_persistence::Store;

pub fn run(items: u32, rounds: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("measure.db");
    let store = Store::open(path.to_str().context("temporary path is not UTF-8")?, 2)?;
    store.migrate()?;
    let tenant = TenantId::default_tenant();
    for snapshot in async_engine::seed::documented_snapshots(0)? {
        store.import(&tenant, &snapshot)?;
    }
    let started = Instant::now();
    let large = async_engine::seed::process(0, items, 10)?;
    store.import(&tenant, &large)?;
    eprintln!("stored a {items}-item, 2-step process in {:.1?}", started.elapsed());

    let cases = [("6-item example", "9876543"), ("large process", large.async_process_id.as_str())];
    let mut medians = Vec::new();
    for detail in [Detail::Process, Detail::Steps] {
        for (label, id) in cases {
            let query =
                StatusQuery { tenant: tenant.clone(), id: LookupId::new(id)?, kind: IdKind::Either, detail };
            let mut times = Vec::with_capacity(rounds as usize);
            for _ in 0..rounds.max(1) {
                let start = Instant::now();
                let found = store.find_status(&query)?;
                times.push(start.elapsed());
                anyhow::ensure!(found.len() == 1, "{id} not found");
            }
            times.sort();
            let median = times[times.len() / 2];
            let p95 = times[times.len() * 95 / 100];
            eprintln!(
                "{detail:?} detail, {label:>14}: median {median:>10.1?}  p95 {p95:>10.1?}  ({rounds} lookups)"
            );
            medians.push(median);
        }
    }
    for (pair, detail) in medians.chunks(2).zip(["verbose=false", "itemsList=false"]) {
        let ratio = pair[1].as_secs_f64() / pair[0].as_secs_f64().max(Duration::from_nanos(1).as_secs_f64());
        eprintln!("{detail}: large / small = {ratio:.2}x");
    }
    Ok(())
}
