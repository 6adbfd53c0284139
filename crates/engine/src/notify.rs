//! The sender of FinishProcess notifications (contract §5): claims due deliveries from the
//! outbox, POSTs each (signed when a secret is set), and records the attempt, scheduling the
//! next one with backoff and jitter until `max_attempts`. Delivery is at least once: a crash
//! between the receiver's answer and the record sends the same delivery id again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_engine_domain::notify::backoff_millis;
use async_engine_domain::{Attempt, DeliveryStore, DueDelivery, ProcessStatus};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{Running, Waker, now_micros};

/// Renders the body of a first attempt: the status envelope of the one process.
pub type Render = Arc<dyn Fn(&ProcessStatus) -> String + Send + Sync>;
/// Whether a callback URL may be called now (`notifications.allowed_hosts` as this node has
/// it); the error says why not. Checked at every attempt, so that narrowing the list stops
/// deliveries already queued.
pub type Allowed = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub max_attempts: u32,
    /// Of one attempt, connecting included.
    pub timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Signs each body with HMAC-SHA256 in `X-Async-Engine-Signature` when set.
    pub signing_secret: Option<String>,
    /// How often the outbox is checked for due deliveries.
    pub poll: Duration,
    /// Deliveries sent at once.
    pub concurrency: u32,
}

pub const DELIVERY_HEADER: &str = "X-Async-Engine-Delivery";
pub const SIGNATURE_HEADER: &str = "X-Async-Engine-Signature";
pub const ATTEMPT_HEADER: &str = "X-Async-Engine-Attempt";

/// `sha256=<hex HMAC-SHA256 of body>`: what receivers recompute to trust a delivery.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts the sender thread; stop it with [`Running::stop`].
pub fn start_notifier(
    store: Arc<dyn DeliveryStore>,
    render: Render,
    allowed: Allowed,
    config: NotifierConfig,
) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let waker = Waker::default();
    let thread = {
        let (stop, waker) = (stop.clone(), waker.clone());
        std::thread::Builder::new()
            .name("notifier".into())
            .spawn(move || run(&*store, &render, &allowed, &config, &stop, &waker))
    };
    let threads = match thread {
        Ok(thread) => vec![thread],
        Err(error) => {
            tracing::error!(%error, "could not start the notification sender");
            Vec::new()
        }
    };
    Running { stop, waker, threads }
}

fn run(
    store: &dyn DeliveryStore,
    render: &Render,
    allowed: &Allowed,
    config: &NotifierConfig,
    stop: &AtomicBool,
    waker: &Waker,
) {
    let client = match outbound_client(Some(config.timeout)) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "could not build the notification HTTP client; no notification will be sent");
            return;
        }
    };
    let lease = i64::try_from((config.timeout + Duration::from_secs(5)).as_micros()).unwrap_or(i64::MAX);
    while !stop.load(Ordering::SeqCst) {
        let seen = waker.generation();
        let due = match store.claim_deliveries(config.concurrency.max(1), lease, now_micros()) {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "could not read the notification outbox");
                Vec::new()
            }
        };
        if due.is_empty() {
            waker.wait(seen, config.poll);
            continue;
        }
        std::thread::scope(|scope| {
            for delivery in due {
                let client = &client;
                scope.spawn(move || {
                    let Some(attempt) = attempt(store, client, render, allowed, config, delivery) else {
                        return;
                    };
                    if let Err(error) = store.record_attempt(&attempt) {
                        // The lease runs out and the delivery is made again: at least once.
                        tracing::error!(%error, delivery = attempt.delivery, "could not record a notification attempt");
                    }
                });
            }
        });
    }
}

