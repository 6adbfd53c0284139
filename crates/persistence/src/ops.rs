//! Readiness, gauges and retention (contract §7) over the same pool as everything else.

use async_engine_domain::{FailureCount, Gauges, Loads, QueueLoad, Status, TenantId, Totals, WorkerLoad};
use diesel::prelude::*;

use crate::connection::{DbConnection, lock_process, read_transaction, write_transaction};
use crate::error::Error;
use crate::models::{LEASED, OPEN, QUEUED};
use crate::schema::{deliveries, failure_groups, outcomes, processes, tasks};

fn finished() -> [&'static str; 3] {
    [Status::Success.as_str(), Status::Failed.as_str(), Status::Aborted.as_str()]
}

pub fn gauges(conn: &mut DbConnection) -> Result<Gauges, Error> {
    read_transaction(conn, |conn| {
        let processes: Vec<(String, i64)> = processes::table
            .group_by(processes::status)
            .select((processes::status, diesel::dsl::count_star()))
            .load(conn)?;
        let tasks: Vec<(String, i64)> = tasks::table
            .filter(tasks::state.eq_any(OPEN))
            .group_by(tasks::state)
            .select((tasks::state, diesel::dsl::count_star()))
            .load(conn)?;
        let deliveries: Vec<(String, i64)> = deliveries::table
            .group_by(deliveries::state)
            .select((deliveries::state, diesel::dsl::count_star()))
            .load(conn)?;
        Ok(Gauges { processes, tasks, deliveries })
    })
}

/// `(queue, worker id, leased tasks, latest heartbeat, first expiry)`.
type WorkerRow = (String, Option<String>, i64, Option<i64>, Option<i64>);

/// One tenant's processes by status, and those finished since `since`, in one read.
pub fn totals(conn: &mut DbConnection, tenant: &TenantId, since: i64) -> Result<Totals, Error> {
    read_transaction(conn, |conn| {
        let by_status: Vec<(String, i64)> = processes::table
            .filter(processes::tenant.eq(tenant.as_str()))
            .group_by(processes::status)
            .select((processes::status, diesel::dsl::count_star()))
            .load(conn)?;
        // SUM over BIGINT is NUMERIC on PostgreSQL: cast back, on both backends alike.
        let finished: Vec<(String, i64, Option<i64>)> = processes::table
            .filter(processes::tenant.eq(tenant.as_str()))
            .filter(processes::status.eq_any(finished()))
            .filter(processes::updated_at.ge(since))
            // Records of history were imported finished: nothing here finished them.
            .filter(processes::runnable.eq(true))
            .group_by(processes::status)
            .select((
                processes::status,
                diesel::dsl::count_star(),
                diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>>(
                    "CAST(SUM(processes.item_count) AS BIGINT)",
                ),
            ))
            .load(conn)?;
        Ok(Totals {
            processes: parse_statuses(by_status.into_iter().map(|(s, n)| (s, n, None)))?
                .into_iter()
                .map(|(s, n, _)| (s, n))
                .collect(),
            finished: parse_statuses(finished.into_iter())?
                .into_iter()
                .map(|(s, n, items)| (s, n, items.unwrap_or(0)))
                .collect(),
        })
    })
}

/// One tenant's open tasks by queue and by worker as of `now`, in one read.
pub fn loads(conn: &mut DbConnection, tenant: &TenantId, now: i64) -> Result<Loads, Error> {
    read_transaction(conn, |conn| {
        let open = tasks::table
            .inner_join(processes::table)
            .filter(processes::tenant.eq(tenant.as_str()))
            .filter(tasks::state.eq_any(OPEN));
        let by_queue: Vec<(String, String, i64)> = open
            .clone()
            .group_by((tasks::queue, tasks::state))
            .select((tasks::queue, tasks::state, diesel::dsl::count_star()))
            .load(conn)?;
        let oldest: Vec<(String, Option<i64>)> = open
            .clone()
            .filter(tasks::state.eq(QUEUED))
            .filter(tasks::available_at.le(now))
            .group_by(tasks::queue)
            .select((tasks::queue, diesel::dsl::min(tasks::available_at)))
            .load(conn)?;
        let workers: Vec<WorkerRow> = open
            .filter(tasks::state.eq(LEASED))
            .group_by((tasks::queue, tasks::worker_id))
            .select((
                tasks::queue,
                tasks::worker_id,
                diesel::dsl::count_star(),
                diesel::dsl::max(tasks::heartbeat_at),
                diesel::dsl::min(tasks::lease_expires_at),
            ))
            .order((tasks::queue, tasks::worker_id))
            .load(conn)?;
        let mut queues: Vec<QueueLoad> = Vec::new();
        for (queue, state, count) in by_queue {
            let load = match queues.iter_mut().find(|q| q.queue == queue) {
                Some(load) => load,
                None => {
                    let oldest_due_micros = oldest.iter().find(|(q, _)| *q == queue).and_then(|(_, at)| *at);
                    queues.push(QueueLoad { queue, queued: 0, leased: 0, oldest_due_micros });
                    queues.last_mut().ok_or_else(|| Error::Corrupt("no queue".into()))?
                }
            };
            if state == QUEUED { load.queued = count } else { load.leased = count }
        }
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(Loads {
            queues,
            workers: workers
                .into_iter()
                .map(|(queue, worker, leased, seen, expiry)| WorkerLoad {
                    queue,
                    worker_id: worker.unwrap_or_default(),
                    leased,
                    last_seen_micros: seen,
                    next_expiry_micros: expiry,
                })
                .collect(),
        })
    })
}

