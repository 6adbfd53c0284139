//! Waiting readers (contract §6): every long-poll and event stream of one lookup shares one
//! watch. A single ticker checks each watched lookup's change marks (one small read of
//! `processes`) once per interval and reads the answer again only when they moved, so a
//! thousand clients waiting on one process cost the database what one does, and a waiting
//! client holds neither a connection nor a thread: it awaits a channel.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::stream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use crate::answer::Answer;
use crate::answering::read_answer_at;
use crate::auth::Scope;
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::params;
use crate::pool::blocking;
use crate::routing::resource;
use crate::state::AppState;
pub(crate) use crate::watcher::WatchKey;
use crate::watcher::{Entry, Marks, Watcher};

/// Ticks a watch outlives its last client: clients of a long-poll come back at once, and
/// find the answer still cached.
const GRACE_TICKS: u32 = 20;
/// A comment line this often keeps proxies from closing a quiet event stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/asyncprocesses/{id}/events", "GET, HEAD").route(web::get().to(events)));
}

/// `GET /v1/asyncprocesses/{id}/events`
#[utoipa::path(get, path = "/v1/asyncprocesses/{id}/events", tag = "status", operation_id = "streamAsyncProcessEvents",
    params(("id" = String, Path, description = "An asyncProcessId or a referenceId", min_length = 1, max_length = 255),
        ("idType" = Option<crate::schema::IdType>, Query, description = "Read the ID only as an asyncProcessId or only as a referenceId"),
        ("verbose" = Option<bool>, Query, description = "false: no itemsProcessed")),
    responses(
        (status = 200, description = "Server-Sent Events: a status event (the envelope, itemsList=false) now and at each change; closed after a final state", content_type = "text/event-stream", body = String),
        (status = 400, description = "A caller's mistake, named in technicalMessage (also: no such process)", body = Envelope),
        (status = 401, description = "No bearer token, or an unknown one (auth.enabled)", body = Envelope),
        (status = 403, description = "The key lacks the scope", body = Envelope),
        (status = 500, description = "The server failed; the cause is in its log", body = Envelope)))]
pub(crate) async fn events(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authorize(&req, Scope::StatusRead)?;
    let raw = req.match_info().get("id").unwrap_or_default();
    let id = params::parse_path_id(raw)?;
    let mut request = params::parse_status_query(id, req.query_string())?;
    // Events carry the steps' counters, never item lists: a stream of a large process stays small.
    request.shape.items_list = false;
    event_stream(&state, WatchKey { tenant: caller.tenant, request }).await
}

// The watch and its ticker read answers, so they live here, above `answering.rs`; the
// watches themselves are in `watcher.rs`, below the state that holds them.
impl Watcher {
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
            let asked = std::time::Instant::now();
            let marks = state.status.change_marks(&key.query())?;
            let answer = read_answer_at(&state, &key.tenant, &key.request, marks.clone(), asked)?;
            Ok::<_, ApiError>((marks, answer))
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
    let asked = std::time::Instant::now();
    let now = match state.status.change_marks(&key.query()) {
        Ok(now) if now == marks => {
            // Found unchanged: the held answer stays recent for `max-age` readers too.
            state.answers.get(&key.tenant, &key.request, &now, asked);
            return None;
        }
        Ok(now) => now,
        Err(error) => {
            tracing::error!(%error, "the status watcher could not read change marks");
            return None;
        }
    };
    let answer = match read_answer_at(state, &key.tenant, &key.request, now.clone(), asked) {
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
