//! Waiting readers (contract §6): every long-poll and event stream of one lookup shares one
//! watch. A single ticker checks each watched lookup's change marks (one small read of
//! `processes`) once per interval and reads the answer again only when they moved, so a
//! thousand clients waiting on one process cost the database what one does, and a waiting
//! client holds neither a connection nor a thread: it awaits a channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::header::{CACHE_CONTROL, HeaderValue};
use actix_web::web::Bytes;
use async_engine_domain::{StatusQuery, TenantId};
use futures_util::stream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use crate::AppState;
use crate::error::ApiError;
use crate::handlers::{Answer, blocking, read_answer};
use crate::params::StatusRequest;

/// Ticks a watch outlives its last client: clients of a long-poll come back at once, and
/// find the answer still cached.
const GRACE_TICKS: u32 = 20;
/// A comment line this often keeps proxies from closing a quiet event stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchKey {
    pub tenant: TenantId,
    pub request: StatusRequest,
}

impl WatchKey {
    fn query(&self) -> StatusQuery {
        StatusQuery {
            tenant: self.tenant.clone(),
            id: self.request.id.clone(),
            kind: self.request.kind,
            detail: self.request.detail(),
        }
    }
}

/// A lookup's change marks (see `StatusReader::change_marks`).
type Marks = Vec<(i64, i64)>;

struct Entry {
    sender: watch::Sender<Arc<Answer>>,
    marks: Marks,
    unwatched_ticks: u32,
}

#[derive(Default)]
struct Watches {
    entries: HashMap<WatchKey, Entry>,
    ticking: bool,
}

/// The shared watches and their ticker. Cloning shares them.
#[derive(Clone)]
pub struct Watcher {
    watches: Arc<Mutex<Watches>>,
    /// Counts finished ticks, so a reader can wait for one that began after it arrived.
    ticks: Arc<watch::Sender<u64>>,
    interval: Duration,
}

