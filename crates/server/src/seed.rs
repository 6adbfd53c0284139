//! `async-engine seed` (and `cargo xtask seed`): the documented example; live demo processes
//! of "Demo CPQ" that the engine runs at a walking pace, so that a new user sees progress move;
//! and, on request, generated records of history in every state. Idempotent: seeding again
//! creates nothing that is there already. Failures follow the built-in `validate` and `price`
//! rules, and the records' statuses, messages and counts the domain's own status rules.

use anyhow::Context;
use async_engine_domain::status::{current_step, process_message, process_status};
use async_engine_domain::{
    FailureSnapshot, ImportResult, NewProcess, ProcessEnd, ProcessId, ProcessSnapshot, ProcessStore, RawJson,
    ReferenceId, SnapshotWriter, Started, StepSnapshot, StepState, TenantId,
};
use async_engine_engine::builtin::Rules;
use async_engine_engine::now_micros;
use async_engine_persistence::Store;
use serde_json::json;

use crate::Settings;

/// The documented example, as in the contract's fixture.
const DOCUMENTED_EXAMPLE: &str = include_str!("../../../fixtures/documented-example.json");

/// The definition the live demo runs (in `config/default.toml`).
pub const LIVE_DEFINITION: &str = "Demo CPQ";

/// The flags of `async-engine seed` and `cargo xtask seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Start this many live "Demo CPQ" processes, which the engine runs once the server
    /// serves: about a minute of visible progress for 8 of them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub demo: u32,
    /// Also store this many generated records of history in every state (imported as they
    /// are; the engine does not run them).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub history: u32,
    /// Items per demo process and record.
    #[arg(long, value_name = "M", default_value_t = 200)]
    pub items: u32,
    /// The tenant that owns what is seeded.
    #[arg(long, default_value = TenantId::DEFAULT)]
    pub tenant: String,
}

