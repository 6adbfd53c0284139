//! The notification outbox (contract §5): a delivery is written in the transaction that
//! finishes its process, leased to one sender per attempt, and kept with its attempts'
//! results for operators.

use async_engine_domain::{
    Attempt, DeliveryRecord, DeliveryStore, DueDelivery, RepositoryError, Status, TenantId,
};
use diesel::prelude::*;

use crate::connection::{DbConnection, read_transaction, write_transaction};
use crate::error::Error;
use crate::run::report;
use crate::schema::{deliveries, processes};
use crate::store::Store;

const PENDING: &str = "pending";
const DELIVERED: &str = "delivered";
const FAILED: &str = "failed";
const SUPERSEDED: &str = "superseded";

#[derive(Insertable)]
#[diesel(table_name = deliveries)]
struct NewDelivery<'a> {
    process_id: i64,
    delivery_id: &'a str,
    url: &'a str,
    finished_status: &'a str,
    state: &'a str,
    next_attempt_at: i64,
    created_at: i64,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = deliveries, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
struct DeliveryRow {
    id: i64,
    delivery_id: String,
    url: String,
    finished_status: String,
    state: String,
    attempts: i32,
    next_attempt_at: i64,
    body: Option<String>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    created_at: i64,
    delivered_at: Option<i64>,
}

/// Queues the announcement of a finish; called inside the finishing transaction.
pub(crate) fn enqueue(
    conn: &mut DbConnection,
    process_id: i64,
    url: &str,
    finished: Status,
    now: i64,
) -> Result<(), Error> {
    let delivery_id = uuid::Uuid::now_v7().to_string();
    diesel::insert_into(deliveries::table)
        .values(NewDelivery {
            process_id,
            delivery_id: &delivery_id,
            url,
            finished_status: finished.as_str(),
            state: PENDING,
            next_attempt_at: now,
            created_at: now,
        })
        .execute(conn)?;
    Ok(())
}

pub fn claim(conn: &mut DbConnection, limit: u32, lease: i64, now: i64) -> Result<Vec<DueDelivery>, Error> {
    write_transaction(conn, |conn| {
        let due: Vec<(DeliveryRow, String, String)> = deliveries::table
            .inner_join(processes::table)
            .filter(deliveries::state.eq(PENDING))
            .filter(deliveries::next_attempt_at.le(now))
            .order((deliveries::next_attempt_at.asc(), deliveries::id.asc()))
            .limit(i64::from(limit))
            .select((DeliveryRow::as_select(), processes::tenant, processes::async_process_id))
            .load(conn)?;
        let mut claimed = Vec::with_capacity(due.len());
        for (row, tenant, async_process_id) in due {
            // Only if it is as it was read: on PostgreSQL another node may have claimed it, or
            // a late sender recorded it, since (reads do not block there).
            let taken = diesel::update(
                deliveries::table
                    .find(row.id)
                    .filter(deliveries::attempts.eq(row.attempts))
                    .filter(deliveries::state.eq(PENDING))
                    .filter(deliveries::next_attempt_at.eq(row.next_attempt_at)),
            )
            .set((
                deliveries::attempts.eq(row.attempts + 1),
                deliveries::next_attempt_at.eq(now.saturating_add(lease)),
            ))
            .execute(conn)?;
            if taken == 0 {
                continue;
            }
            claimed.push(DueDelivery {
                id: row.id,
                delivery_id: row.delivery_id,
                url: row.url,
                attempt: u32::try_from(row.attempts + 1).unwrap_or(u32::MAX),
                body: row.body,
                process: report(conn, &tenant, &async_process_id)?,
            });
        }
        Ok(claimed)
    })
}

/// Fixes the body before the first attempt is sent, so that every attempt, even one that
/// follows a crash, sends (and signs) the same bytes. False when the lease was lost meanwhile.
pub fn fix_body(conn: &mut DbConnection, delivery: i64, attempt: u32, body: &str) -> Result<bool, Error> {
    let number = i32::try_from(attempt).unwrap_or(i32::MAX);
    let fixed = diesel::update(
        deliveries::table
            .find(delivery)
            .filter(deliveries::attempts.eq(number))
            .filter(deliveries::state.eq(PENDING))
            .filter(deliveries::body.is_null()),
    )
    .set(deliveries::body.eq(body))
    .execute(conn)?;
    Ok(fixed == 1)
}

/// A retry takes a process out of its final status: announcements of that finish not yet
/// attempted would describe a state that is gone, so they give way to the next finish's.
pub(crate) fn supersede_unsent(conn: &mut DbConnection, process_id: i64) -> Result<(), Error> {
    diesel::update(
        deliveries::table
            .filter(deliveries::process_id.eq(process_id))
            .filter(deliveries::state.eq(PENDING))
            .filter(deliveries::body.is_null()),
    )
    .set(deliveries::state.eq(SUPERSEDED))
    .execute(conn)?;
    Ok(())
}

