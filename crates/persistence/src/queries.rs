//! Every statement the repository runs. Each function takes a connection; the caller owns the
//! pool and the transaction boundaries.

use std::collections::HashMap;

use crate::connection::{DbConnection, per_backend, read_transaction, write_transaction};
use async_engine_domain::{
    Detail, FailureGroup, IdKind, ImportResult, ItemResult, ItemsError, ItemsPage, ItemsQuery, ListedItem,
    OutcomeFilter, ProcessSnapshot, ProcessStatus, RawJson, RepositoryError, ResultRow, ResultsFilter,
    ResultsQuery, SnapshotWriter, Status, StatusQuery, StatusReader, StepItems, StepReport, TenantId,
};
use diesel::prelude::*;

use crate::error::Error;
use crate::models::{
    FailureGroupRow, NewFailureGroup, NewItem, NewOutcome, NewProcess, NewStep, ProcessRow, StepRow,
};
use crate::schema::{failure_groups, items, outcomes, processes, steps};
use crate::store::Store;

/// Rows per multi-row INSERT: below SQLite's limit of 32,766 bound variables for every table.
pub(crate) const INSERT_BATCH: usize = 5_000;

/// Resolves and reads a status query inside one read transaction, so every record is a
/// consistent picture even while the engine writes.
pub fn find_status(conn: &mut DbConnection, query: &StatusQuery) -> Result<Vec<ProcessStatus>, Error> {
    read_transaction(conn, |conn| {
        resolve(conn, query)?.into_iter().map(|row| assemble(conn, row, query.detail)).collect()
    })
}

/// The processes a lookup names (contract §3): the asyncProcessId first, then the referenceId.
fn resolve(conn: &mut DbConnection, query: &StatusQuery) -> QueryResult<Vec<ProcessRow>> {
    let tenant = query.tenant.as_str();
    let id = query.id.as_str();
    match query.kind {
        IdKind::AsyncProcessId => by_process_id(conn, tenant, id),
        IdKind::ReferenceId => by_reference_id(conn, tenant, id),
        IdKind::Either => {
            let rows = by_process_id(conn, tenant, id)?;
            if rows.is_empty() { by_reference_id(conn, tenant, id) } else { Ok(rows) }
        }
    }
}

diesel::alias!(processes as named: Named);

/// `(row id, version)` of each process a lookup names, in [`resolve`]'s order: one statement
/// of two columns, however large the processes are. A held answer is checked with it on every
/// read, so the asyncProcessId-then-referenceId rule is one `WHERE` here rather than two reads.
pub fn change_marks(conn: &mut DbConnection, query: &StatusQuery) -> Result<Vec<(i64, i64)>, Error> {
    let tenant = query.tenant.as_str();
    let id = query.id.as_str();
    let by_id = processes::async_process_id.eq(id);
    let by_reference = processes::reference_id.eq(id);
    let no_such_id = diesel::dsl::not(diesel::dsl::exists(
        named
            .filter(named.field(processes::tenant).eq(tenant))
            .filter(named.field(processes::async_process_id).eq(id)),
    ));
    let marks = processes::table
        .filter(processes::tenant.eq(tenant))
        .order((processes::created_at.asc(), processes::async_process_id.asc()))
        .select((processes::id, processes::version));
    Ok(match query.kind {
        IdKind::AsyncProcessId => marks.filter(by_id).load(conn)?,
        IdKind::ReferenceId => marks.filter(by_reference).load(conn)?,
        IdKind::Either => marks.filter(by_id.or(by_reference.and(no_such_id))).load(conn)?,
    })
}

#[derive(Queryable)]
struct ListedRow {
    seq: i64,
    index: i64,
    value: String,
    code: Option<i64>,
    message: Option<String>,
}

