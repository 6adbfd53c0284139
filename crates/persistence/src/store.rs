//! The pool of SQLite connections, built once at start-up, and migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::{Connection, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::Error;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// How long a connection waits for another's write lock before giving up: long enough to
/// wait out the one transaction that stores a process of a million items.
const BUSY_TIMEOUT_MS: u32 = 30_000;

/// Where the data lives, parsed from `database.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Accepts a file path, optionally prefixed `sqlite://` or `sqlite:`.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(Error::Url(
                "PostgreSQL is not supported by this build yet; use a SQLite file path".into(),
            ));
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        if path.is_empty() {
            return Err(Error::Url("is empty; give a SQLite file path".into()));
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

/// Settings every pooled connection gets. WAL is a property of the file and is set once, in
/// [`Store::migrate`]: setting it from every new connection at once locks the database.
#[derive(Debug, Clone, Copy)]
struct SqlitePragmas;

impl SqlitePragmas {
    fn apply(conn: &mut SqliteConnection) -> Result<(), diesel::result::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;"
        ))
    }
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        Self::apply(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

pub type Conn = PooledConnection<ConnectionManager<SqliteConnection>>;

/// The database: a pool of connections, cheap to clone and share.
#[derive(Clone)]
pub struct Store {
    pool: Pool<ConnectionManager<SqliteConnection>>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating when missing, with its folder) the database and builds the pool.
    pub fn open(url: &str, pool_size: u32) -> Result<Self, Error> {
        let DatabaseUrl::Sqlite(path) = DatabaseUrl::parse(url)?;
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .map_err(|source| Error::Folder { path: folder.display().to_string(), source })?;
        }
        let path_text = path_text(&path)?;
        // One direct connection first: a bad path fails now with SQLite's own words instead
        // of after the pool's connection timeout.
        let mut probe = SqliteConnection::establish(&path_text)?;
        SqlitePragmas::apply(&mut probe)?;
        drop(probe);
        let pool = Pool::builder()
            .max_size(pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .connection_customizer(Box::new(SqlitePragmas))
            .build(ConnectionManager::new(path_text))?;
        Ok(Self { pool, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn conn(&self) -> Result<Conn, Error> {
        Ok(self.pool.get()?)
    }

    /// Switches the file to WAL and applies every pending migration; returns their names.
    pub fn migrate(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.conn()?;
        conn.batch_execute("PRAGMA journal_mode = WAL;")?;
        let applied = conn.run_pending_migrations(MIGRATIONS).map_err(|e| Error::Migration(e.to_string()))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    }

    /// Names of migrations not yet applied (empty when the schema is current).
    pub fn pending_migrations(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.conn()?;
        let pending = conn.pending_migrations(MIGRATIONS).map_err(|e| Error::Migration(e.to_string()))?;
        Ok(pending.iter().map(|m| m.name().to_string()).collect())
    }
}

fn path_text(path: &Path) -> Result<String, Error> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Url(format!("{} is not valid UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(DatabaseUrl::parse("data/a.db").unwrap(), DatabaseUrl::Sqlite("data/a.db".into()));
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/a.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/a.db".into())
        );
        assert_eq!(DatabaseUrl::parse("sqlite:a.db").unwrap(), DatabaseUrl::Sqlite("a.db".into()));
        for bad in ["", "  ", ":memory:", "mysql://x", "postgres://localhost/db"] {
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
