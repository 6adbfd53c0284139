//! Built-in handlers: `noop`, the demo rules of the "Bulk CPQ" definition, and the same rules
//! at a walking pace for the live demo ("Demo CPQ", `async-engine seed --demo`).

use async_engine_domain::{ClaimedTask, FailureSnapshot, TaskReport};
use serde_json::Value;

use crate::Handler;

/// Every item succeeds.
pub struct Noop;

impl Handler for Noop {
    fn run(&self, task: &ClaimedTask) -> TaskReport {
        TaskReport { successes: task.items.iter().map(|(index, _)| *index).collect(), failures: Vec::new() }
    }
}

/// The documented demo rules for quote lines (`{"productCode": ..., "quantity": ...}`, the
/// quantity a number or, from a CSV upload, a string of digits):
///
/// * `validate`: an item that is not an object, or whose `quantity` is missing or 0, fails
///   with 5004 "Missing data"; a `productCode` starting with `DISCONTINUED` fails with 5001
///   "Invalid status".
/// * `price`: a `quantity` over 100 fails with 6001 "Quantity above price book limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    Validate,
    Price,
}

impl Rules {
    /// The failure an item meets under these rules, if any.
    pub fn judge(self, item: &Value) -> Option<(i64, &'static str)> {
        // A number, or (as every value of a CSV upload is) a string holding one.
        let quantity = match item.get("quantity") {
            Some(Value::String(text)) => text.trim().parse().ok(),
            Some(number) => number.as_u64(),
            None => None,
        }
        .unwrap_or(0);
        let product = item.get("productCode").and_then(Value::as_str).unwrap_or("");
        match self {
            Rules::Validate if !item.is_object() || quantity == 0 => Some((5004, "Missing data")),
            Rules::Validate if product.starts_with("DISCONTINUED") => Some((5001, "Invalid status")),
            Rules::Price if quantity > 100 => Some((6001, "Quantity above price book limit")),
            _ => None,
        }
    }
}

impl Handler for Rules {
    fn run(&self, task: &ClaimedTask) -> TaskReport {
        let mut report = TaskReport::default();
        for (index, item) in &task.items {
            match self.judge(&item.to_value()) {
                None => report.successes.push(*index),
                Some((code, message)) => match report.failures.iter_mut().find(|f| f.code == code) {
                    Some(group) => group.items.push(*index),
                    None => report.failures.push(FailureSnapshot {
                        code,
                        status_message: message.to_owned(),
                        items: vec![*index],
                    }),
                },
            }
        }
        report
    }
}

/// Rules that take `per_item` of (sleeping) time per item, so that a demo's progress bars
/// visibly advance: `demo-validate` and `demo-price`, run by an engine thread apart so that
/// the sleep never holds a worker other processes' tasks wait for.
pub struct Paced {
    pub rules: Rules,
    pub per_item: std::time::Duration,
}

impl Handler for Paced {
    fn run(&self, task: &ClaimedTask) -> TaskReport {
        let items = u32::try_from(task.items.len()).unwrap_or(u32::MAX);
        std::thread::sleep(self.per_item.saturating_mul(items));
        self.rules.run(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_demo_rules() {
        let cases = [
            (Rules::Validate, json!({"productCode": "TV", "quantity": 2}), None),
            (Rules::Validate, json!({"productCode": "TV", "quantity": 0}), Some(5004)),
            (Rules::Validate, json!({"productCode": "TV"}), Some(5004)),
            (Rules::Validate, json!("AnyItem"), Some(5004)),
            (Rules::Validate, json!({"productCode": "DISCONTINUED-DSL", "quantity": 1}), Some(5001)),
            (Rules::Validate, json!({"productCode": "TV", "quantity": "2"}), None),
            (Rules::Validate, json!({"productCode": "TV", "quantity": "none"}), Some(5004)),
            (Rules::Price, json!({"productCode": "TV", "quantity": "500"}), Some(6001)),
            (Rules::Price, json!({"productCode": "TV", "quantity": 100}), None),
            (Rules::Price, json!({"productCode": "TV", "quantity": 101}), Some(6001)),
        ];
        for (rules, item, code) in cases {
            assert_eq!(rules.judge(&item).map(|(c, _)| c), code, "{rules:?} {item}");
        }
    }
}
