//! Reading what a caller asked for, strictly: query parameters, path IDs and action bodies.
//! Every refusal names the parameter at fault.

use async_engine_domain::{Detail, IdKind, LookupId, StatusQuery, TenantId};
use serde_json::{Map, Value};

use crate::envelope::Shape;
use crate::error::ApiError;

/// A status request, whichever way it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusRequest {
    pub id: LookupId,
    pub kind: IdKind,
    pub shape: Shape,
}

impl StatusRequest {
    /// The storage lookup this request makes within `tenant`.
    pub fn query(&self, tenant: &TenantId) -> StatusQuery {
        StatusQuery { tenant: tenant.clone(), id: self.id.clone(), kind: self.kind, detail: self.detail() }
    }

    /// Reads no more rows than the shape shows.
    pub fn detail(&self) -> Detail {
        match (self.shape.verbose, self.shape.items_list) {
            (false, _) => Detail::Process,
            (true, false) => Detail::Steps,
            (true, true) => Detail::Items,
        }
    }
}

/// `true`/`false` in any letter case; anything else, including an empty value, is refused.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ApiError::input(format!("{name} must be true or false, not '{}'", shorten(value))))
    }
}

fn parse_id_type(value: &str) -> Result<IdKind, ApiError> {
    match value {
        "asyncProcessId" => Ok(IdKind::AsyncProcessId),
        "referenceId" => Ok(IdKind::ReferenceId),
        other => Err(ApiError::input(format!(
            "idType must be asyncProcessId or referenceId, not '{}'",
            shorten(other)
        ))),
    }
}

/// The path segment `{id}`: percent-decoded exactly once and bounded.
pub fn parse_path_id(raw: &str) -> Result<LookupId, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::input("the ID is not valid UTF-8 once percent-decoded"))?;
    LookupId::new(decoded.into_owned()).map_err(|e| ApiError::input(e.to_string()))
}

/// The query string of `GET /v1/asyncprocesses/{id}` (contract §3.1). Unknown parameters are
/// ignored; a known one given twice is refused rather than guessed at.
pub fn parse_status_query(id: LookupId, query: &str) -> Result<StatusRequest, ApiError> {
    let mut request = StatusRequest { id, kind: IdKind::Either, shape: Shape::default() };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let known = matches!(name.as_ref(), "verbose" | "itemsList" | "failMessage" | "idType");
        if !known {
            continue;
        }
        if seen.iter().any(|s| *s == name) {
            return Err(ApiError::input(format!("{name} is given more than once")));
        }
        match name.as_ref() {
            "verbose" => request.shape.verbose = parse_bool(&name, &value)?,
            "itemsList" => request.shape.items_list = parse_bool(&name, &value)?,
            "failMessage" => request.shape.fail_message = parse_bool(&name, &value)?,
            _ => request.kind = parse_id_type(&value)?,
        }
        seen.push(name.into_owned());
    }
    Ok(request)
}

/// The longest `waitSeconds` (contract §6).
pub const MAX_WAIT_SECS: u64 = 60;

/// `waitSeconds=N` of a status read: 1 to 60 seconds, at most once.
pub fn parse_wait(query: &str) -> Result<Option<std::time::Duration>, ApiError> {
    let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(name, _)| name == "waitSeconds");
    let Some((_, value)) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::input("waitSeconds is given more than once"));
    }
    let seconds = value.parse::<u64>().ok().filter(|s| (1..=MAX_WAIT_SECS).contains(s)).ok_or_else(|| {
        ApiError::input(format!(
            "waitSeconds must be a whole number from 1 to {MAX_WAIT_SECS}, not '{}'",
            shorten(&value)
        ))
    })?;
    Ok(Some(std::time::Duration::from_secs(seconds)))
}

/// The body of `POST /v1/actions/getAsyncJobStatus` (contract §3.4): exactly one of `id`,
/// `asyncProcessId`, `referenceId`, and the three options as JSON booleans.
pub fn parse_action_body(body: &[u8]) -> Result<StatusRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::input(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::input("the body must be a JSON object"));
    };
    let ids: Vec<(&str, IdKind)> = [
        ("id", IdKind::Either),
        ("asyncProcessId", IdKind::AsyncProcessId),
        ("referenceId", IdKind::ReferenceId),
    ]
    .into_iter()
    .filter(|(key, _)| map.contains_key(*key))
    .collect();
    let [(key, kind)] = ids[..] else {
        return Err(ApiError::input("give exactly one of id, asyncProcessId or referenceId"));
    };
    let id = match map.get(key) {
        Some(Value::String(text)) => {
            LookupId::new(text.clone()).map_err(|e| ApiError::input(format!("{key}: {e}")))?
        }
        _ => return Err(ApiError::input(format!("{key} must be a string"))),
    };
    let shape = Shape {
        verbose: body_bool(&map, "verbose")?,
        items_list: body_bool(&map, "itemsList")?,
        fail_message: body_bool(&map, "failMessage")?,
    };
    Ok(StatusRequest { id, kind, shape })
}

fn body_bool(map: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match map.get(name) {
        None => Ok(true),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(ApiError::input(format!("{name} must be the JSON boolean true or false"))),
    }
}

/// A free-text query value: 1 to 255 characters, no control characters.
pub fn bounded(name: &str, value: &str) -> Result<String, ApiError> {
    LookupId::new(value).map(|v| v.as_str().to_owned()).map_err(|e| ApiError::input(format!("{name}: {e}")))
}

