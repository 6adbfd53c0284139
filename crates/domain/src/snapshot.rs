//! A process as a finished record of history, for seeding and imports: every item, every
//! recorded outcome, and the statuses as they were. Parsed from the documented record form.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::ids::{IdError, ProcessId, ReferenceId};
use crate::json::RawJson;
use crate::status::Status;

/// The longest process or step name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// A whole process, ready to be stored as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSnapshot {
    pub async_process_id: ProcessId,
    pub reference_id: ReferenceId,
    pub name: String,
    pub status: Status,
    pub message: String,
    pub current_step: u32,
    /// A JSON object.
    pub additional_data: RawJson,
    /// The process's items; outcomes refer to them by index.
    pub items: Vec<RawJson>,
    pub steps: Vec<StepSnapshot>,
    /// Creation time, microseconds since the Unix epoch; orders processes sharing a referenceId.
    pub created_at_micros: i64,
}

/// One step of a [`ProcessSnapshot`]; its number is its position.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSnapshot {
    pub name: String,
    pub status: Status,
    pub message: String,
    /// How many items entered the step.
    pub entered: u64,
    /// Indices of the items that succeeded, in recording order.
    pub successes: Vec<u64>,
    /// Failure groups in recording order.
    pub failures: Vec<FailureSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailureSnapshot {
    pub code: i64,
    pub status_message: String,
    pub items: Vec<u64>,
}

/// Why a snapshot cannot be stored. The text names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a valid process record: {0}")]
    Shape(String),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("{0}")]
    Inconsistent(String),
}

impl StepSnapshot {
    pub fn failed_count(&self) -> u64 {
        self.failures.iter().map(|f| f.items.len() as u64).sum()
    }

    pub fn processed(&self) -> u64 {
        self.successes.len() as u64 + self.failed_count()
    }
}