impl SeedArgs {
    /// What to seed, the tenant checked.
    pub fn plan(&self) -> anyhow::Result<Seed> {
        let tenant = TenantId::new(self.tenant.clone()).context("--tenant")?;
        Ok(Seed { tenant, live: self.demo, history: self.history, items: self.items })
    }
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct Seed {
    pub tenant: TenantId,
    /// Live "Demo CPQ" processes, run by the engine once the server serves.
    pub live: u32,
    /// Generated records of history (imported as they are; the engine does not run them).
    pub history: u32,
    /// Items per generated process.
    pub items: u32,
}

/// Seeds `store`; returns the line that says what was created.
pub fn seed(settings: &Settings, store: &Store, plan: &Seed) -> anyhow::Result<String> {
    let started = now_micros();
    let (mut created, mut present) = (0, 0);
    let mut count = |new: bool| if new { created += 1 } else { present += 1 };
    for snapshot in documented_snapshots(started)? {
        count(store.import(&plan.tenant, &snapshot)? == ImportResult::Created);
    }
    if plan.live > 0 {
        let definition = settings
            .definitions()?
            .into_iter()
            .find(|d| d.name == LIVE_DEFINITION)
            .with_context(|| format!("--demo runs the definition '{LIVE_DEFINITION}', which the configuration does not have (a --config file with [[processes]] replaces the built-in list)"))?;
        for n in 0..plan.live {
            let process = NewProcess {
                tenant: plan.tenant.clone(),
                async_process_id: ProcessId::new(uuid::Uuid::now_v7().simple().to_string())?,
                reference_id: ReferenceId::new(format!("LIVE-{n:04}"))?,
                definition: definition.clone(),
                items: (0..plan.items).map(|j| RawJson::from_value(&demo_item(n, j, n % 3 == 0))).collect(),
                additional_data: RawJson::from_value(
                    &json!({ "source": "async-engine seed --demo", "live": n }),
                ),
                // The same key on every seeding: a second one returns the first's process.
                idempotency_key: Some(format!("async-engine seed --demo {n}")),
                callback_url: None,
                now_micros: started + 100 + i64::from(n),
                start_at_micros: None,
                priority: 0,
            };
            count(matches!(store.start(&process)?, Started::Created(_)));
        }
    }
    for n in 0..plan.history {
        let snapshot = process(n, plan.items, started + 10 + i64::from(n))?;
        count(store.import(&plan.tenant, &snapshot)? == ImportResult::Created);
    }
    Ok(format!(
        "seeded {}: {created} process(es) created, {present} already present (tenant {})",
        store.describe(),
        plan.tenant
    ))
}

/// The documented processes, oldest first, as the fixture lists them.
pub fn documented_snapshots(created_at_micros: i64) -> anyhow::Result<Vec<ProcessSnapshot>> {
    let envelope: serde_json::Value = serde_json::from_str(DOCUMENTED_EXAMPLE)?;
    let records =
        envelope["AsyncProcessStatus"].as_array().context("the fixture has no AsyncProcessStatus array")?;
    records
        .iter()
        .zip(0..)
        .map(|(record, n)| {
            ProcessSnapshot::from_documented_record(record, created_at_micros + n)
                .context("the documented example does not parse")
        })
        .collect()
}

const PRODUCTS: [&str; 6] =
    ["BROADBAND-500", "MOBILE-UNLTD", "TV-PREMIUM", "VOIP-BASIC", "IOT-SIM", "DISCONTINUED-DSL"];
const STEP_NAMES: [&str; 2] = ["Validate", "Price"];

/// One generated record of history: what state it is in follows `n % 6`, so any N covers
/// every state.
pub fn process(n: u32, item_count: u32, created_at_micros: i64) -> anyhow::Result<ProcessSnapshot> {
    let plan = Plan::for_process(n);
    let items: Vec<serde_json::Value> = (0..item_count).map(|j| demo_item(n, j, plan.clean)).collect();
    let mut steps = Vec::new();
    let mut states = Vec::new();
    let mut entering: Vec<u64> = (0..u64::from(item_count)).collect();
    for (number, name) in STEP_NAMES.iter().enumerate() {
        let done = (entering.len() as f64 * plan.done[number]).round() as usize;
        let mut successes = Vec::new();
        let mut failures: Vec<FailureSnapshot> = Vec::new();
        for &index in &entering[..done] {
            let rules = if number == 0 { Rules::Validate } else { Rules::Price };
            match rules.judge(&items[index as usize]) {
                None => successes.push(index),
                Some((code, message)) => match failures.iter_mut().find(|f| f.code == code) {
                    Some(group) => group.items.push(index),
                    None => failures.push(FailureSnapshot {
                        code,
                        status_message: message.to_owned(),
                        items: vec![index],
                    }),
                },
            }
        }
        let failed: u64 = failures.iter().map(|f| f.items.len() as u64).sum();
        let state = StepState {
            entered: entering.len() as u64,
            succeeded: successes.len() as u64,
            failed,
            started: plan.done[number] > 0.0,
            aborted: plan.cancelled,
        };
        let next: Vec<u64> = if plan.skip_failed { successes.clone() } else { entering.clone() };
        steps.push(StepSnapshot {
            name: (*name).to_owned(),
            status: state.status(),
            message: state.status().step_message().to_owned(),
            entered: state.entered,
            successes,
            failures,
        });
        states.push(state);
        entering = next;
    }
    let end = plan.cancelled.then_some(ProcessEnd::Cancelled);
    Ok(ProcessSnapshot {
        async_process_id: ProcessId::new(format!("demo-{n:06}"))?,
        reference_id: ReferenceId::new(format!("DEMO-{:04}", n / 3))?,
        name: "Bulk CPQ".to_owned(),
        status: process_status(&states, end),
        message: process_message(&states, &STEP_NAMES, end),
        current_step: current_step(&states) as u32,
        additional_data: RawJson::from_value(
            &json!({ "source": "async-engine seed --history", "batch": n / 3 }),
        ),
        items: items.iter().map(RawJson::from_value).collect(),
        steps,
        created_at_micros,
    })
}

struct Plan {
    /// Fraction of the entering items with an outcome, per step.
    done: [f64; 2],
    skip_failed: bool,
    cancelled: bool,
    /// Items that pass every rule.
    clean: bool,
}

impl Plan {
    fn for_process(n: u32) -> Self {
        let plan = |done, skip_failed, cancelled, clean| Plan { done, skip_failed, cancelled, clean };
        match n % 6 {
            0 => plan([1.0, 1.0], true, false, true),   // Success
            1 => plan([1.0, 1.0], true, false, false),  // Failed: failures at both steps
            2 => plan([1.0, 0.5], false, false, false), // InProgress, step 0 had errors
            3 => plan([0.0, 0.0], true, false, false),  // WaitingToProcess
            4 => plan([0.4, 0.0], true, true, false),   // Aborted during step 0
            _ => plan([0.7, 0.0], true, false, false),  // InProgress at step 0
        }
    }
}

fn demo_item(n: u32, j: u32, clean: bool) -> serde_json::Value {
    let h = mix(u64::from(n) << 32 | u64::from(j));
    let product = PRODUCTS[(h % if clean { 5 } else { 6 }) as usize];
    let quantity = if clean {
        1 + (h >> 8) % 100
    } else {
        match (h >> 8) % 20 {
            0 => 0,
            1 => 101 + (h >> 16) % 400,
            q => q * 3,
        }
    };
    json!({ "quoteLineId": format!("QL-{n:06}-{j:07}"), "productCode": product, "quantity": quantity })
}

/// splitmix64: a fixed, well-spread hash so the same seed gives the same demo everywhere.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_engine_domain::Status;

    #[test]
    fn six_processes_cover_every_state_and_all_are_consistent() {
        let mut seen = Vec::new();
        for n in 0..6 {
            let snapshot = process(n, 200, 0).unwrap();
            snapshot.validate().unwrap();
            seen.push(snapshot.status);
        }
        for status in Status::ALL {
            assert!(seen.contains(&status), "{status} missing from {seen:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_demo() {
        assert_eq!(process(7, 50, 1).unwrap(), process(7, 50, 1).unwrap());
    }
}
