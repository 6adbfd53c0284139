//! The heart of Async Engine: what a process is, how its status is told, and the repository
//! traits that storage implements. Pure: no IO, no database, no HTTP.

pub mod definition;
pub mod ids;
pub mod json;
pub mod lifecycle;
pub mod notify;
pub mod ops;
pub mod parts;
pub mod process;
pub mod repository;
pub mod snapshot;
pub mod status;
pub mod work;

pub use definition::{FailurePolicy, Handler, ProcessDefinition, PushTarget, StepDefinition, Tolerance};
pub use ids::{IdError, LookupId, ProcessId, ReferenceId, TenantId};
pub use json::RawJson;
pub use notify::{Attempt, DeliveryRecord, DeliveryStore, DueDelivery};
pub use ops::{FailureCount, Gauges, Loads, NotReady, Operations, QueueLoad, Totals, WorkerLoad};
pub use parts::{PartError, PartInfo, PartReceipt, PartUpload, Parts};
pub use process::{FailureGroup, ProcessStatus, StepItems, StepReport};
pub use repository::{
    Detail, IdKind, ImportResult, RepositoryError, SnapshotWriter, StatusQuery, StatusReader,
};
pub use snapshot::{FailureSnapshot, ProcessSnapshot, SnapshotError, StepSnapshot};
pub use status::{ProcessEnd, Status, StepState, UnknownStatus};
pub use work::{
    ClaimRequest, ClaimedTask, CommandError, Completion, ItemResult, ItemsError, ItemsPage, ItemsQuery,
    ListError, ListQuery, ListedItem, NewProcess, OutcomeFilter, Page, ProcessStore, ResultRow,
    ResultsFilter, ResultsQuery, Started, StreamedStartError, TaskError, TaskReport, TaskStore,
};
