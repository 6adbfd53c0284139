//! One connection type for both backends (diesel's `MultiConnection`), and the two things
//! that differ between them: how a write transaction starts, and how a process is locked.
//!
//! SQLite has one writer at a time: a write transaction starts with `BEGIN IMMEDIATE`, which
//! takes the write lock up front (a deferred one that reads first could not upgrade safely),
//! and process locks are no-ops. PostgreSQL runs writers side by side: every transaction that
//! changes a process first takes a transaction-scoped advisory lock on it, so two completions
//! of one process's tasks never interleave; claims only *try* that lock and skip busy
//! processes, so no lock cycle can form.

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Bool};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};

use crate::error::Error;

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    // PostgreSQL first: SQLite would accept any string as a file name.
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// Runs `work` in a transaction that may write; commits on `Ok`, rolls back on `Err`.
pub fn write_transaction<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, Error>,
) -> Result<T, Error> {
    match conn {
        DbConnection::Sqlite(sqlite) => {
            AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?
        }
        DbConnection::Pg(_) => <DbConnection as Connection>::TransactionManager::begin_transaction(conn)?,
    }
    match work(conn) {
        Ok(value) => {
            <DbConnection as Connection>::TransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(error) => match <DbConnection as Connection>::TransactionManager::rollback_transaction(conn) {
            Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(error),
            Err(rollback) => Err(rollback.into()),
        },
    }
}

/// Runs `work` in a read-only transaction that sees one snapshot throughout: a status answer
/// reads the process, then its steps, then its items, and must not mix two commits. SQLite's
/// transactions are snapshots already; PostgreSQL's default (READ COMMITTED) takes a new one
/// per statement, so it is asked for REPEATABLE READ.
pub fn read_transaction<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, Error>,
) -> Result<T, Error> {
    conn.transaction(|conn| {
        if let DbConnection::Pg(pg) = conn {
            diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(pg)?;
        }
        work(conn)
    })
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Waits until this transaction holds the process's lock (PostgreSQL; SQLite's write lock
/// already excludes every other writer).
pub fn lock_process(conn: &mut DbConnection, process_id: i64) -> Result<(), Error> {
    if let DbConnection::Pg(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)").bind::<BigInt, _>(process_id).execute(pg)?;
    }
    Ok(())
}

/// Takes the process's lock if it is free; `false` when another transaction holds it.
pub fn try_lock_process(conn: &mut DbConnection, process_id: i64) -> Result<bool, Error> {
    match conn {
        DbConnection::Pg(pg) => {
            let row: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
                .bind::<BigInt, _>(process_id)
                .get_result(pg)?;
            Ok(row.locked)
        }
        DbConnection::Sqlite(_) => Ok(true),
    }
}

/// Serialises migrations across nodes that start together (PostgreSQL): a session lock on a
/// fixed key, held while `work` runs.
pub fn with_migration_lock<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, Error>,
) -> Result<T, Error> {
    const KEY: i64 = 0x4153_594e_435f_4d49; // "ASYNC_MI"
    let DbConnection::Pg(pg) = conn else { return work(conn) };
    diesel::sql_query("SELECT pg_advisory_lock($1)").bind::<BigInt, _>(KEY).execute(pg)?;
    let result = work(conn);
    if let DbConnection::Pg(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_unlock($1)").bind::<BigInt, _>(KEY).execute(pg)?;
    }
    result
}

/// Runs one statement, written once, on the backend's own connection: for what diesel's
/// `MultiConnection` cannot express itself (multi-row inserts, row locks).
macro_rules! per_backend {
    ($conn:expr, |$c:ident| $statement:expr) => {
        match $conn {
            $crate::connection::DbConnection::Pg($c) => $statement,
            $crate::connection::DbConnection::Sqlite($c) => $statement,
        }
    };
}
pub(crate) use per_backend;
