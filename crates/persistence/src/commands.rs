//! The caller's commands on a process (cancel, retry) and the list of processes.

use std::collections::{BTreeMap, HashMap};

use async_engine_domain::lifecycle::{self, Command};
use async_engine_domain::{
    CommandError, Detail, ListError, ListQuery, Page, ProcessStatus, Status, TenantId,
};
use diesel::prelude::*;

use crate::advance::{advance, create_tasks, end_early, refresh};
use crate::connection::{DbConnection, lock_process, read_transaction, write_transaction};
use crate::error::Error;
use crate::models::ProcessRow;
use crate::queries::assemble;
use crate::run::{CANCELLED, END_CANCELLED, RunRow, TaskRow, indices_of, load_steps, report, status_of};
use crate::schema::{failure_groups, outcomes, processes, steps, tasks};

pub(crate) fn find_run(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
) -> Result<Option<RunRow>, Error> {
    Ok(processes::table
        .filter(processes::tenant.eq(tenant.as_str()))
        .filter(processes::async_process_id.eq(id))
        .select(RunRow::as_select())
        .first(conn)
        .optional()?)
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

pub(crate) fn cancel(
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

pub(crate) fn retry(
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

pub(crate) fn list(conn: &mut DbConnection, query: &ListQuery) -> Result<Result<Page, ListError>, Error> {
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
        match (&query.name, query.prefix) {
            (Some(name), true) => {
                select = select.filter(lower(processes::name).like(prefix_pattern(name)).escape('\\'))
            }
            (Some(name), false) => select = select.filter(processes::name.eq(name)),
            (None, _) => {}
        }
        match (&query.reference_id, query.prefix) {
            (Some(reference), true) => {
                select =
                    select.filter(lower(processes::reference_id).like(prefix_pattern(reference)).escape('\\'))
            }
            (Some(reference), false) => select = select.filter(processes::reference_id.eq(reference)),
            (None, _) => {}
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

#[diesel::declare_sql_function]
extern "SQL" {
    /// SQL's `lower`: ASCII letters only on SQLite, every letter on PostgreSQL.
    fn lower(text: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// A `LIKE` pattern (escaped with `\`) for the values that start with `text`, any case.
fn prefix_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 1);
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn parse_cursor(text: &str) -> Option<(i64, i64)> {
    let (created, id) = text.split_once('.')?;
    Some((created.parse().ok()?, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{
        CommandError, FailurePolicy, ListError, ListQuery, Page, ProcessStore, Status, TaskError, TenantId,
    };

    use crate::fixtures::{begin, claim, drain, finish, status, steps_of};
    use crate::store::Store;
    use crate::testing::on_both_backends;

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
                prefix: false,
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

    on_both_backends! {
        fn the_prefix_search_ignores_case_and_takes_wildcards_as_written(store: &Store) {
            use diesel::prelude::*;

            use crate::schema::processes;
            let references = [("a", "Order-42/Zürich"), ("b", "order-420"), ("c", "ORDER_5"), ("d", "orderx5"), ("e", "100%")];
            for (id, reference) in references {
                begin(store, id, &[FailurePolicy::Skip], 1, 1);
                let mut conn = store.conn().unwrap();
                diesel::update(processes::table.filter(processes::async_process_id.eq(id)))
                    .set(processes::reference_id.eq(reference))
                    .execute(&mut *conn)
                    .unwrap();
            }
            let found = |name: Option<&str>, reference: Option<&str>, prefix: bool| {
                let query = ListQuery {
                    tenant: TenantId::default_tenant(),
                    status: None,
                    name: name.map(str::to_owned),
                    reference_id: reference.map(str::to_owned),
                    limit: 10,
                    cursor: None,
                    with_steps: false,
                    prefix,
                };
                store.list(&query).unwrap().records.iter().map(|r| r.async_process_id.clone()).collect::<Vec<_>>()
            };
            assert_eq!(found(None, Some("order-42"), true), ["b", "a"]);
            assert_eq!(found(None, Some("ORDER-42/z"), true), ["a"]);
            // `_` and `%` are letters of the prefix, not wildcards.
            assert_eq!(found(None, Some("order_"), true), ["c"]);
            assert_eq!(found(None, Some("100%"), true), ["e"]);
            assert_eq!(found(None, Some("%"), true), Vec::<String>::new());
            // The fixtures' definition is "T": both filters at once.
            assert_eq!(found(Some("t"), Some("ord"), true), ["d", "c", "b", "a"]);
            assert_eq!(found(Some("x"), None, true), Vec::<String>::new());
            // The API's filters match exactly.
            assert_eq!(found(None, Some("order-42"), false), Vec::<String>::new());
            assert_eq!(found(None, Some("order-420"), false), ["b"]);
        }
    }
}
