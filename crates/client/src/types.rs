//! The API's bodies as Rust types: the status envelope and its records, pages, definitions,
//! claimed tasks and the outcomes a worker reports (contract §3, §4 and §6).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::Error;

/// The documented envelope every status, start, list and command call answers with.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The answer's code (`api.success_code` on success, the HTTP status on errors).
    pub code: u16,
    /// `Success`, or the kind of error.
    pub status_message: String,
    /// What went wrong, for errors.
    #[serde(default)]
    pub technical_message: Option<String>,
    /// The processes the call is about.
    #[serde(rename = "AsyncProcessStatus", default)]
    pub processes: Vec<ProcessStatus>,
    /// The list call's cursor of the next page; `None` on the last page and for other calls.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Where one process stands.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    /// The caller's reference ID (several processes may share one).
    pub reference_id: String,
    /// The definition the process runs.
    pub async_process_name: String,
    /// The process's own ID.
    pub async_process_id: String,
    /// `WaitingToProcess`, `InProgress`, `Success`, `Failed` or `Aborted`.
    pub status: String,
    /// A human summary of the status.
    pub message: String,
    /// The name of the current step.
    pub step_name: String,
    /// The current step, from 0.
    pub current_step_number: u32,
    /// How many steps the definition has.
    pub total_number_of_steps: u32,
    /// The steps; empty when the call asked for `verbose=false`.
    #[serde(default)]
    pub items_processed: Vec<StepStatus>,
    /// The data the process was started with.
    #[serde(default)]
    pub additional_data: Value,
}

impl ProcessStatus {
    /// Whether the process has ended (`Success`, `Failed` or `Aborted`).
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "Success" | "Failed" | "Aborted")
    }
}

/// One step of a process, with its counters and (unless `itemsList=false`) its items.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The step's position, from 0.
    pub step_number: u32,
    /// The step's name.
    pub step_name: String,
    /// The step's status, in the vocabulary of processes.
    pub status: String,
    /// Items with an outcome at this step.
    #[serde(rename = "currentNumberOfItemsProccessed")]
    pub processed: u64,
    /// Items that entered (or will enter) this step.
    #[serde(rename = "totalNumberOfItemsToBeProccessed")]
    pub total: u64,
    /// A human summary of the step.
    pub message: String,
    /// The items that succeeded, as given.
    #[serde(default)]
    pub successfully: Vec<Value>,
    /// The failures, grouped by code and message.
    #[serde(default)]
    pub failed: Vec<FailureGroup>,
}

/// Items that failed a step with the same code and message.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureGroup {
    /// The items, as given (absent with `itemsList=false`).
    #[serde(default)]
    pub items: Vec<Value>,
    /// The failure's code.
    pub code: i64,
    /// The failure's message (absent with `failMessage=false`).
    #[serde(default)]
    pub status_message: Option<String>,
}

/// A page of one step's items (`GET /v1/asyncprocesses/{id}/steps/{n}/items`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemsPage {
    /// The items, in recording order.
    pub items: Vec<StepItem>,
    /// The cursor of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// One item of a step and, when it failed there, why.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepItem {
    /// The item's position in the process's items, from 0.
    pub index: u64,
    /// The item, as given.
    pub item: Value,
    /// The failure's code, for a failed item.
    #[serde(default)]
    pub code: Option<i64>,
    /// The failure's message, for a failed item.
    #[serde(default)]
    pub status_message: Option<String>,
}

/// One part of an open process's items, as the server holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Its number, 1 to 10000: items are ordered by part at the close.
    pub part: u32,
    /// The items it holds.
    pub items: u64,
    /// The size of the upload it came from: a client resuming an upload skips a part the
    /// server holds with the bytes it would send.
    pub bytes: u64,
    /// When the server stored it (RFC 3339).
    pub received_at: String,
}

/// The parts an open process holds (`GET /v1/asyncprocesses/{id}/parts`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parts {
    /// The process.
    pub async_process_id: String,
    /// Still taking parts; `false` once closed, cancelled or expired.
    pub open: bool,
    /// The process's status.
    pub status: String,
    /// The items in every part so far.
    pub items: u64,
    /// In part order.
    pub parts: Vec<Part>,
}

