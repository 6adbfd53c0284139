//! [`Worker`]: the loop every worker of a `queue:` step needs, once: claim (long-poll), run a
//! handler per task on its own thread, heartbeat while it runs, complete or fail with what it
//! returned, back off while the server is unreachable, and stop gracefully.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::types::{Claim, Outcomes, Task};
use crate::{Client, Error};

/// Why a handler could not give outcomes for its task; the task is given back with `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// Why, as the task's last error (and, when no attempt is left, every item's message).
    pub message: String,
    /// Whether another attempt may succeed (then the server retries it while attempts remain).
    pub retryable: bool,
}

impl TaskFailure {
    /// A failure another attempt may not have.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }

    /// A failure every attempt would have: the task's items are recorded failed at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }
}

/// What the worker does, for a progress display or a log; see [`Worker::on_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A task was leased and its handler starts.
    Claimed {
        /// The task.
        task: &'a Task,
    },
    /// A task's outcomes were recorded.
    Completed {
        /// The task.
        task: &'a Task,
        /// Items that succeeded.
        succeeded: usize,
        /// Items that failed.
        failed: usize,
        /// From claim to recorded.
        took: Duration,
    },
    /// A task was given back to the server with an error.
    Failed {
        /// The task.
        task: &'a Task,
        /// The error.
        message: &'a str,
        /// Whether the server may retry it.
        retryable: bool,
        /// From claim to given back.
        took: Duration,
    },
    /// The worker let go of a task without a result: its lease was lost, or the worker stopped
    /// before the task finished (then the task was given back to be retried at once).
    GivenUp {
        /// The task.
        task: &'a Task,
        /// Why.
        reason: &'a str,
    },
    /// A call failed for want of a server; it is tried again after `retry_in`.
    Unreachable {
        /// What went wrong.
        error: &'a Error,
        /// The pause before the next try.
        retry_in: Duration,
    },
    /// Stopping was asked for: no more claims; `running` tasks are being finished.
    Stopping {
        /// Tasks still running.
        running: usize,
    },
}

/// What a [`Worker::run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tasks completed with outcomes.
    pub completed: u64,
    /// Tasks given back with an error.
    pub failed: u64,
    /// Tasks let go of without a result (lease lost, or still running when the worker stopped).
    pub given_up: u64,
    /// Items recorded as succeeded.
    pub items_succeeded: u64,
    /// Items recorded as failed.
    pub items_failed: u64,
}

/// Asks a running [`Worker`] to stop; clones control the same worker. Safe to call from a
/// signal handler's thread.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicU8>);

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABANDONING: u8 = 2;

impl Stop {
    /// Claim nothing more, let running tasks finish (up to the worker's grace period), then
    /// return from [`Worker::run`].
    pub fn stop(&self) {
        let _ = self.0.compare_exchange(RUNNING, DRAINING, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Claim nothing more and give running tasks back now, to be retried at once.
    pub fn abandon(&self) {
        self.0.store(ABANDONING, Ordering::SeqCst);
    }

    /// Whether [`Stop::stop`] or [`Stop::abandon`] was called.
    pub fn is_stopping(&self) -> bool {
        self.0.load(Ordering::SeqCst) != RUNNING
    }

    fn is_abandoning(&self) -> bool {
        self.0.load(Ordering::SeqCst) == ABANDONING
    }
}

type Listener = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// A worker of one queue. Build it, then [`Worker::run`] it with a handler:
///
/// ```no_run
/// use async_engine_client::{Client, Outcomes, Worker};
///
/// let client = Client::new("http://127.0.0.1:8080")?;
/// Worker::new(client, "pricing").concurrency(4).run(|task| {
///     Ok(Outcomes::all_succeeded(task))
/// })?;
/// # Ok::<(), async_engine_client::Error>(())
/// ```
pub struct Worker {
    client: Client,
    queue: String,
    worker_id: String,
    concurrency: usize,
    max_tasks: Option<u64>,
    lease_secs: u32,
    wait_secs: u32,
    grace: Duration,
    stop: Stop,
    listener: Option<Listener>,
}

impl Worker {
    /// A worker of `queue` (the NAME of `queue:NAME` steps): one task at a time, 60 s leases,
    /// claims held up to 5 s, 30 s of grace on stop.
    pub fn new(client: Client, queue: impl Into<String>) -> Self {
        Self {
            client,
            queue: queue.into(),
            worker_id: format!("worker-{}", std::process::id()),
            concurrency: 1,
            max_tasks: None,
            lease_secs: 60,
            wait_secs: 5,
            grace: Duration::from_secs(30),
            stop: Stop::default(),
            listener: None,
        }
    }

    /// The name leases and the server's log know this worker by.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = id.into();
        self
    }

    /// How many tasks run at once, each on its own thread (at least 1). As many more are
    /// claimed ahead (their leases held and extended), so that a finished task's thread
    /// starts the next at once and claims come in batches.
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = tasks.max(1);
        self
    }

