//! What every request passes before a route sees it, so that a web page on another site can
//! neither drive nor read the API: a `Host` this server answers to (DNS rebinding), no `/v1`
//! write from a foreign `Origin` unless `server.cors_origins` lists it (with CORS answers for
//! those), JSON bodies only on `/v1` writes (no CORS-free `text/plain` form posts), and a
//! request target of bounded length. Also: `HEAD` answered as `GET` without the body.

use actix_cors::Cors;
use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, mime};

use crate::error::ApiError;

/// The longest request target (path and query) answered; longer ones get 414. Every ID is at
/// most 255 characters, so no call needs more; 8 KiB is the usual limit of servers and proxies.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// Answered whatever their `Host`: probes of orchestrators and load balancers name the node in
/// ways the operator may not list, and these carry no process data.
const ANY_HOST_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// `server.allowed_hosts`: the names a request's `Host` may give (without its port).
///
/// `localhost` and IP address literals are always allowed: DNS rebinding needs a name that the
/// attacker's DNS answers, so a browser sends an IP literal or `localhost` only to a page it
/// loaded from that very address, never for a foreign site's page. Other names must be listed,
/// or `"*"` allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    any: bool,
    /// Lower case, without a trailing dot.
    names: Vec<String>,
}

impl HostPolicy {
    /// Validates the entries: `"*"`, or host names without scheme, port or path.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut policy = HostPolicy::default();
        for entry in entries {
            if entry == "*" {
                policy.any = true;
                continue;
            }
            let name =
                normal_name(entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).unwrap_or(entry));
            let valid = !name.is_empty()
                && (name.parse::<std::net::IpAddr>().is_ok()
                    || name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if !valid {
                return Err(format!(
                    "'{entry}' is not a host name; give names as clients write them in URLs, without \
                     scheme or port (api.example.com), or \"*\" for any"
                ));
            }
            policy.names.push(name);
        }
        Ok(policy)
    }

    /// Also answers to the host of `url` (`server.public_url`), when it names one.
    pub fn allow_host_of(&mut self, url: &str) {
        let host = url::Url::parse(url.trim()).ok().and_then(|u| u.host_str().map(str::to_owned));
        if let Some(host) = host {
            let name = normal_name(host.trim_start_matches('[').trim_end_matches(']'));
            if !self.names.contains(&name) {
                self.names.push(name);
            }
        }
    }

    /// Any `Host` is answered.
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// The listed names (beyond `localhost` and IP addresses, always answered).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether a `Host` value (`name[:port]`, `[v6][:port]`) is one this server answers to.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let Some(name) = host_name(host) else {
            return false;
        };
        name == "localhost" || name.parse::<std::net::IpAddr>().is_ok() || self.names.contains(&name)
    }

    /// For the start-up log: which `Host` values are answered.
    pub fn describe(&self) -> String {
        if self.any {
            return "any Host (server.allowed_hosts = [\"*\"])".to_owned();
        }
        let mut text = "Host localhost or an IP address".to_owned();
        if !self.names.is_empty() {
            text.push_str(", or ");
            text.push_str(&self.names.join(", "));
        }
        text
    }
}

/// `server.cors_origins`: the origins (`https://ui.example.com`, `http://localhost:3000`) whose
/// pages may call `/v1` from a browser, writes included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOrigins {
    /// As browsers serialize them: lower-case scheme and host, default port left out.
    origins: Vec<String>,
}

