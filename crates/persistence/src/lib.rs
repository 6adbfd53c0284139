//! Storage of Async Engine processes with diesel on SQLite: the connection pool, embedded
//! migrations, and the implementations of the domain's repository traits.
//! Its modules are layered, each importing only from below it: see ARCHITECTURE.md and
//! `xtask/src/tidy.rs`.

mod advance;
mod claim;
mod commands;
mod connection;
mod engine;
mod error;
#[cfg(test)]
mod fixtures;
mod lease;
mod models;
mod ops;
mod outbox;
mod parts;
mod queries;
mod run;
pub mod schema;
mod start;
mod store;
#[cfg(any(test, feature = "testing"))]
#[expect(clippy::unwrap_used, reason = "test support: a failed set-up is a failed test")]
pub mod testing;

pub use connection::{DbConnection, SessionTimeouts};
pub use error::Error;
pub use store::{DatabaseUrl, Store};
