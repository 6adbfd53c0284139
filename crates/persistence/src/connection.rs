//! One connection type for both backends (diesel's `MultiConnection`), and the two things
//! that differ between them: how a write transaction starts, and how a process is locked.
//!
//! SQLite has one writer at a time: a write transaction starts with `BEGIN IMMEDIATE`, which
//! takes the write lock up front (a deferred one that reads first could not upgrade safely),
//! and process locks are no-ops. Writers of one file in this process queue for it on a mutex
//! first ([`WriterGates`]), so each gets the lock the moment the last lets it go instead of
//! polling for it in SQLite's busy handler. PostgreSQL runs writers side by side: every transaction that
//! changes a process first takes a transaction-scoped advisory lock on it, so two completions
//! of one process's tasks never interleave; claims only *try* that lock and skip busy
//! processes, so no lock cycle can form. Every PostgreSQL session is bounded
//! ([`SessionTimeouts`]), so a node that stops answering inside a transaction loses it, and
//! its locks, instead of holding every other node up.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};

use crate::error::Error;

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    // PostgreSQL first: SQLite would accept any string as a file name.
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

/// Bounds every pooled PostgreSQL session gets when it is made (SQLite has one writer, whose
/// `busy_timeout` bounds waits already). A node that stops answering (paused, partitioned, its
/// connection hung) while inside a transaction would otherwise hold that transaction's locks,
/// the process's among them, for as long as it stays silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// `statement_timeout`: the longest a statement may run; a backstop for a runaway one.
    pub statement: Duration,
    /// `lock_timeout`: the longest a statement waits for a lock (a process lock included)
    /// before failing; the transaction then rolls back and its caller tries again.
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`: a session that sits inside a transaction without
    /// sending anything this long is ended by the server, which rolls its transaction back and
    /// frees its locks.
    pub idle_in_transaction: Duration,
}

impl SessionTimeouts {
    /// The defaults, derived from the task lease: a silent node's transaction and locks are
    /// gone one lease after it fell silent, when its task leases expire too; no engine
    /// transaction idles or waits for a lock anywhere near that long. Statements get ten
    /// leases and at least five minutes, a bound for the longest legitimate one (purging a
    /// process of a million items, one statement): with a short lease, ten leases alone would
    /// fail that purge on every run, and retention, oldest first, would never get past it.
    pub fn from_lease(lease: Duration) -> Self {
        const STATEMENT_FLOOR: Duration = Duration::from_secs(300);
        Self {
            statement: lease.saturating_mul(10).max(STATEMENT_FLOOR),
            lock: lease,
            idle_in_transaction: lease,
        }
    }

    /// Sets the bounds on one PostgreSQL session.
    pub(crate) fn apply(&self, pg: &mut PgConnection) -> Result<(), DieselError> {
        let ms = |d: Duration| d.as_millis().max(1);
        pg.batch_execute(&format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; SET idle_in_transaction_session_timeout = {};",
            ms(self.statement),
            ms(self.lock),
            ms(self.idle_in_transaction)
        ))
    }
}

impl Default for SessionTimeouts {
    /// Those of the default lease, 60 s.
    fn default() -> Self {
        Self::from_lease(Duration::from_secs(60))
    }
}

/// How long a writer waits for its turn in this process before it asks SQLite itself, whose
/// `busy_timeout` then bounds the wait as it did without a gate.
const GATE_WAIT: Duration = Duration::from_secs(30);

/// One mutex per SQLite file written by this process. SQLite's busy handler polls for a held
/// write lock, sleeping 1, 2, 5, 10 ms and longer between tries: with two engine workers and
/// the API writing one file, most of a contended writer's wait was that sleep. A mutex hands
/// the lock on at once, in order. Other processes on the file (a CLI, a second server) still
/// meet SQLite's own lock and its busy handler.
struct WriterGates(parking_lot::Mutex<HashMap<String, Arc<parking_lot::Mutex<()>>>>);

static WRITER_GATES: LazyLock<WriterGates> = LazyLock::new(|| WriterGates(parking_lot::Mutex::default()));

impl WriterGates {
    fn of(&self, file: String) -> Arc<parking_lot::Mutex<()>> {
        self.0.lock().entry(file).or_default().clone()
    }
}

#[derive(QueryableByName)]
struct MainFile {
    #[diesel(sql_type = Text)]
    file: String,
}

/// Runs `work` in a transaction that may write; commits on `Ok`, rolls back on `Err`.
pub fn write_transaction<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, Error>,
) -> Result<T, Error> {
    let gate = match conn {
        DbConnection::Sqlite(sqlite) => {
            let main: MainFile =
                diesel::sql_query("SELECT file FROM pragma_database_list WHERE name = 'main'")
                    .get_result(sqlite)?;
            Some(WRITER_GATES.of(main.file))
        }
        DbConnection::Pg(_) => None,
    };
    // Held until the transaction has ended, whichever way. A writer that waited its whole
    // turn out goes on to SQLite's lock without it, and fails there as it did before.
    let _turn = gate.as_ref().and_then(|gate| gate.try_lock_for(GATE_WAIT));
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
            // SQLite rolls a transaction back itself on some errors (a full disk, an I/O
            // error): the rollback then finds none, and the error that matters is the first.
            Ok(()) | Err(DieselError::BrokenTransactionManager | DieselError::NotInTransaction) => Err(error),
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
/// already excludes every other writer). The wait is bounded by the session's `lock_timeout`:
/// past it the statement fails, and the transaction with it, having recorded nothing.
pub fn lock_process(conn: &mut DbConnection, process_id: i64) -> Result<(), Error> {
    if let DbConnection::Pg(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)").bind::<BigInt, _>(process_id).execute(pg)?;
    }
    Ok(())
}

/// Takes the queue's lock for this transaction if it is free (PostgreSQL; SQLite's write
/// lock already keeps claims apart): claims that count a queue's leases against a
/// `max_in_flight` hold it. Never waited for, so that claims, which hold the rows they read,
/// cannot deadlock over queues; `false` when another claim is counting. Two-int keys, so that
/// they never meet a process's (bigint) key nor show among [`busy_processes`].
pub fn try_lock_queue(conn: &mut DbConnection, queue: &str) -> Result<bool, Error> {
    const QUEUES: i32 = 0x5155; // "QU"
    match conn {
        DbConnection::Pg(pg) => {
            let row: Locked =
                diesel::sql_query("SELECT pg_try_advisory_xact_lock($1, hashtext($2)) AS locked")
                    .bind::<Integer, _>(QUEUES)
                    .bind::<Text, _>(queue)
                    .get_result(pg)?;
            Ok(row.locked)
        }
        DbConnection::Sqlite(_) => Ok(true),
    }
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

#[derive(QueryableByName)]
struct Key {
    #[diesel(sql_type = BigInt)]
    key: i64,
}

/// Processes whose lock other sessions hold right now (PostgreSQL; none on SQLite), for a
/// claim to look past their tasks in its query instead of reading them only to pass them over.
/// A handful of keys, one per transaction in flight; a snapshot, so the claim still *tries*
/// each lock it takes.
pub fn busy_processes(conn: &mut DbConnection) -> Result<Vec<i64>, Error> {
    let DbConnection::Pg(pg) = conn else { return Ok(Vec::new()) };
    // A bigint advisory key shows as its high half in classid and its low half in objid,
    // with objsubid 1 (two-int4 keys have 2); advisory locks are per database.
    let keys: Vec<Key> = diesel::sql_query(
        "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks \
         WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND pid <> pg_backend_pid() \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .load(pg)?;
    Ok(keys.into_iter().map(|k| k.key).collect())
}

#[derive(QueryableByName)]
struct Bounds {
    #[diesel(sql_type = Text)]
    lock: String,
    #[diesel(sql_type = Text)]
    statement: String,
}

/// Serialises migrations across nodes that start together (PostgreSQL): a session lock on a
/// fixed key, held while `work` runs. Meanwhile the session's lock and statement bounds are
/// lifted: a node waits as long as another's migrations take, and a migration waits for the
/// tables it alters and may run long; they are put back before the connection is reused.
pub fn with_migration_lock<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> Result<T, Error>,
) -> Result<T, Error> {
    const KEY: i64 = 0x4153_594e_435f_4d49; // "ASYNC_MI"
    let DbConnection::Pg(pg) = conn else { return work(conn) };
    let saved: Bounds = diesel::sql_query(
        "SELECT current_setting('lock_timeout') AS lock, current_setting('statement_timeout') AS statement",
    )
    .get_result(pg)?;
    pg.batch_execute("SET lock_timeout = 0; SET statement_timeout = 0;")?;
    let result = (|| {
        if let DbConnection::Pg(pg) = conn {
            diesel::sql_query("SELECT pg_advisory_lock($1)").bind::<BigInt, _>(KEY).execute(pg)?;
        }
        let result = work(conn);
        if let DbConnection::Pg(pg) = conn {
            diesel::sql_query("SELECT pg_advisory_unlock($1)").bind::<BigInt, _>(KEY).execute(pg)?;
        }
        result
    })();
    let restored = match conn {
        DbConnection::Pg(pg) => diesel::sql_query(
            "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false)",
        )
        .bind::<Text, _>(&saved.lock)
        .bind::<Text, _>(&saved.statement)
        .execute(pg)
        .map(drop),
        DbConnection::Sqlite(_) => Ok(()),
    };
    let value = result?;
    restored?;
    Ok(value)
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

/// What a node that stops answering can do to the others on PostgreSQL: every test holds a
/// process's lock, or leaves a transaction idle, the way a frozen node would. SQLite has no
/// process locks (one writer at a time), so these run on PostgreSQL only.
#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use async_engine_domain::FailurePolicy;
    use diesel::prelude::*;

    use super::*;
    use crate::fixtures::{begin_with, claim, finish, status};
    use crate::schema::processes;
    use crate::store::Store;

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn main_file(store: &Store) -> String {
        let mut conn = store.conn().unwrap();
        let DbConnection::Sqlite(sqlite) = &mut *conn else { panic!("SQLite only") };
        diesel::sql_query("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .get_result::<MainFile>(sqlite)
            .unwrap()
            .file
    }

    #[test]
    fn sqlite_writers_of_one_file_take_turns_on_its_gate_released_however_they_end() {
        let (db, other) = (crate::testing::sqlite(), crate::testing::sqlite());
        let (gate, theirs) =
            (WRITER_GATES.of(main_file(&db.store)), WRITER_GATES.of(main_file(&other.store)));
        let mut conn = db.store.conn().unwrap();
        let (started, second) = mpsc::channel();
        write_transaction(&mut conn, |_| {
            assert!(gate.is_locked(), "held through the transaction");
            assert!(!theirs.is_locked(), "another file's writers do not wait");
            let store = db.store.clone();
            let started = started.clone();
            std::thread::spawn(move || {
                let mut conn = store.conn().unwrap();
                write_transaction(&mut conn, |_| {
                    started.send(()).unwrap();
                    Ok(())
                })
                .unwrap();
            });
            std::thread::sleep(millis(200));
            assert!(second.try_recv().is_err(), "a second writer waits for the first");
            Ok(())
        })
        .unwrap();
        second
            .recv_timeout(Duration::from_secs(10))
            .expect("the second writer goes on once the first is done");
        let failed: Result<(), Error> =
            write_transaction(&mut conn, |_| Err(Error::Corrupt("rolled back".into())));
        assert!(failed.is_err());
        assert!(!gate.is_locked(), "released after a rollback too");
    }

    /// A second store on the test's database, with these session bounds.
    fn bounded(url: &str, timeouts: SessionTimeouts) -> Store {
        Store::open_with(url, 2, timeouts).unwrap()
    }

    fn process_row(store: &Store, id: &str) -> i64 {
        let mut conn = store.conn().unwrap();
        processes::table
            .filter(processes::async_process_id.eq(id))
            .select(processes::id)
            .first(&mut *conn)
            .unwrap()
    }

    /// Another session, as a frozen node's would be, holding a process's lock.
    fn hold_lock(url: &str, process: i64) -> PgConnection {
        let mut other = PgConnection::establish(url).unwrap();
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(process)
            .execute(&mut other)
            .unwrap();
        other
    }

    /// Ends the holder's session lock now: closing the connection would leave the server to
    /// release it a moment later, racing the next assertion.
    fn release(mut holder: PgConnection) {
        diesel::sql_query("SELECT pg_advisory_unlock_all()").execute(&mut holder).unwrap();
    }

    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        value: String,
    }

    fn setting(conn: &mut DbConnection, name: &str) -> String {
        let DbConnection::Pg(pg) = conn else { panic!("PostgreSQL only") };
        diesel::sql_query("SELECT current_setting($1) AS value")
            .bind::<Text, _>(name)
            .get_result::<Setting>(pg)
            .unwrap()
            .value
    }

    crate::postgres_test! {
        fn every_session_is_bounded_and_migrations_put_the_bounds_back() {
            let db = crate::testing::postgres();
            let timeouts = SessionTimeouts {
                statement: millis(20_000),
                lock: millis(1_500),
                idle_in_transaction: millis(2_500),
            };
            // One connection: the one that migrates is the one looked at afterwards.
            let store = Store::open_with(&db.url, 1, timeouts).unwrap();
            assert!(store.migrate().unwrap().is_empty(), "the test database is migrated already");
            let mut conn = store.conn().unwrap();
            assert_eq!(setting(&mut conn, "statement_timeout"), "20s");
            assert_eq!(setting(&mut conn, "lock_timeout"), "1500ms");
            assert_eq!(setting(&mut conn, "idle_in_transaction_session_timeout"), "2500ms");
            assert_eq!(SessionTimeouts::default(), SessionTimeouts::from_lease(Duration::from_secs(60)));
        }
    }

    crate::postgres_test! {
        fn a_claim_finds_other_processes_work_behind_many_tasks_of_a_busy_one() {
            let db = crate::testing::postgres();
            let store = &db.store;
            // 100 due tasks of "busy", all older than the one task of "other".
            begin_with(store, "busy", &[FailurePolicy::Skip], 100, 1, None);
            begin_with(store, "other", &[FailurePolicy::Skip], 1, 1, None);
            let busy = process_row(store, "busy");
            let holder = hold_lock(&db.url, busy);
            let claimed = claim(store, "queue:q0", "w", 1, 0);
            assert_eq!(claimed.iter().map(|t| t.async_process_id.as_str()).collect::<Vec<_>>(), ["other"]);
            assert!(
                claim(store, "queue:q0", "w", 4, 0).is_empty(),
                "the busy process's tasks stay where they are"
            );
            release(holder);
            let claimed = claim(store, "queue:q0", "w", 2, 0);
            assert_eq!(claimed.iter().map(|t| t.async_process_id.as_str()).collect::<Vec<_>>(), ["busy", "busy"]);
        }
    }

    crate::postgres_test! {
        fn a_wait_for_a_process_lock_is_bounded_and_records_nothing() {
            let db = crate::testing::postgres();
            let store = bounded(
                &db.url,
                SessionTimeouts { lock: millis(300), ..SessionTimeouts::from_lease(Duration::from_secs(60)) },
            );
            begin_with(&store, "p", &[FailurePolicy::Skip], 3, 3, None);
            let task = claim(&store, "queue:q0", "w", 1, 0).remove(0);
            let holder = hold_lock(&db.url, process_row(&store, "p"));
            let (sent, result) = mpsc::channel();
            let (waiting, first) = (store.clone(), task.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let _ = sent.send((finish(&waiting, &first, &[], 0), started.elapsed()));
            });
            // Without a bound the completion would wait as long as the holder stays silent.
            let (outcome, took) = result.recv_timeout(Duration::from_secs(30)).expect("the wait was not bounded");
            assert!(
                matches!(outcome, Err(async_engine_domain::TaskError::Storage(_))),
                "{outcome:?} after {took:?}"
            );
            release(holder);
            assert_eq!(status(&store, "p").steps.unwrap()[0].processed, 0, "nothing was recorded");
            // Rolled back whole: the lease is still current, and the same report now goes through.
            finish(&store, &task, &[], 0).unwrap();
            assert_eq!(status(&store, "p").steps.unwrap()[0].processed, 3);
        }
    }

    crate::postgres_test! {
        fn a_transaction_left_idle_is_ended_with_its_locks_and_its_changes() {
            let db = crate::testing::postgres();
            let store = bounded(
                &db.url,
                SessionTimeouts {
                    idle_in_transaction: millis(300),
                    ..SessionTimeouts::from_lease(Duration::from_secs(60))
                },
            );
            begin_with(&store, "p", &[FailurePolicy::Skip], 1, 1, None);
            let process = process_row(&store, "p");
            let mut conn = store.conn().unwrap();
            let frozen = write_transaction(&mut conn, |conn| {
                lock_process(conn, process)?;
                diesel::update(processes::table.find(process)).set(processes::name.eq("stale")).execute(conn)?;
                // A node paused here, past the bound, finds its transaction gone when it resumes.
                std::thread::sleep(millis(1_500));
                Ok(())
            });
            assert!(frozen.is_err(), "the idle transaction was not ended");
            let mut other = store.conn().unwrap();
            assert!(
                write_transaction(&mut other, |conn| try_lock_process(conn, process)).unwrap(),
                "its lock is free"
            );
            let name: String = processes::table.find(process).select(processes::name).first(&mut *other).unwrap();
            assert_eq!(name, "T", "its change was rolled back");
        }
    }
}
