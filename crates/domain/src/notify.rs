//! FinishProcess notifications (contract §5): the outbox's contract and the retry schedule.
//! Storage writes a delivery in the transaction that finishes a process; a sender claims due
//! deliveries, POSTs them and records each attempt here.

use crate::ids::TenantId;
use crate::process::ProcessStatus;
use crate::repository::RepositoryError;

/// A delivery whose attempt is due, leased to one sender until `lease_expires_at_micros`.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub id: i64,
    /// The `X-Async-Engine-Delivery` header: the same on every attempt.
    pub delivery_id: String,
    pub url: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The body fixed by an earlier attempt, to send again byte for byte.
    pub body: Option<String>,
    /// The process as it is now (with step counters), to render the body of a first attempt.
    pub process: ProcessStatus,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub delivery: i64,
    /// The attempt number the claim gave out: a late report of an older attempt changes nothing.
    pub attempt: u32,
    /// The body sent, kept so that later attempts send the same.
    pub body: String,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// `None` when the receiver took the delivery (2xx); else why not, for operators.
    pub error: Option<String>,
    /// When to try again after a failed attempt; `None` gives up (the last attempt failed).
    pub retry_at_micros: Option<i64>,
    pub now_micros: i64,
}

/// A delivery as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub delivery_id: String,
    pub url: String,
    /// The status the process finished in when the delivery was made.
    pub finished_status: String,
    /// `pending`, `delivered`, `failed` (gave up) or `superseded` (the process was retried
    /// before any attempt; its next finish is announced instead).
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at_micros: Option<i64>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at_micros: i64,
    pub delivered_at_micros: Option<i64>,
}

/// The outbox.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait DeliveryStore: Send + Sync {
    /// Leases up to `limit` due deliveries for `lease_micros`; a lease that runs out (a sender
    /// that crashed mid-attempt) makes the delivery due again, on any node.
    fn claim_deliveries(
        &self,
        limit: u32,
        lease_micros: i64,
        now_micros: i64,
    ) -> Result<Vec<DueDelivery>, RepositoryError>;
    /// Stores the body of a first attempt before it is sent; false when the lease was lost.
    fn fix_body(&self, delivery: i64, attempt: u32, body: &str) -> Result<bool, RepositoryError>;
    fn record_attempt(&self, attempt: &Attempt) -> Result<(), RepositoryError>;
    /// The deliveries of one process, oldest first; `None` when the tenant has no such process.
    fn deliveries(
        &self,
        tenant: &TenantId,
        async_process_id: &str,
    ) -> Result<Option<Vec<DeliveryRecord>>, RepositoryError>;
}

/// How long to wait before attempt `attempt + 1` after attempt `attempt` failed: exponential
/// from `initial_millis`, capped at `max_millis`, with "full jitter" (`unit` in `[0, 1)` picks
/// a point in the upper half of the window) so that receivers coming back are not hit by every
/// sender at once. Pure: the caller draws `unit`.
pub fn backoff_millis(attempt: u32, initial_millis: u64, max_millis: u64, unit: f64) -> u64 {
    let exponent = attempt.saturating_sub(1).min(32);
    let window = initial_millis.saturating_mul(1_u64 << exponent).min(max_millis);
    let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.0 };
    // Half the window is always waited; the other half is spread.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a product of a window below 2^64 and a unit in [0, 1]"
    )]
    let spread = ((window / 2) as f64 * unit) as u64;
    window - window / 2 + spread
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_in_the_upper_half_of_its_window() {
        assert_eq!(backoff_millis(1, 1000, 60_000, 0.0), 500);
        assert_eq!(backoff_millis(1, 1000, 60_000, 0.999_999), 999);
        assert_eq!(backoff_millis(2, 1000, 60_000, 0.0), 1000);
        assert_eq!(backoff_millis(3, 1000, 60_000, 0.0), 2000);
        assert_eq!(backoff_millis(10, 1000, 60_000, 0.0), 30_000);
        assert_eq!(backoff_millis(100, 1000, 60_000, 0.5), 45_000);
        // Nonsense draws and huge attempt numbers neither panic nor escape the cap.
        assert_eq!(backoff_millis(u32::MAX, u64::MAX, u64::MAX, f64::NAN), u64::MAX - u64::MAX / 2);
        assert!(backoff_millis(5, 1000, 60_000, 7.0) <= 16_000);
    }
}
