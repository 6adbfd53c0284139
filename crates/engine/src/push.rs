//! Push steps (`handler = "http"`): threads that claim the tasks of `http:` queues, POST each
//! to its step's endpoint (signed like notifications), and record a 2xx answer of the
//! `complete` shape through the same `TaskStore::complete` a worker's completion takes; any
//! other answer fails the attempt as retryable, with the reason kept as the task's error.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_engine_domain::{
    ClaimRequest, ClaimedTask, FailureSnapshot, PushTarget, RawJson, TaskError, TaskReport, TaskStore,
};
use serde::{Deserialize, Serialize};

use crate::notify::{
    ATTEMPT_HEADER, Allowed, SIGNATURE_HEADER, error_chain, outbound_client, signature, url_host,
};
use crate::{Running, Waker, claim_backoff, now_micros, persist, settle};

/// The stable id of a task, the same at every attempt: receivers drop repeats by it.
pub const TASK_HEADER: &str = "X-Async-Engine-Task";
/// The longest answer read; a complete answer for 10,000 items with long messages fits.
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;
/// What one `statusMessage` may hold, as for a worker's completion.
const MAX_MESSAGE_CHARS: usize = 1_000;

#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Requests in flight at once over every push step (`engine.push_concurrency`): one
    /// thread each.
    pub concurrency: usize,
    /// Lease of a claimed task (capped by its step's `timeout_secs`); a request gets four
    /// fifths of it, so that its answer is recorded while the lease holds.
    pub lease: Duration,
    pub idle_poll: Duration,
    /// Prefix of worker ids.
    pub node: String,
    /// `notifications.signing_secret`, for steps without a secret of their own.
    pub signing_secret: Option<String>,
}

/// The body POSTed for one task (the task of a claim, contract §4.4, without its lease).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PushBody<'a> {
    async_process_id: &'a str,
    reference_id: &'a str,
    async_process_name: &'a str,
    step_number: u32,
    step_name: &'a str,
    task_id: i64,
    attempt: u32,
    additional_data: &'a RawJson,
    items: Vec<PushItem<'a>>,
}

#[derive(Serialize)]
struct PushItem<'a> {
    index: u64,
    item: &'a RawJson,
}

/// The answer: the body of `POST /v1/tasks/{taskId}/complete` without `leaseToken`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Answer {
    #[serde(default)]
    successfully: Vec<u64>,
    #[serde(default)]
    failed: Vec<FailedGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailedGroup {
    items: Vec<u64>,
    code: i64,
    status_message: String,
}

