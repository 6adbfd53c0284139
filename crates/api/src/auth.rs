//! Who may do what (contract §8): bearer tokens checked against SHA-256 digests from the
//! configuration, in constant time; each key has a tenant and scopes. Without auth every
//! caller is tenant `default` with every scope (the server then listens on loopback only,
//! unless told otherwise on purpose).
//!
//! Also what a browser holds: the dashboard's session (a server-signed, expiring cookie that
//! names a key, never its token), the signed double-submit CSRF tokens of its forms, and the
//! throttle of failed token checks per client address. Which requests came over TLS, and from
//! which client, follows `server.public_url` and `server.trusted_proxies`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::HttpRequest;
use actix_web::http::Method;
use actix_web::http::header::{AUTHORIZATION, HeaderName};
use async_engine_domain::TenantId;
use governor::Quota;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::limits::KeyedLimiter;

/// The dashboard's session cookie: `{session id}.{expiry}.{key name}.{signature}`, HttpOnly and
/// SameSite=Lax; it names the key, and never holds its token.
pub const SESSION_COOKIE: &str = "ae_session";
/// The random half of the dashboard's CSRF tokens (signed double submit): forms carry
/// `csrf = HMAC(secret, this cookie, the session cookie)`, which another site can neither read
/// nor compute.
pub const CSRF_COOKIE: &str = "ae_csrf";
/// The form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// `auth.session_ttl_secs` by default: a working day.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Revoked sessions kept before expired ones are swept.
const REVOKED_SWEEP_AT: usize = 1024;
/// Throttled addresses kept before those whose wait is over are swept.
const BLOCKED_SWEEP_AT: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

/// What a key may do. `admin` includes every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Status, list, items, events, deliveries, definitions.
    StatusRead,
    /// Start, cancel, retry.
    ProcessesWrite,
    /// External workers' task calls.
    TasksWork,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::StatusRead, Scope::ProcessesWrite, Scope::TasksWork, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::StatusRead => "status:read",
            Scope::ProcessesWrite => "processes:write",
            Scope::TasksWork => "tasks:work",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            format!("unknown scope '{text}'; scopes are status:read, processes:write, tasks:work, admin")
        })
    }
}

/// One configured key; the token itself is never stored, only its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub tenant: TenantId,
    pub token_sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name; `None` without auth.
    pub key: Option<String>,
    pub tenant: TenantId,
    scopes: Vec<Scope>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller { key: None, tenant: TenantId::default_tenant(), scopes: vec![Scope::Admin] }
    }

    fn of(key: &ApiKey) -> Self {
        Caller { key: Some(key.name.clone()), tenant: key.tenant.clone(), scopes: key.scopes.clone() }
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.require(scope).is_ok()
    }

    /// 403 unless the caller has `scope` (or `admin`).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this key lacks the scope {scope}")))
        }
    }
}