/// The process definitions a server runs (`GET /v1/processdefinitions`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definitions {
    /// Every definition, in configuration order.
    pub process_definitions: Vec<Definition>,
}

/// A process definition: a name and its ordered steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    /// The name a start gives as `asyncProcessName`.
    pub name: String,
    /// The steps, in order.
    pub steps: Vec<DefinitionStep>,
}

/// One step of a definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionStep {
    /// The step's position, from 0.
    pub step_number: u32,
    /// The step's name.
    pub name: String,
    /// `builtin:NAME`, `queue:NAME` or `http:PROCESS/STEP` (a push step).
    pub handler: String,
    /// Items per task.
    pub chunk_size: u32,
    /// Attempts of a task before its items are recorded failed.
    pub max_attempts: u32,
    /// The longest a task's lease lasts, in seconds.
    pub timeout_secs: u64,
    /// `skip`, `continue` or `abort`.
    pub on_item_failure: String,
    /// The most failed items the step bears before its process fails, if limited.
    #[serde(default)]
    pub tolerated_failure_count: Option<u64>,
    /// The largest share (0 to 100) of the step's items that may fail, if limited.
    #[serde(default)]
    pub tolerated_failure_percentage: Option<f64>,
    /// The most tasks of the step's queue leased at once across every node, if limited.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
}

/// A process to start (`POST /v1/asyncprocesses`).
#[derive(Debug, Clone)]
pub struct Start {
    pub(crate) name: String,
    pub(crate) reference_id: String,
    pub(crate) items: Vec<Box<RawValue>>,
    pub(crate) additional_data: Option<Box<RawValue>>,
    pub(crate) callback_url: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) start_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) priority: Option<i32>,
    pub(crate) open: bool,
}

impl Start {
    /// A start of definition `name` that takes its items in parts ([`crate::Client::put_part`])
    /// and waits for them until [`crate::Client::close`].
    pub fn open(name: impl Into<String>, reference_id: impl Into<String>) -> Self {
        Self { open: true, ..Self::from_raw(name, reference_id, Vec::new()) }
    }

