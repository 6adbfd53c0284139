//! What a lease holder may do: complete, heartbeat or fail its task; the outcomes recorded.

use std::collections::{BTreeMap, HashSet};

use async_engine_domain::lifecycle::{self};
use async_engine_domain::work::GAVE_UP_CODE;
use async_engine_domain::{Completion, TaskError, TaskReport, TenantId};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
use subtle::ConstantTimeEq;

use crate::advance::{advance, end_early};
use crate::connection::{DbConnection, lock_process, write_transaction};
use crate::error::Error;
use crate::queries::to_i64;
use crate::run::{DONE, LEASED, QUEUED, RunStepRow, TaskRow, end_reason, indices_of, load_run};
use crate::schema::{failure_groups, processes, steps, tasks};

/// One failure group to record: code, message, item indices.
type Failures<'a> = Vec<(i64, &'a str, Vec<i64>)>;

/// Tasks an external worker of `tenant` may act on: those of its tenant's processes; every
/// task for the engine (`None`). One statement shape for both, as in `due_tasks`.
macro_rules! of_tenant {
    ($tenant:expr) => {{
        let tenant: Option<&TenantId> = $tenant;
        tenant.is_none().into_sql::<diesel::sql_types::Bool>().or(diesel::dsl::exists(
            processes::table
                .filter(processes::id.eq(tasks::process_id))
                .filter(processes::tenant.eq(tenant.map_or("", |t| t.as_str()).to_owned())),
        ))
    }};
}

/// The task behind a lease, if the lease is current, with its process locked. Another
/// tenant's task is looked up like a missing one: no lock is taken and the refusal is the same.
fn locked_lease(
    conn: &mut DbConnection,
    tenant: Option<&TenantId>,
    task_id: i64,
    token: &str,
) -> Result<Result<TaskRow, TaskError>, Error> {
    let process_id: Option<i64> = tasks::table
        .find(task_id)
        .filter(of_tenant!(tenant))
        .select(tasks::process_id)
        .first(conn)
        .optional()?;
    if let Some(process_id) = process_id {
        lock_process(conn, process_id)?;
    }
    leased_task(conn, tenant, task_id, token)
}

/// The task behind a lease, if the lease is current and the task is one the caller may act on.
fn leased_task(
    conn: &mut DbConnection,
    tenant: Option<&TenantId>,
    task_id: i64,
    token: &str,
) -> Result<Result<TaskRow, TaskError>, Error> {
    macro_rules! task {
        () => {
            tasks::table.find(task_id).filter(of_tenant!(tenant)).select(TaskRow::as_select())
        };
    }
    // On PostgreSQL the row is locked and read as last committed: a claim leases a task
    // without its process's lock, and one taking over this lease at this instant is waited
    // for, its new token then seen, instead of both holders recording the task.
    let task: Option<TaskRow> = match conn {
        DbConnection::Pg(pg) => task!().for_update().first(pg).optional()?,
        DbConnection::Sqlite(sqlite) => task!().first(sqlite).optional()?,
    };
    // One answer for every refusal, and the token compared in constant time: a caller without
    // the lease learns nothing, not even whether the task exists (or is another tenant's).
    let current = task.filter(|task| {
        task.state == LEASED
            && task
                .lease_token
                .as_deref()
                .is_some_and(|held| bool::from(held.as_bytes().ct_eq(token.as_bytes())))
    });
    Ok(current.ok_or_else(|| {
        TaskError::Conflict(format!(
            "task {task_id} has no current lease with this token: unknown, or taken over, finished or cancelled"
        ))
    }))
}

