//! Unit tests of API keys, sessions, CSRF tokens and the failed-token throttle.

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

fn cookie_request(method: &str, cookie: &str) -> HttpRequest {
    let request = if method == "GET" { TestRequest::get() } else { TestRequest::post() };
    request.cookie(actix_web::cookie::Cookie::new(SESSION_COOKIE, cookie.to_owned())).to_http_request()
}

fn session_of(auth: &Auth, token: &str) -> String {
    let caller = auth.authenticate(Some(token)).unwrap();
    auth.start_session(&caller).unwrap().0
}

#[test]
fn a_session_names_its_key_never_the_token_and_reads_only_through_the_api() {
    let auth = auth();
    let session = session_of(&auth, "admin-token");
    assert!(!session.contains("admin-token") && !session.contains(&digest_hex("admin-token")), "{session}");
    let caller = auth.authorize(&cookie_request("GET", &session), Scope::StatusRead).unwrap();
    assert_eq!(caller.key.as_deref(), Some("ops"));
    // A write, or a read by POST, with only the cookie is as if no token was sent.
    for (method, scope) in
        [("POST", Scope::ProcessesWrite), ("POST", Scope::StatusRead), ("GET", Scope::Admin)]
    {
        let refused = auth.authorize(&cookie_request(method, &session), scope);
        assert!(matches!(refused, Err(ApiError::Unauthorized(_))), "{method} {scope}");
    }
    // The dashboard's own forms (their CSRF token checked first) may use it for writes.
    assert!(auth.authorize_page(&cookie_request("POST", &session), Scope::ProcessesWrite).is_ok());
}

#[test]
fn sessions_expire_end_at_logout_and_cannot_be_forged() {
    let auth = auth();
    let session = session_of(&auth, "read-token");
    let now = unix_now();
    assert!(auth.session_caller(&session, now).is_ok());
    assert!(auth.session_caller(&session, now + DEFAULT_SESSION_TTL.as_secs() + 1).is_err(), "expired");
    // Another expiry, another key or another secret does not verify.
    let (id, rest) = session.split_once('.').unwrap();
    let (expires, rest) = rest.split_once('.').unwrap();
    let later = format!("{id}.{}.{rest}", expires.parse::<u64>().unwrap() + 3600);
    let other_key = format!("{id}.{expires}.{}.{}", hex::encode("ops"), rest.split_once('.').unwrap().1);
    for forged in [later, other_key, session_of(&self::auth(), "read-token"), "x".into(), String::new()] {
        assert!(auth.session_caller(&forged, now).is_err(), "{forged}");
    }
    // A key given a new token ends its sessions.
    let mut keys = auth.keys.clone().unwrap();
    keys[0].token_sha256 = parse_digest(&digest_hex("new-read-token")).unwrap();
    let rotated = Auth { keys: Some(keys), ..auth_with_secret(&auth) };
    assert!(rotated.session_caller(&session, now).is_err());
    // Logout.
    auth.end_session(&session);
    assert!(auth.session_caller(&session, now).is_err());
    assert!(auth.session_caller(&session_of(&auth, "read-token"), now).is_ok(), "a new one works");
}

/// The same keys and secret, with nothing revoked.
fn auth_with_secret(auth: &Auth) -> Auth {
    Auth {
        keys: auth.keys.clone(),
        secret: auth.secret.clone(),
        session_ttl_secs: auth.session_ttl_secs,
        revoked: Mutex::new(HashMap::new()),
        throttle: None,
        public_https: false,
        public_origin: None,
        trusted_proxies: Vec::new(),
    }
}

#[test]
fn a_configured_secret_signs_alike_on_every_node() {
    let web = WebSettings { session_secret: Some("s".repeat(32)), ..WebSettings::default() };
    let (one, two) = (auth().with_web(web.clone()), auth().with_web(web));
    let session = session_of(&one, "read-token");
    assert!(two.session_caller(&session, unix_now()).is_ok());
    assert_eq!(one.csrf_token("c", &session), two.csrf_token("c", &session));
}

#[test]
fn csrf_tokens_belong_to_their_cookies() {
    let auth = auth();
    let token = auth.csrf_token("cookie", "session");
    assert!(auth.csrf_matches("cookie", "session", &token));
    for (cookie, session, token) in [
        ("other", "session", token.as_str()),
        ("cookie", "", token.as_str()),
        ("cookie", "session", ""),
        ("cookie", "session", "00"),
        ("", "", &auth.csrf_token("", "")),
    ] {
        assert!(!auth.csrf_matches(cookie, session, token), "{cookie} {session} {token}");
    }
    // Every `auth()` has a random secret of its own.
    assert!(!self::auth().csrf_matches("cookie", "session", &token), "another secret");
}

fn from(peer: &str, headers: &[(&str, &str)]) -> HttpRequest {
    let mut request = TestRequest::get().peer_addr(peer.parse().unwrap());
    for (name, value) in headers {
        request = request.insert_header((*name, *value));
    }
    request.to_http_request()
}

