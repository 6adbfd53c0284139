//! JSON values kept as the text they arrived as, so items and additional data come back
//! exactly as given (no float rounding of large numbers, no re-encoding on every read).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    fn equality_is_by_json_value() {
        let a = RawJson::from_text(r#"{ "a": 1, "b": 2 }"#.to_owned()).unwrap();
        let b = RawJson::from_text(r#"{"b":2,"a":1}"#.to_owned()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, RawJson::from_text("1".to_owned()).unwrap());
    }
}