/// One page of a step's recorded outcomes in recording order. The cursor is the last `seq`
/// given out: outcomes recorded later get higher ones, so paging while the step runs lists
/// each outcome once, and a page costs the same at the millionth item as at the first.
pub fn items_page(
    conn: &mut DbConnection,
    query: &ItemsQuery,
) -> Result<Result<ItemsPage, ItemsError>, Error> {
    let after = match query.cursor.as_deref().map(str::parse::<i64>) {
        None => -1,
        Some(Ok(seq)) if seq >= 0 => seq,
        Some(_) => return Ok(Err(ItemsError::BadCursor)),
    };
    read_transaction(conn, |conn| {
        let (process_id, step) =
            match process_step(conn, &query.tenant, &query.async_process_id, query.step_number)? {
                Ok(found) => found,
                Err(refused) => return Ok(Err(refused)),
            };
        let mut select = outcomes::table
            .inner_join(items::table.on(
                items::process_id.eq(outcomes::process_id).and(items::item_index.eq(outcomes::item_index)),
            ))
            .left_join(failure_groups::table.on(outcomes::failure_group.eq(failure_groups::id.nullable())))
            .filter(outcomes::process_id.eq(process_id))
            .filter(outcomes::step_number.eq(step))
            .filter(outcomes::seq.gt(after))
            .into_boxed();
        match query.outcome {
            OutcomeFilter::Any => {}
            OutcomeFilter::Successful => select = select.filter(outcomes::failure_group.is_null()),
            OutcomeFilter::Failed => select = select.filter(outcomes::failure_group.is_not_null()),
        }
        let limit = i64::from(query.limit.max(1));
        let rows: Vec<ListedRow> = select
            .order(outcomes::seq.asc())
            .limit(limit + 1)
            .select((
                outcomes::seq,
                outcomes::item_index,
                items::value,
                failure_groups::code.nullable(),
                failure_groups::status_message.nullable(),
            ))
            .load(conn)?;
        let more = to_i64(rows.len())? > limit;
        let mut listed = Vec::with_capacity(rows.len());
        let mut last = None;
        for ListedRow { seq, index, value, code, message } in
            rows.into_iter().take(usize::try_from(limit).unwrap_or(0))
        {
            let item = RawJson::from_text(value).map_err(|e| {
                Error::Corrupt(format!("process {}: item {index}: {e}", query.async_process_id))
            })?;
            listed.push(ListedItem {
                index: u64::try_from(index).map_err(|_| Error::Corrupt(format!("item index {index}")))?,
                item,
                failure: code.map(|code| (code, message.unwrap_or_default())),
            });
            last = Some(seq);
        }
        let next_cursor = if more { last.map(|seq| seq.to_string()) } else { None };
        Ok(Ok(ItemsPage { items: listed, next_cursor }))
    })
}

/// The internal ID of a tenant's process and one of its steps, or why the caller named none.
fn process_step(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
    step_number: u32,
) -> Result<Result<(i64, i32), ItemsError>, Error> {
    let process: Option<(i64, i32)> = processes::table
        .filter(processes::tenant.eq(tenant.as_str()))
        .filter(processes::async_process_id.eq(id))
        .select((processes::id, processes::total_steps))
        .first(conn)
        .optional()?;
    let Some((process_id, total_steps)) = process else {
        return Ok(Err(ItemsError::NotFound(id.to_owned())));
    };
    // A step number past i32 names no step (a caller's mistake, not corrupt data).
    let step = i32::try_from(step_number).unwrap_or(i32::MAX);
    if step >= total_steps {
        let last = u32::try_from(total_steps - 1).unwrap_or(0);
        return Ok(Err(ItemsError::NoSuchStep { step: step_number, last }));
    }
    Ok(Ok((process_id, step)))
}

/// `(item_index, value, the outcome's item_index if recorded, failure code, failure message)`.
type ResultLine = (i64, String, Option<i64>, Option<i64>, Option<String>);

/// One page of a step's results in item order: every item of the process, its outcome at
/// the step joined on (none: unprocessed), keyed on the item index so that each page is an
/// index range read.
pub fn results_page(
    conn: &mut DbConnection,
    query: &ResultsQuery,
) -> Result<Result<Vec<ResultRow>, ItemsError>, Error> {
    read_transaction(conn, |conn| {
        let (process_id, step) =
            match process_step(conn, &query.tenant, &query.async_process_id, query.step_number)? {
                Ok(found) => found,
                Err(refused) => return Ok(Err(refused)),
            };
        let after = query.after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
        if query.filter == ResultsFilter::All {
            return all_results(conn, process_id, step, after, query.limit).map(Ok);
        }
        let mut select = items::table
            .left_join(
                outcomes::table.on(outcomes::process_id
                    .eq(items::process_id)
                    .and(outcomes::item_index.eq(items::item_index))
                    .and(outcomes::step_number.eq(step))),
            )
            .left_join(failure_groups::table.on(outcomes::failure_group.eq(failure_groups::id.nullable())))
            .filter(items::process_id.eq(process_id))
            .filter(items::item_index.gt(after))
            .into_boxed();
        match query.filter {
            ResultsFilter::All => {}
            ResultsFilter::Succeeded => {
                select = select
                    .filter(outcomes::item_index.nullable().is_not_null())
                    .filter(outcomes::failure_group.is_null());
            }
            ResultsFilter::Failed => select = select.filter(outcomes::failure_group.is_not_null()),
            ResultsFilter::Unprocessed => select = select.filter(outcomes::item_index.nullable().is_null()),
        }
        let rows: Vec<ResultLine> = select
            .order(items::item_index.asc())
            .limit(i64::from(query.limit.max(1)))
            .select((
                items::item_index,
                items::value,
                outcomes::item_index.nullable(),
                failure_groups::code.nullable(),
                failure_groups::status_message.nullable(),
            ))
            .load(conn)?;
        rows.into_iter()
            .map(|(index, item, recorded, code, message)| {
                let result = match (recorded, code) {
                    (None, _) => ItemResult::Unprocessed,
                    (Some(_), None) => ItemResult::Succeeded,
                    (Some(_), Some(code)) => {
                        ItemResult::Failed { code, status_message: message.unwrap_or_default() }
                    }
                };
                let index =
                    u64::try_from(index).map_err(|_| Error::Corrupt(format!("item index {index}")))?;
                Ok(ResultRow { index, item, result })
            })
            .collect::<Result<Vec<_>, Error>>()
            .map(Ok)
    })
}

