//! The engine's storage: `ProcessStore` and `TaskStore` for `Store`. Every call is one
//! transaction of the modules below it (`start`, `claim`, `lease`, `commands`), so an outcome,
//! the counters it moves, the task it releases and the step it may start are committed
//! together or not at all: a crash at any moment loses nothing and counts nothing twice.

use async_engine_domain::{
    ClaimRequest, ClaimedTask, CommandError, ItemsError, ItemsPage, ItemsQuery, ListError, ListQuery,
    NewProcess, Page, ProcessStatus, ProcessStore, RawJson, RepositoryError, ResultRow, ResultsQuery,
    Started, StreamedStartError, TaskError, TaskReport, TaskStore, TenantId,
};

use crate::claim::{any_due, claim};
use crate::commands::{cancel, list, retry};
use crate::error::Error;
use crate::lease::{complete, fail, heartbeat};
use crate::start::{existing, start, start_streamed};
use crate::store::Store;

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
