//! The statements the engine runs. Every public function is one transaction, so an outcome,
//! the counters it moves, the task it releases and the step it may start are committed
//! together or not at all: a crash at any moment loses nothing and counts nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::connection::{
    DbConnection, busy_processes, lock_process, per_backend, read_transaction, try_lock_process,
    write_transaction,
};
use async_engine_domain::lifecycle::{self, AfterStep, Command};
use async_engine_domain::status::{process_message, process_status};
use async_engine_domain::work::GAVE_UP_CODE;
use async_engine_domain::{
    ClaimRequest, ClaimedTask, CommandError, Detail, FailurePolicy, ItemsError, ItemsPage, ItemsQuery,
    ListError, ListQuery, NewProcess, Page, ProcessEnd, ProcessStatus, ProcessStore, RawJson,
    RepositoryError, Started, Status, StepDefinition, StepState, TaskError, TaskReport, TaskStore, TenantId,
};
use diesel::prelude::*;
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::models::ProcessRow;
use crate::queries::{INSERT_BATCH, assemble, by_process_id, corrupt, insert_items, to_i32, to_i64};
use crate::schema::{failure_groups, items, outcomes, processes, steps, tasks};
use crate::store::Store;

const QUEUED: &str = "queued";
const LEASED: &str = "leased";
const DONE: &str = "done";
const CANCELLED: &str = "cancelled";
const OPEN: [&str; 2] = [QUEUED, LEASED];

const END_CANCELLED: &str = "cancelled";
const END_ABORTED: &str = "aborted_by_policy";

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
}

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
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = processes, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct RunRow {
    id: i64,
    tenant: String,
    async_process_id: String,
    status: String,
    current_step: i32,
    runnable: bool,
    end_reason: Option<String>,
    callback_url: Option<String>,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = steps, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct RunStepRow {
    step_number: i32,
    name: String,
    status: String,
    entered: i64,
    succeeded: i64,
    failed: i64,
    handler: String,
    chunk_size: i32,
    max_attempts: i32,
    timeout_secs: i64,
    on_item_failure: String,
    started: bool,
    next_seq: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = tasks, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct TaskRow {
    id: i64,
    process_id: i64,
    step_number: i32,
    queue: String,
    item_indices: String,
    state: String,
    attempt: i32,
    max_attempts: i32,
    timeout_secs: i64,
    lease_token: Option<String>,
}

/// One failure group to record: code, message, item indices.
type Failures<'a> = Vec<(i64, &'a str, Vec<i64>)>;

impl RunStepRow {
    fn policy(&self) -> Result<FailurePolicy, Error> {
        self.on_item_failure
            .parse()
            .map_err(|e| Error::Corrupt(format!("step {}: on_item_failure {e}", self.step_number)))
    }
}

fn end_of(row: &RunRow) -> Option<ProcessEnd> {
    match row.end_reason.as_deref() {
        Some(END_CANCELLED) => Some(ProcessEnd::Cancelled),
        Some(_) => Some(ProcessEnd::AbortedByPolicy),
        None => None,
    }
}

fn load_run(conn: &mut DbConnection, process_id: i64) -> Result<RunRow, Error> {
    Ok(processes::table.find(process_id).select(RunRow::as_select()).first(conn)?)
}

fn load_steps(conn: &mut DbConnection, process_id: i64) -> Result<Vec<RunStepRow>, Error> {
    Ok(steps::table
        .filter(steps::process_id.eq(process_id))
        .order(steps::step_number.asc())
        .select(RunStepRow::as_select())
        .load(conn)?)
}

fn find_run(conn: &mut DbConnection, tenant: &TenantId, id: &str) -> Result<Option<RunRow>, Error> {
    Ok(processes::table
        .filter(processes::tenant.eq(tenant.as_str()))
        .filter(processes::async_process_id.eq(id))
        .select(RunRow::as_select())
        .first(conn)
        .optional()?)
}

/// The record a command answers with: the process and its steps' counters.
pub(crate) fn report(conn: &mut DbConnection, tenant: &str, id: &str) -> Result<ProcessStatus, Error> {
    let row: ProcessRow = by_process_id(conn, tenant, id)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Corrupt(format!("process {id} vanished inside its transaction")))?;
    assemble(conn, row, Detail::Steps)
}

fn create_tasks(
    conn: &mut DbConnection,
    process_id: i64,
    step_number: i32,
    step: &RunStepRow,
    indices: &[i64],
    now: i64,
) -> Result<(), Error> {
    let size = usize::try_from(step.chunk_size.max(1)).unwrap_or(1);
    let rows: Vec<NewTask> = indices
        .chunks(size)
        .map(|chunk| NewTask {
            process_id,
            step_number,
            queue: &step.handler,
            item_indices: serde_json::to_string(chunk).unwrap_or_else(|_| "[]".to_owned()),
            state: QUEUED,
            max_attempts: step.max_attempts,
            timeout_secs: step.timeout_secs,
            available_at: now,
        })
        .collect();
    for batch in rows.chunks(INSERT_BATCH / 2) {
        per_backend!(conn, |c| diesel::insert_into(tasks::table).values(batch).execute(c))?;
    }
    Ok(())
}