/// Every item after `after` with its result at `step`: the page of items, then the outcomes
/// of the same index range, merged by index. Two range scans on primary keys instead of one
/// index probe per item, which is what a whole file of a million rows spends its time on.
fn all_results(
    conn: &mut DbConnection,
    process_id: i64,
    step: i32,
    after: i64,
    limit: u32,
) -> Result<Vec<ResultRow>, Error> {
    let rows: Vec<(i64, String)> = items::table
        .filter(items::process_id.eq(process_id))
        .filter(items::item_index.gt(after))
        .order(items::item_index.asc())
        .limit(i64::from(limit.max(1)))
        .select((items::item_index, items::value))
        .load(conn)?;
    let (Some(&(first, _)), Some(&(last, _))) = (rows.first(), rows.last()) else {
        return Ok(Vec::new());
    };
    let recorded: Vec<(i64, Option<i64>)> = outcomes::table
        .filter(outcomes::process_id.eq(process_id))
        .filter(outcomes::step_number.eq(step))
        .filter(outcomes::item_index.between(first, last))
        .order(outcomes::item_index.asc())
        .select((outcomes::item_index, outcomes::failure_group))
        .load(conn)?;
    // Failure groups are few (one per code and message) and a page names only some.
    let mut wanted: Vec<i64> = recorded.iter().filter_map(|&(_, group)| group).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let groups: HashMap<i64, (i64, String)> = if wanted.is_empty() {
        HashMap::new()
    } else {
        failure_groups::table
            .filter(failure_groups::id.eq_any(&wanted))
            .select((failure_groups::id, failure_groups::code, failure_groups::status_message))
            .load::<(i64, i64, String)>(conn)?
            .into_iter()
            .map(|(id, code, message)| (id, (code, message)))
            .collect()
    };
    let mut recorded = recorded.into_iter().peekable();
    rows.into_iter()
        .map(|(index, item)| {
            while recorded.next_if(|&(at, _)| at < index).is_some() {}
            let result = match recorded.next_if(|&(at, _)| at == index) {
                None => ItemResult::Unprocessed,
                Some((_, None)) => ItemResult::Succeeded,
                Some((_, Some(group))) => {
                    let (code, message) = groups.get(&group).ok_or_else(|| {
                        Error::Corrupt(format!("outcome of item {index}: no failure group {group}"))
                    })?;
                    ItemResult::Failed { code: *code, status_message: message.clone() }
                }
            };
            let index = u64::try_from(index).map_err(|_| Error::Corrupt(format!("item index {index}")))?;
            Ok(ResultRow { index, item, result })
        })
        .collect()
}

pub(crate) fn by_process_id(conn: &mut DbConnection, tenant: &str, id: &str) -> QueryResult<Vec<ProcessRow>> {
    processes::table
        .filter(processes::tenant.eq(tenant))
        .filter(processes::async_process_id.eq(id))
        .select(ProcessRow::as_select())
        .load(conn)
}

fn by_reference_id(conn: &mut DbConnection, tenant: &str, id: &str) -> QueryResult<Vec<ProcessRow>> {
    processes::table
        .filter(processes::tenant.eq(tenant))
        .filter(processes::reference_id.eq(id))
        .order((processes::created_at.asc(), processes::async_process_id.asc()))
        .select(ProcessRow::as_select())
        .load(conn)
}

