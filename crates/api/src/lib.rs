//! The HTTP face of Async Engine: routes, the documented envelope on every answer, and the
//! mapping of errors to codes. The only crate that knows HTTP.
//!
//! Inside, in layers (each module imports only from its own layer, without circles, or below;
//! `cargo test -p xtask tidy` holds it, and ARCHITECTURE.md's code map names them): values and
//! parsing; the state and what it holds; shared HTTP plumbing; one module per resource, each
//! registering its own routes; the router and the OpenAPI document on top. This root only
//! declares and re-exports.

// Values and parsing.
mod answer;
pub mod auth;
pub mod callback;
mod clock;
pub mod envelope;
pub mod error;
pub mod guard;
mod headers;
mod limits;
pub mod metrics;
pub mod params;
mod schema;
// The state and what it holds.
mod claims;
mod pool;
mod state;
mod watcher;
// Shared HTTP plumbing.
mod answering;
mod body;
mod middleware;
mod routing;
mod upload;
// One module per resource.
mod dashboard;
mod operations;
mod parts;
mod processes;
mod results;
mod status;
mod tasks;
mod watch;
// The router and the OpenAPI document.
pub mod openapi;
mod router;
#[cfg(test)]
mod test_support;

use async_engine_domain::ProcessStatus;

pub use crate::auth::{ApiKey, Auth, Scope};
pub use crate::callback::CallbackPolicy;
pub use crate::claims::ClaimWaiters;
use crate::envelope::{Envelope, Record, Shape};
pub use crate::guard::{CorsOrigins, HostPolicy, RequestGuard};
pub use crate::limits::StatusLimiter;
pub use crate::router::{app, app_with, serve};
pub use crate::state::{ApiConfig, AppState, SuccessCode};
pub use crate::watcher::Watcher;

/// The body of a FinishProcess notification (contract §5): the envelope of the one process,
/// as a status call with `itemsList=false` would answer it.
pub fn notification_body(process: &ProcessStatus, success_code: SuccessCode) -> String {
    let code = success_code.status();
    let shape = Shape { verbose: true, items_list: false, fail_message: true };
    serde_json::to_string(&Envelope {
        code: code.as_u16(),
        status_message: "Success",
        technical_message: None,
        records: vec![Record::new(process, shape)],
    })
    .unwrap_or_default()
}
