//! What a lease holder may do: complete, heartbeat or fail its task; the outcomes recorded.

use std::collections::HashSet;

use async_engine_domain::lifecycle::{self};
use async_engine_domain::work::GAVE_UP_CODE;
use async_engine_domain::{TaskError, TaskReport, TenantId};
use diesel::prelude::*;
use subtle::ConstantTimeEq;

use crate::advance::{advance, end_early};
use crate::connection::{DbConnection, lock_process, per_backend, write_transaction};
use crate::error::Error;
use crate::queries::{INSERT_BATCH, to_i64};
use crate::run::{DONE, END_ABORTED, LEASED, QUEUED, RunStepRow, TaskRow, indices_of, load_run};
use crate::schema::{failure_groups, outcomes, processes, steps, tasks};

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
    let task: Option<TaskRow> = tasks::table
        .find(task_id)
        .filter(of_tenant!(tenant))
        .select(TaskRow::as_select())
        .first(conn)
        .optional()?;
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
        let expected: HashSet<i64> = indices_of(&task)?.into_iter().collect();
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
        record(conn, task.process_id, task.step_number, &successes, &failures)?;
        finish_task(conn, task.id, None)?;
        advance(conn, task.process_id, now)?;
        Ok(Ok(()))
    })
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
/// whose policy is `abort` stops the process.
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
    let mut rows = Vec::with_capacity(successes.len() + failures.iter().map(|f| f.2.len()).sum::<usize>());
    for &index in successes {
        rows.push(crate::models::NewOutcome {
            process_id,
            step_number,
            item_index: index,
            seq,
            failure_group: None,
        });
        seq += 1;
    }
    let mut failed = 0_i64;
    for (code, message, indices) in failures {
        if indices.is_empty() {
            continue;
        }
        let group = failure_group(conn, process_id, step_number, *code, message)?;
        for &index in indices {
            rows.push(crate::models::NewOutcome {
                process_id,
                step_number,
                item_index: index,
                seq,
                failure_group: Some(group),
            });
            seq += 1;
            failed += 1;
        }
    }
    for batch in rows.chunks(INSERT_BATCH) {
        per_backend!(conn, |c| diesel::insert_into(outcomes::table).values(batch).execute(c))?;
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
    if lifecycle::stops_process(step.policy()?, to_i64(failed).map(|f| f.unsigned_abs()).unwrap_or(0)) {
        let process = load_run(conn, process_id)?;
        if process.end_reason.is_none() {
            end_early(conn, process_id, END_ABORTED)?;
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
    use async_engine_domain::{FailurePolicy, RawJson, Status, TaskError, TaskReport, TaskStore, TenantId};
    use serde_json::json;

    use crate::fixtures::{SECOND, begin, claim, finish, status, steps_of};
    use crate::store::Store;
    use crate::testing::on_both_backends;

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