impl CorsOrigins {
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut origins = Vec::with_capacity(entries.len());
        for entry in entries {
            let wrong = || {
                format!(
                    "'{entry}' is not an origin; write scheme, host and port only, as browsers send \
                     them: https://ui.example.com or http://localhost:3000"
                )
            };
            let url = url::Url::parse(entry).map_err(|_| wrong())?;
            if !matches!(url.scheme(), "http" | "https")
                || !matches!(url.path(), "" | "/")
                || url.query().is_some()
                || url.fragment().is_some()
                || !url.username().is_empty()
            {
                return Err(wrong());
            }
            let origin = url.origin().ascii_serialization();
            if origin == "null" {
                return Err(wrong());
            }
            origins.push(origin);
        }
        Ok(Self { origins })
    }

    pub fn list(&self) -> &[String] {
        &self.origins
    }

    fn contains(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == origin)
    }

    /// actix-cors for the listed origins: it answers their preflights and adds the CORS
    /// headers to their answers. It never refuses an actual request itself (whether a write
    /// may proceed is decided by [`check`]); a preflight from an origin not listed gets 400.
    pub fn cors(&self) -> Cors {
        let mut cors = Cors::default()
            .block_on_origin_mismatch(false)
            .allowed_methods([Method::GET, Method::HEAD, Method::POST])
            .allowed_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_NONE_MATCH,
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                header::HeaderName::from_static("x-request-id"),
            ])
            .max_age(600);
        for origin in &self.origins {
            cors = cors.allowed_origin(origin);
        }
        cors
    }
}

/// Both policies, as the API applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestGuard {
    pub hosts: HostPolicy,
    pub origins: CorsOrigins,
}

/// The name of a `Host` value, lower case, without port, brackets or a trailing dot; `None`
/// when it is not of the form `name[:port]` or `[v6][:port]`.
fn host_name(host: &str) -> Option<String> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            inside.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => (inside, ""),
                _ => (inside, after.strip_prefix(':')?),
            }
        }
        None => host.split_once(':').unwrap_or((host, "")),
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    Some(normal_name(name))
}

fn normal_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A method that can change something (or, for the action call, is a POST all the same).
/// Also what the OpenAPI document lists the write refusals (403, 415) on.
pub(crate) fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

pub(crate) fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Whether requests for `path` must give a `Host` this server answers to (else 421); the
/// OpenAPI document lists the 421 by this too.
pub(crate) fn checks_host(path: &str) -> bool {
    !ANY_HOST_PATHS.contains(&path)
}

pub(crate) fn refuse(req: &ServiceRequest, guard: &RequestGuard) -> Result<(), ApiError> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Err(ApiError::UriTooLong { limit: MAX_TARGET_BYTES });
    }
    let path = req.path();
    // No Host at all (HTTP/1.0) is no rebinding: browsers always send one.
    let host = req.headers().get(header::HOST).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host
        && checks_host(path)
        && !guard.hosts.allows(host)
    {
        let shown: String = host.chars().take(255).collect();
        return Err(ApiError::MisdirectedRequest(format!(
            "this server does not answer to the Host '{shown}'; its operator lists the names it \
             answers to in server.allowed_hosts"
        )));
    }
    if !is_v1(path) || !is_write(req.method()) {
        return Ok(());
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let same = host.is_some_and(|host| {
            origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        });
        if !same && !guard.origins.contains(origin) {
            let shown: String = origin.chars().take(255).collect();
            return Err(ApiError::Forbidden(format!(
                "a page from the origin '{shown}' may not write to this API; its operator lists \
                 the origins allowed in server.cors_origins"
            )));
        }
    }
    json_body(req)
}

/// `/v1` bodies are JSON: a browser sends any other type (`text/plain`, forms) across sites
/// without asking first. A write without a body needs no type (`curl -X POST …/cancel`).
fn json_body(req: &ServiceRequest) -> Result<(), ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        let declared = req.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().ok().map(str::trim));
        let empty = !req.headers().contains_key(header::TRANSFER_ENCODING)
            && declared.is_none_or(|length| length == Some("0"));
        if empty {
            return Ok(());
        }
        return Err(ApiError::UnsupportedMediaType(
            "a request body needs Content-Type: application/json".to_owned(),
        ));
    };
    let json = req
        .mime_type()
        .ok()
        .flatten()
        .is_some_and(|m| m.type_() == mime::APPLICATION && m.subtype() == mime::JSON);
    // Streamed starts and parts: neither type is one a page may send across sites without
    // asking first.
    let upload = crate::params::takes_upload(req.method(), req.path())
        && crate::params::Format::of(req.request()).is_some();
    if json || upload {
        return Ok(());
    }
    let shown: String = value.to_str().unwrap_or("?").chars().take(100).collect();
    Err(ApiError::UnsupportedMediaType(format!(
        "request bodies must be Content-Type: application/json (or, to start a process or \
         put a part, application/x-ndjson or text/csv), not '{shown}'"
    )))
}