pub fn record(conn: &mut DbConnection, attempt: &Attempt) -> Result<(), Error> {
    let state = match (&attempt.error, attempt.retry_at_micros) {
        (None, _) => DELIVERED,
        (Some(_), Some(_)) => PENDING,
        (Some(_), None) => FAILED,
    };
    let number = i32::try_from(attempt.attempt).unwrap_or(i32::MAX);
    // A sender whose lease ran out reports late: the attempt it made no longer counts.
    diesel::update(
        deliveries::table
            .find(attempt.delivery)
            .filter(deliveries::attempts.eq(number))
            .filter(deliveries::state.eq(PENDING)),
    )
    .set((
        deliveries::state.eq(state),
        deliveries::body.eq(&attempt.body),
        deliveries::last_status_code.eq(attempt.status_code.map(i32::from)),
        deliveries::last_error.eq(&attempt.error),
        deliveries::next_attempt_at.eq(attempt.retry_at_micros.unwrap_or(attempt.now_micros)),
        deliveries::delivered_at.eq((state == DELIVERED).then_some(attempt.now_micros)),
    ))
    .execute(conn)?;
    Ok(())
}

pub fn list(
    conn: &mut DbConnection,
    tenant: &TenantId,
    async_process_id: &str,
) -> Result<Option<Vec<DeliveryRecord>>, Error> {
    read_transaction(conn, |conn| {
        let process: Option<i64> = processes::table
            .filter(processes::tenant.eq(tenant.as_str()))
            .filter(processes::async_process_id.eq(async_process_id))
            .select(processes::id)
            .first(conn)
            .optional()?;
        let Some(process) = process else {
            return Ok(None);
        };
        let rows: Vec<DeliveryRow> = deliveries::table
            .filter(deliveries::process_id.eq(process))
            .order(deliveries::id.asc())
            .select(DeliveryRow::as_select())
            .load(conn)?;
        Ok(Some(
            rows.into_iter()
                .map(|row| DeliveryRecord {
                    next_attempt_at_micros: (row.state == PENDING).then_some(row.next_attempt_at),
                    delivery_id: row.delivery_id,
                    url: row.url,
                    finished_status: row.finished_status,
                    state: row.state,
                    attempts: u32::try_from(row.attempts).unwrap_or(0),
                    last_status_code: row.last_status_code.and_then(|c| u16::try_from(c).ok()),
                    last_error: row.last_error,
                    created_at_micros: row.created_at,
                    delivered_at_micros: row.delivered_at,
                })
                .collect(),
        ))
    })
}

impl DeliveryStore for Store {
    fn claim_deliveries(
        &self,
        limit: u32,
        lease_micros: i64,
        now_micros: i64,
    ) -> Result<Vec<DueDelivery>, RepositoryError> {
        self.with(|conn| claim(conn, limit, lease_micros, now_micros).map(Ok))
    }

    fn fix_body(&self, delivery: i64, attempt: u32, body: &str) -> Result<bool, RepositoryError> {
        self.with(|conn| fix_body(conn, delivery, attempt, body).map(Ok))
    }

    fn record_attempt(&self, attempt: &Attempt) -> Result<(), RepositoryError> {
        self.with(|conn| record(conn, attempt).map(Ok))
    }

