//! Claiming due tasks: which tasks are due, leasing them, and what a worker is given.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use async_engine_domain::{ClaimRequest, ClaimedTask, RawJson, TenantId};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::advance::refresh;
use crate::connection::{DbConnection, busy_processes, try_lock_process, try_lock_queue, write_transaction};
use crate::error::Error;
use crate::lease::{finish_task, give_up};
use crate::models::ProcessRow;
use crate::queries::{corrupt, to_i64};
use crate::run::{LEASED, QUEUED, TaskRow, indices_of};
use crate::schema::{items, processes, steps, tasks};

/// How [`due_tasks`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// To lease what it finds: on PostgreSQL the rows are locked, and rows another claim has
    /// locked are passed over.
    ToClaim,
    /// Only to know whether anything is due: no row locks, which would be written on every
    /// look and would make a real claim elsewhere pass over the rows at that instant.
    ToLook,
}

/// Due tasks of these queues, oldest first: expired leases (to be taken over), then queued
/// tasks whose time has come. Tasks that need the lock of a process another transaction holds
/// are left out in the query itself: read and then passed over, however many of them there
/// were, they would hide every other process's work behind them (and a node frozen inside a
/// transaction would stall them all). Those are expired leases (one on its last attempt is
/// given up) and the tasks of a step not claimed from yet (its first claim moves its status);
/// the other queued tasks of a busy process are leased without its lock, and due.
fn due_tasks(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    limit: i64,
    read: Read,
) -> Result<Vec<TaskRow>, Error> {
    if read == Read::ToClaim {
        let busy = busy_processes(conn)?;
        return due_past(conn, request, limit, read, &busy);
    }
    // A look is mostly asked of an idle queue (waiting claims' checker, idle workers), and
    // finding nothing due needs no list of busy processes: the lock manager's table is read
    // only when something is, to tell whether any of it is free to take.
    let found = due_past(conn, request, limit, read, &[])?;
    if found.is_empty() {
        return Ok(found);
    }
    let busy = busy_processes(conn)?;
    if found.iter().any(|task| busy.contains(&task.process_id)) {
        return due_past(conn, request, limit, read, &busy);
    }
    Ok(found)
}

/// [`due_tasks`], passing over what needs the lock of a `busy` process. Two queries, so that
/// each walks the `(queue, state, ...)` index.
fn due_past(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    limit: i64,
    read: Read,
    busy: &[i64],
) -> Result<Vec<TaskRow>, Error> {
    let now = request.now_micros;
    // Every tenant (the engine), or only the worker's: one statement shape for both, so the
    // row locks below stay on `tasks` alone (a correlated EXISTS on the process's primary key,
    // not a join, and not the set of all the tenant's processes).
    let any_tenant = request.tenant.is_none();
    let tenant = request.tenant.as_ref().map_or("", |t| t.as_str());
    macro_rules! due {
        ($state:expr, $ready:expr, $limit:expr) => {
            due!($state, $ready, $limit, tasks::id.asc())
        };
        ($state:expr, $ready:expr, $limit:expr, $order:expr) => {
            tasks::table
                .filter(tasks::queue.eq_any(&request.queues))
                .filter(tasks::state.eq($state))
                .filter($ready)
                .filter(
                    tasks::process_id.ne_all(busy).or(($state != LEASED)
                        .into_sql::<diesel::sql_types::Bool>()
                        .and(diesel::dsl::exists(
                            steps::table
                                .filter(steps::process_id.eq(tasks::process_id))
                                .filter(steps::step_number.eq(tasks::step_number))
                                .filter(steps::started),
                        ))),
                )
                .filter(
                    any_tenant.into_sql::<diesel::sql_types::Bool>().or(diesel::dsl::exists(
                        processes::table
                            .filter(processes::id.eq(tasks::process_id))
                            .filter(processes::tenant.eq(tenant)),
                    )),
                )
                .order($order)
                .limit($limit)
                .select(TaskRow::as_select())
        };
    }
    // Queued tasks: higher priorities first, then by ordinal, which interleaves the
    // processes of one priority (see `create_tasks`), then oldest first; the due index
    // holds them in this order.
    let queued_order = (tasks::priority.desc(), tasks::ordinal.asc(), tasks::id.asc());
    // Expired leases first (to be taken over), then queued tasks whose time has come. On
    // PostgreSQL, nodes claiming at once lock the rows they read and pass over the rows
    // another holds, instead of queueing behind it.
    let mut found = Vec::new();
    for queued in [false, true] {
        let room = limit - to_i64(found.len())?;
        if room <= 0 {
            break;
        }
        let rows: Vec<TaskRow> = match (conn as &mut DbConnection, queued) {
            (DbConnection::Pg(c), false) if read == Read::ToClaim => {
                due!(LEASED, tasks::lease_expires_at.le(now), room).for_update().skip_locked().load(c)?
            }
            (DbConnection::Pg(c), true) if read == Read::ToClaim => {
                due!(QUEUED, tasks::available_at.le(now), room, queued_order)
                    .for_update()
                    .skip_locked()
                    .load(c)?
            }
            (DbConnection::Pg(c), false) => due!(LEASED, tasks::lease_expires_at.le(now), room).load(c)?,
            (DbConnection::Pg(c), true) => {
                due!(QUEUED, tasks::available_at.le(now), room, queued_order).load(c)?
            }
            (DbConnection::Sqlite(c), false) => {
                due!(LEASED, tasks::lease_expires_at.le(now), room).load(c)?
            }
            (DbConnection::Sqlite(c), true) => {
                due!(QUEUED, tasks::available_at.le(now), room, queued_order).load(c)?
            }
        };
        found.extend(rows);
    }
    Ok(found)
}

