//! Waiting claims (`waitSeconds` on `POST /v1/tasks/claim`): claims that found nothing wait
//! for a wake-up instead of asking the database again and again. They are woken from the
//! signals the engine's own workers use: new work made on this node (a start, a retry, a
//! completion, a task given back) pokes one shared checker at once, and the same checker
//! looks every interval for work made elsewhere (other nodes, expired leases, retries whose
//! backoff ran out). The checker costs one small read per waited-on (tenant, queue) per look,
//! however many claims wait on it, and wakes one waiting claim of a queue only when a task
//! there is due; a claim that leased all it asked for passes the wake-up on to the next one.
//! A waiting claim is a future awaiting a `Notify`: it holds no connection and no thread.
//! Waiting claims are capped per caller: its API key, or without auth its client address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_engine_domain::{ClaimRequest, TaskStore, TenantId};
use tokio::sync::Notify;

use crate::clock::now_micros;
use crate::error::ApiError;
use crate::pool::blocking;

/// What a caller over the cap is told to wait before asking again.
const RETRY_AFTER_SECS: u64 = 1;

/// The queue of one tenant that claims wait on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Waited {
    tenant: TenantId,
    queue: String,
}

impl Waited {
    /// The due check of the queue: only the queue and the tenant matter to it.
    fn request(&self, now_micros: i64) -> ClaimRequest {
        ClaimRequest {
            queues: vec![self.queue.clone()],
            tenant: Some(self.tenant.clone()),
            worker_id: String::new(),
            max_tasks: 1,
            lease_micros: 0,
            now_micros,
        }
    }
}

struct Waiters {
    count: usize,
    ready: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    queues: HashMap<Waited, Waiters>,
    /// Waiting claims per caller, keyed by [`caller_key`].
    per_key: HashMap<String, usize>,
    ticking: bool,
    /// Counts the checkers started, so that one ending resets `ticking` only for itself.
    generation: u64,
    closed: bool,
}

struct Inner {
    table: Mutex<Table>,
    /// Set by a poke until the checker takes it, so that a burst of pokes costs one look.
    poked: AtomicBool,
    poke: Notify,
    interval: Duration,
    max_per_key: usize,
}

/// This node's waiting claims and their one checker. Cloning shares them.
#[derive(Clone)]
pub struct ClaimWaiters(Arc<Inner>);

impl Default for ClaimWaiters {
    /// `engine.idle_poll_ms` and `limits.max_waiting_claims_per_key` as shipped.
    fn default() -> Self {
        Self::new(Duration::from_millis(250), 16)
    }
}