impl ProcessSnapshot {
    /// Checks everything storage relies on: indices in range, at most one outcome per item and
    /// step, counts that add up, and statuses that agree with them (contract §2).
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |msg: String| Err(SnapshotError::Inconsistent(msg));
        check_name("asyncProcessName", &self.name)?;
        if self.steps.is_empty() {
            return bad("a process needs at least one step".into());
        }
        if self.current_step as usize >= self.steps.len() {
            return bad(format!(
                "currentStepNumber {} is not a step of a {}-step process",
                self.current_step,
                self.steps.len()
            ));
        }
        if !self.additional_data.as_str().trim_start().starts_with('{') {
            return bad("additionalData must be a JSON object".into());
        }
        if let Err(e) = self.additional_data.check_depth() {
            return bad(format!("additionalData {e}"));
        }
        if let Some(index) = self.items.iter().position(|item| item.check_depth().is_err()) {
            return bad(format!("item {index} {}", crate::json::TooDeep));
        }
        let item_count = self.items.len() as u64;
        for (number, step) in self.steps.iter().enumerate() {
            check_name("stepName", &step.name)?;
            let mut seen = HashSet::new();
            let indices = step.successes.iter().chain(step.failures.iter().flat_map(|f| &f.items));
            for &index in indices {
                if index >= item_count {
                    return bad(format!(
                        "step {number}: item index {index} is out of range ({item_count} items)"
                    ));
                }
                if !seen.insert(index) {
                    return bad(format!("step {number}: item {index} has more than one outcome"));
                }
            }
            if step.entered > item_count {
                return bad(format!(
                    "step {number}: {} items entered but the process has {item_count}",
                    step.entered
                ));
            }
            let processed = step.processed();
            if processed > step.entered {
                return bad(format!(
                    "step {number}: {processed} outcomes for {} items that entered",
                    step.entered
                ));
            }
            let finished = processed == step.entered;
            let consistent = match step.status {
                Status::WaitingToProcess => processed == 0,
                Status::InProgress | Status::Aborted => true,
                Status::Success => finished && step.failed_count() == 0,
                Status::Failed => finished && step.failed_count() > 0,
            };
            if !consistent {
                return bad(format!(
                    "step {number}: status {} does not fit {processed} of {} items processed with {} failed",
                    step.status,
                    step.entered,
                    step.failed_count()
                ));
            }
        }
        let all = |status: Status| self.steps.iter().all(|s| s.status == status);
        let consistent = match self.status {
            Status::Success => all(Status::Success),
            Status::WaitingToProcess => all(Status::WaitingToProcess),
            _ => true,
        };
        if !consistent {
            return bad(format!("process status {} does not fit its steps' statuses", self.status));
        }
        Ok(())
    }

    /// Reads one record in the documented status form (contract §3.2), accepting the documented
    /// input spellings `InProgess` and `statusCode`. Items are taken from an `items` array when
    /// the record has one, else from step 0, which must then have an outcome for every item.
    pub fn from_documented_record(record: &Value, created_at_micros: i64) -> Result<Self, SnapshotError> {
        let doc = DocRecord::deserialize(record).map_err(|e| SnapshotError::Shape(e.to_string()))?;
        if doc.total_number_of_steps as usize != doc.items_processed.len() {
            return Err(SnapshotError::Inconsistent(format!(
                "totalNumberOfSteps is {} but itemsProcessed has {} steps",
                doc.total_number_of_steps,
                doc.items_processed.len()
            )));
        }
        for (position, step) in doc.items_processed.iter().enumerate() {
            if step.step_number as usize != position {
                return Err(SnapshotError::Inconsistent(format!(
                    "itemsProcessed[{position}] has stepNumber {}; steps must be listed 0, 1, 2, ...",
                    step.step_number
                )));
            }
        }
        let current = doc.items_processed.get(doc.current_step_number as usize);
        if current.is_some_and(|step| step.step_name != doc.step_name) {
            return Err(SnapshotError::Inconsistent(format!(
                "stepName '{}' is not the name of step {}",
                doc.step_name, doc.current_step_number
            )));
        }
        let items: Vec<Value> = match doc.items {
            Some(items) => items,
            None => {
                let first = doc
                    .items_processed
                    .first()
                    .ok_or_else(|| SnapshotError::Inconsistent("a process needs at least one step".into()))?;
                let listed: Vec<Value> = first
                    .successfully
                    .iter()
                    .chain(first.failed.iter().flat_map(|f| &f.items))
                    .cloned()
                    .collect();
                if listed.len() as u64 != first.total {
                    return Err(SnapshotError::Inconsistent(
                        "without an `items` array, step 0 must list every item of the process".into(),
                    ));
                }
                listed
            }
        };
        let steps =
            doc.items_processed.iter().map(|step| step.to_snapshot(&items)).collect::<Result<Vec<_>, _>>()?;
        let additional_data = match doc.additional_data {
            Some(Value::Object(map)) => RawJson::from_value(&Value::Object(map)),
            None | Some(Value::Null) => RawJson::empty_object(),
            Some(_) => {
                return Err(SnapshotError::Inconsistent("additionalData must be a JSON object".into()));
            }
        };
        let snapshot = ProcessSnapshot {
            async_process_id: ProcessId::new(doc.async_process_id)?,
            reference_id: ReferenceId::new(doc.reference_id)?,
            name: doc.async_process_name,
            status: doc.status,
            message: doc.message,
            current_step: doc.current_step_number,
            additional_data,
            items: items.iter().map(RawJson::from_value).collect(),
            steps,
            created_at_micros,
        };
        snapshot.validate()?;
        Ok(snapshot)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), SnapshotError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(SnapshotError::Inconsistent(format!(
            "{what} must have 1 to {MAX_NAME_CHARS} characters, not {chars}"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocRecord {
    reference_id: String,
    async_process_name: String,
    async_process_id: String,
    status: Status,
    message: String,
    step_name: String,
    current_step_number: u32,
    total_number_of_steps: u32,
    items_processed: Vec<DocStep>,
    #[serde(default)]
    additional_data: Option<Value>,
    #[serde(default)]
    items: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocStep {
    step_number: u32,
    step_name: String,
    status: Status,
    #[serde(rename = "currentNumberOfItemsProccessed")]
    processed: u64,
    #[serde(rename = "totalNumberOfItemsToBeProccessed")]
    total: u64,
    message: String,
    #[serde(default)]
    successfully: Vec<Value>,
    #[serde(default)]
    failed: Vec<DocFailure>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocFailure {
    items: Vec<Value>,
    #[serde(alias = "statusCode")]
    code: i64,
    status_message: String,
}

impl DocStep {
    /// Turns listed item values into indices into `items`: each value takes the first equal
    /// item not yet used in this step, so repeated values map to distinct items.
    fn to_snapshot(&self, items: &[Value]) -> Result<StepSnapshot, SnapshotError> {
        let mut used = vec![false; items.len()];
        let mut index_of = |value: &Value| -> Result<u64, SnapshotError> {
            let found = items.iter().enumerate().position(|(i, item)| !used[i] && item == value).ok_or_else(
                || {
                    SnapshotError::Inconsistent(format!(
                        "step {}: item {value} is not an item of the process",
                        self.step_number
                    ))
                },
            )?;
            used[found] = true;
            Ok(found as u64)
        };
        let successes = self.successfully.iter().map(&mut index_of).collect::<Result<Vec<_>, _>>()?;
        let mut failures = Vec::with_capacity(self.failed.len());
        for group in &self.failed {
            failures.push(FailureSnapshot {
                code: group.code,
                status_message: group.status_message.clone(),
                items: group.items.iter().map(&mut index_of).collect::<Result<Vec<_>, _>>()?,
            });
        }
        let step = StepSnapshot {
            name: self.step_name.clone(),
            status: self.status,
            message: self.message.clone(),
            entered: self.total,
            successes,
            failures,
        };
        if step.processed() != self.processed {
            return Err(SnapshotError::Inconsistent(format!(
                "step {}: currentNumberOfItemsProccessed is {} but {} outcomes are listed",
                self.step_number,
                self.processed,
                step.processed()
            )));
        }
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn documented() -> Vec<Value> {
        let text = include_str!("../../../fixtures/documented-example.json");
        let envelope: Value = serde_json::from_str(text).unwrap();
        envelope["AsyncProcessStatus"].as_array().unwrap().clone()
    }

    #[test]
    fn the_documented_records_parse_into_consistent_snapshots() {
        let records = documented();
        let first = ProcessSnapshot::from_documented_record(&records[0], 1).unwrap();
        assert_eq!(first.async_process_id.as_str(), "9876543");
        assert_eq!(first.items.len(), 6);
        assert_eq!(first.status, Status::InProgress);
        assert_eq!(first.steps[0].successes, [0, 1]);
        assert_eq!(first.steps[0].failures[0].items, [2, 3]);
        assert_eq!(first.steps[0].failures[1].code, 5004);
        assert_eq!(first.steps[1].successes, [0, 1, 2]);
        assert_eq!(first.steps[1].entered, 6);
        let second = ProcessSnapshot::from_documented_record(&records[1], 2).unwrap();
        assert_eq!(second.status, Status::Success);
        assert_eq!(second.steps[1].successes, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn documented_input_spellings_are_accepted() {
        let mut record = documented()[0].clone();
        record["status"] = json!("InProgess");
        record["itemsProcessed"][0]["failed"][1] = json!({ "items": ["NewValueAdded", { "AnotherValueAdded": "AnotherValue" }], "statusCode": 5004, "statusMessage": "Missing data" });
        let snapshot = ProcessSnapshot::from_documented_record(&record, 1).unwrap();
        assert_eq!(snapshot.status, Status::InProgress);
        assert_eq!(snapshot.steps[0].failures[1].code, 5004);
    }

    #[test]
    fn counts_that_do_not_add_up_are_refused() {
        let mut record = documented()[0].clone();
        record["itemsProcessed"][1]["currentNumberOfItemsProccessed"] = json!(4);
        let err = ProcessSnapshot::from_documented_record(&record, 1).unwrap_err();
        assert!(err.to_string().contains("currentNumberOfItemsProccessed"), "{err}");
    }

    #[test]
    fn unknown_items_and_wrong_step_names_are_refused() {
        let mut record = documented()[0].clone();
        record["itemsProcessed"][1]["successfully"][0] = json!("Stranger");
        assert!(ProcessSnapshot::from_documented_record(&record, 1).is_err());
        let mut record = documented()[0].clone();
        record["stepName"] = json!("Validate");
        assert!(ProcessSnapshot::from_documented_record(&record, 1).is_err());
    }

    #[test]
    fn statuses_must_fit_the_counts() {
        let mut record = documented()[1].clone();
        record["itemsProcessed"][1]["status"] = json!("Failed");
        let err = ProcessSnapshot::from_documented_record(&record, 1).unwrap_err();
        assert!(err.to_string().contains("status Failed"), "{err}");
    }

    #[test]
    fn an_item_may_not_have_two_outcomes_in_one_step() {
        let mut snapshot = ProcessSnapshot::from_documented_record(&documented()[1], 1).unwrap();
        snapshot.steps[0].successes[1] = 0;
        assert!(snapshot.validate().unwrap_err().to_string().contains("more than one outcome"));
    }

    #[test]
    fn repeated_item_values_map_to_distinct_items() {
        let record = json!({
            "referenceId": "r", "asyncProcessName": "P", "asyncProcessId": "p1", "status": "Success",
            "message": "Completed", "stepName": "S", "currentStepNumber": 0, "totalNumberOfSteps": 1,
            "itemsProcessed": [{ "stepNumber": 0, "stepName": "S", "status": "Success",
                "currentNumberOfItemsProccessed": 2, "totalNumberOfItemsToBeProccessed": 2,
                "message": "Completed", "successfully": ["x", "x"], "failed": [] }]
        });
        let snapshot = ProcessSnapshot::from_documented_record(&record, 1).unwrap();
        assert_eq!(snapshot.steps[0].successes, [0, 1]);
        assert_eq!(snapshot.additional_data.as_str(), "{}");
    }
}
