//! Moving a process on: a finished step starts the next, stored statuses follow the domain
//! rules, a final status queues its notification, and a stopped process cancels its tasks.

use std::collections::HashSet;

use async_engine_domain::lifecycle::{self, AfterStep};
use async_engine_domain::status::{process_message, process_status, scheduled_message, step_statuses};
use async_engine_domain::{Status, StepState};
use diesel::prelude::*;

use crate::connection::{DbConnection, per_backend};
use crate::error::Error;
use crate::queries::{INSERT_BATCH, to_i64};
use crate::run::{CANCELLED, OPEN, QUEUED, RunStepRow, end_of, load_run, load_steps, status_of};
use crate::schema::{outcomes, part_items, parts, processes, steps, tasks};

#[derive(Insertable)]
#[diesel(table_name = tasks)]
struct NewTask<'a> {
    process_id: i64,
    step_number: i32,
    queue: &'a str,
    item_indices: String,
    state: &'a str,
    max_attempts: i32,
    timeout_secs: i64,
    available_at: i64,
    priority: i32,
    ordinal: i64,
}

pub(crate) fn create_tasks(
    conn: &mut DbConnection,
    process_id: i64,
    step_number: i32,
    step: &RunStepRow,
    indices: &[i64],
    due: i64,
) -> Result<(), Error> {
    let size = usize::try_from(step.chunk_size.max(1)).unwrap_or(1);
    let priority = processes::table.find(process_id).select(processes::priority).first(conn)?;
    // Numbered on from where the queue's claims now are at this priority, so that these
    // tasks take turns with those already waiting instead of queueing behind all of them; in
    // a queue with none, from where claims are in any queue, so that a claim of several
    // queues (the engine's) reads them in turn too, not this one's first.
    let lowest = |conn: &mut DbConnection, queue: Option<&str>| -> Result<Option<i64>, Error> {
        let mut query = tasks::table
            .filter(tasks::state.eq(QUEUED))
            .filter(tasks::priority.eq(priority))
            .filter(tasks::available_at.le(due))
            .select(diesel::dsl::min(tasks::ordinal))
            .into_boxed();
        if let Some(queue) = queue {
            query = query.filter(tasks::queue.eq(queue.to_owned()));
        }
        Ok(query.first(conn)?)
    };
    let base = match lowest(conn, Some(&step.handler))? {
        Some(base) => base,
        None => lowest(conn, None)?.unwrap_or(0),
    };
    let rows: Vec<NewTask> = indices
        .chunks(size)
        .zip(base..)
        .map(|(chunk, ordinal)| NewTask {
            process_id,
            step_number,
            queue: &step.handler,
            item_indices: serde_json::to_string(chunk).unwrap_or_else(|_| "[]".to_owned()),
            state: QUEUED,
            max_attempts: step.max_attempts,
            timeout_secs: step.timeout_secs,
            available_at: due,
            priority,
            ordinal,
        })
        .collect();
    for batch in rows.chunks(INSERT_BATCH / 2) {
        per_backend!(conn, |c| diesel::insert_into(tasks::table).values(batch).execute(c))?;
    }
    Ok(())
}

/// Stops a process: its open tasks are cancelled so that no task starts afterwards, and the
/// parts of an open one go.
pub(crate) fn end_early(conn: &mut DbConnection, process_id: i64, reason: &str) -> Result<(), Error> {
    diesel::update(processes::table.find(process_id)).set(processes::end_reason.eq(reason)).execute(conn)?;
    drop_parts(conn, process_id)?;
    diesel::update(tasks::table.filter(tasks::process_id.eq(process_id)).filter(tasks::state.eq_any(OPEN)))
        .set((tasks::state.eq(CANCELLED), tasks::lease_token.eq(None::<String>)))
        .execute(conn)?;
    Ok(())
}

