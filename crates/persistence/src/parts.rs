//! Uploads in parts: an open process's parts stored (replacing a part put again), listed,
//! and at the close numbered into the process's items, each call one transaction; and the
//! expiry of open processes never closed.

use async_engine_domain::parts::open_message;
use async_engine_domain::{PartError, PartInfo, PartReceipt, PartUpload, Parts, RawJson, TenantId};
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use crate::advance::{drop_parts, end_early, refresh};
use crate::commands::find_run;
use crate::connection::{DbConnection, lock_process, per_backend, read_transaction, write_transaction};
use crate::error::Error;
use crate::queries::{INSERT_BATCH, to_i64};
use crate::run::{END_NEVER_CLOSED, RunRow, report, status_of};
use crate::schema::{part_items, parts, processes};
use crate::start::{run_from_the_start, set_item_count};

#[derive(Insertable)]
#[diesel(table_name = parts)]
struct NewPart {
    process_id: i64,
    part_number: i32,
    item_count: i64,
    byte_count: i64,
    received_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = part_items)]
struct NewPartItem<'a> {
    process_id: i64,
    part_number: i32,
    position: i64,
    value: &'a str,
}

#[derive(Queryable)]
struct PartRow {
    part_number: i32,
    item_count: i64,
    byte_count: i64,
    received_at: i64,
}

/// The process a part call names, locked, if it exists and is open.
fn open_target(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
) -> Result<Result<RunRow, PartError>, Error> {
    if let Some(row) = find_run(conn, tenant, id)? {
        lock_process(conn, row.id)?;
    }
    // Read again under the lock: a close or cancel may have come first.
    Ok(match find_run(conn, tenant, id)? {
        None => Err(PartError::NotFound(id.to_owned())),
        Some(row) if !row.runnable => Err(PartError::NotRunnable(id.to_owned())),
        Some(row) if !row.open_for_parts => {
            Err(PartError::NotOpen { id: id.to_owned(), status: status_of(&row)? })
        }
        Some(row) => Ok(row),
    })
}

fn load_parts(conn: &mut DbConnection, process_id: i64) -> Result<Vec<PartInfo>, Error> {
    let rows: Vec<PartRow> = parts::table
        .filter(parts::process_id.eq(process_id))
        .order(parts::part_number.asc())
        .select((parts::part_number, parts::item_count, parts::byte_count, parts::received_at))
        .load(conn)?;
    rows.into_iter()
        .map(|row| {
            let count = |n: i64| u64::try_from(n).map_err(|_| Error::Corrupt(format!("part count {n}")));
            Ok(PartInfo {
                part: u32::try_from(row.part_number)
                    .map_err(|_| Error::Corrupt(format!("part number {}", row.part_number)))?,
                items: count(row.item_count)?,
                bytes: count(row.byte_count)?,
                received_at_micros: row.received_at,
            })
        })
        .collect()
}