fn body(task: &ClaimedTask) -> String {
    let body = PushBody {
        async_process_id: &task.async_process_id,
        reference_id: &task.reference_id,
        async_process_name: &task.process_name,
        step_number: task.step_number,
        step_name: &task.step_name,
        task_id: task.task_id,
        attempt: task.attempt,
        additional_data: &task.additional_data,
        items: task.items.iter().map(|(index, item)| PushItem { index: *index, item }).collect(),
    };
    // Strings, numbers and JSON text already checked: serialising cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

/// The report an answer's bytes give, or why they give none.
fn report(answer: &[u8]) -> Result<TaskReport, String> {
    let answer: Answer = serde_json::from_slice(answer)
        .map_err(|e| format!("the answer is not a complete body (successfully, failed): {e}"))?;
    for group in &answer.failed {
        let chars = group.status_message.chars().count();
        if chars == 0 || chars > MAX_MESSAGE_CHARS || group.status_message.chars().any(char::is_control) {
            return Err(format!(
                "the answer's statusMessage must have 1 to {MAX_MESSAGE_CHARS} characters and no control characters"
            ));
        }
    }
    Ok(TaskReport {
        successes: answer.successfully,
        failures: answer
            .failed
            .into_iter()
            .map(|g| FailureSnapshot { code: g.code, status_message: g.status_message, items: g.items })
            .collect(),
    })
}

/// Requests in flight per step queue, bounded by each step's `max_in_flight`. A thread
/// reserves a slot of every step with one free before it claims, and keeps only the slot of
/// the task it got: two threads never both take a step's last slot.
struct Slots {
    limits: HashMap<String, u32>,
    in_flight: Mutex<HashMap<String, u32>>,
}

impl Slots {
    fn new(targets: &HashMap<String, PushTarget>) -> Self {
        let limits =
            targets.iter().map(|(queue, target)| (queue.clone(), target.max_in_flight.max(1))).collect();
        Self { limits, in_flight: Mutex::new(HashMap::new()) }
    }

    fn reserve(&self) -> Vec<String> {
        let Ok(mut in_flight) = self.in_flight.lock() else { return Vec::new() };
        let mut queues: Vec<String> = Vec::new();
        for (queue, limit) in &self.limits {
            let used = in_flight.entry(queue.clone()).or_insert(0);
            if *used < *limit {
                *used += 1;
                queues.push(queue.clone());
            }
        }
        queues.sort();
        queues
    }

    fn release(&self, queue: &str) {
        if let Ok(mut in_flight) = self.in_flight.lock()
            && let Some(used) = in_flight.get_mut(queue)
        {
            *used = used.saturating_sub(1);
        }
    }
}

/// How idle push threads wait. A wake (new work on this node, a finished request) rouses
/// one of them, which rouses the next when it got a task, so a burst of wakes costs one claim
/// rather than one per thread; and when nothing wakes them, one idle thread looks per
/// `idle_poll`, whatever their number (the others find a look made too recently and wait on).
#[derive(Default)]
struct Idle {
    /// Bumped by every poke, so a poke between a thread's empty claim and its wait is kept.
    generation: Mutex<u64>,
    changed: Condvar,
    last_look: Mutex<Option<Instant>>,
}

impl Idle {
    fn generation(&self) -> u64 {
        self.generation.lock().map(|g| *g).unwrap_or(0)
    }

    fn poke(&self, everyone: bool) {
        if let Ok(mut generation) = self.generation.lock() {
            *generation = generation.wrapping_add(1);
        }
        if everyone { self.changed.notify_all() } else { self.changed.notify_one() }
    }

    /// Waits for a poke after `seen`, or until it is this thread's turn to look again.
    fn wait(&self, seen: u64, poll: Duration, stop: &AtomicBool) {
        loop {
            let Ok(guard) = self.generation.lock() else { return };
            if *guard != seen || stop.load(Ordering::SeqCst) {
                return;
            }
            let poked = match self.changed.wait_timeout(guard, poll) {
                Ok((guard, _)) => *guard != seen,
                Err(_) => return,
            };
            if poked || stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(mut last) = self.last_look.lock() else { return };
            if last.is_none_or(|at| at.elapsed() >= poll) {
                *last = Some(Instant::now());
                return;
            }
        }
    }

    /// A look that found nothing: the others need not look again for a while.
    fn looked(&self) {
        if let Ok(mut last) = self.last_look.lock() {
            *last = Some(Instant::now());
        }
    }
}

/// Starts the push threads for these steps' targets; stop them with [`Running::stop`].
/// `allowed` is `engine.push_allowed_hosts` as this node has it, asked before every attempt.
pub fn start_pusher(
    store: Arc<dyn TaskStore>,
    targets: Vec<PushTarget>,
    allowed: Allowed,
    config: PushConfig,
    waker: Waker,
) -> std::io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let targets: HashMap<String, PushTarget> =
        targets.into_iter().map(|target| (format!("http:{}", target.name), target)).collect();
    let slots = Arc::new(Slots::new(&targets));
    let idle = Arc::new(Idle::default());
    let pusher =
        Arc::new(Pusher { store, targets, allowed, config, slots, waker: waker.clone(), idle: idle.clone() });
    let mut threads = Vec::new();
    if !pusher.targets.is_empty() {
        let stopping = stop.clone();
        // Stopping (which sets the flag, then wakes) rouses every thread; other wakes one.
        waker.listen(Arc::new(move || idle.poke(stopping.load(Ordering::SeqCst))));
        for n in 0..pusher.config.concurrency.max(1) {
            let (pusher, stop) = (pusher.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new().name(format!("push-{n}")).spawn(move || pusher.run(n, &stop))?,
            );
        }
        let mut queues: Vec<&String> = pusher.targets.keys().collect();
        queues.sort();
        tracing::info!(threads = threads.len(), ?queues, "push steps started");
    }
    Ok(Running { stop, waker, threads })
}

struct Pusher {
    store: Arc<dyn TaskStore>,
    /// By queue (`http:PROCESS/STEP`).
    targets: HashMap<String, PushTarget>,
    allowed: Allowed,
    config: PushConfig,
    slots: Arc<Slots>,
    waker: Waker,
    idle: Arc<Idle>,
}

