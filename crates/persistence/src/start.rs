//! Starting a process: its record, steps, items and first tasks, in one transaction.

use async_engine_domain::parts::open_message;
use async_engine_domain::{NewProcess, RawJson, Started, Status, StepDefinition};
use diesel::prelude::*;

use crate::advance::{advance, create_tasks};
use crate::connection::{DbConnection, per_backend, write_transaction};
use crate::error::Error;
use crate::queries::{INSERT_BATCH, insert_items, to_i32, to_i64};
use crate::run::{load_run, load_steps, report};
use crate::schema::{processes, steps};

#[derive(Insertable)]
#[diesel(table_name = processes)]
struct NewRunnable<'a> {
    tenant: &'a str,
    async_process_id: &'a str,
    reference_id: &'a str,
    name: &'a str,
    status: &'a str,
    message: &'a str,
    current_step: i32,
    total_steps: i32,
    item_count: i64,
    additional_data: &'a str,
    created_at: i64,
    updated_at: i64,
    runnable: bool,
    idempotency_key: Option<&'a str>,
    callback_url: Option<&'a str>,
    open_for_parts: bool,
    start_at: Option<i64>,
    priority: i32,
}

#[derive(Insertable)]
#[diesel(table_name = steps)]
struct NewRunnableStep<'a> {
    process_id: i64,
    step_number: i32,
    name: &'a str,
    status: &'a str,
    message: &'a str,
    entered: i64,
    succeeded: i64,
    failed: i64,
    handler: String,
    chunk_size: i32,
    max_attempts: i32,
    timeout_secs: i64,
    on_item_failure: &'a str,
    tolerated_failure_count: Option<i64>,
    tolerated_failure_hundredths: Option<i32>,
    max_in_flight: Option<i32>,
}

pub(crate) fn start(conn: &mut DbConnection, new: &NewProcess) -> Result<Started, Error> {
    start_with(conn, new, Some(new.items.len()), |conn, process_id| {
        insert_items(conn, process_id, 0, &new.items)?;
        Ok(new.items.len())
    })
}

/// The process an earlier start with this idempotency key made.
pub(crate) fn existing(conn: &mut DbConnection, tenant: &str, key: &str) -> Result<Option<Started>, Error> {
    let id: Option<String> = processes::table
        .filter(processes::tenant.eq(tenant))
        .filter(processes::idempotency_key.eq(key))
        .select(processes::async_process_id)
        .first(conn)
        .optional()?;
    id.map(|id| Ok(Started::Existing(report(conn, tenant, &id)?))).transpose()
}

/// A start whose items come from `items` as they arrive, inserted a batch at a time.
pub(crate) fn start_streamed(
    conn: &mut DbConnection,
    new: &NewProcess,
    items: &mut dyn Iterator<Item = Result<RawJson, String>>,
) -> Result<Started, Error> {
    start_with(conn, new, None, |conn, process_id| {
        let mut batch = Vec::with_capacity(INSERT_BATCH);
        let mut count = 0;
        for item in items {
            batch.push(item.map_err(Error::Items)?);
            if batch.len() == INSERT_BATCH {
                insert_items(conn, process_id, count, &batch)?;
                count += batch.len();
                batch.clear();
            }
        }
        insert_items(conn, process_id, count, &batch)?;
        Ok(count + batch.len())
    })
}

/// Starts a process open, in one transaction: its record and steps, no items and no tasks
/// until its close.
pub(crate) fn start_open(conn: &mut DbConnection, new: &NewProcess) -> Result<Started, Error> {
    write_transaction(conn, |conn| {
        if let Err(existing) = insert_process(conn, new, Some(0), true)? {
            return Ok(existing);
        }
        Ok(Started::Created(report(conn, new.tenant.as_str(), new.async_process_id.as_str())?))
    })
}

/// Starts a process in one transaction; `fill` inserts its items and says how many. With
/// `known`, the counters are written with the rows; otherwise once the items are in.
fn start_with(
    conn: &mut DbConnection,
    new: &NewProcess,
    known: Option<usize>,
    fill: impl FnOnce(&mut DbConnection, i64) -> Result<usize, Error>,
) -> Result<Started, Error> {
    write_transaction(conn, |conn| {
        let process_id = match insert_process(conn, new, known, false)? {
            Ok(process_id) => process_id,
            Err(existing) => return Ok(existing),
        };
        let count = fill(conn, process_id)?;
        if known.is_none() {
            set_item_count(conn, process_id, count)?;
        }
        run_from_the_start(conn, process_id, count, new.now_micros)?;
        Ok(Started::Created(report(conn, new.tenant.as_str(), new.async_process_id.as_str())?))
    })
}