/// Echoing a caller's value is helpful; echoing a megabyte of it is not.
pub fn shorten(value: &str) -> String {
    const MAX: usize = 40;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        format!("{}…", value.chars().take(MAX).collect::<String>())
    }
}

/// Whether the route takes NDJSON or CSV items: a start, or a part of an open process.
pub fn takes_upload(method: &actix_web::http::Method, path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["", "v1", "asyncprocesses"]) => true,
        ("PUT", ["", "v1", "asyncprocesses", id, "parts", part]) => !id.is_empty() && !part.is_empty(),
        _ => false,
    }
}

/// How a streamed start's body lists its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-ndjson`: one JSON item a line.
    Ndjson,
    /// `text/csv`: RFC 4180, a header row naming each item's fields, values as strings.
    Csv,
}

impl Format {
    /// The format of a request's body, when it is one of the streamed kinds.
    pub fn of(req: &actix_web::HttpRequest) -> Option<Self> {
        let mime = actix_web::HttpMessage::mime_type(req).ok().flatten()?;
        match (mime.type_().as_str(), mime.subtype().as_str()) {
            ("application", "x-ndjson" | "ndjson") => Some(Self::Ndjson),
            ("text", "csv") => Some(Self::Csv),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> LookupId {
        LookupId::new("12324").unwrap()
    }

    fn input_text(result: Result<StatusRequest, ApiError>) -> String {
        match result {
            Err(ApiError::Input(text)) => text,
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_all_true() {
        let request = parse_status_query(id(), "").unwrap();
        assert_eq!(request.shape, Shape::default());
        assert_eq!(request.kind, IdKind::Either);
        assert_eq!(request.detail(), Detail::Items);
    }

    #[test]
    fn booleans_in_any_case() {
        let request = parse_status_query(id(), "verbose=TRUE&itemsList=False&failMessage=fAlSe").unwrap();
        assert_eq!(request.shape, Shape { verbose: true, items_list: false, fail_message: false });
        assert_eq!(request.detail(), Detail::Steps);
        assert_eq!(parse_status_query(id(), "verbose=false").unwrap().detail(), Detail::Process);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (query, name) in [
            ("verbose=maybe", "verbose"),
            ("itemsList=", "itemsList"),
            ("failMessage=1", "failMessage"),
            ("failMessage", "failMessage"),
            ("verbose=yes", "verbose"),
            ("idType=other", "idType"),
            ("verbose=true&verbose=false", "verbose"),
        ] {
            let text = input_text(parse_status_query(id(), query));
            assert!(text.contains(name), "{query}: {text}");
        }
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        let request = parse_status_query(id(), "foo=bar&verbose=false&x").unwrap();
        assert!(!request.shape.verbose);
    }

    #[test]
    fn id_type_forces_one_reading() {
        assert_eq!(parse_status_query(id(), "idType=referenceId").unwrap().kind, IdKind::ReferenceId);
        assert_eq!(parse_status_query(id(), "idType=asyncProcessId").unwrap().kind, IdKind::AsyncProcessId);
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let text = input_text(parse_status_query(id(), &format!("verbose={}", "x".repeat(10_000))));
        assert!(text.len() < 200, "{text}");
    }

    #[test]
    fn path_ids_are_decoded_once() {
        assert_eq!(parse_path_id("order%2042").unwrap().as_str(), "order 42");
        assert_eq!(parse_path_id("Z%C3%BCrich").unwrap().as_str(), "Zürich");
        assert_eq!(parse_path_id("100%2525").unwrap().as_str(), "100%25");
        assert_eq!(parse_path_id("a+b").unwrap().as_str(), "a+b");
        assert!(parse_path_id("%FF").is_err());
        assert!(parse_path_id(&"9".repeat(256)).is_err());
        assert!(parse_path_id(&"9".repeat(255)).is_ok());
        assert!(parse_path_id("a%0Ab").is_err());
    }

    #[test]
    fn action_bodies() {
        let request = parse_action_body(br#"{"id":"12324"}"#).unwrap();
        assert_eq!((request.kind, request.shape), (IdKind::Either, Shape::default()));
        let request = parse_action_body(br#"{"asyncProcessId":"1","itemsList":false,"other":1}"#).unwrap();
        assert_eq!(request.kind, IdKind::AsyncProcessId);
        assert!(!request.shape.items_list);
        let request =
            parse_action_body(br#"{"referenceId":"r","verbose":false,"failMessage":false}"#).unwrap();
        assert_eq!(request.kind, IdKind::ReferenceId);
        assert_eq!(request.shape, Shape { verbose: false, items_list: true, fail_message: false });
    }

    #[test]
    fn bad_action_bodies() {
        for (body, mention) in [
            (&br#"{}"#[..], "exactly one"),
            (br#"{"id":"1","referenceId":"1"}"#, "exactly one"),
            (br#"{"id":1}"#, "id must be a string"),
            (br#"{"id":""}"#, "empty"),
            (br#"{"id":"1","verbose":"maybe"}"#, "verbose"),
            (br#"{"id":"1","itemsList":null}"#, "itemsList"),
            (br#"[1]"#, "JSON object"),
            (br#"{"id":"1""#, "not valid JSON"),
            (b"", "not valid JSON"),
        ] {
            let text = input_text(parse_action_body(body));
            assert!(text.contains(mention), "{}: {text}", String::from_utf8_lossy(body));
        }
    }
}
