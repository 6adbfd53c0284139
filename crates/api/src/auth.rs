//! Who may do what (contract §8): bearer tokens checked against SHA-256 digests from the
//! configuration, in constant time; each key has a tenant and scopes. Without auth every
//! caller is tenant `default` with every scope (the server then listens on loopback only,
//! unless told otherwise on purpose).

use std::fmt;
use std::str::FromStr;

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;
use async_engine_domain::TenantId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The dashboard's session cookie: the token itself, HttpOnly and SameSite=Strict.
pub const SESSION_COOKIE: &str = "ae_token";

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

/// `auth.enabled` and `[[auth.keys]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    keys: Option<Vec<ApiKey>>,
}

impl Auth {
    /// Every caller is anonymous: tenant `default`, every scope.
    pub fn disabled() -> Self {
        Auth { keys: None }
    }

    pub fn with_keys(keys: Vec<ApiKey>) -> Self {
        Auth { keys: Some(keys) }
    }

    pub fn enabled(&self) -> bool {
        self.keys.is_some()
    }

    /// The caller of `req`, if it may use `scope`: 401 without a known bearer token, 403
    /// without the scope.
    pub fn authorize(&self, req: &HttpRequest, scope: Scope) -> Result<Caller, ApiError> {
        let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = match header {
            // The scheme is case-insensitive (RFC 9110).
            Some(header) => header
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.to_owned()),
            // The dashboard's browser session (a SameSite=Strict cookie, so other sites cannot
            // make the browser use it).
            None => req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()),
        };
        let caller = self.authenticate(token.as_deref())?;
        caller.require(scope)?;
        Ok(caller)
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
        Ok(Caller { key: Some(key.name.clone()), tenant: key.tenant.clone(), scopes: key.scopes.clone() })
    }
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

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn auth() -> Auth {
        Auth::with_keys(vec![
            ApiKey {
                name: "reader".into(),
                tenant: TenantId::new("acme").unwrap(),
                token_sha256: parse_digest(&digest_hex("read-token")).unwrap(),
                scopes: vec![Scope::StatusRead],
            },
            ApiKey {
                name: "ops".into(),
                tenant: TenantId::new("globex").unwrap(),
                token_sha256: parse_digest(&digest_hex("admin-token")).unwrap(),
                scopes: vec![Scope::Admin],
            },
        ])
    }

    fn request(header: Option<&str>) -> HttpRequest {
        let mut request = TestRequest::get();
        if let Some(header) = header {
            request = request.insert_header((AUTHORIZATION, header));
        }
        request.to_http_request()
    }

    #[test]
    fn a_known_token_names_its_tenant_and_its_scopes_decide() {
        let auth = auth();
        let caller = auth.authorize(&request(Some("Bearer read-token")), Scope::StatusRead).unwrap();
        assert_eq!((caller.key.as_deref(), caller.tenant.as_str()), (Some("reader"), "acme"));
        let refused = auth.authorize(&request(Some("Bearer read-token")), Scope::ProcessesWrite);
        assert!(matches!(refused, Err(ApiError::Forbidden(ref t)) if t.contains("processes:write")));
        for scope in Scope::ALL {
            assert!(auth.authorize(&request(Some("Bearer admin-token")), scope).is_ok(), "admin has {scope}");
        }
    }

    #[test]
    fn no_or_unknown_tokens_are_401() {
        let auth = auth();
        for header in
            [None, Some("Bearer"), Some("Bearer wrong"), Some("Basic cmVhZDp0b2tlbg=="), Some("read-token")]
        {
            let refused = auth.authorize(&request(header), Scope::StatusRead);
            assert!(matches!(refused, Err(ApiError::Unauthorized(_))), "{header:?}");
        }
    }

    #[test]
    fn without_auth_everyone_is_the_default_tenant_with_every_scope() {
        let caller = Auth::disabled().authorize(&request(None), Scope::TasksWork).unwrap();
        assert_eq!((caller.key, caller.tenant.as_str()), (None, "default"));
    }

    #[test]
    fn digests_and_scopes_are_checked() {
        assert!(parse_digest("abc").is_err());
        assert!(parse_digest(&"g".repeat(64)).is_err());
        assert_eq!(parse_digest(&digest_hex("x")).unwrap().len(), 32);
        assert_eq!("tasks:work".parse(), Ok(Scope::TasksWork));
        assert!("tasks:play".parse::<Scope>().is_err());
    }
}