/// `HEAD` of a `GET` route answers as the `GET` does, headers and length included, without the
/// body: actix-http leaves out the body of an answer to a request that came as `HEAD`, and
/// the route sees a `GET`. A stream (events) is dropped at once rather than followed.
pub async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if req.method() != Method::HEAD {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    req.head_mut().method = Method::GET;
    let response = next.call(req).await?;
    if matches!(response.response().body().size(), BodySize::Stream) {
        let response = response.map_body(|_, _| BoxBody::new(actix_web::body::None::new()));
        return Ok(response.map_into_right_body());
    }
    Ok(response.map_into_left_body())
}

/// The `Allow` header of a 405, as RFC 9110 asks.
pub fn allow_header(allow: &'static str) -> (header::HeaderName, HeaderValue) {
    (header::ALLOW, HeaderValue::from_static(allow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_compared_without_port_and_case() {
        assert_eq!(host_name("Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(host_name("localhost.").as_deref(), Some("localhost"));
        assert_eq!(host_name("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_name("[::1]").as_deref(), Some("::1"));
        assert_eq!(host_name("::1"), None);
        assert_eq!(host_name("a:b"), None);
        assert_eq!(host_name("[nope]:1"), None);
        assert_eq!(host_name(""), None);
    }

    #[test]
    fn unlisted_names_are_refused_but_localhost_and_addresses_are_not() {
        let policy = HostPolicy::new(&[]).unwrap();
        for host in ["localhost:8080", "LOCALHOST", "127.0.0.1:8080", "[::1]:8080", "10.1.2.3", "0.0.0.0:1"] {
            assert!(policy.allows(host), "{host}");
        }
        for host in
            ["rebind.evil.example", "rebind.evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io"]
        {
            assert!(!policy.allows(host), "{host}");
        }
        let listed = HostPolicy::new(&["API.example.com".to_owned()]).unwrap();
        assert!(listed.allows("api.example.com:443") && listed.allows("Api.Example.Com."));
        assert!(!listed.allows("example.com") && !listed.allows("x.api.example.com"));
        assert!(HostPolicy::new(&["*".to_owned()]).unwrap().allows("anything.example"));
        let mut public = HostPolicy::default();
        public.allow_host_of("https://Async.Example.com:8443/base");
        public.allow_host_of("");
        assert_eq!(public.names(), ["async.example.com"]);
    }

    #[test]
    fn bad_entries_are_named() {
        for entry in ["http://api.example.com", "api.example.com:8080", "", "a b", "x/y"] {
            let error = HostPolicy::new(&[entry.to_owned()]).unwrap_err();
            assert!(error.contains(&format!("'{entry}'")), "{error}");
        }
        assert!(HostPolicy::new(&["::1".to_owned(), "[::1]".to_owned(), "10.0.0.1".to_owned()]).is_ok());
        for entry in
            ["ui.example.com", "https://ui.example.com/app", "ftp://x.example", "https://u@x.example", "null"]
        {
            let error = CorsOrigins::new(&[entry.to_owned()]).unwrap_err();
            assert!(error.contains(&format!("'{entry}'")), "{error}");
        }
        let origins =
            CorsOrigins::new(&["HTTPS://UI.example.com:443/".to_owned(), "http://localhost:3000".to_owned()])
                .unwrap();
        assert_eq!(origins.list(), ["https://ui.example.com", "http://localhost:3000"]);
    }
}