    /// Claim this many tasks in all, finish them, then return.
    pub fn max_tasks(mut self, tasks: u64) -> Self {
        self.max_tasks = Some(tasks);
        self
    }

    /// The lease asked for per claim and heartbeat (1..=3600 s; a step's `timeout_secs` may
    /// grant less). Heartbeats go out every third of the lease granted.
    pub fn lease_secs(mut self, secs: u32) -> Self {
        self.lease_secs = secs.clamp(1, 3_600);
        self
    }

    /// How long a claim may wait for a task when none is running (0..=30 s; at most 1 s while
    /// tasks run). Stopping waits for a claim in flight, so this also bounds how long a stop of
    /// an idle worker takes.
    pub fn wait_secs(mut self, secs: u32) -> Self {
        self.wait_secs = secs.min(30);
        self
    }

    /// How long a stop lets running tasks finish before giving them back.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Calls `listener` at each step of the work (it runs on the worker's threads: keep it quick).
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Stops on `stop` (one made before the worker, say for signal handlers installed first).
    pub fn with_stop(mut self, stop: Stop) -> Self {
        self.stop = stop;
        self
    }

    /// The handle that stops this worker.
    pub fn stopper(&self) -> Stop {
        self.stop.clone()
    }

    /// Claims and runs tasks until stopped or `max_tasks` are done, calling `handler` with
    /// each task on a thread of its own. The handler's outcomes are checked (every item once)
    /// and recorded; its error, a panic, or outcomes that do not check out give the task back
    /// (retryable unless the handler said otherwise). A server that cannot be reached is
    /// tried again with backoff; only an answer that no retry can change (a refused token, a
    /// bad queue name) ends the run with an error, after the running tasks finish.
    pub fn run<F>(&self, handler: F) -> Result<Summary, Error>
    where
        F: Fn(&Task) -> Result<Outcomes, TaskFailure> + Sync,
    {
        let shared = Shared::default();
        let mut fatal = None;
        let beating = AtomicBool::new(true);
        std::thread::scope(|scope| {
            scope.spawn(|| self.heartbeats(&shared, &beating));
            let mut claimed = 0_u64;
            let mut backoff = Backoff::default();
            while !self.stop.is_stopping() && self.max_tasks.is_none_or(|max| claimed < max) {
                // Claim a batch once every claimed task has started, up to one round of
                // `concurrency` ahead: a finishing task's thread takes the next one at once,
                // and the server sees one claim per batch rather than one per task.
                let pending = shared.slots().pending.len();
                let held = shared.running().len();
                let ahead = 2 * self.concurrency;
                if pending > 0 || held >= ahead {
                    shared.wait(Duration::from_millis(100));
                    continue;
                }
                let free = ahead - held;
                let left = self.max_tasks.map_or(u64::MAX, |max| max - claimed);
                let want = u32::try_from((free as u64).min(left).min(100)).unwrap_or(100);
                let claim = Claim {
                    queue: self.queue.clone(),
                    worker_id: self.worker_id.clone(),
                    max_tasks: want,
                    lease_seconds: Some(self.lease_secs),
                    // While tasks run, a stop must not wait long for a claim in flight.
                    wait_seconds: if held > 0 { self.wait_secs.min(1) } else { self.wait_secs },
                };
                match self.client.claim(&claim) {
                    Ok(tasks) => {
                        backoff.reset();
                        for task in tasks {
                            claimed += 1;
                            if self.stop.is_stopping() {
                                // Came back from a claim that was waiting when the stop came.
                                self.give_back(&shared, &task, "the worker stopped before starting the task");
                                continue;
                            }
                            let task = Arc::new(task);
                            shared.running().insert(task.task_id, Lease::new(&task, self.lease_secs));
                            let mut slots = shared.slots();
                            if slots.active < self.concurrency {
                                slots.active += 1;
                                drop(slots);
                                let (shared, handler) = (&shared, &handler);
                                scope.spawn(move || self.work(shared, handler, task));
                            } else {
                                slots.pending.push_back(task);
                            }
                        }
                    }
                    Err(error) if error.is_transient() => {
                        let retry_in = backoff.next();
                        self.emit(&Event::Unreachable { error: &error, retry_in });
                        self.pause(retry_in);
                    }
                    Err(error) => {
                        fatal = Some(error);
                        break;
                    }
                }
            }
            self.drain(&shared);
            beating.store(false, Ordering::SeqCst);
        });
        let summary = *shared.summary();
        fatal.map_or(Ok(summary), Err)
    }