#[test]
fn forwarded_headers_count_from_trusted_proxies_only() {
    let web = WebSettings {
        trusted_proxies: parse_proxies(&["10.0.0.0/8".into(), "::1".into()]).unwrap(),
        ..WebSettings::default()
    };
    let auth = auth().with_web(web);
    let tls = [("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "203.0.113.9, 10.1.1.1")];
    assert!(auth.over_tls(&from("10.2.3.4:5000", &tls)));
    assert!(auth.over_tls(&from("[::1]:5000", &tls)));
    assert!(!auth.over_tls(&from("192.0.2.1:5000", &tls)), "an untrusted peer says what it likes");
    assert!(!auth.over_tls(&from("10.2.3.4:5000", &[("X-Forwarded-Proto", "http")])));
    let client = |peer, headers| auth.client_address(&from(peer, headers)).unwrap().to_string();
    assert_eq!(client("10.2.3.4:5000", &tls), "203.0.113.9");
    assert_eq!(client("192.0.2.1:5000", &tls), "192.0.2.1");
    // A made-up address before an untrusted one does not count.
    assert_eq!(client("10.2.3.4:5000", &[("X-Forwarded-For", "1.1.1.1, 198.51.100.7")]), "198.51.100.7");
    // Hops written with a port, as some proxies do, are the same addresses.
    for (hops, expected) in [
        ("203.0.113.9:41000, 10.1.1.1:443", "203.0.113.9"),
        ("[2001:db8::7]:41000, 10.1.1.1", "2001:db8::7"),
        ("[2001:db8::7], [::1]:8080", "2001:db8::7"),
        ("2001:db8::7, ::1", "2001:db8::7"),
    ] {
        let through = auth.client_address(&from("10.2.3.4:5000", &[("X-Forwarded-For", hops)]));
        assert_eq!(through.unwrap().to_string(), expected, "{hops}");
    }
    // Something else still ends the walk at the last address that parsed.
    assert_eq!(client("10.2.3.4:5000", &[("X-Forwarded-For", "198.51.100.7, unknown")]), "10.2.3.4");
    assert!(
        auth.with_web(WebSettings { public_https: true, ..WebSettings::default() })
            .over_tls(&from("192.0.2.1:1", &[]))
    );
    assert!(parse_proxies(&["10.0.0.0/33".into()]).is_err());
    assert!(parse_proxies(&["proxy.internal".into()]).is_err());
}

#[test]
fn failures_are_throttled_per_address_and_accepted_tokens_never_count() {
    let auth = auth().with_web(WebSettings { max_failures_per_minute: 3, ..WebSettings::default() });
    let at = |peer: &str, token: &str| auth.check_token(&from(peer, &[]), Some(token));
    for _ in 0..20 {
        assert!(at("192.0.2.1:1", "read-token").is_ok(), "successes are not counted");
    }
    for _ in 0..3 {
        assert!(matches!(at("192.0.2.1:1", "wrong"), Err(ApiError::Unauthorized(_))));
    }
    let Err(ApiError::AuthThrottled { retry_after_secs }) = at("192.0.2.1:2", "wrong") else {
        panic!("the fourth failure is throttled");
    };
    assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}");
    // Over the limit, a good token still passes (and does not count): one guesser cannot
    // lock out the other clients behind its address; its own failures stay 429.
    for _ in 0..5 {
        assert!(at("192.0.2.1:3", "read-token").is_ok(), "a good token while throttled");
        assert!(matches!(at("192.0.2.1:3", "wrong"), Err(ApiError::AuthThrottled { .. })));
    }
    assert!(matches!(at("192.0.2.1:3", ""), Err(ApiError::AuthThrottled { .. })), "an empty token");
    // Other addresses are counted apart; an IPv6 client by its /64.
    assert!(matches!(at("192.0.2.2:1", "wrong"), Err(ApiError::Unauthorized(_))));
    for n in 0..3 {
        let _ = at(&format!("[2001:db8::{n}]:1"), "wrong");
    }
    assert!(matches!(at("[2001:db8::ff]:1", "wrong"), Err(ApiError::AuthThrottled { .. })));
    assert!(matches!(at("[2001:db8:0:1::1]:1", "wrong"), Err(ApiError::Unauthorized(_))));
    // Off by default in the library.
    let open = self::auth();
    for _ in 0..50 {
        assert!(matches!(
            open.check_token(&from("192.0.2.1:1", &[]), Some("wrong")),
            Err(ApiError::Unauthorized(_))
        ));
    }
}

#[test]
fn the_public_url_s_origin_is_what_browsers_send() {
    assert_eq!(origin_of("https://Async.Example.com/").as_deref(), Some("https://async.example.com"));
    assert_eq!(origin_of("https://async.example.com:443/app").as_deref(), Some("https://async.example.com"));
    assert_eq!(origin_of("http://10.0.0.1:8080").as_deref(), Some("http://10.0.0.1:8080"));
    assert_eq!(origin_of(""), None);
    let auth = auth().with_web(WebSettings {
        public_origin: origin_of("https://async.example.com"),
        ..WebSettings::default()
    });
    assert!(auth.is_public_origin("https://async.example.com"));
    assert!(!auth.is_public_origin("https://evil.example.com"));
    assert!(!auth.is_public_origin("null"));
    assert!(!self::auth().is_public_origin("null"), "none configured");
}

#[test]
fn digests_and_scopes_are_checked() {
    assert!(parse_digest("abc").is_err());
    assert!(parse_digest(&"g".repeat(64)).is_err());
    assert_eq!(parse_digest(&digest_hex("x")).unwrap().len(), 32);
    assert_eq!("tasks:work".parse(), Ok(Scope::TasksWork));
    assert!("tasks:play".parse::<Scope>().is_err());
}

#[test]
fn callers_are_keyed_by_api_key_else_by_client_address() {
    let anonymous = Caller::anonymous();
    let address = |text: &str| Some(text.parse::<IpAddr>().unwrap());
    assert_eq!(caller_key(&anonymous, address("192.0.2.1")), "address:192.0.2.1");
    assert_eq!(
        caller_key(&anonymous, address("::ffff:192.0.2.1")),
        "address:192.0.2.1",
        "one client, however its address is written"
    );
    assert_ne!(caller_key(&anonymous, address("192.0.2.1")), caller_key(&anonymous, address("192.0.2.2")));
}
