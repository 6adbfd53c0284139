//! The `async-engine` server: wiring configuration, storage and the API together, and the
//! commands of its command line. `main.rs` only parses arguments and reports errors.

pub mod client;
pub mod runner;
pub mod seed;
pub mod settings;
mod telemetry;
pub mod upload;

use std::net::TcpListener;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, bail};
use async_engine_api::{ApiConfig, AppState, SuccessCode, notification_body};
use async_engine_domain::{Operations, ProcessStatus};
use async_engine_engine::notify::{NotifierConfig, start_notifier};
use async_engine_engine::push::{PushConfig, start_pusher};
use async_engine_engine::{EngineConfig, Handlers, Waker};
use async_engine_persistence::{DatabaseUrl, Store};

pub use settings::Settings;

/// Opens the database named by the settings (pool built once, here).
pub fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::open_with(&settings.database.url, settings.database.pool_size, settings.session_timeouts())
        .with_context(|| format!("database.url '{}'", settings.database.url))
}

/// `async-engine seed`: migrates the database, creating it if need be, then seeds it.
pub fn seed_database(settings: &Settings, plan: &seed::Seed) -> anyhow::Result<String> {
    let store = open_store(settings)?;
    store.migrate().context("applying migrations")?;
    seed::seed(settings, &store, plan)
}

/// `async-engine migrate`: applies pending migrations and says which. A SQLite file that does
/// not exist is refused unless `create` says to make it.
pub fn migrate(settings: &Settings, create: bool) -> anyhow::Result<Vec<String>> {
    telemetry::init(&settings.log)?;
    if !create {
        refuse_missing_database(settings, "serve, seed or migrate --create creates one")?;
    }
    let store = open_store(settings)?;
    store.migrate().context("applying migrations")
}

/// Purges, in batches of `retention.batch`, every process finished more than
/// `retention.days` ago, and aborts every process left open more than
/// `limits.open_process_hours`; returns how many of each. `stop` is asked between batches.
fn apply_retention(store: &Store, rules: &Retention, stop: &dyn Fn() -> bool) -> anyhow::Result<(u64, u64)> {
    let now = async_engine_engine::now_micros();
    let batch = rules.retention.batch;
    let mut expired = 0;
    if rules.open_hours > 0 {
        let cut = now.saturating_sub(i64::from(rules.open_hours).saturating_mul(3_600 * 1_000_000));
        loop {
            let n = store.expire_open(cut, batch, now).context("aborting processes left open")?;
            expired += u64::from(n);
            if n < batch || stop() {
                break;
            }
        }
    }
    let mut purged = 0;
    if rules.retention.days > 0 {
        let cut = now.saturating_sub(i64::from(rules.retention.days).saturating_mul(86_400 * 1_000_000));
        loop {
            let n = store.purge_finished(cut, batch).context("purging finished processes")?;
            purged += u64::from(n);
            if n < batch || stop() {
                break;
            }
        }
    }
    Ok((purged, expired))
}

/// What retention applies: `[retention]` and `limits.open_process_hours`.
#[derive(Debug, Clone)]
struct Retention {
    retention: settings::RetentionSettings,
    open_hours: u32,
}

impl Retention {
    fn of(settings: &Settings) -> Self {
        Self { retention: settings.retention.clone(), open_hours: settings.limits.open_process_hours }
    }
}

/// `async-engine purge`: applies retention now; returns how many processes were purged and
/// how many left open were aborted. A SQLite file that does not exist is refused, naming the
/// path: opening it would create an empty database beside the real one.
pub fn purge(settings: &Settings) -> anyhow::Result<(u64, u64)> {
    telemetry::init(&settings.log)?;
    refuse_missing_database(settings, "serve or seed creates one")?;
    let store = open_store(settings)?;
    apply_retention(&store, &Retention::of(settings), &|| false)
}