    /// A start of definition `name` over `items`, any values that serialize as JSON.
    pub fn new<T: Serialize>(
        name: impl Into<String>,
        reference_id: impl Into<String>,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Self, Error> {
        let items = items
            .into_iter()
            .enumerate()
            .map(|(n, item)| {
                serde_json::value::to_raw_value(&item)
                    .map_err(|e| Error::Invalid(format!("item {n} is not representable as JSON: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::from_raw(name, reference_id, items))
    }

    /// A start over items that are already JSON text, sent exactly as they are.
    pub fn from_raw(
        name: impl Into<String>,
        reference_id: impl Into<String>,
        items: Vec<Box<RawValue>>,
    ) -> Self {
        Self {
            name: name.into(),
            reference_id: reference_id.into(),
            items,
            additional_data: None,
            callback_url: None,
            idempotency_key: None,
            start_at: None,
            priority: None,
            open: false,
        }
    }

    /// The process's `additionalData` (a JSON object).
    pub fn additional_data(mut self, data: &Value) -> Result<Self, Error> {
        if !data.is_object() {
            return Err(Error::Invalid("additionalData must be a JSON object".into()));
        }
        self.additional_data = Some(
            serde_json::value::to_raw_value(data)
                .map_err(|e| Error::Invalid(format!("additionalData: {e}")))?,
        );
        Ok(self)
    }

    /// A URL the server calls when the process finishes (contract §5).
    pub fn callback_url(mut self, url: impl Into<String>) -> Self {
        self.callback_url = Some(url.into());
        self
    }

    /// A delayed start (`startAt`, at most 366 days ahead): the process waits, cancellable,
    /// until then.
    pub fn start_at(mut self, at: chrono::DateTime<chrono::Utc>) -> Self {
        self.start_at = Some(at);
        self
    }

    /// The process's `priority` (-100 to 100, default 0): higher first, processes of one
    /// priority taking turns.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// An `Idempotency-Key`: a repeated start with the same key returns the first one's process.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// How many items the start carries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the start carries no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The start's options as the query of a streamed start.
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut query =
            vec![("asyncProcessName", self.name.clone()), ("referenceId", self.reference_id.clone())];
        if let Some(data) = &self.additional_data {
            query.push(("additionalData", data.get().to_owned()));
        }
        if let Some(url) = &self.callback_url {
            query.push(("callbackUrl", url.clone()));
        }
        if let Some(priority) = self.priority {
            query.push(("priority", priority.to_string()));
        }
        if let Some(at) = &self.start_at {
            query.push(("startAt", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)));
        }
        query
    }

    /// The request body: the items copied as they are, never parsed again.
    pub(crate) fn body(&self) -> String {
        let mut body = format!(
            "{{\"asyncProcessName\":{},\"referenceId\":{}",
            Value::from(self.name.as_str()),
            Value::from(self.reference_id.as_str())
        );
        if self.open {
            body.push_str(",\"open\":true");
        } else {
            body.push_str(",\"items\":[");
            for (n, item) in self.items.iter().enumerate() {
                if n > 0 {
                    body.push(',');
                }
                body.push_str(item.get());
            }
            body.push(']');
        }
        if let Some(data) = &self.additional_data {
            body.push_str(",\"additionalData\":");
            body.push_str(data.get());
        }
        if let Some(url) = &self.callback_url {
            body.push_str(&format!(",\"callbackUrl\":{}", Value::from(url.as_str())));
        }
        if let Some(priority) = self.priority {
            body.push_str(&format!(",\"priority\":{priority}"));
        }
        if let Some(at) = &self.start_at {
            body.push_str(&format!(
                ",\"startAt\":\"{}\"",
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ));
        }
        body.push('}');
        body
    }
}

/// What a status call shows: the query parameters of `GET /v1/asyncprocesses/{id}`.
#[derive(Debug, Clone, Copy)]
pub struct StatusOptions {
    /// Steps and their items (`verbose`); `false` reads only the process.
    pub verbose: bool,
    /// The `successfully` and `failed` lists of each step (`itemsList`).
    pub items_list: bool,
    /// Each failure group's message (`failMessage`).
    pub fail_message: bool,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self { verbose: true, items_list: true, fail_message: true }
    }
}

impl StatusOptions {
    /// Steps with their counters and failure groups' codes, without item lists: the cheap read
    /// for following progress.
    pub fn counters() -> Self {
        Self { verbose: true, items_list: false, fail_message: true }
    }
}

/// Which processes a list call returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only processes with this status.
    pub status: Option<String>,
    /// Only processes of this definition.
    pub async_process_name: Option<String>,
    /// Only processes with this reference ID.
    pub reference_id: Option<String>,
    /// At most this many (the server's default when `None`).
    pub limit: Option<u32>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Which items of a step an items call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Every item with an outcome.
    All,
    /// Only those that succeeded.
    Successful,
    /// Only those that failed.
    Failed,
}

/// How a streamed start's items, or a result file, are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFormat {
    /// One JSON value a line.
    Ndjson,
    /// RFC 4180 with a header row.
    Csv,
}

/// Which items of a step a result file lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultOutcome {
    /// Every item of the process.
    All,
    /// Those that succeeded at the step.
    Succeeded,
    /// Those that failed at the step.
    Failed,
    /// Those with no outcome at the step (not reached yet, left out, or never run).
    Unprocessed,
}

/// A claim of tasks of a `queue:NAME` step (`POST /v1/tasks/claim`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// The queue's NAME.
    pub queue: String,
    /// The worker's name, as the server's log and leases know it.
    pub worker_id: String,
    /// At most this many tasks (1..=100).
    pub max_tasks: u32,
    /// The lease each task gets, in seconds (the server's default when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
    /// How long the server may hold the claim when nothing is due (0..=30 seconds).
    pub wait_seconds: u32,
}

/// A leased task: some items of one step of one process.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// The task's ID.
    pub task_id: i64,
    /// The lease's secret: completing, failing or extending the task needs it.
    pub lease_token: String,
    /// The process the items belong to.
    pub async_process_id: String,
    /// The process's reference ID.
    pub reference_id: String,
    /// The process's definition.
    pub async_process_name: String,
    /// The step, from 0.
    pub step_number: u32,
    /// The step's name.
    pub step_name: String,
    /// 1 on the first attempt, more on retries.
    pub attempt: u32,
    /// When the lease ends unless extended (RFC 3339).
    pub lease_expires_at: String,
    /// The process's `additionalData`.
    pub additional_data: Box<RawValue>,
    /// The items, each with its index in the process.
    pub items: Vec<TaskItem>,
    /// Set when the worker gives the task up (it is stopping, or the lease was lost).
    #[serde(skip)]
    pub(crate) cancelled: Arc<AtomicBool>,
}

