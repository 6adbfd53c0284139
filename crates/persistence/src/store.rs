//! The pool of SQLite connections, built once at start-up, and migrations.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::{Connection, PgConnection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::connection::{DbConnection, SessionTimeouts, with_migration_lock};
use crate::error::Error;
use async_engine_domain::RepositoryError;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// How long a connection waits for another's write lock before giving up: long enough to
/// wait out the one transaction that stores a process of a million items.
const BUSY_TIMEOUT_MS: u32 = 30_000;

/// Where the data lives, parsed from `database.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    /// A `postgres://` or `postgresql://` URL, or a SQLite file path, optionally prefixed
    /// `sqlite://` or `sqlite:`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        if path.is_empty() {
            return Err(Error::Url("is empty; give a SQLite file path or a postgres:// URL".into()));
        }
        if path == ":memory:" || path.contains("mode=memory") {
            return Err(Error::Url(
                "an in-memory database would lose every process at restart; give a file path".into(),
            ));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(Error::Url(format!("unsupported scheme '{scheme}://'")));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }
}

/// Settings every pooled SQLite connection gets. WAL is a property of the file and is set
/// once, in [`Store::migrate`]: setting it from every new connection at once locks the file.
#[derive(Debug, Clone, Copy)]
struct SqlitePragmas;

impl SqlitePragmas {
    fn apply(conn: &mut SqliteConnection) -> Result<(), diesel::result::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;"
        ))
    }
}

/// What every pooled connection is set up with when it is made: SQLite's pragmas, or the
/// PostgreSQL session's timeouts.
#[derive(Debug, Clone, Copy)]
struct Setup {
    timeouts: SessionTimeouts,
}

impl CustomizeConnection<DbConnection, diesel::r2d2::Error> for Setup {
    fn on_acquire(&self, conn: &mut DbConnection) -> Result<(), diesel::r2d2::Error> {
        match conn {
            DbConnection::Sqlite(sqlite) => SqlitePragmas::apply(sqlite),
            DbConnection::Pg(pg) => self.timeouts.apply(pg),
        }
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub type Conn = PooledConnection<ConnectionManager<DbConnection>>;

/// The database: a pool of connections, cheap to clone and share.
#[derive(Clone)]
pub struct Store {
    pool: Pool<ConnectionManager<DbConnection>>,
    url: DatabaseUrl,
    /// When (seconds since the epoch, 0 for never) a write last failed for want of disk.
    storage_failed_at: Arc<AtomicU64>,
}

/// How long a write that failed for want of disk keeps the node not ready: long enough for a
/// load balancer to see it, short enough that a freed disk brings the node back soon.
pub(crate) const STORAGE_FAILURE_HOLD_SECS: u64 = 10;

fn epoch_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

impl Store {
    /// Opens the database and builds the pool, with PostgreSQL sessions bounded by the
    /// default timeouts (those of the default lease).
    pub fn open(url: &str, pool_size: u32) -> Result<Self, Error> {
        Self::open_with(url, pool_size, SessionTimeouts::default())
    }

    /// Opens the database and builds the pool; a SQLite file is created (with its folder)
    /// when missing. Every PostgreSQL session gets `timeouts`.
    pub fn open_with(url: &str, pool_size: u32, timeouts: SessionTimeouts) -> Result<Self, Error> {
        let parsed = DatabaseUrl::parse(url)?;
        // One direct connection first: a bad path or an unreachable server fails now, in the
        // driver's own words, instead of after the pool's connection timeout.
        let target = match &parsed {
            DatabaseUrl::Sqlite(path) => {
                if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(folder)
                        .map_err(|source| Error::Folder { path: folder.display().to_string(), source })?;
                }
                let text = path
                    .to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Url(format!("{} is not valid UTF-8", path.display())))?;
                let mut probe = SqliteConnection::establish(&text)?;
                SqlitePragmas::apply(&mut probe)?;
                text
            }
            DatabaseUrl::Postgres(url) => {
                // OpenSSL, initialised by libpq on its own, frees its state in an `atexit`
                // handler, while r2d2's threads (never joined) may be in a TLS handshake:
                // a one-shot command then crashed at exit about 1 run in 20. Initialised
                // here first, without that handler, process exit leaves OpenSSL alone.
                openssl_sys::init();
                PgConnection::establish(url)?;
                url.clone()
            }
        };
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            // A SQLite file does not drop connections; checking each checkout with a query
            // only costs. A PostgreSQL server can (a restart), so there every checkout is tested.
            .test_on_check_out(matches!(parsed, DatabaseUrl::Postgres(_)))
            .connection_customizer(Box::new(Setup { timeouts }))
            .build(ConnectionManager::new(target))?;
        Ok(Self { pool, url: parsed, storage_failed_at: Arc::new(AtomicU64::new(0)) })
    }

    /// Where the data is, for logs: the SQLite path, or the PostgreSQL URL without password.
    pub fn describe(&self) -> String {
        match &self.url {
            DatabaseUrl::Sqlite(path) => path.display().to_string(),
            DatabaseUrl::Postgres(url) => redact(url),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.url, DatabaseUrl::Postgres(_))
    }

