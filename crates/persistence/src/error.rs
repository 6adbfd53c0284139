//! The persistence layer's one error type, and how it is told to the layers above.

use async_engine_domain::RepositoryError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database.url: {0}")]
    Url(String),
    #[error("cannot create the database folder {path}: {source}")]
    Folder { path: String, source: std::io::Error },
    #[error("cannot open the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("connection pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error("migrations: {0}")]
    Migration(String),
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A streamed start's items could not be read: not the database's failure.
    #[error("{0}")]
    Items(String),
}

impl Error {
    /// The database could not write for want of space or a working disk (SQLite's
    /// `SQLITE_FULL` and `SQLITE_IOERR`, PostgreSQL's class 53 and failed file writes): every
    /// write will fail until an operator acts, which readiness must tell.
    pub(crate) fn is_storage_failure(&self, sqlite: bool) -> bool {
        let mut query = match self {
            Error::Query(error) => error,
            _ => return false,
        };
        if let diesel::result::Error::RollbackErrorOnCommit { commit_error, .. } = query {
            query = commit_error;
        }
        let message = match query {
            diesel::result::Error::DatabaseError(_, info) => info.message().to_ascii_lowercase(),
            // SQLite ends a transaction by itself only for a full disk, an I/O error or a lack
            // of memory; diesel then reports the rollback that found nothing to roll back (a
            // batch insert's savepoint), not the first error.
            diesel::result::Error::NotInTransaction => return sqlite,
            _ => return false,
        };
        [
            "database or disk is full",
            "disk i/o error",
            "no space left on device",
            "could not extend file",
            "could not write",
            "no such savepoint",
        ]
        .iter()
        .any(|sign| message.contains(sign))
    }
}

impl From<Error> for RepositoryError {
    fn from(error: Error) -> Self {
        match error {
            Error::Pool(_) | Error::Connect(_) => RepositoryError::Unavailable(error.to_string()),
            _ => RepositoryError::Failed(error.to_string()),
        }
    }
}
