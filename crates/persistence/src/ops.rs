//! Readiness, gauges and retention (contract §7) over the same pool as everything else.

use async_engine_domain::{Gauges, Status};
use diesel::prelude::*;

use crate::connection::{DbConnection, lock_process, read_transaction, write_transaction};
use crate::error::Error;
use crate::schema::{deliveries, processes, tasks};

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
            .filter(tasks::state.eq_any(["queued", "leased"]))
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
            });
            let ids: Vec<String> = left.unwrap().records.into_iter().map(|r| r.async_process_id).collect();
            assert_eq!(ids, ["running"]);
            for (table, rows) in [("items", 3), ("outcomes", 0), ("failure_groups", 0), ("deliveries", 0), ("steps", 1), ("tasks", 2)] {
                assert_eq!(count(store, table), rows, "{table}");
            }
            assert!(store.readiness().is_ok());
        }
    }
}