/// How browsers and the network in front are treated: sessions, the failure throttle, TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// `auth.session_secret`: signs sessions and CSRF tokens. `None`: a random one per start
    /// (sessions then end with a restart and hold on this node only).
    pub session_secret: Option<String>,
    /// `auth.session_ttl_secs`.
    pub session_ttl: Duration,
    /// `auth.max_failures_per_minute`: failed token checks per client address; 0 is off.
    pub max_failures_per_minute: u32,
    /// `server.public_url` is `https://…`: every request came over TLS.
    pub public_https: bool,
    /// The origin of `server.public_url` (`https://async.example.com`), which the dashboard's
    /// forms may come from even when a proxy rewrites `Host`; see [`origin_of`].
    pub public_origin: Option<String>,
    /// `server.trusted_proxies`: peers whose `X-Forwarded-Proto` and `X-Forwarded-For` count.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for WebSettings {
    /// What the library does unless told otherwise: no throttle (the server's configuration
    /// turns it on), plain HTTP, no proxy trusted, a random secret.
    fn default() -> Self {
        Self {
            session_secret: None,
            session_ttl: DEFAULT_SESSION_TTL,
            max_failures_per_minute: 0,
            public_https: false,
            public_origin: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `auth.enabled` and `[[auth.keys]]`, with the browser and network settings.
pub struct Auth {
    keys: Option<Vec<ApiKey>>,
    /// Signs sessions and CSRF tokens.
    secret: Vec<u8>,
    session_ttl_secs: u64,
    /// Sessions ended by `/logout` before their expiry: session id → expiry (Unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
    throttle: Option<Throttle>,
    public_https: bool,
    public_origin: Option<String>,
    trusted_proxies: Vec<IpNet>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &self.keys)
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("throttle", &self.throttle.is_some())
            .field("public_https", &self.public_https)
            .field("public_origin", &self.public_origin)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

/// A session cookie as checked.
enum Session<'a> {
    Valid {
        key: &'a ApiKey,
    },
    /// Expired, ended by `/logout`, signed by another secret, or naming a key that is gone or
    /// has a new token: sign in again.
    Ended,
}

impl Auth {
    /// Every caller is anonymous: tenant `default`, every scope.
    pub fn disabled() -> Self {
        Self::build(None, WebSettings::default())
    }

    pub fn with_keys(keys: Vec<ApiKey>) -> Self {
        Self::build(Some(keys), WebSettings::default())
    }

    /// The same keys with these browser and network settings.
    pub fn with_web(self, web: WebSettings) -> Self {
        Self::build(self.keys, web)
    }

    fn build(keys: Option<Vec<ApiKey>>, web: WebSettings) -> Self {
        let secret = match web.session_secret {
            Some(secret) => secret.into_bytes(),
            None => random_secret(),
        };
        let throttle = NonZeroU32::new(web.max_failures_per_minute).map(|n| Throttle {
            failures: KeyedLimiter::new(Quota::per_minute(n)),
            blocked: Mutex::new(HashMap::new()),
        });
        Auth {
            keys,
            secret,
            session_ttl_secs: web.session_ttl.as_secs().max(1),
            revoked: Mutex::new(HashMap::new()),
            throttle,
            public_https: web.public_https,
            public_origin: web.public_origin,
            trusted_proxies: web.trusted_proxies,
        }
    }

    pub fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The caller of a `/v1` request, if it may use `scope`: 401 without a known bearer token,
    /// 403 without the scope. The dashboard's session cookie counts only for reads (`GET` with
    /// `status:read`, the event stream included): a write with only the cookie is answered as
    /// if it had no token, so no other page can make a browser write through the API.
    pub fn authorize(&self, req: &HttpRequest, scope: Scope) -> Result<Caller, ApiError> {
        let reads = scope == Scope::StatusRead && matches!(*req.method(), Method::GET | Method::HEAD);
        self.authorize_with(req, scope, reads)
    }

    /// The caller of a dashboard request: a bearer token, or the session cookie for any
    /// method (the dashboard checks the CSRF token of every form it accepts before this).
    pub fn authorize_page(&self, req: &HttpRequest, scope: Scope) -> Result<Caller, ApiError> {
        self.authorize_with(req, scope, true)
    }

    fn authorize_with(
        &self,
        req: &HttpRequest,
        scope: Scope,
        session_counts: bool,
    ) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::anonymous());
        }
        let header = req.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
        let caller = match header {
            // The scheme is case-insensitive (RFC 9110).
            Some(header) => {
                let token = header
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token);
                self.check_token(req, token)?
            }
            None => match req.cookie(SESSION_COOKIE) {
                Some(cookie) if session_counts => self.session_caller(cookie.value(), unix_now())?,
                Some(_) => {
                    return Err(ApiError::Unauthorized(
                        "send Authorization: Bearer <token>; the dashboard's session cookie only reads"
                            .into(),
                    ));
                }
                None => return Err(ApiError::Unauthorized("send Authorization: Bearer <token>".into())),
            },
        };
        caller.require(scope)?;
        Ok(caller)
    }

    /// [`Auth::authenticate`] under the throttle of `auth.max_failures_per_minute`: every token
    /// is compared (in constant time), and one that is a key is accepted even while its
    /// address is throttled, so a guesser (or a worker with a stale token) behind a proxy or a
    /// NAT cannot lock out the other clients of that address. Only failures count, and only
    /// failures get the 429. Tokens are 256 random bits, so the throttle is not what keeps them
    /// from being guessed: it slows a flood of failures down and makes it visible.
    pub fn check_token(&self, req: &HttpRequest, token: Option<&str>) -> Result<Caller, ApiError> {
        let Some(throttle) = self.throttle.as_ref().filter(|_| self.enabled()) else {
            return self.authenticate(token);
        };
        self.authenticate(token).or_else(|refused| {
            let client = throttle_key(self.client_address(req));
            throttle.refused(client)?;
            throttle.failed(client)?;
            Err(refused)
        })
    }

    /// The caller a token names, if it is a key of this server.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Caller::anonymous());
        };
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <token>".into()))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every key is compared, in constant time: how long this takes says nothing about
        // which key, or how much of one, a guess matched.
        let mut found = None;
        for key in keys {
            if bool::from(key.token_sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found
            .ok_or_else(|| ApiError::Unauthorized("the bearer token is not a key of this server".into()))?;
        Ok(Caller::of(key))
    }

    /// A new session for `caller`'s key: the cookie's value, and how long it lasts.
    pub fn start_session(&self, caller: &Caller) -> Result<(String, Duration), ApiError> {
        let key = caller
            .key
            .as_deref()
            .and_then(|name| self.key_named(name))
            .ok_or_else(|| ApiError::Internal("a session was asked for a caller without a key".into()))?;
        let id =
            hex::encode(random_bytes::<16>().map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?);
        Ok((
            self.session_value(&id, unix_now() + self.session_ttl_secs, key),
            Duration::from_secs(self.session_ttl_secs),
        ))
    }

    /// Ends the session a cookie names, on this node, until it would have expired anyway.
    pub fn end_session(&self, cookie: &str) {
        let now = unix_now();
        let Some((id, expires, _)) = self.verify_session(cookie) else {
            return;
        };
        if expires <= now {
            return;
        }
        let mut revoked = self.revoked.lock().unwrap_or_else(PoisonError::into_inner);
        if revoked.len() >= REVOKED_SWEEP_AT {
            revoked.retain(|_, until| *until > now);
        }
        revoked.insert(id.to_owned(), expires);
    }

    fn session_caller(&self, cookie: &str, now: u64) -> Result<Caller, ApiError> {
        match self.session(cookie, now) {
            Session::Valid { key } => Ok(Caller::of(key)),
            Session::Ended => Err(ApiError::Unauthorized(
                "the dashboard session has ended or expired; sign in again".into(),
            )),
        }
    }

    fn session(&self, cookie: &str, now: u64) -> Session<'_> {
        let Some((id, expires, key)) = self.verify_session(cookie) else {
            return Session::Ended;
        };
        if expires <= now || self.revoked.lock().unwrap_or_else(PoisonError::into_inner).contains_key(id) {
            return Session::Ended;
        }
        Session::Valid { key }
    }

    /// The session id, expiry and key of a cookie this server signed for a key it still has
    /// with the same token.
    fn verify_session<'c>(&self, cookie: &'c str) -> Option<(&'c str, u64, &ApiKey)> {
        let mut parts = cookie.split('.');
        let (id, expires, name, signature) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        let name = String::from_utf8(hex::decode(name).ok()?).ok()?;
        let key = self.key_named(&name)?;
        let signature = hex::decode(signature).ok()?;
        self.session_mac(id, expires, key).verify_slice(&signature).ok()?;
        Some((id, expires, key))
    }

    fn session_value(&self, id: &str, expires: u64, key: &ApiKey) -> String {
        let signature = hex::encode(self.session_mac(id, expires, key).finalize().into_bytes());
        format!("{id}.{expires}.{}.{signature}", hex::encode(key.name.as_bytes()))
    }

    /// Signs the key's token digest too: a key given a new token, or removed, ends its sessions.
    fn session_mac(&self, id: &str, expires: u64, key: &ApiKey) -> HmacSha256 {
        let mut mac = self.mac(b"ae-session");
        for part in [id.as_bytes(), expires.to_string().as_bytes(), key.name.as_bytes(), &key.token_sha256] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn mac(&self, purpose: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(purpose);
        mac.update(b"\0");
        mac
    }

    fn key_named(&self, name: &str) -> Option<&ApiKey> {
        self.keys.as_ref()?.iter().find(|k| k.name == name)
    }

    /// A new random value for the CSRF cookie.
    pub fn new_csrf_cookie() -> Result<String, ApiError> {
        random_bytes::<16>().map(hex::encode).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))
    }

    /// The CSRF token of forms shown with these cookies: bound to the CSRF cookie and to the
    /// session (so a token from before a sign-in does not outlive it).
    pub fn csrf_token(&self, csrf_cookie: &str, session_cookie: &str) -> String {
        hex::encode(self.csrf_mac(csrf_cookie, session_cookie).finalize().into_bytes())
    }

    /// Whether `token` is the CSRF token of these cookies (compared in constant time).
    pub fn csrf_matches(&self, csrf_cookie: &str, session_cookie: &str, token: &str) -> bool {
        !csrf_cookie.is_empty()
            && hex::decode(token)
                .is_ok_and(|t| self.csrf_mac(csrf_cookie, session_cookie).verify_slice(&t).is_ok())
    }

    fn csrf_mac(&self, csrf_cookie: &str, session_cookie: &str) -> HmacSha256 {
        let mut mac = self.mac(b"ae-csrf");
        for part in [csrf_cookie, session_cookie] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// Whether `origin` (an `Origin` header) is that of `server.public_url`.
    pub fn is_public_origin(&self, origin: &str) -> bool {
        self.public_origin.as_deref().is_some_and(|public| public.eq_ignore_ascii_case(origin.trim()))
    }

    /// Whether `req` reached us over TLS: `server.public_url` says so, or a trusted proxy's
    /// `X-Forwarded-Proto` does. Decides the cookies' `Secure`.
    pub fn over_tls(&self, req: &HttpRequest) -> bool {
        self.public_https
            || (self.peer_is_trusted_proxy(req)
                && req
                    .headers()
                    .get(X_FORWARDED_PROTO)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(',').next())
                    .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https")))
    }

    /// Who `caller` is for per-client limits: see [`caller_key`].
    pub fn caller_key(&self, req: &HttpRequest, caller: &Caller) -> String {
        caller_key(caller, self.client_address(req))
    }

    /// The client's address: the peer's, or behind trusted proxies the last address of
    /// `X-Forwarded-For` that is not one of them (the ones before it could be made up).
    pub fn client_address(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.trusted(peer) {
            return Some(peer);
        }
        let forwarded: Vec<&str> = req
            .headers()
            .get_all(X_FORWARDED_FOR)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in forwarded.into_iter().rev() {
            let Some(address) = hop_address(hop) else {
                break;
            };
            client = address;
            if !self.trusted(address) {
                break;
            }
        }
        Some(client)
    }

    fn peer_is_trusted_proxy(&self, req: &HttpRequest) -> bool {
        req.peer_addr().is_some_and(|peer| self.trusted(peer.ip()))
    }

    fn trusted(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&address))
    }
}