fn indices_of(task: &TaskRow) -> Result<Vec<i64>, Error> {
    serde_json::from_str(&task.item_indices)
        .map_err(|e| Error::Corrupt(format!("task {}: item_indices {e}", task.id)))
}

pub fn start(conn: &mut DbConnection, new: &NewProcess) -> Result<Started, Error> {
    write_transaction(conn, |conn| {
        let tenant = new.tenant.as_str();
        if let Some(key) = &new.idempotency_key {
            let existing: Option<String> = processes::table
                .filter(processes::tenant.eq(tenant))
                .filter(processes::idempotency_key.eq(key))
                .select(processes::async_process_id)
                .first(conn)
                .optional()?;
            if let Some(id) = existing {
                return Ok(Started::Existing(report(conn, tenant, &id)?));
            }
        }
        let definition = &new.definition;
        let waiting = Status::WaitingToProcess;
        let process_id: i64 = diesel::insert_into(processes::table)
            .values(NewRunnable {
                tenant,
                async_process_id: new.async_process_id.as_str(),
                reference_id: new.reference_id.as_str(),
                name: &definition.name,
                status: waiting.as_str(),
                message: waiting.step_message(),
                current_step: 0,
                total_steps: to_i32(definition.steps.len())?,
                item_count: to_i64(new.items.len())?,
                additional_data: new.additional_data.as_str(),
                created_at: new.now_micros,
                updated_at: new.now_micros,
                runnable: true,
                idempotency_key: new.idempotency_key.as_deref(),
                callback_url: new.callback_url.as_deref(),
            })
            .returning(processes::id)
            .get_result(conn)?;
        let rows = definition
            .steps
            .iter()
            .enumerate()
            .map(|(number, step)| {
                new_step(process_id, number, step, if number == 0 { new.items.len() } else { 0 })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        per_backend!(conn, |c| diesel::insert_into(steps::table).values(&rows).execute(c))?;
        insert_items(conn, process_id, &new.items)?;
        let first = load_steps(conn, process_id)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Corrupt("a process without steps".into()))?;
        let all: Vec<i64> = (0..to_i64(new.items.len())?).collect();
        create_tasks(conn, process_id, 0, &first, &all, new.now_micros)?;
        advance(conn, process_id, new.now_micros)?;
        Ok(Started::Created(report(conn, tenant, new.async_process_id.as_str())?))
    })
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
    })
}

/// How [`due_tasks`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// To lease what it finds: on PostgreSQL the rows are locked, and rows another claim has
    /// locked are passed over.
    ToClaim,
    /// Only to know whether anything is due: no row locks, which would be written on every
    /// look and would make a real claim elsewhere pass over the rows at that instant.
    ToLook,
}

/// Due tasks of these queues, oldest first: expired leases (to be taken over), then queued
/// tasks whose time has come. Tasks of processes whose lock another transaction holds are left
/// out in the query itself: read and then passed over, however many of them there were, they
/// would hide every other process's work behind them (and a node frozen inside a transaction
/// would stall them all).
fn due_tasks(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    limit: i64,
    read: Read,
) -> Result<Vec<TaskRow>, Error> {
    if read == Read::ToClaim {
        let busy = busy_processes(conn)?;
        return due_past(conn, request, limit, read, &busy);
    }
    // A look is mostly asked of an idle queue (waiting claims' checker, idle workers), and
    // finding nothing due needs no list of busy processes: the lock manager's table is read
    // only when something is, to tell whether any of it is free to take.
    let found = due_past(conn, request, limit, read, &[])?;
    if found.is_empty() {
        return Ok(found);
    }
    let busy = busy_processes(conn)?;
    if found.iter().any(|task| busy.contains(&task.process_id)) {
        return due_past(conn, request, limit, read, &busy);
    }
    Ok(found)
}

