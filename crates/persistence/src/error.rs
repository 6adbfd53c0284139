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
}

impl From<Error> for RepositoryError {
    fn from(error: Error) -> Self {
        match error {
            Error::Pool(_) | Error::Connect(_) => RepositoryError::Unavailable(error.to_string()),
            _ => RepositoryError::Failed(error.to_string()),
        }
    }
}