    /// Waits for the tasks held: as long as they take after `max_tasks` or a fatal answer;
    /// once a stop is asked for, gives back those not started and waits up to the grace
    /// period for the rest; then gives back what is left.
    fn drain(&self, shared: &Shared) {
        let mut announced = false;
        let mut deadline = None;
        loop {
            if self.stop.is_stopping() {
                let unstarted: Vec<Arc<Task>> = shared.slots().pending.drain(..).collect();
                for task in unstarted {
                    if shared.running().remove(&task.task_id).is_some() {
                        self.give_back(shared, &task, "the worker stopped before starting the task");
                    }
                }
            }
            let running = shared.running().len();
            if running == 0 || self.stop.is_abandoning() {
                break;
            }
            if !announced {
                self.emit(&Event::Stopping { running });
                announced = true;
            }
            if self.stop.is_stopping()
                && Instant::now() >= *deadline.get_or_insert_with(|| Instant::now() + self.grace)
            {
                break;
            }
            shared.wait(Duration::from_millis(50));
        }
        let left: Vec<Lease> = shared.running().drain().map(|(_, lease)| lease).collect();
        for lease in left {
            lease.task.cancel();
            self.give_back(shared, &lease.task, "the worker stopped before the task finished");
        }
    }

    /// Gives a task back as retryable, so that another worker takes it at once rather than
    /// when its lease expires (which it does all the same if the server cannot be told).
    fn give_back(&self, shared: &Shared, task: &Task, reason: &str) {
        if let Err(error) = self.client.fail(task, reason, true) {
            tracing::warn!(task = task.task_id, %error, "could not give the task back");
        }
        shared.summary().given_up += 1;
        self.emit(&Event::GivenUp { task, reason });
    }

    /// A task thread: runs `first`, then tasks claimed ahead while there are any.
    fn work<F>(&self, shared: &Shared, handler: &F, first: Arc<Task>)
    where
        F: Fn(&Task) -> Result<Outcomes, TaskFailure> + Sync,
    {
        let mut next = Some(first);
        while let Some(task) = next {
            self.run_one(shared, handler, &task);
            let mut slots = shared.slots();
            next = slots.pending.pop_front();
            if next.is_none() {
                slots.active -= 1;
            }
            drop(slots);
            // The claiming loop waits for the tasks claimed ahead to start, or for room.
            shared.changed.notify_all();
        }
    }

    fn run_one<F>(&self, shared: &Shared, handler: &F, task: &Arc<Task>)
    where
        F: Fn(&Task) -> Result<Outcomes, TaskFailure> + Sync,
    {
        if task.is_cancelled() {
            // Its lease was lost while it waited its turn; the heartbeats said so.
            return;
        }
        let begun = Instant::now();
        self.emit(&Event::Claimed { task });
        let result = catch_unwind(AssertUnwindSafe(|| handler(task)))
            .unwrap_or_else(|_| Err(TaskFailure::retryable("the handler panicked")));
        // Whoever takes the lease out of `running` reports on it: here, or the drain or the
        // heartbeats when they gave it up first (then this result is dropped, unsent).
        let taken = shared.running().remove(&task.task_id);
        if taken.is_some() {
            self.report(shared, task, result, begun);
        }
    }