/// A report's indices as they are recorded, or why the report is refused: every item of the
/// task once, and none of another.
fn checked<'a>(task: &TaskRow, report: &'a TaskReport) -> Result<Result<Recorded<'a>, TaskError>, Error> {
    let task_id = task.id;
    let expected: HashSet<i64> = indices_of(task)?.into_iter().collect();
    let mut seen = HashSet::with_capacity(expected.len());
    let reported = report.successes.iter().chain(report.failures.iter().flat_map(|f| &f.items));
    for &index in reported {
        // Beyond i64 is no index of any task: the caller's mistake, not ours.
        let index = i64::try_from(index).unwrap_or(-1);
        if !expected.contains(&index) {
            return Ok(Err(TaskError::Invalid(format!("item {index} is not an item of task {task_id}"))));
        }
        if !seen.insert(index) {
            return Ok(Err(TaskError::Invalid(format!("item {index} is reported more than once"))));
        }
    }
    if seen.len() != expected.len() {
        let mut missing: Vec<i64> = expected.difference(&seen).copied().collect();
        missing.sort_unstable();
        missing.truncate(10);
        return Ok(Err(TaskError::Invalid(format!(
            "every item of the task needs an outcome; missing: {missing:?}{}",
            if expected.len() - seen.len() > 10 { " ..." } else { "" }
        ))));
    }
    let successes = report.successes.iter().map(|&i| to_i64(i)).collect::<Result<Vec<_>, _>>()?;
    let failures = report
        .failures
        .iter()
        .map(|f| {
            Ok((
                f.code,
                f.status_message.as_str(),
                f.items.iter().map(|&i| to_i64(i)).collect::<Result<_, _>>()?,
            ))
        })
        .collect::<Result<Failures, Error>>()?;
    Ok(Ok(Recorded { successes, failures }))
}

/// What one or more reports record at one step of one process.
#[derive(Default)]
struct Recorded<'a> {
    successes: Vec<i64>,
    failures: Failures<'a>,
}

pub(crate) fn complete(
    conn: &mut DbConnection,
    tenant: Option<&TenantId>,
    task_id: i64,
    token: &str,
    report: &TaskReport,
    now: i64,
) -> Result<Result<(), TaskError>, Error> {
    write_transaction(conn, |conn| {
        let task = match locked_lease(conn, tenant, task_id, token)? {
            Ok(task) => task,
            Err(refused) => return Ok(Err(refused)),
        };
        let recorded = match checked(&task, report)? {
            Ok(recorded) => recorded,
            Err(refused) => return Ok(Err(refused)),
        };
        record(conn, task.process_id, task.step_number, &recorded.successes, &recorded.failures)?;
        finish_task(conn, task.id, None)?;
        advance(conn, task.process_id, now)?;
        Ok(Ok(()))
    })
}

/// Several tasks recorded in one transaction, each as [`complete`] would. The outcomes of one
/// step of one process go in together (one insert, one counter update), and each process moves
/// on once, after all of its tasks are in: what a transaction per task paid per task is paid
/// per batch. A report with failures at a step they may stop (`abort`, or a tolerance) is
/// recorded at once, so that the process stops before its next task of the batch is looked
/// at, as one at a time would.
pub(crate) fn complete_all(
    conn: &mut DbConnection,
    tenant: Option<&TenantId>,
    completions: &[Completion],
    now: i64,
) -> Result<Vec<Result<(), TaskError>>, Error> {
    write_transaction(conn, |conn| {
        let ids: Vec<i64> = completions.iter().map(|c| c.task_id).collect();
        let mut locked: Vec<i64> = tasks::table
            .filter(tasks::id.eq_any(&ids))
            .filter(of_tenant!(tenant))
            .select(tasks::process_id)
            .distinct()
            .load(conn)?;
        // In one order for every batch, so that two batches never wait on each other in a cycle.
        locked.sort_unstable();
        for &process_id in &locked {
            lock_process(conn, process_id)?;
        }
        let mut answers = Vec::with_capacity(completions.len());
        let mut pending: BTreeMap<(i64, i32), Recorded> = BTreeMap::new();
        for completion in completions {
            let task = match leased_task(conn, tenant, completion.task_id, &completion.lease_token)? {
                Ok(task) => task,
                Err(refused) => {
                    answers.push(Err(refused));
                    continue;
                }
            };
            let recorded = match checked(&task, &completion.report)? {
                Ok(recorded) => recorded,
                Err(refused) => {
                    answers.push(Err(refused));
                    continue;
                }
            };
            finish_task(conn, task.id, None)?;
            let key = (task.process_id, task.step_number);
            let aborts = !recorded.failures.is_empty() && may_stop(conn, key)?;
            let group = pending.entry(key).or_default();
            group.successes.extend(recorded.successes);
            group.failures.extend(recorded.failures);
            if aborts && let Some(group) = pending.remove(&key) {
                record(conn, key.0, key.1, &group.successes, &group.failures)?;
            }
            answers.push(Ok(()));
        }
        for ((process_id, step_number), group) in &pending {
            record(conn, *process_id, *step_number, &group.successes, &group.failures)?;
        }
        for &process_id in &locked {
            advance(conn, process_id, now)?;
        }
        Ok(answers)
    })
}

