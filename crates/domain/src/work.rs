//! The contracts of running processes: starting them, leasing their tasks to workers,
//! recording outcomes, and the commands callers give (contract §4).

use crate::definition::ProcessDefinition;
use crate::ids::{ProcessId, ReferenceId, TenantId};
use crate::json::RawJson;
use crate::lifecycle::Refused;
use crate::parts::{PartError, PartReceipt, PartUpload, Parts};
use crate::process::ProcessStatus;
use crate::repository::RepositoryError;
use crate::snapshot::FailureSnapshot;
use crate::status::Status;

/// Code recorded for items whose task ran out of attempts.
pub const GAVE_UP_CODE: i64 = 1000;

/// A process to start, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewProcess {
    pub tenant: TenantId,
    pub async_process_id: ProcessId,
    pub reference_id: ReferenceId,
    pub definition: ProcessDefinition,
    pub items: Vec<RawJson>,
    /// A JSON object.
    pub additional_data: RawJson,
    /// A repeated key of the same tenant returns the first process instead of a new one.
    pub idempotency_key: Option<String>,
    /// Where to announce the finish (contract §5), already checked against the allowed hosts.
    pub callback_url: Option<String>,
    pub now_micros: i64,
    /// A delayed start (`startAt`): no task of it is due before this time.
    pub start_at_micros: Option<i64>,
    /// Higher first; fair among processes of one priority (`priority`, 0 unless given).
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    Created(ProcessStatus),
    /// The idempotency key was used before: this is the process it started.
    Existing(ProcessStatus),
}

/// A worker asking for due tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Queue names as handlers print them (`builtin:noop`, `queue:pricing`).
    pub queues: Vec<String>,
    /// Only tasks of this tenant's processes (external workers); `None` for the engine, which
    /// runs built-in steps for every tenant.
    pub tenant: Option<TenantId>,
    pub worker_id: String,
    pub max_tasks: u32,
    pub lease_micros: i64,
    pub now_micros: i64,
}

/// A leased task: one chunk of one step's items.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    pub task_id: i64,
    pub lease_token: String,
    pub tenant: TenantId,
    pub async_process_id: String,
    pub reference_id: String,
    pub process_name: String,
    pub step_number: u32,
    pub step_name: String,
    pub queue: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub lease_expires_at_micros: i64,
    pub additional_data: RawJson,
    /// `(index in the process's items, item)`.
    pub items: Vec<(u64, RawJson)>,
}

/// What a worker reports for every item of its task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskReport {
    pub successes: Vec<u64>,
    pub failures: Vec<FailureSnapshot>,
}

/// One leased task's report, for [`TaskStore::complete_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub task_id: i64,
    pub lease_token: String,
    pub report: TaskReport,
}

/// Why a task call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The lease is unknown, stale, or its task is no longer leased: nothing was recorded.
    #[error("{0}")]
    Conflict(String),
    /// The report itself is wrong (an index missing, repeated or not of the task).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] RepositoryError),
}

/// Why a command on a process was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no process has the asyncProcessId '{0}'")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("process '{0}' was imported as a record of history; the engine does not run it")]
    NotRunnable(String),
    #[error(transparent)]
    Storage(#[from] RepositoryError),
}

/// A page of the process list (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub tenant: TenantId,
    pub status: Option<Status>,
    pub name: Option<String>,
    pub reference_id: Option<String>,
    pub limit: u32,
    /// Opaque position from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Each record with its steps' counters (the dashboard's bars); else the process only.
    pub with_steps: bool,
    /// `name` and `reference_id` match the start of a process's name and reference ID,
    /// ignoring the case of ASCII letters (the dashboard's search); else they match exactly.
    pub prefix: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<ProcessStatus>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("cursor is not one this server gave out")]
    BadCursor,
    #[error(transparent)]
    Storage(#[from] RepositoryError),
}

/// Which recorded outcomes the items call lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeFilter {
    Any,
    Successful,
    Failed,
}

/// A page of one step's items, in recording order (contract §6, the items call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemsQuery {
    pub tenant: TenantId,
    pub async_process_id: String,
    pub step_number: u32,
    pub outcome: OutcomeFilter,
    pub limit: u32,
    /// Opaque position from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One item with its outcome at the step.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedItem {
    /// The item's position in the process's `items` array.
    pub index: u64,
    pub item: RawJson,
    /// `(code, statusMessage)` of a failure; `None` for a success.
    pub failure: Option<(i64, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ItemsPage {
    pub items: Vec<ListedItem>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemsError {
    #[error("no process has the asyncProcessId '{0}'")]
    NotFound(String),
    #[error("the process has no step {step}; its steps are numbered 0 to {last}")]
    NoSuchStep { step: u32, last: u32 },
    #[error("cursor is not one this server gave out")]
    BadCursor,
    #[error(transparent)]
    Storage(#[from] RepositoryError),
}

/// Which items of a step a results read returns (the result files, issue 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultsFilter {
    Succeeded,
    Failed,
    /// Items of the process with no outcome at the step: not reached yet, left out by an
    /// earlier step's failure, or never run because the process ended first.
    Unprocessed,
    All,
}

/// A page of a step's results in item order, after the item `after` (none: from the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsQuery {
    pub tenant: TenantId,
    pub async_process_id: String,
    pub step_number: u32,
    pub filter: ResultsFilter,
    pub after: Option<u64>,
    pub limit: u32,
}

/// An item's result at a step.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult {
    Succeeded,
    Failed { code: i64, status_message: String },
    Unprocessed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub index: u64,
    /// The item's JSON text as stored (checked when it was stored: a result file copies it
    /// out without parsing it again).
    pub item: String,
    pub result: ItemResult,
}

