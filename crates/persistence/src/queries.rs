//! Every statement the repository runs. Each function takes a connection; the caller owns the
//! pool and the transaction boundaries.

use std::collections::HashMap;

use async_engine_domain::{
    Detail, FailureGroup, IdKind, ImportResult, ProcessSnapshot, ProcessStatus, RawJson, RepositoryError,
    SnapshotWriter, Status, StatusQuery, StatusReader, StepItems, StepReport, TenantId,
};
use diesel::SqliteConnection;
use diesel::prelude::*;

use crate::error::Error;
use crate::models::{
    FailureGroupRow, NewFailureGroup, NewItem, NewOutcome, NewProcess, NewStep, ProcessRow, StepRow,
};
use crate::schema::{failure_groups, items, outcomes, processes, steps};
use crate::store::Store;

/// Rows per multi-row INSERT: below SQLite's limit of 32,766 bound variables for every table.
const INSERT_BATCH: usize = 5_000;

/// Resolves and reads a status query inside one read transaction, so every record is a
/// consistent picture even while the engine writes.
pub fn find_status(conn: &mut SqliteConnection, query: &StatusQuery) -> Result<Vec<ProcessStatus>, Error> {
    conn.transaction(|conn| {
        let tenant = query.tenant.as_str();
        let id = query.id.as_str();
        let rows = match query.kind {
            IdKind::AsyncProcessId => by_process_id(conn, tenant, id)?,
            IdKind::ReferenceId => by_reference_id(conn, tenant, id)?,
            IdKind::Either => {
                let rows = by_process_id(conn, tenant, id)?;
                if rows.is_empty() { by_reference_id(conn, tenant, id)? } else { rows }
            }
        };
        rows.into_iter().map(|row| assemble(conn, row, query.detail)).collect()
    })
}

fn by_process_id(conn: &mut SqliteConnection, tenant: &str, id: &str) -> QueryResult<Vec<ProcessRow>> {
    processes::table
        .filter(processes::tenant.eq(tenant))
        .filter(processes::async_process_id.eq(id))
        .select(ProcessRow::as_select())
        .load(conn)
}

fn by_reference_id(conn: &mut SqliteConnection, tenant: &str, id: &str) -> QueryResult<Vec<ProcessRow>> {
    processes::table
        .filter(processes::tenant.eq(tenant))
        .filter(processes::reference_id.eq(id))
        .order((processes::created_at.asc(), processes::async_process_id.asc()))
        .select(ProcessRow::as_select())
        .load(conn)
}

fn assemble(conn: &mut SqliteConnection, row: ProcessRow, detail: Detail) -> Result<ProcessStatus, Error> {
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
        current_step_number: count(&row, row.current_step.into())? as u32,
        total_number_of_steps: count(&row, row.total_steps.into())? as u32,
        step_name,
        async_process_id: row.async_process_id,
        reference_id: row.reference_id,
        name: row.name,
        message: row.message,
        steps: reports,
    })
}

fn step_report(process: &ProcessRow, step: StepRow) -> Result<StepReport, Error> {
    Ok(StepReport {
        step_number: count(process, step.step_number.into())? as u32,
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
    conn: &mut SqliteConnection,
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

/// Stores a snapshot in one write transaction, unless its asyncProcessId is already taken.
pub fn import(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    snapshot: &ProcessSnapshot,
) -> Result<ImportResult, Error> {
    snapshot
        .validate()
        .map_err(|e| Error::Corrupt(format!("snapshot {}: {e}", snapshot.async_process_id)))?;
    conn.immediate_transaction(|conn| {
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
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        diesel::insert_into(steps::table).values(&new_steps).execute(conn)?;

        for (offset, chunk) in snapshot.items.chunks(INSERT_BATCH).enumerate() {
            let base = offset * INSERT_BATCH;
            let rows = chunk
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    Ok(NewItem { process_id, item_index: to_i64(base + i)?, value: item.as_str() })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            diesel::insert_into(items::table).values(&rows).execute(conn)?;
        }

        for (number, step) in snapshot.steps.iter().enumerate() {
            let step_number = to_i32(number)?;
            let mut pending: Vec<NewOutcome> = Vec::with_capacity(INSERT_BATCH);
            let mut seq = 0_i64;
            let mut record = |conn: &mut SqliteConnection,
                              pending: &mut Vec<NewOutcome>,
                              index: u64,
                              group: Option<i64>| {
                pending.push(NewOutcome {
                    process_id,
                    step_number,
                    item_index: to_i64(index)?,
                    seq,
                    failure_group: group,
                });
                seq += 1;
                if pending.len() == INSERT_BATCH {
                    diesel::insert_into(outcomes::table).values(&*pending).execute(conn)?;
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
                diesel::insert_into(outcomes::table).values(&pending).execute(conn)?;
            }
        }
        Ok(ImportResult::Created)
    })
}

impl StatusReader for Store {
    fn find_status(&self, query: &StatusQuery) -> Result<Vec<ProcessStatus>, RepositoryError> {
        let mut conn = self.conn()?;
        Ok(find_status(&mut conn, query)?)
    }
}

impl SnapshotWriter for Store {
    fn import(&self, tenant: &TenantId, snapshot: &ProcessSnapshot) -> Result<ImportResult, RepositoryError> {
        let mut conn = self.conn()?;
        Ok(import(&mut conn, tenant, snapshot)?)
    }
}

fn corrupt(process: &ProcessRow, what: String) -> Error {
    Error::Corrupt(format!("process {}: {what}", process.async_process_id))
}

fn parse_status(process: &ProcessRow, text: &str) -> Result<Status, Error> {
    text.parse().map_err(|e| corrupt(process, format!("{e}")))
}

fn count(process: &ProcessRow, value: i64) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| corrupt(process, format!("negative count {value}")))
}

fn to_i64(value: impl TryInto<i64>) -> Result<i64, Error> {
    value.try_into().map_err(|_| Error::Corrupt("a count does not fit in 64 bits".into()))
}

fn to_i32(value: impl TryInto<i32>) -> Result<i32, Error> {
    value.try_into().map_err(|_| Error::Corrupt("a step number does not fit in 32 bits".into()))
}
