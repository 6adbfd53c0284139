//! The storage contracts the other layers implement (persistence) or mock (api tests).

use crate::ids::{LookupId, TenantId};
use crate::process::ProcessStatus;
use crate::snapshot::ProcessSnapshot;

/// Which reading of a looked-up ID to use (contract §3, `idType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdKind {
    /// asyncProcessId first, then referenceId.
    #[default]
    Either,
    AsyncProcessId,
    ReferenceId,
}

/// How much of each process to read; less detail reads fewer rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Detail {
    /// The process record only (`verbose=false`).
    Process,
    /// The record and its steps' counters (`itemsList=false`).
    Steps,
    /// Everything, with every step's items and failure groups.
    Items,
}

/// One status lookup, always within one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusQuery {
    pub tenant: TenantId,
    pub id: LookupId,
    pub kind: IdKind,
    pub detail: Detail,
}

/// Why storage could not answer. The text is for the log, never for a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    /// The database could not be reached (pool exhausted, file unreadable, server down).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A statement failed, or stored data could not be read back.
    #[error("storage failed: {0}")]
    Failed(String),
}

/// Reads process status.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait StatusReader: Send + Sync {
    /// Resolves `query.id` (contract §3): the process with that asyncProcessId, else every
    /// process with that referenceId, oldest first; empty when nothing matches. Everything
    /// returned comes from one consistent read.
    fn find_status(&self, query: &StatusQuery) -> Result<Vec<ProcessStatus>, RepositoryError>;
    /// A cheap mark of what `find_status` would answer for the same lookup: it differs
    /// whenever any answer could (a process changed, or one more matches). Waiting readers
    /// compare marks instead of whole answers.
    fn change_marks(&self, query: &StatusQuery) -> Result<Vec<(i64, i64)>, RepositoryError>;
    /// [`StatusReader::change_marks`], when they can be read without waiting: a local file and
    /// a connection free at once. `None` when the read could wait (no free connection, a
    /// database across the network), so that the caller reads them where waiting is allowed
    /// instead of on a thread that serves other requests meanwhile.
    fn change_marks_now(&self, query: &StatusQuery) -> Option<Result<Vec<(i64, i64)>, RepositoryError>> {
        let _ = query;
        None
    }
}

/// What [`SnapshotWriter::import`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportResult {
    Created,
    /// A process with that asyncProcessId already exists in the tenant; nothing was written.
    AlreadyPresent,
}

/// Stores processes as records of history (seeding, imports): the engine never resumes them.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait SnapshotWriter: Send + Sync {
    fn import(&self, tenant: &TenantId, snapshot: &ProcessSnapshot) -> Result<ImportResult, RepositoryError>;
}
