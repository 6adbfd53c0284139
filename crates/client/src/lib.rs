//! A typed client of the Async Engine API and a worker loop for its
//! `queue:NAME` steps.
//!
//! [`Client`] has one blocking method per call: start a process ([`Client::submit`]), see where
//! it stands ([`Client::status`], [`Client::watch`]), list, cancel and retry processes, page
//! through a step's items, upload items as NDJSON or CSV ([`Client::submit_stream`]), download
//! a step's results ([`Client::results`]), and the task calls workers make. [`Worker`] is the loop every worker
//! needs: give it a queue and a function from a task to its items' [`Outcomes`], and it claims,
//! heartbeats, completes, backs off while the server is away, and stops gracefully:
//!
//! ```no_run
//! use async_engine_client::{Client, Outcomes, TaskFailure, Worker};
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let summary = Worker::new(client, "pricing").concurrency(4).run(|task| {
//!     let mut outcomes = Outcomes::new();
//!     for entry in &task.items {
//!         let quote: serde_json::Value = entry.parse().map_err(|e| TaskFailure::permanent(e.to_string()))?;
//!         match quote["quantity"].as_u64() {
//!             Some(q) if q <= 100 => outcomes.succeed(entry.index),
//!             _ => outcomes.fail(entry.index, 7001, "Quantity over 100"),
//!         };
//!     }
//!     Ok(outcomes)
//! })?;
//! println!("{} tasks completed", summary.completed);
//! # Ok::<(), async_engine_client::Error>(())
//! ```
//!
//! Every body follows the contract's shapes (claim, complete, heartbeat, fail: §4.4), the same
//! ones HTTP push steps and `async-engine worker` speak.
#![warn(missing_docs)]

mod client;
mod error;
mod types;
mod worker;

pub use client::Client;
pub use error::Error;
pub use types::{
    Claim, Definition, DefinitionStep, Definitions, Envelope, FailureGroup, ItemOutcome, ItemsPage,
    ListFilter, Outcomes, Part, Parts, ProcessStatus, ResultOutcome, Start, StatusOptions, StepItem,
    StepStatus, Task, TaskItem, UploadFormat,
};
pub use worker::{Event, Stop, Summary, TaskFailure, Worker};