/// How one attempt ended, before it is recorded: the report, or the metric's outcome and the
/// error kept with the task.
type Sent = Result<TaskReport, (&'static str, String)>;

impl Pusher {
    fn run(&self, n: usize, stop: &AtomicBool) {
        // Each request sets its own timeout: what is left of its lease.
        let client = match outbound_client(None) {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "could not build the push HTTP client; this push thread stops");
                return;
            }
        };
        let worker_id = format!("{}-push-{n}", self.config.node);
        let lease_micros = i64::try_from(self.config.lease.as_micros()).unwrap_or(i64::MAX);
        let mut failures = 0_u32;
        while !stop.load(Ordering::SeqCst) {
            let seen = self.idle.generation();
            let queues = self.slots.reserve();
            if queues.is_empty() {
                // Every step is at its max_in_flight; a finished request pokes us.
                self.idle.wait(seen, self.config.idle_poll, stop);
                continue;
            }
            let request = ClaimRequest {
                tenant: None,
                queues: queues.clone(),
                worker_id: worker_id.clone(),
                max_tasks: 1,
                lease_micros,
                now_micros: now_micros(),
            };
            let claimed = self.store.claim(&request);
            let task = claimed.as_ref().ok().and_then(|tasks| tasks.first());
            for queue in &queues {
                if task.is_none_or(|task| &task.queue != queue) {
                    self.slots.release(queue);
                }
            }
            match claimed {
                Ok(tasks) => match tasks.into_iter().next() {
                    Some(task) => {
                        failures = 0;
                        // There may be more: the next idle thread looks.
                        self.idle.poke(false);
                        self.execute(&client, &task);
                        self.slots.release(&task.queue);
                        self.idle.poke(false);
                    }
                    None => {
                        failures = 0;
                        self.idle.looked();
                        self.idle.wait(seen, self.config.idle_poll, stop);
                    }
                },
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let pause = claim_backoff(failures);
                    tracing::warn!(%error, ?pause, "claiming push tasks failed");
                    self.idle.wait(seen, pause, stop);
                }
            }
        }
    }

    fn execute(&self, client: &reqwest::blocking::Client, task: &ClaimedTask) {
        let mut lease_until = task.lease_expires_at_micros;
        let Some(target) = self.targets.get(&task.queue) else { return };
        let host = url_host(&target.url);
        let sending = Instant::now();
        let sent = self.send(client, target, task);
        let elapsed = sending.elapsed().as_secs_f64();
        let (process, step, attempt) = (task.async_process_id.as_str(), task.step_number, task.attempt);
        let (outcome, result) = match sent {
            Ok(report) => {
                let recorded = persist(&mut lease_until, || {
                    self.store.complete(None, task.task_id, &task.lease_token, &report, now_micros())
                });
                match recorded {
                    // Not every index once: the attempt fails, as a worker's would be refused.
                    Err(TaskError::Invalid(reason)) => {
                        let message = format!("the answer does not fit the task: {reason}");
                        tracing::warn!(task = task.task_id, process, step, attempt, host, error = %message, "push attempt failed");
                        ("bad_answer", self.fail(&mut lease_until, task, &message))
                    }
                    other => {
                        if other.is_ok() {
                            let items = report.successes.len()
                                + report.failures.iter().map(|f| f.items.len()).sum::<usize>();
                            metrics::counter!("async_engine_items_recorded_total", "by" => "push")
                                .increment(items as u64);
                            tracing::debug!(
                                task = task.task_id,
                                process,
                                step,
                                attempt,
                                host,
                                "push task recorded"
                            );
                        }
                        ("completed", other)
                    }
                }
            }
            Err((outcome, message)) => {
                tracing::warn!(task = task.task_id, process, step, attempt, host, error = %message, "push attempt failed");
                (outcome, self.fail(&mut lease_until, task, &message))
            }
        };
        metrics::counter!("async_engine_push_attempts_total", "outcome" => outcome).increment(1);
        metrics::histogram!("async_engine_push_attempt_seconds").record(elapsed);
        settle(&self.waker, task, result);
    }

    fn fail(&self, lease_until: &mut i64, task: &ClaimedTask, message: &str) -> Result<(), TaskError> {
        persist(lease_until, || {
            self.store.fail(None, task.task_id, &task.lease_token, message, true, now_micros())
        })
    }

    /// POSTs the task and reads the answer.
    fn send(&self, client: &reqwest::blocking::Client, target: &PushTarget, task: &ClaimedTask) -> Sent {
        // Asked at every attempt: narrowing the list stops tasks already queued.
        if let Err(reason) = (self.allowed)(&target.url) {
            return Err(("refused", format!("not sent: {reason}")));
        }
        let left = task.lease_expires_at_micros.saturating_sub(now_micros()).max(0);
        let timeout =
            Duration::from_micros(u64::try_from(left / 5 * 4).unwrap_or(0)).max(Duration::from_millis(100));
        let body = body(task);
        let mut request = client
            .post(&target.url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TASK_HEADER, task.task_id.to_string())
            .header(ATTEMPT_HEADER, task.attempt.to_string());
        for (name, value) in &target.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(secret) = target.signing_secret.as_ref().or(self.config.signing_secret.as_ref()) {
            request = request.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
        }
        let timed_out = || ("timeout", format!("no answer within {:.1} s", timeout.as_secs_f64()));
        let response = match request.body(body).send() {
            Ok(response) => response,
            Err(error) if error.is_timeout() => return Err(timed_out()),
            // Without the URL: its path or query may hold the receiver's own secret.
            Err(error) => {
                return Err((
                    "unreachable",
                    format!("could not reach the endpoint: {}", error_chain(&error.without_url())),
                ));
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(("http_error", format!("the endpoint answered {}", status.as_u16())));
        }
        let mut answer = Vec::new();
        match response.take(MAX_ANSWER_BYTES + 1).read_to_end(&mut answer) {
            Ok(_) if answer.len() as u64 > MAX_ANSWER_BYTES => {
                return Err(("bad_answer", format!("the answer is longer than {MAX_ANSWER_BYTES} bytes")));
            }
            Ok(_) => {}
            Err(error) => {
                let timed_out_reading = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                    .is_some_and(reqwest::Error::is_timeout);
                if timed_out_reading || error.kind() == std::io::ErrorKind::TimedOut {
                    return Err(timed_out());
                }
                // Its kind only: reqwest's text would name the URL.
                return Err(("unreachable", format!("the answer broke off ({})", error.kind())));
            }
        }
        report(&answer).map_err(|message| ("bad_answer", message))
    }
}

#[cfg(test)]
mod tests;