/// Refuses a SQLite `database.url` whose file does not exist, naming the path: opening it would
/// create an empty database, beside the real one when run from another folder. `makes_one` says
/// which commands would.
fn refuse_missing_database(settings: &Settings, makes_one: &str) -> anyhow::Result<()> {
    if let Ok(DatabaseUrl::Sqlite(path)) = DatabaseUrl::parse(&settings.database.url)
        && !path.exists()
    {
        let shown = std::path::absolute(&path).unwrap_or(path);
        bail!(
            "database.url '{}': there is no database at {} ({makes_one}; set database.url or run \
             where it is relative to)",
            settings.database.url,
            shown.display()
        );
    }
    Ok(())
}

/// The background retention: a thread that applies it every `retention.interval_secs` until
/// the sender it returns is dropped.
fn start_retention(
    store: Store,
    rules: Retention,
) -> Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    if rules.retention.days == 0 && rules.open_hours == 0 {
        return None;
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new().name("retention".into()).spawn(move || {
        let interval = Duration::from_secs(rules.retention.interval_secs);
        loop {
            let stopping = || !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty));
            match apply_retention(&store, &rules, &stopping) {
                Ok((0, 0)) => {}
                Ok((purged, expired)) => tracing::info!(
                    purged,
                    days = rules.retention.days,
                    expired,
                    open_hours = rules.open_hours,
                    "retention: purged finished processes, aborted processes left open"
                ),
                Err(error) => tracing::error!(error = format!("{error:#}"), "retention failed"),
            }
            if !matches!(stopped.recv_timeout(interval), Err(mpsc::RecvTimeoutError::Timeout)) {
                return;
            }
        }
    });
    match thread {
        Ok(thread) => Some((stop, thread)),
        Err(error) => {
            tracing::error!(%error, "could not start the retention thread");
            None
        }
    }
}

/// `async-engine token`: a new random API token, and the `[[auth.keys]]` entry that admits
/// it (its SHA-256 only: the token itself is shown once, here, and stored nowhere).
pub fn token(name: &str, tenant: &str, scopes: &[String]) -> anyhow::Result<(String, String)> {
    async_engine_domain::TenantId::new(tenant).context("--tenant")?;
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        bail!("--name: give the key a name of 1 to 100 characters, without control characters");
    }
    if scopes.is_empty() {
        bail!("--scopes: a key needs at least one scope");
    }
    for scope in scopes {
        scope.parse::<async_engine_api::Scope>().map_err(anyhow::Error::msg).context("--scopes")?;
    }
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the system: {e}"))?;
    let token = format!("ae_{}", hex::encode(bytes));
    // JSON strings are TOML basic strings: escaped the same way.
    let quoted = |text: &str| serde_json::Value::from(text).to_string();
    let scopes: Vec<String> = scopes.iter().map(|s| quoted(s)).collect();
    let entry = format!(
        "[[auth.keys]]\nname = {}\ntenant = {}\ntoken_sha256 = \"{}\"\nscopes = [{}]\n",
        quoted(name),
        quoted(tenant),
        async_engine_api::auth::digest_hex(&token),
        scopes.join(", ")
    );
    Ok((token, entry))
}

/// Raises the soft limit of open files to the hard limit (the usual soft limit, 1,024, lets a
/// few hundred idle clients starve the server: accepting fails with "Too many open files" and
/// health checks time out), and returns how many client connections fit under it, at most
/// `wanted`, leaving room for the database, logs and the engine.
fn open_files_for(wanted: usize, pool_size: u32) -> usize {
    let reserve = 128 + 2 * usize::try_from(pool_size).unwrap_or(1024);
    let before = rlimit::Resource::NOFILE.get().map(|(soft, _)| soft).ok();
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            tracing::info!(before = ?before, now = soft, "raised the soft limit of open files to the hard limit");
            usize::try_from(soft).unwrap_or(usize::MAX)
        }
        Err(error) => {
            tracing::warn!(%error, "could not raise the soft limit of open files");
            before.and_then(|soft| usize::try_from(soft).ok()).unwrap_or(1024)
        }
    };
    let room = limit.saturating_sub(reserve).max(16);
    if room < wanted {
        tracing::warn!(
            wanted,
            allowed = room,
            open_files = limit,
            "server.max_connections is more than the open-file limit leaves room for; lowered"
        );
    }
    wanted.min(room)
}