fn may_stop(conn: &mut DbConnection, (process_id, step_number): (i64, i32)) -> Result<bool, Error> {
    let step: RunStepRow = steps::table
        .filter(steps::process_id.eq(process_id))
        .filter(steps::step_number.eq(step_number))
        .select(RunStepRow::as_select())
        .first(conn)?;
    Ok(lifecycle::may_stop_process(step.policy()?, step.tolerance()?))
}

pub(crate) fn heartbeat(
    conn: &mut DbConnection,
    tenant: Option<&TenantId>,
    task_id: i64,
    token: &str,
    lease_micros: i64,
    now: i64,
) -> Result<Result<i64, TaskError>, Error> {
    write_transaction(conn, |conn| {
        let task = match locked_lease(conn, tenant, task_id, token)? {
            Ok(task) => task,
            Err(refused) => return Ok(Err(refused)),
        };
        let expires = now.saturating_add(lease_micros.min(task.timeout_secs.saturating_mul(1_000_000)));
        diesel::update(tasks::table.find(task_id))
            .set((tasks::lease_expires_at.eq(expires), tasks::heartbeat_at.eq(now)))
            .execute(conn)?;
        Ok(Ok(expires))
    })
}

pub(crate) fn fail(
    conn: &mut DbConnection,
    tenant: Option<&TenantId>,
    task_id: i64,
    token: &str,
    message: &str,
    retryable: bool,
    now: i64,
) -> Result<Result<(), TaskError>, Error> {
    write_transaction(conn, |conn| {
        let task = match locked_lease(conn, tenant, task_id, token)? {
            Ok(task) => task,
            Err(refused) => return Ok(Err(refused)),
        };
        if retryable && task.attempt < task.max_attempts {
            // 1 s, 2 s, 4 s ... at most a minute between attempts.
            let backoff = 1_000_000_i64 << task.attempt.clamp(1, 7).saturating_sub(1);
            diesel::update(tasks::table.find(task.id))
                .set((
                    tasks::state.eq(QUEUED),
                    tasks::lease_token.eq(None::<String>),
                    tasks::lease_expires_at.eq(None::<i64>),
                    tasks::available_at.eq(now.saturating_add(backoff.min(60_000_000))),
                    tasks::last_error.eq(message),
                ))
                .execute(conn)?;
        } else {
            give_up(conn, &task, message, now)?;
        }
        Ok(Ok(()))
    })
}

/// Records every item of a task as failed and moves the process on.
pub(crate) fn give_up(conn: &mut DbConnection, task: &TaskRow, message: &str, now: i64) -> Result<(), Error> {
    let indices = indices_of(task)?;
    record(conn, task.process_id, task.step_number, &[], &vec![(GAVE_UP_CODE, message, indices)])?;
    finish_task(conn, task.id, Some(message))?;
    advance(conn, task.process_id, now)
}

pub(crate) fn finish_task(conn: &mut DbConnection, task_id: i64, error: Option<&str>) -> Result<(), Error> {
    diesel::update(tasks::table.find(task_id))
        .set((tasks::state.eq(DONE), tasks::lease_token.eq(None::<String>), tasks::last_error.eq(error)))
        .execute(conn)?;
    Ok(())
}