fn insert_part_items(
    conn: &mut DbConnection,
    process_id: i64,
    part_number: i32,
    first: usize,
    values: &[RawJson],
) -> Result<(), Error> {
    let rows = values
        .iter()
        .enumerate()
        .map(|(i, item)| {
            Ok(NewPartItem { process_id, part_number, position: to_i64(first + i)?, value: item.as_str() })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    per_backend!(conn, |c| diesel::insert_into(part_items::table).values(&rows).execute(c))?;
    Ok(())
}

pub(crate) fn put_part(
    conn: &mut DbConnection,
    upload: &PartUpload,
    items: &mut dyn Iterator<Item = Result<RawJson, String>>,
) -> Result<Result<PartReceipt, PartError>, Error> {
    write_transaction(conn, |conn| {
        let row = match open_target(conn, &upload.tenant, &upload.async_process_id)? {
            Ok(row) => row,
            Err(refused) => return Ok(Err(refused)),
        };
        let number =
            i32::try_from(upload.part).map_err(|_| Error::Corrupt(format!("part {}", upload.part)))?;
        let this_part =
            parts::table.filter(parts::process_id.eq(row.id)).filter(parts::part_number.eq(number));
        diesel::delete(
            part_items::table
                .filter(part_items::process_id.eq(row.id))
                .filter(part_items::part_number.eq(number)),
        )
        .execute(conn)?;
        let replaced = diesel::delete(this_part).execute(conn)? > 0;
        let bytes = i64::try_from(upload.bytes).unwrap_or(i64::MAX);
        let new = NewPart {
            process_id: row.id,
            part_number: number,
            item_count: 0,
            byte_count: bytes,
            received_at: upload.now_micros,
        };
        per_backend!(conn, |c| diesel::insert_into(parts::table).values(&new).execute(c))?;
        let mut batch = Vec::with_capacity(INSERT_BATCH);
        let mut count = 0;
        for item in items {
            batch.push(item.map_err(Error::Items)?);
            if batch.len() == INSERT_BATCH {
                insert_part_items(conn, row.id, number, count, &batch)?;
                count += batch.len();
                batch.clear();
            }
        }
        insert_part_items(conn, row.id, number, count, &batch)?;
        count += batch.len();
        diesel::update(this_part).set(parts::item_count.eq(to_i64(count)?)).execute(conn)?;
        let all = load_parts(conn, row.id)?;
        let total = all.iter().map(|p| p.items).sum();
        diesel::update(processes::table.find(row.id))
            .set((
                processes::message.eq(open_message(all.len() as u64, total)),
                processes::updated_at.eq(upload.now_micros),
                processes::version.eq(processes::version + 1),
            ))
            .execute(conn)?;
        let info = all
            .into_iter()
            .find(|p| p.part == upload.part)
            .ok_or_else(|| Error::Corrupt("a part vanished inside its transaction".into()))?;
        Ok(Ok(PartReceipt { info, replaced }))
    })
}

pub(crate) fn list_parts(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
) -> Result<Result<Parts, PartError>, Error> {
    read_transaction(conn, |conn| {
        let row = match find_run(conn, tenant, id)? {
            None => return Ok(Err(PartError::NotFound(id.to_owned()))),
            Some(row) if !row.runnable => return Ok(Err(PartError::NotRunnable(id.to_owned()))),
            Some(row) => row,
        };
        Ok(Ok(Parts {
            async_process_id: row.async_process_id.clone(),
            open: row.open_for_parts,
            status: status_of(&row)?,
            parts: load_parts(conn, row.id)?,
        }))
    })
}

/// Numbers the parts' items into the process's items in one statement, parts in number
/// order, then starts step 0 as a start would.
pub(crate) fn close(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
    now: i64,
) -> Result<Result<async_engine_domain::ProcessStatus, PartError>, Error> {
    write_transaction(conn, |conn| {
        let row = match open_target(conn, tenant, id)? {
            Ok(row) => row,
            Err(refused) => return Ok(Err(refused)),
        };
        let (sqlite, pg) = (
            "INSERT INTO items (process_id, item_index, value) SELECT process_id, \
             ROW_NUMBER() OVER (ORDER BY part_number, position) - 1, value FROM part_items \
             WHERE process_id = ?",
            "INSERT INTO items (process_id, item_index, value) SELECT process_id, \
             ROW_NUMBER() OVER (ORDER BY part_number, position) - 1, value FROM part_items \
             WHERE process_id = $1",
        );
        let count = match conn {
            DbConnection::Sqlite(c) => diesel::sql_query(sqlite).bind::<BigInt, _>(row.id).execute(c)?,
            DbConnection::Pg(c) => diesel::sql_query(pg).bind::<BigInt, _>(row.id).execute(c)?,
        };
        drop_parts(conn, row.id)?;
        set_item_count(conn, row.id, count)?;
        run_from_the_start(conn, row.id, count, now)?;
        Ok(Ok(report(conn, &row.tenant, id)?))
    })
}

/// Aborts up to `limit` processes opened before `before` and still open, one transaction
/// each; returns how many.
pub(crate) fn expire_open(conn: &mut DbConnection, before: i64, limit: u32, now: i64) -> Result<u32, Error> {
    let candidates: Vec<i64> = processes::table
        .filter(processes::open_for_parts.eq(true))
        .filter(processes::created_at.lt(before))
        .order(processes::created_at.asc())
        .limit(i64::from(limit))
        .select(processes::id)
        .load(conn)?;
    let mut expired = 0;
    for id in candidates {
        let done = write_transaction(conn, |conn| {
            lock_process(conn, id)?;
            // A close or cancel that came meanwhile keeps it from expiring.
            let open: Option<bool> =
                processes::table.find(id).select(processes::open_for_parts).first(conn).optional()?;
            if open != Some(true) {
                return Ok(false);
            }
            end_early(conn, id, END_NEVER_CLOSED)?;
            refresh(conn, id, now)?;
            Ok(true)
        })?;
        expired += u32::from(done);
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{
        FailurePolicy, NewProcess, Operations, PartError, PartUpload, ProcessId, ProcessStore, RawJson,
        ReferenceId, Started, Status, TenantId,
    };
    use serde_json::json;

    use crate::fixtures::{SECOND, claim, definition, drain, status, steps_of};
    use crate::store::Store;
    use crate::testing::on_both_backends;

    fn open(store: &Store, id: &str, now: i64) {
        let new = NewProcess {
            tenant: TenantId::default_tenant(),
            async_process_id: ProcessId::new(id).unwrap(),
            reference_id: ReferenceId::new("parts").unwrap(),
            definition: definition(&[FailurePolicy::Skip], 3),
            items: Vec::new(),
            additional_data: RawJson::empty_object(),
            idempotency_key: None,
            callback_url: None,
            now_micros: now,
            start_at_micros: None,
            priority: 0,
        };
        let Started::Created(process) = store.start_open(&new).unwrap() else { panic!("a new process") };
        assert_eq!(process.status, Status::WaitingToProcess);
        assert!(process.message.starts_with("Waiting for items"), "{}", process.message);
    }

    fn put(store: &Store, id: &str, part: u32, values: &[&str]) -> Result<(u64, bool), PartError> {
        let upload = PartUpload {
            tenant: TenantId::default_tenant(),
            async_process_id: id.to_owned(),
            part,
            bytes: 100,
            now_micros: 0,
        };
        let mut items = values.iter().map(|v| Ok(RawJson::from_value(&json!(v))));
        store.put_part(&upload, &mut items).map(|r| (r.info.items, r.replaced))
    }

    on_both_backends! {
        fn parts_are_replaced_and_numbered_in_part_order_at_the_close(store: &Store) {
            open(store, "p", 0);
            let tenant = TenantId::default_tenant();
            assert_eq!(put(store, "p", 2, &["c", "d"]).unwrap(), (2, false));
            assert_eq!(put(store, "p", 1, &["x"]).unwrap(), (1, false));
            // Part 1 again: replaced, not added to.
            assert_eq!(put(store, "p", 1, &["a", "b"]).unwrap(), (2, true));
            // A part whose items fail to read leaves the part as it was.
            let upload = PartUpload { tenant: tenant.clone(), async_process_id: "p".into(), part: 2, bytes: 9, now_micros: 0 };
            let mut broken = [Ok(RawJson::from_value(&json!("lost"))), Err("line 2: cut off".to_owned())].into_iter();
            assert!(matches!(store.put_part(&upload, &mut broken), Err(PartError::Items(_))));
            let listed = store.parts(&tenant, "p").unwrap();
            assert!(listed.open);
            assert_eq!(listed.parts.iter().map(|p| (p.part, p.items, p.bytes)).collect::<Vec<_>>(), [(1, 2, 100), (2, 2, 100)]);
            assert_eq!(status(store, "p").message, "Waiting for items: open for parts until closed (2 parts so far, 4 items)");
            assert!(claim(store, "queue:q0", "w", 10, 0).is_empty(), "no task before the close");

            let closed = store.close(&tenant, "p", SECOND).unwrap();
            assert_eq!(closed.steps.as_ref().unwrap()[0].total, 4);
            let tasks = claim(store, "queue:q0", "w", 10, SECOND);
            let items: Vec<(u64, String)> = tasks.iter().flat_map(|t| t.items.iter().map(|(i, v)| (*i, v.as_str().to_owned()))).collect();
            assert_eq!(items, [(0, "\"a\"".into()), (1, "\"b\"".into()), (2, "\"c\"".into()), (3, "\"d\"".into())]);
            let after = store.parts(&tenant, "p").unwrap();
            assert!(!after.open && after.parts.is_empty(), "{after:?}");
            assert!(matches!(put(store, "p", 3, &["e"]), Err(PartError::NotOpen { .. })));
            assert!(matches!(store.close(&tenant, "p", SECOND), Err(PartError::NotOpen { .. })));
        }
    }

    on_both_backends! {
        fn only_open_processes_take_parts_and_an_empty_close_succeeds(store: &Store) {
            let tenant = TenantId::default_tenant();
            crate::fixtures::begin(store, "closed", &[FailurePolicy::Skip], 2, 10);
            match put(store, "closed", 1, &["a"]) {
                Err(PartError::NotOpen { status, .. }) => assert_eq!(status, Status::WaitingToProcess),
                other => panic!("{other:?}"),
            }
            assert!(matches!(put(store, "nobody", 1, &["a"]), Err(PartError::NotFound(_))));
            assert!(matches!(store.parts(&tenant, "nobody"), Err(PartError::NotFound(_))));
            open(store, "empty", 0);
            assert_eq!(store.close(&tenant, "empty", 0).unwrap().status, Status::Success);
        }
    }

    on_both_backends! {
        fn an_open_process_can_be_cancelled_and_one_left_open_expires(store: &Store) {
            let tenant = TenantId::default_tenant();
            open(store, "cancelled", 0);
            put(store, "cancelled", 1, &["a"]).unwrap();
            assert_eq!(store.cancel(&tenant, "cancelled", 0).unwrap().status, Status::Aborted);
            let listed = store.parts(&tenant, "cancelled").unwrap();
            assert!(!listed.open && listed.parts.is_empty(), "{listed:?}");
            assert!(matches!(put(store, "cancelled", 1, &["a"]), Err(PartError::NotOpen { .. })));

            open(store, "old", 0);
            put(store, "old", 1, &["a", "b"]).unwrap();
            open(store, "young", 10 * SECOND);
            open(store, "closed-in-time", 0);
            store.close(&tenant, "closed-in-time", SECOND).unwrap();
            assert_eq!(store.expire_open(5 * SECOND, 10, 20 * SECOND).unwrap(), 1);
            let old = status(store, "old");
            assert_eq!(old.status, Status::Aborted);
            assert!(old.message.contains("limits.open_process_hours"), "{}", old.message);
            assert_eq!(steps_of(&old), [(Status::Aborted, 0, 0, 0, 0)]);
            assert!(store.parts(&tenant, "old").unwrap().parts.is_empty());
            assert_eq!(status(store, "young").status, Status::WaitingToProcess);
            assert_eq!(store.expire_open(5 * SECOND, 10, 20 * SECOND).unwrap(), 0, "once only");
            assert_eq!(drain(store, "queue:q0", &[], 20 * SECOND), 0, "the closed one was empty");
        }
    }
}