    fn report(&self, shared: &Shared, task: &Task, result: Result<Outcomes, TaskFailure>, begun: Instant) {
        let result = result.and_then(|outcomes| match outcomes.check(task) {
            Ok(()) => Ok(outcomes),
            Err(why) => Err(TaskFailure::retryable(format!("the handler's outcomes: {why}"))),
        });
        let sent = match &result {
            Ok(outcomes) => self.persist(|| self.client.complete(task, outcomes)),
            Err(failure) => self.persist(|| self.client.fail(task, &failure.message, failure.retryable)),
        };
        let took = begun.elapsed();
        let mut summary = shared.summary();
        match (sent, result) {
            (Ok(()), Ok(outcomes)) => {
                summary.completed += 1;
                summary.items_succeeded += outcomes.succeeded() as u64;
                summary.items_failed += outcomes.failed() as u64;
                drop(summary);
                self.emit(&Event::Completed {
                    task,
                    succeeded: outcomes.succeeded(),
                    failed: outcomes.failed(),
                    took,
                });
            }
            (Ok(()), Err(failure)) => {
                summary.failed += 1;
                drop(summary);
                let (message, retryable) = (failure.message.as_str(), failure.retryable);
                self.emit(&Event::Failed { task, message, retryable, took });
            }
            (Err(error), _) => {
                summary.given_up += 1;
                drop(summary);
                let reason = if error.is_lease_lost() {
                    "the lease was lost (it expired and may have been taken over); nothing was recorded"
                        .to_owned()
                } else {
                    format!(
                        "the result could not be sent ({error}); the lease will expire and the task run again"
                    )
                };
                self.emit(&Event::GivenUp { task, reason: &reason });
            }
        }
    }

    /// Sends a result, trying again while the server is unreachable, for up to a lease.
    fn persist(&self, send: impl Fn() -> Result<(), Error>) -> Result<(), Error> {
        let until = Instant::now() + Duration::from_secs(u64::from(self.lease_secs));
        let mut backoff = Backoff::default();
        loop {
            match send() {
                Err(error) if error.is_transient() && Instant::now() < until => {
                    let retry_in = backoff.next();
                    self.emit(&Event::Unreachable { error: &error, retry_in });
                    std::thread::sleep(retry_in);
                }
                other => return other,
            }
        }
    }

