//! Configuration: the compiled-in `config/default.toml`, then `--config FILE`, then
//! `ASYNC_ENGINE__SECTION__KEY` environment variables (`DATABASE_URL` as a fallback for the
//! database URL). Every value is checked here, so a bad one stops start-up naming its key.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_engine_api::auth::{WebSettings, parse_digest, parse_proxies};
use async_engine_api::{ApiKey, Auth, CallbackPolicy, CorsOrigins, HostPolicy, RequestGuard, Scope};
use async_engine_domain::definition::validate_all;
use async_engine_domain::{Handler, ProcessDefinition, PushTarget, StepDefinition, TenantId, Tolerance};
use async_engine_engine::Handlers;
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// The repository's `config/default.toml`, built in.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub engine: EngineSettings,
    pub api: ApiSettings,
    pub limits: LimitSettings,
    pub notifications: NotificationSettings,
    pub auth: AuthSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    /// Process definitions (`[[processes]]` with `[[processes.steps]]`).
    #[serde(default)]
    pub processes: Vec<ProcessSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub shutdown_timeout_secs: u64,
    /// The address browsers reach the server at, when that is not its own (`https://…`:
    /// behind TLS, so the dashboard's cookies are `Secure`). Empty: not said.
    pub public_url: String,
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-Proto` and `X-Forwarded-For`
    /// are believed.
    pub trusted_proxies: Vec<String>,
    pub max_connections: usize,
    /// Names a request's `Host` may give besides localhost and IP addresses; `["*"]`: any.
    pub allowed_hosts: Vec<String>,
    /// Origins whose pages may call `/v1` from a browser (CORS), writes included.
    pub cors_origins: Vec<String>,
    /// Seconds a request body may take to arrive; then 408.
    pub body_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: u32,
    pub migrate_on_start: bool,
    /// PostgreSQL session bounds in milliseconds; 0 derives each from `engine.lease_secs`.
    pub statement_timeout_ms: u64,
    pub lock_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub enabled: bool,
    pub workers: usize,
    pub lease_secs: u64,
    pub idle_poll_ms: u64,
    pub batch: u32,
    /// Push steps' requests in flight at once over all of them (each step also has its own
    /// `max_in_flight`).
    pub push_concurrency: usize,
    /// Hosts push steps' `url`s may name (the rules of `notifications.allowed_hosts`).
    pub push_allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSettings {
    pub name: String,
    /// The `callbackUrl` of processes started without one.
    #[serde(default)]
    pub callback_url: Option<String>,
    pub steps: Vec<StepSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSettings {
    pub name: String,
    pub handler: String,
    #[serde(default = "defaults::chunk_size")]
    pub chunk_size: u32,
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "defaults::timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "defaults::on_item_failure")]
    pub on_item_failure: String,
    /// The most failed items the step bears; one more fails the process.
    #[serde(default)]
    pub tolerated_failure_count: Option<u64>,
    /// The largest share (0 to 100, two decimals) of the step's items that may fail.
    #[serde(default)]
    pub tolerated_failure_percentage: Option<f64>,
    /// `handler = "http"`: the endpoint each task is POSTed to.
    #[serde(default)]
    pub url: Option<String>,
    /// The most tasks of the step's queue leased at once across every node and worker; a
    /// push step's requests at once (4 a node when unset).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// `handler = "http"`: header name → the environment variable holding its value.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// `handler = "http"`: the environment variable holding this step's signing secret
    /// (instead of `notifications.signing_secret`).
    #[serde(default)]
    pub signing_secret_env: Option<String>,
}

mod defaults {
    pub fn chunk_size() -> u32 {
        100
    }
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn timeout_secs() -> u64 {
        300
    }
    pub fn on_item_failure() -> String {
        "skip".to_owned()
    }
    pub fn max_in_flight() -> u32 {
        4
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub success_code: u16,
    pub watch_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub open_process_hours: u32,
    pub max_items_per_response: u64,
    pub min_status_interval_secs: u64,
    pub max_waiting_claims_per_key: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    pub enabled: bool,
    pub allowed_hosts: Vec<String>,
    pub signing_secret: String,
    pub max_attempts: u32,
    pub timeout_secs: u64,
    pub initial_backoff_ms: u64,
    pub max_backoff_secs: u64,
    pub poll_ms: u64,
    pub concurrency: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub days: u32,
    pub interval_secs: u64,
    pub batch: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub enabled: bool,
    pub allow_anonymous_remote: bool,
    /// Signs dashboard sessions and CSRF tokens; empty: a random secret per start.
    pub session_secret: String,
    pub session_ttl_secs: u64,
    /// Failed token checks (API and `/login`) per client address and minute; 0 is off.
    pub max_failures_per_minute: u32,
    #[serde(default)]
    pub keys: Vec<KeySettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub name: String,
    pub tenant: String,
    pub token_sha256: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Settings {
    /// Loads the layers in order; `env` is the process environment (a parameter for tests).
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("--config: {} is not a readable file", file.display());
            }
            builder = builder.add_source(File::from(file).required(true));
        }
        let own_url = env.iter().any(|(k, _)| k == "ASYNC_ENGINE__DATABASE__URL");
        if let Some((_, url)) = env.iter().find(|(k, _)| k == "DATABASE_URL").filter(|_| !own_url) {
            builder = builder.set_override("database.url", url.as_str())?;
        }
        let ours: config::Map<String, String> =
            env.iter().filter(|(k, _)| k.starts_with("ASYNC_ENGINE__")).cloned().collect();
        builder = builder.add_source(
            Environment::with_prefix("ASYNC_ENGINE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // Lists from the environment are comma-separated.
                .list_separator(",")
                .with_list_parse_key("notifications.allowed_hosts")
                .with_list_parse_key("server.allowed_hosts")
                .with_list_parse_key("engine.push_allowed_hosts")
                .with_list_parse_key("server.cors_origins")
                .with_list_parse_key("server.trusted_proxies")
                .source(Some(ours)),
        );
        let settings: Settings =
            builder.build().and_then(Config::try_deserialize).context("configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads with the real process environment.
    pub fn from_env(file: Option<&Path>) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load(file, &env)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.server.host.parse::<IpAddr>().is_err() && self.server.host != "localhost" {
            bail!("server.host: '{}' is not an IP address (or localhost)", self.server.host);
        }
        if !(16..=1_000_000).contains(&self.server.max_connections) {
            bail!("server.max_connections: {} is out of range 16..=1000000", self.server.max_connections);
        }
        if !(1..=3_600).contains(&self.server.body_timeout_secs) {
            bail!("server.body_timeout_secs: {} is out of range 1..=3600", self.server.body_timeout_secs);
        }
        self.guard()?;
        if !(1..=1024).contains(&self.database.pool_size) {
            bail!("database.pool_size: {} is out of range 1..=1024", self.database.pool_size);
        }
        let d = &self.database;
        for (key, value) in [
            ("statement_timeout_ms", d.statement_timeout_ms),
            ("lock_timeout_ms", d.lock_timeout_ms),
            ("idle_in_transaction_timeout_ms", d.idle_in_transaction_timeout_ms),
        ] {
            // Under 100 ms, ordinary transactions would fail; over a day is no bound at all.
            if value != 0 && !(100..=86_400_000).contains(&value) {
                bail!(
                    "database.{key}: {value} is out of range 100..=86400000 (or 0: derived from engine.lease_secs)"
                );
            }
        }
        async_engine_persistence::DatabaseUrl::parse(&self.database.url)?;
        if async_engine_api::SuccessCode::from_u16(self.api.success_code).is_none() {
            bail!("api.success_code: {} is not allowed; use 202 (documented) or 200", self.api.success_code);
        }
        if !(256..=1 << 30).contains(&self.limits.max_body_bytes) {
            bail!("limits.max_body_bytes: {} is out of range 256..=1073741824", self.limits.max_body_bytes);
        }
        if self.limits.open_process_hours > 8_760 {
            bail!(
                "limits.open_process_hours: {} is out of range 0..=8760 (0: open processes never expire)",
                self.limits.open_process_hours
            );
        }
        if !(self.limits.max_body_bytes..=1 << 40).contains(&self.limits.max_upload_bytes) {
            bail!(
                "limits.max_upload_bytes: {} is out of range limits.max_body_bytes ({})..=1099511627776",
                self.limits.max_upload_bytes,
                self.limits.max_body_bytes
            );
        }
        if !(1..=10_000_000).contains(&self.limits.max_items_per_response) {
            bail!(
                "limits.max_items_per_response: {} is out of range 1..=10000000",
                self.limits.max_items_per_response
            );
        }
        if !(1..=256).contains(&self.engine.workers) {
            bail!("engine.workers: {} is out of range 1..=256", self.engine.workers);
        }
        if !(1..=3_600).contains(&self.engine.lease_secs) {
            bail!("engine.lease_secs: {} is out of range 1..=3600", self.engine.lease_secs);
        }
        if !(10..=60_000).contains(&self.engine.idle_poll_ms) {
            bail!("engine.idle_poll_ms: {} is out of range 10..=60000", self.engine.idle_poll_ms);
        }
        if !(1..=100).contains(&self.engine.batch) {
            bail!("engine.batch: {} is out of range 1..=100", self.engine.batch);
        }
        if !(1..=256).contains(&self.engine.push_concurrency) {
            bail!("engine.push_concurrency: {} is out of range 1..=256", self.engine.push_concurrency);
        }
        self.push_hosts()?;
        if !(10..=10_000).contains(&self.api.watch_interval_ms) {
            bail!("api.watch_interval_ms: {} is out of range 10..=10000", self.api.watch_interval_ms);
        }
        if !(1..=10_000).contains(&self.limits.max_waiting_claims_per_key) {
            bail!(
                "limits.max_waiting_claims_per_key: {} is out of range 1..=10000",
                self.limits.max_waiting_claims_per_key
            );
        }
        if self.limits.min_status_interval_secs > 86_400 {
            bail!(
                "limits.min_status_interval_secs: {} is over a day (86400)",
                self.limits.min_status_interval_secs
            );
        }
        let n = &self.notifications;
        self.callbacks()?;
        for (key, value, range) in [
            ("max_attempts", u64::from(n.max_attempts), 1..=100),
            ("timeout_secs", n.timeout_secs, 1..=300),
            ("initial_backoff_ms", n.initial_backoff_ms, 10..=3_600_000),
            ("max_backoff_secs", n.max_backoff_secs, 1..=604_800),
            ("poll_ms", n.poll_ms, 10..=60_000),
            ("concurrency", u64::from(n.concurrency), 1..=64),
        ] {
            if !range.contains(&value) {
                bail!("notifications.{key}: {value} is out of range {}..={}", range.start(), range.end());
            }
        }
        self.auth()?;
        let r = &self.retention;
        for (key, value, range) in [
            ("days", u64::from(r.days), 0..=36_500),
            ("interval_secs", r.interval_secs, 1..=86_400),
            ("batch", u64::from(r.batch), 1..=10_000),
        ] {
            if !range.contains(&value) {
                bail!("retention.{key}: {value} is out of range {}..={}", range.start(), range.end());
            }
        }
        self.definitions()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bail!("log.level: '{}' is not a valid filter (try info, debug or warn)", self.log.level);
        }
        Ok(())
    }
}

impl Settings {
    /// The PostgreSQL session bounds: each `database.*_timeout_ms`, or when 0 its default
    /// derived from `engine.lease_secs`.
    pub fn session_timeouts(&self) -> async_engine_persistence::SessionTimeouts {
        let derived = async_engine_persistence::SessionTimeouts::from_lease(Duration::from_secs(
            self.engine.lease_secs,
        ));
        let or = |ms: u64, default: Duration| if ms == 0 { default } else { Duration::from_millis(ms) };
        let d = &self.database;
        async_engine_persistence::SessionTimeouts {
            statement: or(d.statement_timeout_ms, derived.statement),
            lock: or(d.lock_timeout_ms, derived.lock),
            idle_in_transaction: or(d.idle_in_transaction_timeout_ms, derived.idle_in_transaction),
        }
    }

    /// `auth.*` as the API checks callers: keys validated, each named in errors.
    pub fn auth(&self) -> anyhow::Result<Auth> {
        if !self.auth.enabled {
            return Ok(Auth::disabled().with_web(self.web()?));
        }
        if self.auth.keys.is_empty() {
            bail!(
                "auth.keys: auth.enabled is true but no [[auth.keys]] is configured; make one with `async-engine token`"
            );
        }
        let mut keys: Vec<ApiKey> = Vec::with_capacity(self.auth.keys.len());
        for (n, key) in self.auth.keys.iter().enumerate() {
            let at = format!("auth.keys[{n}]");
            if key.name.is_empty() || key.name.len() > 100 {
                bail!("{at}.name: give each key a name of 1 to 100 characters");
            }
            let tenant = TenantId::new(key.tenant.clone()).map_err(|e| anyhow!("{at}.tenant: {e}"))?;
            let token_sha256 =
                parse_digest(&key.token_sha256).map_err(|e| anyhow!("{at}.token_sha256: {e}"))?;
            let scopes = key
                .scopes
                .iter()
                .map(|s| s.parse::<Scope>().map_err(|e| anyhow!("{at}.scopes: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if scopes.is_empty() {
                bail!("{at}.scopes: a key needs at least one scope");
            }
            if keys.iter().any(|k| k.name == key.name) {
                bail!("{at}.name: '{}' names two keys", key.name);
            }
            if keys.iter().any(|k| k.token_sha256 == token_sha256) {
                bail!("{at}.token_sha256: two keys have the same token");
            }
            keys.push(ApiKey { name: key.name.clone(), tenant, token_sha256, scopes });
        }
        Ok(Auth::with_keys(keys).with_web(self.web()?))
    }

    /// How browsers and the network in front are treated: `server.public_url`,
    /// `server.trusted_proxies`, `auth.session_secret`, `auth.session_ttl_secs` and
    /// `auth.max_failures_per_minute`.
    pub fn web(&self) -> anyhow::Result<WebSettings> {
        let url = self.server.public_url.trim();
        let scheme = match url.split_once("://") {
            _ if url.is_empty() => None,
            Some((scheme, rest)) if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
                Some(scheme.to_ascii_lowercase())
            }
            _ => None,
        };
        if !url.is_empty() && !matches!(scheme.as_deref(), Some("http" | "https")) {
            bail!("server.public_url: '{url}' is not an http:// or https:// URL (or empty)");
        }
        let trusted_proxies = parse_proxies(&self.server.trusted_proxies)
            .map_err(|e| anyhow!("server.trusted_proxies: {e}"))?;
        let a = &self.auth;
        let session_secret = match a.session_secret.as_str() {
            "" => None,
            secret if secret.chars().count() < 32 => bail!(
                "auth.session_secret: use at least 32 characters (say `openssl rand -hex 32`), or leave it \
                 empty for a random one per start"
            ),
            secret => Some(secret.to_owned()),
        };
        if !(60..=2_592_000).contains(&a.session_ttl_secs) {
            bail!("auth.session_ttl_secs: {} is out of range 60..=2592000 (30 days)", a.session_ttl_secs);
        }
        if a.max_failures_per_minute > 10_000 {
            bail!("auth.max_failures_per_minute: {} is over 10000 (0 is off)", a.max_failures_per_minute);
        }
        Ok(WebSettings {
            session_secret,
            session_ttl: Duration::from_secs(a.session_ttl_secs),
            max_failures_per_minute: a.max_failures_per_minute,
            public_https: scheme.as_deref() == Some("https"),
            public_origin: async_engine_api::auth::origin_of(url),
            trusted_proxies,
        })
    }

    /// Refuses to serve anonymously beyond this machine unless told to on purpose (§8).
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        let loopback = self.server.host == "localhost"
            || self.server.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !self.auth.enabled && !loopback && !self.auth.allow_anonymous_remote {
            bail!(
                "server.host: refusing to listen on {} without auth: anyone who can reach it could \
                 read and start processes; set auth.enabled = true with [[auth.keys]] (see \
                 `async-engine token`), or auth.allow_anonymous_remote = true on purpose",
                self.server.host
            );
        }
        Ok(())
    }

    /// `server.allowed_hosts` and `server.cors_origins` as the API checks requests.
    pub fn guard(&self) -> anyhow::Result<RequestGuard> {
        let mut hosts =
            HostPolicy::new(&self.server.allowed_hosts).map_err(|e| anyhow!("server.allowed_hosts: {e}"))?;
        // Browsers reach the server by that name: it is allowed without being listed again.
        hosts.allow_host_of(&self.server.public_url);
        let origins =
            CorsOrigins::new(&self.server.cors_origins).map_err(|e| anyhow!("server.cors_origins: {e}"))?;
        Ok(RequestGuard { hosts, origins })
    }

    /// `notifications.allowed_hosts` as the API checks callback URLs against them.
    pub fn callbacks(&self) -> anyhow::Result<CallbackPolicy> {
        CallbackPolicy::new(&self.notifications.allowed_hosts)
            .map_err(|e| anyhow!("notifications.allowed_hosts: {e}"))
    }

    /// `engine.push_allowed_hosts`, with the rules of `notifications.allowed_hosts`.
    pub fn push_hosts(&self) -> anyhow::Result<CallbackPolicy> {
        CallbackPolicy::new(&self.engine.push_allowed_hosts)
            .map_err(|e| anyhow!("engine.push_allowed_hosts: {e}"))
    }

    /// A step's handler; `handler = "http"` with its target, its headers' values and secret
    /// read from the environment now, and its URL checked against `engine.push_allowed_hosts`.
    fn handler(&self, process: &str, step: &StepSettings, at: &str) -> anyhow::Result<Handler> {
        if step.handler != "http" {
            let push_only = [
                ("url", step.url.is_some()),
                ("headers", !step.headers.is_empty()),
                ("signing_secret_env", step.signing_secret_env.is_some()),
            ];
            if let Some((key, _)) = push_only.iter().find(|(_, given)| *given) {
                bail!("{at}.{key}: only for handler = \"http\"");
            }
            return step.handler.parse().map_err(|e| anyhow!("{at}.handler: {e}"));
        }
        let url = step.url.as_deref().ok_or_else(|| anyhow!("{at}.url: handler = \"http\" needs a url"))?;
        let url = self
            .push_hosts()?
            .check_as(url, "url", "engine.push_allowed_hosts", "headers or signing_secret_env")
            .map_err(|e| anyhow!("{at}.url: {e}"))?;
        let from_env = |key: &str, variable: &str| {
            std::env::var(variable)
                .ok()
                .filter(|value| !value.is_empty())
                .ok_or_else(|| anyhow!("{at}.{key}: the environment variable '{variable}' is not set"))
        };
        let mut headers = Vec::with_capacity(step.headers.len());
        for (name, variable) in &step.headers {
            let key = format!("headers.{name}");
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                bail!("{at}.{key}: not a header name (letters, digits, '-', '_')");
            }
            let lower = name.to_ascii_lowercase();
            let ours = ["content-type", "content-length", "host", "connection", "transfer-encoding"];
            if lower.starts_with("x-async-engine-") || ours.contains(&lower.as_str()) {
                bail!("{at}.{key}: the server sets this header itself");
            }
            let value = from_env(&key, variable)?;
            if value.chars().any(char::is_control) {
                bail!("{at}.{key}: the value of '{variable}' has control characters");
            }
            headers.push((name.clone(), value));
        }
        let signing_secret =
            step.signing_secret_env.as_deref().map(|v| from_env("signing_secret_env", v)).transpose()?;
        Ok(Handler::Http(PushTarget {
            name: format!("{process}/{}", step.name),
            url: url.to_string(),
            max_in_flight: step.max_in_flight.unwrap_or(defaults::max_in_flight()),
            headers,
            signing_secret,
        }))
    }

    /// The `[[processes]]` as validated definitions; errors name the entry at fault.
    pub fn definitions(&self) -> anyhow::Result<Vec<ProcessDefinition>> {
        let handlers = Handlers::builtin();
        let definitions = self
            .processes
            .iter()
            .enumerate()
            .map(|(p, process)| {
                let steps = process
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(n, step)| {
                        let at = format!("processes[{p}].steps[{n}]");
                        Ok(StepDefinition {
                            name: step.name.clone(),
                            handler: self.handler(&process.name, step, &at)?,
                            chunk_size: step.chunk_size,
                            max_attempts: step.max_attempts,
                            timeout_secs: step.timeout_secs,
                            on_item_failure: step
                                .on_item_failure
                                .parse()
                                .map_err(|e| anyhow!("{at}.on_item_failure: {e}"))?,
                            tolerance: Tolerance {
                                count: step.tolerated_failure_count,
                                hundredths_of_percent: step
                                    .tolerated_failure_percentage
                                    .map(Tolerance::hundredths)
                                    .transpose()
                                    .map_err(|e| anyhow!("{at}: {e}"))?,
                            },
                            max_in_flight: step.max_in_flight,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let callback_url = match &process.callback_url {
                    None => None,
                    Some(url) => Some(
                        self.callbacks()?
                            .check(url)
                            .map_err(|e| anyhow!("processes[{p}].callback_url: {e}"))?
                            .to_string(),
                    ),
                };
                Ok(ProcessDefinition { name: process.name.clone(), steps, callback_url })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        validate_all(&definitions, &|name| handlers.contains(name)).map_err(|e| anyhow!("processes: {e}"))?;
        Ok(definitions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn error(pairs: &[(&str, &str)]) -> String {
        format!("{:#}", Settings::load(None, &env(pairs)).unwrap_err())
    }

    #[test]
    fn defaults() {
        let settings = Settings::load(None, &[]).unwrap();
        assert_eq!(settings.server.host, "127.0.0.1");
        assert_eq!(settings.server.port, 8080);
        assert_eq!(settings.database.url, "data/async-engine.db");
        assert_eq!(settings.api.success_code, 202);
        assert_eq!(settings.log.format, LogFormat::Human);
        assert!(settings.engine.enabled);
    }

    #[test]
    fn session_timeouts_derive_from_the_lease_unless_given() {
        let settings = Settings::load(None, &env(&[("ASYNC_ENGINE__ENGINE__LEASE_SECS", "2")])).unwrap();
        let secs = Duration::from_secs;
        let timeouts = settings.session_timeouts();
        assert_eq!(
            (timeouts.statement, timeouts.lock, timeouts.idle_in_transaction),
            (secs(300), secs(2), secs(2))
        );
        let settings = Settings::load(
            None,
            &env(&[
                ("ASYNC_ENGINE__ENGINE__LEASE_SECS", "2"),
                ("ASYNC_ENGINE__DATABASE__LOCK_TIMEOUT_MS", "750"),
                ("ASYNC_ENGINE__DATABASE__STATEMENT_TIMEOUT_MS", "90000"),
            ]),
        )
        .unwrap();
        let timeouts = settings.session_timeouts();
        assert_eq!(
            (timeouts.statement, timeouts.lock, timeouts.idle_in_transaction),
            (secs(90), Duration::from_millis(750), secs(2))
        );
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("custom.toml");
        std::fs::write(&file, "[server]\nport = 9000\nhost = \"0.0.0.0\"\n[log]\nformat = \"json\"\n")
            .unwrap();
        let settings = Settings::load(
            Some(&file),
            &env(&[("ASYNC_ENGINE__SERVER__PORT", "9100"), ("ASYNC_ENGINE__ENGINE__ENABLED", "false")]),
        )
        .unwrap();
        assert_eq!(settings.server.port, 9100);
        assert_eq!(settings.server.host, "0.0.0.0");
        assert_eq!(settings.log.format, LogFormat::Json);
        assert!(!settings.engine.enabled);
    }

    #[test]
    fn database_url_falls_back_to_database_url() {
        let settings = Settings::load(None, &env(&[("DATABASE_URL", "/tmp/a.db")])).unwrap();
        assert_eq!(settings.database.url, "/tmp/a.db");
        let settings = Settings::load(
            None,
            &env(&[("DATABASE_URL", "/tmp/a.db"), ("ASYNC_ENGINE__DATABASE__URL", "/tmp/b.db")]),
        )
        .unwrap();
        assert_eq!(settings.database.url, "/tmp/b.db");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (pairs, key) in [
            (&[("ASYNC_ENGINE__SERVER__PORT", "http")][..], "port"),
            (&[("ASYNC_ENGINE__SERVER__PORT", "70000")], "port"),
            (&[("ASYNC_ENGINE__SERVER__HOST", "not a host")], "server.host"),
            (&[("ASYNC_ENGINE__API__SUCCESS_CODE", "201")], "api.success_code"),
            (&[("ASYNC_ENGINE__DATABASE__POOL_SIZE", "0")], "database.pool_size"),
            (&[("ASYNC_ENGINE__DATABASE__LOCK_TIMEOUT_MS", "5")], "database.lock_timeout_ms"),
            (&[("ASYNC_ENGINE__DATABASE__URL", "mysql://x")], "database.url"),
            (&[("ASYNC_ENGINE__LOG__FORMAT", "xml")], "format"),
            (&[("ASYNC_ENGINE__ENGINE__ENABLED", "perhaps")], "enabled"),
            (&[("ASYNC_ENGINE__SERVER__PROT", "1")], "prot"),
            (&[("ASYNC_ENGINE__ENGINE__WORKERS", "0")], "engine.workers"),
            (
                &[("ASYNC_ENGINE__NOTIFICATIONS__ALLOWED_HOSTS", "http://a.test")],
                "notifications.allowed_hosts",
            ),
            (&[("ASYNC_ENGINE__NOTIFICATIONS__MAX_ATTEMPTS", "0")], "notifications.max_attempts"),
            (&[("ASYNC_ENGINE__API__WATCH_INTERVAL_MS", "1")], "api.watch_interval_ms"),
            (
                &[("ASYNC_ENGINE__LIMITS__MAX_WAITING_CLAIMS_PER_KEY", "0")],
                "limits.max_waiting_claims_per_key",
            ),
        ] {
            let text = error(pairs);
            assert!(text.contains(key), "{pairs:?}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
    }

    #[test]
    fn allowed_hosts_come_comma_separated_from_the_environment_and_govern_default_callbacks() {
        let settings =
            Settings::load(None, &env(&[("ASYNC_ENGINE__NOTIFICATIONS__ALLOWED_HOSTS", "a.test,*.b.test")]))
                .unwrap();
        assert_eq!(settings.notifications.allowed_hosts, ["a.test", "*.b.test"]);
        assert!(settings.callbacks().unwrap().check("https://x.b.test/hook").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hooks.toml");
        std::fs::write(
            &file,
            "[[processes]]\nname = \"P\"\ncallback_url = \"https://c.test/\"\n\
             steps = [ { name = \"S\", handler = \"builtin:noop\" } ]\n",
        )
        .unwrap();
        let text = format!("{:#}", Settings::load(Some(&file), &[]).unwrap_err());
        assert!(text.contains("processes[0].callback_url") && text.contains("allowed_hosts"), "{text}");
    }

    fn with_file(text: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.toml");
        std::fs::write(&file, text).unwrap();
        Settings::load(Some(&file), &[])
    }

    #[test]
    fn keys_are_checked_and_name_their_entry() {
        let digest = "a".repeat(64);
        let key = |name: &str, digest: &str, scopes: &str| {
            format!(
                "[[auth.keys]]\nname = \"{name}\"\ntenant = \"acme\"\ntoken_sha256 = \"{digest}\"\nscopes = [{scopes}]\n"
            )
        };
        let good = format!("[auth]\nenabled = true\n{}", key("k", &digest, "\"admin\""));
        assert!(with_file(&good).unwrap().auth().unwrap().enabled());
        for (text, mention) in [
            ("[auth]\nenabled = true\n".to_owned(), "auth.keys"),
            (
                format!("[auth]\nenabled = true\n{}", key("k", "abc", "\"admin\"")),
                "auth.keys[0].token_sha256",
            ),
            (format!("[auth]\nenabled = true\n{}", key("k", &digest, "\"root\"")), "auth.keys[0].scopes"),
            (format!("[auth]\nenabled = true\n{}", key("k", &digest, "")), "auth.keys[0].scopes"),
            (
                format!(
                    "[auth]\nenabled = true\n{}{}",
                    key("k", &digest, "\"admin\""),
                    key("k", &"b".repeat(64), "\"admin\"")
                ),
                "auth.keys[1].name",
            ),
        ] {
            let error = format!("{:#}", with_file(&text).unwrap_err());
            assert!(error.contains(mention), "{text}: {error}");
        }
    }

    #[test]
    fn only_loopback_is_served_anonymously_by_default() {
        for (host, anyway, refused) in [
            ("127.0.0.1", false, false),
            ("::1", false, false),
            ("localhost", false, false),
            ("0.0.0.0", false, true),
            ("0.0.0.0", true, false),
        ] {
            let mut settings = Settings::load(None, &[]).unwrap();
            settings.server.host = host.to_owned();
            settings.auth.allow_anonymous_remote = anyway;
            assert_eq!(settings.check_exposure().is_err(), refused, "{host} {anyway}");
        }
    }

    #[test]
    fn push_steps_are_read_with_their_environment_and_checked_naming_the_entry() {
        let push = |extra: &str| {
            format!(
                "[engine]\npush_allowed_hosts = [\"*.push.test\"]\n[[processes]]\nname = \"X\"\n\
                 [[processes.steps]]\nname = \"A\"\nhandler = \"builtin:noop\"\n\
                 [[processes.steps]]\nname = \"B\"\nhandler = \"http\"\n{extra}"
            )
        };
        // PATH is set wherever tests run; the test cannot set variables of its own safely.
        let settings = with_file(&push(
            "url = \"https://a.push.test/run\"\nmax_in_flight = 2\ntimeout_secs = 5\n\
             headers = { Authorization = \"PATH\" }\nsigning_secret_env = \"PATH\"\n",
        ))
        .unwrap();
        let definitions = settings.definitions().unwrap();
        let Handler::Http(target) = &definitions[0].steps[1].handler else { panic!("not a push step") };
        let path = std::env::var("PATH").unwrap();
        assert_eq!(
            (target.name.as_str(), target.url.as_str(), target.max_in_flight),
            ("X/B", "https://a.push.test/run", 2)
        );
        assert_eq!(target.headers, [("Authorization".to_owned(), path.clone())]);
        assert_eq!(target.signing_secret.as_deref(), Some(path.as_str()));
        assert_eq!(definitions[0].steps[1].handler.queue(), "http:X/B");
        let unset = "ASYNC_ENGINE_TEST_NEVER_SET";
        for (extra, mention) in [
            ("", "processes[0].steps[1].url: handler = \"http\" needs a url"),
            (
                "url = \"https://other.test/\"\n",
                "processes[0].steps[1].url: url host 'other.test' is not in engine.push_allowed_hosts",
            ),
            ("url = \"https://a.push.test/\"\nmax_in_flight = 0\n", "step 1: max_in_flight must be 1..=1000"),
            (
                &format!("url = \"https://a.push.test/\"\nheaders = {{ X-Token = \"{unset}\" }}\n"),
                &format!(
                    "processes[0].steps[1].headers.X-Token: the environment variable '{unset}' is not set"
                ),
            ),
            (
                &format!("url = \"https://a.push.test/\"\nsigning_secret_env = \"{unset}\"\n"),
                "processes[0].steps[1].signing_secret_env",
            ),
            ("url = \"https://a.push.test/\"\nheaders = { \"Bad Name\" = \"PATH\" }\n", "not a header name"),
            (
                "url = \"https://a.push.test/\"\nheaders = { X-Async-Engine-Task = \"PATH\" }\n",
                "sets this header itself",
            ),
        ] {
            let error = format!("{:#}", with_file(&push(extra)).unwrap_err());
            assert!(error.contains(mention), "{extra}: {error}");
        }
        let text = "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:q\"\nurl = \"https://a/\"\n";
        let message = format!("{:#}", with_file(text).unwrap_err());
        assert!(message.contains("processes[0].steps[0].url: only for handler = \"http\""), "{message}");
        let refused = error(&[("ASYNC_ENGINE__ENGINE__PUSH_ALLOWED_HOSTS", "http://x")]);
        assert!(refused.contains("engine.push_allowed_hosts: 'http://x'"), "{refused}");
        let refused = error(&[("ASYNC_ENGINE__ENGINE__PUSH_CONCURRENCY", "0")]);
        assert!(refused.contains("engine.push_concurrency: 0 is out of range"), "{refused}");
    }

    #[test]
    fn tolerances_reach_the_definition() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        let text = "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\n\
                    tolerated_failure_count = 7\ntolerated_failure_percentage = 2.5\n\
                    [[processes.steps]]\nname = \"B\"\nhandler = \"queue:x\"\ntolerated_failure_percentage = 10\n";
        std::fs::write(&file, text).unwrap();
        let steps = Settings::load(Some(&file), &[]).unwrap().definitions().unwrap().remove(0).steps;
        assert_eq!(steps[0].tolerance, Tolerance { count: Some(7), hundredths_of_percent: Some(250) });
        assert_eq!(steps[1].tolerance, Tolerance { count: None, hundredths_of_percent: Some(1_000) });
    }

    #[test]
    fn the_default_definitions_are_valid_and_listed() {
        let settings = Settings::load(None, &[]).unwrap();
        let names: Vec<String> = settings.definitions().unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["Bulk CPQ", "Noop", "Demo CPQ", "External Pricing"]);
    }

    #[test]
    fn bad_definitions_name_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        for (toml, mention) in [
            ("[[processes]]\nname = \"X\"\nsteps = []\n", "has no steps"),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"builtin:nope\"\n",
                "no built-in handler 'nope'",
            ),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"http:x\"\n",
                "processes[0].steps[0].handler",
            ),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\non_item_failure = \"stop\"\n",
                "on_item_failure",
            ),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\ntolerated_failure_percentage = 100.5\n",
                "processes[0].steps[0]: tolerated_failure_percentage must be 0 to 100, not 100.5",
            ),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\ntolerated_failure_percentage = 2.345\n",
                "at most two decimals",
            ),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\ntolerated_failure_count = -1\n",
                "tolerated_failure_count",
            ),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\non_item_failure = \"abort\"\ntolerated_failure_count = 3\n",
                "go with skip or continue",
            ),
            (
                "[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\n[[processes]]\nname = \"X\"\n[[processes.steps]]\nname = \"A\"\nhandler = \"queue:x\"\n",
                "defined twice",
            ),
        ] {
            let file = dir.path().join("p.toml");
            std::fs::write(&file, toml).unwrap();
            let text = format!("{:#}", Settings::load(Some(&file), &[]).unwrap_err());
            assert!(text.contains(mention), "{toml}: {text}");
        }
    }

    #[test]
    fn browser_and_proxy_settings_are_checked_and_reach_auth() {
        for (pairs, key) in [
            (&[("ASYNC_ENGINE__SERVER__PUBLIC_URL", "ftp://x.test")][..], "server.public_url"),
            (&[("ASYNC_ENGINE__SERVER__PUBLIC_URL", "async.example.com")], "server.public_url"),
            (
                &[("ASYNC_ENGINE__SERVER__TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal")],
                "server.trusted_proxies",
            ),
            (&[("ASYNC_ENGINE__AUTH__SESSION_SECRET", "too short")], "auth.session_secret"),
            (&[("ASYNC_ENGINE__AUTH__SESSION_TTL_SECS", "5")], "auth.session_ttl_secs"),
            (&[("ASYNC_ENGINE__AUTH__MAX_FAILURES_PER_MINUTE", "100000")], "auth.max_failures_per_minute"),
        ] {
            let text = error(pairs);
            assert!(text.contains(key), "{pairs:?}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
        let web = Settings::load(None, &[]).unwrap().web().unwrap();
        assert_eq!(
            (web.session_secret, web.session_ttl, web.max_failures_per_minute, web.public_https),
            (None, Duration::from_secs(8 * 3600), 10, false)
        );
        assert!(web.trusted_proxies.is_empty());
        let settings = Settings::load(
            None,
            &env(&[
                ("ASYNC_ENGINE__SERVER__PUBLIC_URL", "https://async.example.com"),
                ("ASYNC_ENGINE__SERVER__TRUSTED_PROXIES", "10.0.0.0/8,::1"),
                ("ASYNC_ENGINE__AUTH__SESSION_SECRET", &"s".repeat(32)),
            ]),
        )
        .unwrap();
        let web = settings.web().unwrap();
        assert!(web.public_https && web.session_secret.is_some());
        assert_eq!(web.trusted_proxies.len(), 2);
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let text = format!("{:#}", Settings::load(Some(Path::new("/no/such/file.toml")), &[]).unwrap_err());
        assert!(text.contains("--config"), "{text}");
    }

    #[test]
    fn allowed_hosts_cors_origins_and_the_body_timeout_are_checked() {
        let text = error(&[("ASYNC_ENGINE__SERVER__ALLOWED_HOSTS", "http://x.example")]);
        assert!(text.contains("server.allowed_hosts: 'http://x.example'"), "{text}");
        let text = error(&[("ASYNC_ENGINE__SERVER__CORS_ORIGINS", "ui.example.com")]);
        assert!(text.contains("server.cors_origins: 'ui.example.com'"), "{text}");
        assert!(
            error(&[("ASYNC_ENGINE__SERVER__BODY_TIMEOUT_SECS", "0")]).contains("server.body_timeout_secs")
        );
        let defaults = Settings::load(None, &[]).unwrap();
        assert_eq!(
            (defaults.server.body_timeout_secs, defaults.guard().unwrap()),
            (30, RequestGuard::default())
        );
        let settings = Settings::load(
            None,
            &env(&[
                ("ASYNC_ENGINE__SERVER__ALLOWED_HOSTS", "a.example,B.example"),
                ("ASYNC_ENGINE__SERVER__CORS_ORIGINS", "https://ui.example,http://localhost:3000"),
                ("ASYNC_ENGINE__SERVER__PUBLIC_URL", "https://async.example/"),
            ]),
        )
        .unwrap();
        let guard = settings.guard().unwrap();
        assert_eq!(guard.hosts.names(), ["a.example", "b.example", "async.example"]);
        assert_eq!(guard.origins.list(), ["https://ui.example", "http://localhost:3000"]);
    }
}