/// Inserts outcomes in recording order and moves the step's counters; a failure at a step
/// whose policy is `abort`, or one more than its tolerance bears, stops the process.
fn record(
    conn: &mut DbConnection,
    process_id: i64,
    step_number: i32,
    successes: &[i64],
    failures: &Failures,
) -> Result<(), Error> {
    let step: RunStepRow = steps::table
        .filter(steps::process_id.eq(process_id))
        .filter(steps::step_number.eq(step_number))
        .select(RunStepRow::as_select())
        .first(conn)?;
    let mut seq = step.next_seq;
    insert_outcomes(conn, process_id, step_number, seq, None, successes)?;
    seq += to_i64(successes.len())?;
    let mut failed = 0_i64;
    for (code, message, indices) in failures {
        if indices.is_empty() {
            continue;
        }
        let group = failure_group(conn, process_id, step_number, *code, message)?;
        insert_outcomes(conn, process_id, step_number, seq, Some(group), indices)?;
        seq += to_i64(indices.len())?;
        failed += to_i64(indices.len())?;
    }
    let succeeded = to_i64(successes.len())?;
    diesel::update(
        steps::table.filter(steps::process_id.eq(process_id)).filter(steps::step_number.eq(step_number)),
    )
    .set((
        steps::succeeded.eq(steps::succeeded + succeeded),
        steps::failed.eq(steps::failed + failed),
        steps::next_seq.eq(seq),
    ))
    .execute(conn)?;
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    let stop = lifecycle::stops_process(
        step.policy()?,
        step.tolerance()?,
        count(failed),
        count(step.entered),
        count(step.failed + failed),
    );
    if let Some(end) = stop {
        let process = load_run(conn, process_id)?;
        if process.end_reason.is_none() {
            end_early(conn, process_id, end_reason(end))?;
        }
    }
    Ok(())
}

/// Outcomes of one kind (successes, or one failure group) in one statement whatever their
/// count, numbered in recording order from `first_seq`: the item indices are bound as one
/// array (JSON text on SQLite), so the statement is a short fixed text with five binds, not a
/// `VALUES` list of five binds a row (diesel does not keep raw SQL prepared: it is parsed per
/// call, microseconds).
fn insert_outcomes(
    conn: &mut DbConnection,
    process_id: i64,
    step_number: i32,
    first_seq: i64,
    group: Option<i64>,
    indices: &[i64],
) -> Result<(), Error> {
    if indices.is_empty() {
        return Ok(());
    }
    match conn {
        DbConnection::Pg(pg) => {
            diesel::sql_query(
                "INSERT INTO outcomes (process_id, step_number, item_index, seq, failure_group) \
                 SELECT $1, $2, i, $3 + n - 1, $4 FROM unnest($5::bigint[]) WITH ORDINALITY AS t (i, n)",
            )
            .bind::<BigInt, _>(process_id)
            .bind::<Integer, _>(step_number)
            .bind::<BigInt, _>(first_seq)
            .bind::<Nullable<BigInt>, _>(group)
            .bind::<Array<BigInt>, _>(indices)
            .execute(pg)?;
        }
        DbConnection::Sqlite(sqlite) => {
            let indices = serde_json::to_string(indices).map_err(|e| Error::Corrupt(e.to_string()))?;
            diesel::sql_query(
                "INSERT INTO outcomes (process_id, step_number, item_index, seq, failure_group) \
                 SELECT ?1, ?2, value, ?3 + key, ?4 FROM json_each(?5)",
            )
            .bind::<BigInt, _>(process_id)
            .bind::<Integer, _>(step_number)
            .bind::<BigInt, _>(first_seq)
            .bind::<Nullable<BigInt>, _>(group)
            .bind::<Text, _>(indices)
            .execute(sqlite)?;
        }
    }
    Ok(())
}

