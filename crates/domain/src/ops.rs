//! What operating the server needs of storage (contract §7): readiness, the gauges behind
//! `/metrics`, and retention.

use crate::ids::TenantId;
use crate::repository::RepositoryError;
use crate::status::Status;

/// Rows by state, for the gauges of `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// `(status, processes)`.
    pub processes: Vec<(String, i64)>,
    /// `(state, tasks)` for open tasks: `queued`, `leased`.
    pub tasks: Vec<(String, i64)>,
    /// `(state, deliveries)`.
    pub deliveries: Vec<(String, i64)>,
}

/// One tenant's processes as the dashboard's list sums them up, from one read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// `(status, processes)`, for the statuses that have any.
    pub processes: Vec<(Status, i64)>,
    /// Processes the engine ran that finished (Success, Failed, Aborted) since the time asked
    /// for, records of history left out: `(status, processes, their items)`.
    pub finished: Vec<(Status, i64, i64)>,
}

/// One tenant's open tasks as the dashboard's queues page shows them, from one read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loads {
    /// Every queue with open tasks, by name.
    pub queues: Vec<QueueLoad>,
    /// Every worker holding leases, by queue and worker id.
    pub workers: Vec<WorkerLoad>,
}

/// The open tasks of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLoad {
    pub queue: String,
    /// Waiting to be claimed, due now or after a retry's backoff.
    pub queued: i64,
    pub leased: i64,
    /// Since when the longest-waiting queued task has been due, if any is (microseconds).
    pub oldest_due_micros: Option<i64>,
}

/// The leases one worker holds on one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLoad {
    pub queue: String,
    pub worker_id: String,
    pub leased: i64,
    /// Its latest claim or heartbeat of these tasks (microseconds).
    pub last_seen_micros: Option<i64>,
    /// When the first of its leases runs out, unless renewed (microseconds).
    pub next_expiry_micros: Option<i64>,
}

/// A failure group's size, counted without listing its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCount {
    pub step_number: u32,
    pub code: i64,
    pub status_message: String,
    pub items: i64,
}

/// Why the server should not be sent traffic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the database cannot be reached")]
    Unreachable(String),
    #[error("{0} database migration(s) are pending")]
    MigrationsPending(usize),
    #[error("writes to the database are failing (disk full or failing) as of {0} s ago")]
    WritesFailing(u64),
}

#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait Operations: Send + Sync {
    /// Quickly (within a couple of seconds, even when the database is down). Not ready also
    /// while writes fail for want of disk (seen in the last few seconds), though reads work.
    fn readiness(&self) -> Result<(), NotReady>;
    fn gauges(&self) -> Result<Gauges, RepositoryError>;
    /// One tenant's processes by status, and those finished since `finished_since_micros`.
    fn totals(&self, tenant: &TenantId, finished_since_micros: i64) -> Result<Totals, RepositoryError>;
    /// One tenant's queues and the workers holding their leases, as of `now_micros`.
    fn loads(&self, tenant: &TenantId, now_micros: i64) -> Result<Loads, RepositoryError>;
    /// Every failure group of one process (by asyncProcessId) with its size, however many
    /// items it holds; empty for a process that does not exist in the tenant.
    fn failure_counts(
        &self,
        tenant: &TenantId,
        async_process_id: &str,
    ) -> Result<Vec<FailureCount>, RepositoryError>;
    /// Deletes up to `limit` processes that finished (Success, Failed, Aborted) before
    /// `finished_before_micros`, each with everything that belongs to it, one transaction per
    /// process; returns how many went.
    fn purge_finished(&self, finished_before_micros: i64, limit: u32) -> Result<u32, RepositoryError>;
    /// Aborts up to `limit` processes started open before `opened_before_micros` and not
    /// closed since, dropping the parts they hold; returns how many.
    fn expire_open(
        &self,
        opened_before_micros: i64,
        limit: u32,
        now_micros: i64,
    ) -> Result<u32, RepositoryError>;
}