/// Sends one delivery and says how it went; `None` when it was not sent because its lease
/// was lost (another sender has it) or its body could not be stored (it is tried again).
fn attempt(
    store: &dyn DeliveryStore,
    client: &reqwest::blocking::Client,
    render: &Render,
    allowed: &Allowed,
    config: &NotifierConfig,
    due: DueDelivery,
) -> Option<Attempt> {
    let body = match due.body {
        Some(body) => body,
        None => {
            let body = render(&due.process);
            match store.fix_body(due.id, due.attempt, &body) {
                Ok(true) => body,
                Ok(false) => return None,
                Err(error) => {
                    tracing::error!(%error, delivery = %due.delivery_id, "could not store a notification body");
                    return None;
                }
            }
        }
    };
    let host = url_host(&due.url);
    let (process, attempt) = (due.process.async_process_id.as_str(), due.attempt);
    if let Err(reason) = allowed(&due.url) {
        tracing::error!(delivery = %due.delivery_id, process, attempt, host, reason, "notification not sent");
        metrics::counter!("async_engine_notification_attempts_total", "outcome" => "refused").increment(1);
        return Some(Attempt {
            delivery: due.id,
            attempt,
            body,
            status_code: None,
            error: Some(format!("not sent: {reason}")),
            retry_at_micros: None,
            now_micros: now_micros(),
        });
    }
    let mut request = client
        .post(&due.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(DELIVERY_HEADER, &due.delivery_id)
        .header(ATTEMPT_HEADER, due.attempt.to_string());
    if let Some(secret) = &config.signing_secret {
        request = request.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
    }
    let sending = std::time::Instant::now();
    let (status_code, error) = match request.body(body.clone()).send() {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => {
            let code = response.status().as_u16();
            (Some(code), Some(format!("the receiver answered {code}")))
        }
        Err(error) if error.is_timeout() => {
            (None, Some(format!("no answer within {} s", config.timeout.as_secs_f64())))
        }
        // Without the URL: its path or query may hold the receiver's own secret.
        Err(error) => {
            (None, Some(format!("could not reach the receiver: {}", error_chain(&error.without_url()))))
        }
    };
    let now = now_micros();
    let retry_at = match &error {
        Some(_) if due.attempt < config.max_attempts => {
            let millis = backoff_millis(
                due.attempt,
                u64::try_from(config.initial_backoff.as_millis()).unwrap_or(u64::MAX),
                u64::try_from(config.max_backoff.as_millis()).unwrap_or(u64::MAX),
                fastrand::f64(),
            );
            Some(now.saturating_add(i64::try_from(millis.saturating_mul(1000)).unwrap_or(i64::MAX)))
        }
        _ => None,
    };
    let outcome = match (&error, retry_at) {
        (None, _) => "delivered",
        (Some(_), Some(_)) => "retry",
        (Some(_), None) => "gave_up",
    };
    metrics::counter!("async_engine_notification_attempts_total", "outcome" => outcome).increment(1);
    metrics::histogram!("async_engine_notification_attempt_seconds").record(sending.elapsed().as_secs_f64());
    match (&error, retry_at) {
        (None, _) => {
            tracing::info!(delivery = %due.delivery_id, process, attempt, host, "notification delivered")
        }
        (Some(error), Some(_)) => {
            tracing::warn!(delivery = %due.delivery_id, process, attempt, host, error, "notification attempt failed; will retry");
        }
        (Some(error), None) => {
            tracing::error!(delivery = %due.delivery_id, process, attempt, host, error, "notification given up");
        }
    }
    Some(Attempt {
        delivery: due.id,
        attempt,
        body,
        status_code,
        error,
        retry_at_micros: retry_at,
        now_micros: now,
    })
}

/// The HTTP client for calls to hosts an operator allowed (callbacks, push steps): redirects
/// are not followed, since one could lead anywhere and the allow-list is about where we send.
/// Build it on the thread that uses it: reqwest's blocking client runs its own runtime, which
/// must not be created or dropped inside the server's.
pub(crate) fn outbound_client(timeout: Option<Duration>) -> reqwest::Result<reqwest::blocking::Client> {
    let builder = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("async-engine/", env!("CARGO_PKG_VERSION")));
    match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    }
    .build()
}

/// The host of a callback URL, for logs: the rest may carry the receiver's secrets.
pub(crate) fn url_host(url: &str) -> String {
    reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default()
}

/// The error and its causes: reqwest's own text alone ("error sending request") says little.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