/// Says at start-up which `Host` names and origins are answered; beyond loopback, that a name
/// not listed is refused, since that is what an operator behind a load balancer meets first.
fn log_guard(guard: &async_engine_api::RequestGuard, loopback: bool) {
    let hosts = guard.hosts.describe();
    let origins = guard.origins.list().join(", ");
    if !loopback && !guard.hosts.allows_any() && guard.hosts.names().is_empty() {
        tracing::warn!(
            "answering {hosts} only: requests that name this server by a DNS name get 421; list the names \
             clients use in server.allowed_hosts (or set server.public_url), or [\"*\"] for any"
        );
    } else {
        tracing::info!("answering {hosts}");
    }
    if !origins.is_empty() {
        tracing::info!("pages from {origins} may call /v1 (server.cors_origins)");
    }
}

/// `async-engine serve`: serves the API until SIGTERM or SIGINT, then stops gracefully.
pub fn serve(settings: &Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log)?;
    // Before anything is touched: a refused start changes nothing.
    settings.check_exposure()?;
    let store = open_store(settings)?;
    if settings.database.migrate_on_start {
        for name in store.migrate().context("applying migrations")? {
            tracing::info!(migration = %name, "applied migration");
        }
    } else {
        let pending = store.pending_migrations().context("reading the schema version")?;
        if !pending.is_empty() {
            bail!(
                "database.migrate_on_start is false and {} migration(s) are pending; run `async-engine migrate` first",
                pending.len()
            );
        }
    }
    let success_code =
        SuccessCode::from_u16(settings.api.success_code).context("api.success_code: use 202 or 200")?;
    // Before the engine and the sender start recording.
    async_engine_api::metrics::handle();
    let waker = Waker::default();
    let wake = waker.clone();
    // Built once: each build reads the push steps' environment and checks their hosts.
    let definitions = settings.definitions()?;
    let mut state = AppState::new(
        store.clone(),
        definitions.clone(),
        settings.callbacks()?,
        settings.auth()?,
        Arc::new(move || wake.wake()),
        ApiConfig {
            success_code,
            max_body_bytes: settings.limits.max_body_bytes,
            max_upload_bytes: settings.limits.max_upload_bytes,
            default_lease_secs: settings.engine.lease_secs,
            max_items_per_response: settings.limits.max_items_per_response,
            watch_interval: Duration::from_millis(settings.api.watch_interval_ms),
            min_status_interval_secs: settings.limits.min_status_interval_secs,
            body_timeout: Duration::from_secs(settings.server.body_timeout_secs),
            claim_poll: Duration::from_millis(settings.engine.idle_poll_ms),
            max_waiting_claims_per_key: settings.limits.max_waiting_claims_per_key,
        },
    );
    // Work the engine's workers make (the next step's tasks) wakes external workers' waiting
    // claims too; the API pokes them itself for what it makes.
    let claims = state.claims.clone();
    waker.listen(Arc::new(move || claims.poke()));
    let guard = settings.guard()?;
    let address = (settings.server.host.as_str(), settings.server.port);
    let listener = TcpListener::bind(address).with_context(|| {
        format!("server.host/server.port: cannot listen on {}:{}", settings.server.host, settings.server.port)
    })?;
    let local = listener.local_addr()?;
    // The address really bound, whatever name server.host gave (contract §8).
    if !settings.auth.enabled && !settings.auth.allow_anonymous_remote && !local.ip().is_loopback() {
        bail!(
            "server.host: '{}' is {}, not a loopback address, and auth is off; set auth.enabled = true, \
             or auth.allow_anonymous_remote = true on purpose",
            settings.server.host,
            local.ip()
        );
    }
    log_guard(&guard, local.ip().is_loopback());
    state.guard = Arc::new(guard);
    let engine = if settings.engine.enabled {
        let config = EngineConfig {
            workers: settings.engine.workers,
            lease: Duration::from_secs(settings.engine.lease_secs),
            idle_poll: Duration::from_millis(settings.engine.idle_poll_ms),
            batch: settings.engine.batch,
            node: format!("{}:{}", local, std::process::id()),
        };
        let targets: Vec<_> = definitions
            .into_iter()
            .flat_map(|definition| definition.steps)
            .filter_map(|step| match step.handler {
                async_engine_domain::Handler::Http(target) => Some(target),
                _ => None,
            })
            .collect();
        let hosts = settings.push_hosts()?;
        let allowed = Arc::new(move |url: &str| {
            hosts.check_as(url, "url", "engine.push_allowed_hosts", "headers or signing_secret_env").map(drop)
        });
        let push = PushConfig {
            concurrency: settings.engine.push_concurrency,
            lease: Duration::from_secs(settings.engine.lease_secs),
            idle_poll: Duration::from_millis(settings.engine.idle_poll_ms),
            node: config.node.clone(),
            signing_secret: Some(settings.notifications.signing_secret.clone()).filter(|s| !s.is_empty()),
        };
        let pusher = start_pusher(Arc::new(store.clone()), targets, allowed, push, waker.clone())
            .context("starting the push steps")?;
        Some((
            async_engine_engine::start(Arc::new(store.clone()), Handlers::builtin(), config, waker)
                .context("starting the engine")?,
            pusher,
        ))
    } else {
        tracing::info!(
            "engine.enabled is false: built-in and push steps wait for a node that runs the engine"
        );
        None
    };
    let callbacks = settings.callbacks()?;
    let notifier = settings.notifications.enabled.then(|| {
        let n = &settings.notifications;
        let config = NotifierConfig {
            max_attempts: n.max_attempts,
            timeout: Duration::from_secs(n.timeout_secs),
            initial_backoff: Duration::from_millis(n.initial_backoff_ms),
            max_backoff: Duration::from_secs(n.max_backoff_secs),
            signing_secret: Some(n.signing_secret.clone()).filter(|s| !s.is_empty()),
            poll: Duration::from_millis(n.poll_ms),
            concurrency: n.concurrency,
        };
        let render = Arc::new(move |process: &ProcessStatus| notification_body(process, success_code));
        let allowed = Arc::new(move |url: &str| callbacks.check(url).map(drop));
        start_notifier(Arc::new(store.clone()), render, allowed, config)
    });
    let retention = start_retention(store.clone(), Retention::of(settings));
    let shutdown = Duration::from_secs(settings.server.shutdown_timeout_secs);
    let max_connections = open_files_for(settings.server.max_connections, settings.database.pool_size);
    let watcher = state.watcher.clone();
    let claims = state.claims.clone();
    let database = store.describe();
    actix_web::rt::System::new().block_on(async move {
        let stop = telemetry::stop_signal();
        tracing::info!(%database, "listening on http://{local}");
        let server = async_engine_api::serve(listener, state, shutdown, max_connections)?;
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            stop.await;
            tracing::info!("stopping: finishing requests in flight");
            watcher.close();
            claims.close();
            handle.stop(true).await;
        });
        server.await
    })?;
    if let Some((engine, pusher)) = engine {
        // Workers finish the task in hand and record it; nothing is left half-done.
        engine.stop();
        pusher.stop();
    }
    if let Some(notifier) = notifier {
        // Attempts in flight finish and are recorded; the rest wait in the outbox.
        notifier.stop();
    }
    if let Some((stop, thread)) = retention {
        drop(stop);
        if thread.join().is_err() {
            tracing::error!("the retention thread panicked");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