pub(crate) fn assemble(
    conn: &mut DbConnection,
    row: ProcessRow,
    detail: Detail,
) -> Result<ProcessStatus, Error> {
    let step_rows: Vec<StepRow> = steps::table
        .filter(steps::process_id.eq(row.id))
        .order(steps::step_number.asc())
        .select(StepRow::as_select())
        .load(conn)?;
    let step_name = step_rows
        .iter()
        .find(|s| s.step_number == row.current_step)
        .map(|s| s.name.clone())
        .ok_or_else(|| corrupt(&row, format!("no row for current step {}", row.current_step)))?;
    let mut reports = match detail {
        Detail::Process => None,
        Detail::Steps | Detail::Items => {
            Some(step_rows.into_iter().map(|s| step_report(&row, s)).collect::<Result<Vec<_>, _>>()?)
        }
    };
    if detail == Detail::Items
        && let Some(reports) = reports.as_mut()
    {
        fill_items(conn, &row, reports)?;
    }
    Ok(ProcessStatus {
        status: parse_status(&row, &row.status)?,
        additional_data: RawJson::from_text(row.additional_data.clone())
            .map_err(|e| corrupt(&row, format!("additionalData: {e}")))?,
        current_step_number: step_number(&row, row.current_step)?,
        total_number_of_steps: step_number(&row, row.total_steps)?,
        step_name,
        async_process_id: row.async_process_id,
        reference_id: row.reference_id,
        name: row.name,
        message: row.message,
        steps: reports,
        created_at_micros: row.created_at,
        updated_at_micros: row.updated_at,
        runnable: row.runnable,
    })
}

fn step_report(process: &ProcessRow, step: StepRow) -> Result<StepReport, Error> {
    Ok(StepReport {
        step_number: step_number(process, step.step_number)?,
        status: parse_status(process, &step.status)?,
        processed: count(process, step.succeeded)? + count(process, step.failed)?,
        total: count(process, step.entered)?,
        step_name: step.name,
        message: step.message,
        items: None,
    })
}

/// Reads every outcome of the process in recording order, with its item, in one query.
fn fill_items(
    conn: &mut DbConnection,
    process: &ProcessRow,
    reports: &mut [StepReport],
) -> Result<(), Error> {
    let position = |step: i32| -> Result<usize, Error> {
        reports
            .iter()
            .position(|r| i64::from(r.step_number) == i64::from(step))
            .ok_or_else(|| corrupt(process, format!("outcome for unknown step {step}")))
    };
    let mut lists: Vec<StepItems> = vec![StepItems::default(); reports.len()];
    let groups: Vec<FailureGroupRow> = failure_groups::table
        .filter(failure_groups::process_id.eq(process.id))
        .order(failure_groups::id.asc())
        .select(FailureGroupRow::as_select())
        .load(conn)?;
    let mut group_at = HashMap::with_capacity(groups.len());
    for group in groups {
        let step = position(group.step_number)?;
        group_at.insert(group.id, (step, lists[step].failed.len()));
        lists[step].failed.push(FailureGroup {
            items: Vec::new(),
            code: group.code,
            status_message: group.status_message,
        });
    }
    let rows: Vec<(i32, Option<i64>, String)> =
        outcomes::table
            .inner_join(items::table.on(
                items::process_id.eq(outcomes::process_id).and(items::item_index.eq(outcomes::item_index)),
            ))
            .filter(outcomes::process_id.eq(process.id))
            .order((outcomes::step_number.asc(), outcomes::seq.asc()))
            .select((outcomes::step_number, outcomes::failure_group, items::value))
            .load(conn)?;
    for (step_number, group, value) in rows {
        let item = RawJson::from_text(value).map_err(|e| corrupt(process, format!("item: {e}")))?;
        match group {
            None => lists[position(step_number)?].successfully.push(item),
            Some(group) => {
                let (step, at) = *group_at
                    .get(&group)
                    .ok_or_else(|| corrupt(process, format!("outcome in unknown failure group {group}")))?;
                lists[step].failed[at].items.push(item);
            }
        }
    }
    for (report, list) in reports.iter_mut().zip(lists) {
        report.items = Some(list);
    }
    Ok(())
}

/// Stores a process's items, indexed from 0, in batches.
/// Inserts `values` as the items numbered from `first`.
pub(crate) fn insert_items(
    conn: &mut DbConnection,
    process_id: i64,
    first: usize,
    values: &[RawJson],
) -> Result<(), Error> {
    for (offset, chunk) in values.chunks(INSERT_BATCH).enumerate() {
        let base = first + offset * INSERT_BATCH;
        let rows = chunk
            .iter()
            .enumerate()
            .map(|(i, item)| Ok(NewItem { process_id, item_index: to_i64(base + i)?, value: item.as_str() }))
            .collect::<Result<Vec<_>, Error>>()?;
        per_backend!(conn, |c| diesel::insert_into(items::table).values(&rows).execute(c))?;
    }
    Ok(())
}