fn failure_group(
    conn: &mut DbConnection,
    process_id: i64,
    step_number: i32,
    code: i64,
    message: &str,
) -> Result<i64, Error> {
    let existing: Option<i64> = failure_groups::table
        .filter(failure_groups::process_id.eq(process_id))
        .filter(failure_groups::step_number.eq(step_number))
        .filter(failure_groups::code.eq(code))
        .filter(failure_groups::status_message.eq(message))
        .select(failure_groups::id)
        .first(conn)
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    Ok(diesel::insert_into(failure_groups::table)
        .values(crate::models::NewFailureGroup { process_id, step_number, code, status_message: message })
        .returning(failure_groups::id)
        .get_result(conn)?)
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{
        ClaimedTask, Completion, FailurePolicy, RawJson, Status, TaskError, TaskReport, TaskStore, TenantId,
        Tolerance,
    };
    use serde_json::json;

    use crate::fixtures::{
        SECOND, begin, begin_definition, claim, definition, finish, report_of, status, steps_of,
    };
    use crate::store::Store;
    use crate::testing::on_both_backends;

    fn completion(task: &ClaimedTask, failing: &[u64]) -> Completion {
        Completion {
            task_id: task.task_id,
            lease_token: task.lease_token.clone(),
            report: report_of(task, failing),
        }
    }

    on_both_backends! {
        fn a_batch_is_recorded_at_once_with_each_refusal_in_its_place(store: &Store) {
            begin(store, "a", &[FailurePolicy::Skip, FailurePolicy::Skip], 6, 2);
            begin(store, "b", &[FailurePolicy::Skip], 2, 2);
            let mut tasks = claim(store, "queue:q0", "w", 10, 0);
            tasks.sort_by_key(|t| (t.async_process_id.clone(), t.task_id));
            assert_eq!(tasks.len(), 4, "three of a, one of b");
            let mut given: Vec<Completion> = tasks.iter().map(|t| completion(t, &[1])).collect();
            let stale = given.iter().position(|c| c.task_id == tasks[1].task_id).unwrap();
            given[stale].lease_token = "stale".into();
            given.push(given[0].clone());
            given.push(Completion { report: TaskReport::default(), ..completion(&tasks[2], &[]) });
            let answers = store.complete_all(None, &given, SECOND).unwrap();
            assert_eq!(answers.len(), 6);
            assert!(answers[0].is_ok() && answers[2].is_ok() && answers[3].is_ok(), "{answers:?}");
            assert!(matches!(answers[1], Err(TaskError::Conflict(_))), "a stale lease: {answers:?}");
            assert!(matches!(answers[4], Err(TaskError::Conflict(_))), "once only: {answers:?}");
            assert!(matches!(answers[5], Err(TaskError::Conflict(_))), "recorded already: {answers:?}");
            let b = status(store, "b");
            assert_eq!((b.status, steps_of(&b)), (Status::Failed, vec![(Status::Failed, 2, 2, 1, 1)]));
            let a = status(store, "a");
            assert_eq!(steps_of(&a)[0], (Status::InProgress, 4, 6, 3, 1), "the stale task's items wait");
            finish(store, &tasks[1], &[], SECOND).unwrap();
            let a = status(store, "a");
            assert_eq!(steps_of(&a), [(Status::Failed, 6, 6, 5, 1), (Status::WaitingToProcess, 0, 5, 0, 0)]);
            assert_eq!(a.current_step_number, 1, "moved on once all of step 0 was in");
        }
    }

    on_both_backends! {
        fn an_abort_in_a_batch_stops_its_process_before_its_next_task(store: &Store) {
            begin(store, "x", &[FailurePolicy::Abort], 4, 2);
            let tasks = claim(store, "queue:q0", "w", 10, 0);
            let given = [completion(&tasks[0], &[0]), completion(&tasks[1], &[])];
            let answers = store.complete_all(None, &given, SECOND).unwrap();
            assert!(answers[0].is_ok());
            assert!(matches!(answers[1], Err(TaskError::Conflict(_))), "cancelled by the abort: {answers:?}");
            let x = status(store, "x");
            assert_eq!((x.status, steps_of(&x)), (Status::Failed, vec![(Status::Aborted, 2, 4, 1, 1)]));
        }
    }

    /// A process of `steps` skip steps whose first bears `tolerance`.
    fn tolerant(store: &Store, id: &str, tolerance: Tolerance, items: usize, chunk: u32) {
        let mut definition = definition(&[FailurePolicy::Skip, FailurePolicy::Skip], chunk);
        definition.steps[0].tolerance = tolerance;
        begin_definition(store, id, definition, items, None);
    }

    on_both_backends! {
        fn one_failure_more_than_the_count_tolerated_fails_the_process_and_cancels_the_rest(store: &Store) {
            tolerant(store, "p", Tolerance { count: Some(2), hundredths_of_percent: None }, 10, 2);
            let tasks = claim(store, "queue:q0", "w", 10, 0);
            assert_eq!(tasks.len(), 5);
            finish(store, &tasks[0], &[0], 0).unwrap();
            finish(store, &tasks[1], &[2], 0).unwrap();
            let bearing = status(store, "p");
            assert_eq!((bearing.status, steps_of(&bearing)[0]), (Status::InProgress, (Status::InProgress, 4, 10, 2, 2)));
            let given = [completion(&tasks[2], &[4]), completion(&tasks[3], &[])];
            let answers = store.complete_all(None, &given, SECOND).unwrap();
            assert!(answers[0].is_ok());
            assert!(matches!(answers[1], Err(TaskError::Conflict(_))), "cancelled by the stop: {answers:?}");
            assert!(matches!(finish(store, &tasks[4], &[], SECOND), Err(TaskError::Conflict(_))));
            assert!(claim(store, "queue:q0", "w", 10, 100 * SECOND).is_empty(), "nothing left to run");
            let failed = status(store, "p");
            assert_eq!(failed.status, Status::Failed);
            assert_eq!(failed.message, "Stopped: 3 of 10 items failed at step 0 (S0), more than it tolerates");
            assert_eq!(
                steps_of(&failed),
                [(Status::Failed, 6, 10, 3, 3), (Status::Aborted, 0, 0, 0, 0)],
                "the step that passed its tolerance fails unfinished"
            );
        }
    }

    on_both_backends! {
        fn a_share_tolerated_is_measured_against_the_items_that_entered(store: &Store) {
            let fifth = Tolerance { count: None, hundredths_of_percent: Some(2_000) };
            tolerant(store, "bears", fifth, 10, 5);
            tolerant(store, "passes", fifth, 10, 5);
            let tasks = claim(store, "queue:q0", "w", 10, 0);
            assert_eq!(tasks.len(), 4);
            for (id, failing) in [("bears", [0_u64, 5].as_slice()), ("passes", &[0, 5, 6])] {
                for task in tasks.iter().filter(|t| t.async_process_id == id) {
                    finish(store, task, failing, 0).unwrap();
                }
            }
            let bears = status(store, "bears");
            assert_eq!(bears.status, Status::InProgress, "2 of 10 is not more than 20 %");
            assert_eq!(steps_of(&bears)[1], (Status::WaitingToProcess, 0, 8, 0, 0));
            let passes = status(store, "passes");
            assert_eq!(passes.status, Status::Failed);
            assert_eq!(
                steps_of(&passes),
                [(Status::Failed, 10, 10, 7, 3), (Status::Aborted, 0, 0, 0, 0)],
                "finished, but its failures keep every item from the next step"
            );
        }
    }

    on_both_backends! {
        fn a_stale_lease_records_nothing_and_the_new_holder_finishes(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip], 4, 4);
            let first = claim(store, "queue:q0", "w1", 1, 0).remove(0);
            assert!(claim(store, "queue:q0", "w2", 1, 5 * SECOND).is_empty(), "lease still current");
            let second = claim(store, "queue:q0", "w2", 1, 11 * SECOND).remove(0);
            assert_eq!(second.attempt, 2);
            assert!(matches!(finish(store, &first, &[], 12 * SECOND), Err(TaskError::Conflict(_))));
            assert_eq!(status(store, "p").steps.unwrap()[0].processed, 0);
            finish(store, &second, &[], 12 * SECOND).unwrap();
            assert!(
                matches!(finish(store, &second, &[], 12 * SECOND), Err(TaskError::Conflict(_))),
                "once only"
            );
            assert_eq!(steps_of(&status(store, "p")), [(Status::Success, 4, 4, 4, 0)]);
        }
    }

    on_both_backends! {
        fn a_report_must_cover_every_item_exactly_once(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip], 3, 3);
            let task = claim(store, "queue:q0", "w", 1, 0).remove(0);
            let report = |successes: Vec<u64>| TaskReport { successes, failures: vec![] };
            for (bad, mention) in [
                (report(vec![0, 1]), "missing"),
                (report(vec![0, 1, 1, 2]), "more than once"),
                (report(vec![0, 1, 2, 3]), "not an item"),
            ] {
                match store.complete(None, task.task_id, &task.lease_token, &bad, 0) {
                    Err(TaskError::Invalid(text)) => assert!(text.contains(mention), "{text}"),
                    other => panic!("expected Invalid, got {other:?}"),
                }
            }
            assert_eq!(status(store, "p").steps.unwrap()[0].processed, 0);
            store.complete(None, task.task_id, &task.lease_token, &report(vec![2, 0, 1]), 0).unwrap();
            let listed: Vec<serde_json::Value> = status(store, "p").steps.unwrap()[0]
                .items
                .as_ref()
                .unwrap()
                .successfully
                .iter()
                .map(RawJson::to_value)
                .collect();
            assert_eq!(listed, [json!({"n": 2}), json!({"n": 0}), json!({"n": 1})], "recording order");
        }
    }

    on_both_backends! {
        fn failing_a_task_retries_it_later_then_gives_up(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip], 2, 2);
            let task = claim(store, "queue:q0", "w", 1, 0).remove(0);
            store.fail(None, task.task_id, &task.lease_token, "flaky", true, 0).unwrap();
            assert!(claim(store, "queue:q0", "w", 1, SECOND / 2).is_empty(), "backs off");
            let again = claim(store, "queue:q0", "w", 1, 2 * SECOND).remove(0);
            store.fail(None, again.task_id, &again.lease_token, "still flaky", true, 2 * SECOND).unwrap();
            let steps = status(store, "p").steps.unwrap();
            let group = &steps[0].items.as_ref().unwrap().failed[0];
            assert_eq!((group.status_message.as_str(), group.items.len()), ("still flaky", 2));
        }
    }

    on_both_backends! {
        fn heartbeats_extend_only_current_leases(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip], 1, 1);
            let task = claim(store, "queue:q0", "w", 1, 0).remove(0);
            assert_eq!(
                store.heartbeat(None, task.task_id, &task.lease_token, 30 * SECOND, 5 * SECOND).unwrap(),
                35 * SECOND
            );
            assert!(claim(store, "queue:q0", "w2", 1, 20 * SECOND).is_empty(), "extended");
            assert!(matches!(store.heartbeat(None, task.task_id, "wrong", SECOND, 0), Err(TaskError::Conflict(_))));
            assert!(matches!(store.heartbeat(None, 999, "x", SECOND, 0), Err(TaskError::Conflict(_))));
            // Run out but not taken over: the lease is still the worker's to extend.
            assert!(store.heartbeat(None, task.task_id, &task.lease_token, SECOND, 40 * SECOND).is_ok());
        }
    }

    on_both_backends! {
        fn another_tenant_s_lease_calls_are_refused_like_a_missing_task_s(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip], 1, 1);
            let task = claim(store, "queue:q0", "w", 1, 0).remove(0);
            let (mine, theirs) = (Some(TenantId::default_tenant()), Some(TenantId::new("other").unwrap()));
            let missing = 999_999;
            // The refusal's text with the task id taken out: the same for both, or it tells.
            let refusal = |result: Result<(), TaskError>, id: i64| match result {
                Err(TaskError::Conflict(text)) => text.replace(&id.to_string(), "N"),
                other => panic!("expected a conflict, got {other:?}"),
            };
            let report = TaskReport { successes: vec![0], failures: vec![] };
            for (id, token) in [(missing, "x"), (task.task_id, task.lease_token.as_str())] {
                let by_them = [
                    refusal(store.heartbeat(theirs.clone(), id, token, 30 * SECOND, SECOND).map(drop), id),
                    refusal(store.complete(theirs.clone(), id, token, &report, SECOND), id),
                    refusal(store.fail(theirs.clone(), id, token, "no", false, SECOND), id),
                ];
                let unknown = refusal(store.heartbeat(mine.clone(), missing, "x", SECOND, 0).map(drop), missing);
                assert_eq!(by_them, [unknown.clone(), unknown.clone(), unknown], "task {id}");
            }
            // Nothing was recorded or given back, and the lease was not extended: it runs out
            // at 10 s as claimed. The owner's tenant still completes the task.
            assert_eq!(status(store, "p").steps.unwrap()[0].processed, 0);
            assert!(claim(store, "queue:q0", "w2", 1, 9 * SECOND).is_empty(), "still leased");
            let again = claim(store, "queue:q0", "w2", 1, 11 * SECOND).remove(0);
            assert_eq!((again.task_id, again.attempt), (task.task_id, 2));
            store.complete(mine, again.task_id, &again.lease_token, &report, 11 * SECOND).unwrap();
            assert_eq!(status(store, "p").steps.unwrap()[0].processed, 1);
        }
    }
}