impl ClaimWaiters {
    /// `interval`: how often the checker looks for work made elsewhere; `max_per_key`: how
    /// many claims one API key may have waiting at once.
    pub fn new(interval: Duration, max_per_key: usize) -> Self {
        Self(Arc::new(Inner {
            table: Mutex::default(),
            poked: AtomicBool::new(false),
            poke: Notify::new(),
            interval: interval.max(Duration::from_millis(10)),
            max_per_key: max_per_key.max(1),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves plain counts behind.
        self.0.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New work may be due on this node: the checker looks now rather than at its next tick.
    /// Cheap and never blocks, so it may be called from any thread.
    pub fn poke(&self) {
        if !self.0.poked.swap(true, Ordering::SeqCst) {
            self.0.poke.notify_one();
        }
    }

    /// Ends every wait at shutdown: waiting claims answer with no tasks at once, and new ones
    /// do not wait.
    pub fn close(&self) {
        let mut table = self.lock();
        table.closed = true;
        for waiters in table.queues.values() {
            waiters.ready.notify_waiters();
        }
    }

    /// Counts a claim as waiting on `queue` of `tenant` from now on, until the returned guard
    /// is dropped; starts the checker if none runs. `None` after [`ClaimWaiters::close`]. Over
    /// `key`'s cap (a [`caller_key`]) the 429 to answer if a claim without waiting finds nothing.
    pub fn enter(
        &self,
        store: &Arc<dyn TaskStore>,
        key: &str,
        tenant: &TenantId,
        queue: &str,
    ) -> Result<Option<Waiting>, ApiError> {
        let key = key.to_owned();
        let waited = Waited { tenant: tenant.clone(), queue: queue.to_owned() };
        let mut table = self.lock();
        if table.closed {
            return Ok(None);
        }
        let held = table.per_key.entry(key.clone()).or_default();
        if *held >= self.0.max_per_key {
            return Err(ApiError::TooManyWaitingClaims {
                limit: self.0.max_per_key,
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        *held += 1;
        let waiters = table
            .queues
            .entry(waited.clone())
            .or_insert_with(|| Waiters { count: 0, ready: Arc::new(Notify::new()) });
        waiters.count += 1;
        let ready = waiters.ready.clone();
        let start = !table.ticking;
        if start {
            table.ticking = true;
            table.generation += 1;
        }
        let generation = table.generation;
        // Spawned with the lock released: a task dropped at once takes the lock to say so.
        drop(table);
        if start {
            // Made before the task and moved into it: however the task ends (returns, panics,
            // or is dropped unpolled or mid-wait with its runtime), the next claim starts one.
            let ended = CheckerEnded { waiters: self.clone(), generation };
            let checker = self.clone();
            let store = store.clone();
            actix_web::rt::spawn(async move {
                let _ended = ended;
                checker.check_while_waited(store).await;
            });
        }
        Ok(Some(Waiting { waiters: self.clone(), key, waited, ready }))
    }

    /// The checker: alive while any claim waits.
    async fn check_while_waited(self, store: Arc<dyn TaskStore>) {
        loop {
            // A poke ends the pause early; one that came while no checker ran is a stored
            // permit, so a new checker looks at once.
            let _ = tokio::time::timeout(self.0.interval, self.0.poke.notified()).await;
            // Before the reads: a poke from now on is for work they may not see.
            self.0.poked.store(false, Ordering::SeqCst);
            let waited: Vec<(Waited, Arc<Notify>)> = {
                let mut table = self.lock();
                let waiting: usize = table.queues.values().map(|w| w.count).sum();
                metrics::gauge!("async_engine_waiting_claims").set(waiting as f64);
                if table.queues.is_empty() || table.closed {
                    table.ticking = false;
                    return;
                }
                table.queues.iter().map(|(waited, waiters)| (waited.clone(), waiters.ready.clone())).collect()
            };
            let checking = store.clone();
            let due = blocking(move || {
                let now = now_micros();
                waited
                    .into_iter()
                    .filter(|(waited, _)| match checking.any_due(&waited.request(now)) {
                        Ok(due) => due,
                        Err(error) => {
                            tracing::error!(%error, queue = %waited.queue, "waiting claims: could not look for due tasks");
                            false
                        }
                    })
                    .map(|(_, ready)| ready)
                    .collect::<Vec<_>>()
            })
            .await;
            match due {
                // One claim per queue; it passes the wake-up on if it may have left work.
                Ok(due) => due.iter().for_each(|ready| ready.notify_one()),
                Err(error) => tracing::error!(%error, "waiting claims: the due check did not run"),
            }
        }
    }
}

/// Marks the checker it belongs to as gone when its task ends in any way. A checker that
/// returned already said so (under the lock, with the table it saw empty); by then a newer one
/// may run, which this leaves alone.
struct CheckerEnded {
    waiters: ClaimWaiters,
    generation: u64,
}

impl Drop for CheckerEnded {
    fn drop(&mut self) {
        let mut table = self.waiters.lock();
        if table.generation == self.generation {
            table.ticking = false;
        }
    }
}

/// One waiting claim, counted until dropped (also when its client goes away mid-wait).
pub struct Waiting {
    waiters: ClaimWaiters,
    key: String,
    waited: Waited,
    ready: Arc<Notify>,
}

impl Waiting {
    /// Woken when a task of the queue may be due (or at shutdown). Enable the `Notified`
    /// before claiming, so that a wake-up during the claim is not lost.
    pub fn ready(&self) -> Arc<Notify> {
        self.ready.clone()
    }

    /// The claim leased all it asked for, so more may be due: the next waiting claim of the
    /// queue looks too.
    pub fn pass_on(&self) {
        self.ready.notify_one();
    }

    pub fn closed(&self) -> bool {
        self.waiters.lock().closed
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut table = self.waiters.lock();
        if let Some(held) = table.per_key.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                table.per_key.remove(&self.key);
            }
        }
        if let Some(waiters) = table.queues.get_mut(&self.waited) {
            waiters.count = waiters.count.saturating_sub(1);
            if waiters.count == 0 {
                table.queues.remove(&self.waited);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_engine_domain::work::MockTaskStore;

    use super::*;

    /// A store whose due check answers `due` and counts its calls.
    fn store(due: bool) -> (Arc<dyn TaskStore>, Arc<AtomicUsize>) {
        let checks = Arc::new(AtomicUsize::new(0));
        let counter = checks.clone();
        let mut store = MockTaskStore::new();
        store.expect_any_due().returning(move |request| {
            assert_eq!(
                (request.queues.as_slice(), request.tenant.as_ref()),
                (["queue:q".to_owned()].as_slice(), Some(&TenantId::default_tenant()))
            );
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(due)
        });
        (Arc::new(store), checks)
    }

    fn enter(
        waiters: &ClaimWaiters,
        store: &Arc<dyn TaskStore>,
        key: &str,
    ) -> Result<Option<Waiting>, ApiError> {
        waiters.enter(store, key, &TenantId::default_tenant(), "queue:q")
    }

    #[actix_web::test]
    async fn a_poke_makes_the_checker_look_at_once_and_wake_a_claim_of_a_queue_with_due_work() {
        let waiters = ClaimWaiters::new(Duration::from_secs(600), 4);
        let (store, checks) = store(true);
        let waiting = enter(&waiters, &store, "k").unwrap().unwrap();
        let ready = waiting.ready();
        let woken = ready.notified();
        waiters.poke();
        waiters.poke();
        tokio::time::timeout(Duration::from_secs(10), woken).await.expect("woken long before the interval");
        assert_eq!(checks.load(Ordering::SeqCst), 1, "two pokes in a row, one look");
    }

    #[actix_web::test]
    async fn nothing_due_wakes_no_one() {
        let waiters = ClaimWaiters::new(Duration::from_millis(10), 4);
        let (store, checks) = store(false);
        let waiting = enter(&waiters, &store, "k").unwrap().unwrap();
        let ready = waiting.ready();
        let woken = ready.notified();
        assert!(tokio::time::timeout(Duration::from_millis(300), woken).await.is_err());
        assert!(checks.load(Ordering::SeqCst) >= 1, "the queue was looked at");
    }

    #[actix_web::test]
    async fn each_key_has_its_cap_and_a_finished_wait_makes_room() {
        let waiters = ClaimWaiters::new(Duration::from_secs(600), 2);
        let (store, _) = store(false);
        let first = enter(&waiters, &store, "a").unwrap();
        let _second = enter(&waiters, &store, "a").unwrap();
        assert!(matches!(
            enter(&waiters, &store, "a"),
            Err(ApiError::TooManyWaitingClaims { limit: 2, retry_after_secs: 1 })
        ));
        assert!(enter(&waiters, &store, "b").unwrap().is_some(), "another key");
        drop(first);
        assert!(enter(&waiters, &store, "a").unwrap().is_some());
    }

    #[test]
    fn a_checker_dropped_without_a_panic_is_started_again_by_the_next_claim() {
        let waiters = ClaimWaiters::new(Duration::from_secs(600), 4);
        let (store, checks) = store(true);
        // A worker's runtime that stops while its checker waits (a shutdown, a restarted
        // worker): the checker's task is dropped, not unwound.
        let first = actix_web::rt::System::new().block_on(async {
            let waiting = enter(&waiters, &store, "k").unwrap().unwrap();
            actix_web::rt::task::yield_now().await;
            waiting
        });
        assert_eq!(checks.load(Ordering::SeqCst), 0, "the dropped checker never looked");
        actix_web::rt::System::new().block_on(async {
            let second = enter(&waiters, &store, "k").unwrap().unwrap();
            let ready = second.ready();
            let woken = ready.notified();
            waiters.poke();
            tokio::time::timeout(Duration::from_secs(10), woken)
                .await
                .expect("a new checker looked and woke the claim");
        });
        assert_eq!(checks.load(Ordering::SeqCst), 1);
        drop(first);
    }

    #[actix_web::test]
    async fn closing_ends_every_wait_and_refuses_new_ones() {
        let waiters = ClaimWaiters::new(Duration::from_secs(600), 4);
        let (store, _) = store(false);
        let waiting = enter(&waiters, &store, "k").unwrap().unwrap();
        let ready = waiting.ready();
        let woken = ready.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        waiters.close();
        tokio::time::timeout(Duration::from_secs(10), woken).await.expect("woken by the close");
        assert!(waiting.closed());
        assert!(enter(&waiters, &store, "k").unwrap().is_none(), "no new waits");
    }
}