pub(crate) fn claim(conn: &mut DbConnection, request: &ClaimRequest) -> Result<Vec<ClaimedTask>, Error> {
    let limit = i64::from(request.max_tasks.saturating_mul(2)).saturating_add(16);
    // Idle workers ask often: a plain read first keeps them from taking the write lock
    // (and queueing behind writers) when there is nothing to claim.
    if !any_due(conn, request)? {
        return Ok(Vec::new());
    }
    write_transaction(conn, |conn| {
        let wanted = usize::try_from(request.max_tasks).unwrap_or(usize::MAX);
        let mut leased = Vec::new();
        let mut known = Known::default();
        let mut asked = request.clone();
        loop {
            let mut passed_full = false;
            for task in due_tasks(conn, &asked, limit, Read::ToClaim)? {
                if leased.len() >= wanted {
                    break;
                }
                match take(conn, request, &mut known, &task)? {
                    Taken::Leased(token, expires) => leased.push((task, token, expires)),
                    Taken::Full => passed_full = true,
                    Taken::Passed => {}
                }
            }
            // What was read of queues found at their max_in_flight took the place of other
            // queues' tasks: those are asked for again without them.
            asked.queues.retain(|queue| known.rooms.get(queue).is_none_or(|&room| room > 0));
            if !passed_full || leased.len() >= wanted || asked.queues.is_empty() {
                break;
            }
        }
        leased
            .into_iter()
            .map(|(task, token, expires)| describe(conn, &mut known, task, token, expires))
            .collect()
    })
}

/// What [`take`] made of a due task.
enum Taken {
    /// Leased, with this token, until this time.
    Leased(String, i64),
    /// Its queue is at its `max_in_flight`.
    Full,
    /// Given up, or passed over (its process busy, or the row changed under the claim).
    Passed,
}

