//! The documented response envelope and record shapes (contract §3.2), field names spelled
//! exactly as the documentation spells them, `Proccessed` included.

use async_engine_domain::{FailureGroup, ProcessStatus, RawJson, Status, StepReport};
use serde::Serialize;
use utoipa::ToSchema;

/// Every answer of the status API, success or error.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<'a> {
    pub code: u16,
    #[serde(rename = "statusMessage")]
    pub status_message: &'a str,
    #[serde(rename = "technicalMessage")]
    pub technical_message: Option<&'a str>,
    /// The processes found; empty on an error.
    #[serde(rename = "AsyncProcessStatus")]
    pub records: Vec<Record<'a>>,
}

impl<'a> Envelope<'a> {
    /// The 202 of a command (start, cancel, retry, close): each record with its steps'
    /// counters, not their items.
    pub fn accepted(records: &'a [ProcessStatus]) -> Self {
        let summary = Shape { verbose: true, items_list: false, fail_message: true };
        Envelope {
            code: 202,
            status_message: "Success",
            technical_message: None,
            records: records.iter().map(|r| Record::new(r, summary)).collect(),
        }
    }
}

/// What the three documented parameters leave in each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub verbose: bool,
    pub items_list: bool,
    pub fail_message: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Self { verbose: true, items_list: true, fail_message: true }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Record<'a> {
    reference_id: &'a str,
    async_process_name: &'a str,
    async_process_id: &'a str,
    #[schema(value_type = crate::schema::StatusName)]
    status: Status,
    message: &'a str,
    step_name: &'a str,
    current_step_number: u32,
    total_number_of_steps: u32,
    /// Absent with `verbose=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    items_processed: Option<Vec<Step<'a>>>,
    #[schema(value_type = Object)]
    additional_data: &'a RawJson,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Step<'a> {
    step_number: u32,
    step_name: &'a str,
    #[schema(value_type = crate::schema::StatusName)]
    status: Status,
    #[serde(rename = "currentNumberOfItemsProccessed")]
    processed: u64,
    #[serde(rename = "totalNumberOfItemsToBeProccessed")]
    total: u64,
    message: &'a str,
    /// The items that succeeded, as given; absent with `itemsList=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Value>>)]
    successfully: Option<&'a [RawJson]>,
    /// Failures grouped by code and message; absent with `itemsList=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<Vec<Failed<'a>>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Failed<'a> {
    #[schema(value_type = Vec<Value>)]
    items: &'a [RawJson],
    code: i64,
    /// Absent with `failMessage=false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_message: Option<&'a str>,
}

impl<'a> Record<'a> {
    pub fn new(process: &'a ProcessStatus, shape: Shape) -> Self {
        let items_processed = if shape.verbose {
            process.steps.as_ref().map(|steps| steps.iter().map(|step| Step::new(step, shape)).collect())
        } else {
            None
        };
        Record {
            reference_id: &process.reference_id,
            async_process_name: &process.name,
            async_process_id: &process.async_process_id,
            status: process.status,
            message: &process.message,
            step_name: &process.step_name,
            current_step_number: process.current_step_number,
            total_number_of_steps: process.total_number_of_steps,
            items_processed,
            additional_data: &process.additional_data,
        }
    }
}

impl<'a> Step<'a> {
    fn new(step: &'a StepReport, shape: Shape) -> Self {
        // Lists are shown only when asked for; an unread list is shown as empty rather than
        // leaving the documented keys out.
        let lists = shape.items_list.then_some(step.items.as_ref());
        Step {
            step_number: step.step_number,
            step_name: &step.step_name,
            status: step.status,
            processed: step.processed,
            total: step.total,
            message: &step.message,
            successfully: lists.map(|l| l.map_or(&[][..], |l| &l.successfully[..])),
            failed: lists.map(|l| {
                l.map_or(&[][..], |l| &l.failed[..]).iter().map(|group| Failed::new(group, shape)).collect()
            }),
        }
    }
}

impl<'a> Failed<'a> {
    fn new(group: &'a FailureGroup, shape: Shape) -> Self {
        Failed {
            items: &group.items,
            code: group.code,
            status_message: shape.fail_message.then_some(group.status_message.as_str()),
        }
    }
}
