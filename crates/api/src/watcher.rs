//! The shared watches of waiting readers (contract §6): every long-poll and event stream of
//! one lookup shares one watch, kept here with the ticks that tell readers how fresh it is.
//! The state holds the [`Watcher`]; what reads answers for it (the watch itself and its
//! ticker) is in `watch.rs`, above the answering it uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_engine_domain::{StatusQuery, TenantId};
use tokio::sync::watch;

use crate::answer::Answer;
use crate::params::StatusRequest;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchKey {
    pub tenant: TenantId,
    pub request: StatusRequest,
}

impl WatchKey {
    pub(crate) fn query(&self) -> StatusQuery {
        self.request.query(&self.tenant)
    }
}

/// A lookup's change marks (see `StatusReader::change_marks`).
pub(crate) type Marks = Vec<(i64, i64)>;

pub(crate) struct Entry {
    pub(crate) sender: watch::Sender<Arc<Answer>>,
    pub(crate) marks: Marks,
    pub(crate) unwatched_ticks: u32,
}

#[derive(Default)]
pub(crate) struct Watches {
    pub(crate) entries: HashMap<WatchKey, Entry>,
    pub(crate) ticking: bool,
}

/// The shared watches and their ticker. Cloning shares them.
#[derive(Clone)]
pub struct Watcher {
    pub(crate) watches: Arc<Mutex<Watches>>,
    /// Counts finished ticks, so a reader can wait for one that began after it arrived.
    pub(crate) ticks: Arc<watch::Sender<u64>>,
    pub(crate) interval: Duration,
}

impl Watcher {
    pub fn new(interval: Duration) -> Self {
        Self {
            watches: Arc::default(),
            ticks: Arc::new(watch::Sender::new(0)),
            interval: interval.max(Duration::from_millis(10)),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        // A panic while holding the lock leaves plain data behind; the next tick mends it.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends every wait at shutdown: long-polls answer 304 at once and event streams close,
    /// instead of holding the server's graceful stop for their whole length.
    pub fn close(&self) {
        self.lock().entries.clear();
        // Readers waiting for a fresh tick would wait for one that never comes.
        self.ticks.send_modify(|tick| *tick += 2);
    }

    /// Waits until a tick that began after this call has finished.
    pub async fn fresh_tick(&self) {
        let mut ticks = self.ticks.subscribe();
        let target = *ticks.borrow_and_update() + 2;
        while *ticks.borrow_and_update() < target {
            if ticks.changed().await.is_err() {
                return;
            }
        }
    }
}