/// Why a start whose items came as a stream stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum StreamedStartError {
    /// Reading the items failed (the caller's upload, already checked, could not be read
    /// back): nothing was stored.
    #[error("{0}")]
    Items(String),
    #[error(transparent)]
    Storage(#[from] RepositoryError),
}

/// Starting and steering processes.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait ProcessStore: Send + Sync {
    fn start(&self, process: &NewProcess) -> Result<Started, RepositoryError>;
    /// Starts a process over `items` as they come (`process.items` is not read), in one
    /// transaction: an `Err` from `items` leaves no process at all. Memory stays flat
    /// whatever the number of items.
    fn start_streamed(
        &self,
        process: &NewProcess,
        items: &mut dyn Iterator<Item = Result<RawJson, String>>,
    ) -> Result<Started, StreamedStartError>;
    /// Starts a process open (`process.items` is not read): waiting for its items, which
    /// come in parts until [`ProcessStore::close`].
    fn start_open(&self, process: &NewProcess) -> Result<Started, RepositoryError>;
    /// Stores one part of an open process in one transaction, replacing what that part held;
    /// an `Err` from `items` leaves the part as it was.
    fn put_part(
        &self,
        part: &PartUpload,
        items: &mut dyn Iterator<Item = Result<RawJson, String>>,
    ) -> Result<PartReceipt, PartError>;
    fn parts(&self, tenant: &TenantId, id: &str) -> Result<Parts, PartError>;
    /// Numbers the parts' items in part order into the process's items and starts step 0.
    fn close(&self, tenant: &TenantId, id: &str, now_micros: i64) -> Result<ProcessStatus, PartError>;
    fn cancel(&self, tenant: &TenantId, id: &str, now_micros: i64) -> Result<ProcessStatus, CommandError>;
    fn retry(&self, tenant: &TenantId, id: &str, now_micros: i64) -> Result<ProcessStatus, CommandError>;
    fn list(&self, query: &ListQuery) -> Result<Page, ListError>;
    /// Pages through one step's recorded outcomes, oldest first; memory stays flat whatever
    /// the size of the step.
    fn items(&self, query: &ItemsQuery) -> Result<ItemsPage, ItemsError>;
    /// One page of a step's results in item order: at most `query.limit` rows, each read at
    /// the same cost whatever the size of the process; an empty page is the end.
    fn results(&self, query: &ResultsQuery) -> Result<Vec<ResultRow>, ItemsError>;
}

/// Leasing tasks and recording their outcomes, exactly once.
///
/// `tenant` of the lease calls is the caller's: `Some` for an external worker, whose calls on
/// another tenant's task are refused exactly like calls on a task that does not exist (same
/// error, same text, nothing changed); `None` for the engine, which runs built-in steps for
/// every tenant.
#[cfg_attr(feature = "mocks", mockall::automock)]
pub trait TaskStore: Send + Sync {
    /// Leases up to `max_tasks` due tasks (queued, or with an expired lease). A task whose
    /// lease expired on its last attempt has its items recorded as failed instead.
    fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedTask>, RepositoryError>;
    /// Whether [`TaskStore::claim`] with this request may find a due task now, without
    /// leasing anything: the one small read that tells waiting claims whether to look.
    fn any_due(&self, request: &ClaimRequest) -> Result<bool, RepositoryError>;
    /// Records every item's outcome, releases the task and moves the process on, in one
    /// transaction.
    fn complete(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        lease_token: &str,
        report: &TaskReport,
        now_micros: i64,
    ) -> Result<(), TaskError>;
    /// Records several tasks at once (group commit): each exactly as [`TaskStore::complete`]
    /// would, with its own refusal in its own place of the answer, all in one transaction. An
    /// `Err` (storage) recorded none of them.
    fn complete_all(
        &self,
        tenant: Option<TenantId>,
        completions: &[Completion],
        now_micros: i64,
    ) -> Result<Vec<Result<(), TaskError>>, RepositoryError>;
    /// Extends a lease; returns the new expiry.
    fn heartbeat(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        lease_token: &str,
        lease_micros: i64,
        now_micros: i64,
    ) -> Result<i64, TaskError>;
    /// Gives a task back: retried later while attempts remain and `retryable`, else every item
    /// is recorded as failed with `message`.
    fn fail(
        &self,
        tenant: Option<TenantId>,
        task_id: i64,
        lease_token: &str,
        message: &str,
        retryable: bool,
        now_micros: i64,
    ) -> Result<(), TaskError>;
}