/// The process takes no more parts, and what it held of them goes (a close moved them into
/// its items first).
pub(crate) fn drop_parts(conn: &mut DbConnection, process_id: i64) -> Result<(), Error> {
    diesel::delete(part_items::table.filter(part_items::process_id.eq(process_id))).execute(conn)?;
    diesel::delete(parts::table.filter(parts::process_id.eq(process_id))).execute(conn)?;
    diesel::update(processes::table.find(process_id))
        .set(processes::open_for_parts.eq(false))
        .execute(conn)?;
    Ok(())
}

/// Starts each following step whose predecessor has an outcome for every item that entered
/// it and no open task; then brings the stored statuses up to date.
pub(crate) fn advance(conn: &mut DbConnection, process_id: i64, now: i64) -> Result<(), Error> {
    loop {
        let process = load_run(conn, process_id)?;
        if process.end_reason.is_some() {
            break;
        }
        let all = load_steps(conn, process_id)?;
        let current = usize::try_from(process.current_step).unwrap_or(0);
        let Some(step) = all.get(current) else {
            return Err(Error::Corrupt(format!("process {}: no step {current}", process.async_process_id)));
        };
        let open: i64 = tasks::table
            .filter(tasks::process_id.eq(process_id))
            .filter(tasks::step_number.eq(step.step_number))
            .filter(tasks::state.eq_any(OPEN))
            .count()
            .get_result(conn)?;
        if open > 0 || step.succeeded + step.failed < step.entered {
            break;
        }
        if !step.started {
            set_started(conn, process_id, step.step_number)?;
        }
        let AfterStep::Start(next) = lifecycle::after_step(current, all.len()) else {
            break;
        };
        let next_step = &all[next];
        let failures_enter = lifecycle::enters_next_step(step.policy()?, false);
        let mut qualifying = outcomes::table
            .filter(outcomes::process_id.eq(process_id))
            .filter(outcomes::step_number.eq(step.step_number))
            .into_boxed();
        if !failures_enter {
            qualifying = qualifying.filter(outcomes::failure_group.is_null());
        }
        let qualifying: Vec<i64> = qualifying.select(outcomes::item_index).load(conn)?;
        let already: HashSet<i64> = outcomes::table
            .filter(outcomes::process_id.eq(process_id))
            .filter(outcomes::step_number.eq(next_step.step_number))
            .select(outcomes::item_index)
            .load::<i64>(conn)?
            .into_iter()
            .collect();
        let mut entrants: Vec<i64> = qualifying.into_iter().filter(|i| !already.contains(i)).collect();
        entrants.sort_unstable();
        create_tasks(conn, process_id, next_step.step_number, next_step, &entrants, now)?;
        diesel::update(
            steps::table
                .filter(steps::process_id.eq(process_id))
                .filter(steps::step_number.eq(next_step.step_number)),
        )
        .set(steps::entered.eq(steps::entered + to_i64(entrants.len())?))
        .execute(conn)?;
        diesel::update(processes::table.find(process_id))
            .set(processes::current_step.eq(next_step.step_number))
            .execute(conn)?;
    }
    refresh(conn, process_id, now)
}

fn set_started(conn: &mut DbConnection, process_id: i64, step_number: i32) -> Result<(), Error> {
    diesel::update(
        steps::table.filter(steps::process_id.eq(process_id)).filter(steps::step_number.eq(step_number)),
    )
    .set(steps::started.eq(true))
    .execute(conn)?;
    Ok(())
}