fn take(
    conn: &mut DbConnection,
    request: &ClaimRequest,
    known: &mut Known,
    task: &TaskRow,
) -> Result<Taken, Error> {
    let now = request.now_micros;
    let step = (task.process_id, task.step_number);
    let gives_up = task.state == LEASED && task.attempt >= task.max_attempts;
    let first_claim = !known.step(conn, step)?.started;
    // A lease holds its place until it ends or is taken over, so a takeover needs no room.
    if task.state == QUEUED && !known.room(conn, step, &task.queue)? {
        return Ok(Taken::Full);
    }
    // Leasing takes no process lock, so that a process's tasks are claimed while its
    // completions are recorded: the task's row, locked by the read above and by a
    // completion's, keeps them apart. What records outcomes or moves the process (a give-up,
    // a step's first claim) takes it, and passes over a process another transaction is
    // changing instead of waiting for it.
    if (gives_up || first_claim) && !try_lock_process(conn, task.process_id)? {
        return Ok(Taken::Passed);
    }
    if gives_up {
        let message = format!("gave up after {} attempts: the last lease expired", task.attempt);
        // In a savepoint: should recording fail (corrupt data), the task is parked instead of
        // failing every later claim on its queue.
        if let Err(error) = conn.transaction(|conn| give_up(conn, task, &message, now)) {
            tracing::error!(task = task.id, %error, "could not record a given-up task; parking it");
            finish_task(conn, task.id, Some(&format!("could not record the give-up: {error}")))?;
        }
        return Ok(Taken::Passed);
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    // The step's timeout caps the lease: an attempt may not run longer unheartbeated.
    let lease = request.lease_micros.min(task.timeout_secs.saturating_mul(1_000_000));
    let expires = now.saturating_add(lease);
    // Only if the row is as it was read: a give-up earlier in this claim may have stopped the
    // process and cancelled it.
    let taken = diesel::update(
        tasks::table
            .find(task.id)
            .filter(tasks::state.eq(&task.state))
            .filter(tasks::attempt.eq(task.attempt)),
    )
    .set((
        tasks::state.eq(LEASED),
        tasks::attempt.eq(task.attempt + 1),
        tasks::lease_token.eq(&token),
        tasks::lease_expires_at.eq(expires),
        tasks::worker_id.eq(&request.worker_id),
        tasks::heartbeat_at.eq(now),
    ))
    .execute(conn)?;
    if taken == 0 {
        return Ok(Taken::Passed);
    }
    if first_claim {
        let marked = diesel::update(
            steps::table
                .filter(steps::process_id.eq(task.process_id))
                .filter(steps::step_number.eq(task.step_number))
                .filter(steps::started.eq(false)),
        )
        .set(steps::started.eq(true))
        .execute(conn)?;
        if marked > 0 {
            refresh(conn, task.process_id, now)?;
        }
    }
    known.step(conn, step)?.started = true;
    if task.state == QUEUED {
        known.took(&task.queue);
    }
    Ok(Taken::Leased(token, expires))
}

/// What the tasks of one claim share, read once: a batch is mostly tasks of one step.
#[derive(Default)]
struct Known {
    processes: HashMap<i64, (TenantId, ProcessRow, RawJson)>,
    steps: HashMap<(i64, i32), KnownStep>,
    /// Leases a queue with a `max_in_flight` may still take in this claim.
    rooms: HashMap<String, i64>,
}

struct KnownStep {
    name: String,
    /// Claimed from before (or by this claim): the step's first claim is behind it.
    started: bool,
    max_in_flight: Option<i32>,
}

impl Known {
    fn step(&mut self, conn: &mut DbConnection, key: (i64, i32)) -> Result<&mut KnownStep, Error> {
        Ok(match self.steps.entry(key) {
            Entry::Occupied(found) => found.into_mut(),
            Entry::Vacant(missing) => {
                let (name, started, max_in_flight) = steps::table
                    .filter(steps::process_id.eq(key.0))
                    .filter(steps::step_number.eq(key.1))
                    .select((steps::name, steps::started, steps::max_in_flight))
                    .first(conn)?;
                missing.insert(KnownStep { name, started, max_in_flight })
            }
        })
    }

    /// Whether the task's queue may take one more lease: always, unless its step has a
    /// `max_in_flight`, against which the queue's leases are counted once per claim, under the
    /// queue's lock, so that claims on several nodes at once cannot together pass it. A lease
    /// that ran out still counts: its worker may heartbeat it back until a claim takes it over.
    /// A claim that finds another counting takes nothing of the queue this time.
    fn room(&mut self, conn: &mut DbConnection, step: (i64, i32), queue: &str) -> Result<bool, Error> {
        if let Some(&room) = self.rooms.get(queue) {
            return Ok(room > 0);
        }
        let Some(most) = self.step(conn, step)?.max_in_flight else { return Ok(true) };
        if !try_lock_queue(conn, queue)? {
            self.rooms.insert(queue.to_owned(), 0);
            return Ok(false);
        }
        let leased: i64 = tasks::table
            .filter(tasks::queue.eq(queue))
            .filter(tasks::state.eq(LEASED))
            .count()
            .get_result(conn)?;
        let room = i64::from(most) - leased;
        self.rooms.insert(queue.to_owned(), room);
        Ok(room > 0)
    }

    fn took(&mut self, queue: &str) {
        if let Some(room) = self.rooms.get_mut(queue) {
            *room -= 1;
        }
    }
}

/// Everything a worker needs to run a leased task.
fn describe(
    conn: &mut DbConnection,
    known: &mut Known,
    task: TaskRow,
    token: String,
    expires: i64,
) -> Result<ClaimedTask, Error> {
    let step_name = known.step(conn, (task.process_id, task.step_number))?.name.clone();
    let (tenant, process, additional_data) = match known.processes.entry(task.process_id) {
        Entry::Occupied(found) => found.into_mut(),
        Entry::Vacant(missing) => {
            let (tenant, process): (String, ProcessRow) = processes::table
                .find(task.process_id)
                .select((processes::tenant, ProcessRow::as_select()))
                .first(conn)?;
            let additional_data = RawJson::from_text(process.additional_data.clone())
                .map_err(|e| corrupt(&process, format!("additionalData: {e}")))?;
            let tenant = TenantId::new(tenant).map_err(|e| Error::Corrupt(e.to_string()))?;
            missing.insert((tenant, process, additional_data))
        }
    };
    let values = task_items(conn, &task)?;
    let items = values
        .into_iter()
        .map(|TaskItem { item_index: index, value }| {
            let item =
                RawJson::from_text(value).map_err(|e| corrupt(process, format!("item {index}: {e}")))?;
            Ok((u64::try_from(index).unwrap_or_default(), item))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(ClaimedTask {
        task_id: task.id,
        lease_token: token,
        tenant: tenant.clone(),
        additional_data: additional_data.clone(),
        async_process_id: process.async_process_id.clone(),
        reference_id: process.reference_id.clone(),
        process_name: process.name.clone(),
        step_number: u32::try_from(task.step_number).unwrap_or_default(),
        step_name,
        queue: task.queue,
        attempt: u32::try_from(task.attempt + 1).unwrap_or_default(),
        lease_expires_at_micros: expires,
        items,
    })
}

#[derive(QueryableByName)]
struct TaskItem {
    #[diesel(sql_type = BigInt)]
    item_index: i64,
    #[diesel(sql_type = Text)]
    value: String,
}

/// The task's items in index order, by one statement whose text is the same for every task,
/// with no bind per index. Most tasks hold a run of consecutive indices (a step's items are
/// chunked in order), read as one range of the primary key: a probe per index cost about
/// 2.5 µs an item on PostgreSQL, a quarter of a claim's time. Any other set is read on
/// PostgreSQL by `= ANY` of an array (built by diesel's query builder, so kept prepared), on
/// SQLite by the task's stored index list through `json_each`, where `IN` would bind every
/// index (raw SQL, which diesel never keeps prepared: a short text parsed per call).
fn task_items(conn: &mut DbConnection, task: &TaskRow) -> Result<Vec<TaskItem>, Error> {
    let indices = indices_of(task)?;
    let pair = |(item_index, value)| TaskItem { item_index, value };
    if let (Some(&first), Some(&last)) = (indices.first(), indices.last())
        && indices.windows(2).all(|w| w[1] == w[0] + 1)
    {
        return Ok(items::table
            .filter(items::process_id.eq(task.process_id))
            .filter(items::item_index.between(first, last))
            .order(items::item_index.asc())
            .select((items::item_index, items::value))
            .load::<(i64, String)>(conn)?
            .into_iter()
            .map(pair)
            .collect());
    }
    Ok(match conn {
        DbConnection::Pg(pg) => items::table
            .filter(items::process_id.eq(task.process_id))
            .filter(items::item_index.eq_any(indices))
            .order(items::item_index.asc())
            .select((items::item_index, items::value))
            .load::<(i64, String)>(pg)?
            .into_iter()
            .map(pair)
            .collect(),
        DbConnection::Sqlite(sqlite) => diesel::sql_query(
            "SELECT item_index, value FROM items WHERE process_id = ?1 \
             AND item_index IN (SELECT j.value FROM json_each(?2) AS j) ORDER BY item_index",
        )
        .bind::<BigInt, _>(task.process_id)
        .bind::<Text, _>(&task.item_indices)
        .load(sqlite)?,
    })
}

/// Whether a claim with this request may find a due task now: the same small read a claim
/// starts with, leasing and locking nothing (waiting claims' checker asks it every tick).
pub(crate) fn any_due(conn: &mut DbConnection, request: &ClaimRequest) -> Result<bool, Error> {
    Ok(!due_tasks(conn, request, 1, Read::ToLook)?.is_empty())
}

#[cfg(test)]
mod tests {
    use async_engine_domain::work::GAVE_UP_CODE;
    use std::sync::mpsc;
    use std::time::Duration;

    use async_engine_domain::{
        ClaimRequest, ClaimedTask, FailurePolicy, Handler, NewProcess, Status, TaskError, TaskStore, TenantId,
    };
    use diesel::prelude::*;

    use super::*;
    use crate::error::Error;
    use crate::fixtures::{
        SECOND, begin, begin_definition, begin_new, claim, definition, finish, new_process, status, steps_of,
    };
    use crate::schema::processes;
    use crate::store::Store;
    use crate::testing::on_both_backends;

    /// A process of one step over `items` one-item tasks, whose queue bears `most` leases.
    fn limited(store: &Store, id: &str, most: u32, items: usize) {
        let mut definition = definition(&[FailurePolicy::Skip], 1);
        definition.steps[0].max_in_flight = Some(most);
        begin_definition(store, id, definition, items, None);
    }

    on_both_backends! {
        fn a_queue_never_has_more_leased_than_its_max_in_flight(store: &Store) {
            limited(store, "a", 2, 4);
            limited(store, "b", 2, 4);
            let first = claim(store, "queue:q0", "w", 10, 0);
            assert_eq!(first.len(), 2, "the queue's limit, not the claim's 10");
            assert!(claim(store, "queue:q0", "w", 10, SECOND).is_empty(), "nothing, and no error");
            finish(store, &first[0], &[], SECOND).unwrap();
            let next = claim(store, "queue:q0", "w", 10, SECOND);
            assert_eq!(next.len(), 1, "a finished task makes room for one");
            // Every lease has expired: each may be taken over, two at a time.
            let over = claim(store, "queue:q0", "w", 10, 20 * SECOND);
            assert_eq!(over.len(), 2);
            assert!(over.iter().all(|t| t.attempt == 2), "expired leases first: {over:?}");
            assert!(claim(store, "queue:q0", "w", 10, 20 * SECOND).is_empty());
            assert_eq!(claim(store, "queue:q0", "w", 10, 40 * SECOND).len(), 2, "across both processes");
        }
    }

    on_both_backends! {
        fn higher_priorities_are_claimed_first_and_one_priority_takes_turns(store: &Store) {
            let start = |id: &str, items: usize, priority: i32| {
                let new = NewProcess { priority, ..new_process(id, definition(&[FailurePolicy::Skip], 1), items, None) };
                begin_new(store, &new);
            };
            start("old", 6, 0);
            for task in claim(store, "queue:q0", "w", 2, 0) {
                finish(store, &task, &[], 0).unwrap();
            }
            start("new", 3, 0);
            start("urgent", 2, 5);
            start("later", 1, -1);
            let order: Vec<String> =
                claim(store, "queue:q0", "w", 20, 0).into_iter().map(|t| t.async_process_id).collect();
            assert_eq!(
                order,
                ["urgent", "urgent", "old", "new", "old", "new", "old", "new", "old", "later"],
                "the newcomer takes turns with the old process from where it had got to"
            );
        }
    }

    /// Claims of several queues, as the engine's.
    fn claim_of(store: &Store, queues: &[&str], max: u32, now: i64) -> Vec<ClaimedTask> {
        store
            .claim(&ClaimRequest {
                queues: queues.iter().map(|q| (*q).to_owned()).collect(),
                tenant: None,
                worker_id: "w".into(),
                max_tasks: max,
                lease_micros: 10 * SECOND,
                now_micros: now,
            })
            .unwrap()
    }

    /// `items` one-item tasks in queue `queue:NAME`, at `priority`.
    fn queued(store: &Store, id: &str, queue: &str, items: usize, priority: i32) {
        let mut definition = definition(&[FailurePolicy::Skip], 1);
        definition.steps[0].handler = Handler::Queue(queue.into());
        begin_new(store, &NewProcess { priority, ..new_process(id, definition, items, None) });
    }

    crate::postgres_test! {
        /// A lease that ran out keeps its place under max_in_flight until a claim takes it
        /// over (PostgreSQL, where a busy process's expired lease is passed over): its worker
        /// may still heartbeat it back, so another task leased in its place would pass the limit.
        fn a_lease_that_ran_out_keeps_its_place_until_taken_over() {
            let db = crate::testing::postgres();
            let store = &db.store;
            limited(store, "a", 1, 1);
            limited(store, "b", 1, 1);
            let a = claim(store, "queue:q0", "w", 1, 0).remove(0);
            assert_eq!(a.async_process_id, "a");
            let process: i64 = processes::table
                .filter(processes::async_process_id.eq("a"))
                .select(processes::id)
                .first(&mut *store.conn().unwrap())
                .unwrap();
            let mut holder = PgConnection::establish(&db.url).unwrap();
            diesel::sql_query("SELECT pg_advisory_lock($1)").bind::<BigInt, _>(process).execute(&mut holder).unwrap();
            assert!(claim(store, "queue:q0", "w", 1, 11 * SECOND).is_empty(), "b waits: a's lease still holds the place");
            // The heartbeat takes the process's lock: once it is free, the lease comes back.
            diesel::sql_query("SELECT pg_advisory_unlock_all()").execute(&mut holder).unwrap();
            assert!(store.heartbeat(None, a.task_id, &a.lease_token, 10 * SECOND, 11 * SECOND).is_ok());
            assert!(claim(store, "queue:q0", "w", 1, 12 * SECOND).is_empty(), "a is live again");
            finish(store, &a, &[], 12 * SECOND).unwrap();
            assert_eq!(claim(store, "queue:q0", "w", 1, 12 * SECOND)[0].async_process_id, "b");
        }
    }

    on_both_backends! {
        fn a_queue_at_its_limit_leaves_a_claim_the_other_queues_work(store: &Store) {
            let mut definition = definition(&[FailurePolicy::Skip], 1);
            definition.steps[0].max_in_flight = Some(1);
            // More due tasks, first in claim order, than a claim of one reads.
            begin_new(store, &NewProcess { priority: 5, ..new_process("full", definition, 40, None) });
            queued(store, "other", "other", 3, 0);
            assert_eq!(claim(store, "queue:q0", "w", 1, 0).len(), 1, "the limit is reached");
            let got = claim_of(store, &["queue:q0", "queue:other"], 1, 0);
            assert_eq!(got.iter().map(|t| t.async_process_id.as_str()).collect::<Vec<_>>(), ["other"]);
        }
    }

    on_both_backends! {
        fn a_queue_that_was_idle_takes_turns_with_the_others_of_a_claim(store: &Store) {
            queued(store, "long", "a", 10, 0);
            assert_eq!(claim_of(store, &["queue:a"], 6, 0).len(), 6);
            queued(store, "new", "b", 3, 0);
            let order: Vec<String> =
                claim_of(store, &["queue:a", "queue:b"], 5, 0).into_iter().map(|t| t.async_process_id).collect();
            assert_eq!(order, ["long", "new", "long", "new", "long"], "numbered on from where claims were");
        }
    }

    on_both_backends! {
        fn claims_at_once_from_many_workers_never_pass_max_in_flight(store: &Store) {
            use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
            limited(store, "p", 3, 60);
            let (held, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
            std::thread::scope(|threads| {
                for worker in 0..6 {
                    let (held, most) = (&held, &most);
                    threads.spawn(move || loop {
                        let tasks = claim(store, "queue:q0", &format!("w{worker}"), 2, 0);
                        if tasks.is_empty() {
                            if status(store, "p").status.is_final() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        // Counted only while every one of them is surely leased.
                        most.fetch_max(held.fetch_add(tasks.len(), SeqCst) + tasks.len(), SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        held.fetch_sub(tasks.len(), SeqCst);
                        for task in &tasks {
                            finish(store, task, &[], 0).unwrap();
                        }
                    });
                }
            });
            let most = most.load(SeqCst);
            assert_eq!(most, 3, "at most 3 at once, reached only when claims overlap");
            assert_eq!(steps_of(&status(store, "p")), [(Status::Success, 60, 60, 60, 0)]);
        }
    }

    on_both_backends! {
        fn a_lease_that_expires_on_the_last_attempt_fails_the_items(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip], 2, 2);
            claim(store, "queue:q0", "w", 1, 0);
            claim(store, "queue:q0", "w", 1, 11 * SECOND);
            assert!(claim(store, "queue:q0", "w", 1, 22 * SECOND).is_empty(), "max_attempts is 2");
            let done = status(store, "p");
            assert_eq!(done.status, Status::Failed);
            let steps = done.steps.unwrap();
            let group = &steps[0].items.as_ref().unwrap().failed[0];
            assert_eq!((group.code, group.items.len()), (GAVE_UP_CODE, 2));
            assert!(group.status_message.contains("2 attempts"), "{}", group.status_message);
        }
    }

    on_both_backends! {
        fn a_give_up_that_aborts_the_process_leases_none_of_its_cancelled_tasks(store: &Store) {
            begin(store, "p", &[FailurePolicy::Abort], 4, 1);
            claim(store, "queue:q0", "w", 1, 0);
            claim(store, "queue:q0", "w", 1, 11 * SECOND);
            // The expired last attempt is given up, which aborts the process and cancels the
            // three other tasks that this same claim had already read as queued.
            assert!(claim(store, "queue:q0", "w", 10, 22 * SECOND).is_empty());
            let done = status(store, "p");
            assert_eq!(done.status, Status::Failed);
            assert_eq!(steps_of(&done), [(Status::Aborted, 1, 4, 0, 1)]);
        }
    }

    on_both_backends! {
        fn a_claim_hands_over_each_item_of_its_task_a_run_of_indices_or_not(store: &Store) {
            begin(store, "p", &[FailurePolicy::Skip, FailurePolicy::Skip], 5, 5);
            let items = |task: &ClaimedTask| {
                task.items.iter().map(|(i, item)| (*i, item.as_str().to_owned())).collect::<Vec<_>>()
            };
            let first = claim(store, "queue:q0", "w", 1, 0).remove(0);
            let all: Vec<(u64, String)> = (0..5).map(|n| (n, format!(r#"{{"n":{n}}}"#))).collect();
            assert_eq!(items(&first), all);
            finish(store, &first, &[1, 3], 0).unwrap();
            let second = claim(store, "queue:q1", "w", 1, 0).remove(0);
            assert_eq!(items(&second), [all[0].clone(), all[2].clone(), all[4].clone()], "the successes only");
        }
    }

    crate::postgres_test! {
        /// The due check waiting claims make every tick holds no row lock (PostgreSQL; SQLite
        /// has none): a claim elsewhere at that instant still gets the task. The look is made
        /// inside a transaction left open, so that any lock it took would still be held.
        fn looking_for_due_tasks_locks_no_row_a_claim_elsewhere_needs() {
            let db = crate::testing::postgres();
            let store = &db.store;
            begin(store, "p", &[FailurePolicy::Skip], 1, 1);
            let request = ClaimRequest {
                queues: vec!["queue:q0".into()],
                tenant: Some(TenantId::default_tenant()),
                worker_id: String::new(),
                max_tasks: 1,
                lease_micros: 0,
                now_micros: 0,
            };
            let mut looking = store.conn().unwrap();
            let claimed = looking
                .transaction(|conn| {
                    assert!(any_due(conn, &request)?, "the task is due");
                    Ok::<_, Error>(claim(store, "queue:q0", "w", 1, 0))
                })
                .unwrap();
            assert_eq!(claimed.iter().map(|t| t.async_process_id.as_str()).collect::<Vec<_>>(), ["p"]);
        }
    }

    crate::postgres_test! {
        /// While another transaction holds a process's lock (a completion being recorded,
        /// PostgreSQL), its queued tasks are still leased, so that its workers do not take
        /// turns; an expired last attempt, whose give-up records outcomes, waits for the lock,
        /// and a look passes over it.
        fn a_busy_process_s_queued_tasks_are_leased_and_its_give_ups_wait() {
            let db = crate::testing::postgres();
            let store = &db.store;
            begin(store, "busy", &[FailurePolicy::Skip], 4, 1);
            let first = claim(store, "queue:q0", "w", 1, 0);
            let again = claim(store, "queue:q0", "w", 1, 11 * SECOND);
            assert_eq!((again.len(), again[0].task_id, again[0].attempt), (1, first[0].task_id, 2));
            let busy: i64 = processes::table
                .filter(processes::async_process_id.eq("busy"))
                .select(processes::id)
                .first(&mut *store.conn().unwrap())
                .unwrap();
            let mut holder = PgConnection::establish(&db.url).unwrap();
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(busy)
                .execute(&mut holder)
                .unwrap();
            let leased = claim(store, "queue:q0", "w", 10, 22 * SECOND);
            assert_eq!(leased.len(), 3, "every queued task, the expired last attempt passed over");
            assert!(leased.iter().all(|t| t.task_id != first[0].task_id && t.attempt == 1));
            let request = ClaimRequest {
                queues: vec!["queue:q0".into()],
                tenant: None,
                worker_id: String::new(),
                max_tasks: 1,
                lease_micros: 0,
                now_micros: 22 * SECOND,
            };
            assert!(!any_due(&mut store.conn().unwrap(), &request).unwrap(), "only a busy give-up is due");
            // Unlocked by statement, not by dropping the connection: a closed socket frees
            // the lock only once the server notices, which can be after the next look.
            diesel::sql_query("SELECT pg_advisory_unlock_all()").execute(&mut holder).unwrap();
            assert!(any_due(&mut store.conn().unwrap(), &request).unwrap(), "the give-up, once free");
            assert!(claim(store, "queue:q0", "w", 10, 22 * SECOND).is_empty());
            let steps = status(store, "busy").steps.unwrap();
            let group = &steps[0].items.as_ref().unwrap().failed[0];
            assert_eq!((group.code, group.items.len()), (GAVE_UP_CODE, 1));
        }
    }

    crate::postgres_test! {
        /// A completion racing a claim that takes its expired lease over (PostgreSQL): the
        /// claim holds no process lock, so the task's row alone keeps them apart. The takeover
        /// is left uncommitted meanwhile; the completion waits for it, then sees the new token
        /// and records nothing.
        fn a_completion_waits_for_a_takeover_in_flight_and_is_refused() {
            let db = crate::testing::postgres();
            let store = &db.store;
            begin(store, "p", &[FailurePolicy::Skip], 2, 1);
            let old = claim(store, "queue:q0", "w", 1, 0).remove(0);
            let request = ClaimRequest {
                queues: vec!["queue:q0".into()],
                tenant: None,
                worker_id: "new".into(),
                max_tasks: 1,
                lease_micros: 10 * SECOND,
                now_micros: 11 * SECOND,
            };
            let (sent, completed) = mpsc::channel();
            let mut taking = store.conn().unwrap();
            taking
                .transaction(|conn| {
                    let new = super::claim(conn, &request)?;
                    assert_eq!((new.len(), new[0].task_id, new[0].attempt), (1, old.task_id, 2));
                    let (store, old) = (store.clone(), old.clone());
                    std::thread::spawn(move || sent.send(finish(&store, &old, &[], 11 * SECOND)));
                    assert!(
                        completed.recv_timeout(Duration::from_millis(500)).is_err(),
                        "the completion waits for the takeover's commit"
                    );
                    Ok::<_, Error>(())
                })
                .unwrap();
            let late = completed.recv_timeout(Duration::from_secs(20)).unwrap();
            assert!(matches!(late, Err(TaskError::Conflict(_))), "{late:?}");
            assert_eq!(steps_of(&status(store, "p")), [(Status::InProgress, 0, 2, 0, 0)]);
        }
    }
}