/// The process's record and steps (the counters at `known` items, or 0), or the process an
/// earlier start with its idempotency key made.
fn insert_process(
    conn: &mut DbConnection,
    new: &NewProcess,
    known: Option<usize>,
    open: bool,
) -> Result<Result<i64, Started>, Error> {
    let tenant = new.tenant.as_str();
    if let Some(key) = &new.idempotency_key
        && let Some(existing) = existing(conn, tenant, key)?
    {
        return Ok(Err(existing));
    }
    let definition = &new.definition;
    let waiting = Status::WaitingToProcess;
    // A process started with its items gets its message from `refresh`, later in this
    // transaction.
    let message = if open { open_message(0, 0) } else { waiting.step_message().to_owned() };
    let process_id: i64 = diesel::insert_into(processes::table)
        .values(NewRunnable {
            tenant,
            async_process_id: new.async_process_id.as_str(),
            reference_id: new.reference_id.as_str(),
            name: &definition.name,
            status: waiting.as_str(),
            message: &message,
            current_step: 0,
            total_steps: to_i32(definition.steps.len())?,
            item_count: to_i64(known.unwrap_or(0))?,
            additional_data: new.additional_data.as_str(),
            created_at: new.now_micros,
            updated_at: new.now_micros,
            runnable: true,
            idempotency_key: new.idempotency_key.as_deref(),
            callback_url: new.callback_url.as_deref(),
            open_for_parts: open,
            start_at: new.start_at_micros,
            priority: new.priority,
        })
        .returning(processes::id)
        .get_result(conn)?;
    let rows = definition
        .steps
        .iter()
        .enumerate()
        .map(|(number, step)| {
            new_step(process_id, number, step, if number == 0 { known.unwrap_or(0) } else { 0 })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    per_backend!(conn, |c| diesel::insert_into(steps::table).values(&rows).execute(c))?;
    Ok(Ok(process_id))
}

/// Sets the process's item count, which step 0 enters whole, once its items are in.
pub(crate) fn set_item_count(conn: &mut DbConnection, process_id: i64, count: usize) -> Result<(), Error> {
    let count = to_i64(count)?;
    diesel::update(processes::table.filter(processes::id.eq(process_id)))
        .set(processes::item_count.eq(count))
        .execute(conn)?;
    diesel::update(steps::table.filter(steps::process_id.eq(process_id)).filter(steps::step_number.eq(0)))
        .set(steps::entered.eq(count))
        .execute(conn)?;
    Ok(())
}

/// Queues step 0's tasks over the process's `count` items and moves it on (an empty process
/// finishes here).
pub(crate) fn run_from_the_start(
    conn: &mut DbConnection,
    process_id: i64,
    count: usize,
    now: i64,
) -> Result<(), Error> {
    let first = load_steps(conn, process_id)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Corrupt("a process without steps".into()))?;
    let all: Vec<i64> = (0..to_i64(count)?).collect();
    let due = load_run(conn, process_id)?.start_at.map_or(now, |at| at.max(now));
    create_tasks(conn, process_id, 0, &first, &all, due)?;
    advance(conn, process_id, now)
}

fn new_step(
    process_id: i64,
    number: usize,
    step: &StepDefinition,
    entered: usize,
) -> Result<NewRunnableStep<'_>, Error> {
    let waiting = Status::WaitingToProcess;
    Ok(NewRunnableStep {
        process_id,
        step_number: to_i32(number)?,
        name: &step.name,
        status: waiting.as_str(),
        message: waiting.step_message(),
        entered: to_i64(entered)?,
        succeeded: 0,
        failed: 0,
        handler: step.handler.queue(),
        chunk_size: to_i32(step.chunk_size)?,
        max_attempts: to_i32(step.max_attempts)?,
        timeout_secs: to_i64(step.timeout_secs)?,
        on_item_failure: step.on_item_failure.as_str(),
        tolerated_failure_count: step.tolerance.count.map(to_i64).transpose()?,
        tolerated_failure_hundredths: step.tolerance.hundredths_of_percent.map(to_i32).transpose()?,
        max_in_flight: step.max_in_flight.map(to_i32).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{
        FailurePolicy, NewProcess, ProcessId, ProcessStore, RawJson, ReferenceId, Started, Status, TenantId,
    };
    use serde_json::json;

    use crate::fixtures::{SECOND, begin, claim, definition, drain, status};
    use crate::store::Store;
    use crate::testing::on_both_backends;

    on_both_backends! {
        fn an_empty_process_succeeds_at_once(store: &Store) {
            let started = begin(store, "p", &[FailurePolicy::Skip, FailurePolicy::Skip], 0, 10);
            assert_eq!(started.status, Status::Success);
        }
    }

    on_both_backends! {
        fn an_idempotency_key_returns_the_first_process(store: &Store) {
            let mut new = NewProcess {
                tenant: TenantId::default_tenant(),
                async_process_id: ProcessId::new("first").unwrap(),
                reference_id: ReferenceId::new("r").unwrap(),
                definition: definition(&[FailurePolicy::Skip], 10),
                items: vec![RawJson::from_value(&json!(1))],
                additional_data: RawJson::empty_object(),
                idempotency_key: Some("key-1".into()),
                callback_url: None,
                now_micros: 0,
                start_at_micros: None,
                priority: 0,
            };
            assert!(matches!(store.start(&new).unwrap(), Started::Created(_)));
            new.async_process_id = ProcessId::new("second").unwrap();
            match store.start(&new).unwrap() {
                Started::Existing(process) => assert_eq!(process.async_process_id, "first"),
                other => panic!("{other:?}"),
            }
            assert_eq!(drain(store, "queue:q0", &[], 0), 1, "one process, one task");
        }
    }

    on_both_backends! {
        fn a_delayed_start_waits_for_its_time_says_so_and_can_be_cancelled(store: &Store) {
            let later = |id: &str| NewProcess {
                items: vec![RawJson::from_value(&json!(1)), RawJson::from_value(&json!(2))],
                start_at_micros: Some(100 * SECOND),
                ..streamed(id, None)
            };
            let Started::Created(waiting) = store.start(&later("later")).unwrap() else { panic!("new") };
            assert_eq!(
                (waiting.status, waiting.message.as_str()),
                (Status::WaitingToProcess, "Scheduled to start at 1970-01-01T00:01:40.000Z")
            );
            store.start(&later("cancelled")).unwrap();
            let cancelled = store.cancel(&TenantId::default_tenant(), "cancelled", 0).unwrap();
            assert_eq!(cancelled.status, Status::Aborted);
            assert!(claim(store, "queue:q0", "w", 10, 100 * SECOND - 1).is_empty(), "not before its time");
            let due = claim(store, "queue:q0", "w", 10, 100 * SECOND);
            assert_eq!(due.iter().map(|t| t.async_process_id.as_str()).collect::<Vec<_>>(), ["later"]);
            let running = status(store, "later");
            assert_eq!((running.status, running.message.as_str()), (Status::InProgress, "In progress"));
            let past = NewProcess { start_at_micros: Some(-SECOND), ..later("past") };
            let Started::Created(past) = store.start(&past).unwrap() else { panic!("new") };
            assert_eq!(past.message, "Waiting to process", "a time gone by starts at once");
            assert_eq!(claim(store, "queue:q0", "w", 10, 0).len(), 1);
        }
    }

    fn streamed(id: &str, key: Option<&str>) -> NewProcess {
        NewProcess {
            tenant: TenantId::default_tenant(),
            async_process_id: ProcessId::new(id).unwrap(),
            reference_id: ReferenceId::new("streamed").unwrap(),
            definition: definition(&[FailurePolicy::Skip], 1_000),
            items: Vec::new(),
            additional_data: RawJson::empty_object(),
            idempotency_key: key.map(str::to_owned),
            callback_url: None,
            now_micros: 0,
            start_at_micros: None,
            priority: 0,
        }
    }

    on_both_backends! {
        fn a_streamed_start_counts_and_cuts_what_came_and_a_failed_one_leaves_nothing(store: &Store) {
            // More than one insert batch, and a last batch that is not full.
            let items = (0..12_345).map(|n| Ok(RawJson::from_value(&json!({ "n": n }))));
            let started = store.start_streamed(&streamed("whole", Some("k")), &mut items.into_iter()).unwrap();
            let Started::Created(process) = started else { panic!("{started:?}") };
            let step = &process.steps.as_ref().unwrap()[0];
            assert_eq!((step.total, process.status), (12_345, Status::WaitingToProcess));
            assert_eq!(drain(store, "queue:q0", &[], 0), 13, "tasks of 1,000 over every item");

            let broken = (0..7_000).map(|n| if n < 6_999 { Ok(RawJson::from_value(&json!(n))) } else { Err("line 7000: cut off".to_owned()) });
            match store.start_streamed(&streamed("broken", None), &mut broken.into_iter()) {
                Err(async_engine_domain::StreamedStartError::Items(why)) => assert_eq!(why, "line 7000: cut off"),
                other => panic!("{other:?}"),
            }
            let query = async_engine_domain::StatusQuery {
                tenant: TenantId::default_tenant(),
                id: async_engine_domain::LookupId::new("broken").unwrap(),
                kind: async_engine_domain::IdKind::AsyncProcessId,
                detail: async_engine_domain::Detail::Process,
            };
            assert!(async_engine_domain::StatusReader::find_status(store, &query).unwrap().is_empty());
            assert_eq!(drain(store, "queue:q0", &[], 0), 0, "and no task of the broken one");

            // A repeated key returns the first process without reading the items.
            let mut untouched = std::iter::once(Err("not read".to_owned()));
            match store.start_streamed(&streamed("again", Some("k")), &mut untouched).unwrap() {
                Started::Existing(process) => assert_eq!(process.async_process_id, "whole"),
                other => panic!("{other:?}"),
            }
        }
    }
}
