//! Generated demo processes of the "Bulk CPQ" kind in every state, with failures that follow
//! the built-in `validate` and `price` handlers' rules, and statuses, messages and counts told
//! by the domain's own status rules.

use async_engine_domain::status::{current_step, process_message, process_status};
use async_engine_domain::{
    FailureSnapshot, ProcessEnd, ProcessId, ProcessSnapshot, RawJson, ReferenceId, StepSnapshot, StepState,
};
use async_engine_engine::builtin::Rules;
use serde_json::json;

const PRODUCTS: [&str; 6] =
    ["BROADBAND-500", "MOBILE-UNLTD", "TV-PREMIUM", "VOIP-BASIC", "IOT-SIM", "DISCONTINUED-DSL"];
const STEP_NAMES: [&str; 2] = ["Validate", "Price"];

/// One demo process: what state it is in follows `n % 6`, so any N covers every state.
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
        additional_data: RawJson::from_value(&json!({ "source": "cargo xtask seed --demo", "batch": n / 3 })),
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