/// Stores a snapshot in one write transaction, unless its asyncProcessId is already taken.
pub fn import(
    conn: &mut DbConnection,
    tenant: &TenantId,
    snapshot: &ProcessSnapshot,
) -> Result<ImportResult, Error> {
    snapshot
        .validate()
        .map_err(|e| Error::Corrupt(format!("snapshot {}: {e}", snapshot.async_process_id)))?;
    write_transaction(conn, |conn| {
        let existing: i64 = processes::table
            .filter(processes::tenant.eq(tenant.as_str()))
            .filter(processes::async_process_id.eq(snapshot.async_process_id.as_str()))
            .count()
            .get_result(conn)?;
        if existing > 0 {
            return Ok(ImportResult::AlreadyPresent);
        }
        let process_id: i64 = diesel::insert_into(processes::table)
            .values(NewProcess {
                tenant: tenant.as_str(),
                async_process_id: snapshot.async_process_id.as_str(),
                reference_id: snapshot.reference_id.as_str(),
                name: &snapshot.name,
                status: snapshot.status.as_str(),
                message: &snapshot.message,
                current_step: to_i32(snapshot.current_step)?,
                total_steps: to_i32(snapshot.steps.len())?,
                item_count: to_i64(snapshot.items.len())?,
                additional_data: snapshot.additional_data.as_str(),
                created_at: snapshot.created_at_micros,
                updated_at: snapshot.created_at_micros,
            })
            .returning(processes::id)
            .get_result(conn)?;

        let new_steps = snapshot
            .steps
            .iter()
            .enumerate()
            .map(|(number, step)| {
                Ok(NewStep {
                    process_id,
                    step_number: to_i32(number)?,
                    name: &step.name,
                    status: step.status.as_str(),
                    message: &step.message,
                    entered: to_i64(step.entered)?,
                    succeeded: to_i64(step.successes.len())?,
                    failed: to_i64(step.failed_count())?,
                    started: step.status != Status::WaitingToProcess,
                    next_seq: to_i64(step.processed())?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        per_backend!(conn, |c| diesel::insert_into(steps::table).values(&new_steps).execute(c))?;

        insert_items(conn, process_id, 0, &snapshot.items)?;

        for (number, step) in snapshot.steps.iter().enumerate() {
            let step_number = to_i32(number)?;
            let mut pending: Vec<NewOutcome> = Vec::with_capacity(INSERT_BATCH);
            let mut seq = 0_i64;
            let mut record =
                |conn: &mut DbConnection, pending: &mut Vec<NewOutcome>, index: u64, group: Option<i64>| {
                    pending.push(NewOutcome {
                        process_id,
                        step_number,
                        item_index: to_i64(index)?,
                        seq,
                        failure_group: group,
                    });
                    seq += 1;
                    if pending.len() == INSERT_BATCH {
                        per_backend!(conn, |c| diesel::insert_into(outcomes::table)
                            .values(&*pending)
                            .execute(c))?;
                        pending.clear();
                    }
                    Ok::<(), Error>(())
                };
            for &index in &step.successes {
                record(conn, &mut pending, index, None)?;
            }
            let mut group_ids: HashMap<(i64, &str), i64> = HashMap::new();
            for failure in &step.failures {
                let key = (failure.code, failure.status_message.as_str());
                let group = match group_ids.get(&key) {
                    Some(&id) => id,
                    None => {
                        let id: i64 = diesel::insert_into(failure_groups::table)
                            .values(NewFailureGroup {
                                process_id,
                                step_number,
                                code: failure.code,
                                status_message: &failure.status_message,
                            })
                            .returning(failure_groups::id)
                            .get_result(conn)?;
                        group_ids.insert(key, id);
                        id
                    }
                };
                for &index in &failure.items {
                    record(conn, &mut pending, index, Some(group))?;
                }
            }
            if !pending.is_empty() {
                per_backend!(conn, |c| diesel::insert_into(outcomes::table).values(&pending).execute(c))?;
            }
        }
        Ok(ImportResult::Created)
    })
}

impl StatusReader for Store {
    fn find_status(&self, query: &StatusQuery) -> Result<Vec<ProcessStatus>, RepositoryError> {
        self.with(|conn| find_status(conn, query).map(Ok))
    }

    fn change_marks(&self, query: &StatusQuery) -> Result<Vec<(i64, i64)>, RepositoryError> {
        self.with(|conn| change_marks(conn, query).map(Ok))
    }

    /// On SQLite with an idle connection: a read of one small index in a local file, which a
    /// writer never blocks (WAL), tens of microseconds.
    fn change_marks_now(&self, query: &StatusQuery) -> Option<Result<Vec<(i64, i64)>, RepositoryError>> {
        if self.is_postgres() {
            return None;
        }
        let mut conn = self.idle_conn()?;
        Some(change_marks(&mut conn, query).map_err(|error| RepositoryError::from(self.noted(error))))
    }
}

impl SnapshotWriter for Store {
    fn import(&self, tenant: &TenantId, snapshot: &ProcessSnapshot) -> Result<ImportResult, RepositoryError> {
        self.with(|conn| import(conn, tenant, snapshot).map(Ok))
    }
}

pub(crate) fn corrupt(process: &ProcessRow, what: String) -> Error {
    Error::Corrupt(format!("process {}: {what}", process.async_process_id))
}

fn parse_status(process: &ProcessRow, text: &str) -> Result<Status, Error> {
    text.parse().map_err(|e| corrupt(process, format!("{e}")))
}

fn step_number(process: &ProcessRow, value: i32) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| corrupt(process, format!("negative step number {value}")))
}

fn count(process: &ProcessRow, value: i64) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| corrupt(process, format!("negative count {value}")))
}

