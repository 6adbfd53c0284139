//! Wall-clock time as the stores take it: microseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub use async_engine_domain::status::rfc3339;
