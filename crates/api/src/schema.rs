//! Types that exist only to be described in the OpenAPI document: the request bodies that
//! handlers read field by field (to keep items as the caller wrote them), the status names and
//! the query values. Low in the crate, so that the handlers' `#[utoipa::path]` attributes and
//! the envelope name them without importing `openapi.rs`, which collects them at the top.

#![expect(dead_code, reason = "types that exist to be described, never built")]

use utoipa::ToSchema;

/// A status, as answers spell it.
#[derive(ToSchema)]
pub enum StatusName {
    WaitingToProcess,
    InProgress,
    Success,
    Failed,
    Aborted,
}

/// `POST /v1/asyncprocesses`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct StartBody {
    /// A configured definition's name (`GET /v1/processdefinitions`).
    #[schema(min_length = 1, max_length = 255)]
    async_process_name: String,
    #[schema(min_length = 1, max_length = 255)]
    reference_id: String,
    /// Any JSON values, kept as written. Required, unless `open` is true (then left out).
    #[schema(value_type = Option<Vec<Value>>)]
    items: Option<()>,
    /// True: a process that takes its items in parts (`PUT /v1/asyncprocesses/{id}/parts/{n}`)
    /// and waits for them until `POST /v1/asyncprocesses/{id}/close`.
    open: Option<bool>,
    #[schema(value_type = Option<Object>)]
    additional_data: Option<()>,
    /// Where to POST the envelope when the process finishes; its host must be allowed.
    #[schema(max_length = 2048)]
    callback_url: Option<String>,
    /// A delayed start, RFC 3339 with its offset, at most 366 days ahead: the process waits
    /// (cancellable) and its message says until when. A time gone by starts it at once.
    #[schema(format = DateTime)]
    start_at: Option<String>,
    /// Higher first; processes of one priority take turns (default 0).
    #[schema(minimum = -100, maximum = 100)]
    priority: Option<i32>,
}

/// `POST /v1/actions/getAsyncJobStatus`: exactly one of `id`, `asyncProcessId`, `referenceId`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ActionBody {
    #[schema(min_length = 1, max_length = 255)]
    id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    async_process_id: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    reference_id: Option<String>,
    verbose: Option<bool>,
    items_list: Option<bool>,
    fail_message: Option<bool>,
}

/// `GET /healthz`, `GET /readyz`.
#[derive(ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not ready`.
    status: String,
    /// Why not ready.
    reason: Option<String>,
}

/// `idType`: how to read the `{id}` of a status call.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub enum IdType {
    AsyncProcessId,
    ReferenceId,
}

/// `outcome` of the items call.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Outcome {
    Successful,
    Failed,
}
