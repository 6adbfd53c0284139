//! The read model of a process: what a status answer reports, before any wire format.

use crate::json::RawJson;
use crate::status::Status;

/// One process as the status call reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStatus {
    pub async_process_id: String,
    pub reference_id: String,
    pub name: String,
    pub status: Status,
    pub message: String,
    pub step_name: String,
    pub current_step_number: u32,
    pub total_number_of_steps: u32,
    /// `None` when the caller asked for no step detail (`verbose=false`).
    pub steps: Option<Vec<StepReport>>,
    /// A JSON object.
    pub additional_data: RawJson,
    /// When it was created and last changed, in microseconds since the Unix epoch: for views
    /// (the dashboard), not part of the documented envelope.
    pub created_at_micros: i64,
    pub updated_at_micros: i64,
    /// False for a record of history imported as it was (the documented example, seeded
    /// history): the engine does not run it, and it takes no commands. For views, not part of
    /// the documented envelope.
    pub runnable: bool,
}

/// One step of a process, with its counters and, when asked for, its items.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    pub step_number: u32,
    pub step_name: String,
    pub status: Status,
    pub message: String,
    /// Items with a recorded outcome (`currentNumberOfItemsProccessed`).
    pub processed: u64,
    /// Items that entered the step (`totalNumberOfItemsToBeProccessed`).
    pub total: u64,
    /// `None` when the caller asked for no item lists (`itemsList=false`).
    pub items: Option<StepItems>,
}

/// The items of one step with their outcomes, each list in the order it was recorded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepItems {
    pub successfully: Vec<RawJson>,
    pub failed: Vec<FailureGroup>,
}

/// Items that failed one step with the same code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureGroup {
    pub items: Vec<RawJson>,
    pub code: i64,
    pub status_message: String,
}
