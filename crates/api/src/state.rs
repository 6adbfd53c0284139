//! What every handler shares: the stores, the definitions, the waiters and the configuration.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use async_engine_domain::{
    DeliveryStore, Operations, ProcessDefinition, ProcessStore, StatusReader, TaskStore,
};

use crate::answer::AnswerCache;
use crate::auth::Auth;
use crate::callback::CallbackPolicy;
use crate::claims::ClaimWaiters;
use crate::guard::RequestGuard;
use crate::limits::StatusLimiter;
use crate::watcher::Watcher;

/// The answer code of a successful status call: 202 as documented, or 200 by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessCode {
    Accepted,
    Ok,
}

impl SuccessCode {
    /// Only 200 and 202 are meaningful success codes for the status call.
    pub fn from_u16(code: u16) -> Option<Self> {
        match code {
            202 => Some(SuccessCode::Accepted),
            200 => Some(SuccessCode::Ok),
            _ => None,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            SuccessCode::Accepted => StatusCode::ACCEPTED,
            SuccessCode::Ok => StatusCode::OK,
        }
    }
}

/// API behaviour chosen by configuration.
#[derive(Debug, Clone, Copy)]
pub struct ApiConfig {
    pub success_code: SuccessCode,
    /// The largest request body accepted; larger ones get 413. Also the largest item of a
    /// streamed start (a line of NDJSON, a record of CSV).
    pub max_body_bytes: usize,
    /// `limits.max_upload_bytes`: the largest streamed start (NDJSON or CSV); larger get 413.
    pub max_upload_bytes: usize,
    /// Lease of an external worker's claim that names none.
    pub default_lease_secs: u64,
    /// The governor limit: a status answer may list at most this many items (contract §6).
    pub max_items_per_response: u64,
    /// How often waiting readers' lookups are checked for changes (one small read each).
    pub watch_interval: Duration,
    /// `limits.min_status_interval_secs`: 0 is off.
    pub min_status_interval_secs: u64,
    /// `server.body_timeout_secs`: the longest a request body may take to arrive (then 408).
    pub body_timeout: Duration,
    /// `engine.idle_poll_ms`: how often waiting claims' queues are checked for work made
    /// elsewhere (one small read per waited-on queue, however many claims wait).
    pub claim_poll: Duration,
    /// `limits.max_waiting_claims_per_key`: claims with `waitSeconds` one key (without auth,
    /// one client address) may have waiting; one more claims once without waiting.
    pub max_waiting_claims_per_key: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            success_code: SuccessCode::Accepted,
            max_body_bytes: 1024 * 1024,
            max_upload_bytes: 1 << 30,
            default_lease_secs: 60,
            max_items_per_response: 10_000,
            watch_interval: Duration::from_millis(250),
            min_status_interval_secs: 0,
            body_timeout: Duration::from_secs(30),
            claim_poll: Duration::from_millis(250),
            max_waiting_claims_per_key: 16,
        }
    }
}

/// What every handler shares: the stores, the definitions and the configuration.
#[derive(Clone)]
pub struct AppState {
    pub status: Arc<dyn StatusReader>,
    pub processes: Arc<dyn ProcessStore>,
    pub tasks: Arc<dyn TaskStore>,
    pub deliveries: Arc<dyn DeliveryStore>,
    /// Readiness, gauges, retention.
    pub ops: Arc<dyn Operations>,
    pub definitions: Arc<Vec<ProcessDefinition>>,
    /// Which callback URLs processes may name.
    pub callbacks: Arc<CallbackPolicy>,
    /// Long-polls and event streams, shared per lookup.
    pub watcher: Watcher,
    /// The last status answers rendered, for lookups that have not changed since.
    pub answers: Arc<AnswerCache>,
    /// `limits.min_status_interval_secs`.
    pub limiter: Arc<StatusLimiter>,
    /// API keys, or none (every caller anonymous).
    pub auth: Arc<Auth>,
    /// Called when new tasks may be due, to wake this node's idle engine workers (and, from
    /// [`AppState::new`], this node's waiting claims).
    pub on_new_work: Arc<dyn Fn() + Send + Sync>,
    /// External workers' claims waiting for work (`waitSeconds`).
    pub claims: ClaimWaiters,
    /// `server.allowed_hosts` and `server.cors_origins` (by default: no names beyond
    /// localhost and IP addresses, no origins).
    pub guard: Arc<RequestGuard>,
    pub config: ApiConfig,
}

impl AppState {
    /// Every store from one repository, with the watcher and limiter the configuration asks for.
    pub fn new<S>(
        store: S,
        definitions: Vec<ProcessDefinition>,
        callbacks: CallbackPolicy,
        auth: Auth,
        on_new_work: Arc<dyn Fn() + Send + Sync>,
        config: ApiConfig,
    ) -> Self
    where
        S: StatusReader + ProcessStore + TaskStore + DeliveryStore + Operations + Clone + 'static,
    {
        let claims = ClaimWaiters::new(config.claim_poll, config.max_waiting_claims_per_key);
        let waking = claims.clone();
        Self {
            status: Arc::new(store.clone()),
            processes: Arc::new(store.clone()),
            tasks: Arc::new(store.clone()),
            deliveries: Arc::new(store.clone()),
            ops: Arc::new(store),
            definitions: Arc::new(definitions),
            callbacks: Arc::new(callbacks),
            watcher: Watcher::new(config.watch_interval),
            answers: Arc::default(),
            limiter: Arc::new(StatusLimiter::new(config.min_status_interval_secs)),
            auth: Arc::new(auth),
            on_new_work: Arc::new(move || {
                waking.poke();
                on_new_work();
            }),
            claims,
            guard: Arc::new(RequestGuard::default()),
            config,
        }
    }
}