/// Rows keyed by a stored status, in the order of [`Status::ALL`].
fn parse_statuses(
    rows: impl Iterator<Item = (String, i64, Option<i64>)>,
) -> Result<Vec<(Status, i64, Option<i64>)>, Error> {
    let mut parsed = rows
        .map(|(status, n, extra)| {
            status
                .parse::<Status>()
                .map(|s| (s, n, extra))
                .map_err(|e| Error::Corrupt(format!("process status: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_by_key(|(status, _, _)| Status::ALL.iter().position(|s| s == status));
    Ok(parsed)
}

/// Every failure group of one process with the items it holds, counted through the index on
/// outcomes' groups: the dashboard's groups above what it lists item by item.
pub fn failure_counts(
    conn: &mut DbConnection,
    tenant: &TenantId,
    id: &str,
) -> Result<Vec<FailureCount>, Error> {
    read_transaction(conn, |conn| {
        let rows: Vec<(i32, i64, String, i64)> = failure_groups::table
            .inner_join(processes::table)
            .inner_join(outcomes::table.on(outcomes::failure_group.eq(failure_groups::id.nullable())))
            .filter(processes::tenant.eq(tenant.as_str()))
            .filter(processes::async_process_id.eq(id))
            .group_by((
                failure_groups::id,
                failure_groups::step_number,
                failure_groups::code,
                failure_groups::status_message,
            ))
            .select((
                failure_groups::step_number,
                failure_groups::code,
                failure_groups::status_message,
                diesel::dsl::count_star(),
            ))
            .order((failure_groups::step_number, failure_groups::id))
            .load(conn)?;
        rows.into_iter()
            .map(|(step, code, status_message, items)| {
                Ok(FailureCount {
                    step_number: u32::try_from(step)
                        .map_err(|_| Error::Corrupt(format!("step number {step}")))?,
                    code,
                    status_message,
                    items,
                })
            })
            .collect()
    })
}

/// Deletes one finished process (with its steps, items, outcomes, failure groups, tasks and
/// deliveries, by cascade) if it is still finished and old under its lock: a retry that
/// started meanwhile keeps it.
fn purge_one(conn: &mut DbConnection, id: i64, before: i64) -> Result<bool, Error> {
    write_transaction(conn, |conn| {
        lock_process(conn, id)?;
        // A finish not yet announced keeps its process until the delivery is settled.
        let unsent: i64 = deliveries::table
            .filter(deliveries::process_id.eq(id))
            .filter(deliveries::state.eq("pending"))
            .count()
            .get_result(conn)?;
        if unsent > 0 {
            return Ok(false);
        }
        let deleted = diesel::delete(
            processes::table
                .find(id)
                .filter(processes::status.eq_any(finished()))
                .filter(processes::updated_at.lt(before)),
        )
        .execute(conn)?;
        if deleted == 1 {
            // No foreign key cascades to outcomes (it cost every recorded row a check).
            diesel::delete(outcomes::table.filter(outcomes::process_id.eq(id))).execute(conn)?;
        }
        Ok(deleted == 1)
    })
}

pub fn purge(conn: &mut DbConnection, before: i64, limit: u32) -> Result<u32, Error> {
    let candidates: Vec<i64> = processes::table
        .filter(processes::status.eq_any(finished()))
        .filter(processes::updated_at.lt(before))
        .filter(diesel::dsl::not(diesel::dsl::exists(
            deliveries::table
                .filter(deliveries::process_id.eq(processes::id))
                .filter(deliveries::state.eq("pending")),
        )))
        .order(processes::updated_at.asc())
        .limit(i64::from(limit))
        .select(processes::id)
        .load(conn)?;
    let mut purged = 0;
    for id in candidates {
        if purge_one(conn, id, before)? {
            purged += 1;
        }
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{FailurePolicy, Operations, ProcessStore, TenantId};

    use super::*;
    use crate::fixtures::{begin_with, drain};
    use crate::store::Store;
    use crate::testing::on_both_backends;

    fn count(store: &Store, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = store.conn().unwrap();
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
            .get_result::<Count>(&mut *conn)
            .unwrap()
            .n
    }

    on_both_backends! {
        fn only_finished_processes_older_than_the_cut_go_with_everything_they_own(store: &Store) {
            // Finished at time 0 (the helpers' clock), with a delivery and failures.
            begin_with(store, "old", &[FailurePolicy::Skip, FailurePolicy::Skip], 5, 2, Some("http://h/x"));
            drain(store, "queue:q0", &[1], 0);
            drain(store, "queue:q1", &[], 0);
            // Unfinished, just as old.
            begin_with(store, "running", &[FailurePolicy::Skip], 3, 2, None);
            let gauges = store.gauges().unwrap();
            assert!(gauges.processes.contains(&("Failed".to_owned(), 1)), "{gauges:?}");
            assert!(gauges.tasks.contains(&("queued".to_owned(), 2)), "{gauges:?}");
            assert_eq!(gauges.deliveries, [("pending".to_owned(), 1)]);
            // Not older than the cut: kept.
            assert_eq!(store.purge_finished(0, 10).unwrap(), 0);
            // Its finish is not announced yet: kept until the delivery is settled.
            assert_eq!(store.purge_finished(1, 10).unwrap(), 0);
            let mut conn = store.conn().unwrap();
            diesel::update(deliveries::table).set(deliveries::state.eq("delivered")).execute(&mut *conn).unwrap();
            drop(conn);
            assert_eq!(store.purge_finished(1, 10).unwrap(), 1);
            assert_eq!(store.purge_finished(1, 10).unwrap(), 0);
            let left = store.list(&async_engine_domain::ListQuery {
                tenant: TenantId::default_tenant(),
                status: None,
                name: None,
                reference_id: None,
                limit: 10,
                cursor: None,
                with_steps: false,
                prefix: false,
            });
            let ids: Vec<String> = left.unwrap().records.into_iter().map(|r| r.async_process_id).collect();
            assert_eq!(ids, ["running"]);
            for (table, rows) in [("items", 3), ("outcomes", 0), ("failure_groups", 0), ("deliveries", 0), ("steps", 1), ("tasks", 2)] {
                assert_eq!(count(store, table), rows, "{table}");
            }
            assert!(store.readiness().is_ok());
        }
    }

    on_both_backends! {
        fn totals_and_loads_count_one_tenant_s_processes_queues_and_workers(store: &Store) {
            use async_engine_domain::{Loads, QueueLoad, TaskStore, Totals, WorkerLoad};

            use crate::fixtures::{SECOND, claim, status};
            let tenant = TenantId::default_tenant();
            // Finished at 0 with 2 of its 5 items failed; another with tasks of 2 and 1 items.
            begin_with(store, "done", &[FailurePolicy::Skip], 5, 5, None);
            drain(store, "queue:q0", &[1, 3], 0);
            begin_with(store, "busy", &[FailurePolicy::Skip], 3, 2, None);
            let held = claim(store, "queue:q0", "w-1", 1, 5 * SECOND).remove(0);
            store.heartbeat(None, held.task_id, &held.lease_token, 10 * SECOND, 7 * SECOND).unwrap();
            let busy = status(store, "busy").status;

            let totals = store.totals(&tenant, 0).unwrap();
            let mut expected = vec![(Status::Failed, 1), (busy, 1)];
            expected.sort_by_key(|(s, _)| Status::ALL.iter().position(|a| a == s));
            assert_eq!(totals.processes, expected);
            assert_eq!(totals.finished, [(Status::Failed, 1, 5)]);
            let loads = store.loads(&tenant, 8 * SECOND).unwrap();
            assert_eq!(
                loads.queues,
                [QueueLoad { queue: "queue:q0".into(), queued: 1, leased: 1, oldest_due_micros: Some(0) }]
            );
            assert_eq!(
                loads.workers,
                [WorkerLoad {
                    queue: "queue:q0".into(),
                    worker_id: "w-1".into(),
                    leased: 1,
                    last_seen_micros: Some(7 * SECOND),
                    next_expiry_micros: Some(17 * SECOND),
                }]
            );
            // Finished before the window: not counted as recent.
            assert!(store.totals(&tenant, 1).unwrap().finished.is_empty());
            // Another tenant sees none of it.
            let other = TenantId::new("other").unwrap();
            assert_eq!(store.totals(&other, 0).unwrap(), Totals::default());
            assert_eq!(store.loads(&other, 8 * SECOND).unwrap(), Loads::default());

            let counts = store.failure_counts(&tenant, "done").unwrap();
            assert_eq!(
                counts,
                [FailureCount { step_number: 0, code: 7, status_message: "Seven".into(), items: 2 }]
            );
            assert!(store.failure_counts(&tenant, "busy").unwrap().is_empty());
            assert!(store.failure_counts(&TenantId::new("other").unwrap(), "done").unwrap().is_empty());
        }
    }
}
