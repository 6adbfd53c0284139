//! The engine's storage: `ProcessStore`, `TaskStore` and `Operations` for `Store`. Every call
//! is one transaction of the modules below it (`start`, `parts`, `claim`, `lease`, `commands`), so an outcome,
//! the counters it moves, the task it releases and the step it may start are committed
//! together or not at all: a crash at any moment loses nothing and counts nothing twice.

use std::time::Duration;

use async_engine_domain::{
    ClaimRequest, ClaimedTask, CommandError, Completion, FailureCount, Gauges, ItemsError, ItemsPage,
    ItemsQuery, ListError, ListQuery, Loads, NewProcess, NotReady, Operations, Page, PartError, PartReceipt,
    PartUpload, Parts, ProcessStatus, ProcessStore, RawJson, RepositoryError, ResultRow, ResultsQuery,
    Started, StreamedStartError, TaskError, TaskReport, TaskStore, TenantId, Totals,
};

use crate::claim::{any_due, claim};
use crate::commands::{cancel, list, retry};
use crate::error::Error;
use crate::lease::{complete, complete_all, fail, heartbeat};
use crate::ops::{failure_counts, gauges, loads, purge, totals};
use crate::parts::{close, expire_open, list_parts, put_part};
use crate::start::{existing, start, start_open, start_streamed};
use crate::store::Store;

impl Store {
    /// Runs a start; two requests with one idempotency key at once (PostgreSQL) make the
    /// loser's insert fail, and it finds the winner's process on a second look.
    fn start_once_more_on_a_key_race(
        &self,
        process: &NewProcess,
        start: impl Fn(&mut crate::connection::DbConnection, &NewProcess) -> Result<Started, Error>,
    ) -> Result<Started, RepositoryError> {
        let mut conn = self.conn()?;
        match start(&mut conn, process) {
            Err(Error::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ))) if process.idempotency_key.is_some() => {
                Ok(start(&mut conn, process).map_err(|e| self.noted(e))?)
            }
            other => Ok(other.map_err(|e| self.noted(e))?),
        }
    }
}

/// How long readiness waits for a connection: a probe must answer while the database is down.
const READY_WAIT: Duration = Duration::from_secs(2);

impl ProcessStore for Store {
    fn start(&self, process: &NewProcess) -> Result<Started, RepositoryError> {
        self.start_once_more_on_a_key_race(process, start)
    }

    fn start_streamed(
        &self,
        process: &NewProcess,
        items: &mut dyn Iterator<Item = Result<RawJson, String>>,
    ) -> Result<Started, StreamedStartError> {
        let mut conn = self.conn().map_err(RepositoryError::from)?;
        match start_streamed(&mut conn, process, items) {
            Err(Error::Items(why)) => Err(StreamedStartError::Items(why)),
            // As for start, but the items are spent: the winner's process is read directly.
            Err(Error::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                info,
            ))) if process.idempotency_key.is_some() => {
                let key = process.idempotency_key.as_deref().unwrap_or_default();
                match existing(&mut conn, process.tenant.as_str(), key) {
                    Ok(Some(started)) => Ok(started),
                    Ok(None) => Err(RepositoryError::Failed(info.message().to_owned()).into()),
                    Err(e) => Err(RepositoryError::from(self.noted(e)).into()),
                }
            }
            other => Ok(other.map_err(|e| RepositoryError::from(self.noted(e)))?),
        }
    }

    fn start_open(&self, process: &NewProcess) -> Result<Started, RepositoryError> {
        self.start_once_more_on_a_key_race(process, start_open)
    }

    fn put_part(
        &self,
        part: &PartUpload,
        items: &mut dyn Iterator<Item = Result<RawJson, String>>,
    ) -> Result<PartReceipt, PartError> {
        let mut conn = self.conn().map_err(RepositoryError::from)?;
        match put_part(&mut conn, part, items) {
            Err(Error::Items(why)) => Err(PartError::Items(why)),
            other => other.map_err(|e| RepositoryError::from(self.noted(e)))?,
        }
    }

    fn parts(&self, tenant: &TenantId, id: &str) -> Result<Parts, PartError> {
        self.with(|conn| list_parts(conn, tenant, id))
    }

    fn close(&self, tenant: &TenantId, id: &str, now_micros: i64) -> Result<ProcessStatus, PartError> {
        self.with(|conn| close(conn, tenant, id, now_micros))
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

    fn results(&self, query: &ResultsQuery) -> Result<Vec<ResultRow>, ItemsError> {
        self.with(|conn| crate::queries::results_page(conn, query))
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

    fn complete_all(
        &self,
        tenant: Option<TenantId>,
        completions: &[Completion],
        now_micros: i64,
    ) -> Result<Vec<Result<(), TaskError>>, RepositoryError> {
        self.with(|conn| complete_all(conn, tenant.as_ref(), completions, now_micros).map(Ok))
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

impl Operations for Store {
    fn readiness(&self) -> Result<(), NotReady> {
        // Reads still work on a full disk, so a probe that only reads would say ready while
        // every start and every completion fails.
        if let Some(ago) = self.recent_storage_failure() {
            return Err(NotReady::WritesFailing(ago));
        }
        let conn = self.conn_within(READY_WAIT).map_err(|e| NotReady::Unreachable(e.to_string()))?;
        drop(conn);
        let pending = self.pending_migrations().map_err(|e| NotReady::Unreachable(e.to_string()))?;
        if pending.is_empty() { Ok(()) } else { Err(NotReady::MigrationsPending(pending.len())) }
    }

    fn gauges(&self) -> Result<Gauges, RepositoryError> {
        self.with(|conn| gauges(conn).map(Ok))
    }

    fn totals(&self, tenant: &TenantId, finished_since_micros: i64) -> Result<Totals, RepositoryError> {
        self.with(|conn| totals(conn, tenant, finished_since_micros).map(Ok))
    }

    fn loads(&self, tenant: &TenantId, now_micros: i64) -> Result<Loads, RepositoryError> {
        self.with(|conn| loads(conn, tenant, now_micros).map(Ok))
    }

    fn failure_counts(
        &self,
        tenant: &TenantId,
        async_process_id: &str,
    ) -> Result<Vec<FailureCount>, RepositoryError> {
        self.with(|conn| failure_counts(conn, tenant, async_process_id).map(Ok))
    }

    fn purge_finished(&self, finished_before_micros: i64, limit: u32) -> Result<u32, RepositoryError> {
        self.with(|conn| purge(conn, finished_before_micros, limit).map(Ok))
    }

    fn expire_open(
        &self,
        opened_before_micros: i64,
        limit: u32,
        now_micros: i64,
    ) -> Result<u32, RepositoryError> {
        self.with(|conn| expire_open(conn, opened_before_micros, limit, now_micros).map(Ok))
    }
}