    fn heartbeats(&self, shared: &Shared, beating: &AtomicBool) {
        while beating.load(Ordering::SeqCst) {
            let now = Instant::now();
            let due: Vec<Arc<Task>> = shared
                .running()
                .values()
                .filter(|lease| now >= lease.next_beat)
                .map(|lease| lease.task.clone())
                .collect();
            for task in due {
                let answer = self.client.heartbeat(&task, self.lease_secs);
                let mut running = shared.running();
                match answer {
                    Ok(()) => {
                        if let Some(lease) = running.get_mut(&task.task_id) {
                            lease.next_beat = Instant::now() + lease.interval;
                        }
                    }
                    Err(error) if error.is_lease_lost() => {
                        if running.remove(&task.task_id).is_some() {
                            drop(running);
                            task.cancel();
                            shared.summary().given_up += 1;
                            self.emit(&Event::GivenUp { task: &task, reason: "the lease was lost" });
                        }
                    }
                    Err(error) => {
                        // Tried again within a second; the lease has two thirds left.
                        if let Some(lease) = running.get_mut(&task.task_id) {
                            lease.next_beat = Instant::now() + Duration::from_secs(1);
                        }
                        tracing::warn!(task = task.task_id, %error, "heartbeat failed");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sleeps, waking early when stopped.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while !self.stop.is_stopping() && Instant::now() < until {
            std::thread::sleep(
                Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())),
            );
        }
    }

    fn emit(&self, event: &Event<'_>) {
        match event {
            Event::Unreachable { error, retry_in } => {
                tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "server unreachable");
            }
            Event::GivenUp { task, reason } => tracing::warn!(task = task.task_id, reason, "task given up"),
            Event::Failed { task, message, .. } => {
                tracing::info!(task = task.task_id, message, "task failed")
            }
            _ => tracing::debug!(?event, "worker"),
        }
        if let Some(listener) = &self.listener {
            listener(event);
        }
    }
}

/// A task the worker holds, and when to extend its lease next.
struct Lease {
    task: Arc<Task>,
    interval: Duration,
    next_beat: Instant,
}

impl Lease {
    fn new(task: &Arc<Task>, asked_secs: u32) -> Self {
        // The server may grant less than asked (a step's timeout_secs caps the lease): beat at
        // a third of what was granted, as far as the local clock can tell, and at least 1 s.
        let asked = Duration::from_secs(u64::from(asked_secs));
        let granted = chrono::DateTime::parse_from_rfc3339(&task.lease_expires_at)
            .ok()
            .and_then(|end| (end.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok())
            .filter(|d| !d.is_zero())
            .map_or(asked, |d| d.min(asked));
        let interval = (granted / 3).max(Duration::from_secs(1));
        Self { task: task.clone(), interval, next_beat: Instant::now() + interval }
    }
}

/// Task threads, and the tasks claimed ahead that wait for one.
#[derive(Default)]
struct Slots {
    active: usize,
    pending: VecDeque<Arc<Task>>,
}

#[derive(Default)]
struct Shared {
    /// Every lease held, started or not: what heartbeats extend.
    running: Mutex<HashMap<i64, Lease>>,
    slots: Mutex<Slots>,
    changed: Condvar,
    summary: Mutex<Summary>,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, HashMap<i64, Lease>> {
        // A panic holding the lock is caught by run_one's catch_unwind before it could poison
        // anything but the handler's own state; keep going with the map as it is.
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn summary(&self) -> MutexGuard<'_, Summary> {
        self.summary.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until a task finishes or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let running = self.running();
        let _ = self.changed.wait_timeout(running, timeout);
    }
}

/// 0.5 s, doubling, at most 30 s.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = Duration::from_millis(500) * 2_u32.pow(self.0.min(6));
        self.0 += 1;
        pause.min(Duration::from_secs(30))
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds_and_resets() {
        let mut backoff = Backoff::default();
        let pauses: Vec<u64> = (0..8).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(pauses, [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(500));
    }

    #[test]
    fn a_stop_drains_and_an_abandon_wins_over_it() {
        let stop = Stop::default();
        assert!(!stop.is_stopping());
        stop.stop();
        assert!(stop.is_stopping() && !stop.is_abandoning());
        stop.abandon();
        stop.stop();
        assert!(stop.is_abandoning());
    }

    #[test]
    fn heartbeats_follow_the_lease_granted() {
        let task = |expires: String| {
            Arc::new(
                serde_json::from_value::<Task>(serde_json::json!({
                    "taskId": 1, "leaseToken": "t", "asyncProcessId": "p", "referenceId": "r",
                    "asyncProcessName": "n", "stepNumber": 0, "stepName": "s", "attempt": 1,
                    "leaseExpiresAt": expires, "additionalData": {}, "items": [] }))
                .unwrap(),
            )
        };
        let in_secs = |s| (chrono::Utc::now() + chrono::Duration::seconds(s)).to_rfc3339();
        // Granted 60 of 60 asked: every 20 s (within the second the test takes).
        let beat = Lease::new(&task(in_secs(60)), 60).interval.as_secs();
        assert!((19..=20).contains(&beat), "{beat}");
        // A step's 9 s timeout capped it: every 3 s.
        assert!((2..=3).contains(&Lease::new(&task(in_secs(9)), 60).interval.as_secs()));
        // An answer that cannot be read: what was asked for.
        assert_eq!(Lease::new(&task("soon".into()), 30).interval, Duration::from_secs(10));
        // Never more often than every second.
        assert_eq!(Lease::new(&task(in_secs(1)), 60).interval, Duration::from_secs(1));
    }
}
