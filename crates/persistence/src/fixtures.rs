//! Fixtures for the unit tests: processes started, claimed, completed and read through the
//! store's traits, as the engine and workers use them.

use async_engine_domain::{
    ClaimRequest, ClaimedTask, Detail, FailurePolicy, Handler, LookupId, NewProcess, ProcessDefinition,
    ProcessId, ProcessStatus, ProcessStore, RawJson, ReferenceId, Started, Status, StatusQuery, StatusReader,
    StepDefinition, TaskError, TaskReport, TaskStore, TenantId,
};
use serde_json::json;

use crate::store::Store;

pub(crate) const SECOND: i64 = 1_000_000;

pub(crate) fn definition(policies: &[FailurePolicy], chunk: u32) -> ProcessDefinition {
    ProcessDefinition {
        name: "T".into(),
        steps: policies
            .iter()
            .enumerate()
            .map(|(n, &policy)| StepDefinition {
                name: format!("S{n}"),
                handler: Handler::Queue(format!("q{n}")),
                chunk_size: chunk,
                max_attempts: 2,
                timeout_secs: 60,
                on_item_failure: policy,
                tolerance: Default::default(),
                max_in_flight: None,
            })
            .collect(),
        callback_url: None,
    }
}

pub(crate) fn begin(
    store: &Store,
    id: &str,
    policies: &[FailurePolicy],
    items: usize,
    chunk: u32,
) -> ProcessStatus {
    begin_with(store, id, policies, items, chunk, None)
}

pub(crate) fn begin_with(
    store: &Store,
    id: &str,
    policies: &[FailurePolicy],
    items: usize,
    chunk: u32,
    callback_url: Option<&str>,
) -> ProcessStatus {
    begin_definition(store, id, definition(policies, chunk), items, callback_url)
}

pub(crate) fn begin_definition(
    store: &Store,
    id: &str,
    definition: ProcessDefinition,
    items: usize,
    callback_url: Option<&str>,
) -> ProcessStatus {
    begin_new(store, &new_process(id, definition, items, callback_url))
}

/// What [`begin_definition`] starts, for a test to change first.
pub(crate) fn new_process(
    id: &str,
    definition: ProcessDefinition,
    items: usize,
    callback_url: Option<&str>,
) -> NewProcess {
    NewProcess {
        tenant: TenantId::default_tenant(),
        async_process_id: ProcessId::new(id).unwrap(),
        reference_id: ReferenceId::new("ref").unwrap(),
        definition,
        items: (0..items).map(|i| RawJson::from_value(&json!({ "n": i }))).collect(),
        additional_data: RawJson::empty_object(),
        idempotency_key: None,
        callback_url: callback_url.map(str::to_owned),
        now_micros: 0,
        start_at_micros: None,
        priority: 0,
    }
}

pub(crate) fn begin_new(store: &Store, new: &NewProcess) -> ProcessStatus {
    match store.start(new).unwrap() {
        Started::Created(status) => status,
        Started::Existing(_) => panic!("expected a new process"),
    }
}

pub(crate) fn claim(store: &Store, queue: &str, worker: &str, max: u32, now: i64) -> Vec<ClaimedTask> {
    store
        .claim(&ClaimRequest {
            queues: vec![queue.into()],
            tenant: None,
            worker_id: worker.into(),
            max_tasks: max,
            lease_micros: 10 * SECOND,
            now_micros: now,
        })
        .unwrap()
}

/// Completes a task: items whose index is in `failing` fail with code 7.
pub(crate) fn finish(store: &Store, task: &ClaimedTask, failing: &[u64], now: i64) -> Result<(), TaskError> {
    store.complete(None, task.task_id, &task.lease_token, &report_of(task, failing), now)
}

/// A report of every item of `task`: those in `failing` failed (code 7), the rest succeeded.
pub(crate) fn report_of(task: &ClaimedTask, failing: &[u64]) -> TaskReport {
    let (bad, good): (Vec<u64>, Vec<u64>) =
        task.items.iter().map(|(i, _)| *i).partition(|i| failing.contains(i));
    let failures = if bad.is_empty() {
        vec![]
    } else {
        vec![async_engine_domain::FailureSnapshot { code: 7, status_message: "Seven".into(), items: bad }]
    };
    TaskReport { successes: good, failures }
}

/// Runs every due task of `queue` to completion.
pub(crate) fn drain(store: &Store, queue: &str, failing: &[u64], now: i64) -> usize {
    let mut done = 0;
    loop {
        let tasks = claim(store, queue, "w", 10, now);
        if tasks.is_empty() {
            return done;
        }
        for task in &tasks {
            finish(store, task, failing, now).unwrap();
            done += 1;
        }
    }
}

pub(crate) fn status(store: &Store, id: &str) -> ProcessStatus {
    let query = StatusQuery {
        tenant: TenantId::default_tenant(),
        id: LookupId::new(id).unwrap(),
        kind: async_engine_domain::IdKind::AsyncProcessId,
        detail: Detail::Items,
    };
    store.find_status(&query).unwrap().remove(0)
}

/// `(status, processed, entered, successes listed, failures listed)` per step.
pub(crate) fn steps_of(process: &ProcessStatus) -> Vec<(Status, u64, u64, usize, usize)> {
    process
        .steps
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| {
            let items = s.items.as_ref().unwrap();
            (
                s.status,
                s.processed,
                s.total,
                items.successfully.len(),
                items.failed.iter().map(|g| g.items.len()).sum(),
            )
        })
        .collect()
}