/// An `X-Forwarded-For` hop as proxies write it: `192.0.2.1`, `192.0.2.1:5000`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:5000`; the port is no part of the client's address.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The origin of a configured URL as browsers write it in `Origin` (lower-case scheme and
/// host, the default port left out): `https://async.example.com`. `None` for an empty or
/// unusable URL.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url.trim()).ok()?;
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// Failed token checks per client address: governor counts them; past the limit an address's
/// failures are answered 429 until governor would allow its next one (its good tokens still
/// pass).
struct Throttle {
    failures: KeyedLimiter<IpAddr>,
    /// Addresses over the limit, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl Throttle {
    /// 429 while `client` is over the limit (for a token that failed).
    fn refused(&self, client: IpAddr) -> Result<(), ApiError> {
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        match blocked.get(&client).map(|until| until.saturating_duration_since(Instant::now())) {
            Some(wait) if !wait.is_zero() => {
                metrics::counter!("async_engine_auth_failures_throttled_total").increment(1);
                Err(ApiError::AuthThrottled {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure; 429 when it was one too many.
    fn failed(&self, client: IpAddr) -> Result<(), ApiError> {
        let Err(retry_after_secs) = self.failures.check(&client) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if blocked.len() >= BLOCKED_SWEEP_AT {
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(client, now + Duration::from_secs(retry_after_secs));
        metrics::counter!("async_engine_auth_failures_throttled_total").increment(1);
        tracing::warn!(client = %client, "too many failed authentications: throttled");
        Err(ApiError::AuthThrottled { retry_after_secs })
    }
}

/// IPv6 clients are counted by their /64, which one subscriber usually holds whole.
fn throttle_key(address: Option<IpAddr>) -> IpAddr {
    match address.map(|a| a.to_canonical()) {
        Some(IpAddr::V6(v6)) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        Some(v4) => v4,
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// A per-start secret. Start-up only: a machine without randomness cannot sign anything safely.
#[expect(clippy::panic, reason = "start-up: without randomness no session can be signed")]
fn random_secret() -> Vec<u8> {
    match random_bytes::<32>() {
        Ok(bytes) => bytes.to_vec(),
        Err(error) => panic!("no randomness from the system for the session secret: {error}"),
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut bytes = [0_u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `server.trusted_proxies` as configured: addresses or CIDR networks.
pub fn parse_proxies(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| format!("'{entry}' is not an IP address or a CIDR network (10.0.0.0/8, ::1)"))
        })
        .collect()
}

/// `token_sha256` as configured: 64 hex digits.
pub fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "token_sha256 must be 64 hex digits".to_owned())?;
    bytes.try_into().map_err(|_| "token_sha256 must be 64 hex digits (a SHA-256)".to_owned())
}

/// The hex SHA-256 of a token, as `token_sha256` takes it.
pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who a caller is for per-client limits (the status interval, waiting claims): its API key,
/// or without one its client address (the peer's, or behind `server.trusted_proxies` the
/// forwarded one), so that clients behind one proxy, or workers on other machines, do not
/// share one allowance.
pub fn caller_key(caller: &Caller, address: Option<IpAddr>) -> String {
    match (&caller.key, address) {
        (Some(key), _) => format!("key:{key}"),
        (None, Some(address)) => format!("address:{}", address.to_canonical()),
        (None, None) => "address:".to_owned(),
    }
}

#[cfg(test)]
mod tests;