    fn deliveries(
        &self,
        tenant: &TenantId,
        async_process_id: &str,
    ) -> Result<Option<Vec<DeliveryRecord>>, RepositoryError> {
        self.with(|conn| list(conn, tenant, async_process_id).map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use async_engine_domain::{FailurePolicy, ProcessStore};

    use super::*;
    use crate::fixtures::{begin_with, drain};
    use crate::testing::on_both_backends;

    const URL: &str = "http://127.0.0.1:9/hook";
    const LEASE: i64 = 30_000_000;

    fn attempt(due: &DueDelivery, error: Option<&str>, retry_at: Option<i64>, now: i64) -> Attempt {
        Attempt {
            delivery: due.id,
            attempt: due.attempt,
            body: due.body.clone().unwrap_or_else(|| format!("body of {}", due.process.async_process_id)),
            status_code: Some(if error.is_some() { 503 } else { 204 }),
            error: error.map(str::to_owned),
            retry_at_micros: retry_at,
            now_micros: now,
        }
    }

    fn records(store: &Store, id: &str) -> Vec<DeliveryRecord> {
        store.deliveries(&TenantId::default_tenant(), id).unwrap().unwrap()
    }

    on_both_backends! {
        fn a_finish_queues_one_delivery_that_one_sender_leases_at_a_time(store: &Store) {
            begin_with(store, "p", &[FailurePolicy::Skip], 3, 10, Some(URL));
            begin_with(store, "quiet", &[FailurePolicy::Skip], 3, 10, None);
            assert!(store.claim_deliveries(10, LEASE, 0).unwrap().is_empty(), "nothing finished yet");
            drain(store, "queue:q0", &[], 0);
            let due = store.claim_deliveries(10, LEASE, 1).unwrap();
            assert_eq!(due.len(), 1, "only the process with a callback URL");
            let first = &due[0];
            assert_eq!((first.url.as_str(), first.attempt, first.body.as_deref()), (URL, 1, None));
            assert_eq!(first.process.async_process_id, "p");
            assert_eq!(first.process.status, Status::Success);
            // Leased: no other sender gets it until the lease runs out.
            assert!(store.claim_deliveries(10, LEASE, 2).unwrap().is_empty());
            // The receiver failed: due again at the retry time, with the same body.
            store.record_attempt(&attempt(first, Some("503"), Some(100), 3)).unwrap();
            assert!(store.claim_deliveries(10, LEASE, 99).unwrap().is_empty());
            let second = store.claim_deliveries(10, LEASE, 100).unwrap().remove(0);
            assert_eq!((second.attempt, second.body.as_deref()), (2, Some("body of p")));
            assert_eq!(second.delivery_id, first.delivery_id);
            // A late report of the first attempt changes nothing.
            store.record_attempt(&attempt(first, None, None, 101)).unwrap();
            assert_eq!(records(store, "p")[0].state, "pending");
            store.record_attempt(&attempt(&second, None, None, 102)).unwrap();
            let [record] = &records(store, "p")[..] else { panic!("one delivery") };
            assert_eq!((record.state.as_str(), record.attempts), ("delivered", 2));
            assert_eq!((record.last_status_code, record.delivered_at_micros), (Some(204), Some(102)));
            assert_eq!(record.finished_status, "Success");
            assert!(store.claim_deliveries(10, LEASE, i64::MAX / 2).unwrap().is_empty());
            assert!(records(store, "quiet").is_empty());
            assert_eq!(store.deliveries(&TenantId::default_tenant(), "nope").unwrap(), None);
        }

        fn a_crashed_sender_s_lease_runs_out_and_the_last_failure_gives_up(store: &Store) {
            begin_with(store, "p", &[FailurePolicy::Skip], 0, 10, Some(URL));
            let first = store.claim_deliveries(10, LEASE, 0).unwrap().remove(0);
            // No report (the sender died): due again once the lease ends.
            let again = store.claim_deliveries(10, LEASE, LEASE).unwrap().remove(0);
            assert_eq!((again.id, again.attempt), (first.id, 2));
            store.record_attempt(&attempt(&again, Some("timed out"), None, LEASE + 1)).unwrap();
            let [record] = &records(store, "p")[..] else { panic!("one delivery") };
            assert_eq!((record.state.as_str(), record.last_error.as_deref()), ("failed", Some("timed out")));
            assert_eq!(record.next_attempt_at_micros, None);
        }

        fn the_body_is_fixed_before_the_first_attempt_is_sent(store: &Store) {
            begin_with(store, "p", &[FailurePolicy::Skip], 0, 10, Some(URL));
            let first = store.claim_deliveries(10, LEASE, 0).unwrap().remove(0);
            assert!(store.fix_body(first.id, first.attempt, "first bytes").unwrap());
            assert!(!store.fix_body(first.id, first.attempt, "other bytes").unwrap(), "fixed once");
            // The sender died before recording: the next attempt sends the same bytes.
            let again = store.claim_deliveries(10, LEASE, LEASE).unwrap().remove(0);
            assert_eq!(again.body.as_deref(), Some("first bytes"));
            assert!(!store.fix_body(first.id, first.attempt, "late").unwrap(), "a lost lease fixes nothing");
        }

        fn a_retried_process_that_finishes_again_is_announced_again(store: &Store) {
            begin_with(store, "p", &[FailurePolicy::Skip], 2, 10, Some(URL));
            drain(store, "queue:q0", &[1], 0);
            // Retried before any attempt: the Failed announcement would describe a state that
            // is gone, and gives way to the next finish's.
            store.retry(&TenantId::default_tenant(), "p", 1).unwrap();
            drain(store, "queue:q0", &[], 2);
            let seen: Vec<(String, String)> =
                records(store, "p").into_iter().map(|r| (r.finished_status, r.state)).collect();
            assert_eq!(seen, [("Failed".into(), "superseded".into()), ("Success".into(), "pending".into())]);
            // One already under way is kept: its receiver may have it.
            begin_with(store, "q", &[FailurePolicy::Skip], 2, 10, Some(URL));
            drain(store, "queue:q0", &[0], 3);
            for due in store.claim_deliveries(10, LEASE, 4).unwrap() {
                assert!(store.fix_body(due.id, due.attempt, "sent").unwrap());
            }
            store.retry(&TenantId::default_tenant(), "q", 5).unwrap();
            assert_eq!(records(store, "q")[0].state, "pending");
        }
    }
}
