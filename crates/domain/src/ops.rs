//! What operating the server needs of storage (contract §7): readiness, the gauges behind
//! `/metrics`, and retention.

use crate::repository::RepositoryError;

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
