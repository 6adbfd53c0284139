//! What the transactions of the task life cycle share: the rows they read, the states they
//! write, and the record a command answers with.

use async_engine_domain::{Detail, FailurePolicy, ProcessEnd, ProcessStatus, Status, Tolerance};
use diesel::prelude::*;

use crate::connection::DbConnection;
use crate::error::Error;
use crate::models::ProcessRow;
use crate::queries::{assemble, by_process_id};
use crate::schema::{processes, steps, tasks};

pub(crate) use crate::models::{CANCELLED, DONE, LEASED, OPEN, QUEUED};

pub(crate) const END_CANCELLED: &str = "cancelled";
pub(crate) const END_ABORTED: &str = "aborted_by_policy";
pub(crate) const END_NEVER_CLOSED: &str = "never_closed";
pub(crate) const END_NOT_TOLERATED: &str = "failures_not_tolerated";

/// How a process ended early, as its stored `end_reason`, and back.
pub(crate) fn end_reason(end: ProcessEnd) -> &'static str {
    match end {
        ProcessEnd::Cancelled => END_CANCELLED,
        ProcessEnd::AbortedByPolicy => END_ABORTED,
        ProcessEnd::NeverClosed => END_NEVER_CLOSED,
        ProcessEnd::FailuresNotTolerated => END_NOT_TOLERATED,
    }
}

pub(crate) fn end_of(row: &RunRow) -> Option<ProcessEnd> {
    match row.end_reason.as_deref() {
        Some(END_CANCELLED) => Some(ProcessEnd::Cancelled),
        Some(END_NEVER_CLOSED) => Some(ProcessEnd::NeverClosed),
        Some(END_NOT_TOLERATED) => Some(ProcessEnd::FailuresNotTolerated),
        Some(_) => Some(ProcessEnd::AbortedByPolicy),
        None => None,
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = processes, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct RunRow {
    pub(crate) id: i64,
    pub(crate) tenant: String,
    pub(crate) async_process_id: String,
    pub(crate) status: String,
    pub(crate) current_step: i32,
    pub(crate) runnable: bool,
    pub(crate) end_reason: Option<String>,
    pub(crate) callback_url: Option<String>,
    pub(crate) open_for_parts: bool,
    pub(crate) start_at: Option<i64>,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = steps, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct RunStepRow {
    pub(crate) step_number: i32,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) entered: i64,
    pub(crate) succeeded: i64,
    pub(crate) failed: i64,
    pub(crate) handler: String,
    pub(crate) chunk_size: i32,
    pub(crate) max_attempts: i32,
    pub(crate) timeout_secs: i64,
    pub(crate) on_item_failure: String,
    pub(crate) started: bool,
    pub(crate) next_seq: i64,
    pub(crate) tolerated_failure_count: Option<i64>,
    pub(crate) tolerated_failure_hundredths: Option<i32>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = tasks, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct TaskRow {
    pub(crate) id: i64,
    pub(crate) process_id: i64,
    pub(crate) step_number: i32,
    pub(crate) queue: String,
    pub(crate) item_indices: String,
    pub(crate) state: String,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) timeout_secs: i64,
    pub(crate) lease_token: Option<String>,
}

impl RunStepRow {
    pub(crate) fn policy(&self) -> Result<FailurePolicy, Error> {
        self.on_item_failure
            .parse()
            .map_err(|e| Error::Corrupt(format!("step {}: on_item_failure {e}", self.step_number)))
    }

    pub(crate) fn tolerance(&self) -> Result<Tolerance, Error> {
        let corrupt = |what: &str| Error::Corrupt(format!("step {}: {what} out of range", self.step_number));
        Ok(Tolerance {
            count: self
                .tolerated_failure_count
                .map(u64::try_from)
                .transpose()
                .map_err(|_| corrupt("tolerated_failure_count"))?,
            hundredths_of_percent: self
                .tolerated_failure_hundredths
                .map(u32::try_from)
                .transpose()
                .map_err(|_| corrupt("tolerated_failure_hundredths"))?,
        })
    }
}

pub(crate) fn load_run(conn: &mut DbConnection, process_id: i64) -> Result<RunRow, Error> {
    Ok(processes::table.find(process_id).select(RunRow::as_select()).first(conn)?)
}

pub(crate) fn load_steps(conn: &mut DbConnection, process_id: i64) -> Result<Vec<RunStepRow>, Error> {
    Ok(steps::table
        .filter(steps::process_id.eq(process_id))
        .order(steps::step_number.asc())
        .select(RunStepRow::as_select())
        .load(conn)?)
}

/// The record a command answers with: the process and its steps' counters.
pub(crate) fn report(conn: &mut DbConnection, tenant: &str, id: &str) -> Result<ProcessStatus, Error> {
    let row: ProcessRow = by_process_id(conn, tenant, id)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Corrupt(format!("process {id} vanished inside its transaction")))?;
    assemble(conn, row, Detail::Steps)
}

pub(crate) fn indices_of(task: &TaskRow) -> Result<Vec<i64>, Error> {
    serde_json::from_str(&task.item_indices)
        .map_err(|e| Error::Corrupt(format!("task {}: item_indices {e}", task.id)))
}

pub(crate) fn status_of(row: &RunRow) -> Result<Status, Error> {
    row.status.parse().map_err(|e| Error::Corrupt(format!("process {}: {e}", row.async_process_id)))
}