    pub(crate) fn conn(&self) -> Result<Conn, Error> {
        Ok(self.pool.get()?)
    }

    /// A connection if one is idle now; never waits.
    pub(crate) fn idle_conn(&self) -> Option<Conn> {
        self.pool.try_get()
    }

    /// A connection, or an error once `wait` has passed (the pool's own wait is longer).
    pub(crate) fn conn_within(&self, wait: Duration) -> Result<Conn, Error> {
        Ok(self.pool.get_timeout(wait)?)
    }

    /// Runs one transaction function on a pooled connection; a storage failure becomes the
    /// trait's own error through `RepositoryError`, a refusal passes through as it is.
    pub(crate) fn with<T, E: From<RepositoryError>>(
        &self,
        work: impl FnOnce(&mut DbConnection) -> Result<Result<T, E>, Error>,
    ) -> Result<T, E> {
        let mut conn = self.conn().map_err(RepositoryError::from)?;
        work(&mut conn).map_err(|error| RepositoryError::from(self.noted(error)))?
    }

    /// Passes `error` on, remembering a write that failed for want of disk (for readiness).
    pub(crate) fn noted(&self, error: Error) -> Error {
        if error.is_storage_failure(!self.is_postgres()) {
            self.storage_failed_at.store(epoch_secs(), Ordering::Relaxed);
        }
        error
    }

    /// Seconds since a write last failed for want of disk, if that was recent.
    pub(crate) fn recent_storage_failure(&self) -> Option<u64> {
        let at = self.storage_failed_at.load(Ordering::Relaxed);
        let ago = epoch_secs().saturating_sub(at);
        (at > 0 && ago < STORAGE_FAILURE_HOLD_SECS).then_some(ago)
    }

    /// Applies every pending migration and returns their names. On SQLite the file is switched
    /// to WAL first; on PostgreSQL nodes starting together take turns.
    pub fn migrate(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.conn()?;
        with_migration_lock(&mut conn, |conn| {
            let applied = match conn {
                DbConnection::Sqlite(sqlite) => {
                    sqlite.batch_execute("PRAGMA journal_mode = WAL;")?;
                    sqlite.run_pending_migrations(SQLITE_MIGRATIONS)
                }
                DbConnection::Pg(pg) => pg.run_pending_migrations(POSTGRES_MIGRATIONS),
            }
            .map_err(|e| Error::Migration(e.to_string()))?;
            Ok(applied.iter().map(ToString::to_string).collect())
        })
    }

    /// Names of migrations not yet applied (empty when the schema is current).
    pub fn pending_migrations(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.conn()?;
        let names = match &mut *conn {
            DbConnection::Sqlite(sqlite) => sqlite
                .pending_migrations(SQLITE_MIGRATIONS)
                .map(|pending| pending.iter().map(|m| m.name().to_string()).collect()),
            DbConnection::Pg(pg) => pg
                .pending_migrations(POSTGRES_MIGRATIONS)
                .map(|pending| pending.iter().map(|m| m.name().to_string()).collect()),
        };
        names.map_err(|e| Error::Migration(e.to_string()))
    }
}

/// The URL with any password replaced, fit for a log line.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_migrations() {
        let names = |backend: &str| {
            let folder = format!("{}/../../migrations/{backend}", env!("CARGO_MANIFEST_DIR"));
            let mut names: Vec<String> = std::fs::read_dir(folder)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let sqlite = names("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, names("postgres"), "every migration needs its twin in the other folder");
    }

    #[test]
    fn urls() {
        assert_eq!(DatabaseUrl::parse("data/a.db").unwrap(), DatabaseUrl::Sqlite("data/a.db".into()));
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/a.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/a.db".into())
        );
        assert_eq!(DatabaseUrl::parse("sqlite:a.db").unwrap(), DatabaseUrl::Sqlite("a.db".into()));
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db").unwrap(),
            DatabaseUrl::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        for bad in ["", "  ", ":memory:", "mysql://x"] {
            assert!(DatabaseUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn opening_creates_the_folder_and_migrating_twice_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/db.sqlite");
        let store = Store::open(path.to_str().unwrap(), 2).unwrap();
        assert!(!store.pending_migrations().unwrap().is_empty());
        assert!(!store.migrate().unwrap().is_empty());
        assert!(store.migrate().unwrap().is_empty());
        assert!(store.pending_migrations().unwrap().is_empty());
        let mut conn = store.conn().unwrap();
        let mode: Vec<JournalMode> =
            diesel::RunQueryDsl::load(diesel::sql_query("PRAGMA journal_mode"), &mut conn).unwrap();
        assert_eq!(mode[0].journal_mode, "wal");
    }

    #[test]
    fn a_path_that_cannot_be_a_database_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be.
        let err = Store::open(dir.path().to_str().unwrap(), 1).err().unwrap();
        assert!(matches!(err, Error::Connect(_) | Error::Query(_)), "{err}");
    }

    #[derive(diesel::QueryableByName)]
    struct JournalMode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
}