/// [`due_tasks`] of processes other than `busy`. Two queries, so that each walks the
/// `(queue, state, ...)` index.
fn due_past(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    limit: i64,
    read: Read,
    busy: &[i64],
) -> Result<Vec<TaskRow>, Error> {
    let now = request.now_micros;
    // Every tenant (the engine), or only the worker's: one statement shape for both, so the
    // row locks below stay on `tasks` alone (a correlated EXISTS on the process's primary key,
    // not a join, and not the set of all the tenant's processes).
    let any_tenant = request.tenant.is_none();
    let tenant = request.tenant.as_ref().map_or("", |t| t.as_str());
    macro_rules! due {
        ($state:expr, $ready:expr, $limit:expr) => {
            tasks::table
                .filter(tasks::queue.eq_any(&request.queues))
                .filter(tasks::state.eq($state))
                .filter($ready)
                .filter(tasks::process_id.ne_all(busy))
                .filter(
                    any_tenant.into_sql::<diesel::sql_types::Bool>().or(diesel::dsl::exists(
                        processes::table
                            .filter(processes::id.eq(tasks::process_id))
                            .filter(processes::tenant.eq(tenant)),
                    )),
                )
                .order(tasks::id.asc())
                .limit($limit)
                .select(TaskRow::as_select())
        };
    }
    // Expired leases first (to be taken over), then queued tasks whose time has come. On
    // PostgreSQL, nodes claiming at once lock the rows they read and pass over the rows
    // another holds, instead of queueing behind it.
    let mut found = Vec::new();
    for queued in [false, true] {
        let room = limit - to_i64(found.len())?;
        if room <= 0 {
            break;
        }
        let rows: Vec<TaskRow> = match (conn as &mut DbConnection, queued) {
            (DbConnection::Pg(c), false) if read == Read::ToClaim => {
                due!(LEASED, tasks::lease_expires_at.le(now), room).for_update().skip_locked().load(c)?
            }
            (DbConnection::Pg(c), true) if read == Read::ToClaim => {
                due!(QUEUED, tasks::available_at.le(now), room).for_update().skip_locked().load(c)?
            }
            (DbConnection::Pg(c), false) => due!(LEASED, tasks::lease_expires_at.le(now), room).load(c)?,
            (DbConnection::Pg(c), true) => due!(QUEUED, tasks::available_at.le(now), room).load(c)?,
            (DbConnection::Sqlite(c), false) => {
                due!(LEASED, tasks::lease_expires_at.le(now), room).load(c)?
            }
            (DbConnection::Sqlite(c), true) => due!(QUEUED, tasks::available_at.le(now), room).load(c)?,
        };
        found.extend(rows);
    }
    Ok(found)
}