pub(crate) fn to_i64(value: impl TryInto<i64>) -> Result<i64, Error> {
    value.try_into().map_err(|_| Error::Corrupt("a count does not fit in 64 bits".into()))
}

pub(crate) fn to_i32(value: impl TryInto<i32>) -> Result<i32, Error> {
    value.try_into().map_err(|_| Error::Corrupt("a step number does not fit in 32 bits".into()))
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{FailureSnapshot, LookupId, ProcessId, ReferenceId, StepSnapshot};
    use diesel::connection::SimpleConnection;
    use serde_json::json;

    use super::*;
    use crate::testing::on_both_backends;

    /// Two steps over five items; step 0 fails three items in two groups with the same code
    /// and message, recorded out of index order.
    fn snapshot(id: &str, reference: &str, created_at: i64) -> ProcessSnapshot {
        ProcessSnapshot {
            async_process_id: ProcessId::new(id).unwrap(),
            reference_id: ReferenceId::new(reference).unwrap(),
            name: "P".into(),
            status: Status::InProgress,
            message: "In progress".into(),
            current_step: 1,
            additional_data: RawJson::from_value(&json!({"k": [1, 2]})),
            items: (0..5).map(|i| RawJson::from_value(&json!({ "i": i }))).collect(),
            steps: vec![
                StepSnapshot {
                    name: "A".into(),
                    status: Status::Failed,
                    message: "Completed with errors".into(),
                    entered: 5,
                    successes: vec![4, 0],
                    failures: vec![
                        FailureSnapshot { code: 9, status_message: "Nine".into(), items: vec![3] },
                        FailureSnapshot { code: 9, status_message: "Nine".into(), items: vec![1, 2] },
                    ],
                },
                StepSnapshot {
                    name: "B".into(),
                    status: Status::InProgress,
                    message: "In progress".into(),
                    entered: 2,
                    successes: vec![4],
                    failures: vec![],
                },
            ],
            created_at_micros: created_at,
        }
    }

    fn query(id: &str, detail: Detail) -> StatusQuery {
        StatusQuery {
            tenant: TenantId::default_tenant(),
            id: LookupId::new(id).unwrap(),
            kind: IdKind::Either,
            detail,
        }
    }

    fn values(items: &[RawJson]) -> Vec<serde_json::Value> {
        items.iter().map(RawJson::to_value).collect()
    }

    fn processes_count(store: &Store) -> i64 {
        processes::table.count().get_result(&mut store.conn().unwrap()).unwrap()
    }

    on_both_backends! {
        fn items_come_back_in_recording_order_with_merged_failure_groups(store: &Store) {
            let tenant = TenantId::default_tenant();
            assert_eq!(store.import(&tenant, &snapshot("p1", "r", 1)).unwrap(), ImportResult::Created);
            let found = store.find_status(&query("p1", Detail::Items)).unwrap();
            let process = &found[0];
            assert_eq!((process.step_name.as_str(), process.current_step_number), ("B", 1));
            assert_eq!(process.additional_data.to_value(), json!({"k": [1, 2]}));
            let steps = process.steps.as_ref().unwrap();
            let a = steps[0].items.as_ref().unwrap();
            assert_eq!(values(&a.successfully), [json!({"i": 4}), json!({"i": 0})]);
            assert_eq!(a.failed.len(), 1, "same code and message: one group");
            assert_eq!(values(&a.failed[0].items), [json!({"i": 3}), json!({"i": 1}), json!({"i": 2})]);
            assert_eq!((steps[0].processed, steps[0].total), (5, 5));
            assert_eq!((steps[1].processed, steps[1].total, steps[1].status), (1, 2, Status::InProgress));
        }
    }

    on_both_backends! {
        fn less_detail_reads_less(store: &Store) {
            store.import(&TenantId::default_tenant(), &snapshot("p1", "r", 1)).unwrap();
            let process = &store.find_status(&query("p1", Detail::Process)).unwrap()[0];
            assert!(process.steps.is_none());
            assert_eq!(process.step_name, "B");
            let process = &store.find_status(&query("p1", Detail::Steps)).unwrap()[0];
            let steps = process.steps.as_ref().unwrap();
            assert!(steps.iter().all(|s| s.items.is_none()));
            assert_eq!(steps[0].processed, 5);
        }
    }

    on_both_backends! {
        fn importing_twice_changes_nothing(store: &Store) {
            let tenant = TenantId::default_tenant();
            store.import(&tenant, &snapshot("p1", "r", 1)).unwrap();
            let mut changed = snapshot("p1", "other", 2);
            changed.name = "Changed".into();
            assert_eq!(store.import(&tenant, &changed).unwrap(), ImportResult::AlreadyPresent);
            let found = store.find_status(&query("r", Detail::Items)).unwrap();
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].name, "P");
            // The same ID in another tenant is another process.
            let other = TenantId::new("other").unwrap();
            assert_eq!(store.import(&other, &snapshot("p1", "r", 1)).unwrap(), ImportResult::Created);
            assert_eq!(processes_count(store), 2);
        }
    }

    /// SQLite only: the trigger that makes the import fail half-way is SQLite's syntax; the
    /// transaction code under test is the same on both backends.
    #[test]
    fn an_import_that_fails_half_way_leaves_nothing_behind() {
        let db = crate::testing::sqlite();
        let store = &db.store;
        store
            .conn()
            .unwrap()
            .batch_execute(
                "CREATE TRIGGER boom BEFORE INSERT ON outcomes BEGIN SELECT RAISE(ABORT, 'boom'); END;",
            )
            .unwrap();
        assert!(store.import(&TenantId::default_tenant(), &snapshot("p1", "r", 1)).is_err());
        assert_eq!(processes_count(store), 0);
        let items: i64 = items::table.count().get_result(&mut store.conn().unwrap()).unwrap();
        assert_eq!(items, 0);
    }

    on_both_backends! {
        fn an_inconsistent_snapshot_is_refused_before_writing(store: &Store) {
            let mut bad = snapshot("p1", "r", 1);
            bad.steps[1].successes = vec![4, 4];
            assert!(store.import(&TenantId::default_tenant(), &bad).is_err());
            assert_eq!(processes_count(store), 0);
        }
    }

    on_both_backends! {
        fn tenants_do_not_see_each_other(store: &Store) {
            store.import(&TenantId::new("acme").unwrap(), &snapshot("p1", "r", 1)).unwrap();
            assert!(store.find_status(&query("p1", Detail::Items)).unwrap().is_empty());
            assert!(store.find_status(&query("r", Detail::Items)).unwrap().is_empty());
        }
    }

    on_both_backends! {
        fn corrupt_rows_are_errors_not_panics(store: &Store) {
            store.import(&TenantId::default_tenant(), &snapshot("p1", "r", 1)).unwrap();
            store
                .conn()
                .unwrap()
                .batch_execute("UPDATE steps SET status = 'Bogus' WHERE step_number = 0")
                .unwrap();
            let error = store.find_status(&query("p1", Detail::Steps)).unwrap_err();
            assert!(matches!(error, RepositoryError::Failed(ref text) if text.contains("Bogus")), "{error}");
            store.conn().unwrap().batch_execute("UPDATE processes SET current_step = 7").unwrap();
            assert!(store.find_status(&query("p1", Detail::Process)).is_err());
        }
    }

    fn page(
        store: &Store,
        id: &str,
        outcome: OutcomeFilter,
        limit: u32,
        cursor: Option<String>,
    ) -> ItemsPage {
        use async_engine_domain::ProcessStore;
        let query = ItemsQuery {
            tenant: TenantId::default_tenant(),
            async_process_id: id.into(),
            step_number: 0,
            outcome,
            limit,
            cursor,
        };
        store.items(&query).unwrap()
    }

    on_both_backends! {
        fn the_items_call_pages_each_outcome_once_in_recording_order(store: &Store) {
            use crate::fixtures::{begin_with, drain};
            begin_with(store, "p", &[async_engine_domain::FailurePolicy::Skip], 25, 4, None);
            drain(store, "queue:q0", &[3, 11, 12], 0);
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let got = page(store, "p", OutcomeFilter::Any, 7, cursor);
                assert!(got.items.len() <= 7);
                seen.extend(got.items);
                cursor = got.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            let mut indices: Vec<u64> = seen.iter().map(|i| i.index).collect();
            indices.sort_unstable();
            assert_eq!(indices, (0..25).collect::<Vec<u64>>(), "every item exactly once");
            let failed = page(store, "p", OutcomeFilter::Failed, 100, None);
            let failed: Vec<(u64, Option<(i64, String)>)> =
                failed.items.into_iter().map(|i| (i.index, i.failure)).collect();
            let seven = Some((7, "Seven".to_owned()));
            assert_eq!(failed, [(3, seven.clone()), (11, seven.clone()), (12, seven)]);
            let successes = page(store, "p", OutcomeFilter::Successful, 100, None);
            assert_eq!(successes.items.len(), 22);
            assert_eq!(successes.items[0].item.to_value(), json!({ "n": 0 }));
            assert!(successes.next_cursor.is_none());
            let query = |cursor: &str, step: u32, id: &str| ItemsQuery {
                tenant: TenantId::default_tenant(),
                async_process_id: id.into(),
                step_number: step,
                outcome: OutcomeFilter::Any,
                limit: 5,
                cursor: Some(cursor.into()),
            };
            use async_engine_domain::ProcessStore;
            assert_eq!(store.items(&query("x", 0, "p")), Err(ItemsError::BadCursor));
            assert_eq!(store.items(&query("-4", 0, "p")), Err(ItemsError::BadCursor));
            assert_eq!(store.items(&query("0", 1, "p")), Err(ItemsError::NoSuchStep { step: 1, last: 0 }));
            assert_eq!(store.items(&query("0", 0, "q")), Err(ItemsError::NotFound("q".into())));
        }

        fn change_marks_move_with_every_visible_change_and_with_new_matches(store: &Store) {
            use crate::fixtures::{begin_with, claim, finish};
            let marks = |id: &str| store.change_marks(&query(id, Detail::Steps)).unwrap();
            begin_with(store, "p", &[async_engine_domain::FailurePolicy::Skip], 4, 2, None);
            let started = marks("p");
            assert_eq!(started.len(), 1);
            let tasks = claim(store, "queue:q0", "w", 1, 0);
            let claimed = marks("p");
            assert_ne!(claimed, started, "InProgress is a change");
            finish(store, &tasks[0], &[], 0).unwrap();
            assert_ne!(marks("p"), claimed, "counters moved");
            let settled = marks("ref");
            assert_eq!(settled, marks("ref"), "a read changes nothing");
            begin_with(store, "p2", &[async_engine_domain::FailurePolicy::Skip], 1, 2, None);
            assert_eq!(marks("ref").len(), 2, "one more process has the reference ID");
            assert!(marks("nothing").is_empty());
            begin_with(store, "ref", &[async_engine_domain::FailurePolicy::Skip], 1, 2, None);
            assert_eq!(marks("ref").len(), 1, "an asyncProcessId is looked up before referenceIds");
        }
    }

    on_both_backends! {
        fn results_list_every_item_once_by_outcome_in_item_order(store: &Store) {
            use crate::fixtures::{begin, drain};
            use async_engine_domain::{FailurePolicy, ProcessStore};
            begin(store, "r", &[FailurePolicy::Skip, FailurePolicy::Skip], 5, 2);
            let read = |step: u32, filter: ResultsFilter, after: Option<u64>, limit: u32| -> Vec<(u64, ItemResult)> {
                let query = ResultsQuery {
                    tenant: TenantId::default_tenant(),
                    async_process_id: "r".into(),
                    step_number: step,
                    filter,
                    after,
                    limit,
                };
                store.results(&query).unwrap().into_iter().map(|row| (row.index, row.result)).collect()
            };
            let unprocessed = |indices: &[u64]| indices.iter().map(|&i| (i, ItemResult::Unprocessed)).collect::<Vec<_>>();
            assert_eq!(read(0, ResultsFilter::All, None, 100), unprocessed(&[0, 1, 2, 3, 4]));
            // Step 0 fails items 1 and 3 (skip: they do not enter step 1).
            drain(store, "queue:q0", &[1, 3], 0);
            let failed = read(0, ResultsFilter::Failed, None, 100);
            assert_eq!(failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 3]);
            assert!(matches!(&failed[0].1, ItemResult::Failed { .. }), "{failed:?}");
            assert_eq!(read(0, ResultsFilter::Succeeded, None, 100), [(0, ItemResult::Succeeded), (2, ItemResult::Succeeded), (4, ItemResult::Succeeded)]);
            assert_eq!(read(0, ResultsFilter::Unprocessed, None, 100), []);
            // Pages: after the last index given, at most `limit`.
            assert_eq!(read(0, ResultsFilter::Succeeded, Some(0), 1), [(2, ItemResult::Succeeded)]);
            assert_eq!(read(0, ResultsFilter::All, Some(4), 10), []);
            drain(store, "queue:q1", &[], 0);
            assert_eq!(read(1, ResultsFilter::Unprocessed, None, 100), unprocessed(&[1, 3]), "left out by step 0");
            assert_eq!(read(1, ResultsFilter::All, None, 100).len(), 5, "every item once");
            let missing = ResultsQuery { tenant: TenantId::default_tenant(), async_process_id: "r".into(), step_number: 2, filter: ResultsFilter::All, after: None, limit: 1 };
            assert_eq!(store.results(&missing), Err(ItemsError::NoSuchStep { step: 2, last: 1 }));
        }
    }
}