/// Stores each step's and the process's status and message as the domain's rules tell them.
pub(crate) fn refresh(conn: &mut DbConnection, process_id: i64, now: i64) -> Result<(), Error> {
    let process = load_run(conn, process_id)?;
    let all = load_steps(conn, process_id)?;
    let end = end_of(&process);
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    let states: Vec<StepState> = all
        .iter()
        .map(|s| StepState {
            entered: count(s.entered),
            succeeded: count(s.succeeded),
            failed: count(s.failed),
            started: s.started,
            aborted: end.is_some(),
        })
        .collect();
    for (step, status) in all.iter().zip(step_statuses(&states, end)) {
        if step.status != status.as_str() {
            diesel::update(
                steps::table
                    .filter(steps::process_id.eq(process_id))
                    .filter(steps::step_number.eq(step.step_number)),
            )
            .set((steps::status.eq(status.as_str()), steps::message.eq(status.step_message())))
            .execute(conn)?;
        }
    }
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    let status = process_status(&states, end);
    let message = match status {
        Status::WaitingToProcess => scheduled_message(process.start_at, now),
        _ => None,
    }
    .unwrap_or_else(|| process_message(&states, &names, end));
    diesel::update(processes::table.find(process_id))
        .set((
            processes::status.eq(status.as_str()),
            processes::message.eq(message),
            processes::updated_at.eq(now),
            processes::version.eq(processes::version + 1),
        ))
        .execute(conn)?;
    // Only the move into a final status is announced; a retry that finishes again is a new
    // finish with a delivery of its own.
    if let Some(url) = &process.callback_url
        && status.is_final()
        && !status_of(&process)?.is_final()
    {
        crate::outbox::enqueue(conn, process_id, url, status, now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{FailurePolicy, Status};

    use crate::fixtures::{begin, claim, drain, finish, status, steps_of};
    use crate::store::Store;
    use crate::testing::on_both_backends;

    on_both_backends! {
        fn a_process_runs_step_by_step_to_success(store: &Store) {
            let started = begin(store, "p", &[FailurePolicy::Skip, FailurePolicy::Skip], 25, 10);
            assert_eq!(started.status, Status::WaitingToProcess);
            let first = claim(store, "queue:q0", "w", 1, 0);
            assert_eq!(first[0].items.len(), 10);
            assert_eq!(status(store, "p").status, Status::InProgress);
            assert!(claim(store, "queue:q1", "w", 10, 0).is_empty(), "step 1 waits for step 0");
            finish(store, &first[0], &[], 0).unwrap();
            assert_eq!(drain(store, "queue:q0", &[], 0), 2);
            assert_eq!(status(store, "p").current_step_number, 1);
            assert_eq!(drain(store, "queue:q1", &[], 0), 3);
            let done = status(store, "p");
            assert_eq!((done.status, done.message.as_str()), (Status::Success, "Completed"));
            assert_eq!(steps_of(&done), [(Status::Success, 25, 25, 25, 0), (Status::Success, 25, 25, 25, 0)]);
        }
    }

    on_both_backends! {
        fn each_failure_policy(store: &Store) {
            // skip: 2 failed items do not enter step 1.
            begin(store, "skip", &[FailurePolicy::Skip, FailurePolicy::Skip], 6, 3);
            drain(store, "queue:q0", &[1, 4], 0);
            drain(store, "queue:q1", &[], 0);
            let skip = status(store, "skip");
            assert_eq!(skip.status, Status::Failed);
            assert_eq!(steps_of(&skip), [(Status::Failed, 6, 6, 4, 2), (Status::Success, 4, 4, 4, 0)]);
            // continue: they do.
            begin(store, "cont", &[FailurePolicy::Continue, FailurePolicy::Skip], 6, 3);
            drain(store, "queue:q0", &[1, 4], 0);
            drain(store, "queue:q1", &[], 0);
            assert_eq!(
                steps_of(&status(store, "cont")),
                [(Status::Failed, 6, 6, 4, 2), (Status::Success, 6, 6, 6, 0)]
            );
            // abort: the first failure stops the process; the other task is never run.
            begin(store, "abort", &[FailurePolicy::Abort, FailurePolicy::Skip], 6, 3);
            let tasks = claim(store, "queue:q0", "w", 1, 0);
            finish(store, &tasks[0], &[1], 0).unwrap();
            assert!(claim(store, "queue:q0", "w", 10, 0).is_empty());
            let abort = status(store, "abort");
            assert_eq!(abort.status, Status::Failed);
            assert!(abort.message.contains("Stopped"), "{}", abort.message);
            assert_eq!(steps_of(&abort), [(Status::Aborted, 3, 6, 2, 1), (Status::Aborted, 0, 0, 0, 0)]);
        }
    }
}