pub fn claim(conn: &mut DbConnection, request: &ClaimRequest) -> Result<Vec<ClaimedTask>, Error> {
    let limit = i64::from(request.max_tasks.saturating_mul(2)).saturating_add(16);
    // Idle workers ask often: a plain read first keeps them from taking the write lock
    // (and queueing behind writers) when there is nothing to claim.
    if !any_due(conn, request)? {
        return Ok(Vec::new());
    }
    write_transaction(conn, |conn| {
        let now = request.now_micros;
        let wanted = usize::try_from(request.max_tasks).unwrap_or(usize::MAX);
        let due = due_tasks(conn, request, limit, Read::ToClaim)?;
        let mut leased = Vec::new();
        for task in due {
            if leased.len() >= wanted {
                break;
            }
            // A process another transaction is changing is passed over, not waited for.
            if !try_lock_process(conn, task.process_id)? {
                continue;
            }
            if task.state == LEASED && task.attempt >= task.max_attempts {
                let message = format!("gave up after {} attempts: the last lease expired", task.attempt);
                // In a savepoint: should recording fail (corrupt data), the task is parked
                // instead of failing every later claim on its queue.
                if let Err(error) = conn.transaction(|conn| give_up(conn, &task, &message, now)) {
                    tracing::error!(task = task.id, %error, "could not record a given-up task; parking it");
                    finish_task(conn, task.id, Some(&format!("could not record the give-up: {error}")))?;
                }
                continue;
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            // The step's timeout caps the lease: an attempt may not run longer unheartbeated.
            let lease = request.lease_micros.min(task.timeout_secs.saturating_mul(1_000_000));
            let expires = now.saturating_add(lease);
            // Only if the row is as it was read: a give-up earlier in this loop may have
            // stopped the process and cancelled it.
            let taken = diesel::update(
                tasks::table
                    .find(task.id)
                    .filter(tasks::state.eq(&task.state))
                    .filter(tasks::attempt.eq(task.attempt)),
            )
            .set((
                tasks::state.eq(LEASED),
                tasks::attempt.eq(task.attempt + 1),
                tasks::lease_token.eq(&token),
                tasks::lease_expires_at.eq(expires),
                tasks::worker_id.eq(&request.worker_id),
            ))
            .execute(conn)?;
            if taken == 0 {
                continue;
            }
            let first_claim = diesel::update(
                steps::table
                    .filter(steps::process_id.eq(task.process_id))
                    .filter(steps::step_number.eq(task.step_number))
                    .filter(steps::started.eq(false)),
            )
            .set(steps::started.eq(true))
            .execute(conn)?;
            if first_claim > 0 {
                refresh(conn, task.process_id, now)?;
            }
            leased.push((task, token, expires));
        }
        leased.into_iter().map(|(task, token, expires)| describe(conn, task, token, expires)).collect()
    })
}

/// Everything a worker needs to run a leased task.
fn describe(
    conn: &mut DbConnection,
    task: TaskRow,
    token: String,
    expires: i64,
) -> Result<ClaimedTask, Error> {
    let (tenant, process): (String, ProcessRow) = processes::table
        .find(task.process_id)
        .select((processes::tenant, ProcessRow::as_select()))
        .first(conn)?;
    let step_name: String = steps::table
        .filter(steps::process_id.eq(task.process_id))
        .filter(steps::step_number.eq(task.step_number))
        .select(steps::name)
        .first(conn)?;
    let indices = indices_of(&task)?;
    let values: Vec<(i64, String)> = items::table
        .filter(items::process_id.eq(task.process_id))
        .filter(items::item_index.eq_any(&indices))
        .order(items::item_index.asc())
        .select((items::item_index, items::value))
        .load(conn)?;
    let items = values
        .into_iter()
        .map(|(index, value)| {
            let item =
                RawJson::from_text(value).map_err(|e| corrupt(&process, format!("item {index}: {e}")))?;
            Ok((u64::try_from(index).unwrap_or_default(), item))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(ClaimedTask {
        task_id: task.id,
        lease_token: token,
        tenant: TenantId::new(tenant).map_err(|e| Error::Corrupt(e.to_string()))?,
        additional_data: RawJson::from_text(process.additional_data.clone())
            .map_err(|e| corrupt(&process, format!("additionalData: {e}")))?,
        async_process_id: process.async_process_id,
        reference_id: process.reference_id,
        process_name: process.name,
        step_number: u32::try_from(task.step_number).unwrap_or_default(),
        step_name,
        queue: task.queue,
        attempt: u32::try_from(task.attempt + 1).unwrap_or_default(),
        lease_expires_at_micros: expires,
        items,
    })
}

/// Whether a claim with this request may find a due task now: the same small read a claim
/// starts with, leasing and locking nothing (waiting claims' checker asks it every tick).
pub fn any_due(conn: &mut DbConnection, request: &ClaimRequest) -> Result<bool, Error> {
    Ok(!due_tasks(conn, request, 1, Read::ToLook)?.is_empty())
}

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

pub fn complete(
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

pub fn heartbeat(
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
        diesel::update(tasks::table.find(task_id)).set(tasks::lease_expires_at.eq(expires)).execute(conn)?;
        Ok(Ok(expires))
    })
}

pub fn fail(
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
fn give_up(conn: &mut DbConnection, task: &TaskRow, message: &str, now: i64) -> Result<(), Error> {
    let indices = indices_of(task)?;
    record(conn, task.process_id, task.step_number, &[], &vec![(GAVE_UP_CODE, message, indices)])?;
    finish_task(conn, task.id, Some(message))?;
    advance(conn, task.process_id, now)
}

fn finish_task(conn: &mut DbConnection, task_id: i64, error: Option<&str>) -> Result<(), Error> {
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

/// Stops a process: its open tasks are cancelled so that no task starts afterwards.
fn end_early(conn: &mut DbConnection, process_id: i64, reason: &str) -> Result<(), Error> {
    diesel::update(processes::table.find(process_id)).set(processes::end_reason.eq(reason)).execute(conn)?;
    diesel::update(tasks::table.filter(tasks::process_id.eq(process_id)).filter(tasks::state.eq_any(OPEN)))
        .set((tasks::state.eq(CANCELLED), tasks::lease_token.eq(None::<String>)))
        .execute(conn)?;
    Ok(())
}

/// Starts each following step whose predecessor has an outcome for every item that entered
/// it and no open task; then brings the stored statuses up to date.
fn advance(conn: &mut DbConnection, process_id: i64, now: i64) -> Result<(), Error> {
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
fn refresh(conn: &mut DbConnection, process_id: i64, now: i64) -> Result<(), Error> {
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
    for (step, state) in all.iter().zip(&states) {
        let status = state.status();
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
    diesel::update(processes::table.find(process_id))
        .set((
            processes::status.eq(status.as_str()),
            processes::message.eq(process_message(&states, &names, end)),
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

/// The process a command names, if it exists, is run by the engine, and accepts the command
/// in its current status.
fn command_target(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
    command: Command,
) -> Result<Result<RunRow, CommandError>, Error> {
    if let Some(row) = find_run(conn, tenant, id)? {
        lock_process(conn, row.id)?;
    }
    // Read again under the lock: the status may have moved while we waited.
    let row = match find_run(conn, tenant, id)? {
        None => return Ok(Err(CommandError::NotFound(id.to_owned()))),
        Some(row) if !row.runnable => return Ok(Err(CommandError::NotRunnable(id.to_owned()))),
        Some(row) => row,
    };
    Ok(lifecycle::check_command(command, status_of(&row)?).map(|()| row).map_err(CommandError::from))
}

fn status_of(row: &RunRow) -> Result<Status, Error> {
    row.status.parse().map_err(|e| Error::Corrupt(format!("process {}: {e}", row.async_process_id)))
}

pub fn cancel(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
    now: i64,
) -> Result<Result<ProcessStatus, CommandError>, Error> {
    write_transaction(conn, |conn| {
        let row = match command_target(conn, tenant, id, Command::Cancel)? {
            Ok(row) => row,
            Err(refused) => return Ok(Err(refused)),
        };
        end_early(conn, row.id, END_CANCELLED)?;
        refresh(conn, row.id, now)?;
        Ok(Ok(report(conn, &row.tenant, id)?))
    })
}

pub fn retry(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
    now: i64,
) -> Result<Result<ProcessStatus, CommandError>, Error> {
    write_transaction(conn, |conn| {
        let row = match command_target(conn, tenant, id, Command::Retry)? {
            Ok(row) => row,
            Err(refused) => return Ok(Err(refused)),
        };
        crate::outbox::supersede_unsent(conn, row.id)?;
        let failed: Vec<(i32, i64)> = outcomes::table
            .filter(outcomes::process_id.eq(row.id))
            .filter(outcomes::failure_group.is_not_null())
            .select((outcomes::step_number, outcomes::item_index))
            .load(conn)?;
        // Items a policy abort left unrun: those of its cancelled tasks.
        let cancelled: Vec<TaskRow> = tasks::table
            .filter(tasks::process_id.eq(row.id))
            .filter(tasks::state.eq(CANCELLED))
            .select(TaskRow::as_select())
            .load(conn)?;
        let mut rerun: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for &(step, index) in &failed {
            rerun.entry(step).or_default().push(index);
        }
        for task in &cancelled {
            rerun.entry(task.step_number).or_default().extend(indices_of(task)?);
        }
        let Some((&first, first_items)) = rerun.iter().next() else {
            return Ok(Err(CommandError::Refused(lifecycle::Refused {
                command: "retry",
                status: Status::Failed,
                why: "no failed or unrun item is left to run",
            })));
        };
        let mut first_items = first_items.clone();
        first_items.sort_unstable();
        first_items.dedup();
        // Failed outcomes go: their items run again, at the first step here and, carried by
        // the normal flow, at later ones (which therefore count them as not yet entered).
        let mut per_step: HashMap<i32, i64> = HashMap::new();
        for &(step, _) in &failed {
            *per_step.entry(step).or_default() += 1;
        }
        diesel::delete(
            outcomes::table
                .filter(outcomes::process_id.eq(row.id))
                .filter(outcomes::failure_group.is_not_null()),
        )
        .execute(conn)?;
        diesel::delete(failure_groups::table.filter(failure_groups::process_id.eq(row.id))).execute(conn)?;
        diesel::delete(tasks::table.filter(tasks::process_id.eq(row.id)).filter(tasks::state.eq(CANCELLED)))
            .execute(conn)?;
        if let Some(&count) = per_step.get(&first) {
            diesel::update(
                steps::table.filter(steps::process_id.eq(row.id)).filter(steps::step_number.eq(first)),
            )
            .set(steps::failed.eq(steps::failed - count))
            .execute(conn)?;
        }
        // Later steps keep only their successes: every other item that had entered them
        // (failed there, or left unrun by an abort) enters again through the normal flow, so
        // they count it as not yet entered, and wait for it.
        diesel::update(
            steps::table.filter(steps::process_id.eq(row.id)).filter(steps::step_number.gt(first)),
        )
        .set((steps::failed.eq(0), steps::entered.eq(steps::succeeded), steps::started.eq(false)))
        .execute(conn)?;
        diesel::update(processes::table.find(row.id))
            .set((processes::end_reason.eq(None::<String>), processes::current_step.eq(first)))
            .execute(conn)?;
        let all = load_steps(conn, row.id)?;
        let step = all
            .iter()
            .find(|s| s.step_number == first)
            .ok_or_else(|| Error::Corrupt(format!("process {id}: no step {first}")))?;
        create_tasks(conn, row.id, first, step, &first_items, now)?;
        advance(conn, row.id, now)?;
        Ok(Ok(report(conn, &row.tenant, id)?))
    })
}

pub fn list(conn: &mut DbConnection, query: &ListQuery) -> Result<Result<Page, ListError>, Error> {
    let after = match query.cursor.as_deref().map(parse_cursor) {
        Some(None) => return Ok(Err(ListError::BadCursor)),
        Some(Some(position)) => Some(position),
        None => None,
    };
    read_transaction(conn, |conn| {
        let mut select = processes::table.filter(processes::tenant.eq(query.tenant.as_str())).into_boxed();
        if let Some(status) = query.status {
            select = select.filter(processes::status.eq(status.as_str()));
        }
        if let Some(name) = &query.name {
            select = select.filter(processes::name.eq(name));
        }
        if let Some(reference) = &query.reference_id {
            select = select.filter(processes::reference_id.eq(reference));
        }
        if let Some((created, id)) = after {
            select = select.filter(
                processes::created_at
                    .lt(created)
                    .or(processes::created_at.eq(created).and(processes::id.lt(id))),
            );
        }
        let limit = i64::from(query.limit.max(1));
        let rows: Vec<(i64, i64, ProcessRow)> = select
            .order((processes::created_at.desc(), processes::id.desc()))
            .limit(limit + 1)
            .select((processes::created_at, processes::id, ProcessRow::as_select()))
            .load(conn)?;
        let more = rows.len() as i64 > limit;
        let mut records = Vec::new();
        let mut last = None;
        for (created, id, row) in rows.into_iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
            last = Some(format!("{created}.{id}"));
            let detail = if query.with_steps { Detail::Steps } else { Detail::Process };
            records.push(assemble(conn, row, detail)?);
        }
        Ok(Ok(Page { records, next_cursor: if more { last } else { None } }))
    })
}

fn parse_cursor(text: &str) -> Option<(i64, i64)> {
    let (created, id) = text.split_once('.')?;
    Some((created.parse().ok()?, id.parse().ok()?))
}

impl ProcessStore for Store {
    fn start(&self, process: &NewProcess) -> Result<Started, RepositoryError> {
        let mut conn = self.conn()?;
        match start(&mut conn, process) {
            // Two requests with one idempotency key at once (PostgreSQL): the loser finds the
            // winner's process on a second look.
            Err(Error::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ))) if process.idempotency_key.is_some() => {
                Ok(start(&mut conn, process).map_err(|e| self.noted(e))?)
            }
            other => Ok(other.map_err(|e| self.noted(e))?),
        }
    }

    fn cancel(&self, tenant: &TenantId, id: &str, now_micros: i64) -> Result<ProcessStatus, CommandError> {
        self.with(|conn| cancel(conn, tenant, id, now_micros))
    }

    fn retry(&self, tenant: &TenantId, id: &str, now_micros: i64) -> Result<ProcessStatus, CommandError> {
        self.with(|conn| retry(conn, tenant, id, now_micros))
    }

    fn list(&self, query: &ListQuery) -> Result<Page, ListError> {
        self.with(|conn| list(conn, query))
    }

    fn items(&self, query: &ItemsQuery) -> Result<ItemsPage, ItemsError> {
        self.with(|conn| crate::queries::items_page(conn, query))
    }
}

impl TaskStore for Store {
    fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedTask>, RepositoryError> {
        self.with(|conn| claim(conn, request).map(Ok))
    }

    fn any_due(&self, request: &ClaimRequest) -> Result<bool, RepositoryError> {
        self.with(|conn| any_due(conn, request).map(Ok))
    }

    fn complete(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        token: &str,
        report: &TaskReport,
        now_micros: i64,
    ) -> Result<(), TaskError> {
        self.with(|conn| complete(conn, tenant.as_ref(), task_id, token, report, now_micros))
    }

    fn heartbeat(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        token: &str,
        lease_micros: i64,
        now_micros: i64,
    ) -> Result<i64, TaskError> {
        self.with(|conn| heartbeat(conn, tenant.as_ref(), task_id, token, lease_micros, now_micros))
    }

    fn fail(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        token: &str,
        message: &str,
        retryable: bool,
        now_micros: i64,
    ) -> Result<(), TaskError> {
        self.with(|conn| fail(conn, tenant.as_ref(), task_id, token, message, retryable, now_micros))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use async_engine_domain::{
        Handler, LookupId, ProcessDefinition, ProcessId, ReferenceId, StatusQuery, StatusReader,
    };
    use serde_json::json;

    use super::*;
    use crate::testing::on_both_backends;

    const SECOND: i64 = 1_000_000;

    fn definition(policies: &[FailurePolicy], chunk: u32) -> ProcessDefinition {
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
                })
                .collect(),
            callback_url: None,
        }
    }

    fn begin(store: &Store, id: &str, policies: &[FailurePolicy], items: usize, chunk: u32) -> ProcessStatus {
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
        let new = NewProcess {
            tenant: TenantId::default_tenant(),
            async_process_id: ProcessId::new(id).unwrap(),
            reference_id: ReferenceId::new("ref").unwrap(),
            definition: definition(policies, chunk),
            items: (0..items).map(|i| RawJson::from_value(&json!({ "n": i }))).collect(),
            additional_data: RawJson::empty_object(),
            idempotency_key: None,
            callback_url: callback_url.map(str::to_owned),
            now_micros: 0,
        };
        match store.start(&new).unwrap() {
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
    pub(crate) fn finish(
        store: &Store,
        task: &ClaimedTask,
        failing: &[u64],
        now: i64,
    ) -> Result<(), TaskError> {
        let (bad, good): (Vec<u64>, Vec<u64>) =
            task.items.iter().map(|(i, _)| *i).partition(|i| failing.contains(i));
        let failures = if bad.is_empty() {
            vec![]
        } else {
            vec![async_engine_domain::FailureSnapshot { code: 7, status_message: "Seven".into(), items: bad }]
        };
        store.complete(None, task.task_id, &task.lease_token, &TaskReport { successes: good, failures }, now)
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
    fn steps_of(process: &ProcessStatus) -> Vec<(Status, u64, u64, usize, usize)> {
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
        fn an_empty_process_succeeds_at_once(store: &Store) {
            let started = begin(store, "p", &[FailurePolicy::Skip, FailurePolicy::Skip], 0, 10);
            assert_eq!(started.status, Status::Success);
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
        fn a_lease_that_expires_on_the_last_attempt_fails_the_items(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip], 2, 2);
            claim(store, "queue:q0", "w", 1, 0);
            claim(store, "queue:q0", "w", 1, 11 * SECOND);
            assert!(claim(store, "queue:q0", "w", 1, 22 * SECOND).is_empty(), "max_attempts is 2");
            let done = status(store, "p");
            assert_eq!(done.status, Status::Failed);
            let steps = done.steps.unwrap();
            let group = &steps[0].items.as_ref().unwrap().failed[0];
            assert_eq!((group.code, group.items.len()), (GAVE_UP_CODE, 2));
            assert!(group.status_message.contains("2 attempts"), "{}", group.status_message);
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

    on_both_backends! {
        fn cancel_stops_every_task_and_only_once(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip, FailurePolicy::Skip], 6, 2);
            let in_flight = claim(store, "queue:q0", "w", 1, 0).remove(0);
            let tenant = TenantId::default_tenant();
            let cancelled = store.cancel(&tenant, "p", 0).unwrap();
            assert_eq!(cancelled.status, Status::Aborted);
            assert!(claim(store, "queue:q0", "w", 10, 0).is_empty());
            assert!(matches!(finish(store, &in_flight, &[], 0), Err(TaskError::Conflict(_))));
            assert!(matches!(store.cancel(&tenant, "p", 0), Err(CommandError::Refused(_))));
            assert!(matches!(store.retry(&tenant, "p", 0), Err(CommandError::Refused(_))));
            assert!(matches!(store.cancel(&tenant, "nope", 0), Err(CommandError::NotFound(_))));
            let steps = steps_of(&status(store, "p"));
            assert_eq!(steps, [(Status::Aborted, 0, 6, 0, 0), (Status::Aborted, 0, 0, 0, 0)]);
        }
    }

    on_both_backends! {
        fn retry_reruns_only_failed_items_and_fixes_counts(store: &Store) {
            let tenant = TenantId::default_tenant();
            begin(store, "p", &[FailurePolicy::Continue, FailurePolicy::Skip], 6, 3);
            drain(store, "queue:q0", &[1], 0);
            drain(store, "queue:q1", &[4], 0);
            assert_eq!(
                steps_of(&status(store, "p")),
                [(Status::Failed, 6, 6, 5, 1), (Status::Failed, 6, 6, 5, 1)]
            );
            let retried = store.retry(&tenant, "p", 0).unwrap();
            assert_eq!(retried.status, Status::InProgress);
            assert_eq!(retried.current_step_number, 0);
            let rerun = claim(store, "queue:q0", "w", 10, 0);
            assert_eq!(rerun.iter().flat_map(|t| t.items.iter().map(|(i, _)| *i)).collect::<Vec<_>>(), [1]);
            finish(store, &rerun[0], &[], 0).unwrap();
            let rerun = claim(store, "queue:q1", "w", 10, 0);
            assert_eq!(
                rerun.iter().flat_map(|t| t.items.iter().map(|(i, _)| *i)).collect::<Vec<_>>(),
                [4],
                "item 1 had passed step 1"
            );
            finish(store, &rerun[0], &[], 0).unwrap();
            let done = status(store, "p");
            assert_eq!(done.status, Status::Success);
            assert_eq!(steps_of(&done), [(Status::Success, 6, 6, 6, 0), (Status::Success, 6, 6, 6, 0)]);
        }
    }

    on_both_backends! {
        fn retry_after_an_abort_runs_the_failed_and_the_unrun_items(store: &Store) {
            begin(store, "p", &[FailurePolicy::Abort, FailurePolicy::Skip], 6, 3);
            let first = claim(store, "queue:q0", "w", 1, 0).remove(0);
            finish(store, &first, &[0], 0).unwrap();
            store.retry(&TenantId::default_tenant(), "p", 0).unwrap();
            let mut rerun: Vec<u64> = claim(store, "queue:q0", "w", 10, 0)
                .iter()
                .flat_map(|t| t.items.iter().map(|(i, _)| *i))
                .collect();
            rerun.sort_unstable();
            assert_eq!(rerun, [0, 3, 4, 5]);
        }
    }

    on_both_backends! {
        fn retry_after_an_abort_at_a_later_step_counts_every_item_once(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip, FailurePolicy::Abort], 6, 3);
            drain(store, "queue:q0", &[1], 0);
            let first = claim(store, "queue:q1", "w", 1, 0).remove(0);
            finish(store, &first, &[3], 0).unwrap();
            assert_eq!(status(store, "p").status, Status::Failed);
            let retried = store.retry(&TenantId::default_tenant(), "p", 0).unwrap();
            let later = &retried.steps.as_ref().unwrap()[1];
            assert_eq!((later.status, later.processed, later.total), (Status::WaitingToProcess, 2, 2));
            drain(store, "queue:q0", &[], 0);
            assert_eq!(drain(store, "queue:q1", &[], 0), 2, "items 1, 3, 4 and 5 enter step 1 again");
            let done = status(store, "p");
            assert_eq!(done.status, Status::Success, "{}", done.message);
            assert_eq!(steps_of(&done), [(Status::Success, 6, 6, 6, 0), (Status::Success, 6, 6, 6, 0)]);
        }
    }

    on_both_backends! {
        fn a_give_up_that_aborts_the_process_leases_none_of_its_cancelled_tasks(store: &Store) {
            begin(store, "p", &[FailurePolicy::Abort], 4, 1);
            claim(store, "queue:q0", "w", 1, 0);
            claim(store, "queue:q0", "w", 1, 11 * SECOND);
            // The expired last attempt is given up, which aborts the process and cancels the
            // three other tasks that this same claim had already read as queued.
            assert!(claim(store, "queue:q0", "w", 10, 22 * SECOND).is_empty());
            let done = status(store, "p");
            assert_eq!(done.status, Status::Failed);
            assert_eq!(steps_of(&done), [(Status::Aborted, 1, 4, 0, 1)]);
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

    /// The due check waiting claims make every tick holds no row lock (PostgreSQL; SQLite
    /// has none): a claim elsewhere at that instant still gets the task. The look is made
    /// inside a transaction left open, so that any lock it took would still be held.
    #[test]
    fn looking_for_due_tasks_locks_no_row_a_claim_elsewhere_needs() {
        let Some(db) = crate::testing::postgres() else { return };
        let store = &db.store;
        begin(store, "p", &[FailurePolicy::Skip], 1, 1);
        let request = ClaimRequest {
            queues: vec!["queue:q0".into()],
            tenant: Some(TenantId::default_tenant()),
            worker_id: String::new(),
            max_tasks: 1,
            lease_micros: 0,
            now_micros: 0,
        };
        let mut looking = store.conn().unwrap();
        let claimed = looking
            .transaction(|conn| {
                assert!(any_due(conn, &request)?, "the task is due");
                Ok::<_, Error>(claim(store, "queue:q0", "w", 1, 0))
            })
            .unwrap();
        assert_eq!(claimed.iter().map(|t| t.async_process_id.as_str()).collect::<Vec<_>>(), ["p"]);
    }

    /// A look past a busy process (PostgreSQL): its due tasks alone are nothing to take, and
    /// another process's task behind them is found.
    #[test]
    fn a_look_passes_over_the_tasks_of_a_busy_process() {
        let Some(db) = crate::testing::postgres() else { return };
        let store = &db.store;
        begin(store, "busy", &[FailurePolicy::Skip], 3, 1);
        let busy: i64 = processes::table
            .filter(processes::async_process_id.eq("busy"))
            .select(processes::id)
            .first(&mut *store.conn().unwrap())
            .unwrap();
        let mut holder = PgConnection::establish(&db.url).unwrap();
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(busy)
            .execute(&mut holder)
            .unwrap();
        let request = ClaimRequest {
            queues: vec!["queue:q0".into()],
            tenant: None,
            worker_id: String::new(),
            max_tasks: 1,
            lease_micros: 0,
            now_micros: 0,
        };
        assert!(!any_due(&mut store.conn().unwrap(), &request).unwrap(), "only a busy process's tasks");
        begin(store, "other", &[FailurePolicy::Skip], 1, 1);
        assert!(any_due(&mut store.conn().unwrap(), &request).unwrap(), "another process's task");
        drop(holder);
    }

    on_both_backends! {
        fn the_list_pages_newest_first_with_filters(store: &Store) {
            for n in 0..5 {
                let mut new_id = format!("p{n}");
                new_id.push_str(if n % 2 == 0 { "-even" } else { "-odd" });
                begin(store, &new_id, &[FailurePolicy::Skip], usize::from(n % 2 == 0), 1);
            }
            let tenant = TenantId::default_tenant();
            let query = |limit, cursor| ListQuery {
                tenant: tenant.clone(),
                status: None,
                name: None,
                reference_id: None,
                limit,
                cursor,
                with_steps: false,
            };
            let page = store.list(&query(2, None)).unwrap();
            let ids = |page: &Page| page.records.iter().map(|r| r.async_process_id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&page), ["p4-even", "p3-odd"]);
            let page = store.list(&query(2, page.next_cursor)).unwrap();
            assert_eq!(ids(&page), ["p2-even", "p1-odd"]);
            let page = store.list(&query(2, page.next_cursor)).unwrap();
            assert_eq!((ids(&page), page.next_cursor), (vec!["p0-even".to_owned()], None));
            let waiting =
                store.list(&ListQuery { status: Some(Status::WaitingToProcess), ..query(10, None) }).unwrap();
            assert_eq!(ids(&waiting), ["p4-even", "p2-even", "p0-even"]);
            assert!(matches!(store.list(&query(2, Some("garbage".into()))), Err(ListError::BadCursor)));
        }
    }
}