impl Task {
    /// Whether the worker has given this task up: a handler that sees `true` may stop early,
    /// since nothing it reports will be recorded.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Marks the task given up, as the worker does when it stops or loses the lease; a
    /// handler that runs work elsewhere (a program, a remote call) can stop it on seeing this.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// The items' indices, in the task's order.
    pub fn indices(&self) -> impl Iterator<Item = u64> + '_ {
        self.items.iter().map(|i| i.index)
    }
}

/// One item of a task.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskItem {
    /// The item's position in the process's items, from 0 (stable across attempts).
    pub index: u64,
    /// The item, exactly as the process was given it.
    pub item: Box<RawValue>,
}

impl TaskItem {
    /// The item as a value of the caller's type.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.item.get())
    }
}

/// The outcome of every item of a task: what a worker completes it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes {
    succeeded: Vec<u64>,
    failed: Vec<(u64, i64, String)>,
}

impl Outcomes {
    /// No outcomes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every item of `task` succeeded.
    pub fn all_succeeded(task: &Task) -> Self {
        Self { succeeded: task.indices().collect(), failed: Vec::new() }
    }

    /// Item `index` succeeded.
    pub fn succeed(&mut self, index: u64) -> &mut Self {
        self.succeeded.push(index);
        self
    }

    /// Item `index` failed with `code` and a message (1 to 1,000 characters).
    pub fn fail(&mut self, index: u64, code: i64, message: impl Into<String>) -> &mut Self {
        self.failed.push((index, code, message.into()));
        self
    }

    /// How many items succeeded.
    pub fn succeeded(&self) -> usize {
        self.succeeded.len()
    }

    /// How many items failed.
    pub fn failed(&self) -> usize {
        self.failed.len()
    }

