//! JSON values kept as the text they arrived as, so items and additional data come back
//! exactly as given (no float rounding of large numbers, no re-encoding on every read).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The deepest nesting of arrays and objects accepted in items and additional data. serde_json
/// checks the text of a `RawValue` without a depth limit, while ordinary parsers (Python's,
/// serde_json's own for a `Value`: 128) refuse deep values: a value stored deeper than they
/// read would break every answer that lists it, for every client of the tenant.
pub const MAX_DEPTH: usize = 64;

/// A value nested deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is nested deeper than {MAX_DEPTH} levels of arrays and objects (the limit)")]
pub struct TooDeep;

/// How deeply arrays and objects nest in `text` (0 for a scalar), read from the text alone
/// without building anything: a bracket inside a string does not count.
pub fn depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0_usize, 0_usize, false, false);
    for &byte in text {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// One JSON value, stored and served as its text.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Checks that `text` is one JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// A caller's value, refused when it nests deeper than [`MAX_DEPTH`].
    pub fn from_input(raw: Box<RawValue>) -> Result<Self, TooDeep> {
        let value = Self(raw);
        value.check_depth()?;
        Ok(value)
    }

    /// Refuses a value that nests deeper than [`MAX_DEPTH`].
    pub fn check_depth(&self) -> Result<(), TooDeep> {
        if depth(self.as_str().as_bytes()) > MAX_DEPTH { Err(TooDeep) } else { Ok(()) }
    }

    pub fn from_value(value: &serde_json::Value) -> Self {
        // A Value always serialises to valid JSON text; the fallback is unreachable.
        let raw = serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned());
        Self(raw)
    }

    pub fn empty_object() -> Self {
        Self::from_value(&serde_json::Value::Object(serde_json::Map::new()))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for RawJson {
    /// Equal as JSON values, whatever the whitespace or key order of the text.
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.to_value() == other.to_value()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_as_given() {
        let big = "123456789012345678901234567890";
        let raw = RawJson::from_text(big.to_owned()).unwrap();
        assert_eq!(serde_json::to_string(&raw).unwrap(), big);
    }

    #[test]
    fn invalid_text_is_refused() {
        assert!(RawJson::from_text("{".to_owned()).is_err());
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(depth(b"1"), 0);
        assert_eq!(depth(b"[]"), 1);
        assert_eq!(depth(br#"{"a":[1,{"b":[]}],"c":{}}"#), 4);
        assert_eq!(depth(br#"["[[[{{", "\\", "\"[[["]"#), 1);
    }

    #[test]
    fn values_deeper_than_the_limit_are_refused() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        let raw = |text: String| RawValue::from_string(text).unwrap();
        assert!(RawJson::from_input(raw(nested(MAX_DEPTH))).is_ok());
        assert_eq!(RawJson::from_input(raw(nested(MAX_DEPTH + 1))).err(), Some(TooDeep));
        // serde_json's RawValue accepts any depth: the check is ours.
        assert!(RawJson::from_input(raw(nested(100_000))).is_err());
        assert!(TooDeep.to_string().contains("64"));
    }

    #[test]
    fn equality_is_by_json_value() {
        let a = RawJson::from_text(r#"{ "a": 1, "b": 2 }"#.to_owned()).unwrap();
        let b = RawJson::from_text(r#"{"b":2,"a":1}"#.to_owned()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, RawJson::from_text("1".to_owned()).unwrap());
    }
}