impl Watcher {
    pub fn new(interval: Duration) -> Self {
        Self {
            watches: Arc::default(),
            ticks: Arc::new(watch::Sender::new(0)),
            interval: interval.max(Duration::from_millis(10)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        // A panic while holding the lock leaves plain data behind; the next tick mends it.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches a lookup; `true` with a watch this call started, whose first value was read
    /// now. A shared watch's current value may be up to one tick old: callers that must not
    /// show a client anything older than it has seen wait for [`Watcher::fresh_tick`].
    /// A lookup that does not answer (an unknown ID) is the error, and starts no watch.
    pub async fn watch(
        &self,
        state: &AppState,
        key: WatchKey,
    ) -> Result<(watch::Receiver<Arc<Answer>>, bool), ApiError> {
        let shared = self.lock().entries.get(&key).map(|entry| entry.sender.subscribe());
        if let Some(receiver) = shared {
            return Ok((receiver, false));
        }
        let reading = (state.clone(), key.clone());
        let (marks, answer) = blocking(move || {
            let (state, key) = reading;
            // Marks first: a change after them is seen by the next tick.
            let marks = state.status.change_marks(&key.query())?;
            Ok::<_, ApiError>((marks, read_answer(&state, &key.tenant, &key.request)?))
        })
        .await??;
        let mut watches = self.lock();
        let receiver = match watches.entries.get(&key) {
            // Another client started the same watch meanwhile, with a read that may have
            // begun before ours.
            Some(entry) => (entry.sender.subscribe(), false),
            None => {
                let (sender, receiver) = watch::channel(Arc::new(answer));
                watches.entries.insert(key, Entry { sender, marks, unwatched_ticks: 0 });
                (receiver, true)
            }
        };
        if !watches.ticking {
            watches.ticking = true;
            let watcher = self.clone();
            let state = state.clone();
            actix_web::rt::spawn(async move { watcher.tick_while_watched(state).await });
        }
        Ok(receiver)
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

    async fn tick_while_watched(self, state: AppState) {
        // Should this task ever unwind, the next watch starts a new ticker.
        let _restart = RestartOnPanic(self.clone());
        loop {
            actix_web::rt::time::sleep(self.interval).await;
            let work: Vec<(WatchKey, Marks)> = {
                let mut watches = self.lock();
                watches.entries.retain(|_, entry| {
                    if entry.sender.receiver_count() == 0 {
                        entry.unwatched_ticks += 1;
                    } else {
                        entry.unwatched_ticks = 0;
                    }
                    entry.unwatched_ticks <= GRACE_TICKS
                });
                let waiting: usize = watches.entries.values().map(|e| e.sender.receiver_count()).sum();
                metrics::gauge!("async_engine_watched_lookups").set(watches.entries.len() as f64);
                metrics::gauge!("async_engine_waiting_clients").set(waiting as f64);
                if watches.entries.is_empty() {
                    watches.ticking = false;
                    drop(watches);
                    self.ticks.send_modify(|tick| *tick += 1);
                    return;
                }
                watches.entries.iter().map(|(key, entry)| (key.clone(), entry.marks.clone())).collect()
            };
            let reading = state.clone();
            let changed = blocking(move || {
                work.into_iter()
                    .filter_map(|(key, marks)| changed_answer(&reading, key, &marks))
                    .collect::<Vec<_>>()
            })
            .await;
            match changed {
                Ok(changed) => {
                    let mut watches = self.lock();
                    for (key, marks, answer) in changed {
                        if let Some(entry) = watches.entries.get_mut(&key) {
                            entry.marks = marks;
                            entry.sender.send_if_modified(|current| {
                                let modified = current.etag != answer.etag || current.status != answer.status;
                                *current = answer;
                                modified
                            });
                        }
                    }
                }
                Err(error) => tracing::error!(%error, "the status watcher could not check for changes"),
            }
            self.ticks.send_modify(|tick| *tick += 1);
        }
    }
}

struct RestartOnPanic(Watcher);

impl Drop for RestartOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().ticking = false;
        }
    }
}

/// The lookup's new marks and answer when its marks moved; `None` when nothing changed, or
/// when storage failed (logged; the next tick tries again).
fn changed_answer(
    state: &AppState,
    key: WatchKey,
    marks: &[(i64, i64)],
) -> Option<(WatchKey, Marks, Arc<Answer>)> {
    let now = match state.status.change_marks(&key.query()) {
        Ok(now) if now == marks => return None,
        Ok(now) => now,
        Err(error) => {
            tracing::error!(%error, "the status watcher could not read change marks");
            return None;
        }
    };
    let answer = match read_answer(state, &key.tenant, &key.request) {
        Ok(answer) => answer,
        // The lookup stopped answering (its process was purged): waiters are told so.
        Err(ApiError::Input(text)) => Answer::input_error(&text),
        Err(error) => {
            tracing::error!(%error, "the status watcher could not read a changed answer");
            return None;
        }
    };
    Some((key, now, Arc::new(answer)))
}

/// `waitSeconds` with `If-None-Match` (contract §6): the answer once it differs from every
/// tag the client holds, else 304 after `wait`.
pub async fn long_poll(
    state: &AppState,
    key: WatchKey,
    held: &[String],
    wait: Duration,
) -> Result<HttpResponse, ApiError> {
    let deadline = Instant::now() + wait;
    let (mut receiver, mut fresh) = state.watcher.watch(state, key).await?;
    loop {
        let current = receiver.borrow_and_update().clone();
        if !current.matches(held) {
            if fresh {
                return Ok(current.response());
            }
            // The client may have read a newer answer than the shared one (plain reads are
            // not cached): never answer it with an older one.
            if timeout_at(deadline, state.watcher.fresh_tick()).await.is_err() {
                return Ok(current.not_modified());
            }
            fresh = true;
            continue;
        }
        match timeout_at(deadline, receiver.changed()).await {
            // Newer than the answer the client holds, which the watch held a moment ago.
            Ok(Ok(())) => fresh = true,
            Ok(Err(_)) | Err(_) => return Ok(current.not_modified()),
        }
    }
}

/// `GET /v1/asyncprocesses/{id}/events` (contract §6): a `status` event now and at each change,
/// closed after a finished state; an `error` event if the lookup stops answering.
pub async fn event_stream(state: &AppState, key: WatchKey) -> Result<HttpResponse, ApiError> {
    let (mut receiver, fresh) = state.watcher.watch(state, key).await?;
    if !fresh {
        // The first event must be no older than what the client may have read just before.
        state.watcher.fresh_tick().await;
    }
    let first = receiver.borrow_and_update().clone();
    let events = stream::unfold((receiver, Some(first), false), |(mut receiver, next, closed)| async move {
        if closed {
            return None;
        }
        let answer = match next {
            Some(answer) => answer,
            None => match timeout(KEEP_ALIVE, receiver.changed()).await {
                Err(_) => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), (receiver, None, false)));
                }
                Ok(Err(_)) => return None,
                Ok(Ok(())) => receiver.borrow_and_update().clone(),
            },
        };
        let close = answer.finished || answer.etag.is_none();
        Some((Ok::<_, actix_web::Error>(event(&answer)), (receiver, None, close)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .streaming(events))
}

/// One server-sent event; the body may hold line breaks (items are kept as written), so
/// each line is its own `data:` field, which the client joins again.
fn event(answer: &Answer) -> Bytes {
    let mut text = String::with_capacity(answer.body.len() + 64);
    text.push_str(if answer.etag.is_some() { "event: status\n" } else { "event: error\n" });
    if let Some(etag) = &answer.etag {
        text.push_str("id: ");
        text.push_str(etag);
        text.push('\n');
    }
    // SSE ends a line at CR, LF or CRLF alike.
    let body = String::from_utf8_lossy(&answer.body).replace("\r\n", "\n").replace('\r', "\n");
    for line in body.split('\n') {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_keeps_every_line_break_of_the_body_inside_its_data() {
        let answer = Answer {
            status: actix_web::http::StatusCode::OK,
            body: Bytes::from_static(b"{\"a\":\r\n1,\r\"b\":\n2}"),
            etag: Some("\"t\"".into()),
            finished: false,
        };
        let text = String::from_utf8(event(&answer).to_vec()).unwrap();
        assert_eq!(text, "event: status\nid: \"t\"\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n");
        let error = Answer::input_error("gone");
        assert!(String::from_utf8(event(&error).to_vec()).unwrap().starts_with("event: error\ndata: {"));
    }
}