    /// Checks that every item of `task` has exactly one outcome and every message is one the
    /// server accepts, as the server will; the error names the first item at fault.
    pub fn check(&self, task: &Task) -> Result<(), String> {
        let expected: HashSet<u64> = task.indices().collect();
        let mut seen = HashSet::with_capacity(expected.len());
        let indices = self.succeeded.iter().chain(self.failed.iter().map(|(i, _, _)| i));
        for index in indices {
            if !expected.contains(index) {
                return Err(format!("item {index} is not in task {}", task.task_id));
            }
            if !seen.insert(*index) {
                return Err(format!("item {index} has more than one outcome"));
            }
        }
        let mut missing: Vec<u64> = expected.difference(&seen).copied().collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            let shown: Vec<String> = missing.iter().take(10).map(u64::to_string).collect();
            let more =
                if missing.len() > 10 { format!(" and {} more", missing.len() - 10) } else { String::new() };
            return Err(format!("no outcome for item(s) {}{more}", shown.join(", ")));
        }
        for (index, _, message) in &self.failed {
            let chars = message.chars().count();
            if !(1..=1_000).contains(&chars) {
                return Err(format!(
                    "item {index}: a failure's message must be 1 to 1000 characters, not {chars}"
                ));
            }
        }
        Ok(())
    }

    /// The complete call's body: failures grouped by code and message, in first-seen order.
    pub(crate) fn body(&self, lease_token: &str) -> Value {
        let mut order: Vec<(i64, &str)> = Vec::new();
        let mut groups: BTreeMap<(i64, &str), Vec<u64>> = BTreeMap::new();
        for (index, code, message) in &self.failed {
            let key = (*code, message.as_str());
            let group = groups.entry(key).or_default();
            if group.is_empty() {
                order.push(key);
            }
            group.push(*index);
        }
        let failed: Vec<Value> = order
            .into_iter()
            .map(|key| serde_json::json!({ "items": groups[&key], "code": key.0, "statusMessage": key.1 }))
            .collect();
        serde_json::json!({ "leaseToken": lease_token, "successfully": self.succeeded, "failed": failed })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(indices: &[u64]) -> Task {
        serde_json::from_value(json!({
            "taskId": 7, "leaseToken": "t", "asyncProcessId": "p", "referenceId": "r",
            "asyncProcessName": "n", "stepNumber": 0, "stepName": "s", "attempt": 1,
            "leaseExpiresAt": "2026-12-02T00:00:00Z", "additionalData": {},
            "items": indices.iter().map(|i| json!({ "index": i, "item": { "n": i } })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn every_item_needs_exactly_one_outcome() {
        let task = task(&[3, 5, 9]);
        assert_eq!(Outcomes::all_succeeded(&task).check(&task), Ok(()));
        let mut twice = Outcomes::new();
        twice.succeed(3).succeed(5).fail(3, 1, "x").succeed(9);
        assert_eq!(twice.check(&task), Err("item 3 has more than one outcome".into()));
        let mut stranger = Outcomes::new();
        stranger.succeed(4);
        assert_eq!(stranger.check(&task), Err("item 4 is not in task 7".into()));
        let mut short = Outcomes::new();
        short.succeed(5);
        assert_eq!(short.check(&task), Err("no outcome for item(s) 3, 9".into()));
        let mut silent = Outcomes::new();
        silent.succeed(3).succeed(5).fail(9, 1, "");
        assert!(silent.check(&task).unwrap_err().contains("1 to 1000 characters"));
    }

    #[test]
    fn failures_are_grouped_by_code_and_message_in_first_seen_order() {
        let mut outcomes = Outcomes::new();
        outcomes.fail(4, 7001, "No price").succeed(1).fail(2, 5001, "Invalid").fail(3, 7001, "No price");
        assert_eq!(
            outcomes.body("L"),
            json!({ "leaseToken": "L", "successfully": [1], "failed": [
                { "items": [4, 3], "code": 7001, "statusMessage": "No price" },
                { "items": [2], "code": 5001, "statusMessage": "Invalid" } ] })
        );
    }

    #[test]
    fn a_start_sends_its_items_as_given() {
        let items = vec![RawValue::from_string("{\"a\": 1.50}".into()).unwrap()];
        let start = Start::from_raw("Noop", "r \"1\"", items)
            .callback_url("http://127.0.0.1:9000/hook")
            .additional_data(&json!({ "k": "v" }))
            .unwrap();
        assert_eq!(
            start.body(),
            r#"{"asyncProcessName":"Noop","referenceId":"r \"1\"","items":[{"a": 1.50}],"additionalData":{"k":"v"},"callbackUrl":"http://127.0.0.1:9000/hook"}"#
        );
        assert!(Start::new("Noop", "r", [1]).unwrap().additional_data(&json!([1])).is_err());
        let at = chrono::DateTime::from_timestamp(1_764_931_500, 0).unwrap();
        assert_eq!(
            Start::new("Noop", "r", [1]).unwrap().start_at(at).priority(-3).body(),
            r#"{"asyncProcessName":"Noop","referenceId":"r","items":[1],"priority":-3,"startAt":"2025-12-05T10:45:00.000000Z"}"#
        );
        let streamed =
            Start::from_raw("Noop", "r", Vec::new()).callback_url("http://h/").start_at(at).priority(2);
        let query = streamed.query();
        let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("asyncProcessName", "Noop"),
                ("referenceId", "r"),
                ("callbackUrl", "http://h/"),
                ("priority", "2"),
                ("startAt", "2025-12-05T10:45:00.000000Z")
            ]
        );
    }

    #[test]
    fn envelopes_read_every_documented_shape() {
        let full: Envelope =
            serde_json::from_str(include_str!("../../../fixtures/documented-example.json")).unwrap();
        assert_eq!(full.processes.len(), 2);
        assert_eq!(full.processes[0].items_processed[0].failed[1].code, 5004);
        assert_eq!(full.processes[0].items_processed[1].processed, 3);
        let lean: Envelope = serde_json::from_value(json!({
            "code": 202, "statusMessage": "Success", "technicalMessage": null,
            "AsyncProcessStatus": [{ "referenceId": "r", "asyncProcessName": "n", "asyncProcessId": "p",
                "status": "Success", "message": "Completed", "stepName": "s", "currentStepNumber": 0,
                "totalNumberOfSteps": 1, "additionalData": {} }] }))
        .unwrap();
        assert!(lean.processes[0].items_processed.is_empty() && lean.processes[0].is_final());
    }
}
